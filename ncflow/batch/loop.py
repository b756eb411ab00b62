"""The batched engine: R runs of one problem shape, stepped as lanes of compiled programs.

Data path (see README's architecture section)::

    points → lanes (LaneTable on the host, DeviceLanes on the devices)
           → init: every run's start from fold_in(key(seed), i)
           → loop: chunk of masked steps → check → stop rule → history → progress → compaction
           → classify against the theory → one Result per point

* the run axis is split into cache-sized *groups*; one compiled *chunk* loops over the active
  groups (a ``fori_loop`` with a dynamic bound) and, inside each group, scans ``chunk`` steps of
  the one-run step vmapped over the group — so a group's state stays in cache while it is
  stepped, and finished runs cost nothing;
* between chunks the host applies the stop rule (:mod:`ncflow.batch.stop`) to every lane, records
  history, reports progress, and compacts the still-running lanes to the front of each device (one
  gather of fixed shape: no recompilation as runs finish);
* at the end :mod:`ncflow.outcomes` classifies every run against :mod:`ncflow.maths.theory`.

Per-run coefficients (λ's, step size, init scale) are lanes of the batch, so problems that
share a shape but differ in coefficients run in the same program (used by sweeps).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import jax
import numpy as np

from ncflow.batch import certify, estimate, stop
from ncflow.batch.history import History
from ncflow.batch.lanes import DeviceLanes, LaneTable
from ncflow.batch.layout import Layout, make_layout, runs_mesh
from ncflow.batch.memory import auto_group
from ncflow.batch.plan import MAX_CHUNKS_PER_VISIT, VISIT_SECONDS, WIDE_ALIGN
from ncflow.batch.plan import choose as choose_plan
from ncflow.batch.programs import Programs, StartSpec
from ncflow.codes import CERTIFIED, STOP_REASONS
from ncflow.config import Config
from ncflow.dynamics.build import default_lr, dynamics_for
from ncflow.errors import ConfigError
from ncflow.maths import theory
from ncflow.outcomes import class_fates, classify, default_tolerances, fates_text
from ncflow.problem import Problem
from ncflow.progress import Progress
from ncflow.result import Result

__all__ = ["Point", "simulate", "simulate_points"]

#: the per-lane coefficients of a batch's Problem
COEFF_FIELDS = ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale")


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of a batch: a problem (scalar coefficients), its runs and solver values."""

    problem: Problem
    runs: int
    lr: float
    init_scale: float
    seed: int


def _check_points(points: Sequence[Point]) -> Problem:
    """The batch's base problem (its static part). Points with class sizes (THEORY §7) share one
    batch whatever their sizes; where the sizes differ the base's ``columns`` is the largest N (what
    the init draws; each lane's maths uses its own sizes)."""
    base = points[0].problem
    shape = _shape(base)
    for p in points[1:]:
        if _shape(p.problem) != shape:
            raise ConfigError("points of one batch must share K, d, n, bias, loss, dtype, depth, widths and "
                              "activation (and class sizes or targets either all or none; targets of one shape)")
    if base.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise ConfigError("dtype float64 needs jax_enable_x64 (set it before JAX starts; the CLI does)")
    if base.class_sizes is not None and base.targets is None:
        if len({p.problem.class_sizes for p in points}) > 1:
            base = dataclasses.replace(base, columns=max(p.problem.N for p in points))
    return base


def _shape(q: Problem) -> tuple:
    data = (q.class_sizes is not None, None if q.targets is None else q.targets.shape, q.labels is not None)
    return (q.K, q.d, q.n if not q.general else None, q.bias, q.loss, q.dtype) + data + _model(q)


def _model(q: Problem) -> tuple:
    """The model's static shape (depth, hidden widths, activation): one per batch."""
    return (q.depth, tuple(q.layer_widths), q.activation)


