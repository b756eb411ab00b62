"""NC1 on the default device against the host CPU, float64, random d×K class-mean spreads (d > K
takes the triangular-factor path of ``ncflow.maths.metrics._nc1``). Prints the largest relative
difference; exits 1 above 1e-10.

    python benchmarks/nc1_check.py
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ncflow.maths.metrics import _nc1  # noqa: E402


def main() -> int:
    rng = np.random.default_rng(0)
    cpu = jax.devices("cpu")[0]
    worst = 0.0
    for d, K in ((64, 10), (20, 4), (10, 10), (3, 10)):
        X = rng.normal(size=(256, d, K))
        X = X - X.mean(axis=2, keepdims=True)
        E = rng.normal(size=(256, d, 3 * d)) * 1e-3
        Sw = E @ np.swapaxes(E, 1, 2)
        f = jax.jit(jax.vmap(lambda x, s, K=K: _nc1(x, s, K, jnp.float64)))
        acc = np.asarray(f(jnp.asarray(X), jnp.asarray(Sw)))
        host = np.asarray(f(jax.device_put(X, cpu), jax.device_put(Sw, cpu)))
        rel = float(np.max(np.abs(acc - host) / np.abs(host)))
        worst = max(worst, rel)
        print(f"d={d} K={K} device={jax.devices()[0].device_kind} max rel diff vs CPU {rel:.2e}")
    return 0 if worst < 1e-10 else 1


if __name__ == "__main__":
    sys.exit(main())
