"""Fit the CPU time model behind ``--dry-run``'s "time at most" (``ncflow.batch.estimate``) and check
the bound against measured stepping times.

Every case runs ``runs`` runs for exactly ``max_steps`` steps (``early_stop=False``: every run uses
its whole budget, which is what the bound assumes) after an untimed warm-up call of the same batch
shape (it compiles); the stepping loop's seconds (``Result.timing["loop_s"]``) are measured
``--repeats`` times and the MINIMUM is kept (the machine is shared: the minimum is the least
disturbed). The model of :func:`ncflow.batch.estimate.time_terms` is linear in five rates
(seconds per chunk, per group-step, per lane-step, per flop and per state byte of a lane-step);
they are fitted as the least upper envelope of the measured minima (:func:`envelope`), separately
for each engine and dtype, on the GD cases. The other optimizers (momentum, nesterov, adam, flow), the saddle start's
escape recorder and the wide plan are only checked against the bound, never fitted: their
measured/model ratios give ``CPU_FACTORS``.

    python benchmarks/estimate_fit.py                 # measure, fit, print the rates and every ratio
    python benchmarks/estimate_fit.py --check         # measure, compare with the module's bound only
    python benchmarks/estimate_fit.py --json rows.json

Uses one XLA CPU device per core, as the CLI does. Takes about 13 minutes on a loaded 2-core
machine (much of it compilation: every case is a new batch shape). Refit on several sessions with
``--fit-from A.json B.json ...`` (each case's minimum over the files); results in
benchmarks/README.md, "Time estimates".
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from ncflow.batch.estimate import TERMS

#: (name, problem kwargs, config kwargs, fitted?) — a spread over K, d, n, runs and chunk for each
#: engine: few runs with a small or a large chunk isolate the per-chunk and per-group-step costs,
#: many runs of small states and few runs of large ones the per-flop and per-byte costs
CASES = [
    # collapsed GD, float32
    ("c K4 d4 chunk10", dict(K=4, d=4, n=10), dict(engine="collapsed", runs=2, max_steps=2000, chunk=10), True),
    ("c K4 d4 chunk1000", dict(K=4, d=4, n=10), dict(engine="collapsed", runs=2, max_steps=20000, chunk=1000), True),
    ("c K10 d10 n100", dict(K=10, d=10, n=100), dict(engine="collapsed", runs=512, max_steps=2000), True),
    ("c K10 d64", dict(K=10, d=64, n=100), dict(engine="collapsed", runs=256, max_steps=500), True),
    ("c K10 d128", dict(K=10, d=128, n=100), dict(engine="collapsed", runs=64, max_steps=500), True),
    ("c K10 d256", dict(K=10, d=256, n=100), dict(engine="collapsed", runs=16, max_steps=300), True),
    ("c K10 d512", dict(K=10, d=512, n=100), dict(engine="collapsed", runs=4, max_steps=200), True),
    ("c K2 d512", dict(K=2, d=512, n=100), dict(engine="collapsed", runs=4, max_steps=300), True),
    ("c K50 d50", dict(K=50, d=50, n=20), dict(engine="collapsed", runs=64, max_steps=300), True),
    ("c K100 d64", dict(K=100, d=64, n=10), dict(engine="collapsed", runs=16, max_steps=200), True),
    ("c K30 d256", dict(K=30, d=256, n=20), dict(engine="collapsed", runs=8, max_steps=200), True),
    # full GD, float32
    ("f K4 d4 chunk10", dict(K=4, d=4, n=10), dict(engine="full", runs=2, max_steps=2000, chunk=10), True),
    ("f K4 d4 chunk1000", dict(K=4, d=4, n=10), dict(engine="full", runs=2, max_steps=20000, chunk=1000), True),
    ("f K10 d10 n100", dict(K=10, d=10, n=100), dict(engine="full", runs=512, max_steps=500), True),
    ("f K10 d64 n20", dict(K=10, d=64, n=20), dict(engine="full", runs=256, max_steps=300), True),
    ("f K10 d64 n100", dict(K=10, d=64, n=100), dict(engine="full", runs=64, max_steps=300), True),
    ("f K50 d50 n20", dict(K=50, d=50, n=20), dict(engine="full", runs=64, max_steps=100), True),
    ("f K10 d512 n100", dict(K=10, d=512, n=100), dict(engine="full", runs=4, max_steps=50), True),
    ("f K100 d64 n10", dict(K=100, d=64, n=10), dict(engine="full", runs=16, max_steps=100), True),
    # collapsed GD, float64
    ("c K4 d4 chunk10 f64", dict(K=4, d=4, n=10, dtype="float64"),
     dict(engine="collapsed", runs=2, max_steps=1000, chunk=10), True),
    ("c K4 d4 chunk1000 f64", dict(K=4, d=4, n=10, dtype="float64"),
     dict(engine="collapsed", runs=2, max_steps=10000, chunk=1000), True),
    ("c K10 d10 n100 f64", dict(K=10, d=10, n=100, dtype="float64"), dict(engine="collapsed", runs=256, max_steps=500),
     True),
    ("c K10 d64 f64", dict(K=10, d=64, n=100, dtype="float64"), dict(engine="collapsed", runs=256, max_steps=200),
     True),
    ("c K10 d256 f64", dict(K=10, d=256, n=100, dtype="float64"), dict(engine="collapsed", runs=8, max_steps=100),
     True),
    ("c K10 d512 f64", dict(K=10, d=512, n=100, dtype="float64"), dict(engine="collapsed", runs=4, max_steps=100),
     True),
    ("c K50 d50 f64", dict(K=50, d=50, n=20, dtype="float64"), dict(engine="collapsed", runs=32, max_steps=100), True),
    # full GD, float64
    ("f K4 d4 chunk10 f64", dict(K=4, d=4, n=10, dtype="float64"),
     dict(engine="full", runs=2, max_steps=1000, chunk=10), True),
    ("f K4 d4 chunk1000 f64", dict(K=4, d=4, n=10, dtype="float64"),
     dict(engine="full", runs=2, max_steps=10000, chunk=1000), True),
    ("f K10 d10 n100 f64", dict(K=10, d=10, n=100, dtype="float64"), dict(engine="full", runs=128, max_steps=200),
     True),
    ("f K10 d64 n20 f64", dict(K=10, d=64, n=20, dtype="float64"), dict(engine="full", runs=128, max_steps=200), True),
    ("f K50 d50 n20 f64", dict(K=50, d=50, n=20, dtype="float64"), dict(engine="full", runs=32, max_steps=50), True),
    ("f K10 d512 n100 f64", dict(K=10, d=512, n=100, dtype="float64"), dict(engine="full", runs=4, max_steps=20),
     True),
    # checked only: the other optimizers, the escape recorder, the wide plan (float32)
    ("f momentum", dict(K=10, d=64, n=20), dict(engine="full", optimizer="momentum", runs=256, max_steps=300), False),
    ("f nesterov K10 d10", dict(K=10, d=10, n=100), dict(engine="full", optimizer="nesterov", runs=256, max_steps=300),
     False),
    ("c momentum K10 d10", dict(K=10, d=10, n=100), dict(engine="collapsed", optimizer="momentum", runs=256,
                                                         max_steps=300), False),
    ("c nesterov K10 d64", dict(K=10, d=64, n=100), dict(engine="collapsed", optimizer="nesterov", runs=64,
                                                         max_steps=300), False),
    ("f adam", dict(K=10, d=64, n=20), dict(optimizer="adam", runs=256, max_steps=300), False),
    ("f flow K10 d10", dict(K=10, d=10, n=20), dict(optimizer="flow", runs=256, max_steps=300), False),
    ("f flow K10 d64", dict(K=10, d=64, n=20), dict(optimizer="flow", runs=64, max_steps=100), False),
    ("c escape K10 d10", dict(K=10, d=10, n=100), dict(engine="collapsed", init="saddle", active=2, runs=256,
                                                       max_steps=1000), False),
    ("f escape K10 d10", dict(K=10, d=10, n=20), dict(engine="full", init="saddle", active=2, runs=256,
                                                      max_steps=500), False),
    ("c wide K10 d64", dict(K=10, d=64, n=100), dict(engine="collapsed", plan="wide", runs=256, max_steps=500),
     False),
    ("f wide K10 d64 n20", dict(K=10, d=64, n=20), dict(engine="full", plan="wide", runs=256, max_steps=300),
     False),
]


def batch(prob_kw, cfg_kw, devices):
    """``(problem, config, dynamics, lanes, group, wide)`` of a case on ``devices`` CPU devices,
    laid out as ``simulate`` lays it out."""
    import ncflow
    from ncflow.batch import estimate as est
    from ncflow.batch.plan import WIDE_ALIGN, choose
    from ncflow.config import Config
    from ncflow.dynamics.build import dynamics_for

    p = ncflow.Problem(**prob_kw)
    cfg = Config(early_stop=False, progress=False, **cfg_kw)
    dyn = dynamics_for(p, cfg)
    wide = choose(cfg, "cpu", dyn.space.name, p.dtype).wide
    if wide:  # the wide plan: lanes per device rounded up to the alignment, one group per device
        lanes = group = math.ceil(math.ceil(cfg.runs / devices) / WIDE_ALIGN) * WIDE_ALIGN * devices
    else:
        lanes, group = est.batch_lanes(p, dyn, cfg, cfg.runs, devices)
    return p, cfg, dyn, lanes, group, wide


def terms_of(row):
    """The model's terms of a measured row (recomputed, so rows measured before a change of the
    model still fit)."""
    from ncflow.batch import estimate as est

    p, cfg, dyn, lanes, group, wide = batch(row["problem"], row["config"], row["devices"])
    return est.time_terms(p, dyn, cfg, lanes, group, row["devices"], wide)


def measure(name, prob_kw, cfg_kw, repeats):
    """One case: the module's bound and the minimum of ``repeats`` measured stepping seconds."""
    import ncflow
    from ncflow.batch import estimate as est

    devices = jax.device_count()
    p, cfg, dyn, lanes, group, wide = batch(prob_kw, cfg_kw, devices)
    bound = est.estimate(p, dyn, cfg, cfg.runs, devices=devices, lanes=lanes, group=group, wide=wide).seconds
    ncflow.simulate(p, cfg, max_steps=min(cfg.chunk, cfg.max_steps))  # warm-up: compiles the batch's programs
    loops = []
    for _ in range(repeats):
        r = ncflow.simulate(p, cfg)
        loops.append(r.timing["loop_s"])
    return dict(name=name, problem=prob_kw, config=cfg_kw, engine=dyn.name, dtype=p.dtype, devices=devices,
                lanes=lanes, group=group, loop_s=min(loops), loop_all=loops, bound_s=bound,
                loadavg_1m=os.getloadavg()[0])