def _device_lanes(points, base: Problem, lanes: LaneTable, layout: Layout, preds, space: str = "full"):
    """The device-side lanes (state still missing) and the per-lane (seed, run index) pairs the
    init program derives each run's key from, and the init scales."""
    dt = base.dtype
    pt = lanes.point
    real = lanes.batch >= 0
    run_of = np.concatenate([np.arange(p.runs) for p in points])
    run = np.where(real, run_of[np.maximum(lanes.batch, 0)], 0)
    coeffs = {f: np.asarray([float(getattr(p.problem, f)) for p in points], dt)[pt] for f in COEFF_FIELDS}
    if base.general:  # THEORY §7: class sizes, targets and labels are per-lane values too
        coeffs.update(_data_lanes(points, base, pt, space))
    if any(p.problem.lambda_hidden is not None for p in points):  # λ_1..λ_{L−1}: (lanes, L − 1)
        coeffs["lambda_hidden"] = np.asarray([[float(v) for v in p.problem.layer_lambdas[:-1]] for p in points],
                                             dt)[pt]
    prob = Problem(K=base.K, d=base.d, n=base.n, bias=base.bias, loss=base.loss, dtype=dt, depth=base.depth,
                   widths=base.widths, activation=base.activation, **coeffs)
    prob_b = jax.tree_util.tree_map(layout.put, prob)  # unflattening does not re-validate
    lr = layout.put(np.asarray([p.lr for p in points], dt)[pt])
    scales = layout.put(np.asarray([p.init_scale for p in points], dt)[pt])
    seeds = np.asarray([p.seed for p in points])[pt]
    seed_run = layout.put(np.stack([seeds, run], axis=1).astype(np.uint32))  # (lanes, 2): seed, run index
    pred_arrays = [pr.arrays(base.K, dt) for pr in preds]
    pred_b = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *pred_arrays)
    pred_b = jax.tree_util.tree_map(lambda a: layout.put(a[pt]), pred_b)
    return DeviceLanes(x=None, problem=prob_b, lr=lr, pred=pred_b), seed_run, scales


def _data_lanes(points, base: Problem, pt: np.ndarray, space: str) -> dict:
    """Per-lane class sizes (lanes, K) of a §7 batch, and ``columns`` (the N the init draws: the
    largest of the batch). A target matrix: per-lane targets (lanes, K, N) and labels (lanes, N) for
    the full engine, or its row-space coordinates (:class:`~ncflow.problem.RowBasis`, zero-padded
    to the batch's largest r) for the collapsed one."""
    out = {"columns": base.N}
    if base.class_sizes is not None:
        out["class_sizes"] = np.asarray([p.problem.sizes for p in points], base.dtype)[pt]
    if base.targets is None:
        return out
    if space == "full":
        out["targets"] = np.asarray([p.problem.targets for p in points], base.dtype)[pt]
        if base.labels is not None:
            out["labels"] = np.asarray([p.problem.labels for p in points], np.int32)[pt]
        return out
    from ncflow.maths.collapsed import pad_row_space, row_space

    rows = [row_space(p.problem) for p in points]
    r = max(b.TQ.shape[1] for b in rows)
    rows = [pad_row_space(b, r) for b in rows]
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a).astype(base.dtype)[pt], *rows)
    out["row_basis"] = stacked
    return out


def _compaction_order(lanes: LaneTable, layout: Layout) -> np.ndarray | None:
    """Device-local order putting running lanes first on every device, (local lanes,) — or None
    when nothing moves (always an order in a multi-process job, so every process calls the same
    programs)."""
    L = layout.lanes_per_device
    order = np.argsort(~lanes.running.reshape(-1, L), axis=1, kind="stable")
    if np.array_equal(order, np.broadcast_to(np.arange(L), order.shape)) and jax.process_count() == 1:
        return None
    return order


