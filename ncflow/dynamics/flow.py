"""Gradient flow ``dθ/dt = −∇f(θ)`` with an adaptive Runge–Kutta solver (diffrax), one step at a time.

The engine steps every run with the same one-run ``step`` vmapped over the runs, a fixed number
of times per chunk. Here one engine step is ONE attempted step of diffrax's Tsit5 solver under a
PID (here: integral) step-size controller: the step is accepted or rejected by the controller
and the next step size is adapted, exactly as ``diffrax.diffeqsolve`` does inside its loop, but
with the loop owned by the engine (so runs stop, compact and report like GD runs).

* The engine's per-run step size ``lr`` is the INITIAL step size dt0 (used until the first
  attempted step; afterwards the controller's proposal is carried in the state).
  ``lr = 0`` leaves the whole state unchanged (a lane past its budget).
* With ``flow_time = T`` every step is clipped to end at T; once ``t = T`` the state stays put.
* A bias-free problem keeps ``b = 0``: its gradient component is zero.

The flow time reached is reported per run as the ``flow_time`` column of the Result.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ncflow.maths import metrics as _m
from ncflow.maths import objective as _o
from ncflow.problem import Problem
from ncflow.dynamics.spaces import Representation

#: one Tsit5 step evaluates the vector field 6 times (FSAL)
STAGES = 6


class FlowState(NamedTuple):
    """Gradient-flow state of one run.

    Attributes:
        params: the current point θ(t) (W, H, b).
        t: flow time reached, ().
        dt: the step size of the next attempt, (); 0 = not started (the first attempt uses lr).
        t_end: the horizon T, () (inf: none); steps are clipped to end at T. Set from
            ``flow_time`` by ``from_params``; a caller driving the steps itself may replace it
            (``x._replace(t_end=T)``) to stop at several times with one compiled loop.
        solver_state: Tsit5's first-same-as-last state (a first-step flag and ∇ at θ(t)).
        controller_state: the PID controller's state (previous inverse scaled errors, dtmin flag).
    """

    params: _o.Params
    t: Float[Array, ""]
    dt: Float[Array, ""]
    t_end: Float[Array, ""]
    solver_state: Any
    controller_state: Any


def _vector_field(t, y: _o.Params, problem: Problem) -> _o.Params:
    del t
    g = _o.gradient(problem, y)
    return jax.tree_util.tree_map(jnp.negative, g)


def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


def flow_representation(rtol: float, atol: float, flow_time: float | None = None) -> Representation:
    """The gradient-flow :class:`Representation` (name ``"full+flow"``) on full (W, H, b).

    Args:
        rtol, atol: tolerances of the PID controller (error ``|err| / (atol + rtol·|y|)``, RMS).
        flow_time: horizon T (None: unbounded; the engine stops a run when it is stationary).
    """
    solver = diffrax.Tsit5()
    term = diffrax.ODETerm(_vector_field)
    controller = diffrax.PIDController(rtol=float(rtol), atol=float(atol))
    error_order = solver.error_order(term)
    horizon = math.inf if flow_time is None else float(flow_time)

    def from_params(problem: Problem, p: _o.Params) -> FlowState:
        dt = p.W.dtype
        zero = jnp.zeros((), dt)
        ss = solver.init(term, zero, zero, p, problem)
        cs = (jnp.ones((), dt), jnp.ones((), dt), jnp.zeros((), bool))
        return FlowState(p, zero, zero, jnp.asarray(horizon, dt), ss, cs)

    def step(problem: Problem, x: FlowState, lr) -> FlowState:
        dtype = x.t.dtype
        lr = jnp.asarray(lr, dtype)
        T = x.t_end
        h = jnp.where(x.dt > 0, x.dt, lr)
        clipped = x.t + h >= T
        t1 = jnp.where(clipped, T, x.t + h)
        live = (lr != 0) & (t1 > x.t)
        t1 = jnp.where(live, t1, x.t + jnp.where(lr != 0, lr, 1.0))  # a harmless step; discarded below
        y1, y_err, _, ss1, _ = solver.step(term, x.t, t1, x.params, problem, x.solver_state, made_jump=False)
        keep, next_t0, next_t1, _, cs1, _ = controller.adapt_step_size(
            x.t, t1, x.params, y1, problem, y_err, error_order, x.controller_state)
        cs1 = (cs1[0].astype(dtype), cs1[1].astype(dtype), jnp.asarray(cs1[2], bool))
        dt_next = (next_t1 - next_t0).astype(dtype)
        dt_next = jnp.where(jnp.isfinite(dt_next) & (dt_next > 0), dt_next, 0.2 * (t1 - x.t))  # non-finite error
        new = FlowState(
            params=_tree_where(keep, y1, x.params),
            t=jnp.where(keep, t1, x.t),
            dt=dt_next,
            t_end=x.t_end,
            solver_state=_tree_where(keep, ss1, x.solver_state),
            controller_state=cs1,
        )
        return _tree_where(live, new, x)

    def value_and_grad_norm(problem: Problem, x: FlowState):
        f, g = _o.value_and_gradient(problem, x.params)
        return f, jnp.sqrt(_o.tree_sq_norm(g))

    return Representation(
        name="full+flow",
        from_params=from_params,
        to_params=lambda problem, x: x.params,
        step=step,
        value_and_grad_norm=value_and_grad_norm,
        stats=lambda problem, x: _m.class_stats(problem, x.params),
        flops_per_step=lambda p: STAGES * 6 * p.K * p.d * p.N,
        done=lambda problem, x: x.t >= x.t_end,
        extras=lambda problem, x: {"flow_time": x.t},
    )
