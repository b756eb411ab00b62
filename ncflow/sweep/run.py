"""Parameter sweeps: a TOML grid of UFM problems, run shape group by shape group, written as
plain files (CSV / JSON), resumable after a crash.

Config file (TOML, read with the standard library's ``tomllib``)::

    description = "lambda_W x lambda_H phase diagram"   # optional free text

    [problem]              # every key optional; defaults are those of `ncflow run`
    K = 10                 # classes, integer >= 2
    d = 10                 # feature dimension, integer >= 1
    n = 100                # samples per class, integer >= 1
    lambda_w = 5e-4        # weight decay on W, finite >= 0
    lambda_h = 5e-4        # weight decay on H, finite >= 0
    lambda_b = 0.0         # weight decay on b, finite >= 0 (0 = unregularized bias)
    bias = true            # false = bias-free model (needs lambda_b = 0)
    dtype = "float32"      # "float32" or "float64"
    loss = "mse"           # "mse" or "rescaled-mse"
    alpha = 1.0            # rescaled MSE only, > 0
    target_scale = 1.0     # rescaled MSE only, > 0

    [solver]
    runs = 1000            # random starts per point, integer >= 1
    seed = 0               # master seed in [0, 2^32); run i of EVERY point starts from
                           # fold_in(key(seed), i), exactly as `ncflow run --seed`
    max_steps = 30000      # step budget per run, integer >= 1
    init_scale = 1.0       # Gaussian init scale, finite >= 0
    lr = "auto"            # step > 0, or "auto": the engine's default for each point (as `ncflow run`)
    engine = "auto"        # "auto", "full" or "collapsed"
    chunk = 100            # steps between stopping checks, integer >= 1
    group = "auto"         # runs per cache group, integer >= 1 or "auto"
    gtol = "auto"          # stationarity tolerance > 0, or "auto" (dtype default)
    early_stop = true      # false: every run takes exactly max_steps steps
    stop = "certified"     # or "converged": see ncflow.Config.stop (THEORY §8 certificate)
    history = false        # record diagnostics at log-spaced steps (convergence plots)
    lanczos_iters = 32     # integer >= 2
    # ... and every other ncflow.Config setting (optimizer, momentum, init, ...), checked by Config

    [grid]                 # any key of [problem] or [solver]: a non-empty list of distinct
    lambda_w = [1e-4, 1e-3, 1e-2]                 # values, or an inline range table:
    lambda_h = { geomspace = [1e-4, 1e-2, 5] }    # num log-spaced values, ends included
    # init_scale = { linspace = [0.5, 2.0, 4] }   # num evenly spaced values

The points are the Cartesian product of the grid lists, numbered 0, 1, ... in row-major order
(the last grid key varies fastest). A key may appear in [problem]/[solver] or in [grid], not
both. Everything is validated before anything runs; an error (:class:`SweepError`) names the
TOML key and the accepted range.

Batches: points that agree on everything except the per-run *lanes* (λ_W, λ_H, λ_b, α, M, lr,
init_scale, runs, seed) — i.e. on (K, d, n, bias, loss, dtype) and the batch-wide solver keys —
form a *shape group* and run as ONE :func:`ncflow.simulate_points` call, a *batch* (a group is
split into several batches only if it would not fit in memory); batches run one after another.
The batch plan is decided on the first run and kept in the manifest.

Files under the output directory (all written atomically, no pickle)::

    manifest.json          format, status ("partial" / "complete"), config_hash, the normalized
                           config, master seed, point count, batches (point indices and shape), versions
                           (ncflow / JAX / jaxlib / device), start and update times, wall_s
    summary.csv            one row per completed point: point, the swept parameters, the other
                           problem parameters, lr_used, c, geometry, f_star (both empty for
                           the deep ReLU UFM: no closed-form optimum), runs, for each
                           outcome label <label>_count / _fraction / _ci_low / _ci_high (95%
                           Wilson; the labels of the sweep's model, :func:`sweep_labels`: global,
                           saddle, local_min, not_converged, diverged for the UFM and the deep
                           linear UFM), with deep linear points (depth > 1) rank_star (the
                           optimum's rank) and rank<r>_count / _fraction / _ci_low / _ci_high for
                           r = 0..R (runs ending with r alive directions, 95% Wilson; R the largest
                           rank possible, :func:`sweep_max_rank`; empty cells at other points),
                           objective_median / _min / _max, nc1/nc2/nc3_median, steps_median (no
                           timing columns: timing is in each summary.json)
    points/<index>/        index zero-padded to 4+ digits; Result.save output: runs.csv (per
                           run, no timing), config.json, history.csv (with history), point.json
                           (index and swept values), summary.json (written last)

Resume: a point is complete iff ``points/<index>/summary.json`` exists (written last). Running the
same sweep again into the same directory skips complete points, after marking incomplete (so
running again) every point whose summary.json or runs.csv is unreadable, or whose runs.csv does not
hold the runs its summary.json counts, e.g. emptied or cut at a line boundary (:func:`repair_points`).
A batch that is partially complete (a crash while its points were being saved) is handled by
``resume``:

* ``"missing"`` (default): only its missing points run. The engine fixes the cache group per
  problem shape and maps every per-run program one group at a time, so run i is bitwise the same
  alone or in any batch: the files equal an uninterrupted sweep's;
* ``"exact"``: the whole batch runs again and only its missing points are written — the same
  lanes in the same places, for engines or platforms where that invariance does not hold.

The manifest stores a SHA-256 hash of the normalized config; a directory holding a sweep with
another hash (or any other non-empty directory) is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time
from typing import Callable, Mapping

import numpy as np

from ncflow import io as _io
from ncflow.batch.history import own_rows
from ncflow.codes import ALL_LABELS, LABELS
from ncflow.stats import wilson_interval
from ncflow.sweep.config import (  # noqa: F401
    LANE_KEYS,
    PROBLEM_SPECS,
    SOLVER_SPECS,
    SweepConfig,
    SweepError,
    SweepPoint,
    _representation,
    apply_overrides,
    extra_solver_keys,
    load_config,
    parse_config,
    point_config,
    read_toml,
)

FORMAT = "ncflow-sweep/1"


# --------------------------------------------------------------------------- output directory


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_out_dir(cfg: SweepConfig, out_dir: str) -> dict | None:
    """Refuse an output directory that holds anything but this same sweep. Returns the existing
    manifest (a resume) or None (a new sweep). Writes nothing."""
    if not os.path.exists(out_dir):
        return None
    if not os.path.isdir(out_dir):
        raise SweepError(f"{out_dir} exists and is not a directory")
    mpath = os.path.join(out_dir, "manifest.json")
    if not os.path.exists(mpath):
        left = [f for f in os.listdir(out_dir) if f != ".lock"]
        if left:
            raise SweepError(f"{out_dir} is not empty and holds no sweep manifest; choose a new or empty directory")
        return None
    try:
        manifest = _io.read_json(mpath)
        old_hash = manifest["config_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SweepError(f"{mpath} is unreadable or not an ncflow sweep manifest; choose another directory") from None
    if old_hash != cfg.hash:
        raise SweepError(f"{out_dir} holds a different sweep (config hash {old_hash[:19]}…, this config "
                         f"{cfg.hash[:19]}…); resume it with its own config or choose another directory")
    return manifest


def remove_stale_temporaries(out_dir: str) -> int:
    """Delete the temporary files (``.<name>.<random>.tmp``) and the staging directories of a
    point's save (``.<index>.ncflow-tmp-<pid>-<random>``, see :mod:`ncflow.io`) that a killed writer
    left under ``out_dir``; returns how many. Call only while holding the sweep's lock."""
    import shutil

    removed = 0
    for root, dirs, names in os.walk(out_dir):
        for name in list(dirs):
            if _io.is_stage_name(name) is not None:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                dirs.remove(name)
                removed += 1
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.remove(os.path.join(root, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def repair_points(cfg: SweepConfig, out_dir: str, say: Callable[[str], None]) -> list[int]:
    """Mark incomplete (delete the completion mark of) every point whose ``summary.json`` or
    ``runs.csv`` cannot be read, or whose ``runs.csv`` does not hold the runs its summary counts
    (emptied, or cut at a line boundary: :func:`ncflow.result.runs_table_problem`), e.g. by a disk
    that filled up or a copy cut short, so that the resume runs it again; one line per point
    through ``say``. Returns their indices. Call only while holding the sweep's lock."""
    from ncflow.result import runs_table_problem

    bad = []
    for p in cfg.points:
        pdir = cfg.point_dir(out_dir, p.index)
        if not is_complete(pdir):
            continue
        problem = None
        try:
            s = _io.read_json(os.path.join(pdir, "summary.json"))
            if not isinstance(s, dict) or "outcomes" not in s or "theory" not in s:
                raise ValueError("not a result summary")
            runs_path = os.path.join(pdir, "runs.csv")
            problem = runs_table_problem(runs_path, _io.read_table_csv(runs_path), s)
        except (OSError, ValueError) as e:
            problem = f"its files are unreadable ({type(e).__name__})"
        if problem:
            say(f"point {p.index}: {problem}; running it again")
            os.remove(os.path.join(pdir, "summary.json"))
            bad.append(p.index)
    return bad


def is_complete(point_dir: str) -> bool:
    """A point is complete iff its summary.json exists (Result.save writes it last)."""
    return os.path.exists(os.path.join(point_dir, "summary.json"))


class _Lock:
    """An exclusive advisory lock on ``out_dir/.lock`` (one sweep process per directory)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, ".lock")
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            return self
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise SweepError(f"another ncflow sweep is writing {os.path.dirname(self.path)}") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


# --------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did: point indices written now (``ran``), already complete
    (``skipped``), complete but re-run with a partial batch (``recomputed``, not rewritten), the
    final ``status``, ``summary`` (the summary.csv columns) and this session's wall time."""

    out_dir: str
    points: int
    ran: list
    skipped: list
    recomputed: list
    status: str
    summary: dict
    wall_s: float


def _batches(group: list[SweepPoint], limit: int | None) -> list[list[SweepPoint]]:
    """Split a shape group into batches whose estimated memory fits ``limit`` (None: no split)."""
    if limit is None:
        return [group]
    from ncflow.batch.memory import auto_group, estimate_memory

    s = group[0].settings
    rep = _representation(group[0].problem, point_config(s))
    cache = s["group"] or auto_group(group[0].problem, rep)
    out, cur, runs = [], [], 0
    for p in group:
        r = p.settings["runs"]
        if estimate_memory(p.problem, rep, r, cache) > limit:
            raise SweepError(f"point {p.index}: solver.runs = {r} runs of K={s['K']} d={s['d']} n={s['n']} "
                             f"need more than the {limit / 2**30:.2f} GiB available; use fewer runs")
        if cur and estimate_memory(p.problem, rep, runs + r, cache) > limit:
            out.append(cur)
            cur, runs = [], 0
        cur.append(p)
        runs += r
    out.append(cur)
    return out


RESUME_MODES = ("missing", "exact")


def _plan(cfg: SweepConfig, old: dict | None, limit: int | None) -> list[dict]:
    """The batches ``[{"points": [indices]}]``: the manifest's plan when resuming, else one batch
    per shape group (split to fit ``limit``)."""
    if old and isinstance(old.get("batches"), list):
        plan = old["batches"]
        seen = sorted(i for b in plan for i in b["points"])
        if seen == list(range(len(cfg.points))):
            return plan
    return [{"points": [p.index for p in batch]}
            for group in cfg.shape_groups() for batch in _batches(group, limit)]


def run_sweep(config, out_dir: str | os.PathLike, *, resume: str = "missing", progress: bool | None = False,
              log: Callable[[str], None] | None = None, overrides: Mapping | None = None,
              memory_limit_bytes: int | None = None, devices=None) -> SweepReport:
    """Run (or resume) a sweep and write its files under ``out_dir``.

    Args:
        config: a TOML path, a raw config dict (as parsed from TOML) or a :class:`SweepConfig`.
        out_dir: output directory (created; must be new, empty, or hold this same sweep).
        resume: "missing" or "exact": what to run for a partially complete batch (module doc).
        progress: the engine's progress bar (None: only on a terminal).
        log: called with one line per batch (e.g. ``print``); None = silent.
        overrides: {setting: value} replacing [problem]/[solver] values (see :func:`load_config`).
        memory_limit_bytes: split shape groups to fit this (None: 80% of available memory).
        devices: devices to shard each batch over (None: every device), as in ``simulate_points``.

    In a multi-process job (``jax.distributed`` initialized, ``jax.process_count() > 1``) every
    process calls this with the same config: process 0 reads and writes ``out_dir`` (it need not
    exist elsewhere), decides which points each batch runs and sends that list to the others; every
    process then runs the same batches over every process's devices, and only process 0 writes.
    The other processes return a report with status "worker" and no summary.

    Returns a :class:`SweepReport`. Raises :class:`SweepError` for a bad config or directory,
    before anything is written (on every process of a multi-process job).
    """
    import jax

    t0 = time.perf_counter()
    if resume not in RESUME_MODES:
        raise SweepError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    if isinstance(config, SweepConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = parse_config(apply_overrides(config, overrides) if overrides else config)
    else:
        cfg = load_config(config, overrides)
    out_dir = os.fspath(out_dir)
    if any(p.problem.dtype == "float64" for p in cfg.points) and not jax.config.read("jax_enable_x64"):
        raise SweepError('problem.dtype = "float64" needs jax_enable_x64: set '
                         'jax.config.update("jax_enable_x64", True) before JAX starts (the CLI does)')
    args = (cfg, out_dir, resume, progress, log, memory_limit_bytes, devices, t0)
    if jax.process_count() == 1:
        return _lead(*args, share=lambda work: None)
    if jax.process_index() != 0:
        return _follow(cfg, out_dir, progress, devices, t0)
    shared = []

    def share(work):
        _broadcast_json({"batches": work})
        shared.append(True)

    try:
        return _lead(*args, share=share)
    except BaseException as e:
        if not shared:  # the others wait for the work list: tell them why there is none
            _broadcast_json({"error": f"process 0: {e}" if str(e) else f"process 0: {type(e).__name__}"})
        raise


def _points_of(run) -> list:
    from ncflow.batch.loop import Point

    return [Point(problem=p.problem, runs=p.settings["runs"], lr=p.lr, init_scale=float(p.settings["init_scale"]),
                  seed=p.settings["seed"]) for p in run]


def _broadcast_json(payload: dict | None) -> dict:
    """``payload`` of process 0 on every process (others pass None): JSON bytes sent through
    ``multihost_utils.broadcast_one_to_all`` (its length first)."""
    import jax
    from jax.experimental import multihost_utils

    data = json.dumps(payload).encode() if jax.process_index() == 0 else b""
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int32)))
    buf = np.frombuffer(data, np.uint8) if data else np.zeros(n, np.uint8)
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
    return json.loads(buf.tobytes().decode())


