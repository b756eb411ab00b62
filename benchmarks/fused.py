"""Fused kernel benchmark (ncflow.batch.fused): the Pallas multi-step kernel against a plain
``jit(vmap(lax.scan))`` of ncflow's one-run collapsed GD step, side by side in one process.

Two sections:

* ``cpu`` — CORRECTNESS ONLY, not speed: on a CPU the kernel runs in Pallas's interpret mode (XLA
  emulating the kernel), so its times say nothing about a GPU. For each size: the kernel's and the
  baseline's final states in float64 after ``steps`` masked steps with per-lane budgets (largest
  leafwise relative difference) and the compile/run seconds of each, for the record.
* ``gpu`` — on an accelerator (skipped elsewhere): float32, full-precision products, ``runs`` lanes
  (default 1e5), for K=d=4, 6 and 10 (n = 10, 20, 100): run-steps/s of the baseline and of the
  kernel (Triton backend; ``steps`` steps as launches of ``chunk`` steps each), their ratio, GFLOP/s
  by ncflow's flop model of the collapsed step (4Kd² + 8K²d), compile seconds, and the largest
  relative difference of the runs' final objectives (the same starts). Each size runs in a child
  process with a timeout: a Triton compile that blows up (register spills at K=d=10, Triton's
  coalescing pass) is recorded as such instead of stalling the device session.

Protocol: compile timed apart (AOT ``lower().compile()``), one warm-up call, the median of
``--repeats`` timed calls with ``block_until_ready``; the baseline and the kernel of a size run in
the same process. Prints one JSON line; ``--out FILE`` keeps every finished row (rewritten after
each). Examples::

    python benchmarks/fused.py --sections cpu               # interpret mode: correctness, ~1 min
    python benchmarks/fused.py --sections gpu --out f.json  # on a GPU: the side-by-side figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the cpu section; gpu rows are float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ncflow  # noqa: E402
from ncflow.batch import fused  # noqa: E402
from ncflow.dynamics.build import default_lr, dynamics_for  # noqa: E402
from ncflow.dynamics.spaces import COLLAPSED  # noqa: E402
from ncflow.dynamics.starts import initializer, run_key  # noqa: E402
from ncflow.maths.collapsed import objective  # noqa: E402

#: the sizes of the gpu section: (K, d, n); K·d <= 36 fits a lane in a thread's registers, K=d=10 does not
GPU_SIZES = ((4, 4, 10), (6, 6, 20), (10, 10, 100))
CPU_SIZES = ((3, 4, 5), (4, 4, 10))


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    ap.add_argument("--runs", type=int, default=100_000, help="gpu: lanes")
    ap.add_argument("--steps", type=int, default=1000, help="gpu: steps (cpu: 20)")
    ap.add_argument("--chunk", type=int, default=100, help="gpu: steps per kernel launch")
    ap.add_argument("--block-lanes", type=int, default=128, help="lanes per program (a power of two)")
    ap.add_argument("--num-warps", type=int, default=4)
    ap.add_argument("--sizes", nargs="+", default=None, help="K,d,n triples (default: the section's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=150.0, help="gpu: seconds per size (child process)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="start no new size after this many seconds")
    ap.add_argument("--out", default=None, help="also write the JSON line to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def machine() -> dict:
    """Where the numbers come from."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "jax": jax.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}


def _setup(K: int, d: int, n: int, runs: int, dtype: str):
    """ncflow's own starts of runs 0..runs−1, the default step size, and the problem."""
    problem = ncflow.Problem(K=K, d=d, n=n, dtype=dtype)
    cfg = ncflow.Config(runs=runs, early_stop=False, progress=False, engine="collapsed")
    dyn = dynamics_for(problem, cfg)
    init = initializer(problem, cfg)
    x0 = jax.jit(jax.vmap(lambda i: dyn.from_params(problem, init(problem, run_key(0, i), 1.0))))(
        jnp.arange(runs, dtype=jnp.uint32))
    return problem, dyn, x0, float(default_lr(problem, cfg))


def _timed(fn, args, repeats: int):
    """(output, median seconds, compile seconds) of jit(fn)(*args)."""
    t0 = time.perf_counter()
    prog = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(prog(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(prog(*args))
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), compile_s


def _baseline(problem, lr: float, steps: int, budget=None):
    """jit(vmap(scan)) of COLLAPSED.gd_step over all lanes, full precision; with ``budget`` (lanes,)
    each lane masked past its own budget (as the wide plan)."""
    lr_ = jnp.asarray(lr, problem.dtype)

    def one(x, b):
        def body(xc, t):
            new = COLLAPSED.gd_step(problem, xc, lr_)
            if budget is not None:
                new = jax.tree_util.tree_map(lambda u, v: jnp.where(t < b, u, v), new, xc)
            return new, None
        return jax.lax.scan(body, x, jnp.arange(steps))[0]

    def run(x, b):
        with jax.default_matmul_precision("highest"):
            return jax.vmap(one)(x, b)
    return run


def _rel(a, b) -> float:
    out = 0.0
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        out = max(out, float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300)))
    return out


