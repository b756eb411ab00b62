"""The two exact representations of a run that the engine can step: full and collapsed.

Each is a bundle of functions written for ONE run. ``full`` carries (W, H, b) and is the
reference for every loss; ``collapsed`` carries (W, M, G, b) at O(K d²) per step (MSE only).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from ncflow.maths import collapsed as _c
from ncflow.maths import metrics as _m
from ncflow.maths import objective as _o
from ncflow.config import ENGINES
from ncflow.problem import Problem


@dataclasses.dataclass(frozen=True)
class Representation:
    """How the engine stores and steps one run.

    Attributes:
        name: "full" or "collapsed".
        from_params: Params -> state.
        to_params: state -> Params (collapsed: rebuilt up to within-class mixing).
        step: (problem, state, lr) -> state, one gradient-descent step.
        value_and_grad_norm: (problem, state) -> (f, ||∇f||) of the full objective.
        stats: (problem, state) -> ClassStats.
        flops_per_step: (problem) -> estimated flops of one step.
        extras: optional (problem, state) -> dict of scalars, added as per-run columns of the
            Result (e.g. an escape time carried in the state).
        done: optional (problem, state) -> bool, the representation's own stop (e.g. a gradient
            flow that reached its time horizon); such runs stop as if out of budget.
    """

    name: str
    from_params: Callable
    to_params: Callable
    step: Callable
    value_and_grad_norm: Callable
    stats: Callable
    flops_per_step: Callable
    extras: Callable | None = None
    done: Callable | None = None


def _full_step(problem: Problem, x: _o.Params, lr) -> _o.Params:
    g = _o.gradient(problem, x)
    return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, x, g)


def _full_value_gnorm(problem: Problem, x: _o.Params):
    f, g = _o.value_and_gradient(problem, x)
    return f, jax.numpy.sqrt(_o.tree_sq_norm(g))


FULL = Representation(
    name="full",
    from_params=lambda problem, p: p,
    to_params=lambda problem, x: x,
    step=_full_step,
    value_and_grad_norm=_full_value_gnorm,
    stats=_m.class_stats,
    flops_per_step=lambda p: 6 * p.K * p.d * p.N,
)

COLLAPSED = Representation(
    name="collapsed",
    from_params=_c.collapse,
    to_params=_c.expand,
    step=_c.gd_step,
    value_and_grad_norm=_c.value_and_grad_norm,
    stats=_c.class_stats,
    flops_per_step=lambda p: 4 * p.K * p.d**2 + 8 * p.K**2 * p.d,
)



def choose(problem: Problem, engine: str = "auto") -> Representation:
    """The representation for ``engine`` ("auto", "full" or "collapsed").

    "auto" takes the collapsed one for the MSE loss when its flop count is below ``CROSSOVER``
    (0.5) times the full step's — the measured crossover, recorded in benchmarks/README.md.
    """
    if engine == "full":
        return FULL
    if engine == "collapsed":
        if problem.loss != "mse":
            raise ValueError("engine 'collapsed' supports loss='mse' only; use 'full'")
        return COLLAPSED
    if engine != "auto":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if problem.loss == "mse" and COLLAPSED.flops_per_step(problem) < CROSSOVER * FULL.flops_per_step(problem):
        return COLLAPSED
    return FULL


#: "auto" takes the collapsed step when its flop count is below this fraction of the full one's.
#: Measured (benchmarks/bench.py, crossover section, K=10, d=64, float32, 2-core CPU): the full
#: engine was faster up to N = 80 and the collapsed one from N = 160, where the flop models
#: alone would switch at N ≈ 56; the collapsed step's small products run at a lower rate.
CROSSOVER = 0.5