def simulate_points(points: Sequence[Point], config: Config, devices=None) -> list[Result]:
    """Run every point's runs as lanes of ONE batch (all points must share K, d, n, bias,
    loss and dtype) and return one :class:`~ncflow.result.Result` per point.

    ``devices``: a list of devices or a 1-D ``Mesh`` to shard the runs over (default: every
    device of every process). ``config.runs``, ``seed``, ``lr`` and ``init_scale`` are ignored
    here: each point carries its own. Everything else in ``config`` applies to the whole batch.
    In a multi-process job every process calls this with the same arguments; each builds and
    steps only its own devices' lanes, and every process receives the gathered results.
    Per-run arrays of each Result have shape (point runs,).
    """
    wall0 = time.perf_counter()
    base = _check_points(points)
    dyn = dynamics_for(base, config)
    R = sum(p.runs for p in points)
    mesh = runs_mesh(devices)
    plan = choose_plan(config, mesh.devices.flat[0].platform, dyn.space.name, base.dtype, base, dyn)
    group = None if plan.wide else (config.group or auto_group(base, dyn))
    layout = make_layout(R, group, mesh, align=WIDE_ALIGN)
    estimate.check_batch(points, config, dyn, layout, plan)  # memory per device and host; float32 values

    preds = [theory.predict(p.problem) for p in points]
    tols = [default_tolerances(p.problem, pr, config.gtol) for p, pr in zip(points, preds)]
    point_of = np.concatenate([np.full(p.runs, i) for i, p in enumerate(points)])  # batch index -> point
    lanes = LaneTable.build(layout.lane_batch_index()[layout.local_lanes()], point_of, points, tols,
                            [pr.reference for pr in preds], [certify.point_gap(p.problem, config) for p in points])
    dev, seed_run, scales = _device_lanes(points, base, lanes, layout, preds, dyn.space.name)

    progs = Programs(base, dyn, StartSpec.of(config), config.chunk, layout, plan)
    cols_abstract = _abstract_columns(lanes) if plan.wide else None
    compile_wall = progs.precompile(dev, seed_run, scales, cols_abstract)
    dev = dev._replace(x=progs.init(dev.problem, seed_run, scales))
    f, g = (_local(v, layout) for v in progs.check(dev.x, dev.problem)[:2])
    lanes = lanes.replace(f0=f.copy(), f_prev=f.copy(), f_mark=f.copy())

    history = History(R, math.ceil(config.max_steps / config.chunk), config.chunk, config.max_steps) \
        if config.history else None
    show = config.progress if jax.process_index() == 0 else False
    state = _LoopState(dev=dev, lanes=lanes, f=f, g=g, chunk_i=0, run_s=0.0)
    if history is not None:
        _record(progs, layout, history, state)
    t_loop = time.perf_counter()
    with Progress(total=R * config.max_steps, desc="steps of the budget", unit="run-steps", eta_bound=True,
                  enabled=show) as bar:  # a finished run counts as its whole budget: the ETA is an upper bound
        loop = _wide_loop if plan.wide else _cpu_loop
        state = loop(progs, config, base, dyn, layout, history, bar, state)
    loop_s = time.perf_counter() - t_loop
    if history is not None and state.chunk_i > 0 and history.last_chunk != state.chunk_i:
        _record(progs, layout, history, state)
    dev, lanes = state.dev, state.lanes

    t_cls = time.perf_counter()
    final = _classify(progs, config, dev, lanes, layout, tols, point_of)
    classify_s = time.perf_counter() - t_cls
    timing = dict(compile_s=compile_wall, compile_cpu_s=progs.compile_s, run_s=state.run_s, classify_s=classify_s,
                  states_s=final.pop("states_s"), summaries_s=final.pop("summaries_s"),
                  wall_s=time.perf_counter() - wall0, devices=layout.n_devices,
                  plan=plan.name, loop_s=loop_s)
    return _results(points, preds, tols, config, dyn, layout, final, history, timing, R)


@dataclasses.dataclass
class _LoopState:
    """What the stepping loop carries between chunks: the device lanes, the host lane table, the
    objective and gradient norm of the last check (this process's lanes), the chunks done and the
    seconds spent stepping."""

    dev: DeviceLanes
    lanes: LaneTable
    f: np.ndarray
    g: np.ndarray
    chunk_i: int
    run_s: float


def _record(progs, layout, history, st: _LoopState) -> None:
    """Write history row ``st.chunk_i`` (NC1–NC3 of every lane, f and ||∇f|| of the last check; the
    NC columns NaN for a target matrix without labels, which has no classes)."""
    f, g = _gather_host(st.f, layout), _gather_host(st.g, layout)
    if progs.problem.label_vector() is None:
        nc = (np.full(f.shape, np.nan),) * 3
    elif progs.plan.batched_lapack:  # accelerators: computed where the lanes live, only scalars travel
        nc = layout.gather(progs.diagnostics_on_devices(st.dev.problem, st.dev.x))
    else:
        nc = progs.diagnostics(*layout.gather((st.dev.problem, st.dev.x)))
    cols = dict(zip(("nc1", "nc2", "nc3"), nc), objective=f, grad_norm=g)
    history.write(st.chunk_i, _gather_host(st.lanes.batch, layout), cols)


