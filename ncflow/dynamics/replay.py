"""Replay one run of a batch on the full representation, from its own key (exact H of a collapsed run,
GD or momentum; a deep linear collapsed run on ``deep_full``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ncflow.config import Config
from ncflow.dynamics import starts
from ncflow.dynamics.spaces import FULL, deep_spaces
from ncflow.dynamics.steppers import COLLAPSIBLE, DEFAULT_MOMENTUM, Optax
from ncflow.problem import Problem


@eqx.filter_jit
def _gd_steps(space, problem: Problem, x, lr, steps):
    """``steps`` (a traced int) GD steps of ``space`` (a full state space: its state is the point) of
    size ``lr`` from ``x``: one compilation per problem shape, whatever the run, its step count or its
    step size."""
    return jax.lax.fori_loop(0, steps, lambda _, y: space.gd_step(problem, y, lr), x)


@eqx.filter_jit
def _momentum_steps(problem: Problem, stepper: Optax, x, lr, steps):
    """``steps`` heavy-ball or Nesterov steps on full ``x`` (zero velocity at the start), as the
    engine's ``Optax`` stepper takes them; returns the point."""
    s = jax.lax.fori_loop(0, steps, lambda _, y: stepper.step(FULL, problem, y, lr), stepper.init(FULL, problem, x))
    return stepper.point(s)


def replay(problem: Problem, run: int, steps: int, *, seed: int = 0, lr: float, init_scale: float = 1.0,
           config=None):
    """Run ``run`` of a GD batch again on the full representation, for exactly ``steps`` steps,
    and return its final ``Params`` (``W (K, d)``, ``H (d, N)``, ``b (K,)``); at depth > 1 its final
    ``DeepParams`` (``Ws``, ``H (d_0, N)``, ``b (K,)``), replayed with plain GD on ``deep_full`` (the deep
    engine runs GD only).

    GD is deterministic and run i starts from ``fold_in(key(seed), i)``, so this rebuilds the
    exact H of a run that the collapsed engine carried as (W, M, G, b) (to rounding). ``config``
    supplies the start (``init``, ``active``, ``perturb``; default: Gaussian) and the optimizer:
    ``momentum``/``nesterov`` (with ``momentum``) replay heavy ball or Nesterov, as the collapsed
    engine runs them too; anything else replays GD.
    """
    config = config or Config()
    init_fn = starts.initializer(problem, config)
    params = init_fn(problem, starts.run_key(seed, run), init_scale)
    lr, steps = jnp.asarray(lr, problem.dtype), jnp.asarray(int(steps), jnp.int32)
    if problem.depth > 1:
        return _gd_steps(deep_spaces(problem)[0], problem, params, lr, steps)
    if config.optimizer in COLLAPSIBLE:
        mu = config.momentum if config.momentum is not None else DEFAULT_MOMENTUM
        return _momentum_steps(problem, Optax(kind=config.optimizer, momentum=float(mu)), params, lr, steps)
    return _gd_steps(FULL, problem, params, lr, steps)
