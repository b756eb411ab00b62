"""The report text: the theory's prediction and a Result's outcome table, as people read them.

Pure formatting of objects computed elsewhere; no computation, no printing.
"""

from __future__ import annotations

import numpy as np

from ncflow.errors import ProblemError
from ncflow.maths import theory
from ncflow.problem import Problem


def median(a) -> float | None:
    """Median of the finite entries of ``a`` (shape (runs,)), or None if there are none."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def format_prediction(problem: Problem, pred: theory.Prediction) -> str:
    """A readable table of the theory's prediction."""
    def fmt(v):
        return "—" if v is None else (f"{v:.10g}" if isinstance(v, float) else str(v))
    rows = [
        ("problem", f"K={problem.K} d={problem.d} n={problem.n} λ_W={float(problem.lambda_w):g} "
                    f"λ_H={float(problem.lambda_h):g} bias={problem.bias_mode}"
                    + (f" λ_b={float(problem.lambda_b):g}" if problem.bias_mode == "regularized" else "")),
        ("c = K√(nλ_Wλ_H)", fmt(pred.c)),
        ("geometry", pred.geometry),
        ("active directions s", str(pred.rank)),
        ("f*", fmt(pred.objective)),
        ("‖w_k‖ (rms)", fmt(pred.w_norm)),
        ("‖h_k‖ (rms)", fmt(pred.h_norm)),
        ("b* (each entry)", fmt(pred.bias)),
    ]
    if problem.loss == "mse" and pred.rank > 0 and pred.c < 1:
        try:
            rows.append(("saddle λ_min (Hessian)", fmt(theory.saddle_min_eigenvalue(problem))))
        except ProblemError:
            pass
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def budget_hint(result) -> str | None:
    """A line when the step budget, not the landscape, decided some outcomes: runs labelled
    ``not_converged`` that stopped because they used their whole budget."""
    stop = np.asarray(result.per_run.get("stop", []))
    outcome = np.asarray(result.per_run["outcome"])
    if stop.shape != outcome.shape:
        return None
    n = int(np.sum((outcome == "not_converged") & (stop == "budget")))
    if n == 0:
        return None
    return (f"Note: {n} of {result.runs} runs used their whole budget of {result.config['max_steps']} steps without "
            "becoming stationary: the budget, not the landscape, decided their outcome (not_converged); a larger "
            "--max-steps (or a looser --gtol) lets them finish")


def format_result(result) -> str:
    """The report of a :class:`~ncflow.result.Result`: prediction, outcome table with 95%
    intervals, final objective, median NC metrics, steps and timing."""
    lines = ["Theory prediction", format_prediction(result.problem, result.prediction), ""]
    lines.append(f"Outcomes of {result.runs} runs ({result.representation} engine, {result.problem.dtype}, "
                 f"lr={result.config['lr']:.4g}, init scale {result.config['init_scale']:g}, "
                 f"budget {result.config['max_steps']} steps, stop rule {result.stop_rule})")
    lines.append(f"  {'outcome':<14}{'count':>7}{'fraction':>10}   95% interval")
    for label, o in result.outcomes().items():
        lo, hi = o["ci95"]
        lines.append(f"  {label:<14}{o['count']:>7}{o['fraction']:>10.3f}   [{lo:.3f}, {hi:.3f}]")
    cert = result.certified()
    lines.append("")
    if cert["stopped_there"]:
        st, lim = cert["step"], result.limit()
        lines.append(f"Certified global (THEORY §8) and stopped: {cert['stopped_there']} runs, at step min "
                     f"{st['min']:.0f}  median {st['median']:.0f}  max {st['max']:.0f}")
        nc = "  ".join(f"{k.upper()} {'—' if lim[k] is None else f'{lim[k]:.2e}'}" for k in ("nc1", "nc2", "nc3"))
        lines.append(f"  their limit (theory): f* = {lim['objective']:.10g}  {nc}")
    elif cert["count"]:
        st = cert["step"]
        lines.append(f"Certificate of THEORY §8 held (not used to stop) for {cert['count']} runs, first at step "
                     f"min {st['min']:.0f}  median {st['median']:.0f}  max {st['max']:.0f}")
    fo = result.final_objective()
    if fo["median"] is not None:
        lines.append(f"Final objective (state at stop)  min {fo['min']:.10g}  median {fo['median']:.10g}  "
                     f"max {fo['max']:.10g}   (f* = {result.prediction.objective:.10g})")
    m = {k: median(result.per_run[k]) for k in ("nc1", "nc2", "nc3", "gram_error")}
    if all(v is not None for v in m.values()):
        lines.append(f"Median (state at stop) NC1 {m['nc1']:.2e}  NC2 {m['nc2']:.2e}  NC3 {m['nc3']:.2e}  "
                     f"Gram error {m['gram_error']:.2e}")
    hint = budget_hint(result)
    if hint:
        lines.append(hint)
    st = result.per_run["steps"]
    lines.append(f"Steps per run  min {int(st.min())}  median {int(np.median(st))}  max {int(st.max())}")
    t = result.timing
    lines.append(f"Timing  compile {t['compile_s']:.2f} s  run {t['run_s']:.2f} s  classify "
                 f"{t['classify_s']:.2f} s  wall {t['wall_s']:.2f} s  "
                 f"{t['run_steps_per_s']:.3g} run-steps/s  ({result.device}, plan {t.get('plan', 'cpu')})")
    return "\n".join(lines)