def _cpu_loop(progs, config, base, dyn, layout, history, bar, st: _LoopState) -> _LoopState:
    """Plan cpu: one chunk program call per chunk over the active cache groups, the stop rule on
    the host after every chunk, running lanes compacted to the front of each device."""
    L = layout.lanes_per_device
    dev, lanes, f, g, chunk_i, run_s = st.dev, st.lanes, st.f, st.g, st.chunk_i, st.run_s
    while layout.allsum(int(lanes.running.sum())) > 0:
        chunk_i += 1
        budget = np.where(lanes.running, np.minimum(config.chunk, config.max_steps - lanes.steps), 0)
        n_groups = np.ceil(lanes.running.reshape(-1, L).sum(axis=1) / layout.group).astype(np.int32)
        t0 = time.perf_counter()
        x = progs.run_chunk(dev.x, dev.problem, dev.lr, layout.put(budget.astype(np.int32)),
                            layout.put(n_groups, per_device=True))
        dev = dev._replace(x=x)
        f, g, done, failed, sq = (_local(v, layout) for v in progs.check(dev.x, dev.problem))
        run_s += time.perf_counter() - t0
        lanes = lanes.replace(steps=lanes.steps + budget)
        if history is not None and history.wants(chunk_i):
            _record(progs, layout, history, _LoopState(dev, lanes, f, g, chunk_i, run_s))
        cert = certify.certified_lanes(base, lanes, f, dyn.space.name, sq)
        lanes = certify.record_first(lanes, cert, f)
        status = stop.next_status(lanes, f, g, done > 0, failed > 0,
                                  cert if config.stop == "certified" else None,
                                  early_stop=config.early_stop, max_steps=config.max_steps)
        lanes = lanes.replace(status=status, f_prev=f, **stop.plateau_columns(lanes, f, budget))
        _progress(bar, lanes, layout, config.max_steps)
        order = _compaction_order(lanes, layout)
        if order is not None:
            t1 = time.perf_counter()
            dev = progs.take(dev, layout.put(order.reshape(-1).astype(np.int32)))
            run_s += time.perf_counter() - t1
            moved = _lanes_order(order, L)
            lanes, f, g = lanes.take(moved), f[moved], g[moved]
    return _LoopState(dev, lanes, f, g, chunk_i, run_s)


def _wide_loop(progs, config, base, dyn, layout, history, bar, st: _LoopState) -> _LoopState:
    """Plan wide: the devices step every lane and apply the stop rule per lane themselves, for
    as many chunks as fit in about :data:`~ncflow.batch.plan.VISIT_SECONDS`; the host visits between
    such calls for progress and history (a history row's chunk bounds the call before it)."""
    dev, lanes, chunk_i, run_s = st.dev, st.lanes, st.chunk_i, st.run_s
    cols = progs.device_columns(lanes)
    budget = layout.put(np.full(len(layout.local_device_positions()), config.max_steps, np.int32), per_device=True)
    g_dev = None
    per_visit, max_chunks = 1, math.ceil(config.max_steps / config.chunk)
    while True:
        n = min(per_visit, MAX_CHUNKS_PER_VISIT)
        if history is not None:
            n = min(n, _next_record(history, chunk_i, max_chunks) - chunk_i)
        t0 = time.perf_counter()
        x, cols, g_dev, done = progs.run_chunks(dev.x, dev.problem, dev.lr, cols, budget,
                                                layout.put(np.full(len(layout.local_device_positions()), n,
                                                                   np.int32), per_device=True))
        dev = dev._replace(x=x)
        did = int(np.max(layout.gather(done)))  # chunks done by the slowest device (blocks until ready)
        dt = time.perf_counter() - t0
        run_s += dt
        chunk_i += did
        record = history is not None and history.wants(chunk_i)
        # a visit reads only the columns it uses (the whole table once, after the loop)
        lanes = lanes.replace(**_host_columns(cols, layout, ("status", "steps", "f_prev") if record
                                              else ("status", "steps")))
        running = layout.allsum(int(lanes.running.sum()))
        _progress(bar, lanes, layout, config.max_steps)
        if record:
            _record(progs, layout, history, _LoopState(dev, lanes, lanes.f_prev, _local(g_dev, layout), chunk_i,
                                                       run_s))
        if running == 0 or did == 0:
            break
        if did == n:  # aim at VISIT_SECONDS of device work per visit
            per_visit = max(1, int(n * min(4.0, VISIT_SECONDS / max(dt, 1e-6))))
    lanes = LaneTable(**_host_columns(cols, layout, tuple(cols)))
    g = _local(g_dev, layout) if g_dev is not None else st.g
    return _LoopState(dev, lanes, lanes.f_prev, g, chunk_i, run_s)


