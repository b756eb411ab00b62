"""The stop rule of the engine, as one pure function of per-lane numpy columns.

At each check (every ``chunk`` steps) a running lane

* DIVERGES if f or ||∇f|| is not finite, or |f| > 10⁶·max(1, |f_0|);
* CONVERGES if ||∇f|| <= tol and |f − f_prev| <= ftol, where tol is ``gtol`` near the predicted
  optimum (|f − f*| <= gap_tol) and ``strict_gtol`` (gtol/1000) anywhere else, so a run slowly
  leaving a saddle is not stopped there;
* is CERTIFIED (stop rule "certified" only) if the early certificate of THEORY §8 holds at this
  check (``certified``, computed by the caller; a converged run stays CONVERGED);
* stops with STEP_FAILED if its stepper failed, and with BUDGET once ``steps >= max_steps`` or its
  stepper is done (a flow horizon reached).

With ``early_stop=False`` only the last two apply (every run takes exactly its budget).
"""

from __future__ import annotations

import numpy as np

from ncflow.codes import BUDGET, CERTIFIED, CONVERGED, DIVERGED, RUNNING, STEP_FAILED

#: a run diverges once |f| exceeds this factor times max(1, |f_0|)
DIVERGENCE_FACTOR = 1e6


#: the window of the f-plateau test (THEORY §9.6's ReLU labels): f's change over the last this many steps
PLATEAU_STEPS = 1000


def plateau_columns(lanes, f, budget, xp=np) -> dict:
    """The lanes' ``f_mark`` (f at the last check that crossed a multiple of :data:`PLATEAU_STEPS`) and
    ``f_change`` (f minus the previous mark: f's change over the last ~1,000 steps; NaN before the first),
    after a check at which ``lanes.steps`` already includes this chunk's ``budget`` (lanes,). Exact
    windows when the chunk divides 1,000 (the default chunk 100 does); else the checks nearest them."""
    crossed = (lanes.steps // PLATEAU_STEPS) > ((lanes.steps - budget) // PLATEAU_STEPS)
    return {"f_change": xp.where(crossed, f - lanes.f_mark, lanes.f_change),
            "f_mark": xp.where(crossed, f, lanes.f_mark)}


def next_status(lanes, f: np.ndarray, g: np.ndarray, stepper_done: np.ndarray, stepper_failed: np.ndarray,
                certified: np.ndarray | None = None, *, early_stop: bool, max_steps: int, xp=np) -> np.ndarray:
    """The lanes' status after a check.

    Args:
        lanes: a :class:`~ncflow.batch.lanes.LaneTable` (status, steps already advanced, f0, f_prev
            and the tolerance columns), shape (lanes,) each.
        f, g: objective and full gradient norm at the check, (lanes,).
        stepper_done, stepper_failed: the stepper's own flags, (lanes,) bool.
        certified: where the certificate holds and the stop rule is "certified", (lanes,) bool;
            None = never.
        early_stop: apply the convergence and divergence tests.
        max_steps: the step budget (an int, or a traced scalar under ``xp=jax.numpy``).
        xp: numpy (the host rule of the cpu plan) or jax.numpy (the same rule traced inside the
            wide plan's device loop; the columns are then device arrays).

    Returns:
        The new status column, (lanes,) int8 (a new array; ``lanes`` is not modified).
    """
    status = lanes.status

    def put(where, code):
        return xp.where(where, xp.asarray(code, status.dtype), status)

    active = status == RUNNING
    if early_stop:
        finite = xp.isfinite(f) & xp.isfinite(g)
        ref = xp.maximum(1.0, xp.abs(lanes.f0))
        div = active & (~finite | (xp.abs(f) > DIVERGENCE_FACTOR * ref))
        at_opt = xp.abs(f - lanes.f_star) <= lanes.gap_tol
        tol = xp.where(at_opt, lanes.gtol, lanes.strict_gtol)
        conv = active & ~div & (g <= tol) & (xp.abs(f - lanes.f_prev) <= lanes.ftol)
        status = put(div, DIVERGED)
        status = put(conv, CONVERGED)
        if certified is not None:
            status = put(active & ~div & ~conv & certified, CERTIFIED)
    status = put((status == RUNNING) & stepper_failed, STEP_FAILED)
    return put((status == RUNNING) & ((lanes.steps >= max_steps) | stepper_done), BUDGET)
