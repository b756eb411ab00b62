"""Replay one run of a batch on the full representation, from its own key (exact H of a collapsed run)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ncflow.config import Config
from ncflow.dynamics import starts
from ncflow.dynamics.spaces import FULL
from ncflow.problem import Problem


@eqx.filter_jit
def _gd_steps(problem: Problem, x, lr, steps):
    """``steps`` (a traced int) full GD steps of size ``lr`` from ``x``: one compilation per problem
    shape, whatever the run, its step count or its step size."""
    return jax.lax.fori_loop(0, steps, lambda _, y: FULL.gd_step(problem, y, lr), x)


def replay(problem: Problem, run: int, steps: int, *, seed: int = 0, lr: float, init_scale: float = 1.0,
           config=None):
    """Run ``run`` of a GD batch again on the full representation, for exactly ``steps`` steps,
    and return its final ``Params`` (``W (K, d)``, ``H (d, N)``, ``b (K,)``).

    GD is deterministic and run i starts from ``fold_in(key(seed), i)``, so this rebuilds the
    exact H of a run that the collapsed engine carried as (W, M, G, b) (to rounding). ``config``
    supplies the start (``init``, ``active``, ``perturb``; default: Gaussian).
    """
    init_fn = starts.initializer(problem, config or Config())
    params = init_fn(problem, starts.run_key(seed, run), init_scale)
    return _gd_steps(problem, params, jnp.asarray(lr, problem.dtype), jnp.asarray(int(steps), jnp.int32))
