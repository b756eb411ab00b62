"""Deep UFM steps side by side in ONE process: the collapsed deep linear step, the full step (the order
ncflow.maths.deep_objective picks, and layer by layer), and a naive ``jit(vmap(scan(jax.grad)))`` of the
plain deep objective.

Usage::

    python benchmarks/deep_naive.py                  # the rows below, float32
    python benchmarks/deep_naive.py --dtype float64
    python benchmarks/deep_naive.py --quick          # tiny sizes, a smoke test of the script

Rows: deep linear K=10, d=64 (every width), L=3, n=20 and n=200 (bias (A)); deep ReLU K=10, width 30, L=4,
n=5 (bias-free, full step only: there is no collapsed ReLU step). λ = 5e-4 on every factor, step 0.1,
Gaussian starts of scale 1 from per-run keys.

Protocol: every method is ``jax.jit(jax.vmap(one run's lax.scan of GD steps))`` over R runs; compilation
(AOT ``lower().compile()``) is timed apart; each timing is the median of ``--repeats`` calls, each
``block_until_ready``, the methods of a row called round-robin (so a change of load hits them alike). Every
method gets a step count giving ~``--budget`` flops per call by its own flop model (at least 10 steps), and
run-steps/s = R · steps / seconds, so the ratios in a row compare methods measured back to back in this
process. One XLA CPU device. The load average before and after is printed: on a shared machine absolute
numbers are low and noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=128, help="runs R per call (vmapped)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=1e10, help="flops per timed call (sets the step counts)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    return ap.parse_args()


ARGS = _args()
import jax  # noqa: E402

jax.config.update("jax_enable_x64", ARGS.dtype == "float64")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ncflow.maths import deep_collapsed as dc  # noqa: E402
from ncflow.maths import deep_objective as do  # noqa: E402

LAM, LR = 5e-4, 0.1
ROWS = [("linear", 10, 64, 3, 20), ("linear", 10, 64, 3, 200), ("relu", 10, 30, 4, 5)]
QUICK = [("linear", 4, 8, 3, 5), ("relu", 4, 8, 3, 5)]


def machine() -> str:
    """One line naming the machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    dev = jax.devices()[0]
    return f"{cpu}, {os.cpu_count()} cores, {dev.platform} ({dev.device_kind}), jax {jax.__version__}"


# ----------------------------------------------------------------------------- the methods (ONE run each)
def plain_objective(spec, co, p):
    """The deep UFM written plainly, layer by layer, for jax.grad (the naive baseline)."""
    Ws, H, b = p
    A = H
    for W in Ws[:-1]:
        A = W @ A
        if spec.activation == "relu":
            A = jax.nn.relu(A)
    out = Ws[-1] @ A + (b[:, None] if spec.has_bias else 0.0)
    f = jnp.sum((out - do.labels(spec, H.dtype)) ** 2) / (2 * spec.N) + co.lambda_h / 2 * jnp.sum(H**2)
    return f + sum(co.lambdas[i] / 2 * jnp.sum(W**2) for i, W in enumerate(Ws))


def naive_step(spec, co, p):
    g = jax.grad(plain_objective, argnums=2)(spec, co, p)
    return jax.tree_util.tree_map(lambda x, y: x - LR * y, p, g)


def full_step(spec, co, p):
    return do.gd_step(spec, co, p, LR)


def full_layers_step(spec, co, p):
    """The full step forced layer by layer (what the product-first order of the linear model saves)."""
    out = do._forward(spec, p, product=False)
    g = do._finish(spec, co, p, *out)[1]
    return jax.tree_util.tree_map(lambda x, y: x - LR * y, p, g)


def collapsed_step(spec, co, x):
    return dc.gd_step(spec, co, x, LR)


def program(step, spec, steps):
    """jit(vmap(one run's scan of ``steps`` steps)), returning the final states' objective too."""
    def one(co, x):
        return jax.lax.scan(lambda s, _: (step(spec, co, s), None), x, None, length=steps)[0]
    return jax.jit(jax.vmap(one))


