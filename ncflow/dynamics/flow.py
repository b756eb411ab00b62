"""Gradient flow ``dθ/dt = −∇f(θ)`` with an adaptive Runge–Kutta solver (diffrax), one step at a time.

The engine steps every run with the same one-run ``step`` vmapped over the runs, a fixed number
of times per chunk. Here one engine step is ONE attempted step of diffrax's Tsit5 solver under a
PID (here: integral) step-size controller: the step is accepted or rejected by the controller
and the next step size is adapted, exactly as ``diffrax.diffeqsolve`` does inside its loop, but
with the loop owned by the engine (so runs stop, compact and report like GD runs).

* The engine's per-run step size ``lr`` is the INITIAL step size dt0 (used until the first
  attempted step; afterwards the controller's proposal is carried in the state).
* With ``flow_time = T`` every step is clipped to end at T; once ``t = T`` the state stays put.
* A bias-free problem keeps ``b = 0``: its gradient component is zero.

The flow time reached is reported per run as the ``flow_time`` column of the Result. The solver's
and the controller's result codes are kept: a step either of them reports as failed is not taken,
and the run stops with that failure as its outcome (``Stepper.failed``), never silently.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ncflow.dynamics.steppers import Stepper
from ncflow.maths import objective as _o
from ncflow.problem import Problem

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
        controller_state: the PID controller's state, from ``controller.init`` (previous inverse
            scaled errors, dtmin flag).
        failed: whether the solver or the controller reported a failure (sticky), ().
    """

    params: _o.Params
    t: Float[Array, ""]
    dt: Float[Array, ""]
    t_end: Float[Array, ""]
    solver_state: Any
    controller_state: Any
    failed: Bool[Array, ""]


def _vector_field(t, y: _o.Params, problem: Problem) -> _o.Params:
    del t
    g = _o.gradient(problem, y)
    return jax.tree_util.tree_map(jnp.negative, g)


def _vector_field_fn(terms, t, y, args):
    """The ``func`` argument of ``controller.init``: the vector field of ``terms`` at (t, y)."""
    return terms.vf(t, y, args)


def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


@dataclasses.dataclass(frozen=True)
class Flow(Stepper):
    """Gradient flow on full (W, H, b): one attempted Tsit5 step under a PID controller per step.

    Attributes:
        rtol, atol: tolerances of the controller (error ``|err| / (atol + rtol·|y|)``, RMS).
        flow_time: horizon T (None: unbounded; the engine stops a run when it is stationary).
        dtmin: smallest step the controller may propose (None: no floor). A proposal below it is a
            failure (diffrax's ``dt_min_reached``): the run stops with status STEP_FAILED.
    """

    rtol: float
    atol: float
    flow_time: float | None = None
    dtmin: float | None = None

    name = "flow"

    def _parts(self):
        import diffrax  # imported on first use: diffrax takes ~1.5 s to import, and only flow runs need it

        solver = diffrax.Tsit5()
        term = diffrax.ODETerm(_vector_field)
        controller = diffrax.PIDController(rtol=float(self.rtol), atol=float(self.atol),
                                           dtmin=None if self.dtmin is None else float(self.dtmin),
                                           force_dtmin=False)
        return solver, term, controller

    @staticmethod
    def _results():
        import diffrax

        return diffrax.RESULTS

    def supports(self, space):
        return space.name == "full"

    def init(self, space, problem: Problem, point: _o.Params) -> FlowState:
        solver, term, controller = self._parts()
        dt = point.W.dtype
        zero = jnp.zeros((), dt)
        ss = solver.init(term, zero, zero, point, problem)
        # dt0 is only a placeholder here: the first attempted step uses the engine's lr
        _, cs = controller.init(term, zero, zero, point, jnp.ones((), dt), problem, _vector_field_fn,
                                solver.error_order(term))
        cs = (jnp.asarray(cs[0], dt), jnp.asarray(cs[1], dt), jnp.asarray(cs[2], bool))
        horizon = math.inf if self.flow_time is None else float(self.flow_time)
        return FlowState(point, zero, zero, jnp.asarray(horizon, dt), ss, cs, jnp.zeros((), bool))

    def point(self, state: FlowState) -> _o.Params:
        return state.params

    def step(self, space, problem: Problem, x: FlowState, lr) -> FlowState:
        solver, term, controller = self._parts()
        dtype = x.t.dtype
        lr = jnp.asarray(lr, dtype)
        T = x.t_end
        h = jnp.where(x.dt > 0, x.dt, lr)
        clipped = x.t + h >= T
        t1 = jnp.where(clipped, T, x.t + h)
        live = (t1 > x.t) & ~x.failed
        t1 = jnp.where(live, t1, x.t + lr)  # a harmless step; discarded below
        y1, y_err, _, ss1, solver_result = solver.step(term, x.t, t1, x.params, problem, x.solver_state,
                                                       made_jump=False)
        keep, next_t0, next_t1, _, cs1, controller_result = controller.adapt_step_size(
            x.t, t1, x.params, y1, problem, y_err, solver.error_order(term), x.controller_state)
        ok = self._results().successful
        failed = (solver_result != ok) | (controller_result != ok)
        keep = keep & ~failed
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
            failed=x.failed | failed,
        )
        return _tree_where(live, new, x)

    def done(self, problem, state: FlowState):
        return state.t >= state.t_end

    def failed(self, problem, state: FlowState):
        return state.failed

    def extras(self, problem, state: FlowState):
        return {"flow_time": state.t}

    def extra_flops(self, space, problem):
        return (STAGES - 1) * space.flops_per_step(problem)