def cpu_case(K: int, d: int, n: int, a) -> dict:
    """Interpret mode, float64: the kernel's state against the masked baseline (correctness only)."""
    runs, steps = 256, 20
    problem, _, x0, lr = _setup(K, d, n, runs, "float64")
    budget = jnp.asarray(np.random.default_rng(0).integers(0, steps + 1, runs), jnp.int32)
    ref, base_s, base_c = _timed(_baseline(problem, lr, steps, budget), (x0, budget), a.repeats)
    coefs = fused.coefficients(problem, lr, runs)
    rows, s, c = _timed(lambda r, cc, b: fused.fused_chunk(r, cc, b, K=K, d=d, n=n, steps=steps,
                                                            block_lanes=a.block_lanes, interpret=True),
                        (fused.pack(x0), coefs, budget), a.repeats)
    return {"section": "cpu", "K": K, "d": d, "n": n, "runs": runs, "steps": steps, "dtype": "float64",
            "mode": "interpret (correctness only, not speed)",
            "max_rel_state_diff": _rel(fused.unpack(rows, K, d), ref),
            "kernel_compile_s": c, "kernel_s": s, "baseline_compile_s": base_c, "baseline_s": base_s}


def gpu_case(K: int, d: int, n: int, a) -> dict:
    """float32 on the accelerator: baseline and kernel (Triton) side by side, same starts."""
    runs, steps, chunk = a.runs, a.steps, a.chunk
    if steps % chunk:
        raise SystemExit(f"--steps must be a multiple of --chunk, got {steps} and {chunk}")
    problem, dyn, x0, lr = _setup(K, d, n, runs, "float32")
    full = jnp.full((runs,), chunk, jnp.int32)
    base, base_s, base_c = _timed(_baseline(problem, lr, steps), (x0, full), a.repeats)
    kw = dict(K=K, d=d, n=n, steps=chunk, block_lanes=a.block_lanes, num_warps=a.num_warps, interpret=False)

    def run(r, c, b):
        return jax.lax.fori_loop(0, steps // chunk, lambda _, rr: fused.fused_chunk(rr, c, b, **kw), r)
    rows, s, c = _timed(run, (fused.pack(x0), fused.coefficients(problem, lr, runs), full), a.repeats)
    with jax.default_matmul_precision("highest"):
        f_base = np.asarray(jax.vmap(lambda x: objective(problem, x))(base), np.float64)
        f = np.asarray(jax.vmap(lambda x: objective(problem, x))(fused.unpack(rows, K, d)), np.float64)
    flops = dyn.flops_per_step(problem)
    return {"section": "gpu", "K": K, "d": d, "n": n, "runs": runs, "steps": steps, "chunk": chunk, "dtype": "float32",
            "block_lanes": a.block_lanes, "num_warps": a.num_warps, "device": jax.devices()[0].device_kind,
            "baseline_run_steps_per_s": runs * steps / base_s, "kernel_run_steps_per_s": runs * steps / s,
            "kernel_vs_baseline": base_s / s, "baseline_gflops": runs * steps * flops / base_s / 1e9,
            "kernel_gflops": runs * steps * flops / s / 1e9, "baseline_compile_s": base_c, "kernel_compile_s": c,
            "max_rel_objective_diff": float(np.max(np.abs(f - f_base) / np.abs(f_base)))}


def gpu_rows(a, record) -> None:
    """Each size in a child process (a compile that blows up is a row, not a stall)."""
    sizes = a.sizes or [",".join(map(str, s)) for s in GPU_SIZES]
    if jax.devices()[0].platform == "cpu":
        for spec in sizes:
            record({"section": "gpu", "size": spec, "skipped": "no accelerator (the kernel needs a GPU)"})
        return
    for spec in sizes:
        if not a.budget_left():
            record({"section": "gpu", "size": spec, "skipped": "budget"})
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, "--runs", str(a.runs), "--steps",
               str(a.steps), "--chunk", str(a.chunk), "--block-lanes", str(a.block_lanes), "--num-warps",
               str(a.num_warps), "--repeats", str(a.repeats)]
        t0 = time.perf_counter()
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout_s, env=env)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            row = json.loads(line) if r.returncode == 0 and line.startswith("{") else {
                "section": "gpu", "size": spec, "error": (r.stderr or "")[-800:]}
        except subprocess.TimeoutExpired:
            row = {"section": "gpu", "size": spec, "error": f"timeout after {a.timeout_s} s (compile included)"}
        row["child_wall_s"] = round(time.perf_counter() - t0, 1)
        record(row)


def run(argv=None) -> dict:
    """Every requested section; returns the result (each row also on stderr as it finishes).
    benchmarks/device.py calls this for its ``fused`` section."""
    a = _args(argv)
    t_start = time.perf_counter()
    a.budget_left = lambda: time.perf_counter() - t_start < a.budget_s
    out = {"benchmark": "fused", "machine": machine(), "rows": []}

    def record(row: dict) -> None:
        out["rows"].append(row)
        out["wall_s"] = time.perf_counter() - t_start
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        if a.out:
            with open(a.out, "w") as fh:
                fh.write(json.dumps(out, default=float) + "\n")

    if "cpu" in a.sections:
        for spec in a.sizes or [",".join(map(str, s)) for s in CPU_SIZES]:
            if not a.budget_left():
                record({"section": "cpu", "size": spec, "skipped": "budget"})
                continue
            record(cpu_case(*(int(v) for v in spec.split(",")), a))
    if "gpu" in a.sections:
        gpu_rows(a, record)
    out["wall_s"] = time.perf_counter() - t_start
    return out


def main(argv=None) -> int:
    a = _args(argv)
    if a.child:
        K, d, n = (int(v) for v in a.child.split(","))
        print(json.dumps(gpu_case(K, d, n, a), default=float))
        return 0
    print(json.dumps(run(argv), default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
