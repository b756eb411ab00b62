"""Steppers: how ONE run's state moves, one step at a time, on a state space.

* :class:`GD` (optimizer ``gd``): the space's own exact gradient-descent step (full or collapsed);
* :class:`Optax` (``momentum``, ``nesterov``, ``adam``): an optax transform built with learning rate
  1 whose update is scaled by the per-run step ``lr`` (a traced lane of the batch); full (W, H, b),
  and for ``momentum``/``nesterov`` also the collapsed space, where the same update rule moves the
  exact collapsed momentum state (:mod:`ncflow.maths.collapsed_momentum`);
* :class:`~ncflow.dynamics.flow.Flow` (``flow``): one adaptive ODE-solver step of gradient flow;
* :class:`Escape`: wraps any of them and records the step at which a run started at a saddle left it.

A stepper carries its own state around the space's point (``init`` / ``point``), takes ``step``,
and may say that a run is ``done`` (a horizon reached) or that its step ``failed`` (an outcome, not an
exception). Budgets are not a stepper's business: the engine masks steps past a run's budget in one
place (``ncflow.batch.programs``), so no stepper needs ``lr = 0`` to be an identity. Steppers are
frozen, hashable values: with the space they key the process-wide cache of compiled programs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from ncflow.dynamics.spaces import StateSpace
from ncflow.maths import collapsed_momentum as _cm
from ncflow.maths import objective as _o
from ncflow.maths import theory
from ncflow.problem import Problem
from ncflow.settings import SETTINGS

#: momentum coefficient of "momentum"/"nesterov" when Config.momentum is None (the settings table's)
DEFAULT_MOMENTUM = SETTINGS["momentum"].default
#: default step size of "adam" (Adam's steps have size ~lr per coordinate whatever the curvature,
#: so the GD default 1/L would be far too large late in a run)
ADAM_DEFAULT_LR = 1e-3
#: init "saddle": a run has escaped once f < f_s − ESCAPE_MARGIN·(1−c)²/(2K) (a fraction of the
#: objective drop (1−c)²/(2K) that one more active direction brings)
ESCAPE_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True)
class Stepper:
    """Interface of a one-run stepper. ``name`` names it in results ("gd", "momentum", ...)."""

    name = "abstract"

    def supports(self, space: StateSpace) -> bool:
        """Whether this stepper can move a point of ``space``."""
        return True

    def init(self, space: StateSpace, problem: Problem, point):
        """The stepper's state around a point of ``space`` (default: the point itself)."""
        return point

    def point(self, state):
        """The point of the space inside the stepper's state."""
        return state

    def step(self, space: StateSpace, problem: Problem, state, lr):
        """One step of size ``lr`` (a scalar, possibly traced)."""
        raise NotImplementedError

    def done(self, problem: Problem, state) -> Bool[Array, ""]:
        """The stepper's own stop (e.g. a flow horizon reached); such runs stop as out of budget."""
        return jnp.zeros((), bool)

    def failed(self, problem: Problem, state) -> Bool[Array, ""]:
        """Whether the stepper could not take its last step (e.g. the ODE solver failed)."""
        return jnp.zeros((), bool)

    def extras(self, problem: Problem, state) -> dict:
        """Per-run scalars added as columns of the Result (e.g. an escape step)."""
        return {}

    def extra_flops(self, space: StateSpace, problem: Problem) -> int:
        """Flops of one step beyond the space's GD step (the cost model)."""
        return 0


@dataclasses.dataclass(frozen=True)
class GD(Stepper):
    """Plain gradient descent: the space's exact GD step."""

    name = "gd"

    def step(self, space, problem, state, lr):
        return space.gd_step(problem, state, lr)


class OptaxState(NamedTuple):
    """State of one run under an optax optimizer: the point and the optimizer's state."""

    params: _o.Params
    opt_state: Any


#: the optax optimizers that are linear in the gradient, hence exact on the collapsed space
COLLAPSIBLE = ("momentum", "nesterov")


@dataclasses.dataclass(frozen=True)
class Optax(Stepper):
    """An optax optimizer on full (W, H, b); momentum and Nesterov also on the collapsed space.

    One step: ``u, s' = tx.update(∇f(θ), s, θ)``, ``θ' = θ + lr·u`` with ``tx`` built with learning
    rate 1. A bias-free problem keeps b fixed (its gradient is zero; b is also masked explicitly).
    On the collapsed space (``momentum``/``nesterov`` only: optax's ``trace`` is linear in the
    gradient, so every within-class deviation and its velocity move by one map) the state is a
    :class:`~ncflow.maths.collapsed_momentum.CollapsedMomentum` and the step is
    :func:`~ncflow.maths.collapsed_momentum.step`, the same rule (``v ← g + μv``;
    ``θ ← θ − lr·v``, Nesterov ``θ ← θ − lr·(g + μv)``) without optax. Adam's per-coordinate scaling
    is not linear in the gradient: full only.

    Attributes:
        kind: "momentum" (heavy ball), "nesterov" or "adam".
        momentum: μ of momentum/nesterov, in [0, 1).
        beta1, beta2, eps: Adam's hyperparameters.
    """

    kind: str
    momentum: float = DEFAULT_MOMENTUM
    beta1: float = SETTINGS["beta1"].default
    beta2: float = SETTINGS["beta2"].default
    eps: float = SETTINGS["adam_eps"].default

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def transform(self):
        """The ``optax.GradientTransformation``, built with learning rate 1 (optax is imported
        here, on first use, so GD runs never import it)."""
        import optax

        if self.kind in ("momentum", "nesterov"):
            return optax.sgd(1.0, momentum=float(self.momentum), nesterov=self.kind == "nesterov")
        if self.kind == "adam":
            return optax.adam(1.0, b1=float(self.beta1), b2=float(self.beta2), eps=float(self.eps))
        raise ValueError(f"optimizer {self.kind!r} is not an optax optimizer")

    def supports(self, space):
        return space.name == "full" or (space.name == "collapsed" and self.kind in COLLAPSIBLE)

    def init(self, space, problem, point):
        if space.name == "collapsed":
            return _cm.init(point)
        return OptaxState(point, self.transform().init(point))

    def point(self, state):
        return state.params  # OptaxState and CollapsedMomentum both keep the point there

    def step(self, space, problem, state, lr):
        if space.name == "collapsed":
            return _cm.step(problem, state, lr, float(self.momentum), nesterov=self.kind == "nesterov")
        g = _o.gradient(problem, state.params)
        upd, s = self.transform().update(g, state.opt_state, state.params)
        p = jax.tree_util.tree_map(lambda a, u: a + lr * u.astype(a.dtype), state.params, upd)
        if not problem.bias:
            p = p._replace(b=state.params.b)
        return OptaxState(p, s)

    def extra_flops(self, space, problem):
        p = problem
        if space.name == "collapsed":
            return _cm.flops_per_step(p) - space.flops_per_step(p)
        return 10 * (p.K * p.d + p.d * p.N + p.K)


