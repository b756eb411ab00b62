"""Correctness of ncflow on an accelerator, against the host CPU of the same machine, in one process.

Runs the same batches twice: on the accelerator (plan auto: wide, stop rule on the device, summaries
vmapped where the lanes live) and on the host's CPU device (plan cpu: the reference host rule), then
compares them per run — stop steps, stop reasons and outcomes exactly; objective and metrics to a
tolerance. Also runs the reduced-precision opt-ins (tf32, bf16) on the accelerator and reports what
the stop rule made of them. Prints one JSON line; exits 1 if any exact comparison failed.
Without an accelerator it compares the CPU's wide plan with its cpu plan.

    python benchmarks/device_check.py
    python benchmarks/device_check.py --cases f32_default   # one case (and the precision rows)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ncflow  # noqa: E402

SMALL = dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")
CASES = [
    ("f64_certified", SMALL, dict(runs=64)),
    ("f64_converged", SMALL, dict(runs=64, stop="converged")),
    ("f64_diverged", SMALL, dict(runs=16, lr=3.0)),
    ("f64_origin_saddle", SMALL, dict(runs=8, init_scale=0.0, stop="converged", max_steps=3000)),
    ("f64_history", dict(K=3, d=4, n=3, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
     dict(runs=16, history=True, stop="converged")),
    ("f64_K10_d64_n20", dict(K=10, d=64, n=20, dtype="float64"), dict(runs=64, stop="converged")),
    ("f64_class_sizes", dict(class_sizes=[9, 7, 4, 2], d=5, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
     dict(runs=32)),
    ("f32_default", dict(), dict(runs=2000)),
]


def _counts(a) -> dict:
    return {str(k): int(v) for k, v in zip(*np.unique(a, return_counts=True))}


def compare(name, prob, cfg, accel, host) -> dict:
    p = ncflow.Problem(**prob)
    t0 = time.perf_counter()
    a = ncflow.simulate(p, ncflow.Config(progress=False, **cfg), devices=accel)
    t1 = time.perf_counter()
    b = ncflow.simulate(p, ncflow.Config(**dict(cfg, progress=False, plan="cpu")), devices=host)
    t2 = time.perf_counter()
    row = {"case": name, "plan": a.timing["plan"], "accel_s": t1 - t0, "host_s": t2 - t1,
           "outcomes_accel": _counts(a.per_run["outcome"]), "outcomes_host": _counts(b.per_run["outcome"])}
    exact = p.dtype == "float64"
    exact_cols = ("steps", "stop", "outcome")
    if "classes_as_predicted" in b.per_run:  # THEORY §7: the columns read from the final states
        exact_cols += ("classes_as_predicted", "merged")
    for k in exact_cols:
        row[f"{k}_mismatches"] = int(np.sum(a.per_run[k] != b.per_run[k]))
    for k in ("objective", "nc1", "nc2", "gram_error"):
        x, y = a.per_run[k], b.per_run[k]
        row[f"{k}_max_rel_diff"] = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)))
    # the final states (left on the accelerator: Result.final_state holds its arrays)
    row["final_state_type"] = type(a.final_state.W).__name__
    row["final_W_max_abs_diff"] = float(np.max(np.abs(np.asarray(a.final_state.W) - np.asarray(b.final_state.W))))
    if exact:
        row["ok"] = all(row[f"{k}_mismatches"] == 0 for k in exact_cols)
    else:  # float32: the same outcome counts (rounding may move a run's stop by a chunk)
        row["ok"] = row["outcomes_accel"] == row["outcomes_host"]
    return row


def precision_rows(accel) -> list:
    p = ncflow.Problem(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3)
    rows = []
    for prec, steps in (("float32", 30000), ("tf32", 30000), ("bf16", 3000)):
        r = ncflow.simulate(p, ncflow.Config(runs=256, progress=False, matmul_precision=prec, max_steps=steps),
                            devices=accel)
        rows.append({"matmul_precision": prec, "outcomes": _counts(r.per_run["outcome"]),
                     "stops": _counts(r.per_run["stop"]), "median_steps": float(np.median(r.per_run["steps"]))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=[c[0] for c in CASES], choices=[c[0] for c in CASES],
                    help="the comparison cases to run (default: all)")
    ap.add_argument("--no-precision", action="store_true", help="skip the tf32/bf16 rows")
    a = ap.parse_args(argv)
    accel = [d for d in jax.devices() if d.platform != "cpu"][:1]
    host = jax.devices("cpu")[:1]
    if not accel:
        accel = host
        cases = [(n, pr, dict(c, plan="wide")) for n, pr, c in CASES]
    else:
        cases = CASES
    cases = [c for c in cases if c[0] in a.cases]
    out = {"check": "device", "accelerator": str(accel[0].device_kind), "platform": accel[0].platform,
           "jax": jax.__version__, "cases": [], "precision": []}
    for name, prob, cfg in cases:
        out["cases"].append(compare(name, prob, cfg, accel, host))
        print(json.dumps(out["cases"][-1], default=float), file=sys.stderr, flush=True)  # kept if killed later
    out["precision"] = [] if a.no_precision else precision_rows(accel)
    out["ok"] = all(r["ok"] for r in out["cases"])
    print(json.dumps(out, default=float))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
