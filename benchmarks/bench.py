"""ncflow's speed benchmark: every engine and every baseline side by side, in ONE process.

Usage::

    python benchmarks/bench.py                 # the full protocol (float32 and float64)
    python benchmarks/bench.py --quick         # small sizes, a smoke test of the script
    python benchmarks/bench.py --json out.json # also write the raw rows

Protocol (see benchmarks/README.md): each row runs R runs for a fixed number of GD steps with
no early stopping, so every method does the same work. Compilation is timed separately
(AOT ``lower().compile()`` or a warm-up call) and excluded from run-steps per second. The
per-seed NumPy and PyTorch loops are timed on as many runs as fit in ``--loop-wall`` seconds
(run-steps/s stays honest: steps actually executed over seconds). Ratios compare methods of
the same row, measured minutes apart in the same process. GFLOP/s use the flop models of
``ncflow.dynamics.spaces`` (full: 6KdN, collapsed: 4Kd² + 8K²d per step) against a large
matmul measured in the same run. The device count is the process's (a CPU run uses one
XLA device per core unless ``--devices`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--loop-wall", type=float, default=8.0, help="seconds given to each per-seed loop")
    ap.add_argument("--devices", type=int, default=None, help="CPU devices (default: one per core)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--skip-cli", action="store_true", help="skip the time-to-answer rows")
    ap.add_argument("--problems", default=None, help='override the problem list, e.g. "10,64,20;100,64,10"')
    ap.add_argument("--sections", default="main,crossover,groups,sweep,answer,devices,cli",
                    help="comma list of: main, crossover, groups, sweep, answer, devices, cli")
    return ap.parse_args()


ARGS = _args()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", ARGS.devices or os.cpu_count() or 1)
jax.config.update("jax_enable_x64", True)

import baselines  # noqa: E402
import numpy as np  # noqa: E402

import ncflow  # noqa: E402
from ncflow.batch import memory  # noqa: E402
from ncflow.dynamics.spaces import COLLAPSED, FULL  # noqa: E402

PROBLEMS = [(10, 64, 20), (10, 64, 200), (10, 512, 100), (100, 64, 10)]
QUICK = [(10, 64, 20), (4, 16, 10)]
LAM = 5e-4


def machine() -> str:
    """One line naming the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return (f"{cpu}, {os.cpu_count()} cores, {dev.platform} x{jax.device_count()} ({dev.device_kind}), "
            f"jax {jax.__version__}, python {platform.python_version()}")


def steps_for(flops_per_step: float, runs: int, budget_flops: float = 2e10) -> int:
    """A step count that gives each timing ~budget_flops of work (≥ 20, a multiple of 10)."""
    s = int(budget_flops / max(flops_per_step * runs, 1))
    return max(20, min(2000, s - s % 10))


def ncflow_row(K, d, n, dtype, runs, steps, engine):
    p = ncflow.Problem(K=K, d=d, n=n, lambda_w=LAM, lambda_h=LAM, dtype=dtype)
    rep = FULL if engine == "full" else COLLAPSED
    need = memory.estimate_memory(p, rep, runs, 64)
    if need > 0.6 * memory.available_memory_bytes():
        return {"skipped": f"needs ~{need / 2**30:.1f} GiB"}
    r = ncflow.simulate(p, runs=runs, max_steps=steps, early_stop=False, engine=engine, chunk=min(steps, 100),
                        lr=0.1, progress=False)
    t = r.timing
    return {"run_steps_per_s": t["run_steps"] / t["run_s"], "compile_s": t["compile_s"], "seconds": t["run_s"],
            "flops_per_step": rep.flops_per_step(p), "median_objective": float(np.median(r.per_run["objective"]))}


def baseline_row(fn, K, d, n, dtype, runs, steps):
    try:
        out = fn(K, d, n, LAM, LAM, 0.0, 0.1, steps, runs, dtype=dtype, max_wall_s=ARGS.loop_wall)
    except baselines.BaselineUnavailable as e:
        return {"skipped": str(e)}
    return {"run_steps_per_s": out["run_steps"] / out["seconds"], "compile_s": out["compile_s"],
            "seconds": out["seconds"], "runs_timed": out["runs_timed"], "flops_per_step": 6 * K * d * n * K,
            "median_objective": float(np.median(out["final_objective"]))}


