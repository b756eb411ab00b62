"""Write (or check) ``per_run.json``: per-run results of a few tiny configurations, the safety net
of refactors. Every run's steps, outcome and the exact bits of its final objective are recorded
for the full and collapsed GD engines, an optax optimizer and the gradient flow, on 1 and 4
devices. ``python tests/golden/make_golden.py`` adds the cases the file lacks and refuses to change a
recorded one; ``--force`` rewrites everything (only for a stated change, named in the commit).
``tests/test_golden.py`` runs the same cases and demands equality.
"""

from __future__ import annotations

import json
import os
import sys

#: (name, problem fields, simulate settings); float64, tiny sizes, a few hundred steps at most
CASES = [
    ("full_gd", dict(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64"),
     dict(engine="full", max_steps=3000, stop="converged")),
    ("collapsed_gd", dict(K=3, d=4, n=3, lambda_w=2e-2, lambda_h=2e-2, lambda_b=0.05, dtype="float64"),
     dict(engine="collapsed", max_steps=3000, stop="converged")),
    ("collapsed_f32", dict(K=3, d=4, n=3, lambda_w=2e-2, lambda_h=2e-2, dtype="float32"),
     dict(engine="collapsed", max_steps=3000, stop="converged")),
    ("momentum", dict(K=3, d=3, n=2, lambda_w=2e-2, lambda_h=2e-2, bias=False, dtype="float64"),
     dict(optimizer="momentum", max_steps=3000, stop="converged")),
    ("flow", dict(K=3, d=3, n=2, lambda_w=5e-2, lambda_h=5e-2, dtype="float64"),
     dict(optimizer="flow", max_steps=1500, stop="converged")),
    ("origin_saddle", dict(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64"),
     dict(engine="collapsed", init_scale=0.0, max_steps=300, stop="converged")),
    ("budget", dict(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64"),
     dict(engine="full", max_steps=50, stop="converged")),
    # the early certificate of THEORY §8 (stop rule "certified", the default)
    ("certified_full", dict(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64"),
     dict(engine="full", max_steps=3000, stop="certified")),
    ("certified_collapsed_f32", dict(K=3, d=4, n=3, lambda_w=2e-2, lambda_h=2e-2, lambda_b=0.05, dtype="float32"),
     dict(engine="collapsed", max_steps=3000, stop="certified")),
]
RUNS = 6
DEVICES = (1, 4)
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "per_run.json")


def compute() -> dict:
    """Every case on every device count: ``{"<name>@<devices>": {"steps", "outcome", "objective_hex"}}``."""
    import jax
    import numpy as np

    import ncflow

    out = {}
    for name, pfields, settings in CASES:
        problem = ncflow.Problem(**pfields)
        for n_dev in DEVICES:
            r = ncflow.simulate(problem, runs=RUNS, seed=7, progress=False, devices=jax.devices()[:n_dev],
                                **settings)
            out[f"{name}@{n_dev}"] = {
                "steps": [int(s) for s in r.per_run["steps"]],
                "outcome": [str(o) for o in r.per_run["outcome"]],
                "objective_hex": [float(np.float64(f)).hex() for f in r.per_run["objective"]],
            }
    return out


if __name__ == "__main__":
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_num_cpu_devices", 4)
    data = compute()
    if os.path.exists(PATH) and "--force" not in sys.argv:
        with open(PATH) as fh:
            old = json.load(fh)
        changed = sorted(k for k in old if k in data and old[k] != data[k])
        if changed:
            sys.exit(f"recorded cases changed: {', '.join(changed)} (use --force for a stated change)")
    with open(PATH, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {PATH} ({len(data)} cases)", file=sys.stderr)
