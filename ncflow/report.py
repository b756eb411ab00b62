"""The report text: the theory's prediction and a Result's outcome table, as people read them.

Pure formatting of objects computed elsewhere; no computation, no printing.
"""

from __future__ import annotations

import numpy as np

from ncflow.errors import ProblemError
from ncflow.maths import imbalanced, theory
from ncflow.problem import Problem


def median(a) -> float | None:
    """Median of the finite entries of ``a`` (shape (runs,)), or None if there are none."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def _vec(v, digits: int = 6) -> str:
    return "—" if v is None else "[" + ", ".join(f"{float(x):.{digits}g}" for x in v) + "]"


def _general_rows(problem: Problem, pred: theory.Prediction) -> list:
    """Rows of a THEORY §7 prediction (class sizes or targets)."""
    o = imbalanced.optimum(problem)
    sizes = "" if problem.class_sizes is None else " n_k=" + ",".join(map(str, problem.class_sizes))
    target = "" if problem.targets is None else f" targets {problem.K}×{problem.N}"
    rows = [
        ("problem", f"K={problem.K} d={problem.d}{sizes}{target} N={problem.N} λ_W={float(problem.lambda_w):g} "
                    f"λ_H={float(problem.lambda_h):g} bias={problem.bias_mode}"
                    + (f" λ_b={float(problem.lambda_b):g}" if problem.bias_mode == "regularized" else "")),
        ("σ_j of the target", _vec(o.sigma) + f"  (a direction survives iff σ_j > Nτ = {problem.N * o.tau:.6g})"),
        ("geometry", pred.geometry + ("" if pred.gram is not None or pred.geometry == "zero"
                                      else "  (Gram not unique: d cuts a tied eigenspace)")),
        ("active directions s", str(pred.rank)),
        ("f*", f"{pred.objective:.10g}"),
        ("‖w_k‖", _vec(pred.w_norms)),
        ("‖μ_k‖", _vec(pred.h_norms)),
        ("b*", _vec(pred.bias_vector)),
        ("merged classes", ", ".join("{" + ",".join(map(str, g)) + "}" for g in pred.merged) or "none"),
        ("vanished classes", ", ".join(map(str, pred.vanished)) or "none"),
    ]
    if o.bias_bound > 0:
        rows.append(("b* certified to", f"‖b − b*‖ ≤ {o.bias_bound:.2g} (‖∇F‖/λ_b)"))
    elif o.bias_bound != o.bias_bound:
        rows.append(("b* certified to", "not certified (d below the surviving directions: best of local roots)"))
    if (not problem.bias or float(problem.lambda_b) == 0.0) and pred.rank > 0:
        bound = imbalanced.saddle_curvature_bound(problem, ())
        rows.append(("saddle λ_min (Hessian)", f"≤ {bound:.6g} (at the origin)"))
    return rows


def prediction_json(problem: Problem, pred: theory.Prediction) -> dict:
    """The prediction as JSON (``ncflow theory --json``, the ``theory`` of a result's summary):
    :meth:`~ncflow.maths.theory.Prediction.to_json`, except that a problem with a target matrix
    (THEORY §7) has no ``c`` (a balanced one-hot notion) and instead what decides its optimum:
    ``target_singular_values`` σ_j of the target (descending), ``survival_threshold`` Nτ and
    ``surviving_directions``, the number of σ_j > Nτ (before the cut at d: ``rank``)."""
    out = pred.to_json()
    if problem.targets is None:
        return out
    o = imbalanced.optimum(problem)
    threshold = problem.N * o.tau
    sigma = np.asarray(o.sigma, np.float64)
    out.pop("c", None)
    return {"target_singular_values": sigma.tolist(), "survival_threshold": threshold,
            "surviving_directions": int(np.sum(sigma > threshold)), **out}


def has_classes(problem: Problem) -> bool:
    """Whether the samples belong to classes (false for a target matrix without labels or class
    sizes): only then do the class metrics NC1-NC4 mean anything."""
    return problem.label_vector() is not None


def format_prediction(problem: Problem, pred: theory.Prediction) -> str:
    """A readable table of the theory's prediction."""
    def fmt(v):
        return "—" if v is None else (f"{v:.10g}" if isinstance(v, float) else str(v))
    if problem.general:
        rows = _general_rows(problem, pred)
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
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


def _fates_lines(result) -> list[str]:
    """THEORY §7: the distances to the predicted MᵀM and W M, and the merged/vanished classes per run
    against the prediction."""
    pr = result.per_run
    pred = result.prediction
    m = {k: median(pr[k]) for k in ("gram_h_error", "cross_error", "nc1_weighted")}
    out = [f"Median (state at stop) MᵀM error {m['gram_h_error']:.2e}  W M error {m['cross_error']:.2e}  "
           f"NC1 (n_k-weighted Σ_B) {m['nc1_weighted']:.2e}"]
    want_m = "; ".join("{" + ",".join(map(str, g)) + "}" for g in pred.merged) or "none"
    want_v = ", ".join(map(str, pred.vanished)) or "none"
    out.append(f"Classes (theory)  merged {want_m}  vanished {want_v}"
               + ("" if pred.gram is not None else "  (Gram not unique: not compared)"))
    # a run stopped by the certificate (THEORY §8) is not converged: its state's classes have not
    # merged or vanished yet, while its limit, a global minimizer, has the theory's (unique) Grams
    certified = np.asarray(pr.get("stop", np.full(len(pr["merged"]), "")), dtype=object) == "certified"
    if certified.any():
        out.append(f"  certified {int(certified.sum()):>3}  their limit's classes are the theory's"
                   + ("" if pred.gram is not None else " (up to the non-unique Gram)")
                   + "; their state at the stop is not compared")
    combos: dict = {}
    for mg, vn in zip(pr["merged"][~certified], pr["vanished"][~certified]):
        key = ("; ".join("{" + g + "}" for g in mg.split(";")) if mg else "none", vn.replace(",", ", ") or "none")
        combos[key] = combos.get(key, 0) + 1
    for (mg, vn), count in sorted(combos.items(), key=lambda kv: -kv[1]):
        out.append(f"  runs {count:>6}  merged {mg}  vanished {vn}")
    if pred.gram is not None and (~certified).any():
        ok = int(np.sum(np.asarray(pr["classes_as_predicted"], bool)[~certified]))
        out.append(f"  as predicted: {ok} of {int((~certified).sum())} runs"
                   + (" (not stopped by the certificate)" if certified.any() else ""))
    return out


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
    advice = result.tolerances.advice(result.problem.dtype)  # the dtype cannot resolve the landscape
    if advice:
        lines.append(f"Note: {advice}")
    cert = result.certified()
    lines.append("")
    classes = has_classes(result.problem)
    if cert["stopped_there"]:
        st, lim = cert["step"], result.limit()
        lines.append(f"Certified global (THEORY §8) and stopped: {cert['stopped_there']} runs, at step min "
                     f"{st['min']:.0f}  median {st['median']:.0f}  max {st['max']:.0f}")
        nc = "  ".join(f"{k.upper()} {'—' if lim[k] is None else f'{lim[k]:.2e}'}" for k in ("nc1", "nc2", "nc3"))
        lines.append(f"  their limit (theory): f* = {lim['objective']:.10g}" + (f"  {nc}" if classes else ""))
    elif cert["count"]:
        st = cert["step"]
        lines.append(f"Certificate of THEORY §8 held (not used to stop) for {cert['count']} runs, first at step "
                     f"min {st['min']:.0f}  median {st['median']:.0f}  max {st['max']:.0f}")
    fo = result.final_objective()
    if fo["median"] is not None:
        lines.append(f"Final objective (state at stop)  min {fo['min']:.10g}  median {fo['median']:.10g}  "
                     f"max {fo['max']:.10g}   (f* = {result.prediction.objective:.10g})")
    m = {k: median(result.per_run[k]) for k in ("nc1", "nc2", "nc3", "gram_error")}
    if not classes:  # a target matrix without labels: no class metrics, only W Wᵀ against the theory's
        if m["gram_error"] is not None:
            lines.append(f"Median (state at stop) Gram error {m['gram_error']:.2e}  (no classes: no NC metrics)")
    elif all(v is not None for v in m.values()):
        lines.append(f"Median (state at stop) NC1 {m['nc1']:.2e}  NC2 {m['nc2']:.2e}  NC3 {m['nc3']:.2e}  "
                     f"Gram error {m['gram_error']:.2e}")
    if "merged" in result.per_run:
        lines += _fates_lines(result)
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