def time_to_answer() -> dict:
    """Wall time of the default ``ncflow run`` (1000 runs to classification), cold and with a
    warm persistent compilation cache, each in a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, extra in (("cold", []), ("cache_first", ["--compile-cache", cache]),
                             ("cache_second", ["--compile-cache", cache])):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "ncflow.cli", "run", "--json", "--no-progress"] + extra,
                                  capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            s = json.loads(proc.stdout)
            out[label] = {"wall_s": wall, "compile_s": s["timing"]["compile_s"], "run_s": s["timing"]["run_s"],
                          "global": s["outcomes"]["global"]["count"], "runs": s["runs"]}
    return out


def crossover(dtype="float32", runs=256, K=10, d=64, ns=(1, 2, 4, 8, 16, 32)):
    """Full vs collapsed run-steps/s as n grows at fixed K, d: where the collapsed step wins."""
    out = []
    for n in ns:
        row = {"K": K, "d": d, "n": n, "N": n * K}
        for eng in ("full", "collapsed"):
            p = ncflow.Problem(K=K, d=d, n=n, lambda_w=LAM, lambda_h=LAM, dtype=dtype)
            rep = FULL if eng == "full" else COLLAPSED
            steps = steps_for(rep.flops_per_step(p), runs, 5e9)
            row[eng] = ncflow_row(K, d, n, dtype, runs, steps, eng)["run_steps_per_s"]
        row["collapsed_over_full"] = row["collapsed"] / row["full"]
        out.append(row)
        print(f"  crossover K={K} d={d} n={n:>3} N={n * K:>4}: full {row['full']:.4g}  collapsed "
              f"{row['collapsed']:.4g} run-steps/s  (collapsed/full {row['collapsed_over_full']:.2f})")
    return out


def groups(dtype="float32", runs=1024, K=10, d=64, n=20, sizes=(1, 4, 8, 16, 64, 256, 1024)):
    """Collapsed-engine throughput against the cache group size (runs stepped together)."""
    out = []
    p = ncflow.Problem(K=K, d=d, n=n, lambda_w=LAM, lambda_h=LAM, dtype=dtype)
    auto = memory.auto_group(p, COLLAPSED)
    steps = steps_for(COLLAPSED.flops_per_step(p), runs, 1e10)
    for g in sizes:
        r = ncflow.simulate(p, runs=runs, max_steps=steps, early_stop=False, engine="collapsed", chunk=min(steps, 100),
                            lr=0.1, progress=False, group=g)
        v = r.timing["run_steps"] / r.timing["run_s"]
        out.append({"group": g, "run_steps_per_s": v, "auto": g == auto})
        print(f"  group {g:>5}{' (auto)' if g == auto else '':8}: {v:.4g} run-steps/s")
    return out


def sweep_row(points=100, runs=20, steps=500):
    """A 100-point (λ_W × λ_H) sweep as ONE batch (simulate_points) against 100 separate
    simulate calls with the same settings; wall times include compilation."""
    lams = np.geomspace(1e-3, 1e-1, int(round(points ** 0.5)))
    probs = [ncflow.Problem(K=10, d=10, n=20, lambda_w=a, lambda_h=b, dtype="float32") for a in lams for b in lams]
    cfg = ncflow.Config(max_steps=steps, early_stop=False, progress=False)
    pts = [ncflow.Point(problem=p, runs=runs, lr=0.1, init_scale=1.0, seed=0) for p in probs]
    t0 = time.perf_counter()
    one = ncflow.simulate_points(pts, cfg)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    sep = [ncflow.simulate(p, cfg, runs=runs, lr=0.1) for p in probs]
    t_sep = time.perf_counter() - t0
    same = all(np.array_equal(a.outcome, b.outcome) for a, b in zip(one, sep))
    print(f"  {len(probs)} points x {runs} runs x {steps} steps: one program {t_one:.1f} s, "
          f"{len(probs)} separate runs {t_sep:.1f} s ({t_sep / t_one:.1f}x); same outcomes: {same}")
    return {"points": len(probs), "one_program_s": t_one, "separate_s": t_sep, "same_outcomes": same}


#: THEORY §8's problems: (name, Problem fields)
ANSWER_PROBLEMS = [
    ("default K=10 d=10 n=100", dict(K=10, d=10, n=100, lambda_w=5e-4, lambda_h=5e-4)),
    ("K=10 d=64 n=20", dict(K=10, d=64, n=20, lambda_w=5e-4, lambda_h=5e-4)),
    ("K=4 d=8 n=5 λ=5e-3", dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3)),
    ("bias-free default", dict(K=10, d=10, n=100, lambda_w=5e-4, lambda_h=5e-4, bias=False)),
    ("d=5 rank-limited", dict(K=10, d=5, n=100, lambda_w=5e-4, lambda_h=5e-4)),
]


def steps_to_answer(runs=50, dtype="float32"):
    """Median steps until each run's outcome is known: the "certified" stop rule (THEORY §8) against
    the "converged" rule, same starts, same step (1/L), per THEORY §8 problem; outcomes compared."""
    out = []
    for name, fields in ANSWER_PROBLEMS:
        p = ncflow.Problem(dtype=dtype, **fields)
        cert = ncflow.simulate(p, runs=runs, seed=0, stop="certified", progress=False)
        conv = ncflow.simulate(p, runs=runs, seed=0, stop="converged", progress=False)
        a, b = float(np.median(cert.per_run["steps"])), float(np.median(conv.per_run["steps"]))
        row = {"problem": name, "dtype": dtype, "runs": runs, "certified_median_steps": a,
               "converged_median_steps": b, "ratio": b / a,
               "certified_runs": int(np.sum(cert.per_run["stop"] == "certified")),
               "same_outcomes": bool(np.array_equal(cert.outcome, conv.outcome)),
               "global": [int(np.sum(cert.outcome == "global")), int(np.sum(conv.outcome == "global"))]}
        out.append(row)
        print(f"  {name:<26} certified {a:>7.0f}  converged {b:>7.0f}  ({b / a:.1f}x)  certified runs "
              f"{row['certified_runs']}/{runs}  global {row['global'][0]}/{row['global'][1]}  "
              f"same outcomes: {row['same_outcomes']}")
    return out


def devices_rows(counts=(1, 2, 4), steps=3000):
    """Throughput of the default problem on 1, 2, 4 XLA CPU devices (separate processes)."""
    out = []
    for c in counts:
        proc = subprocess.run([sys.executable, "-m", "ncflow.cli", "run", "--json", "--no-progress", "--no-early-stop",
                               "--max-steps", str(steps), "--cpu-devices", str(c)],
                              capture_output=True, text=True, check=True)
        s = json.loads(proc.stdout)
        out.append({"devices": c, "run_steps_per_s": s["timing"]["run_steps_per_s"],
                    "compile_s": s["timing"]["compile_s"]})
        print(f"  {c} CPU device(s): {s['timing']['run_steps_per_s']:.4g} run-steps/s "
              f"(compile {s['timing']['compile_s']:.1f} s)")
    return out


def main():
    sections = set(ARGS.sections.split(","))
    extra = {}
    rows = []
    ceiling = {dt: baselines.matmul_ceiling(dt, size=1024 if ARGS.quick else 2048) for dt in ARGS.dtypes.split(",")}
    print(f"# machine: {machine()}")
    for dt, c in ceiling.items():
        print(f"# matmul ceiling {dt}: jax {c['jax_gflops']:.1f} GFLOP/s, numpy {c['numpy_gflops']:.1f} GFLOP/s")
    probs = QUICK if ARGS.quick else PROBLEMS
    if ARGS.problems:
        probs = [tuple(int(v) for v in item.split(",")) for item in ARGS.problems.split(";")]
    runs = 64 if ARGS.quick else ARGS.runs
    for dtype in (ARGS.dtypes.split(",") if "main" in sections else []):
        for K, d, n in probs:
            N = n * K
            steps = steps_for(6 * K * d * N, runs, 2e9 if ARGS.quick else 2e10)
            row = {"K": K, "d": d, "n": n, "dtype": dtype, "runs": runs, "steps": steps}
            row["numpy"] = baseline_row(baselines.numpy_loop, K, d, n, dtype, runs, steps)
            row["torch"] = baseline_row(baselines.torch_loop, K, d, n, dtype, runs, steps)
            need = runs * (K * d + d * N) * np.dtype(dtype).itemsize * 6
            row["naive_jax"] = (baseline_row(baselines.naive_jax, K, d, n, dtype, runs, steps)
                                if need < 0.5 * memory.available_memory_bytes() else {"skipped": "memory"})
            row["ncflow_full"] = ncflow_row(K, d, n, dtype, runs, steps, "full")
            c_steps = steps_for(4 * K * d * d + 8 * K * K * d, runs, 2e9 if ARGS.quick else 2e10)
            row["ncflow_collapsed"] = ncflow_row(K, d, n, dtype, runs, c_steps, "collapsed")
            for name in ("numpy", "torch", "naive_jax", "ncflow_full", "ncflow_collapsed"):
                m = row[name]
                if "run_steps_per_s" in m:
                    m["gflops"] = m["run_steps_per_s"] * m["flops_per_step"] / 1e9
                    m["ceiling_fraction"] = m["gflops"] / ceiling[dtype]["jax_gflops"]
            best = max((row[k]["run_steps_per_s"], k) for k in ("ncflow_full", "ncflow_collapsed")
                       if "run_steps_per_s" in row[k])
            row["ncflow_best"] = best[1]
            row["ratios"] = {b: best[0] / row[b]["run_steps_per_s"] for b in ("numpy", "torch", "naive_jax")
                             if "run_steps_per_s" in row[b]}
            row["peak_rss_mb"] = baselines.peak_rss_mb()
            rows.append(row)
            print_row(row)
    if "crossover" in sections:
        print("\nfull vs collapsed (float32, 256 runs):")
        extra["crossover"] = crossover(ns=(1, 4) if ARGS.quick else (1, 2, 4, 8, 16, 32))
    if "groups" in sections:
        print("\ncache groups, collapsed K=10 d=64 n=20 float32:")
        extra["groups"] = groups(runs=128 if ARGS.quick else 1024, sizes=(8, 128) if ARGS.quick else
                                 (1, 4, 8, 16, 64, 256, 1024))
    if "sweep" in sections:
        print("\nsweep in one program vs separate runs:")
        extra["sweep"] = sweep_row(points=16 if ARGS.quick else 100)
    if "answer" in sections:
        print("\nsteps to the answer, certified vs converged stop rule (THEORY §8 problems, 50 starts, float32):")
        extra["answer"] = steps_to_answer(runs=8 if ARGS.quick else 50)
    if "devices" in sections:
        print("\nXLA CPU devices (default problem, 3000 steps, no early stop):")
        extra["devices"] = devices_rows(steps=300 if ARGS.quick else 3000)
    tta = None if (ARGS.skip_cli or ARGS.quick or "cli" not in sections) else time_to_answer()
    if tta:
        for k, v in tta.items():
            print(f"time-to-answer ({k}): wall {v['wall_s']:.1f} s  compile {v['compile_s']:.1f} s  "
                  f"run {v['run_s']:.1f} s  global {v['global']}/{v['runs']}")
    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump({"machine": machine(), "ceiling": ceiling, "rows": rows, "time_to_answer": tta, **extra}, fh,
                      indent=1, default=float)


def print_row(row):
    head = f"K={row['K']} d={row['d']} n={row['n']} {row['dtype']} R={row['runs']}"
    print(f"\n{head}")
    print(f"  {'method':<18}{'run-steps/s':>12}{'compile s':>10}{'GFLOP/s':>9}{'of ceil':>8}")
    for name in ("numpy", "torch", "naive_jax", "ncflow_full", "ncflow_collapsed"):
        m = row[name]
        if "skipped" in m:
            print(f"  {name:<18}  skipped: {m['skipped']}")
            continue
        print(f"  {name:<18}{m['run_steps_per_s']:>12.4g}{m['compile_s']:>10.2f}{m['gflops']:>9.2f}"
              f"{100 * m['ceiling_fraction']:>7.1f}%")
    print("  ncflow (" + row["ncflow_best"] + ") vs " +
          ", ".join(f"{k} {v:.1f}x" for k, v in row["ratios"].items()) + f"; peak RSS {row['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
