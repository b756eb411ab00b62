"""What a job costs before it runs: device memory, host memory and time, per point and in total.

Used by :func:`ncflow.simulate_points` (a batch that does not fit is refused before anything is
allocated or compiled, naming the setting that made it too large), by ``ncflow run`` (a warning
before a long job) and by ``ncflow sweep --dry-run`` / ``ncflow run --dry-run`` (the estimates
printed). Nothing here allocates arrays of the job's size: state sizes come from abstract shapes.

Memory (bytes):

* device: the batch's carried state and its copies (:func:`ncflow.batch.memory.estimate_memory`)
  plus every lane's copy of the theory's prediction (a K×K Gram per lane);
* host: the lane table, the stacked predictions, the gathered final states (kept in the
  Result), the per-run summaries and table (and its CSV text when saved), and with ``history`` the
  (records × runs) buffers, their per-point copies and the long-format table written to disk.
  On CPU the devices ARE host memory: both parts count against the same free memory.

Time (seconds) is an upper bound of the stepping loop (``Result.timing["loop_s"]``; compiling a
new batch shape, seconds, and classifying are not counted) with every run using its whole step
budget (``runs × max_steps`` run-steps; with early stopping most runs stop far sooner — the default
problem's runs stop after a median of ~2,000 of 30,000 steps). Each CPU device's seconds are
modelled (:func:`time_terms`) as

    r1·chunks + r2·group-steps + r3·lane-steps + r4·flops + r5·state bytes

over its chunk calls, the steps of its cache groups, and its lane-steps (lanes × (max_steps + one
check per chunk)) with their flops (``Dynamics.flops_per_step``: the space's GD step, 4Kd² + 8K²d
collapsed — its G ← A G Aᵀ is a low-rank update, no d³ term — or 6KdN full, plus the stepper's
extra) and state bytes. The rates (:data:`CPU_RATES`) are fitted per engine and dtype by
``benchmarks/estimate_fit.py`` on GD jobs over K 2–100, d 4–512, runs 2–512 and chunks 10–1000:
the least model that is at least every job's measured stepping time (its minimum over sessions of
three repeats each). The bound is that model × :data:`SAFETY` (4) × measured factors for what the
GD terms miss (:data:`CPU_FACTORS`: gradient flow 6, the escape recorder, the optimizers, the wide
plan) × devices/cores where CPU devices outnumber the cores. Fitted on a 2-core AMD EPYC machine
(2 CPU devices, jax 0.10.2) shared with other jobs (1-minute load 2.4–12): the same job's time
varied up to 4× between sessions, which SAFETY covers. There, at load ~8, the bound was 2.0–8.2×
the measured stepping of ten ``ncflow run`` jobs, among them issue 21's (K=10, d=512, 2 collapsed
runs of 30,000 steps: bound 106 s, measured 39 s, the earlier flop-only model 0.4 s); on an idle
machine it is looser (benchmarks/README.md, "Time estimates"). Other machines differ. There is no
measured rate for GPUs or TPUs: there the time estimate is None ("unknown").
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ncflow.batch.history import KEYS, record_chunks
from ncflow.batch.memory import auto_group, estimate_memory, host_memory_bytes, state_bytes

#: what the stepping time grows with (:func:`time_terms`)
TERMS = ("chunks", "group_steps", "lane_steps", "flops", "bytes")
#: per engine and dtype, fitted by benchmarks/estimate_fit.py (module docstring): seconds per chunk,
#: per group-step, per lane-step, per flop of a lane-step and per byte of a lane's state stepped,
#: on ONE core
CPU_RATES = {
    ("collapsed", "float32"): (8.44e-4, 0.0, 1.81e-6, 3.14e-11, 4.82e-10),
    ("collapsed", "float64"): (0.0, 0.0, 1.25e-5, 5.12e-11, 6.35e-10),
    ("full", "float32"): (1.45e-3, 0.0, 1.01e-6, 5.71e-11, 4.27e-10),
    ("full", "float64"): (1.61e-3, 1.15e-4, 2.49e-6, 2.95e-11, 1.1e-9),
}
#: measured multipliers of the GD model for what its terms miss, by (state space or "*", a part of
#: the dynamics' name, or "wide"): gradient flow's solver and controller work, the escape
#: recorder's objective per step, the optimizers' extra state, the wide plan on a CPU (every lane
#: of a device in one vmapped step); each about 1.3–1.6× the largest measured/model ratio of
#: benchmarks/estimate_fit.py (flow 4.5, escape 2.7 collapsed and 1.3 full, heavy ball and Nesterov
#: 2.0 and 2.2 collapsed and up to 1.2 full, adam 0.6, wide 1.5)
CPU_FACTORS = {("*", "flow"): 6.0, ("collapsed", "escape"): 4.0, ("full", "escape"): 1.5,
               ("collapsed", "momentum"): 3.0, ("collapsed", "nesterov"): 3.0, ("full", "momentum"): 1.5,
               ("full", "nesterov"): 1.5, ("full", "adam"): 1.5, ("*", "wide"): 2.0}
#: the fitted model times this (and the factors) is the bound (module docstring)
SAFETY = 4.0
#: ``ncflow run`` warns before a job whose upper-bound time exceeds this many seconds
LONG_JOB_S = 300.0
#: bytes per lane of the host lane table (~16 columns of 8 bytes) and per run of the summaries,
#: the per-run table (~30 columns) and its CSV text
_LANE_TABLE_B = 16 * 8
_PER_RUN_B = 30 * 8 + 2 * 64
_CSV_RUN_B = 30 * 24


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The estimated cost of a job (or one point of it).

    Attributes:
        device_bytes: peak bytes on the devices (on CPU: also host memory).
        host_bytes: peak host bytes besides the devices' arrays.
        parts: ``{setting: bytes}``: which setting each part of the memory grows with ("runs",
            "group": the padding lanes of a given group, "history", "K"); the largest names the
            setting a refusal blames.
        run_steps: at most ``runs × max_steps``.
        seconds: upper bound of the stepping time at the platform's rate, None where unknown.
    """

    device_bytes: int
    host_bytes: int
    parts: dict
    run_steps: int
    seconds: float | None

    def total_bytes(self, platform: str = "cpu") -> int:
        """Bytes that must fit in one memory: both parts on CPU, the larger one elsewhere."""
        return self.device_bytes + self.host_bytes if platform == "cpu" else max(self.device_bytes, self.host_bytes)

    def blame(self) -> str:
        """The setting whose part of the memory is largest ("runs", "group", "history" or "K")."""
        return max(self.parts, key=self.parts.get)

    def __add__(self, other: "Estimate") -> "Estimate":
        parts = {k: self.parts.get(k, 0) + other.parts.get(k, 0) for k in {*self.parts, *other.parts}}
        secs = None if self.seconds is None or other.seconds is None else self.seconds + other.seconds
        return Estimate(self.device_bytes + other.device_bytes, self.host_bytes + other.host_bytes, parts,
                        self.run_steps + other.run_steps, secs)


