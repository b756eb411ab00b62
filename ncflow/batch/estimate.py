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

Time (seconds) is an upper bound: every run using its whole step budget (``runs × max_steps``
run-steps; with early stopping most runs stop far sooner — the default problem's runs stop after a
median of ~2,000 of 30,000 steps), at a rate modelled per CPU core as ``T0 + flops/FLOPS`` seconds
per run-step with ``flops = 6 K d N`` (full engine) or ``6 K d K`` (collapsed), float64 counting
twice. ``T0`` (3 µs collapsed, 10 µs full) and ``FLOPS`` (3e10) were fitted on an AMD EPYC machine
(2 cores = 2 CPU devices, jax 0.10.2, float32 GD, ``--no-early-stop``, 256 runs): measured 6.0e5
run-steps/s collapsed K=d=10 n=100 (model 2.0e5), 5.6e4 full K=d=10 n=100 (model 6.7e4), 2.0e4
full K=10 d=64 n=100 (model 1.5e4), 6.2e3 full K=d=50 n=20 (model 4.0e3): within 3× of those,
mostly erring long. Other machines differ. There is no measured rate for GPUs or TPUs: there
the time estimate is None ("unknown").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ncflow.batch.history import KEYS, record_chunks
from ncflow.batch.memory import auto_group, estimate_memory, host_memory_bytes, state_bytes

#: per CPU core: fixed seconds per run-step (by state space) and flop/s (float32), see the module docstring
CPU_T0_S = {"collapsed": 3e-6, "full": 1e-5}
CPU_FLOPS = 3e10
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


def seconds_per_run_step(problem, dyn, platform: str = "cpu", devices: int = 1) -> float | None:
    """Modelled seconds per run-step of the whole batch over ``devices`` (None off CPU)."""
    if platform != "cpu":
        return None
    cols = problem.K if dyn.space.name == "collapsed" else problem.N
    flops = 6.0 * problem.K * problem.d * cols * (2.0 if problem.dtype == "float64" else 1.0)
    return (CPU_T0_S.get(dyn.space.name, 1e-5) + flops / CPU_FLOPS) / max(devices, 1)


def estimate(problem, dyn, config, runs: int, *, devices: int = 1, platform: str = "cpu", saved: bool = False,
             lanes: int | None = None, group: int | None = None, wide: bool = False) -> Estimate:
    """The cost of ``runs`` runs of ``problem`` under ``dyn`` (a Dynamics) and ``config`` on
    ``devices`` devices; ``saved``: the result is written to files (CSV text counted); ``lanes`` /
    ``group``: the batch's lanes and cache-group width over all devices (default: runs rounded up
    to whole groups on every device); ``wide``: the wide execution plan (one group of every lane
    of a device, whose step's temporaries count). No array of the job's size is allocated.

    ``device_bytes`` is the peak of ONE device on an accelerator (each device holds its share of
    the lanes) and of all devices together on a CPU (they share the host's memory)."""
    group = group or (config.group or auto_group(problem, dyn)) * devices
    lanes = lanes or math.ceil(runs / group) * group
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
    rate = seconds_per_run_step(problem, dyn, platform, devices)
    pad = dev_state * (lanes - runs) // lanes if config.group and lanes > runs else 0  # padding of a given group
    return Estimate(device_bytes=dev_state + pred_dev, host_bytes=host_runs + hist + pred_host,
                    parts={"runs": dev_state + host_runs - pad, "group": pad, "history": hist,
                           "K": pred_dev + pred_host},
                    run_steps=steps, seconds=None if rate is None else steps * rate)


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