def envelope(rows):
    """The least upper envelope of ``rows``: non-negative rates ``c`` (one per term of ``TERMS``)
    minimizing ``Σ_i model_i / y_i`` subject to ``model_i ≥ y_i`` for every row (a linear
    program in five unknowns, solved exactly by visiting its vertices: every choice of five
    active constraints among the rows and ``c_k ≥ 0``; no scipy needed). So the fitted model is
    at least every measured time, and as close to them as the terms allow."""
    A = np.array([[terms_of(r)[k] for k in TERMS] for r in rows]) / np.array([r["loop_s"] for r in rows])[:, None]
    n = len(TERMS)
    scale = np.where(A.max(axis=0) > 0, A.max(axis=0), 1.0)  # rates of very different sizes: solve for c * scale
    A = A / scale
    cons = np.vstack([A, np.eye(n)])
    rhs = np.concatenate([np.ones(len(rows)), np.zeros(n)])
    cost = A.sum(axis=0)
    best, arg = math.inf, None
    for sub in itertools.combinations(range(len(cons)), n):
        M = cons[list(sub)]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        c = np.linalg.solve(M, rhs[list(sub)])
        if np.all(c >= -1e-12) and np.all(A @ c >= 1 - 1e-9) and cost @ c < best:
            best, arg = float(cost @ c), np.clip(c, 0.0, None)
    return arg / scale


