"""Step layouts side by side (issue 23, item 1): run-steps/s, achieved GFLOP/s and bytes per run-step of
ncflow's wide plan, a plain ``jit(vmap(lax.scan))`` baseline and each candidate layout, in ONE process,
with the device named and, on a GPU of a known kind, the fractions of its peak.

Variants (every one steps the same runs from ncflow's own starts, run i from ``fold_in(key(0), i)``,
``--steps`` fixed GD steps of the collapsed engine, float32 by default, full-precision products):

* ``wide_vmap`` — today's wide plan: ``ncflow.simulate(..., plan="wide", early_stop=False)`` (chunks of
  100 steps of the vmapped one-run step, each followed by the per-lane check and stop rule on the
  device); rate from ``timing["run_s"]`` (the device loop, compilation excluded);
* ``wide_lanes`` — the same with ``step_layout="lanes"`` (:mod:`ncflow.dynamics.lanes`);
* ``baseline`` — ``jit(vmap(lax.scan))`` of the one-run collapsed ``gd_step`` (no check, no stop rule);
* ``elementwise`` — the baseline with ncflow's CPU rewrite of small products
  (:func:`ncflow.dynamics.precision.elementwise_products`) forced on every platform;
* ``lanes_scan`` — the lanes-minor batch step alone: one transpose in, ``lax.scan`` of
  :func:`ncflow.dynamics.lanes.gd_step`, one transpose out (no check, no stop rule).

Columns: ``run_steps_per_s``; ``gflops`` = run-steps/s × the collapsed step's flop model
4Kd² + 8K²d (``CollapsedSpace.flops_per_step``: the five matrix products, elementwise work not
counted); ``bytes_per_run_step`` = 2 × the state's bytes (the state read and written once per step: the
least any step that keeps no intermediate on chip moves; a vmapped step moves more) and ``gb_per_s``
that rate of traffic; on a GPU in :data:`PEAKS`, ``flop_frac`` and ``bw_frac`` of the card's FP32 and
HBM peaks; ``temp_bytes_per_lane``: the compiled program's temporaries per lane (XLA's memory analysis,
scan variants); ``vs_baseline``; ``max_rel_objective_diff`` of the final objectives against the
baseline's (the same runs). Protocol: compile once (timed apart), one warm-up call, ``--repeats``
timed calls, the median; every variant of a problem runs in this process back to back.

Examples (from the repository root, ``PYTHONPATH=.``)::

    python benchmarks/layouts.py                       # 1e5 runs on a GPU, 4,096 on a CPU
    python benchmarks/layouts.py --runs 2048 --steps 200 --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 stop rule on the device (runs are float32)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ncflow  # noqa: E402
from ncflow.batch.programs import clear_cache  # noqa: E402
from ncflow.dynamics import lanes as lanes_mod  # noqa: E402
from ncflow.dynamics.build import default_lr, dynamics_for  # noqa: E402
from ncflow.dynamics.precision import elementwise_products  # noqa: E402
from ncflow.dynamics.starts import initializer, run_key  # noqa: E402
from ncflow.maths.collapsed import Collapsed  # noqa: E402

PROBLEMS = {"default": dict(), "K10_d64_n20": dict(K=10, d=64, n=20)}
VARIANTS = ("wide_vmap", "wide_lanes", "baseline", "elementwise", "lanes_scan")

#: FP32 (non-tensor) TFLOP/s and HBM TB/s by device kind, from NVIDIA's datasheets (H100: "NVIDIA H100
#: Tensor Core GPU" datasheet, SXM5 and PCIe columns; H200: "NVIDIA H200 Tensor Core GPU" datasheet,
#: SXM column). Matched by substring of ``jax.devices()[0].device_kind``, first match wins.
PEAKS = (
    ("H200", {"name": "NVIDIA H200 SXM", "fp32_tflops": 67.0, "hbm_tb_s": 4.8}),
    ("H100 PCIe", {"name": "NVIDIA H100 PCIe", "fp32_tflops": 51.0, "hbm_tb_s": 2.0}),
    ("H100", {"name": "NVIDIA H100 SXM", "fp32_tflops": 67.0, "hbm_tb_s": 3.35}),
)


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="lanes (default: 100,000 on a GPU/TPU, 4,096 on a CPU)")
    ap.add_argument("--steps", type=int, default=None,
                    help="fixed GD steps (default: 1,000 on a GPU/TPU, 200 on a CPU)")
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new case after this many seconds")
    ap.add_argument("--table", action="store_true", help="also print each row on stderr as it finishes")
    ap.add_argument("--out", default=None, help="also write the JSON to this file (rewritten after every row)")
    return ap.parse_args(argv)


def peak_of(kind: str) -> dict | None:
    """The :data:`PEAKS` entry of a device kind string, or None (CPUs, unknown cards)."""
    for key, peak in PEAKS:
        if key.lower() in kind.lower():
            return peak
    return None


def machine() -> dict:
    """Where the numbers come from: the device (named), its peak where known, versions, host load."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "devices": jax.device_count(),
            "peak": peak_of(dev.device_kind) if dev.platform == "gpu" else None, "jax": jax.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
            "host": platform.processor() or platform.machine()}


