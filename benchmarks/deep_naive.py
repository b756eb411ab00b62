"""Deep UFM steps side by side in ONE process: the collapsed deep linear step, the full step (the order
ncflow.maths.deep_objective picks, and layer by layer), and a naive ``jit(vmap(scan(jax.grad)))`` of the
plain deep objective.

Usage::

    python benchmarks/deep_naive.py                  # the rows below, float32
    python benchmarks/deep_naive.py --dtype float64
    python benchmarks/deep_naive.py --quick          # tiny sizes, a smoke test of the script
    python benchmarks/device.py --sections deep      # the same rows on an accelerator (calls :func:`run`)

Rows: deep linear K=10, d=64 (every width), L=3, n=20 and n=200 (bias (A)); deep ReLU K=10, width 30, L=4,
n=5 (bias-free, full step only: there is no collapsed ReLU step). λ = 5e-4 on every factor, step 0.1,
Gaussian starts of scale 1 from per-run keys.

Protocol: every method is ``jax.jit(jax.vmap(one run's lax.scan of GD steps))`` over R runs; compilation
(AOT ``lower().compile()``) is timed apart; each timing is the median of ``--repeats`` calls, each
``block_until_ready``, the methods of a row called round-robin (so a change of load hits them alike). Every
method gets a step count giving ~``--budget`` flops per call by its own flop model (at least 10 steps), and
run-steps/s = R · steps / seconds, so the ratios in a row compare methods measured back to back in this
process. One XLA device. The load average before and after is printed: on a shared machine absolute
numbers are low and noisy, ratios less so. Each call's process CPU time is recorded too (``cpu_s``, all
threads; on a CPU backend): on a machine busier than its cores, wall time counts the waits for a core and
CPU time does not, so ``vs_naive_cpu`` (the ratio of CPU seconds per run-step) is the steadier ratio there.

Besides the step itself in one ``jit(vmap(scan))`` over all R runs, the linear rows time the collapsed step
as ncflow's batch engine steps it on a CPU (the cpu plan): runs in cache groups of
:func:`ncflow.batch.memory.auto_group` runs (a state of about 256 KiB), each group scanned through all its
steps before the next (``lax.map`` over the groups) — "collapsed, cache groups"; and, with ``--engine``,
``ncflow.simulate`` itself (fixed steps, no early stop, on this process's one device;
``timing["run_steps_per_s"]``, timed after a warm-up call, not round-robin).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=128, help="runs R per call (vmapped)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=1e10, help="flops per timed call (sets the step counts)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ncflow.simulate on the linear rows")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    return ap.parse_args(argv)


import jax  # noqa: E402
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


def program(step, spec, steps, group=None):
    """jit(vmap(one run's scan of ``steps`` steps)); with ``group``, the runs in groups of ``group``, one group
    scanned through all its steps after another (``lax.map``; R must be a multiple of ``group``)."""
    def one(co, x):
        return jax.lax.scan(lambda s, _: (step(spec, co, s), None), x, None, length=steps)[0]
    if group is None:
        return jax.jit(jax.vmap(one))

    def grouped(co, x):
        R = jax.tree_util.tree_leaves(x)[0].shape[0]
        split = lambda t: t.reshape((R // group, group) + t.shape[1:])  # noqa: E731
        out = jax.lax.map(lambda a: jax.vmap(one)(*a), (jax.tree_util.tree_map(split, co),
                                                         jax.tree_util.tree_map(split, x)))
        return jax.tree_util.tree_map(lambda t: t.reshape((R,) + t.shape[2:]), out)
    return jax.jit(grouped)


def compile_method(a, name, step, spec, co, x0, flops, group=None):
    """The AOT-compiled program of one method, with its step count and compile time."""
    steps = max(10, int(a.budget / max(flops * a.runs, 1)))
    t0 = time.perf_counter()
    compiled = program(step, spec, steps, group).lower(co, x0).compile()
    return {"method": name, "steps": steps, "flops_per_step": flops, "compile_s": time.perf_counter() - t0,
            "_call": lambda: compiled(co, x0), "_times": [], "_cpu": []}


def time_row(a, methods):
    """Round-robin timing: repeat r calls the methods in turn (reversed on odd r), so load changes hit all
    of them alike; each method's median over the repeats (wall and process CPU seconds)."""
    for m in methods:  # one untimed call each (first-call costs)
        jax.block_until_ready(m["_call"]())
    for r in range(a.repeats):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(m["_call"]())
            m["_times"].append(time.perf_counter() - t0)
            m["_cpu"].append(time.process_time() - c0)
            m["finite"] = bool(all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(out)))
    rows = []
    for m in methods:
        sec, cpu = statistics.median(m["_times"]), statistics.median(m["_cpu"])
        rows.append({k: v for k, v in m.items() if not k.startswith("_")} | {
            "seconds": sec, "cpu_s": cpu, "run_steps_per_s": a.runs * m["steps"] / sec,
            "run_steps_per_cpu_s": a.runs * m["steps"] / max(cpu, 1e-9),
            "gflops": m["flops_per_step"] * a.runs * m["steps"] / sec / 1e9})
    return rows


def engine(a, spec, steps) -> dict:
    """ncflow.simulate of the row's deep linear problem (collapsed engine, ``steps`` fixed steps, R runs, one
    device), after a warm-up call: run-steps/s of its stepping (``timing``)."""
    import ncflow

    prob = ncflow.Problem(K=spec.K, n=spec.sizes[0], d=spec.widths[0], depth=spec.L, lambda_w=LAM, lambda_h=LAM,
                          dtype=spec.dtype)
    cfg = ncflow.Config(runs=a.runs, max_steps=steps, early_stop=False, progress=False, lr=LR, engine="collapsed")
    first = ncflow.simulate(prob, cfg).timing
    t = ncflow.simulate(prob, cfg).timing
    return {"method": "ncflow.simulate", "steps": steps, "flops_per_step": dc.flops_per_step(spec),
            "compile_s": first["compile_s"], "seconds": t["run_s"], "run_steps_per_s": t["run_steps_per_s"],
            "gflops": dc.flops_per_step(spec) * t["run_steps_per_s"] / 1e9, "finite": True}


def row(a, act, K, d, L, n):
    spec = do.DeepSpec(K=K, sizes=n, widths=(d,) * L, activation=act, bias="unregularized" if act == "linear"
                       else "none", dtype=a.dtype)
    R = a.runs
    cos = do.DeepCoeffs(jnp.full((R, L), LAM, spec.dtype), jnp.full((R,), LAM, spec.dtype),
                        jnp.zeros((R,), spec.dtype))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(R))
    p0 = jax.block_until_ready(jax.jit(jax.vmap(lambda k: do.gaussian_start(spec, k, 1.0)))(keys))
    dims = spec.dims
    naive_flops = 6 * spec.N * sum(dims[i] * dims[i - 1] for i in range(1, L + 1))
    methods = [compile_method(a, "naive jax.grad", naive_step, spec, cos, p0, naive_flops),
               compile_method(a, "full", full_step, spec, cos, p0, do.flops_per_step(spec))]
    if act == "linear":
        methods.append(compile_method(a, "full layer by layer", full_layers_step, spec, cos, p0, naive_flops))
        x0 = jax.block_until_ready(jax.jit(jax.vmap(lambda p: dc.collapse(spec, p)))(p0))
        cflops = dc.flops_per_step(spec)
        methods.append(compile_method(a, "collapsed", collapsed_step, spec, cos, x0, cflops))
        g = _auto_group(spec, x0, R)
        methods.append(compile_method(a, f"collapsed, groups of {g}", collapsed_step, spec, cos, x0, cflops, g))
    out = time_row(a, methods)
    if act == "linear" and a.engine:
        out.append(engine(a, spec, out[-1]["steps"]))
    base, base_cpu = out[0]["run_steps_per_s"], out[0]["run_steps_per_cpu_s"]
    for r in out:
        r["vs_naive"] = r["run_steps_per_s"] / base
        if "run_steps_per_cpu_s" in r:
            r["vs_naive_cpu"] = r["run_steps_per_cpu_s"] / base_cpu
    return {"problem": dict(activation=act, K=K, width=d, L=L, n=n, N=spec.N), "methods": out}


