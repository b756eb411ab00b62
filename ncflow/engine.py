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

import dataclasses
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import init as _init
from . import metrics as _m
from . import theory
from .outcomes import classify, Tolerances, default_tolerances
from .problem import Problem
from .progress import Progress
from .representations import ENGINES, Representation, choose
from .result import Result

COEFF_FIELDS = ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale")

# status codes of a run while the engine works on it
RUNNING, CONVERGED, DIVERGED, BUDGET = 0, 1, 2, 3


class ConfigError(ValueError):
    """A solver setting is outside its accepted range; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Solver settings of one batch of runs.

    Attributes:
        runs: number of runs R >= 1.
        seed: master seed (int >= 0); run i starts from ``fold_in(key(seed), i)``.
        lr: GD step size > 0; None = ``theory.default_step_size(problem, init_scale)``.
        max_steps: step budget per run, >= 1.
        init_scale: Gaussian init scale >= 0 (entries N(0, scale²/d)); 0 = the origin.
        engine: "auto", "full" or "collapsed" (see :mod:`ncflow.representations`).
        early_stop: stop each run when it converges or diverges; False = every run takes
            exactly ``max_steps`` steps (throughput benchmarks).
        chunk: GD steps between two stopping checks (>= 1).
        group: runs per cache group (None: chosen so a group's state is ~256 KiB).
        gtol: stationarity tolerance on ||∇f||; None = dtype default (see outcomes).
        history: record scalar diagnostics at log-spaced steps.
        progress: progress bar on stderr; None = only when stderr is a terminal.
        lanczos_iters: Lanczos steps used to look for negative curvature.
        memory_limit_bytes: refuse batches estimated above this; None = 80% of free memory.
    """

    runs: int = 1000
    seed: int = 0
    lr: float | None = None
    max_steps: int = 20_000
    init_scale: float = 1.0
    engine: str = "auto"
    early_stop: bool = True
    chunk: int = 100
    group: int | None = None
    gtol: float | None = None
    history: bool = False
    progress: bool | None = None
    lanczos_iters: int = 32
    memory_limit_bytes: int | None = None

    def __post_init__(self):
        def need(ok, field, rng, value):
            if not ok:
                raise ConfigError(f"{field} must be {rng}, got {value!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.runs) and self.runs >= 1, "runs", "an integer >= 1", self.runs)
        need(is_int(self.seed) and 0 <= self.seed < 2**32, "seed", "an integer in [0, 2^32)", self.seed)
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a finite number > 0", self.lr)
        need(is_int(self.max_steps) and self.max_steps >= 1, "max_steps", "an integer >= 1", self.max_steps)
        need(is_num(self.init_scale) and self.init_scale >= 0, "init_scale", "a finite number >= 0", self.init_scale)
        need(self.engine in ENGINES, "engine", "one of " + ", ".join(ENGINES), self.engine)
        need(is_int(self.chunk) and self.chunk >= 1, "chunk", "an integer >= 1", self.chunk)
        need(self.group is None or (is_int(self.group) and self.group >= 1), "group", "an integer >= 1", self.group)
        need(self.gtol is None or (is_num(self.gtol) and self.gtol > 0), "gtol", "a finite number > 0", self.gtol)
        need(is_int(self.lanczos_iters) and self.lanczos_iters >= 2, "lanczos_iters", "an integer >= 2",
             self.lanczos_iters)


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
    """Bytes of one run's carried state."""
    K, d, N = problem.K, problem.d, problem.N
    item = np.dtype(problem.dtype).itemsize
    words = K * d + d * N + K if rep.name == "full" else 2 * K * d + d * d + K
    return words * item


def estimate_memory(problem: Problem, rep: Representation, runs: int, group: int) -> int:
    """Estimated peak bytes of a batch: state ×4 (state, donated copy, gather, summaries)
    plus one group's full-size start (the collapsed engine builds starts group by group)."""
    item = np.dtype(problem.dtype).itemsize
    init_tmp = group * (problem.K * problem.d + 2 * problem.d * problem.N) * item
    return 4 * runs * state_bytes(problem, rep) + init_tmp


def _auto_group(problem: Problem, rep: Representation, runs: int) -> int:
    target = 256 * 1024
    g = max(1, target // max(state_bytes(problem, rep), 1))
    g = 1 << int(math.floor(math.log2(g)))
    return int(min(g, 1 << int(math.ceil(math.log2(runs)))))


def _batched_problem(points: Sequence[Point], lane_point: np.ndarray) -> Problem:
    """One Problem whose coefficient leaves are per-lane arrays of shape (lanes,)."""
    base = points[0].problem
    vals = {f: np.asarray([float(getattr(p.problem, f)) for p in points], base.dtype)[lane_point]
            for f in COEFF_FIELDS}
    prob = Problem(K=base.K, d=base.d, n=base.n, bias=base.bias, loss=base.loss, dtype=base.dtype, **vals)
    return jax.tree_util.tree_map(jnp.asarray, prob)


def _tree_take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


class _Programs:
    """The compiled pieces for one (problem shape, representation, chunk, group) — AOT-compiled
    once, reused for every chunk of the batch; compile seconds are accumulated."""

    def __init__(self, problem: Problem, rep: Representation, chunk: int, group: int):
        self.compile_s = 0.0
        self.problem, self.rep, self.chunk, self.group = problem, rep, chunk, group
        self._compiled = {}

    def _get(self, name, fn, *args, donate=()):
        key = (name,) + tuple(jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), args))
        hit = self._compiled.get(key)
        if hit is None:
            t0 = time.perf_counter()
            hit = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
            self._compiled[key] = hit
        return hit

    # ------------------------------------------------------------------ programs
    def init(self, prob_b, keys, scales):
        rep, g = self.rep, self.group

        def one(p, k, s):
            return rep.from_params(p, _init.gaussian(p, k, s))

        def fn(prob_b, keys, scales):
            return jax.lax.map(lambda a: one(*a), (prob_b, keys, scales), batch_size=g)

        return self._get("init", fn, prob_b, keys, scales)(prob_b, keys, scales)

    def run_chunk(self, x, prob_b, lr, budget, n_groups):
        rep, g, T = self.rep, self.group, self.chunk

        def fn(x, prob_b, lr, budget, n_groups):
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

            return jax.lax.fori_loop(0, n_groups, group_body, x)

        return self._get("chunk", fn, x, prob_b, lr, budget, n_groups, donate=(0,))(x, prob_b, lr, budget, n_groups)

    def check(self, x, prob_b):
        rep = self.rep
        fn = jax.vmap(rep.value_and_grad_norm)
        return self._get("check", fn, prob_b, x)(prob_b, x)

    def take(self, tree, idx):
        return self._get("take", _tree_take, tree, idx, donate=(0,))(tree, idx)

    def diagnostics(self, x, prob_b):
        rep, problem = self.rep, self.problem

        def one(p, xi):
            st = rep.stats(p, xi)
            nc = _m.nc_metrics(st, problem.N)
            return nc.nc1, nc.nc2, nc.nc3

        fn = jax.vmap(one)
        return self._get("diag", fn, prob_b, x)(prob_b, x)

    def summaries(self, x, prob_b, pred_b):
        rep, problem = self.rep, self.problem

        def one(p, xi, pa):
            f, gn = rep.value_and_grad_norm(p, xi)
            st = rep.stats(p, xi)
            return f, gn, _m.nc_metrics(st, problem.N), _m.optimum_distance(p, pa, st, f)

        fn = jax.vmap(one)
        return self._get("summ", fn, prob_b, x, pred_b)(prob_b, x, pred_b)