def _follow(cfg: SweepConfig, out_dir: str, progress, devices, t0: float) -> SweepReport:
    """A process other than 0 of a multi-process sweep: run the batches process 0 decided."""
    from ncflow.batch.loop import simulate_points
    from ncflow.errors import ConfigError

    work = _broadcast_json(None)
    if "error" in work:
        raise SweepError(work["error"])
    for bi, idxs in enumerate(work["batches"]):
        if not idxs:
            continue
        run = [cfg.points[i] for i in idxs]
        try:
            simulate_points(_points_of(run), point_config(run[0].settings, progress=False), devices=devices)
        except ConfigError as e:
            raise SweepError(f"batch {bi + 1} (points {run[0].index}..{run[-1].index}): {e}") from None
    return SweepReport(out_dir=out_dir, points=len(cfg.points), ran=[], skipped=[], recomputed=[], status="worker",
                       summary={}, wall_s=time.perf_counter() - t0)


def _lead(cfg: SweepConfig, out_dir: str, resume: str, progress, log, memory_limit_bytes, devices, t0: float, *,
          share: Callable[[list], None]) -> SweepReport:
    """Process 0 (or the only process) of a sweep: the directory, the plan, the batches, the files.
    ``share(work)`` receives, once the plan is known, the point indices every batch runs."""
    from ncflow.batch.loop import simulate_points
    from ncflow.batch.memory import available_memory_bytes
    from ncflow.errors import ConfigError
    from ncflow.result import versions

    check_out_dir(cfg, out_dir)
    say = log or (lambda _msg: None)
    limit = memory_limit_bytes
    if limit is None:
        try:
            limit = int(0.8 * available_memory_bytes())
        except (OSError, ValueError):
            limit = None

    os.makedirs(out_dir, exist_ok=True)
    with _Lock(out_dir):
        old = check_out_dir(cfg, out_dir)  # again, under the lock
        remove_stale_temporaries(out_dir)
        if old is not None:
            repair_points(cfg, out_dir, say)
        plan = _plan(cfg, old, limit)
        manifest = _new_manifest(cfg, old, plan, versions())
        wall_before = manifest["wall_s"]
        _write_manifest(out_dir, manifest, cfg, wall_before, t0)
        os.makedirs(os.path.join(out_dir, "points"), exist_ok=True)
        runs_of = []  # per batch: its members, the points to write, the points to run
        for batch in plan:
            members = [cfg.points[i] for i in batch["points"]]
            todo = [p for p in members if not is_complete(cfg.point_dir(out_dir, p.index))]
            runs_of.append((members, todo, (members if resume == "exact" else todo) if todo else []))
        share([[p.index for p in run] for _, _, run in runs_of])
        ran, skipped, recomputed, rows = [], [], [], {}
        for bi, (members, todo, run) in enumerate(runs_of):
            done = [p for p in members if p not in todo]
            skipped += [p.index for p in done]
            if not todo:
                continue
            recomputed += [p.index for p in run if p not in todo]
            s = run[0].settings
            extra = "".join(f" {k}={v}" for k, v in run[0].swept.items() if k not in LANE_KEYS + ("K", "d", "n"))
            say(f"batch {bi + 1}/{len(plan)} (K={s['K']} d={s['d']} n={s['n']} {s['dtype']}{extra}): "
                f"{len(todo)} point(s) to write, {sum(p.settings['runs'] for p in run)} runs"
                + (f" ({len(done)} complete point(s) {'re-run for exactness' if resume == 'exact' else 'skipped'})"
                   if done else ""))
            try:
                results = simulate_points(_points_of(run), point_config(s, progress=progress), devices=devices)
            except ConfigError as e:
                raise SweepError(f"batch {bi + 1} (points {run[0].index}..{run[-1].index}): {e}") from None
            for p, res in zip(run, results):
                if p not in todo:
                    continue
                pdir = cfg.point_dir(out_dir, p.index)
                os.makedirs(pdir, exist_ok=True)
                _io.write_json(os.path.join(pdir, "point.json"),
                               {"point": p.index, "swept": p.swept, "lr_used": p.lr, "config_hash": cfg.hash})
                if res.history is not None:  # the point's own rows, whatever its batch-mates (resume = uninterrupted)
                    res = dataclasses.replace(res, history=own_rows(res.history, res.per_run["steps"], s["chunk"],
                                                                    s["max_steps"]))
                res.save(pdir, overwrite=True)  # summary.json last: the completion mark
                ran.append(p.index)
            write_summary(cfg, out_dir, rows)
            _write_manifest(out_dir, manifest, cfg, wall_before, t0)
        summary = write_summary(cfg, out_dir, rows)
        n_done = sum(is_complete(cfg.point_dir(out_dir, p.index)) for p in cfg.points)
        manifest["status"] = "complete" if n_done == len(cfg.points) else "partial"
        _write_manifest(out_dir, manifest, cfg, wall_before, t0)
    return SweepReport(out_dir=out_dir, points=len(cfg.points), ran=sorted(ran), skipped=sorted(skipped),
                       recomputed=sorted(recomputed), status=manifest["status"], summary=summary,
                       wall_s=time.perf_counter() - t0)