def history_rows(max_steps: int, chunk: int) -> int:
    """Rows of a history buffer (:class:`ncflow.batch.history.History`)."""
    return len(record_chunks(math.ceil(max_steps / min(chunk, max_steps)))) + 2


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def time_terms(problem, dyn, config, lanes: int, group: int, devices: int = 1, wide: bool = False) -> dict:
    """What the stepping time of one device grows with, every run using its whole budget: the
    batch's ``lanes`` (over all devices) in groups of ``group`` lanes (over all devices) on
    ``devices`` devices. Returns ``{"chunks", "group_steps", "lane_steps", "flops", "bytes"}``
    (:data:`TERMS`): chunk calls (each with a check and the host's stop rule), group-steps (one
    step of one cache group; the wide plan steps all of a device's lanes as one group), the
    device's lane-steps (its lanes × (max_steps + one check per chunk)), and their flops
    (``dyn.flops_per_step``: the space's GD step plus the stepper's extra) and state bytes."""
    steps = config.max_steps
    chunks = math.ceil(steps / max(1, min(config.chunk, steps)))
    devices = max(devices, 1)
    lanes_dev = lanes / devices
    groups_dev = 1 if wide else max(1, lanes // max(group, 1))
    lane_steps = lanes_dev * (steps + chunks)
    return {"chunks": float(chunks), "group_steps": float(steps * groups_dev), "lane_steps": lane_steps,
            "flops": lane_steps * dyn.flops_per_step(problem), "bytes": lane_steps * state_bytes(problem, dyn)}


def stepping_seconds(problem, dyn, config, lanes: int, group: int, devices: int = 1, platform: str = "cpu",
                     wide: bool = False, cores: int | None = None) -> float | None:
    """Upper bound of the stepping loop's seconds (None off CPU): :data:`SAFETY` × the fitted model
    of :func:`time_terms` with :data:`CPU_RATES` (unknown spaces or dtypes: the full engine's
    float64 rates) × the :data:`CPU_FACTORS` of the dynamics' parts and the wide plan, times
    ``devices / cores`` where the CPU devices outnumber the ``cores`` (default: this process's)."""
    if platform != "cpu":
        return None
    terms = time_terms(problem, dyn, config, lanes, group, devices, wide)
    space = dyn.space.name
    rates = CPU_RATES.get((space, str(problem.dtype)), CPU_RATES[("full", "float64")])
    per_device = sum(r * terms[k] for r, k in zip(rates, TERMS))
    factor = 1.0
    for part in dyn.name.split("+")[1:] + (["wide"] if wide else []):
        factor *= CPU_FACTORS.get((space, part), CPU_FACTORS.get(("*", part), 1.0))
    share = max(1.0, max(devices, 1) / (cores or cpu_cores()))
    return SAFETY * factor * share * per_device


def batch_lanes(problem, dyn, config, runs: int, devices: int = 1, lanes: int | None = None,
                group: int | None = None) -> tuple[int, int]:
    """``(lanes, group)`` over all devices: given ones kept, else the cache group of
    ``config.group`` (or :func:`~ncflow.batch.memory.auto_group`) on every device and ``runs``
    rounded up to whole groups."""
    group = group or (config.group or auto_group(problem, dyn)) * max(devices, 1)
    return lanes or math.ceil(runs / group) * group, group


def estimate(problem, dyn, config, runs: int, *, devices: int = 1, platform: str = "cpu", saved: bool = False,
             lanes: int | None = None, group: int | None = None, wide: bool = False) -> Estimate:
    """The cost of ``runs`` runs of ``problem`` under ``dyn`` (a Dynamics) and ``config`` on
    ``devices`` devices; ``saved``: the result is written to files (CSV text counted); ``lanes`` /
    ``group``: the batch's lanes and cache-group width over all devices (default: runs rounded up
    to whole groups on every device); ``wide``: the wide execution plan (one group of every lane
    of a device, whose step's temporaries count). No array of the job's size is allocated.

    ``device_bytes`` is the peak of ONE device on an accelerator (each device holds its share of
    the lanes) and of all devices together on a CPU (they share the host's memory)."""
    lanes, group = batch_lanes(problem, dyn, config, runs, devices, lanes, group)
    item = np.dtype(problem.dtype).itemsize
    K = problem.K
    pred_b = (K * K + 2 * K + 4) * item  # a lane's prediction arrays (Gram, spectrum, scalars)
    per_dev = 1 if platform == "cpu" else max(devices, 1)  # accelerators: one device's share
    dev_state = estimate_memory(problem, dyn, lanes // per_dev, group // per_dev, wide=wide)
    per_state = state_bytes(problem, dyn)
    host_runs = lanes * _LANE_TABLE_B + 2 * runs * per_state + runs * (_PER_RUN_B + (_CSV_RUN_B if saved else 0))
    hist = 0
    if config.history:
        rows = history_rows(config.max_steps, config.chunk)
        cells = rows * runs
        hist = cells * 8 * (len(KEYS) + len(KEYS) + 1 + 8) + (cells * 8 * 22 if saved else 0)
    pred_dev, pred_host = lanes // per_dev * pred_b, (lanes + 1) * pred_b
    steps = runs * config.max_steps
    secs = stepping_seconds(problem, dyn, config, lanes, group, devices, platform, wide)
    pad = dev_state * (lanes - runs) // lanes if config.group and lanes > runs else 0  # padding of a given group
    return Estimate(device_bytes=dev_state + pred_dev, host_bytes=host_runs + hist + pred_host,
                    parts={"runs": dev_state + host_runs - pad, "group": pad, "history": hist,
                           "K": pred_dev + pred_host},
                    run_steps=steps, seconds=secs)


#: the message fragment naming each blamed setting, and what to do about it
_ADVICE = {"runs": "use fewer runs", "group": "use a smaller group (each device's lanes are whole groups: the lanes "
           "beyond the runs are padding)", "history": "drop history (or use fewer runs or a larger chunk)",
           "K": "use fewer classes (every run carries the theory's K×K Gram) or fewer runs"}


def refusal(est: Estimate, limit: int, what: str, platform: str = "cpu") -> tuple[str, str] | None:
    """``(field, message)`` when ``est`` does not fit in ``limit`` bytes, else None. ``what``
    describes the job ("1000 runs of K=10 d=10 n=100 (full engine, float32)")."""
    need = est.total_bytes(platform)
    if need <= limit:
        return None
    field = est.blame()
    where = "device and host" if platform == "cpu" else "memory"
    return field, (f"{field}: {what} need about {fmt_bytes(need)} of {where} memory, more than the "
                   f"{fmt_bytes(limit)} available; {_ADVICE[field]}")


def fmt_bytes(n: float) -> str:
    """``12.3 MiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def fmt_seconds(s: float | None) -> str:
    """``42 s``, ``12 min``, ``3.1 h``; ``unknown`` for None."""
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.3g} h"


#: the smallest normal float32: a nonzero setting below it would silently become 0 (or lose its
#: precision) when a float32 batch puts it on the devices
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_COEFFS = ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale")


def check_representable(points) -> None:
    """Refuse (ConfigError naming the setting) a nonzero coefficient, step or init scale that a
    float32 batch would round to 0 or to a subnormal (``--lambda-w 1e-300``)."""
    from ncflow.errors import ConfigError

    for p in points:
        if p.problem.dtype != "float32":
            continue
        values = {k: float(getattr(p.problem, k)) for k in _COEFFS}
        values.update(lr=float(p.lr), init_scale=float(p.init_scale))
        for k, v in values.items():
            if v != 0.0 and abs(v) < FLOAT32_TINY:
                raise ConfigError(f"{k} must be 0 or at least {FLOAT32_TINY:.4g} (the smallest normal float32) in a "
                                  f"float32 run, got {v!r}; use dtype float64", field=k)


def check_batch(points, config, dyn, layout, plan=None) -> None:
    """Refuse, before anything is allocated or compiled, a batch whose values float32 cannot hold
    or whose estimated memory (device and host, :func:`estimate`) exceeds
    ``config.memory_limit_bytes`` (default: 80% of the free memory: on accelerators the least
    free memory among the batch's devices, against ONE device's share; on CPU the host's). ``plan``:
    the :class:`~ncflow.batch.plan.Plan` (the wide plan's step temporaries count). Raises
    ConfigError whose field is the setting that made it too large."""
    from ncflow.batch.memory import available_memory_bytes
    from ncflow.errors import ConfigError

    check_representable(points)
    base = points[0].problem
    R = sum(p.runs for p in points)
    platform = layout.mesh.devices.flat[0].platform
    wide = bool(plan is not None and plan.wide)
    est = estimate(base, dyn, config, R, devices=layout.n_devices, platform=platform, lanes=layout.total_lanes,
                   group=layout.group * layout.n_devices, wide=wide)
    extra = (len(points) - 1) * (base.K * base.K + 2 * base.K + 4) * np.dtype(base.dtype).itemsize
    est = dataclasses.replace(est, host_bytes=est.host_bytes + extra, parts={**est.parts, "K": est.parts["K"] + extra})
    limit = config.memory_limit_bytes or int(0.8 * available_memory_bytes(layout.mesh.devices.flat))
    what = (f"{R} runs of K={base.K} d={base.d} n={base.n} ({dyn.name} engine, {base.dtype}"
            f"{', plan ' + plan.name if plan is not None else ''}{', with history' if config.history else ''})")
    if platform == "cpu":
        bad = refusal(est, limit, what, platform)
    else:  # one device's share against the devices' free memory, then the host's own memory
        bad = refusal(dataclasses.replace(est, host_bytes=0), limit, what + " per device", platform)
        if bad is None:
            bad = refusal(dataclasses.replace(est, device_bytes=0), int(0.8 * host_memory_bytes()), what, platform)
    if bad is not None:
        raise ConfigError(bad[1], field=bad[0])