def model(rates, terms, devices):
    """The fitted model's seconds (no SAFETY, no factors) of a job with these ``terms``."""
    from ncflow.batch.estimate import cpu_cores

    return max(1.0, devices / cpu_cores()) * sum(r * terms[k] for r, k in zip(rates, TERMS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="only compare the module's bound with the measured times")
    ap.add_argument("--only", nargs="+", default=None, help="case names to run (default: all)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default=None,
                    help="measure only this dtype's cases in this process (the default runs each dtype in a "
                         "child process: x64 on for float64 only, as the CLI does)")
    ap.add_argument("--json", default=None, help="write the measured rows to this file")
    ap.add_argument("--fit-from", nargs="+", default=None, metavar="JSON",
                    help="measure nothing: fit on the rows of these --json files, each case's minimum over them")
    a = ap.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    from ncflow.batch import estimate as est

    rows = []
    if a.fit_from:
        best, names = {}, {c[0] for c in CASES}
        for path in a.fit_from:
            for r in json.load(open(path))["rows"]:
                if r["name"] not in names:  # a case since renamed or removed
                    continue
                if r["name"] not in best or r["loop_s"] < best[r["name"]]["loop_s"]:
                    best[r["name"]] = r
        rows = list(best.values())
    elif a.dtype is None:  # one child process per dtype
        for dt in ("float32", "float64"):
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "--dtype", dt, "--repeats", str(a.repeats), "--check",
                       "--json", tmp.name] + (["--only", *a.only] if a.only else [])
                subprocess.run(cmd, check=True)
                rows += json.load(open(tmp.name))["rows"]
    else:
        if a.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        for name, pk, ck, fit in CASES:
            if (a.only and name not in a.only) or pk.get("dtype", "float32") != a.dtype:
                continue
            t0 = time.perf_counter()
            row = measure(name, pk, ck, a.repeats)
            row["fitted"] = fit
            rows.append(row)
            print(f"{name:22s} measured {row['loop_s']:8.3f} s  bound {row['bound_s']:8.3f} s  "
                  f"bound/measured {row['bound_s'] / row['loop_s']:6.2f}  (load {row['loadavg_1m']:.1f}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    devices = jax.device_count()
    out = {"jax": jax.__version__, "devices": devices, "cores": est.cpu_cores(), "rows": rows}
    if not a.check:
        fits = {}
        for key in itertools.product(("collapsed", "full"), ("float32", "float64")):
            sel = [r for r in rows if r["fitted"] and (r["engine"], r["dtype"]) == key]
            if len(sel) >= len(TERMS):
                fits[key] = envelope(sel)
        print("fitted rates (s per chunk, per group-step, per lane-step, per flop, per byte):")
        for key, c in fits.items():
            print(f"    {key!r}: ({', '.join(f'{v:.3g}' for v in c)}),")
        worst = 0.0
        for r in rows:
            key = (r["engine"].split("+")[0], r["dtype"])
            if key in fits:
                m = model(fits[key], terms_of(r), r["devices"])
                r["model_s"] = m
                worst = max(worst, r["loop_s"] / m) if r["fitted"] else worst
                print(f"  {r['name']:22s} measured/model {r['loop_s'] / m:5.2f}")
        print(f"largest measured/model of the fitted cases: {worst:.2f} (1 by construction: the envelope); the "
              "other cases' ratios give CPU_FACTORS, and SAFETY is the room left for a loaded machine")
        out["fits"] = {"/".join(k): list(v) for k, v in fits.items()}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
