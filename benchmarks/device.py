"""Device benchmark: ncflow on whatever accelerator JAX sees (the CPU when there is none) against a
plain ``jit(vmap(scan))`` of the same one-run step over all runs at once, in one process.

For each problem (the default K=10, d=10, n=100 and K=10, d=64, n=20) and each number of runs:

* **throughput** — ``steps`` fixed GD steps of every run (``early_stop=False``): ncflow (plan auto)
  and the baseline (ncflow's own starts and one-run collapsed step, ``jit(vmap(lax.scan))``, no
  stop rule, no host visits) each timed after a warm-up call; run-steps/s of both, their ratio, the
  share of ncflow's stepping loop spent on the host (``1 − run_s/loop_s``: stop rule, progress,
  round trips), and the largest relative difference of the runs' final objectives (the same runs);
* **answer** — the default stop rule (certified) on the largest size: ncflow's wall, stepping and
  classification times, classification as a share of stepping (on an accelerator the final states
  stay on the devices; ``states_to_host_s`` then times their copy to the host, which a user pays
  only by asking for them: ``np.asarray(result.final_state.G)``), and
  its outcome counts next to the
  number of the baseline's runs that are below the lowest saddle value (f < f* + 0.9 (f_sad − f*),
  THEORY §8) after as many steps as ncflow's longest run took: the same count as ncflow's
  ``global`` when both are right.

* **deep** (``--sections deep``, not in the default sections) — the deep UFM engines' rows of
  ``benchmarks/deep_naive.py`` (deep linear K=10, d=64, L=3, n=20 and n=200; deep ReLU K=10, width 30,
  L=4, n=5), by its own code (:func:`deep_naive.run`): the collapsed and full steps against a naive
  ``jit(vmap(scan(jax.grad)))`` in this process, float32, ``--deep-runs`` runs, ``--deep-budget`` flops per
  timed call (the "by CPU" ratios are host CPU time: meaningless on an accelerator, read the wall ones).
* **fused** (``--sections fused``, not in the default sections) — the fused multi-step Pallas kernel
  (:mod:`ncflow.batch.fused`) against ``jit(vmap(scan))`` of the collapsed step at K=d=4, 6, 10, 1e5
  runs, float32, by ``benchmarks/fused.py``'s code (its gpu section; each size in a child process with
  a timeout); on a CPU its rows say "skipped" (the kernel's CPU check is ``fused.py --sections cpu``).
* **layouts** (``--sections layouts``, not in the default sections) — ``benchmarks/layouts.py``'s rows
  (issue 23 item 1): the wide plan in each step layout (vmap, lanes), the plain baseline, ncflow's
  elementwise products and the bare lanes-minor step side by side, at the largest ``--runs`` and
  ``--steps`` steps, with run-steps/s, GFLOP/s, bytes per run-step and the card's peak fractions.

Prints one JSON line (and, with ``--table``, each case's row on stderr as it finishes; with
``--out``, the file holds every finished case, so a run stopped by a time limit still leaves its
rows). Installs nothing, writes nothing unless ``--out FILE``. Stops starting new cases once
``--budget-s`` is spent (marked "skipped"). Example::

    python benchmarks/device.py                         # 1k/10k/100k runs, 1000 steps
    python benchmarks/device.py --runs 1000 --steps 300 # a quick CPU check
    python benchmarks/device.py --sections deep --table # the deep engines' rows only
    python benchmarks/device.py --sections fused --table # the fused kernel's rows only (GPU)
    python benchmarks/device.py --runs 100000 --sections layouts --table  # the step layouts (issue 23)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 stop rule on the device (runs are float32)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ncflow  # noqa: E402
from ncflow.batch.programs import clear_cache  # noqa: E402
from ncflow.dynamics.build import default_lr, dynamics_for  # noqa: E402
from ncflow.dynamics.starts import initializer, run_key  # noqa: E402
from ncflow.maths import theory  # noqa: E402

PROBLEMS = {"default": dict(), "K10_d64_n20": dict(K=10, d=64, n=20)}


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--steps", type=int, default=1000, help="fixed steps of the throughput section")
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--budget-s", type=float, default=270.0, help="start no new case after this many seconds")
    ap.add_argument("--sections", nargs="+", default=["throughput", "answer"],
                    choices=["throughput", "answer", "deep", "fused", "layouts"])
    ap.add_argument("--deep-runs", type=int, default=1024, help="runs R of the deep section's rows")
    ap.add_argument("--deep-budget", type=float, default=1e11, help="flops per timed call in the deep section")
    ap.add_argument("--table", action="store_true", help="also print a readable table on stderr")
    ap.add_argument("--out", default=None, help="also write the JSON line to this file")
    return ap.parse_args(argv)


def machine() -> dict:
    """Where the numbers come from: platform, device kind and count, versions, host load."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "devices": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0], "host": platform.processor() or platform.machine()}


