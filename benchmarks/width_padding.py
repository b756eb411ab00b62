"""Zero-padding of hidden widths in the deep UFM (issue 22, item 3): can a sweep over widths run as ONE
compiled program?

(a) **Property** (float64): pad every width d_l of a deep model (THEORY §9.1 linear, §9.6 ReLU) to D_l ≥ d_l
with zero rows and columns — H (d_0, N) → (D_0, N), W_l (d_l, d_{l−1}) → (D_l, D_{l−1}), the output width K
kept. Under the full GD step (``ncflow.maths.deep_objective.gd_step``) the padded units stay exactly zero
(their features are act(0) = 0, so the weights reading them get zero gradient; the rows writing them meet a
zero column of the next weight, so they get zero back-signal; λ·0 = 0), and f, the gradient and the real
entries follow the unpadded model's trajectory to rounding. Checked here step by step for ``--check-steps``
steps; ``tests/test_width_padding.py`` asserts the same, quickly.

The start must be drawn at the TRUE width and then padded: a start drawn at the padded width is a wider
model (non-zero padded units, fan-in variance 1/D instead of 1/d), not the same runs.

(b) **Measurement**: a sweep over widths (default the ReLU model of THEORY §9.6: K=10, n=5, L=4, every width
w in 10, 20, 30, 40, 60, 80, 100; R runs of ``--steps`` GD steps each, λ = 0.004, lr 0.5) stepped

* **separately** — one ``jit(vmap(lax.scan(gd_step)))`` program per width (one compile per width, each width
  paying its own flops), against
* **padded** — one program at the largest width (one compile), called once per width on that width's starts
  drawn at the true width and padded (every width paying the largest width's flops).

Compilation (AOT ``lower().compile()``) and stepping are timed apart; stepping is the median of
``--repeats`` calls after a warm-up call. Totals at ``--long-steps`` steps (default 30,000, THEORY §9.6's
step count) are **extrapolated** from the measured seconds per step (stepping is linear in the step count).
The padded calls' final f is compared with the separate programs' (the same runs). With ``--engine`` (the
default) the script also times what one width costs to compile in ncflow's batch engine
(``ncflow.simulate``'s ``timing["compile_s"]``: the chunk program and its companions, not one scan), the
compile cost a real sweep pays per width; the padded totals at that level are a model (the engine has no
padding path): one engine compile at the largest width plus every width stepped at its per-step time.

Usage::

    python benchmarks/width_padding.py                   # (a) and (b), float32 measurement
    python benchmarks/width_padding.py --check-only      # (a) only
    python benchmarks/width_padding.py --quick           # tiny sizes (smoke test)
    python benchmarks/width_padding.py --activation linear --widths 16 32 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # (a) is float64; (b) passes its dtype explicitly

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ncflow.maths import deep_objective as do  # noqa: E402

LAM, LR = 0.004, 0.5


# ----------------------------------------------------------------------------- padding
def pad_params(params: do.DeepParams, widths: tuple) -> do.DeepParams:
    """``params`` of widths (d_0..d_{L−1}) zero-padded to ``widths`` (D_0..D_{L−1}, each D_l ≥ d_l): H → (D_0, N),
    W_l → (D_l, D_{l−1}) for l < L, W_L → (K, D_{L−1}); the real entries in the leading block, b unchanged."""
    Ws, H, b = params
    K = Ws[-1].shape[0]
    dims = (*widths, K)
    if len(widths) != len(Ws) or any(D < W.shape[1] for D, W in zip(widths, Ws)):
        raise ValueError(f"widths must be {len(Ws)} values >= the model's, got {widths!r}")
    padded = tuple(jnp.pad(W, ((0, dims[i + 1] - W.shape[0]), (0, dims[i] - W.shape[1]))) for i, W in enumerate(Ws))
    return do.DeepParams(padded, jnp.pad(H, ((0, widths[0] - H.shape[0]), (0, 0))), b)


def unpad_params(params: do.DeepParams, widths: tuple) -> do.DeepParams:
    """The leading block of widths (d_0..d_{L−1}) of a padded point (the inverse of :func:`pad_params`)."""
    Ws, H, b = params
    dims = (*widths, Ws[-1].shape[0])
    return do.DeepParams(tuple(W[: dims[i + 1], : dims[i]] for i, W in enumerate(Ws)), H[: widths[0]], b)


def padded_units_max(params: do.DeepParams, widths: tuple) -> float:
    """max |entry| over every padded row and column of a padded point (0.0 when they are all exactly zero)."""
    Ws, H, _ = params
    dims = (*widths, Ws[-1].shape[0])
    parts = [np.asarray(H[widths[0]:])]
    for i, W in enumerate(Ws):
        parts += [np.asarray(W[dims[i + 1]:]), np.asarray(W[:, dims[i]:])]
    return max((float(np.max(np.abs(p))) for p in parts if p.size), default=0.0)


# ----------------------------------------------------------------------------- (a) the property
def check_property(activation: str, widths: tuple, padded: tuple, steps: int, K: int = 4, n=5, seed: int = 0,
                   lr: float = 0.2) -> dict:
    """Float64 GD of one run at ``widths`` and of the same run zero-padded to ``padded``, side by side.

    Returns {"padded_units_max": max over steps of :func:`padded_units_max` (0.0 = exactly zero),
    "f_rel_max": max over steps of |f_padded − f| / |f|, "state_rel_max": max over steps and leaves of
    max|unpadded block − unpadded run| / max|unpadded run|}. The start is drawn at the TRUE width."""
    bias = "unregularized" if activation == "linear" else "none"
    spec = do.DeepSpec(K=K, sizes=n, widths=widths, activation=activation, bias=bias, dtype="float64")
    pspec = dataclasses.replace(spec, widths=padded)
    lams = [LAM + 0.002 * i for i in range(spec.L)]
    co, pco = do.coeffs(spec, lams, LAM, 0.0), do.coeffs(pspec, lams, LAM, 0.0)
    x = do.gaussian_start(spec, jax.random.key(seed), 1.0)
    if spec.has_bias:
        x = x._replace(b=0.1 * jax.random.normal(jax.random.key(seed + 1), (K,), jnp.float64))
    y = pad_params(x, padded)
    step = jax.jit(lambda p: do.gd_step(spec, co, p, lr))
    pstep = jax.jit(lambda p: do.gd_step(pspec, pco, p, lr))
    f, pf = jax.jit(lambda p: do.objective(spec, co, p)), jax.jit(lambda p: do.objective(pspec, pco, p))
    zero, f_rel, st_rel = 0.0, 0.0, 0.0
    for _ in range(steps + 1):
        zero = max(zero, padded_units_max(y, widths))
        f_rel = max(f_rel, abs(float(pf(y)) - float(f(x))) / abs(float(f(x))))
        for a, b in zip(jax.tree_util.tree_leaves(unpad_params(y, widths)), jax.tree_util.tree_leaves(x)):
            scale = float(jnp.max(jnp.abs(b)))
            if scale > 0:
                st_rel = max(st_rel, float(jnp.max(jnp.abs(a - b))) / scale)
        x, y = step(x), pstep(y)
    return {"activation": activation, "widths": list(widths), "padded": list(padded), "steps": steps,
            "padded_units_max": zero, "f_rel_max": f_rel, "state_rel_max": st_rel}


# ----------------------------------------------------------------------------- (b) the measurement
def _spec(a, w: int) -> do.DeepSpec:
    bias = "unregularized" if a.activation == "linear" else "none"
    return do.DeepSpec(K=a.K, sizes=a.n, widths=(w,) * a.depth, activation=a.activation, bias=bias, dtype=a.dtype)


def _starts(spec: do.DeepSpec, runs: int):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(runs))
    return jax.block_until_ready(jax.jit(jax.vmap(lambda k: do.gaussian_start(spec, k, 1.0)))(keys))


def _program(spec: do.DeepSpec, runs: int, steps: int, example):
    """AOT-compiled jit(vmap(scan of ``steps`` GD steps)) → final f per run, and its compile seconds."""
    co = do.coeffs(spec, LAM, LAM, 0.0)

    def one(p):
        p = jax.lax.scan(lambda s, _: (do.gd_step(spec, co, s, LR), None), p, None, length=steps)[0]
        return do.objective(spec, co, p)

    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(example).compile()
    return compiled, time.perf_counter() - t0


def _time(compiled, x, repeats: int):
    """(median seconds of ``repeats`` calls after one warm-up call, final f of the last call)."""
    out = jax.block_until_ready(compiled(x))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(x))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), np.asarray(out, np.float64)


def _engine_compile(a, w: int) -> float:
    """ncflow's batch engine compile seconds for one width (``ncflow.simulate``'s timing, a few steps)."""
    import ncflow
    from ncflow.batch.programs import clear_cache

    clear_cache()
    prob = ncflow.Problem(K=a.K, n=a.n, d=w, depth=a.depth, activation=a.activation, bias=a.activation == "linear",
                          lambda_w=LAM, lambda_h=LAM, dtype=a.dtype)
    r = ncflow.simulate(prob, ncflow.Config(runs=a.runs, max_steps=100, early_stop=False, progress=False, lr=LR))
    return float(r.timing["compile_s"])


def measure(a) -> dict:
    """The sweep over ``a.widths`` stepped separately and padded to the largest width (module doc)."""
    widths = sorted(a.widths)
    top = widths[-1]
    pspec = _spec(a, top)
    rows = []
    padded_prog = None
    for w in widths:
        spec = _spec(a, w)
        x = _starts(spec, a.runs)
        prog, c = _program(spec, a.runs, a.steps, x)
        t, f = _time(prog, x, a.repeats)
        if padded_prog is None:
            padded_prog, pc = _program(pspec, a.runs, a.steps, _starts(pspec, a.runs))
        xp = jax.block_until_ready(jax.vmap(lambda p: pad_params(p, pspec.widths))(x))
        tp, fp = _time(padded_prog, xp, a.repeats)
        row = {"width": w, "compile_s": c, "step_s": t / a.steps, "padded_step_s": tp / a.steps,
               "flops_per_step": do.flops_per_step(spec), "padded_flops_per_step": do.flops_per_step(pspec),
               "f_rel_diff_padded": float(np.max(np.abs(fp - f) / np.abs(f)))}
        if a.engine:
            row["engine_compile_s"] = _engine_compile(a, w)
        rows.append(row)
        eng = f", engine compile {row['engine_compile_s']:6.2f} s" if a.engine else ""
        print(f"  width {w:>4}: compile {c:6.2f} s, {row['step_s'] * 1e3:8.3f} ms/step, padded "
              f"{row['padded_step_s'] * 1e3:8.3f} ms/step{eng}, |f_pad − f|/f ≤ {row['f_rel_diff_padded']:.1e}",
              flush=True)

    def totals(steps: int, compile_key: str) -> dict:
        sep = sum(r[compile_key] + steps * r["step_s"] for r in rows)
        top_compile = next(r[compile_key] for r in rows if r["width"] == top)
        pad = top_compile + sum(steps * r["padded_step_s"] for r in rows)
        return {"steps": steps, "separate_s": sep, "padded_s": pad}

    out = {"padded_compile_s": pc, "rows": rows}
    keys = ["compile_s"] + (["engine_compile_s"] if a.engine else [])
    for key in keys:
        comp_sep = sum(r[key] for r in rows)
        comp_pad = next(r[key] for r in rows if r["width"] == top)
        step_sep = sum(r["step_s"] for r in rows)
        step_pad = sum(r["padded_step_s"] for r in rows)
        # separate = padded at S* = (compile saved) / (stepping added per step)
        breakeven = (comp_sep - comp_pad) / max(step_pad - step_sep, 1e-12)
        out[key] = {"compile_separate_s": comp_sep, "compile_padded_s": comp_pad, "step_separate_s": step_sep,
                    "step_padded_s": step_pad, "breakeven_steps": breakeven,
                    "at_measured": totals(a.steps, key), "at_long": totals(a.long_steps, key)}
    return out


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--activation", default="relu", choices=("linear", "relu"))
    ap.add_argument("-K", type=int, default=10)
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--widths", type=int, nargs="+", default=[10, 20, 30, 40, 60, 80, 100])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200, help="GD steps per timed call")
    ap.add_argument("--long-steps", type=int, default=30_000, help="step count of the extrapolated totals")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ncflow's batch engine compile per width")
    ap.add_argument("--check-steps", type=int, default=200, help="steps of the property check (a)")
    ap.add_argument("--check-only", action="store_true", help="(a) only")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", default=None, help="write everything as JSON here")
    a = ap.parse_args(argv)
    if a.quick:
        a.widths, a.runs, a.steps, a.repeats, a.check_steps = [4, 8], 4, 20, 1, 20
    return a


def main(argv=None) -> int:
    a = _args(argv)
    load0 = os.getloadavg()
    dev = jax.devices()[0]
    print(f"# {os.cpu_count()} cores, {dev.platform} ({dev.device_kind}), jax {jax.__version__}; load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print("(a) zero-padded widths under float64 GD (start drawn at the true width, then padded)")
    checks = []
    for act, w, p in (("linear", (3, 5, 4), (6, 9, 7)), ("relu", (3, 5, 4), (6, 9, 7)),
                      ("relu", (10, 10, 10, 10), (16, 16, 16, 16))):
        r = check_property(act, w, p, a.check_steps, K=4 if len(w) == 3 else 10)
        checks.append(r)
        print(f"  {act:<6} widths {w} → {p}, {r['steps']} steps: padded units max |·| = "
              f"{r['padded_units_max']:.1e}, max |f_pad − f|/f = {r['f_rel_max']:.1e}, real entries ≤ "
              f"{r['state_rel_max']:.1e}")
    ok = all(r["padded_units_max"] == 0.0 and r["f_rel_max"] <= 1e-12 for r in checks)
    print(f"  property {'holds' if ok else 'FAILS'}")
    out = {"load_before": load0, "checks": checks}
    if not a.check_only:
        print(f"\n(b) {a.activation} K={a.K} n={a.n} L={a.depth}, widths {a.widths}, R = {a.runs} runs, "
              f"{a.steps} steps per call, {a.dtype}")
        m = measure(a)
        out["measure"] = m
        for key, what in (("compile_s", "bare scan programs"), ("engine_compile_s", "ncflow engine compiles")):
            if key not in m:
                continue
            s = m[key]
            print(f"  {what}: compile separate {s['compile_separate_s']:.2f} s vs padded "
                  f"{s['compile_padded_s']:.2f} s; "
                  f"stepping per step, all widths: separate {s['step_separate_s'] * 1e3:.2f} ms vs padded "
                  f"{s['step_padded_s'] * 1e3:.2f} ms; padding pays below {s['breakeven_steps']:.0f} steps")
            for t in (s["at_measured"], s["at_long"]):
                tag = "measured" if t["steps"] == a.steps else "extrapolated"
                print(f"    total at {t['steps']:>6} steps ({tag}): separate {t['separate_s']:9.2f} s, padded "
                      f"{t['padded_s']:9.2f} s")
    load1 = os.getloadavg()
    out["load_after"] = load1
    print(f"# load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