# ---------------------------------------------------------------------------------- escape
class EscapeState(NamedTuple):
    """A run started at a saddle: the inner stepper's state, the steps taken and the step after
    which the objective first fell below the escape threshold (−1: not yet)."""

    inner: Any
    steps: Int[Array, ""]
    escape: Int[Array, ""]


def escape_threshold(problem: Problem, s: int, margin: float = ESCAPE_MARGIN):
    """``f_s − margin·(1−c)²/(2K)`` with jnp ops (coefficients may be traced lanes)."""
    K, n = problem.K, problem.n
    lw, lh, lb = (_o.coeff(problem, f) for f in ("lambda_w", "lambda_h", "lambda_b"))
    c = K * jnp.sqrt(n * lw * lh)
    drop = jnp.where(c < 1, (1 - c) ** 2 / (2 * K), 0.0)
    base = (K - 1) / (2 * K) + lb / (2 * K * (1 + lb)) if problem.bias else jnp.asarray(0.5, lw.dtype)
    return base - s * drop - margin * drop


@dataclasses.dataclass(frozen=True)
class Escape(Stepper):
    """Wrap ``inner`` to record per run the escape step from a saddle with ``s`` active directions:
    the number of steps after which ``f < f_s − margin·(1−c)²/(2K)`` first held (the
    ``escape_step`` column; NaN if it never did). Costs one objective evaluation per step."""

    inner: Stepper
    s: int
    margin: float = ESCAPE_MARGIN

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def supports(self, space):
        return self.inner.supports(space)

    def init(self, space, problem, point):
        return EscapeState(self.inner.init(space, problem, point), jnp.zeros((), jnp.int32),
                           jnp.full((), -1, jnp.int32))

    def point(self, state):
        return self.inner.point(state.inner)

    def step(self, space, problem, state, lr):
        inner = self.inner.step(space, problem, state.inner, lr)
        steps = state.steps + 1
        below = space.objective(problem, self.inner.point(inner)) < escape_threshold(problem, self.s, self.margin)
        escape = jnp.where((state.escape < 0) & below, steps, state.escape)
        return EscapeState(inner, steps, escape)

    def done(self, problem, state):
        return self.inner.done(problem, state.inner)

    def failed(self, problem, state):
        return self.inner.failed(problem, state.inner)

    def extras(self, problem, state):
        out = dict(self.inner.extras(problem, state.inner))
        dt = jnp.result_type(problem.dtype)
        out["escape_step"] = jnp.where(state.escape >= 0, state.escape.astype(dt), jnp.nan)
        return out

    def extra_flops(self, space, problem):
        return self.inner.extra_flops(space, problem) + 2 * problem.K * problem.d * problem.N


def predicted_escape_steps(problem: Problem, s: int, perturb: float, lr: float,
                           margin: float = ESCAPE_MARGIN) -> float:
    """Linearized escape steps from a saddle with s active directions (MSE, case A or B).

    Near the saddle the fastest modes pair a free class direction u (orthogonal to the active
    ones) with a free feature direction r (orthogonal to the active ones): there are
    m = (K−1−s)(d−s) of them (bias; K−s class directions bias-free), all with curvature
    −g = ``theory.saddle_min_eigenvalue`` for every s. A perturbation with entries N(0, ε²/d)
    puts E|x_u|² = m ε²/d into them; under GD each grows by (1 + gη) per step, so
    f − f_s ≈ −(g/2)|x_u|²(1 + gη)^{2t}, which reaches −margin·(1−c)²/(2K) after

        t ≈ ln(2·margin·(1−c)²/(2K) / (g·m ε²/d)) / (2 ln(1 + gη))   (≈ ln(·)/(2gη) for small gη).
    """
    K, d = problem.K, problem.d
    g = theory.origin_growth_rate(problem)
    free = (K - 1 if problem.bias else K) - s
    m = free * (d - s)
    target = margin * (1 - problem.c) ** 2 / (2 * K)
    return math.log(2 * target / (g * m * perturb**2 / d)) / (2 * math.log1p(g * lr))
