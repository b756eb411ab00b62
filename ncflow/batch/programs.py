"""The compiled programs of a batch, and ONE process-wide cache of them.

Every program is ``shard_map``-ped over the lanes of its device (or, for the LAPACK-using
summaries, run on gathered lanes) and AOT-compiled once per *key*: the program's name, the
dynamics (space and stepper, hashable values), the start, the problem's static part (K, d, n, bias,
loss, dtype), the mesh, the chunk and group sizes and the abstract shapes of its arguments. A
second ``simulate`` of the same shape in one process compiles nothing.

Programs (each for the lanes of one device):

* ``init``: every lane's start from its key, one cache group at a time;
* ``chunk`` (plan cpu): ``chunk`` steps of the one-run step vmapped over a group, for the active
  groups (a ``fori_loop`` with a dynamic bound), each lane masked past its budget;
* ``chunks`` (plan wide): a ``while_loop`` over chunks of ``chunk`` steps of the one-run step
  vmapped over ALL lanes of the device (step layout lanes: the batch step of
  :mod:`ncflow.dynamics.lanes` on the state transposed run-axis-last once per chunk), each chunk
  followed by the check and the stop rule per lane (:mod:`ncflow.batch.stop`,
  :mod:`ncflow.batch.certify`, traced), until every lane has stopped or the host's number of
  chunks is done;
* ``check``: objective, gradient norm and the stepper's done/failed flags per lane;
* ``take``: reorder a device's lanes (the whole :class:`~ncflow.batch.lanes.DeviceLanes` at once);
* ``summ`` / ``diag``: metrics per lane — on a CPU on gathered lanes one lane after another; on an
  accelerator vmapped over the lanes of each device, where they live;
* ``lanczos``: Hessian extremes of candidate lanes (fixed width 16).

Budgets are applied in ONE place, the masked step of ``chunk``/``chunks`` (a masked step keeps the
lane's state exactly). Steps are traced under the plan's matrix-product precision (full float32
unless the user opted in to tf32/bf16, :mod:`ncflow.dynamics.precision`); everything else under
full precision, on every platform.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from ncflow.batch import certify, stop
from ncflow.batch.lanes import LaneTable
from ncflow.batch.layout import AXIS, Layout
from ncflow.batch.plan import Plan
from ncflow.codes import RUNNING
from ncflow.config import effective
from ncflow.dynamics import lanes as _lanes
from ncflow.dynamics import precision as _prec
from ncflow.dynamics import starts
from ncflow.maths import metrics as _m
from ncflow.maths.lanczos import lanczos_extremes
from ncflow.problem import Problem

#: lanes per Lanczos call: a run's estimate does not depend on how many others need one
LANCZOS_WIDTH = 16

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


class StartSpec(NamedTuple):
    """What determines a run's start program: the kind and the saddle settings."""

    init: str
    active: int | None
    perturb: float

    @classmethod
    def of(cls, config) -> "StartSpec":
        """The start settings of an engine Config."""
        return cls(config.init, config.active, float(effective(config, "perturb")))


def cache_size() -> int:
    """Number of compiled programs held by the process-wide cache."""
    return len(_CACHE)


