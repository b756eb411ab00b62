"""Optimizers of the engine: which one-run step it uses and how its settings are checked.

* ``gd`` (default): plain gradient descent on the exact representations of
  :mod:`ncflow.representations` (full or collapsed).
* ``momentum`` / ``nesterov``: heavy ball / Nesterov momentum, ``optax.sgd(1, momentum=μ)``;
  μ defaults to :data:`DEFAULT_MOMENTUM`.
* ``adam``: ``optax.adam(1, β1, β2, ε)``.
* ``flow``: gradient flow by an adaptive ODE solver (:mod:`ncflow.flow`).

The optax optimizers run on the full (W, H, b) parameters with state ``(Params, opt_state)``.
The transform is built with learning rate 1 and its update is scaled by the per-run step
``lr`` (a traced lane of the batch); ``lr = 0`` leaves the whole state unchanged.

Init ``saddle`` wraps any of these in an escape-time recorder (:func:`with_escape`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int

from ncflow.maths import metrics as _m
from ncflow.maths import objective as _o
from ncflow.maths import theory
from ncflow.config import OPTIMIZERS  # noqa: F401  (re-exported: the optimizers stepped here)
from ncflow.errors import ConfigError
from ncflow.problem import Problem
from ncflow.dynamics.spaces import Representation, choose

#: momentum coefficient of "momentum"/"nesterov" when Config.momentum is None
DEFAULT_MOMENTUM = 0.9
#: default step size of "adam" (Adam's steps have size ~lr per coordinate whatever the curvature,
#: so the GD default 1/L would be far too large late in a run)
ADAM_DEFAULT_LR = 1e-3
#: init "saddle": a run has escaped once f < f_s − ESCAPE_MARGIN·(1−c)²/(2K) (a fraction of the
#: objective drop (1−c)²/(2K) that one more active direction brings)
ESCAPE_MARGIN = 1e-3


# ---------------------------------------------------------------------------------- validation
def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


#: default (rtol, atol) of the gradient flow by dtype: with looser ones the flow's gradient
#: stalls above the float64 stopping tolerance (seen: 2.3e-7 against gtol 3.3e-8 at rtol 1e-7)
FLOW_TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-6, 1e-8)}


def validate_for_problem(problem: Problem, config) -> None:
    """The checks that need the (base) problem: init saddle's ``active`` must name a saddle,
    ``0 <= active <= max_active − 1``, of a family with closed-form critical points."""
    if config.init != "saddle":
        return
    top = theory.max_active(problem)
    s = config.active
    if not 0 <= s < top:
        raise ConfigError(
            f"active must be in [0, {top - 1}] for init saddle (a saddle keeps fewer than "
            f"max_active = min(d, {'K-1' if problem.bias else 'K'}) = {top} directions; "
            f"K={problem.K}, d={problem.d}), got {s}")
    if problem.loss != "mse":
        raise ConfigError("init: saddle needs loss mse (critical points are closed-form for MSE only)")
    c = problem.c
    if c >= 1:
        raise ConfigError(f"init: saddle needs c < 1 (for c >= 1 the origin is the minimum), got c = {c:.4g}")
    lb = float(problem.lambda_b)
    if problem.bias and lb > c / (1 - c):
        raise ConfigError("init: saddle needs lambda_b <= c/(1-c) (closed-form critical points)")


# ---------------------------------------------------------------------------------- optax
class OptaxState(NamedTuple):
    """State of one run under an optax optimizer: the point and the optimizer's state."""

    params: _o.Params
    opt_state: Any


def momentum_of(config) -> float:
    """The momentum coefficient in use (``DEFAULT_MOMENTUM`` when not given)."""
    return DEFAULT_MOMENTUM if config.momentum is None else float(config.momentum)


def optax_transform(config) -> optax.GradientTransformation:
    """The optax transform of ``config.optimizer``, built with learning rate 1."""
    opt = config.optimizer
    if opt in ("momentum", "nesterov"):
        return optax.sgd(1.0, momentum=momentum_of(config), nesterov=opt == "nesterov")
    if opt == "adam":
        return optax.adam(1.0, b1=float(config.beta1), b2=float(config.beta2), eps=float(config.adam_eps))
    raise ValueError(f"optimizer {opt!r} is not an optax optimizer")