def _progress(bar, lanes: LaneTable, layout, max_steps: int) -> None:
    """Show the run-steps done out of the budget (a finished run counts as its whole budget) and the
    runs finished."""
    bar.update(layout.allsum(int(np.where(lanes.finished, max_steps, lanes.steps).sum())),
               extra=f"{layout.allsum(int(lanes.finished.sum()))}/{layout.runs} runs finished, step "
                     f"{int(lanes.steps.max())}")


def _next_record(history, chunk_i: int, max_chunks: int) -> int:
    """The next chunk after ``chunk_i`` whose history row is recorded (or the last chunk)."""
    later = [c for c in history.at if c > chunk_i]
    return min(later) if later else max(max_chunks, chunk_i + 1)


def _host_columns(cols: dict, layout, keys: tuple) -> dict:
    """Columns ``keys`` of this process's lane table from the device columns, {key: (local lanes,)}
    in the host dtypes (float64, or the integer type of :data:`_HOST_DTYPES`)."""
    return {k: _local(cols[k], layout).astype(_HOST_DTYPES.get(k, np.float64)) for k in keys}


#: STOP_REASONS as an array indexed by status code (one vectorized lookup for 100,000 runs)
_STOP_NAMES = np.asarray([STOP_REASONS.get(i, "") for i in range(max(STOP_REASONS) + 1)])

#: the host dtypes of the integer columns of a LaneTable (every other column is float64)
_HOST_DTYPES = {"batch": np.int64, "point": np.int64, "status": np.int8, "steps": np.int64,
                "certified_step": np.int64}


def _abstract_columns(lanes: LaneTable) -> dict:
    """The shapes and (canonical) dtypes of the device lane columns, for precompiling."""
    return {k: jax.ShapeDtypeStruct(np.shape(v), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype))
            for k, v in dataclasses.asdict(lanes).items()}


def _lanes_order(order: np.ndarray, L: int) -> np.ndarray:
    """Global (this process's) lane indices of a device-local ``order`` of shape (devices, L)."""
    return (order + (np.arange(order.shape[0]) * L)[:, None]).reshape(-1)


def _classify(progs, config, dev, lanes, layout, tols, point_of):
    """Compute the summaries, gather every lane and classify; everything in batch order. On an
    accelerator the summaries are computed where the lanes live (vmapped, sharded) and only their
    scalars travel; on a CPU on the gathered lanes, one after another (see ``Plan.batched_lapack``)."""
    states_s = 0.0
    t_summ = time.perf_counter()
    if progs.plan.batched_lapack:
        # only the per-lane scalars travel. The final states stay on the devices (Result.final_state
        # holds them as jax.Arrays; a copy to the host is the user's call: 2.2 GB for 100,000 runs at
        # d=64), except in a multi-process job, where the gather is collective and happens now
        summ = layout.gather(progs.summaries_on_devices(dev.problem, dev.x, dev.pred))
        t0 = time.perf_counter()
        x_all, prob_all = (dev.x, dev.problem) if jax.process_count() == 1 else layout.gather((dev.x, dev.problem))
        states_s += time.perf_counter() - t0
    else:
        x_all, prob_all, pred_all = layout.gather((dev.x, dev.problem, dev.pred))
        summ = progs.summaries(prob_all, x_all, pred_all)
    summaries_s = time.perf_counter() - t_summ - states_s
    f, gn, nc, dist, extra = summ
    batch_g = _gather_host(lanes.batch, layout)
    real = np.nonzero(batch_g >= 0)[0]
    by_batch = real[np.argsort(batch_g[real])]  # global lane of batch index 0..R-1
    if np.array_equal(by_batch, np.arange(len(by_batch))):  # lanes in batch order: views, no copies
        by_batch = slice(0, len(by_batch))

    def pick(a):  # per-lane scalars: writable float64 copies
        return np.array(a, np.float64)[by_batch]

    f, gn = pick(f), pick(gn)
    nc, dist = jax.tree_util.tree_map(pick, nc), jax.tree_util.tree_map(pick, dist)
    extra = {k: pick(v) for k, v in extra.items()}
    t0 = time.perf_counter()
    x_all, prob_all = _rows((x_all, prob_all), by_batch)  # on the devices for jax.Arrays
    states_s += time.perf_counter() - t0
    steps = _gather_host(lanes.steps, layout)[by_batch]
    status = _gather_host(lanes.status, layout)[by_batch]
    cert_step = _gather_host(lanes.certified_step, layout)[by_batch].astype(np.float64)
    cert_margin = _gather_host(lanes.certified_margin, layout)[by_batch]

    def hessian(idx):
        return progs.hessian_extremes(x_all, prob_all, idx, config.lanczos_iters)

    f_change = _gather_host(lanes.f_change, layout)[by_batch]
    outcome, min_eig, max_eig = classify(f, gn, dist, tols, status, hessian, point_of=point_of,
                                         critical_error=extra.get("critical_error"), f_change=f_change, columns=extra)
    return dict(x=x_all, f=f, gn=gn, nc=nc, dist=dist, extra=extra, steps=steps, status=status,
                outcome=outcome, min_eig=min_eig, max_eig=max_eig,
                certified_step=np.where(cert_step >= 0, cert_step, np.nan), certified_margin=cert_margin,
                states_s=states_s, summaries_s=summaries_s)