def _starts(problem, dyn, runs: int):
    """ncflow's own starts of runs 0..runs−1 of seed 0, as lanes-major collapsed states."""
    init = initializer(problem, ncflow.Config())
    return jax.jit(jax.vmap(lambda i: dyn.from_params(problem, init(problem, run_key(0, i), 1.0))))(
        jnp.arange(runs, dtype=jnp.uint32))


def _batch_problem(problem, runs: int):
    """The problem with every coefficient a lane vector (runs,), as the engine's batches hold it."""
    dt = problem.dtype
    coef = {k: np.full(runs, float(getattr(problem, k)), dt)
            for k in ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale")}
    return ncflow.Problem(K=problem.K, d=problem.d, n=problem.n, bias=problem.bias, dtype=dt, **coef)


def _timed(fn, args, repeats: int):
    """(output, median seconds, compile seconds, temporaries bytes) of ``jit(fn)(*args)``."""
    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        prog = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - t0
    temp = getattr(prog.memory_analysis(), "temp_size_in_bytes", None)
    jax.block_until_ready(prog(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(prog(*args))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), compile_s, temp


def scan_variant(name: str, problem, dyn, x0, lr: float, steps: int, repeats: int) -> dict:
    """One of the plain programs (baseline, elementwise, lanes_scan): final objectives and timings."""
    runs = x0.W.shape[0]
    lr_ = jnp.asarray(lr, problem.dtype)
    value = jax.vmap(lambda x: dyn.value_and_grad_norm(problem, x)[0])
    if name in ("baseline", "elementwise"):
        step = dyn.step if name == "baseline" else elementwise_products(dyn.step)

        def run(x):
            def one(x):
                return jax.lax.scan(lambda x, _: (step(problem, x, lr_), None), x, None, length=steps)[0]
            x = jax.vmap(one)(x)
            return value(x)
        args = (x0,)
    else:
        pb = _batch_problem(problem, runs)
        lrs = jnp.full((runs,), lr, problem.dtype)

        def run(x, pb, lrs):
            c = lanes_mod.coefficients(pb, lrs)
            xm = jax.lax.scan(lambda s, _: (lanes_mod.gd_step(pb, c, s), None), lanes_mod.to_lanes_minor(x), None,
                              length=steps)[0]
            return value(Collapsed(*lanes_mod.from_lanes_minor(xm)))
        args = (x0, pb, lrs)
    f, seconds, compile_s, temp = _timed(run, args, repeats)
    return {"seconds": seconds, "compile_s": compile_s, "objective": np.asarray(f, np.float64),
            "temp_bytes_per_lane": None if temp is None else temp / runs}


def wide_variant(name: str, problem, runs: int, steps: int, repeats: int) -> dict:
    """Today's wide plan (step layout vmap or lanes) through ``ncflow.simulate``, timed by its own
    device-loop clock (``run_s``: chunks, checks and stop rule; compilation excluded)."""
    cfg = ncflow.Config(runs=runs, max_steps=steps, early_stop=False, progress=False, plan="wide",
                        engine="collapsed", step_layout="lanes" if name == "wide_lanes" else "vmap")
    warm = ncflow.simulate(problem, cfg)  # warm-up: compiles every program of this shape
    rs = [ncflow.simulate(problem, cfg) for _ in range(repeats)]
    run_s = [r.timing["run_s"] for r in rs]
    i = int(np.argsort(run_s)[len(run_s) // 2])
    return {"seconds": float(run_s[i]), "compile_s": float(warm.timing["compile_s"]),
            "objective": np.asarray(rs[i].per_run["objective"], np.float64), "temp_bytes_per_lane": None,
            "loop_s": float(rs[i].timing["loop_s"])}


def case(name: str, runs: int, steps: int, variants, dtype: str, repeats: int, peak: dict | None, record) -> None:
    """Every variant of one problem, back to back; ``record(row)`` after each."""
    problem = ncflow.Problem(**PROBLEMS[name], dtype=dtype)
    cfg = ncflow.Config(engine="collapsed")
    dyn = dynamics_for(problem, cfg)
    lr = float(default_lr(problem, cfg))
    flops = dyn.flops_per_step(problem)
    state = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: _starts(problem, dyn, 1))))
    x0 = _starts(problem, dyn, runs) if any(v not in ("wide_vmap", "wide_lanes") for v in variants) else None
    base = None
    for v in sorted(variants, key=lambda v: v != "baseline"):  # the baseline first: the reference
        r = wide_variant(v, problem, runs, steps, repeats) if v.startswith("wide") else \
            scan_variant(v, problem, dyn, x0, lr, steps, repeats)
        clear_cache()
        rate = runs * steps / r["seconds"]
        base = base or (r if v == "baseline" else None)
        row = {"problem": name, "K": problem.K, "d": problem.d, "n": problem.n, "dtype": dtype, "variant": v,
               "runs": runs, "steps": steps, "seconds": r["seconds"], "compile_s": r["compile_s"],
               "run_steps_per_s": rate, "flops_per_run_step": flops, "gflops": rate * flops / 1e9,
               "bytes_per_run_step": 2 * state, "gb_per_s": rate * 2 * state / 1e9,
               "temp_bytes_per_lane": r["temp_bytes_per_lane"]}
        if "loop_s" in r:
            row["loop_s"] = r["loop_s"]
        if peak is not None:
            row["flop_frac"] = row["gflops"] / (peak["fp32_tflops"] * 1e3)
            row["bw_frac"] = row["gb_per_s"] / (peak["hbm_tb_s"] * 1e3)
        if base is not None:
            row["vs_baseline"] = base["seconds"] / r["seconds"]
            f, fb = r["objective"], base["objective"]
            row["max_rel_objective_diff"] = float(np.max(np.abs(f - fb) / np.abs(fb)))
        record(row)


def run(runs=None, steps=None, problems=tuple(PROBLEMS), variants=VARIANTS, dtype="float32", repeats=3,
        budget_s=420.0, record=None) -> dict:
    """Every case; returns ``{"benchmark": "layouts", "machine": ..., "rows": [...]}``. ``record(out)``
    is called with the whole dict after each row (a killed run keeps its rows)."""
    t_start = time.perf_counter()
    m = machine()
    accel = m["platform"] != "cpu"
    runs = runs or (100_000 if accel else 4096)
    steps = steps or (1000 if accel else 200)
    out = {"benchmark": "layouts", "machine": m, "rows": []}

    def keep(row):
        out["rows"].append(row)
        out["wall_s"] = time.perf_counter() - t_start
        if record is not None:
            record(out, row)

    for name in problems:
        if time.perf_counter() - t_start > budget_s:
            keep({"problem": name, "runs": runs, "skipped": "budget"})
            continue
        case(name, runs, steps, variants, dtype, repeats, m["peak"], keep)
    out["wall_s"] = time.perf_counter() - t_start
    return out


def main(argv=None) -> int:
    a = _args(argv)

    def record(out, row):
        if a.table:
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        if a.out:
            with open(a.out, "w") as fh:
                fh.write(json.dumps(out, default=float) + "\n")

    out = run(a.runs, a.steps, a.problems, a.variants, a.dtype, a.repeats, a.budget_s, record)
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