def clear_cache() -> None:
    """Forget every compiled program (the next batch compiles again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _statics(problem: Problem) -> tuple:
    return (problem.K, problem.d, problem.n, problem.bias, problem.loss, problem.dtype, problem.depth,
            problem.widths, problem.activation)


def _tree_take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _masked(live, new, old):
    """Per lane: ``new`` where ``live`` (shape (lanes,)), else ``old`` exactly."""
    def pick(a, b):
        return jnp.where(live.reshape(live.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree_util.tree_map(pick, new, old)


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


class Programs:
    """The programs of one batch shape, compiled on first use and shared through the process-wide
    cache. ``compile_s`` sums the seconds this object spent compiling (0 when all were cached).

    Args:
        problem: the batch's problem (only its static part matters).
        dyn: the :class:`~ncflow.dynamics.build.Dynamics` of the batch.
        start: the :class:`StartSpec`.
        chunk: steps per chunk.
        layout: the :class:`~ncflow.batch.layout.Layout` (mesh and cache group).
        plan: the :class:`~ncflow.batch.plan.Plan` (cpu or wide, precision, the stop rule).
    """

    def __init__(self, problem: Problem, dyn, start: StartSpec, chunk: int, layout: Layout, plan: Plan):
        self.problem, self.dyn, self.start, self.chunk, self.layout = problem, dyn, start, chunk, layout
        self.plan = plan
        self.group = layout.group
        # starts are drawn full-size and collapsed: the wide plan draws them in batches of at most
        # ~256 MiB of full parameters instead of all lanes of a device at once
        full_bytes = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(dyn.space.abstract_params(problem))) \
            * np.dtype(problem.dtype).itemsize
        self.init_group = max(1, min(layout.lanes_per_device, 2**28 // (3 * full_bytes))) if plan.wide else layout.group
        self.compile_s = 0.0
        self.compiled_now = 0
        self._lock = threading.Lock()
        mesh = layout.mesh
        self._key = (dyn, start, _statics(problem), tuple(d.id for d in mesh.devices.flat), mesh.axis_names,
                     chunk, layout.group, plan)
        # the step layout shapes the stepping program only: the others are shared by both layouts
        self._key_unstepped = self._key[:-1] + (dataclasses.replace(plan, step_layout="vmap"),)
        step = _prec.step_fn(dyn.step, plan.precision, plan.platform)
        ctx = plan.precision, plan.platform

        def vstep(p, x, lr):  # the one-run step over lanes, traced under the plan's precision
            with _prec.step_context(*ctx):
                return jax.vmap(step)(p, x, lr)
        self._vstep = vstep
        # plan wide, step_layout lanes: the batch step with the run axis last (None: vmap)
        self._lanes_step = _lanes.supports(problem, dyn) if plan.wide and plan.step_layout == "lanes" else None

    def _program(self, name: str, build: Callable, args, donate=(), sharded=True):
        shapes = (tuple((a.shape, str(a.dtype)) for a in jax.tree_util.tree_leaves(args)),
                  jax.tree_util.tree_structure(args))
        key = (name,) + (self._key if name == "chunks" else self._key_unstepped) + shapes
        hit = _CACHE.get(key)
        if hit is None:
            fn = build()
            if sharded:
                spec = P(AXIS)
                fn = jax.shard_map(fn, mesh=self.layout.mesh, in_specs=(spec,) * len(args), out_specs=spec)
            t0 = time.perf_counter()
            with _prec.full_context():
                hit = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            with _CACHE_LOCK:
                hit = _CACHE.setdefault(key, hit)
            with self._lock:
                self.compile_s += time.perf_counter() - t0
                self.compiled_now += 1
        return hit

    def precompile(self, lanes_abstract, seed_run, scales, lanes_abstract_cols=None) -> float:
        """Compile every program of the batch concurrently (XLA compiles outside the GIL) and
        return the wall seconds it took (≈ 0 when everything was cached). ``lanes_abstract_cols``:
        the device lane columns (:meth:`device_columns`) the wide plan's loop carries."""
        lay = self.layout
        i32 = jax.ShapeDtypeStruct((lay.total_lanes,), np.int32, sharding=lay.sharding)
        per_dev = jax.ShapeDtypeStruct((lay.n_devices,), np.int32, sharding=lay.sharding)
        x_abs = jax.eval_shape(self._init_local(), lanes_abstract.problem, seed_run, scales)
        x_abs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=lay.sharding), x_abs)
        dl = lanes_abstract._replace(x=x_abs)
        jobs = [
            lambda: self._program("init", self._init_local, (dl.problem, seed_run, scales)),
            lambda: self._program("check", self._check_local, (dl.x, dl.problem)),
        ]
        if self.plan.wide:
            cols = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=lay.sharding),
                                          lanes_abstract_cols)
            jobs.append(lambda: self._program("chunks", self._chunks_local,
                                              (dl.x, dl.problem, dl.lr, cols, per_dev, per_dev), donate=(0, 3)))
        else:
            jobs += [
                lambda: self._program("chunk", self._chunk_local, (dl.x, dl.problem, dl.lr, i32, per_dev),
                                      donate=(0,)),
                lambda: self._program("take", lambda: _tree_take, (dl, i32), donate=(0,)),
            ]
        if self.plan.batched_lapack:
            jobs.append(lambda: self._program("summ_dev", self._summaries_vmapped, (dl.problem, dl.x, dl.pred)))
        else:
            jobs.append(lambda: self._program("summ", self._summaries_local, _abstract((dl.problem, dl.x, dl.pred)),
                                              sharded=False))
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as ex:
            for fut in [ex.submit(j) for j in jobs]:
                fut.result()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ local programs (builders)
    def _init_local(self):
        dyn, g = self.dyn, self.init_group
        init_fn = starts.initializer(self.problem, self.start)

        shapes = [a.shape for a in jax.tree_util.tree_leaves(dyn.space.abstract_params(self.problem))]

        def local(prob_b, seed_run, scales):
            def one(a):
                p, k, s = a  # k: (seed, run index); the run's key is fold_in(key(seed), run)
                params = init_fn(p, starts.run_key(k[0], k[1]), s)
                chex.assert_shape(jax.tree_util.tree_leaves(params), shapes)  # at trace time
                return dyn.from_params(p, params)
            return jax.lax.map(one, (prob_b, seed_run, scales), batch_size=g)
        return local

    def _chunk_local(self):
        g, T = self.group, self.chunk
        L = self.layout.lanes_per_device
        vstep = self._vstep

        def local(x, prob_b, lr, budget, n_groups):
            chex.assert_tree_shape_prefix((x, lr, budget), (L,))  # a device's lanes, at trace time

            def group_body(gi, x):
                start = gi * g
                sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, g, axis=0)  # noqa: E731
                xg, pg = jax.tree_util.tree_map(sl, x), jax.tree_util.tree_map(sl, prob_b)
                lrg, bg = sl(lr), sl(budget)

                def step_body(xg, t):
                    return _masked(t < bg, vstep(pg, xg, lrg), xg), None

                xg, _ = jax.lax.scan(step_body, xg, jnp.arange(T))
                return jax.tree_util.tree_map(
                    lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, axis=0), x, xg)

            return jax.lax.fori_loop(0, n_groups[0], group_body, x)
        return local

    def _chunks_local(self):
        """Plan wide: chunks of masked steps of ALL lanes, each followed by the check and the stop
        rule per lane, in a ``while_loop`` until every lane stopped or ``n_chunks`` were done."""
        T, plan, base = self.chunk, self.plan, self.problem
        L = self.layout.lanes_per_device
        vcheck = jax.vmap(self._check_one)
        steps = self._wide_steps()

        def local(x, prob_b, lr, cols, max_steps, n_chunks):
            chex.assert_tree_shape_prefix((x, lr, cols), (L,))  # a device's lanes, at trace time
            fl = cols["f_prev"].dtype
            limit = max_steps[0].astype(cols["steps"].dtype)

            def cond(carry):
                i, _, cols, _ = carry
                return (i < n_chunks[0]) & jnp.any(cols["status"] == RUNNING)

            def body(carry):
                i, x, cols, _ = carry
                lanes = LaneTable(**cols)
                budget = jnp.where(lanes.running, jnp.minimum(T, limit - lanes.steps), 0)
                x = steps(x, prob_b, lr, budget)
                f, g, done, failed, sq = vcheck(prob_b, x)
                f, g, sq = f.astype(fl), g.astype(fl), sq.astype(fl)
                lanes = lanes.replace(steps=lanes.steps + budget)
                cert = certify.certified_lanes(base, lanes, f, plan.space, sq, xp=jnp)
                lanes = certify.record_first(lanes, cert, f, xp=jnp)
                status = stop.next_status(lanes, f, g, done, failed, cert if plan.certified_rule else None,
                                          early_stop=plan.early_stop, max_steps=limit, xp=jnp)
                lanes = lanes.replace(status=status, f_prev=f, **stop.plateau_columns(lanes, f, budget, jnp))
                return i + 1, x, dataclasses.asdict(lanes), g

            g0 = jnp.full_like(cols["f_prev"], jnp.nan)  # varying over the lanes like the columns
            i, x, cols, g = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), x, cols, g0))
            return x, cols, g, i[None]
        return local

    def _wide_steps(self):
        """Plan wide: ``steps(x, prob_b, lr, budget)``, ``chunk`` steps of every lane, lane i masked
        from step ``budget[i]`` on (its state kept exactly). Layout vmap: the one-run step vmapped;
        layout lanes: the state transposed to lanes-minor once (:mod:`ncflow.dynamics.lanes`), the
        chunk's steps there, and transposed back."""
        T, vstep, lstep, base = self.chunk, self._vstep, self._lanes_step, self.problem

        if lstep is None:
            def steps(x, prob_b, lr, budget):
                def body(x, t):
                    return _masked(t < budget, vstep(prob_b, x, lr), x), None
                return jax.lax.scan(body, x, jnp.arange(T))[0]
            return steps

        def steps(x, prob_b, lr, budget):
            c = _lanes.coefficients(prob_b, lr)

            def body(xm, t):
                return _lanes.masked(t < budget, lstep(base, c, xm), xm), None
            xm = jax.lax.scan(body, _lanes.to_lanes_minor(x), jnp.arange(T))[0]
            return _lanes.from_lanes_minor(xm)
        return steps

    def _check_one(self, p, xi):
        """One run's (f, ||∇f||, stepper done, stepper failed, squared norm of the point)."""
        dyn = self.dyn
        f, gn = dyn.value_and_grad_norm(p, xi)
        return f, gn, dyn.done(p, xi), dyn.failed(p, xi), dyn.sq_norm(p, xi)

    def _per_lane(self, fn):
        """``fn`` for one run, mapped over a device's lanes one cache group at a time (the same
        vector width as the steps, whatever the number of lanes)."""
        g = self.group
        return lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=g)

    def _check_local(self):
        fn = self._per_lane(self._check_one)
        return lambda x, p: fn(p, x)

    # Metrics with LAPACK calls (SVD, eigh) run on the gathered lanes, one lane after another
    # (lax.map without batching). Batched LAPACK kernels split their batch over XLA's intra-op
    # thread pool and wait for it; two of them at once (eigh and SVD of one program, or one per
    # device) exhausted a 2-thread pool and deadlocked. Unbatched, each runs inline, and a run's
    # numbers cannot depend on the batch.
    @staticmethod
    def _host_map(fn):
        return lambda *a: jax.lax.map(lambda t: fn(*t), a)

    def _summary_one(self, p, xi, pa):
        dyn, N = self.dyn, self.problem.N
        f, gn = dyn.value_and_grad_norm(p, xi)
        st = dyn.stats(p, xi)
        return (f, gn, _m.nc_metrics(st, N), dyn.distance(p, pa, xi, f),
                {**dyn.columns(p, pa, xi), **dyn.extras(p, xi)})

    def _summaries_local(self):
        return self._host_map(self._summary_one)

    def _summaries_vmapped(self):
        """On an accelerator: the summaries vmapped over the lanes of each device, where they live."""
        return jax.vmap(self._summary_one)

    def _diagnostic_one(self, p, xi):
        nc = _m.nc_metrics(self.dyn.stats(p, xi), self.problem.N)
        return nc.nc1, nc.nc2, nc.nc3

    def _diagnostics_local(self):
        return self._host_map(self._diagnostic_one)

    def _lanczos_local(self, iters: int):
        dyn = self.dyn

        def one(p, xi, key):
            params = dyn.to_params(p, xi)
            flat, unravel = ravel_pytree(params)

            def mv(v):
                return ravel_pytree(dyn.hvp(p, params, unravel(v)))[0]

            v0 = jax.random.normal(key, flat.shape, flat.dtype)
            r = lanczos_extremes(mv, v0, iters)
            return r.min_eig, r.max_eig

        if self.plan.batched_lapack:  # an accelerator: the candidates vmapped
            return jax.vmap(one)
        # on a CPU lanes one after another: batched LAPACK (the tridiagonal eigh) can deadlock a
        # small intra-op thread pool
        return lambda p, x, k: jax.lax.map(lambda t: one(*t), (p, x, k))

    # ------------------------------------------------------------------ calls
    def init(self, prob_b, seed_run, scales):
        """Every lane's carried state, sharded like the lanes; ``seed_run`` (lanes, 2) uint32 holds
        each lane's master seed and run index."""
        args = (prob_b, seed_run, scales)
        return self._program("init", self._init_local, args)(*args)

    def run_chunk(self, x, prob_b, lr, budget, n_groups):
        """``chunk`` masked steps of the active groups of every device (``x`` is donated)."""
        args = (x, prob_b, lr, budget, n_groups)
        return self._program("chunk", self._chunk_local, args, donate=(0,))(*args)

    def run_chunks(self, x, prob_b, lr, cols, max_steps, n_chunks):
        """Plan wide: up to ``n_chunks`` (per device, (devices,) int32) chunks of every device's
        lanes with the stop rule on the device; ``cols`` are the lane columns
        (:meth:`device_columns`), ``max_steps`` (devices,) the budget. ``x`` and ``cols`` are
        donated. Returns (x, cols, ||∇f|| at the last check (lanes,), chunks done (devices,))."""
        args = (x, prob_b, lr, cols, max_steps, n_chunks)
        return self._program("chunks", self._chunks_local, args, donate=(0, 3))(*args)

    def device_columns(self, lanes: LaneTable) -> dict:
        """The lane table as device arrays, {column: (lanes,)}, in JAX's canonical dtypes
        (float64/int64 with ``jax_enable_x64``, else float32/int32)."""
        lay = self.layout
        return {k: lay.put(np.asarray(v, jax.dtypes.canonicalize_dtype(np.asarray(v).dtype)))
                for k, v in dataclasses.asdict(lanes).items()}

    def check(self, x, prob_b):
        """Per lane: (f, ||∇f||, stepper done, stepper failed, ||W||² + ||H||² + ||b||²)."""
        args = (x, prob_b)
        return self._program("check", self._check_local, args)(*args)

    def take(self, lanes, idx):
        """Reorder the lanes of every device (``idx`` holds device-local indices; donated input)."""
        args = (lanes, idx)
        return self._program("take", lambda: _tree_take, args, donate=(0,))(*args)

    def summaries_on_devices(self, prob_b, x, pred_b):
        """:meth:`summaries` of the device lanes where they live (accelerators: vmapped, sharded);
        the outputs are per-lane device arrays."""
        args = (prob_b, x, pred_b)
        return self._program("summ_dev", self._summaries_vmapped, args)(*args)

    def summaries(self, prob_b, x, pred_b):
        """Objective, gradient norm, NC metrics, distance to the optimum and the stepper's extras of
        every lane (numpy inputs gathered on the host, all lanes)."""
        args = (prob_b, x, pred_b)
        out = self._program("summ", self._summaries_local, _abstract(args), sharded=False)(*args)
        return jax.tree_util.tree_map(np.asarray, out)

    def diagnostics(self, prob_b, x):
        """NC1–NC3 of every lane (numpy inputs gathered on the host, all lanes)."""
        args = (prob_b, x)
        out = self._program("diag", self._diagnostics_local, _abstract(args), sharded=False)(*args)
        return jax.tree_util.tree_map(np.asarray, out)

    def diagnostics_on_devices(self, prob_b, x):
        """:meth:`diagnostics` of the device lanes where they live (accelerators: vmapped, sharded);
        per-lane device arrays."""
        args = (prob_b, x)
        return self._program("diag_dev", lambda: jax.vmap(self._diagnostic_one), args)(*args)

    def hessian_extremes(self, x, prob_b, lanes: np.ndarray, iters: int):
        """Lanczos estimates (min Ritz value, max Ritz value) of the full Hessian for ``lanes``
        (indices into ``x``/``prob_b``: numpy arrays, or jax.Arrays on the devices), shape
        (len(lanes),) each, :data:`LANCZOS_WIDTH` lanes per call."""
        lo = np.full(len(lanes), np.nan)
        hi = np.full(len(lanes), np.nan)
        b = LANCZOS_WIDTH
        for s in range(0, len(lanes), b):
            idx = lanes[s:s + b]
            pad = np.concatenate([idx, np.full(b - len(idx), idx[0])])
            # the candidates to the host (a few lanes, from the host or the devices), whatever x's sharding
            xs = jax.tree_util.tree_map(lambda a, pad=pad: np.asarray(a[pad]), x)
            ps = jax.tree_util.tree_map(lambda a, pad=pad: np.asarray(a[pad]), prob_b)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(20220301), i))(jnp.asarray(pad))
            args = (ps, xs, keys)
            prog = self._program(("lanczos", iters), lambda: self._lanczos_local(iters), _abstract(args),
                                 sharded=False)
            mn, mx = prog(*args)
            lo[s:s + len(idx)] = np.asarray(mn, np.float64)[: len(idx)]
            hi[s:s + len(idx)] = np.asarray(mx, np.float64)[: len(idx)]
        return lo, hi