def _results(points, preds, tols, config, dyn, layout, final, history, timing, R) -> list[Result]:
    """One Result per point from the batch-ordered final arrays."""
    out = []
    offset = 0
    for i, p in enumerate(points):
        sel = slice(offset, offset + p.runs)  # batch indices of this point, in run order (views)
        offset += p.runs
        nc, dist = final["nc"], final["dist"]
        per_run = {
            "run": np.arange(p.runs), "outcome": final["outcome"][sel], "steps": final["steps"][sel],
            "objective": final["f"][sel], "gap": dist.gap[sel], "grad_norm": final["gn"][sel],
            "nc1": nc.nc1[sel], "nc2": nc.nc2[sel], "nc3": nc.nc3[sel], "nc4": nc.nc4[sel],
            "nc2_uncentered": nc.nc2_uncentered[sel], "within_between": nc.within_between[sel],
            "gram_error": dist.gram_error[sel], "self_duality": dist.self_duality[sel],
            "w_norm": dist.w_norm[sel], "h_norm": dist.h_norm[sel], "bias_error": dist.bias_error[sel],
            "min_hessian_eig": final["min_eig"][sel], "max_hessian_eig": final["max_eig"][sel],
            "stop": _STOP_NAMES[final["status"][sel]],
            "certified_step": final["certified_step"][sel], "certified_margin": final["certified_margin"][sel],
            **{k: v[sel] for k, v in final["extra"].items()},
        }
        if p.problem.general:
            per_run.update(_general_columns(p.problem, preds[i], tols[i], final, sel, dyn.point(final["x"])))
        share = p.runs / R
        run_steps = int(final["steps"][sel].sum())
        run_s = timing["run_s"] * share
        point_timing = {
            "compile_s": timing["compile_s"], "compile_cpu_s": timing["compile_cpu_s"], "run_s": run_s,
            "classify_s": timing["classify_s"] * share, "states_s": timing["states_s"] * share,
            "summaries_s": timing["summaries_s"] * share,
            "wall_s": timing["wall_s"], "run_steps": run_steps,
            "run_steps_per_s": run_steps / run_s if run_s > 0 else 0.0, "devices": timing["devices"],
            "plan": timing["plan"], "loop_s": timing["loop_s"] * share,
        }
        out.append(Result(
            problem=p.problem, prediction=preds[i], tolerances=tols[i],
            config={**dataclasses.asdict(config), "runs": p.runs, "seed": p.seed, "lr": p.lr,
                    "init_scale": p.init_scale, "engine": dyn.name, "group": layout.group, "plan": timing["plan"],
                    "devices": layout.n_devices},
            per_run=per_run, history=None if history is None else history.for_runs(sel, preds[i].reference),
            timing=point_timing, final_state=_rows(final["x"], sel),
            representation=dyn.name, device=str(layout.mesh.devices.flat[0].device_kind), to_params=dyn.to_params,
        ))
    return out


def _rows(tree, sel: slice | np.ndarray):
    """Rows ``sel`` (a slice or an index array) of every leaf of ``tree``; the leaves themselves
    when ``sel`` is the slice of all their rows (no copy of final states that stay on the devices)."""
    def rows(a):
        whole = isinstance(sel, slice) and sel.start == 0 and sel.stop == a.shape[0]
        return a if whole else a[sel]
    return jax.tree_util.tree_map(rows, tree)