def _new_manifest(cfg: SweepConfig, old: dict | None, plan: list, vers: dict) -> dict:
    shape_keys = ("K", "d", "n", "bias", "loss", "dtype")
    return {
        "format": FORMAT,
        "status": "partial",
        "config_hash": cfg.hash,
        "config": cfg.normalized,
        "master_seed": cfg.master_seed,
        "swept": list(cfg.swept),
        "points": len(cfg.points),
        "completed": 0,
        "batches": [{**b, "shape": {k: cfg.points[b["points"][0]].settings[k] for k in shape_keys}}
                    for b in plan],
        "versions": vers,
        "started": (old or {}).get("started", _now()),
        "updated": _now(),
        "wall_s": float((old or {}).get("wall_s", 0.0)),
        "sessions": int((old or {}).get("sessions", 0)) + 1,
    }


def _write_manifest(out_dir: str, manifest: dict, cfg: SweepConfig, wall_before: float, t0: float) -> None:
    """Write the manifest with the wall time of earlier sessions plus this one's so far."""
    manifest["wall_s"] = wall_before + (time.perf_counter() - t0)
    manifest["updated"] = _now()
    manifest["completed"] = sum(is_complete(cfg.point_dir(out_dir, p.index)) for p in cfg.points)
    _io.write_json(os.path.join(out_dir, "manifest.json"), manifest)


