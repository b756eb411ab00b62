"""Small products elementwise on a CPU: the step's matrix products as XLA's dots against all of them as
broadcast multiplies and sums (``ncflow.dynamics.precision.elementwise_products``), side by side in
one process, as ratios.

For each problem: ``ncflow.simulate`` of ``--runs`` runs × ``--steps`` fixed steps (float32,
``early_stop=False``), once with the rewrite disabled (limit 0: every product stays a dot) and once
with every product rewritten (no limit), each the best of ``--repeats`` calls after a warm-up call;
the programs are recompiled between the two (``clear_cache``). The default limit
(``ELEMENTWISE_LIMIT``) picks the elementwise form where every product of the step is under it.
Prints one JSON line (rows on stderr with ``--table``).

    python benchmarks/products.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax

import ncflow
from ncflow.batch.programs import clear_cache
from ncflow.dynamics import precision

PROBLEMS = {
    "K4_d4_n10": dict(K=4, d=4, n=10),
    "default": dict(),
    "full_K4_d4_n25": dict(K=4, d=4, n=25, engine="full"),
    "K6_d12_n20": dict(K=6, d=12, n=20),
    "K10_d16_n20": dict(K=10, d=16, n=20),
    "K16_d16_n10": dict(K=16, d=16, n=10),
    "K10_d64_n20": dict(K=10, d=64, n=20),
}


def _rate(problem, cfg, limit: int, repeats: int) -> float:
    """Best run-steps/s of ``repeats`` calls with the rewrite limit ``limit`` (after a warm-up)."""
    precision.ELEMENTWISE_LIMIT = limit  # read when the step is traced; clear_cache forces a new trace
    clear_cache()
    ncflow.simulate(problem, cfg)
    best = min(ncflow.simulate(problem, cfg).timing["run_s"] for _ in range(repeats))
    return cfg.runs * cfg.max_steps / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--runs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args(argv)
    if jax.default_backend() != "cpu":
        print("products.py measures the CPU's steps; JAX's default backend is "
              f"{jax.default_backend()!r}", file=sys.stderr)
        return 2
    default_limit = precision.ELEMENTWISE_LIMIT
    rows = []
    try:
        for name in a.problems:
            kw = dict(PROBLEMS[name])
            engine = kw.pop("engine", "auto")
            problem = ncflow.Problem(**kw)
            cfg = ncflow.Config(runs=a.runs, max_steps=a.steps, early_stop=False, progress=False, engine=engine)
            dots = _rate(problem, cfg, 0, a.repeats)
            elementwise = _rate(problem, cfg, 2**62, a.repeats)
            row = {"problem": name, "dots_run_steps_per_s": dots, "elementwise_run_steps_per_s": elementwise,
                   "ratio": elementwise / dots}
            rows.append(row)
            if a.table:
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        precision.ELEMENTWISE_LIMIT = default_limit
    print(json.dumps({"benchmark": "products", "runs": a.runs, "steps": a.steps, "limit": default_limit,
                      "machine": {"cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
                                  "jax": jax.__version__, "python": platform.python_version()},
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