def compile_method(name, step, spec, co, x0, flops):
    """The AOT-compiled program of one method, with its step count and compile time."""
    steps = max(10, int(ARGS.budget / max(flops * ARGS.runs, 1)))
    t0 = time.perf_counter()
    compiled = program(step, spec, steps).lower(co, x0).compile()
    return {"method": name, "steps": steps, "flops_per_step": flops, "compile_s": time.perf_counter() - t0,
            "_call": lambda: compiled(co, x0), "_times": []}


def time_row(methods):
    """Round-robin timing: repeat r calls the methods in turn (reversed on odd r), so load changes hit all
    of them alike; each method's median over the repeats."""
    for r in range(ARGS.repeats):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            t0 = time.perf_counter()
            out = jax.block_until_ready(m["_call"]())
            m["_times"].append(time.perf_counter() - t0)
            m["finite"] = bool(all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(out)))
    rows = []
    for m in methods:
        sec = statistics.median(m["_times"])
        rows.append({k: v for k, v in m.items() if not k.startswith("_")} | {
            "seconds": sec, "run_steps_per_s": ARGS.runs * m["steps"] / sec,
            "gflops": m["flops_per_step"] * ARGS.runs * m["steps"] / sec / 1e9})
    return rows


def row(act, K, d, L, n):
    spec = do.DeepSpec(K=K, sizes=n, widths=(d,) * L, activation=act, bias="unregularized" if act == "linear"
                       else "none", dtype=ARGS.dtype)
    R = ARGS.runs
    cos = do.DeepCoeffs(jnp.full((R, L), LAM, spec.dtype), jnp.full((R,), LAM, spec.dtype),
                        jnp.zeros((R,), spec.dtype))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(R))
    p0 = jax.block_until_ready(jax.jit(jax.vmap(lambda k: do.gaussian_start(spec, k, 1.0)))(keys))
    dims = spec.dims
    naive_flops = 6 * spec.N * sum(dims[i] * dims[i - 1] for i in range(1, L + 1))
    methods = [compile_method("naive jax.grad", naive_step, spec, cos, p0, naive_flops),
               compile_method("full", full_step, spec, cos, p0, do.flops_per_step(spec))]
    if act == "linear":
        methods.append(compile_method("full layer by layer", full_layers_step, spec, cos, p0, naive_flops))
        x0 = jax.block_until_ready(jax.jit(jax.vmap(lambda p: dc.collapse(spec, p)))(p0))
        methods.append(compile_method("collapsed", collapsed_step, spec, cos, x0, dc.flops_per_step(spec)))
    out = time_row(methods)
    base = out[0]["run_steps_per_s"]
    for r in out:
        r["vs_naive"] = r["run_steps_per_s"] / base
    return {"problem": dict(activation=act, K=K, width=d, L=L, n=n, N=spec.N), "methods": out}


def main():
    load0 = os.getloadavg()
    print(f"# {machine()}; dtype {ARGS.dtype}; R = {ARGS.runs} runs; load average before {load0[0]:.2f} "
          f"{load0[1]:.2f} {load0[2]:.2f}")
    rows = []
    for spec in (QUICK if ARGS.quick else ROWS):
        r = row(*spec)
        rows.append(r)
        p = r["problem"]
        print(f"\n{p['activation']} K={p['K']} width={p['width']} L={p['L']} n={p['n']} (N={p['N']})")
        print(f"  {'method':<22}{'run-steps/s':>13}{'vs naive':>10}{'GFLOP/s':>9}{'steps':>7}{'compile s':>11}")
        for m in r["methods"]:
            flag = "" if m["finite"] else "  (non-finite state!)"
            print(f"  {m['method']:<22}{m['run_steps_per_s']:>13.3g}{m['vs_naive']:>9.2f}x{m['gflops']:>9.2f}"
                  f"{m['steps']:>7}{m['compile_s']:>11.2f}{flag}")
    load1 = os.getloadavg()
    print(f"\n# load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump({"machine": machine(), "dtype": ARGS.dtype, "runs": ARGS.runs, "load_before": load0,
                       "load_after": load1, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