# --------------------------------------------------------------------------- summary.csv


FIXED_COLUMNS = ("K", "d", "n", "lambda_w", "lambda_h", "lambda_b", "bias", "init_scale", "runs")


def summary_row(cfg: SweepConfig, point: SweepPoint, out_dir: str, columns: tuple | None = None) -> dict:
    """The summary.csv row of a complete point, from its files. ``columns``: ``(sweep_labels(cfg),
    sweep_max_rank(cfg))``, the label and rank columns every row of the sweep has (computed when
    None; :func:`write_summary` computes them once)."""
    labels, top = columns if columns is not None else (sweep_labels(cfg), sweep_max_rank(cfg))
    pdir = cfg.point_dir(out_dir, point.index)
    s = _io.read_json(os.path.join(pdir, "summary.json"))
    table = _io.read_table_csv(os.path.join(pdir, "runs.csv"))
    row = {"point": point.index}
    for k in cfg.swept:
        row[k] = _cell(point.swept[k])
    for k in FIXED_COLUMNS:
        if k not in row:
            row[k] = _cell(point.settings[k])
    th = s["theory"]
    # a deep ReLU UFM has no closed-form optimum (THEORY §9.6): its geometry and f* cells stay empty
    row.update({"lr_used": point.lr, "c": th["c"], "geometry": th.get("geometry"), "f_star": th.get("objective")})
    outcome = np.asarray(table.get("outcome", []), dtype=str)
    for label in labels:
        o = s["outcomes"].get(label)
        if o is None:  # a label of another model in the sweep (count 0), or one summary.json does not list
            k = int(np.sum(outcome == label))
            lo, hi = wilson_interval(k, outcome.size)
            o = {"count": k, "fraction": k / outcome.size if outcome.size else float("nan"),
                 "ci95": [float(lo), float(hi)]}
        row[f"{label}_count"] = o["count"]
        row[f"{label}_fraction"] = o["fraction"]
        row[f"{label}_ci_low"], row[f"{label}_ci_high"] = o["ci95"]
    if top is not None:
        row.update(_rank_columns(point, table, th, top))
    fo = s["final_objective"]
    row.update({"objective_median": fo["median"], "objective_min": fo["min"], "objective_max": fo["max"]})
    med = s.get("median_metrics", {})
    for k in ("nc1", "nc2", "nc3"):
        row[f"{k}_median"] = med.get(k)
    steps = np.asarray(table.get("steps", []), np.float64)
    row["steps_median"] = float(np.median(steps)) if steps.size else None
    return row