def optax_representation(name: str, tx: optax.GradientTransformation) -> Representation:
    """A :class:`Representation` (name ``"full+<name>"``) stepping full (W, H, b) with ``tx``.

    One step: ``u, s' = tx.update(∇f(θ), s, θ)``, ``θ' = θ + lr·u``. A bias-free problem keeps
    b fixed (its gradient is zero; b is also masked explicitly). ``lr = 0`` returns the state
    unchanged (optimizer state included).
    """

    def from_params(problem: Problem, p: _o.Params) -> OptaxState:
        return OptaxState(p, tx.init(p))

    def step(problem: Problem, x: OptaxState, lr) -> OptaxState:
        g = _o.gradient(problem, x.params)
        upd, s = tx.update(g, x.opt_state, x.params)
        p = jax.tree_util.tree_map(lambda a, u: a + lr * u.astype(a.dtype), x.params, upd)
        if not problem.bias:
            p = p._replace(b=x.params.b)
        new = OptaxState(p, s)
        live = lr != 0
        return jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new, x)

    def value_and_grad_norm(problem: Problem, x: OptaxState):
        f, g = _o.value_and_gradient(problem, x.params)
        return f, jnp.sqrt(_o.tree_sq_norm(g))

    return Representation(
        name=f"full+{name}",
        from_params=from_params,
        to_params=lambda problem, x: x.params,
        step=step,
        value_and_grad_norm=value_and_grad_norm,
        stats=lambda problem, x: _m.class_stats(problem, x.params),
        flops_per_step=lambda p: 6 * p.K * p.d * p.N + 10 * (p.K * p.d + p.d * p.N + p.K),
    )


# ---------------------------------------------------------------------------------- escape
class EscapeState(NamedTuple):
    """A run started at a saddle: the inner optimizer's state, the steps taken (with lr > 0)
    and the step after which the objective first fell below the escape threshold (−1: not yet)."""

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


def with_escape(rep: Representation, s: int, margin: float = ESCAPE_MARGIN) -> Representation:
    """Wrap ``rep`` to record per run the escape step from a saddle with ``s`` active
    directions: the number of steps after which ``f < f_s − margin·(1−c)²/(2K)`` first held
    (reported as the ``escape_step`` column; NaN if it never did). Costs one objective
    evaluation per step. Its name is ``rep.name + "+escape"``."""
    if rep.name == "collapsed":
        def value(problem, x):
            return rep.value_and_grad_norm(problem, x)[0]
    else:
        def value(problem, x):
            return _o.objective(problem, rep.to_params(problem, x))

    def from_params(problem: Problem, p: _o.Params) -> EscapeState:
        return EscapeState(rep.from_params(problem, p), jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))

    def step(problem: Problem, x: EscapeState, lr) -> EscapeState:
        inner = rep.step(problem, x.inner, lr)
        steps = x.steps + (jnp.asarray(lr) != 0).astype(jnp.int32)
        below = value(problem, inner) < escape_threshold(problem, s, margin)
        escape = jnp.where((x.escape < 0) & below, steps, x.escape)
        return EscapeState(inner, steps, escape)

    def extras(problem: Problem, x: EscapeState) -> dict:
        out = dict(rep.extras(problem, x.inner)) if rep.extras is not None else {}
        dt = jnp.result_type(problem.dtype)
        out["escape_step"] = jnp.where(x.escape >= 0, x.escape.astype(dt), jnp.nan)
        return out

    return Representation(
        name=rep.name + "+escape",
        from_params=from_params,
        to_params=lambda problem, x: rep.to_params(problem, x.inner),
        step=step,
        value_and_grad_norm=lambda problem, x: rep.value_and_grad_norm(problem, x.inner),
        stats=lambda problem, x: rep.stats(problem, x.inner),
        flops_per_step=lambda p: rep.flops_per_step(p) + 2 * p.K * p.d * p.N,
        extras=extras,
    )


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


# ---------------------------------------------------------------------------------- hooks
def representation(problem: Problem, config) -> Representation:
    """The representation (state + step) the engine runs for ``config`` on ``problem``.

    GD keeps the exact full/collapsed choice of ``config.engine``; every other optimizer runs on
    full (W, H, b). Init ``saddle`` adds the escape-time recorder. Raises ConfigError for
    settings that need the problem to be checked (``validate_for_problem``).
    """
    validate_for_problem(problem, config)
    opt = config.optimizer
    if opt == "gd":
        rep = choose(problem, config.engine)
    elif opt == "flow":
        from ncflow.dynamics.flow import flow_representation

        rtol, atol = FLOW_TOLERANCES[problem.dtype]
        rep = flow_representation(config.rtol if config.rtol is not None else rtol,
                                  config.atol if config.atol is not None else atol, config.flow_time)
    else:
        rep = optax_representation(opt, optax_transform(config))
    if config.init == "saddle":
        rep = with_escape(rep, int(config.active))
    return rep


def default_lr(problem: Problem, config) -> float:
    """Default step size of ``config.optimizer``.

    * gd, flow (its initial dt): ``theory.default_step_size(problem, init_scale)`` (1/L);
    * momentum, nesterov: that × (1 − μ) (the heavy-ball effective step is lr/(1 − μ));
    * adam: :data:`ADAM_DEFAULT_LR` = 1e-3.
    """
    scale = config.init_scale if config.init_scale is not None else 1.0
    if config.init == "small":
        from ncflow.dynamics.starts import SMALL_FACTOR

        scale = scale * SMALL_FACTOR
    base = theory.default_step_size(problem, scale or 1.0)
    opt = config.optimizer
    if opt in ("momentum", "nesterov"):
        return base * (1.0 - momentum_of(config))
    if opt == "adam":
        return ADAM_DEFAULT_LR
    return base