def _auto_group(spec, x0, runs: int) -> int:
    """The engine's cache group (power of two whose state is about 256 KiB, ncflow.batch.memory.auto_group's
    rule applied to this state), at most ``runs`` and dividing it."""
    from ncflow.batch.memory import MAX_GROUP

    per_run = sum(v.nbytes for v in jax.tree_util.tree_leaves(x0)) // runs
    g = max(1, (256 * 1024) // max(per_run, 1))
    g = min(1 << (g.bit_length() - 1), MAX_GROUP, runs)
    while runs % g:
        g //= 2
    return g


def run(argv=None, out=print) -> dict:
    """Time every row (the module doc); ``argv`` as the command line's. Prints the table through ``out``
    (a print-like function) and returns {"machine", "dtype", "runs", "load_before", "load_after", "rows"}.
    The caller enables float64 (``jax_enable_x64``) when it asks for it; float32 works either way."""
    a = _args(argv)
    load0 = os.getloadavg()
    out(f"# {machine()}; dtype {a.dtype}; R = {a.runs} runs; load average before {load0[0]:.2f} "
        f"{load0[1]:.2f} {load0[2]:.2f}")
    rows = []
    for spec in (QUICK if a.quick else ROWS):
        r = row(a, *spec)
        rows.append(r)
        p = r["problem"]
        out(f"\n{p['activation']} K={p['K']} width={p['width']} L={p['L']} n={p['n']} (N={p['N']})")
        out(f"  {'method':<26}{'run-steps/s':>12}{'vs naive':>10}{'by CPU':>9}{'GFLOP/s':>9}{'steps':>7}"
            f"{'compile s':>11}")
        for m in r["methods"]:
            flag = "" if m["finite"] else "  (non-finite state!)"
            cpu = f"{m['vs_naive_cpu']:>8.2f}x" if "vs_naive_cpu" in m else f"{'-':>9}"
            out(f"  {m['method']:<26}{m['run_steps_per_s']:>12.3g}{m['vs_naive']:>9.2f}x{cpu}{m['gflops']:>9.2f}"
                f"{m['steps']:>7}{m['compile_s']:>11.2f}{flag}")
    load1 = os.getloadavg()
    out(f"\n# load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    res = {"machine": machine(), "dtype": a.dtype, "runs": a.runs, "load_before": load0, "load_after": load1,
           "rows": rows}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


def main(argv=None) -> int:
    a = _args(argv)
    jax.config.update("jax_enable_x64", a.dtype == "float64")
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
