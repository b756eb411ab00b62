"""Status codes of a run while the engine works on it, and the outcome labels it ends with.

A leaf module: everything else may import it; it imports nothing of ncflow.
"""

from __future__ import annotations

#: a lane that holds no run (padding of the run axis)
PADDING = -1
#: still stepping
RUNNING = 0
#: met the stopping rule (stationary)
CONVERGED = 1
#: non-finite values, or |f| grew past 10⁶·max(1, |f_0|)
DIVERGED = 2
#: out of budget (max_steps), or stopped by its stepper (a flow horizon reached)
BUDGET = 3
#: the stepper itself failed (e.g. the ODE solver could not take a step): an outcome, not an error
STEP_FAILED = 4
#: certified global by the early certificate of THEORY §8 (stop rule "certified")
CERTIFIED = 5

#: why a run stopped, by status code (the per-run ``stop`` column)
STOP_REASONS = {RUNNING: "running", CONVERGED: "converged", DIVERGED: "diverged", BUDGET: "budget",
                STEP_FAILED: "step_failed", CERTIFIED: "certified"}

#: outcome labels of a finished run of the one-layer and the deep linear UFM, in report order (codes 0–4)
LABELS = ("global", "saddle", "local_min", "not_converged", "diverged")
#: outcome labels of a deep ReLU UFM run (THEORY §9.6: no global minimum is known in closed form), in
#: report order: deep neural collapse, a loss below DNC's (low-rank), anything else at a plateau
#: (e.g. merged classes), then as above
RELU_LABELS = ("dnc", "low_rank", "other", "not_converged", "diverged")
#: every label any model reports (codes 0–7), the categories of a table that mixes models
ALL_LABELS = LABELS + RELU_LABELS[:3]
