"""The batched engine: R gradient-descent runs of one problem shape in one compiled program.

Data path (see README's architecture section):

* every run's start comes from ``fold_in(key(seed), i)`` (``init.run_key``);
* the run axis is split into cache-sized *groups*; one compiled *chunk* loops over the active
  groups (a ``fori_loop`` with a dynamic bound) and, inside each group, scans ``chunk`` GD steps
  of the one-run step vmapped over the group — so a group's state stays in cache while it is
  stepped, and finished runs cost nothing;
* between chunks a host loop checks every run (gradient norm, objective change, finiteness),
  records history, reports progress, and compacts the still-running runs to the front (one
  gather of fixed shape: no recompilation as runs finish);
* at the end :mod:`ncflow.outcomes` classifies every run against :mod:`ncflow.theory`.

Per-run coefficients (λ's, step size, init scale) are lanes of the batch, so problems that
share a shape but differ in coefficients run in the same program (used by sweeps).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ncflow.dynamics import starts as _init
from ncflow.maths import metrics as _m
from ncflow.dynamics import steppers as solvers
from ncflow.maths import theory
from ncflow.outcomes import classify, default_tolerances
from ncflow.maths.objective import Params
from ncflow.problem import Problem
from ncflow.progress import Progress
from ncflow.batch.layout import AXIS, Layout, make_layout
from ncflow.codes import BUDGET, CONVERGED, DIVERGED, PADDING, RUNNING
from ncflow.config import Config
from ncflow.dynamics.spaces import Representation
from ncflow.errors import ConfigError
from ncflow.result import Result
from jax.sharding import PartitionSpec as P

COEFF_FIELDS = ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale")



@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of a batch: a problem (scalar coefficients), its runs and solver values."""

    problem: Problem
    runs: int
    lr: float
    init_scale: float
    seed: int


def available_memory_bytes() -> int:
    """Memory the engine may use: free device memory on an accelerator, else MemAvailable."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def state_bytes(problem: Problem, rep: Representation) -> int:
    """Bytes of one run's carried state (from the representation's abstract state)."""
    dt = problem.dtype
    K, d, N = problem.K, problem.d, problem.N
    params = Params(jax.ShapeDtypeStruct((K, d), dt), jax.ShapeDtypeStruct((d, N), dt), jax.ShapeDtypeStruct((K,), dt))
    state = jax.eval_shape(lambda p: rep.from_params(problem, p), params)
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(state)))


def estimate_memory(problem: Problem, rep: Representation, runs: int, group: int) -> int:
    """Estimated peak bytes of a batch: state ×4 (state, donated copy, gather, summaries)
    plus one group's full-size start (the collapsed engine builds starts group by group)."""
    item = np.dtype(problem.dtype).itemsize
    init_tmp = group * (problem.K * problem.d + 2 * problem.d * problem.N) * item
    return 4 * runs * state_bytes(problem, rep) + init_tmp


#: largest cache group; groups never depend on the number of runs, so a run computes with the
#: same vector width (and so the same rounding) alone, in a batch of 1000, or on any device count
MAX_GROUP = 64