def _cell(v):
    return "auto" if v is None else v


def _deep_linear(problem) -> bool:
    return problem.depth > 1 and problem.activation == "linear"


def max_rank(problem) -> int | None:
    """The largest rank a run of a deep linear ``problem`` can end with (THEORY §9.2: at most
    min(d_min, directions), the target's directions being K − 1 in case (A), K otherwise), or None for
    any other model (no ``rank`` column)."""
    if not _deep_linear(problem):
        return None
    return min(min(problem.layer_widths), problem.K - (problem.bias_mode == "unregularized"))


def sweep_labels(cfg: SweepConfig) -> tuple:
    """The outcome labels of a sweep's summary columns: its points' ``problem.outcome_labels`` in
    their report order when every point has the same model (``ncflow.LABELS`` for the UFM and the
    deep linear UFM, ``ncflow.RELU_LABELS`` for the deep ReLU UFM), else their union in
    ``ncflow.ALL_LABELS`` order."""
    seen = list(dict.fromkeys(p.problem.outcome_labels for p in cfg.points)) or [LABELS]
    if len(seen) == 1:
        return tuple(seen[0])
    return tuple(lb for lb in ALL_LABELS if any(lb in s for s in seen))


def sweep_max_rank(cfg: SweepConfig) -> int | None:
    """R, the largest :func:`max_rank` over a sweep's points: summary.csv has the columns
    ``rank{r}_*`` for r = 0..R; None when no point is deep linear (no rank columns)."""
    tops = [r for r in (max_rank(p.problem) for p in cfg.points) if r is not None]
    return max(tops) if tops else None


