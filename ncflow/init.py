"""Initializations of one run from its key. Vmap outside; keys come from ``run_key``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .objective import Params
from .problem import Problem


def run_key(master_seed: int, run_index):
    """The key of run ``run_index``: ``fold_in(key(master_seed), run_index)``.

    Run i is the same run whatever the number of runs, the chunking or the device count.
    """
    return jax.random.fold_in(jax.random.key(master_seed), run_index)


def gaussian(problem: Problem, key, scale) -> Params:
    """Gaussian start: entries of ``W (K, d)`` and ``H (d, N)`` are N(0, scale²/d), ``b = 0``.

    ``scale = 0`` gives the exact origin (a strict saddle when c < 1).
    """
    K, d, N = problem.K, problem.d, problem.N
    dt = problem.dtype
    std = jnp.asarray(scale, dt) / jnp.sqrt(jnp.asarray(d, dt))
    z = std * jax.random.normal(key, (K * d + d * N,), dt)  # one draw: W's entries, then H's
    return Params(z[: K * d].reshape(K, d), z[K * d:].reshape(d, N), jnp.zeros((K,), dt))


def initializer(problem: Problem, config):
    """The one-run start ``fn(problem, key, scale) -> Params`` selected by ``config.init``.

    Only "gaussian" is built in here; :mod:`ncflow.solvers`-era kinds are added by
    :func:`ncflow.init.INITIALIZERS`.
    """
    try:
        make = INITIALIZERS[config.init]
    except KeyError:
        raise ValueError(f"init must be one of {', '.join(INITIALIZERS)}, got {config.init!r}") from None
    return make(problem, config)


#: init kind -> factory(problem, config) -> fn(problem, key, scale) -> Params
INITIALIZERS = {"gaussian": lambda problem, config: gaussian}