def auto_group(problem: Problem, rep: Representation) -> int:
    """Runs per cache group: the power of two whose state is about 256 KiB, in [1, MAX_GROUP]."""
    g = max(1, (256 * 1024) // max(state_bytes(problem, rep), 1))
    return int(min(1 << int(math.floor(math.log2(g))), MAX_GROUP))


def _tree_take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


class _Programs:
    """The compiled pieces of one batch, each a ``shard_map`` over the lanes of its device:
    AOT-compiled once per shape and reused for every chunk; compile seconds are accumulated."""

    def __init__(self, problem: Problem, rep: Representation, chunk: int, layout: Layout, init_fn):
        self.init_fn = init_fn
        self.compile_s = 0.0
        self.problem, self.rep, self.chunk, self.layout = problem, rep, chunk, layout
        self.group = layout.group
        self._compiled = {}
        self._lock = threading.Lock()

    def _call(self, name, local_fn, *args, donate=(), compile_only=False, sharded=True):
        key = (name,) + tuple(jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), args))
        hit = self._compiled.get(key)
        if hit is None:
            spec = P(AXIS)
            fn = (jax.shard_map(local_fn, mesh=self.layout.mesh, in_specs=(spec,) * len(args), out_specs=spec)
                  if sharded else local_fn)
            t0 = time.perf_counter()
            hit = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            with self._lock:
                self.compile_s += time.perf_counter() - t0
                self._compiled[key] = hit
        return None if compile_only else hit(*args)

    def precompile(self, prob_b, keys, scales, lr, pred_b) -> float:
        """Compile every program of the batch concurrently (XLA compiles outside the GIL), and
        return the wall seconds it took. ``compile_s`` keeps the sum of per-program times."""
        x_abs = jax.eval_shape(lambda p, k, s: self.init(p, k, s, abstract=True), prob_b, keys, scales)
        x_abs = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.layout.sharding), x_abs)
        lanes = self.layout.total_lanes
        i32 = lambda shape: jax.ShapeDtypeStruct(shape, np.int32, sharding=self.layout.sharding)  # noqa: E731
        jobs = [
            lambda: self.init(prob_b, keys, scales, compile_only=True),
            lambda: self.run_chunk(x_abs, prob_b, lr, i32((lanes,)), i32((self.layout.n_devices,)),
                                   compile_only=True),
            lambda: self.check(x_abs, prob_b, compile_only=True),
            lambda: self.take((x_abs, prob_b, lr, pred_b), i32((lanes,)), compile_only=True),
            lambda: self.summaries(x_abs, prob_b, pred_b, compile_only=True),
        ]
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as ex:
            for fut in [ex.submit(j) for j in jobs]:
                fut.result()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ programs (local views)
    def init(self, prob_b, keys, scales, abstract=False, compile_only=False):
        rep, g, init_fn = self.rep, self.group, self.init_fn

        def local(prob_b, keys, scales):
            def one(a):
                p, k, s = a
                return rep.from_params(p, init_fn(p, k, s))
            return jax.lax.map(one, (prob_b, keys, scales), batch_size=g)

        if abstract:
            return local(prob_b, keys, scales)
        return self._call("init", local, prob_b, keys, scales, compile_only=compile_only)

    def run_chunk(self, x, prob_b, lr, budget, n_groups, compile_only=False):
        rep, g, T = self.rep, self.group, self.chunk

        def local(x, prob_b, lr, budget, n_groups):
            vstep = jax.vmap(rep.step)

            def group_body(gi, x):
                start = gi * g
                sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, g, axis=0)  # noqa: E731
                xg, pg = jax.tree_util.tree_map(sl, x), jax.tree_util.tree_map(sl, prob_b)
                lrg, bg = sl(lr), sl(budget)

                def step_body(xg, t):
                    # a lane past its budget takes a step of size 0, which leaves it unchanged
                    return vstep(pg, xg, jnp.where(t < bg, lrg, 0.0)), None

                xg, _ = jax.lax.scan(step_body, xg, jnp.arange(T))
                return jax.tree_util.tree_map(
                    lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, axis=0), x, xg)

            return jax.lax.fori_loop(0, n_groups[0], group_body, x)

        return self._call("chunk", local, x, prob_b, lr, budget, n_groups, donate=(0,), compile_only=compile_only)

    def _per_lane(self, fn):
        """``fn(problem, state, *rest)`` for one run, mapped over a device's lanes one cache group
        at a time (the same vector width as the steps, whatever the number of lanes)."""
        g = self.group
        return lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=g)

    def check(self, x, prob_b, compile_only=False):
        """Per lane: objective, full gradient norm, and the representation's own stop flag."""
        rep = self.rep

        def one(p, xi):
            f, gn = rep.value_and_grad_norm(p, xi)
            return f, gn, (rep.done(p, xi) if rep.done is not None else jnp.zeros((), bool))

        fn = self._per_lane(one)
        return self._call("check", lambda x, p: fn(p, x), x, prob_b, compile_only=compile_only)

    def take(self, tree, idx, compile_only=False):
        """Reorder lanes within each device (``idx`` holds device-local indices)."""
        return self._call("take", _tree_take, tree, idx, donate=(0,), compile_only=compile_only)

    # Metrics with LAPACK calls (SVD, eigh) run on the gathered lanes, one lane after another
    # (lax.map without batching). Batched LAPACK kernels split their batch over XLA's intra-op
    # thread pool and wait for it; two of them at once (eigh and SVD of one program, or one per
    # device) exhausted a 2-thread pool and deadlocked. Unbatched, each runs inline, and a run's
    # numbers cannot depend on the batch.
    def _host_map(self, name, fn, *args, compile_only=False):
        prog = lambda *a: jax.lax.map(lambda t: fn(*t), a)  # noqa: E731
        if compile_only:
            abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
            return self._call(name, prog, *abstract, compile_only=True, sharded=False)
        return jax.tree_util.tree_map(np.asarray, self._call(name, prog, *args, sharded=False))

    def diagnostics(self, x, prob_b):
        """NC1–NC3 of every lane (numpy inputs gathered on the host, all lanes)."""
        rep, N = self.rep, self.problem.N

        def one(p, xi):
            nc = _m.nc_metrics(rep.stats(p, xi), N)
            return nc.nc1, nc.nc2, nc.nc3

        return self._host_map("diag", one, prob_b, x)

    def summaries(self, x, prob_b, pred_b, compile_only=False):
        """Objective, gradient norm, NC metrics, distance to the optimum and the
        representation's extras of every lane (numpy inputs gathered on the host, all lanes)."""
        rep, N = self.rep, self.problem.N

        def one(p, xi, pa):
            f, gn = rep.value_and_grad_norm(p, xi)
            st = rep.stats(p, xi)
            extra = rep.extras(p, xi) if rep.extras is not None else {}
            return f, gn, _m.nc_metrics(st, N), _m.optimum_distance(p, pa, st, f), extra

        return self._host_map("summ", one, prob_b, x, pred_b, compile_only=compile_only)


