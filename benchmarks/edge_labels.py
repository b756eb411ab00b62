"""Outcome labels near the edge of the landscape (issue 21, part 1): c = K√(nλ_Wλ_H) → 1.

K=10, d=10, n=20, λ_W = λ_H, default step and budget, float32 and float64, both stop rules, the
same seeds: prints, per (c, dtype), the outcome counts under ``--stop certified`` and ``--stop
converged``, how many runs the two rules label differently (certified ``global`` against anything
but ``global``/``not_converged``), and whether the dtype resolves the landscape. Theory: every run
is global; a correct classifier shows no ``saddle`` or ``local_min``.

    PYTHONPATH=. python benchmarks/edge_labels.py --runs 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ncflow  # noqa: E402

C_VALUES = (0.90, 0.95, 0.995, 0.999)


def lam_for(c: float, K: int = 10, n: int = 20) -> float:
    """λ_W = λ_H giving c = K sqrt(n) λ."""
    return c / (K * np.sqrt(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--c", type=float, nargs="*", default=list(C_VALUES))
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"load {os.getloadavg()[0]:.2f}, {args.runs} runs per cell")
    print("| c | dtype | resolved | stop certified | stop converged | disagree | wall s |")
    print("|---|---|---|---|---|---|---|")
    for c in args.c:
        lam = lam_for(c)
        for dt in args.dtypes:
            p = ncflow.Problem(K=10, d=10, n=20, lambda_w=lam, lambda_h=lam, dtype=dt)
            t0 = time.perf_counter()
            res = {stop: ncflow.simulate(p, runs=args.runs, seed=0, stop=stop) for stop in ("certified", "converged")}
            wall = time.perf_counter() - t0
            a, b = res["certified"].outcome, res["converged"].outcome
            disagree = int(np.sum((a == "global") & ~np.isin(b, ("global", "not_converged")))
                           + np.sum((b == "global") & ~np.isin(a, ("global", "not_converged"))))

            def counts(r):
                return " ".join(f"{k} {v['count']}" for k, v in r.outcomes().items() if v["count"])
            print(f"| {c} | {dt} | {res['converged'].tolerances.resolved} | {counts(res['certified'])} | "
                  f"{counts(res['converged'])} | {disagree} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