RANK_SUFFIXES = ("count", "fraction", "ci_low", "ci_high")


def _rank_columns(point: SweepPoint, table: dict, theory: dict, top: int) -> dict:
    """A point's ``rank_star`` and ``rank{r}_count / _fraction / _ci_low / _ci_high`` for r = 0..top:
    how many of its runs ended with r alive directions (the per-run ``rank``; runs without a finite
    rank, e.g. diverged, count in none), over all its runs, with the 95% Wilson interval. None (an
    empty cell) where the point is not deep linear."""
    out = {"rank_star": None}
    out.update({f"rank{r}_{k}": None for r in range(top + 1) for k in RANK_SUFFIXES})
    if max_rank(point.problem) is None or "rank" not in table:
        return out
    out["rank_star"] = theory.get("rank")
    rank = np.asarray(table["rank"], np.float64)
    runs = rank.size
    for r in range(top + 1):
        k = int(np.sum(rank == r))
        lo, hi = wilson_interval(k, runs)
        out.update({f"rank{r}_count": k, f"rank{r}_fraction": k / runs if runs else float("nan"),
                    f"rank{r}_ci_low": float(lo), f"rank{r}_ci_high": float(hi)})
    return out


def write_summary(cfg: SweepConfig, out_dir: str, cache: dict | None = None) -> dict:
    """Rewrite ``out_dir/summary.csv`` from the complete points' files; returns its columns.
    ``cache`` ({index: row}) keeps rows already read, so a long sweep reads each point once."""
    cache = {} if cache is None else cache
    columns = (sweep_labels(cfg), sweep_max_rank(cfg))
    rows = []
    for p in cfg.points:
        if p.index not in cache and is_complete(cfg.point_dir(out_dir, p.index)):
            cache[p.index] = summary_row(cfg, p, out_dir, columns)
        if p.index in cache:
            rows.append(cache[p.index])
    if rows:
        cols = {k: [r[k] for r in rows] for k in rows[0]}
    else:
        cols = {"point": []}
    _io.write_table_csv(os.path.join(out_dir, "summary.csv"), cols)
    return cols


def load_sweep(out_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(manifest, summary columns)`` of a sweep directory (plain JSON and CSV reads; the columns
    are those of summary.csv, shape (complete points,), none but an empty ``point`` before its first
    batch is written). Raises :class:`SweepError` (one line) when ``out_dir`` holds no sweep or its
    manifest.json or summary.csv is unreadable."""
    out_dir = os.fspath(out_dir)
    mpath = os.path.join(out_dir, "manifest.json")
    if not os.path.exists(mpath):
        raise SweepError(f"{out_dir} holds no sweep (no manifest.json)")
    try:
        manifest = _io.read_json(mpath)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("points"), int):
            raise ValueError("not an ncflow sweep manifest")
    except (OSError, ValueError) as e:
        raise SweepError(f"{mpath} is unreadable or not an ncflow sweep manifest ({type(e).__name__})") from None
    spath = os.path.join(out_dir, "summary.csv")
    if not os.path.exists(spath):
        return manifest, {"point": np.zeros(0, np.int64)}
    try:
        return manifest, _io.read_table_csv(spath)
    except (OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SweepError(f"{spath} is unreadable ({detail}); run the sweep again to rewrite it") from None