def _history_chunks(max_chunks: int) -> set[int]:
    """Chunk indices (1-based) at which history is recorded: about 8 per decade, plus the first."""
    out, c = {1}, 1.0
    while c < max_chunks:
        c *= 10 ** (1 / 8)
        out.add(int(round(c)))
    return out


def simulate_points(points: Sequence[Point], config: Config, devices=None) -> list[Result]:
    """Run every point's runs as lanes of ONE batch (all points must share K, d, n, bias,
    loss and dtype) and return one :class:`Result` per point.

    ``devices``: a list of devices or a 1-D ``Mesh`` to shard the runs over (default: every
    device of every process). ``config.runs``, ``seed``, ``lr`` and ``init_scale`` are ignored
    here: each point carries its own. Everything else in ``config`` applies to the whole batch.
    In a multi-process job every process calls this with the same arguments; each builds and
    steps only its own devices' lanes, and every process receives the gathered results.
    """
    wall0 = time.perf_counter()
    base = points[0].problem
    for p in points[1:]:
        q = p.problem
        if (q.K, q.d, q.n, q.bias, q.loss, q.dtype) != (base.K, base.d, base.n, base.bias, base.loss, base.dtype):
            raise ConfigError("points of one batch must share K, d, n, bias, loss and dtype")
    if base.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise ConfigError("dtype float64 needs jax_enable_x64 (set it before JAX starts; the CLI does)")
    rep = solvers.representation(base, config)
    R = sum(p.runs for p in points)
    layout = make_layout(R, config.group or auto_group(base, rep), devices)
    group = layout.group
    need = estimate_memory(base, rep, layout.total_lanes, group * layout.n_devices)
    limit = config.memory_limit_bytes or int(0.8 * available_memory_bytes())
    if need > limit:
        raise ConfigError(
            f"runs: {R} runs of K={base.K} d={base.d} n={base.n} ({rep.name} engine, {base.dtype}) need "
            f"about {need / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB available; use fewer runs")

    # ------------------------------------------------------------------ lanes (this process's)
    point_of = np.concatenate([np.full(p.runs, i) for i, p in enumerate(points)])  # batch index -> point
    run_of = np.concatenate([np.arange(p.runs) for p in points])  # batch index -> run within point
    lane_all = layout.lane_batch_index()
    loc = layout.local_lanes()
    lane = lane_all[loc]  # local lane -> batch index (-1 = padding)
    real = lane >= 0
    lane_pt = np.where(real, point_of[np.maximum(lane, 0)], 0)
    lane_rn = np.where(real, run_of[np.maximum(lane, 0)], 0)
    dt = base.dtype
    coeffs = {f: np.asarray([float(getattr(p.problem, f)) for p in points], dt)[lane_pt] for f in COEFF_FIELDS}
    prob_local = Problem(K=base.K, d=base.d, n=base.n, bias=base.bias, loss=base.loss, dtype=dt, **coeffs)
    prob_b = jax.tree_util.tree_map(layout.put, prob_local)  # unflattening does not re-validate
    lr = layout.put(np.asarray([p.lr for p in points], dt)[lane_pt])
    scales = layout.put(np.asarray([p.init_scale for p in points], dt)[lane_pt])
    seeds = np.asarray([p.seed for p in points])[lane_pt]
    keys = jax.vmap(_init.run_key)(jnp.asarray(seeds, jnp.uint32), jnp.asarray(lane_rn, jnp.uint32))
    keys = jax.random.wrap_key_data(layout.put(np.asarray(jax.random.key_data(keys))))
    preds = [theory.predict(p.problem) for p in points]
    tols = [default_tolerances(p.problem, pr, config.gtol) for p, pr in zip(points, preds)]
    gtol_lane = np.asarray([t.gtol for t in tols])[lane_pt]
    ftol_lane = np.asarray([t.ftol for t in tols])[lane_pt]
    strict_lane = np.asarray([t.strict_gtol for t in tols])[lane_pt]
    gap_lane = np.asarray([t.gap_tol for t in tols])[lane_pt]
    fstar_lane = np.asarray([pr.objective for pr in preds])[lane_pt]

    pred_arrays = [pr.arrays(base.K, dt) for pr in preds]
    pred_b = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *pred_arrays)
    pred_b = jax.tree_util.tree_map(lambda a: layout.put(a[lane_pt]), pred_b)

    progs = _Programs(base, rep, config.chunk, layout, _init.initializer(base, config))
    compile_wall = progs.precompile(prob_b, keys, scales, lr, pred_b)
    x = progs.init(prob_b, keys, scales)
    f_init, g_init = (_local(v, layout) for v in progs.check(x, prob_b)[:2])
    f0 = f_init.copy()
    f_prev = f_init.copy()

    L = layout.lanes_per_device
    n_loc = len(lane)
    lane0 = lane.copy()  # history is kept in this original lane order
    perm = np.arange(n_loc)  # current local lane -> original local lane
    status = np.where(real, RUNNING, PADDING).astype(np.int8)
    steps = np.zeros(n_loc, np.int64)
    T = config.chunk
    max_chunks = int(math.ceil(config.max_steps / T))
    record_at = _history_chunks(max_chunks) if config.history else set()
    hist_steps, hist = [], {k: [] for k in ("objective", "grad_norm", "nc1", "nc2", "nc3")}

    def record(f_now, g_now, x_now):
        inv = np.argsort(perm)  # original local lane order
        lanes = layout.local_lanes()
        nc = [np.asarray(v, np.float64)[lanes][inv]
              for v in progs.diagnostics(*layout.gather((x_now, prob_b)))]
        vals = [f_now[inv], g_now[inv]] + nc
        hist_steps.append(min(chunk_i * T, config.max_steps))
        for k, v in zip(hist, vals):
            hist[k].append(v)

    run_s = 0.0
    executed = 0
    chunk_i = 0
    if config.history:
        record(f_init, g_init, x)
    is_main = jax.process_index() == 0
    f_now, g_now = f_init, g_init
    with Progress(total=R, desc="runs finished", enabled=config.progress if is_main else False) as bar:
        while True:
            active = status == RUNNING
            if layout.allsum(int(active.sum())) == 0:
                break
            chunk_i += 1
            budget = np.where(active, np.minimum(T, config.max_steps - steps), 0)
            per_dev = active.reshape(-1, L).sum(axis=1)
            n_groups = np.ceil(per_dev / group).astype(np.int32)
            t0 = time.perf_counter()
            x = progs.run_chunk(x, prob_b, lr, layout.put(budget.astype(np.int32)), layout.put(n_groups, per_device=True))
            f_now, g_now, rep_done = (_local(v, layout) for v in progs.check(x, prob_b))
            run_s += time.perf_counter() - t0
            steps += budget
            executed += int(budget.sum())
            if chunk_i in record_at:
                record(f_now, g_now, x)
            fin = np.isfinite(f_now) & np.isfinite(g_now)
            ref = np.maximum(1.0, np.abs(f0[perm]))
            if config.early_stop:
                div = active & (~fin | (np.abs(f_now) > 1e6 * ref))
                # a run stops at the predicted optimum at gtol; anywhere else it must be stationary
                # to strict_lane (gtol/1000), so a run slowly leaving a saddle is not stopped there
                at_opt = np.abs(f_now - fstar_lane) <= gap_lane
                tol = np.where(at_opt, gtol_lane, strict_lane)
                conv = active & ~div & (g_now <= tol) & (np.abs(f_now - f_prev) <= ftol_lane)
                status[div] = DIVERGED
                status[conv] = CONVERGED
            status[(status == RUNNING) & ((steps >= config.max_steps) | (rep_done > 0))] = BUDGET
            f_prev = f_now
            done = layout.allsum(int(((status != RUNNING) & (status >= 0)).sum()))
            bar.update(done, extra=f"step {int(steps.max())}")
            # compact: running lanes first within each device (always called: SPMD-consistent)
            still = (status == RUNNING).reshape(-1, L)
            order_local = np.argsort(~still, axis=1, kind="stable")  # (devices, L) device-local
            if not np.array_equal(order_local, np.broadcast_to(np.arange(L), order_local.shape)) \
                    or jax.process_count() > 1:
                t1 = time.perf_counter()
                x, prob_b, lr, pred_b = progs.take((x, prob_b, lr, pred_b),
                                                   layout.put(order_local.reshape(-1).astype(np.int32)))
                run_s += time.perf_counter() - t1
                order = (order_local + (np.arange(still.shape[0]) * L)[:, None]).reshape(-1)
                perm, status, steps, f_prev = perm[order], status[order], steps[order], f_prev[order]
                gtol_lane, ftol_lane = gtol_lane[order], ftol_lane[order]
                strict_lane, gap_lane, fstar_lane = strict_lane[order], gap_lane[order], fstar_lane[order]
                lane, lane_pt, lane_rn = lane[order], lane_pt[order], lane_rn[order]
    if config.history and chunk_i not in record_at and chunk_i > 0:
        record(f_now, g_now, x)

    # ------------------------------------------------------------------ classify
    t_cls = time.perf_counter()
    x_all, prob_all, pred_all = layout.gather((x, prob_b, pred_b))
    f, gn, nc, dist, extra = progs.summaries(x_all, prob_all, pred_all)
    lane_g = _gather_host(lane, layout)
    steps_g = _gather_host(steps, layout)
    status_g = _gather_host(status, layout)
    sel_real = np.nonzero(lane_g >= 0)[0]
    by_batch = sel_real[np.argsort(lane_g[sel_real])]  # global lane of batch index 0..R-1
    pick = lambda a: np.asarray(a, np.float64)[by_batch]  # noqa: E731
    f, gn = pick(f), pick(gn)
    nc = jax.tree_util.tree_map(pick, nc)
    dist = jax.tree_util.tree_map(pick, dist)
    extra = {k: pick(v) for k, v in extra.items()}
    x_all = jax.tree_util.tree_map(lambda a: a[by_batch], x_all)
    prob_all = jax.tree_util.tree_map(lambda a: jnp.asarray(a[by_batch]), prob_all)
    steps_b, status_b = steps_g[by_batch], status_g[by_batch]
    outcome, min_eig, max_eig = classify(base, rep, x_all, prob_all, f, gn, dist, point_of, tols,
                                         config.lanczos_iters, status_b)
    classify_s = time.perf_counter() - t_cls
    wall = time.perf_counter() - wall0
    executed = layout.allsum(executed)

    results = []
    for i, p in enumerate(points):
        sel = np.nonzero(point_of == i)[0]  # batch indices of this point, in run order
        per_run = {
            "run": run_of[sel], "outcome": outcome[sel], "steps": steps_b[sel],
            "objective": f[sel], "gap": dist.gap[sel], "grad_norm": gn[sel],
            "nc1": nc.nc1[sel], "nc2": nc.nc2[sel], "nc3": nc.nc3[sel], "nc4": nc.nc4[sel],
            "nc2_uncentered": nc.nc2_uncentered[sel], "within_between": nc.within_between[sel],
            "gram_error": dist.gram_error[sel], "self_duality": dist.self_duality[sel],
            "w_norm": dist.w_norm[sel], "h_norm": dist.h_norm[sel], "bias_error": dist.bias_error[sel],
            "min_hessian_eig": min_eig[sel], "max_hessian_eig": max_eig[sel],
            **{k: v[sel] for k, v in extra.items()},
        }
        history = None
        if config.history:
            lane0_g = _gather_host(lane0, layout)
            real0 = np.nonzero(lane0_g >= 0)[0]
            by_batch0 = real0[np.argsort(lane0_g[real0])]
            hist_g = {k: np.stack([_gather_host(v, layout)[by_batch0] for v in vs]) for k, vs in hist.items()}
            history = {"step": np.asarray(hist_steps)}
            history.update({k: v[:, sel] for k, v in hist_g.items()})
            history["gap"] = history["objective"] - preds[i].objective
        share = len(sel) / R
        run_steps = int(steps_b[sel].sum())
        timing = {
            "compile_s": compile_wall, "compile_cpu_s": progs.compile_s, "run_s": run_s * share, "classify_s": classify_s * share,
            "wall_s": wall, "run_steps": run_steps,
            "run_steps_per_s": run_steps / (run_s * share) if run_s > 0 else 0.0,
            "devices": layout.n_devices,
        }
        results.append(Result(
            problem=p.problem, prediction=preds[i], tolerances=tols[i],
            config={**dataclasses.asdict(config), "runs": p.runs, "seed": p.seed, "lr": p.lr,
                    "init_scale": p.init_scale, "engine": rep.name, "group": group,
                    "devices": layout.n_devices},
            per_run=per_run, history=history, timing=timing,
            final_state=jax.tree_util.tree_map(lambda a: a[sel], x_all), representation=rep.name,
            device=str(layout.mesh.devices.flat[0].device_kind), to_params=rep.to_params,
        ))
    return results


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
    """Run ``config.runs`` random starts of ``problem`` under gradient descent and classify them.

    ``overrides`` replace fields of ``config`` (e.g. ``simulate(p, runs=100, seed=3)``); the
    extra keyword ``devices`` (a device list or 1-D Mesh) picks where the runs are sharded.
    Returns a :class:`Result` with per-run arrays of shape (runs,).
    """
    devices = overrides.pop("devices", None)
    config = dataclasses.replace(config or Config(), **overrides)
    lr = config.lr if config.lr is not None else solvers.default_lr(problem, config)
    point = Point(problem=problem, runs=config.runs, lr=float(lr), init_scale=float(config.init_scale),
                  seed=int(config.seed))
    return simulate_points([point], config, devices=devices)[0]
