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
    kw, kh = jax.random.split(key)
    dt = problem.dtype
    std = jnp.asarray(scale, dt) / jnp.sqrt(jnp.asarray(problem.d, dt))
    W = std * jax.random.normal(kw, (problem.K, problem.d), dt)
    H = std * jax.random.normal(kh, (problem.d, problem.N), dt)
    return Params(W, H, jnp.zeros((problem.K,), dt))