def _starts(problem, dyn, runs: int, seed: int = 0):
    """ncflow's own starts of runs 0..runs−1 (fold_in(key(seed), i)), as the carried states."""
    init = initializer(problem, ncflow.Config())

    def one(i):
        return dyn.from_params(problem, init(problem, run_key(seed, i), 1.0))

    return jax.jit(jax.vmap(one))(jnp.arange(runs, dtype=jnp.uint32))


def baseline(problem, dyn, runs: int, steps: int, lr: float) -> dict:
    """A plain jit(vmap(scan)) of the one-run step: all runs at once, no stop rule, full precision."""
    x0 = _starts(problem, dyn, runs)
    lr_ = jnp.asarray(lr, problem.dtype)

    def run_one(x):
        def body(x, _):
            return dyn.step(problem, x, lr_), None
        x, _ = jax.lax.scan(body, x, None, length=steps)
        return x, dyn.value_and_grad_norm(problem, x)[0]

    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        prog = jax.jit(jax.vmap(run_one)).lower(x0).compile()
        compile_s = time.perf_counter() - t0
    jax.block_until_ready(prog(x0))  # warm-up
    t0 = time.perf_counter()
    _, f = jax.block_until_ready(prog(x0))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "compile_s": compile_s, "run_steps_per_s": runs * steps / seconds,
            "objective": np.asarray(f, np.float64)}


def throughput(name: str, runs: int, steps: int) -> dict:
    problem = ncflow.Problem(**PROBLEMS[name])
    cfg = ncflow.Config(runs=runs, max_steps=steps, early_stop=False, progress=False)
    ncflow.simulate(problem, cfg)  # warm-up: compiles every program of this shape
    r = ncflow.simulate(problem, cfg)
    dyn = dynamics_for(problem, cfg)
    b = baseline(problem, dyn, runs, steps, float(default_lr(problem, cfg)))
    t = r.timing
    f = r.per_run["objective"]
    return {
        "problem": name, "runs": runs, "steps": steps, "plan": t["plan"], "engine": r.representation,
        "ncflow_run_steps_per_s": t["run_steps_per_s"], "ncflow_loop_s": t["loop_s"], "ncflow_run_s": t["run_s"],
        "host_share": _host_share(t),
        "ncflow_classify_s": t["classify_s"], "ncflow_states_s": t["states_s"], "ncflow_wall_s": t["wall_s"],
        "baseline_run_steps_per_s": b["run_steps_per_s"], "baseline_s": b["seconds"],
        "ratio_vs_baseline": t["run_steps_per_s"] / b["run_steps_per_s"],
        "max_rel_objective_diff": float(np.max(np.abs(f - b["objective"]) / np.abs(b["objective"]))),
    }