def _history_chunks(max_chunks: int) -> set[int]:
    """Chunk indices (1-based) at which history is recorded: about 8 per decade, plus the first."""
    out, c = {1}, 1.0
    while c < max_chunks:
        c *= 10 ** (1 / 8)
        out.add(int(round(c)))
    return out


def simulate_points(points: Sequence[Point], config: Config) -> list[Result]:
    """Run every point's runs as lanes of ONE batch (all points must share K, d, n, bias,
    loss and dtype) and return one :class:`Result` per point.

    ``config.runs``, ``seed``, ``lr`` and ``init_scale`` are ignored here: each point carries
    its own. Everything else in ``config`` applies to the whole batch.
    """
    wall0 = time.perf_counter()
    base = points[0].problem
    for p in points[1:]:
        q = p.problem
        if (q.K, q.d, q.n, q.bias, q.loss, q.dtype) != (base.K, base.d, base.n, base.bias, base.loss, base.dtype):
            raise ConfigError("points of one batch must share K, d, n, bias, loss and dtype")
    if base.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise ConfigError("dtype float64 needs jax_enable_x64 (set it before JAX starts; the CLI does)")
    rep = choose(base, config.engine)
    R = sum(p.runs for p in points)
    group = config.group or _auto_group(base, rep, R)
    group = min(group, 1 << int(math.ceil(math.log2(R))))
    need = estimate_memory(base, rep, R, group)
    limit = config.memory_limit_bytes or int(0.8 * available_memory_bytes())
    if need > limit:
        raise ConfigError(
            f"runs: {R} runs of K={base.K} d={base.d} n={base.n} ({rep.name} engine, {base.dtype}) need "
            f"about {need / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB available; use fewer runs")
    R_cap = int(math.ceil(R / group) * group)

    # ------------------------------------------------------------------ lanes
    lane_point = np.concatenate([np.full(p.runs, i) for i, p in enumerate(points)])
    lane_run = np.concatenate([np.arange(p.runs) for p in points])
    pad = R_cap - R
    lane_point = np.concatenate([lane_point, np.zeros(pad, int)])
    lane_run = np.concatenate([lane_run, np.zeros(pad, int)])
    dt = base.dtype
    prob_b = _batched_problem(points, lane_point)
    lr = jnp.asarray(np.asarray([p.lr for p in points])[lane_point], dt)
    scales = jnp.asarray(np.asarray([p.init_scale for p in points])[lane_point], dt)
    seeds = np.asarray([p.seed for p in points])[lane_point]
    keys = jax.vmap(_init.run_key)(jnp.asarray(seeds, jnp.uint32), jnp.asarray(lane_run, jnp.uint32))
    preds = [theory.predict(p.problem) for p in points]
    tols = [default_tolerances(p.problem, pr, config.gtol) for p, pr in zip(points, preds)]
    gtol_lane = np.asarray([t.gtol for t in tols])[lane_point]
    ftol_lane = np.asarray([t.ftol for t in tols])[lane_point]

    progs = _Programs(base, rep, config.chunk, group)
    x = progs.init(prob_b, keys, scales)
    f, _ = progs.check(x, prob_b)
    f0 = np.asarray(f, np.float64)
    f_prev = f0.copy()

    perm = np.arange(R_cap)  # lane -> original lane index
    status = np.zeros(R_cap, np.int8)
    status[R:] = -1  # padding lanes never run
    steps = np.zeros(R_cap, np.int64)
    T = config.chunk
    max_chunks = int(math.ceil(config.max_steps / T))
    record_at = _history_chunks(max_chunks) if config.history else set()
    hist_steps, hist = [], {k: [] for k in ("objective", "grad_norm", "nc1", "nc2", "nc3")}

    def record(f_now, g_now, x_now):
        order = np.argsort(perm)[:R]
        nc1, nc2, nc3 = (np.asarray(v, np.float64)[order] for v in progs.diagnostics(x_now, prob_b))
        hist_steps.append(int(steps.max()))
        hist["objective"].append(f_now[order])
        hist["grad_norm"].append(g_now[order])
        hist["nc1"].append(nc1)
        hist["nc2"].append(nc2)
        hist["nc3"].append(nc3)

    if config.history:
        g_init = np.asarray(progs.check(x, prob_b)[1], np.float64)
        record(f0, g_init, x)

    run_s = 0.0
    executed = 0
    chunk_i = 0
    with Progress(total=R, desc="runs finished", enabled=config.progress) as bar:
        while True:
            active = status == RUNNING
            n_active = int(active.sum())
            if n_active == 0:
                break
            chunk_i += 1
            budget = np.where(active, np.minimum(T, config.max_steps - steps), 0)
            n_groups = int(math.ceil(n_active / group))
            t0 = time.perf_counter()
            x = progs.run_chunk(x, prob_b, lr, jnp.asarray(budget, jnp.int32), jnp.asarray(n_groups, jnp.int32))
            f_now, g_now = (np.asarray(v, np.float64) for v in progs.check(x, prob_b))
            run_s += time.perf_counter() - t0
            steps += budget
            executed += int(budget.sum())
            if chunk_i in record_at:
                record(f_now, g_now, x)
            fin = np.isfinite(f_now) & np.isfinite(g_now)
            ref = np.maximum(1.0, np.abs(f0[perm]))
            if config.early_stop:
                div = active & (~fin | (np.abs(f_now) > 1e6 * ref))
                conv = active & ~div & (g_now <= gtol_lane[perm]) & (np.abs(f_now - f_prev) <= ftol_lane[perm])
                status[div] = DIVERGED
                status[conv] = CONVERGED
            status[(status == RUNNING) & (steps >= config.max_steps)] = BUDGET
            f_prev = f_now
            done = int(((status != RUNNING) & (status >= 0)).sum())
            bar.update(done, extra=f"step {int(steps.max())}")
            still = status == RUNNING
            if still.sum() < n_active and still.any():
                order = np.argsort(~still, kind="stable")  # running lanes first
                t1 = time.perf_counter()
                x, prob_b, lr = progs.take((x, prob_b, lr), jnp.asarray(order))
                run_s += time.perf_counter() - t1
                perm, status, steps, f_prev = perm[order], status[order], steps[order], f_prev[order]
                gtol_lane, ftol_lane = gtol_lane[order], ftol_lane[order]
                lane_point, lane_run = lane_point[order], lane_run[order]
    if config.history and chunk_i not in record_at and chunk_i > 0:
        record(f_now, g_now, x)

    # ------------------------------------------------------------------ classify
    t_cls = time.perf_counter()
    order = np.argsort(perm)
    x, prob_b = progs.take((x, prob_b), jnp.asarray(order))
    steps, status = steps[order][:R], status[order][:R]
    lane_point, lane_run = lane_point[order][:R], lane_run[order][:R]
    pred_arrays = [pr.arrays(base.K, dt) for pr in preds]
    pred_b = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *pred_arrays)
    pred_b = _tree_take(pred_b, jnp.asarray(np.concatenate([lane_point, np.zeros(R_cap - R, int)])))
    f, gn, nc, dist = progs.summaries(x, prob_b, pred_b)
    to_np = lambda a: np.asarray(a, np.float64)[:R]  # noqa: E731
    f, gn = to_np(f), to_np(gn)
    nc = jax.tree_util.tree_map(to_np, nc)
    dist = jax.tree_util.tree_map(to_np, dist)
    prob_real = _tree_take(prob_b, jnp.arange(R))
    x_real = _tree_take(x, jnp.arange(R))
    outcome, min_eig, max_eig = classify(base, rep, x_real, prob_real, f, gn, dist, lane_point,
                                         [t for t in tols], config.lanczos_iters, status, progs)
    classify_s = time.perf_counter() - t_cls
    wall = time.perf_counter() - wall0

    results = []
    x_np = jax.tree_util.tree_map(np.asarray, x_real)
    for i, p in enumerate(points):
        sel = np.nonzero(lane_point == i)[0]
        sel = sel[np.argsort(lane_run[sel])]
        per_run = {
            "run": lane_run[sel], "outcome": outcome[sel], "steps": steps[sel],
            "objective": f[sel], "gap": dist.gap[sel], "grad_norm": gn[sel],
            "nc1": nc.nc1[sel], "nc2": nc.nc2[sel], "nc3": nc.nc3[sel], "nc4": nc.nc4[sel],
            "nc2_uncentered": nc.nc2_uncentered[sel], "within_between": nc.within_between[sel],
            "gram_error": dist.gram_error[sel], "self_duality": dist.self_duality[sel],
            "w_norm": dist.w_norm[sel], "h_norm": dist.h_norm[sel], "bias_error": dist.bias_error[sel],
            "min_hessian_eig": min_eig[sel], "max_hessian_eig": max_eig[sel],
        }
        history = None
        if config.history:
            history = {"step": np.asarray(hist_steps)}
            history.update({k: np.stack(v)[:, sel] for k, v in hist.items()})
            history["gap"] = history["objective"] - preds[i].objective
        share = len(sel) / R
        timing = {
            "compile_s": progs.compile_s, "run_s": run_s * share, "classify_s": classify_s * share,
            "wall_s": wall, "run_steps": int(steps[sel].sum()),
            "run_steps_per_s": (int(steps[sel].sum()) / (run_s * share)) if run_s > 0 else 0.0,
            "batch_run_steps_per_s": executed / run_s if run_s > 0 else 0.0,
        }
        results.append(Result(
            problem=p.problem, prediction=preds[i], tolerances=tols[i],
            config={**dataclasses.asdict(config), "runs": p.runs, "seed": p.seed, "lr": p.lr,
                    "init_scale": p.init_scale, "engine": rep.name, "group": group},
            per_run=per_run, history=history, timing=timing,
            final_state=jax.tree_util.tree_map(lambda a: a[sel], x_np), representation=rep.name,
            device=str(jax.devices()[0].device_kind),
        ))
    return results


def simulate(problem: Problem, config: Config | None = None, **overrides) -> Result:
    """Run ``config.runs`` random starts of ``problem`` under gradient descent and classify them.

    ``overrides`` replace fields of ``config`` (e.g. ``simulate(p, runs=100, seed=3)``).
    Returns a :class:`Result` with per-run arrays of shape (runs,).
    """
    config = dataclasses.replace(config or Config(), **overrides)
    lr = config.lr if config.lr is not None else theory.default_step_size(problem, config.init_scale or 1.0)
    point = Point(problem=problem, runs=config.runs, lr=float(lr), init_scale=float(config.init_scale),
                  seed=int(config.seed))
    return simulate_points([point], config)[0]