def _general_columns(problem: Problem, pred, tol, final, sel, x) -> dict:
    """Per-run columns of a THEORY §7 point: the n_k-weighted NC1, the distances of MᵀM and W M to
    the prediction, which classes merged and vanished (in the state at the stop), and whether that is
    what the theory predicts (for a run stopped by the certificate: of its limit, by the theorem).
    ``x``: the runs' points (``Dynamics.point`` of the carried states: Params or Collapsed, leading
    axis the batch; the deep linear UFM's DeepParams or DeepCollapsed: its classifier W_L and the last
    layer's class means), not an optimizer's or the flow's state around them. A target matrix without
    labels has no classes: every class metric (NC1-NC4, ``h_norm``, ``self_duality``, ...) is NaN."""
    nc, dist = final["nc"], final["dist"]
    out = {"nc1_weighted": nc.nc1_weighted[sel], "gram_h_error": dist.gram_h_error[sel],
           "cross_error": dist.cross_error[sel]}
    if problem.label_vector() is None:  # a target matrix without labels: no classes, so no class metrics
        none = np.full(len(out["nc1_weighted"]), np.nan)
        return {k: none for k in ("nc1", "nc2", "nc3", "nc4", "nc2_uncentered", "within_between", "h_norm",
                                  "self_duality", *out)}
    Ws = getattr(x, "Ws", None)  # a deep linear UFM: the classifier W_L reads W_{L-1}⋯W_1 H's class means
    W = np.asarray((x.W if Ws is None else Ws[-1])[sel])  # only these rows to the host (states may be on devices)
    if hasattr(x, "M"):
        M = np.asarray(x.M[sel])
    else:  # full: class means of H (columns of a class by its labels)
        Y = np.eye(problem.K)[:, problem.label_vector()]
        M = np.asarray(x.H[sel]) @ Y.T / Y.sum(axis=1)
    for Wl in (Ws or ())[:-1]:
        M = np.asarray(Wl[sel]) @ M
    predicted = hasattr(pred, "merged")  # the deep UFM's prediction names no class fates: judged by the run's scale
    scale = None if not predicted else (
        float(np.max(pred.w_norms, initial=0.0)) ** 2 if pred.w_norms is not None else 0.0,
        float(np.max(pred.h_norms, initial=0.0)) ** 2 if pred.h_norms is not None else 0.0)
    fates = [class_fates(W[r], M[r], max(tol.geom_tol, 1e-6), scale) for r in range(W.shape[0])]
    want = fates_text(pred.merged, pred.vanished) if predicted else None
    # a run stopped by the certificate has not merged or vanished yet, but its limit is a global
    # minimizer, whose classes are the theory's wherever the predicted Gram is unique
    certified = final["status"][sel] == CERTIFIED
    return {**out, "merged": np.asarray([m for m, _ in fates]),
            "vanished": np.asarray([v for _, v in fates]),
            "classes_as_predicted": np.asarray([f == want for f in fates]) | certified
            if predicted and pred.gram is not None else np.full(W.shape[0], np.nan)}


def _local(arr: jax.Array, layout: Layout) -> np.ndarray:
    """This process's lanes of a per-lane global array, as float64 numpy."""
    if jax.process_count() == 1:
        return np.asarray(arr, np.float64)
    shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data, np.float64) for s in shards])


def _gather_host(local: np.ndarray, layout: Layout) -> np.ndarray:
    """Concatenate a host-side per-lane array over processes (in global lane order)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return layout.gather(layout.put(np.asarray(local)))


def simulate(problem: Problem, config: Config | None = None, **overrides) -> Result:
    """Run ``config.runs`` random starts of ``problem`` and classify them against the theory.

    ``overrides`` replace fields of ``config`` (e.g. ``simulate(p, runs=100, seed=3)``); the
    extra keyword ``devices`` (a device list or 1-D Mesh) picks where the runs are sharded.
    Returns a :class:`~ncflow.result.Result` with per-run arrays of shape (runs,).
    """
    devices = overrides.pop("devices", None)
    config = dataclasses.replace(config or Config(), **overrides)
    lr = config.lr if config.lr is not None else default_lr(problem, config)
    point = Point(problem=problem, runs=config.runs, lr=float(lr), init_scale=float(config.init_scale),
                  seed=int(config.seed))
    return simulate_points([point], config, devices=devices)[0]
