"""ncflow.simulate's deep collapsed engine between the same step as a plain grouped jit(vmap(scan)) and the
naive jax.grad step, in ONE process: wall and process-CPU seconds per run-step (K=10, d=64, L=3, n=20,
float32, 128 runs; the deep linear row of issue 22 item 8).

    python benchmarks/deep_engine.py

benchmarks/deep_naive.py times ncflow.simulate after its round-robin rows; here the engine is timed before
and after the others, so that a load change on a shared machine does not pass for an engine gap. Each
timing is one call after a warm-up call.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deep_naive as dn  # noqa: E402

import ncflow  # noqa: E402
from ncflow.maths import deep_collapsed as dc  # noqa: E402
from ncflow.maths import deep_objective as do  # noqa: E402

K, D, L, N_PER, RUNS, STEPS, NAIVE_STEPS = 10, 64, 3, 20, 128, 400, 100


def timed(fn):
    """(wall s, process CPU s) of one call of ``fn`` after a warm-up call."""
    jax.block_until_ready(fn())
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    prob = ncflow.Problem(K=K, n=N_PER, d=D, depth=L, lambda_w=dn.LAM, lambda_h=dn.LAM, dtype="float32")
    cfg = ncflow.Config(runs=RUNS, max_steps=STEPS, early_stop=False, progress=False, lr=dn.LR, engine="collapsed")
    spec = do.spec_of(prob)
    co = do.coeffs_of(spec, prob)
    cos = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (RUNS,) + np.shape(a)).copy(), co)
    keys = jax.random.split(jax.random.PRNGKey(0), RUNS)
    p0 = jax.vmap(lambda k: do.gaussian_start(spec, k, 1.0))(keys)
    x0 = jax.vmap(lambda p: dc.collapse(spec, p))(p0)
    print(f"{jax.device_count()} {jax.default_backend()} device(s); load average {os.getloadavg()}")
    rows = []

    def engine(label):
        ncflow.simulate(prob, cfg)
        c0 = time.process_time()
        t = ncflow.simulate(prob, cfg).timing
        rows.append((label, STEPS, t["run_s"], time.process_time() - c0))  # CPU: the whole call (host loop too)

    engine("ncflow.simulate (first)")
    for group in (None, 4):
        f = dn.program(dn.collapsed_step, spec, STEPS, group).lower(cos, x0).compile()
        rows.append((f"collapsed, {'one vmap' if group is None else f'groups of {group}'}", STEPS,
                     *timed(lambda f=f: f(cos, x0))))
    naive = dn.program(dn.naive_step, spec, NAIVE_STEPS).lower(cos, p0).compile()
    rows.append(("naive jax.grad", NAIVE_STEPS, *timed(lambda: naive(cos, p0))))
    engine("ncflow.simulate (again)")
    base = next(RUNS * s / w for name, s, w, _ in rows if name == "naive jax.grad")
    base_cpu = next(RUNS * s / c for name, s, _, c in rows if name == "naive jax.grad")
    print(f"{'method':<26}{'run-steps/s':>12}{'vs naive':>10}{'per CPU s':>12}{'vs naive':>10}")
    for name, s, wall, cpu in rows:
        rs, rc = RUNS * s / wall, RUNS * s / cpu
        print(f"{name:<26}{rs:>12.3g}{rs / base:>9.1f}x{rc:>12.3g}{rc / base_cpu:>9.1f}x")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