def answer(name: str, runs: int) -> dict:
    problem = ncflow.Problem(**PROBLEMS[name])
    cfg = ncflow.Config(runs=runs, progress=False)
    ncflow.simulate(problem, ncflow.Config(runs=runs, progress=False, max_steps=200))  # warm-up (compiles)
    r = ncflow.simulate(problem, cfg)
    t = r.timing
    t0 = time.perf_counter()  # what a user pays who wants the final states on the host too
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(r.final_state)]
    states_to_host_s = time.perf_counter() - t0
    counts = {k: int(v) for k, v in zip(*np.unique(r.per_run["outcome"], return_counts=True))}
    steps = int(np.max(r.per_run["steps"]))
    dyn = dynamics_for(problem, cfg)
    b = baseline(problem, dyn, runs, steps, float(default_lr(problem, cfg)))
    f_star = theory.predict(problem).objective
    below = int(np.sum(b["objective"] < f_star + 0.9 * _saddle_gap(problem)))  # (H1) with ncflow's margin
    return {
        "problem": name, "runs": runs, "plan": t["plan"], "outcomes": counts,
        "baseline_below_saddle_after_same_steps": below, "max_steps_taken": steps,
        "median_steps": float(np.median(r.per_run["steps"])), "wall_s": t["wall_s"], "run_s": t["run_s"],
        "loop_s": t["loop_s"], "host_share": _host_share(t),
        "classify_s": t["classify_s"], "summaries_s": t["summaries_s"], "states_s": t["states_s"],
        "classify_share_of_stepping": t["classify_s"] / max(t["run_s"], 1e-9),
        "final_state_on_host": all(isinstance(a, np.ndarray) for a in jax.tree_util.tree_leaves(r.final_state)),
        "states_to_host_s": states_to_host_s, "states_bytes": int(sum(a.nbytes for a in leaves)),
        "run_steps_per_s": t["run_steps_per_s"], "compile_s": t["compile_s"],
    }


def deep(a) -> dict:
    """The deep engines' rows (benchmarks/deep_naive.py's code, float32), its table on stderr."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import deep_naive

    argv = ["--runs", str(a.deep_runs), "--budget", str(a.deep_budget), "--dtype", "float32"]
    res = deep_naive.run(argv, out=lambda line: print(line, file=sys.stderr, flush=True))
    clear_cache()
    return res


def fused_rows(budget_s: float) -> dict:
    """The fused kernel's gpu rows (benchmarks/fused.py's code), each on stderr as it finishes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fused as fused_bench

    return fused_bench.run(["--sections", "gpu", "--budget-s", str(max(budget_s, 0.0))])


def _host_share(timing: dict) -> float:
    """The share of the stepping loop's wall time not spent in device work (stop rule, progress,
    round trips): 1 − run_s/loop_s."""
    return 1.0 - timing["run_s"] / timing["loop_s"] if timing["loop_s"] > 0 else 0.0


def _saddle_gap(problem) -> float:
    from ncflow.maths.certificate import saddle_gap

    g = saddle_gap(problem)
    return float("inf") if g is None else g


def main(argv=None) -> int:
    a = _args(argv)
    t_start = time.perf_counter()
    out = {"benchmark": "device", "machine": machine(), "throughput": [], "answer": [], "deep": [], "fused": [],
           "layouts": []}

    def budget_left() -> bool:
        return time.perf_counter() - t_start < a.budget_s

    def record(section: str, row: dict) -> None:
        """Keep a finished case; with --out, rewrite the file so a killed run still leaves its rows."""
        out[section].append(row)
        out["wall_s"] = time.perf_counter() - t_start
        if a.table:
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        if a.out:
            with open(a.out, "w") as fh:
                fh.write(json.dumps(out, default=float) + "\n")

    for name in a.problems if "throughput" in a.sections else []:
        for runs in a.runs:
            if not budget_left():
                record("throughput", {"problem": name, "runs": runs, "skipped": "budget"})
                continue
            record("throughput", throughput(name, runs, a.steps))
            clear_cache()
    for name in a.problems if "answer" in a.sections else []:
        if not budget_left():
            record("answer", {"problem": name, "runs": max(a.runs), "skipped": "budget"})
            continue
        record("answer", answer(name, max(a.runs)))
        clear_cache()
    if "deep" in a.sections:
        if not budget_left():
            record("deep", {"skipped": "budget"})
        else:
            record("deep", deep(a))
    if "fused" in a.sections:
        if not budget_left():
            record("fused", {"skipped": "budget"})
        else:
            record("fused", fused_rows(a.budget_s - (time.perf_counter() - t_start)))
    if "layouts" in a.sections:  # benchmarks/layouts.py's rows, in what is left of the budget
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import layouts

        layouts.run(runs=max(a.runs), steps=a.steps, problems=a.problems,
                    budget_s=max(a.budget_s - (time.perf_counter() - t_start), 0.0),
                    record=lambda _, row: record("layouts", row))
        clear_cache()
    out["wall_s"] = time.perf_counter() - t_start
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
