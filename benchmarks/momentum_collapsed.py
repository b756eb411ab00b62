"""Heavy ball (or Nesterov) on the full and on the exact collapsed engine, side by side in ONE process.

Problems: DLN's setting (Dang et al. 2023: K=4, d=64, n=100 → N=400, momentum 0.9) and ncflow's
default problem (K=10, d=10, n=100). Each engine runs ``--runs`` runs for exactly ``--steps`` steps
(``early_stop=False``, the default momentum step (1/L)(1 − μ)) after an untimed warm-up call of the
same shape (compilation); the median of ``--repeats`` timed calls of ``Result.timing["run_steps_per_s"]``
(the stepping loop's device work, ``block_until_ready``'d) is reported, with the wall time of the last
call, the ratio collapsed/full, and the largest relative difference of the per-run final objectives
between the engines (the same trajectory, to rounding). Engines alternate within each repeat, so a
load change on a shared machine hits both. The 1-minute load average before and after is printed::

    python benchmarks/momentum_collapsed.py                      # float32, 200 runs × 500 steps
    python benchmarks/momentum_collapsed.py --dtype float64 --optimizer nesterov --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

PROBLEMS = {"DLN K=4 d=64 n=100": dict(K=4, d=64, n=100), "default K=10 d=10 n=100": dict(K=10, d=10, n=100)}


def machine() -> str:
    """CPU model, cores and memory, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(ln.split()[1] for ln in fh if ln.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{model}, {os.cpu_count()} cores{mem}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--optimizer", default="momentum", choices=("momentum", "nesterov"))
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args(argv)
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)  # one CPU device per core, as the CLI
    import ncflow

    out = {"machine": machine(), "jax": jax.__version__, "devices": jax.device_count(),
           "device_kind": jax.devices()[0].device_kind, "dtype": a.dtype, "optimizer": a.optimizer,
           "momentum": a.momentum, "runs": a.runs, "steps": a.steps, "repeats": a.repeats,
           "loadavg_1m_before": os.getloadavg()[0], "rows": {}}
    print(f"# {out['machine']}; jax {jax.__version__}, {out['devices']} {out['device_kind']} devices; "
          f"load (1 min) {out['loadavg_1m_before']:.2f}")
    print(f"# {a.optimizer} μ={a.momentum}, {a.dtype}, {a.runs} runs × {a.steps} steps, median of {a.repeats}")
    for name in a.problems:
        p = ncflow.Problem(dtype=a.dtype, **PROBLEMS[name])
        kw = dict(runs=a.runs, max_steps=a.steps, early_stop=False, progress=False, optimizer=a.optimizer,
                  momentum=a.momentum, seed=0)
        engines = ("full", "collapsed")
        t_compile, last = {}, {}
        for e in engines:  # warm-up: compiles
            t0 = time.perf_counter()
            last[e] = ncflow.simulate(p, engine=e, **kw)
            t_compile[e] = time.perf_counter() - t0
        rates = {e: [] for e in engines}
        walls = {}
        for _ in range(a.repeats):
            for e in engines:
                t0 = time.perf_counter()
                last[e] = ncflow.simulate(p, engine=e, **kw)
                walls[e] = time.perf_counter() - t0
                rates[e].append(last[e].timing["run_steps_per_s"])
        f_full, f_col = (np.asarray(last[e].per_run["objective"], np.float64) for e in engines)
        rel = float(np.max(np.abs(f_col - f_full) / np.maximum(np.abs(f_full), 1e-300)))
        row = {e: {"representation": last[e].representation, "run_steps_per_s": statistics.median(rates[e]),
                   "all": rates[e], "last_wall_s": walls[e], "first_call_s": t_compile[e],
                   "flops_per_step": _flops(p, e, a)} for e in engines}
        row["ratio"] = row["collapsed"]["run_steps_per_s"] / row["full"]["run_steps_per_s"]
        row["max_rel_diff_objective"] = rel
        out["rows"][name] = row
        print(f"{name:26s} full {row['full']['run_steps_per_s']:10.3e} run-steps/s   collapsed "
              f"{row['collapsed']['run_steps_per_s']:10.3e} run-steps/s   ratio {row['ratio']:6.1f}x   "
              f"flops/step {row['full']['flops_per_step']:.2e} vs {row['collapsed']['flops_per_step']:.2e}   "
              f"max rel diff f {rel:.1e}   (walls {walls['full']:.2f} s / {walls['collapsed']:.2f} s)")
    out["loadavg_1m_after"] = os.getloadavg()[0]
    print(f"# load (1 min) after: {out['loadavg_1m_after']:.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


def _flops(p, engine, a) -> int:
    """The cost model's flops per step of ``engine`` (``Dynamics.flops_per_step``)."""
    from ncflow import Config
    from ncflow.dynamics.build import dynamics_for

    return int(dynamics_for(p, Config(optimizer=a.optimizer, momentum=a.momentum, engine=engine)).flops_per_step(p))


if __name__ == "__main__":
    sys.exit(main())
