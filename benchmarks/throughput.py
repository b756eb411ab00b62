"""Stepping throughput of ``ncflow.simulate`` (run-steps/s) on fixed work, for comparing two versions
of ncflow on one machine (the issue-14 target: the cpu plan within 5% of the code before it).

Each problem runs ``--runs`` runs for exactly ``--steps`` steps (``early_stop=False``) after an
untimed warm-up call of the same shape; the median of ``--repeats`` timed calls is reported as one
JSON line. Only public API arguments that every version has are used, so the same script times an
older checkout: run it alternately with ``PYTHONPATH=OLD_CHECKOUT`` and ``PYTHONPATH=.`` and compare
the medians (the machine's speed drifts; alternate several times)::

    for i in 1 2 3; do
        PYTHONPATH=/tmp/old python benchmarks/throughput.py --label before
        PYTHONPATH=.        python benchmarks/throughput.py --label after
    done
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

PROBLEMS = {"default": dict(), "K10_d64_n20": dict(K=10, d=64, n=20), "K10_d64_n200": dict(K=10, d=64, n=200)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    a = ap.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    import ncflow

    out = {"label": a.label, "ncflow": os.path.dirname(ncflow.__file__), "jax": jax.__version__,
           "devices": jax.device_count(), "loadavg_1m": os.getloadavg()[0], "rows": {}}
    for name in a.problems:
        p = ncflow.Problem(**PROBLEMS[name])
        kw = dict(runs=a.runs, max_steps=a.steps, early_stop=False, progress=False)
        ncflow.simulate(p, **kw)  # warm-up: compiles
        rates = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            r = ncflow.simulate(p, **kw)
            wall = time.perf_counter() - t0
            rates.append(r.timing["run_steps_per_s"])
        out["rows"][name] = {"run_steps_per_s": statistics.median(rates), "all": rates, "last_wall_s": wall,
                             "plan": r.timing.get("plan", "cpu (before plans)")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
