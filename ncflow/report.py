"""The report text: the theory's prediction and a Result's outcome table, as people read them.

Pure formatting of objects computed elsewhere; no computation, no printing.
"""

from __future__ import annotations

import math

import numpy as np

from ncflow.errors import ProblemError
from ncflow.maths import certificate, deep, imbalanced, theory
from ncflow.problem import Problem
from ncflow.stats import wilson_interval


def median(a) -> float | None:
    """Median of the finite entries of ``a`` (shape (runs,)), or None if there are none."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


#: the per-layer columns of a deep run (THEORY §9.2; ``nc1_l0``.. for layer 0 = H, layer l after l weights)
LAYER_METRICS = ("nc1", "nc2", "nc3", "rank")


def layer_medians(per_run: dict) -> list:
    """Per-layer medians of a deep run's ``nc1_l{l}``, ``nc2_l{l}``, ``nc3_l{l}``, ``rank_l{l}`` columns (and
    ``rank_pre_l{l}`` as ``rank_pre`` where the model has them: deep ReLU, l >= 1):
    [{"layer": l, "nc1": …, "nc2": …, "nc3": …, "rank": …}] for l = 0, 1, … while the columns exist
    (empty for a model without them, e.g. depth 1); a median is None where no run has a finite value."""
    out = []
    while f"nc1_l{len(out)}" in per_run:
        i = len(out)
        out.append({"layer": i, **{k: median(per_run[f"{k}_l{i}"]) for k in LAYER_METRICS}})
        if f"rank_pre_l{i}" in per_run:  # the deep ReLU UFM: the rank of the pre-activations Z_l too
            out[-1]["rank_pre"] = median(per_run[f"rank_pre_l{i}"])
    return out


def _layer_lines(per_run: dict) -> list:
    """One line per layer: its median NC1, NC2, NC3 and class-mean rank (nothing at depth 1)."""
    rows = layer_medians(per_run)
    if not rows:
        return []

    def g(v, fmt):
        return "—" if v is None else format(v, fmt)
    lines = ["Per layer (median, state at stop; layer 0 = H, layer l = features after l weight layers)"]
    for row in rows:
        pre = f"  pre-activation rank {g(row['rank_pre'], 'g')}" if "rank_pre" in row else ""
        lines.append(f"  layer {row['layer']}  NC1 {g(row['nc1'], '.2e')}  NC2 {g(row['nc2'], '.2e')}  "
                     f"NC3 {g(row['nc3'], '.2e')}  rank {g(row['rank'], 'g')}{pre}")
    return lines


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


def _num(v) -> float | None:
    """A float for JSON: None for None, NaN and ±inf."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _nums(a) -> list | None:
    return None if a is None else [_num(v) for v in np.asarray(a, np.float64).ravel()]


def _deep_json(problem: Problem, p: deep.DeepPrediction) -> dict:
    """THEORY §9's deep linear prediction as JSON (see :func:`prediction_json`)."""
    f_star = p.objective
    return {
        "model": "deep_linear", "depth": p.L, "widths": list(p.widths), "activation": "linear",
        "c": p.c, "tau": p.tau, "x_plus": _num(deep.x_plus(p.c, p.L)), "x_minus": _num(deep.x_minus(p.c, p.L)),
        "c_exist": p.c_exist, "c_glob": p.c_glob, "geometry": p.geometry, "objective": f_star, "rank": p.rank,
        "origin_objective": p.origin_value,
        "minima": [{"rank": m.rank, "objective": m.value, "gap": m.value - f_star, "global": m.is_global}
                   for m in p.local_minima],
        "f_sad": _num(p.saddle_value), "saddle_gap": _num(p.saddle_gap),
        "layer_norms2": _nums(p.layer_norms2), "h_norm2": p.h_norm2,
        "w_norm": math.sqrt(float(p.layer_norms2[-1]) / p.K), "h_norm": math.sqrt(p.h_norm2 / p.N),
        "w_norms": _nums(p.w_norms), "h_norms": _nums(p.h_norms), "bias": _nums(p.bias),
        "gram_unique": p.gram_unique, "lambdas": list(p.lambdas), "lambda_h": p.lambda_h,
        "directions": [{"sigma": float(sg), "weight": float(w), "c": float(cj), "x_plus": _num(xp),
                        "x_minus": _num(xm), "alive": bool(a)}
                       for sg, w, cj, xp, xm, a in zip(p.sigma, p.weights, p.c_j, p.x_plus, p.x_minus, p.alive)],
        **({"class_sizes": [int(v) for v in problem.class_sizes]} if problem.class_sizes is not None else {}),
    }


def _relu_json(p: deep.ReluPrediction) -> dict:
    """THEORY §9.6's deep ReLU values as JSON (see :func:`prediction_json`)."""
    d = p.dnc
    minima = [{"rank": 0, "objective": p.origin_value, "kind": "origin"}]
    if d.exists:
        minima.append({"rank": p.K, "objective": d.loss, "kind": "dnc"})
    srg = None
    if p.srg is not None:
        s = p.srg
        srg = {"r": p.srg_r, "objective": _num(s.loss), "c": s.c, "x_plus": _num(s.x_plus), "exists": s.exists,
               "beats_zero": s.beats_zero, "ratio_to_dnc": _num(s.loss / d.loss) if s.exists and d.exists else None}
    return {
        "model": "deep_relu", "depth": p.L, "widths": list(p.widths), "activation": "relu", "c": p.c, "tau": p.tau,
        "c_exist": p.c_exist, "c_glob": p.c_glob, "objective": None, "rank": None, "f_sad": None,
        "origin_objective": p.origin_value, "minima": minima,
        "dnc_objective": _num(d.loss), "dnc_exists": d.exists, "dnc_beats_zero": d.beats_zero,
        "dnc_x_plus": _num(d.x_plus), "dnc_w_norm": d.w_norm, "dnc_h_norm": d.h_norm,
        "dnc_layer_norms2": _nums(p.layer_norms2), "dnc_feature_norms": _nums(p.feature_norms),
        "srg": srg, "lambdas": list(p.lambdas), "lambda_h": p.lambda_h,
    }


def prediction_json(problem: Problem, pred) -> dict:
    """The prediction as JSON (``ncflow theory --json``, the ``theory`` of a result's summary):
    :meth:`~ncflow.maths.theory.Prediction.to_json`, except that a problem with a target matrix
    (THEORY §7) has no ``c`` (a balanced one-hot notion) and instead what decides its optimum:
    ``target_singular_values`` σ_j of the target (descending), ``survival_threshold`` Nτ and
    ``surviving_directions``, the number of σ_j > Nτ (before the cut at d: ``rank``).

    Depth > 1 (THEORY §9), deep linear: ``model`` "deep_linear", ``depth``, ``widths`` (d_0..d_{L−1}),
    ``c``, ``tau``, ``x_plus``/``x_minus`` (the roots at c), ``c_exist``, ``c_glob``, ``geometry``,
    ``objective`` (f*), ``rank``, ``origin_objective`` (f_0), ``minima`` (every rank-r local minimum:
    ``rank``, ``objective`` f_r, ``gap`` f_r − f*, ``global``), ``f_sad`` and ``saddle_gap`` (null: no
    other critical point), ``layer_norms2`` (‖W_l‖_F², l = 1..L), ``h_norm2``, ``w_norm``/``h_norm``
    (rms), ``w_norms``/``h_norms`` (per class; null where not unique), ``bias`` (b*, null bias-free),
    ``gram_unique``, ``lambdas``, ``lambda_h``, ``directions`` (per target direction in the c-order:
    ``sigma``, ``weight``, ``c``, ``x_plus``, ``x_minus``, ``alive``). Deep ReLU: ``model`` "deep_relu",
    ``objective``/``rank``/``f_sad`` null (not known in closed form), ``minima`` (the origin and, where
    it exists, DNC), ``dnc_objective`` (L_DNC, null where DNC is no critical point), ``dnc_exists``,
    ``dnc_beats_zero``, ``dnc_x_plus``, ``dnc_w_norm``, ``dnc_h_norm``, ``dnc_layer_norms2``,
    ``dnc_feature_norms`` (‖μ_k‖ of H_1..H_L) and ``srg`` (the simple low-rank family where K = C(r, 2):
    ``r``, ``objective``, ``c``, ``x_plus``, ``exists``, ``beats_zero``, ``ratio_to_dnc``; else null).
    NaN and infinities are null."""
    if isinstance(pred, deep.DeepPrediction):
        return _deep_json(problem, pred)
    if isinstance(pred, deep.ReluPrediction):
        return _relu_json(pred)
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


def _g(v, digits: int = 4) -> str:
    return f"{v:.{digits}g}"


def _threshold_sentence(p: deep.DeepPrediction) -> str:
    """Where c stands against THEORY §9.1's thresholds, in words."""
    ce, cg = p.c_exist, p.c_glob
    if np.allclose(p.c_j, p.c_j[0], rtol=1e-12, atol=0.0):
        c = float(p.c_j[0])
        if c < cg:
            return f"c = {_g(c)} < c_glob = {_g(cg)}: the alive root beats the origin"
        if c < ce:
            return (f"c_glob = {_g(cg)} <= c = {_g(c)} < c_exist = {_g(ce)}: alive local minima exist, but the origin "
                    "W = H = 0 is global")
        return f"c = {_g(c)} >= c_exist = {_g(ce)}: no alive root; the origin W = H = 0 is the only critical point"
    J = p.c_j.size
    beat, exist = int(np.sum(p.c_j < cg)), int(np.sum(p.c_j < ce))
    return (f"c_j in [{_g(p.c_j.min())}, {_g(p.c_j.max())}]: {beat} of {J} directions have c_j < c_glob (alive beats "
            f"dead), {exist} of {J} have c_j < c_exist (an alive root exists)")


def _rows_text(rows: list) -> list[str]:
    width = max(len(r[0]) for r in rows)
    return [f"  {k.ljust(width)}  {v}" for k, v in rows]


def _deep_problem_text(problem: Problem) -> str:
    sizes = f"n_k={','.join(map(str, problem.class_sizes))}" if problem.class_sizes is not None else f"n={problem.n}"
    lams = ",".join(f"{float(v):g}" for v in problem.layer_lambdas)
    widths = ",".join(map(str, problem.layer_widths))
    return (f"K={problem.K} {sizes} depth L={problem.depth} widths d_0..d_L-1={widths} "
            f"activation={problem.activation} λ_1..λ_L={lams} λ_H={float(problem.lambda_h):g} bias={problem.bias_mode}"
            + (f" λ_b={float(problem.lambda_b):g}" if problem.bias_mode == "regularized" else ""))


def _format_deep(problem: Problem, p: deep.DeepPrediction) -> str:
    """THEORY §9's deep linear prediction as text."""
    equal = bool(np.allclose(p.c_j, p.c_j[0], rtol=1e-12, atol=0.0))
    xp, xm = deep.x_plus(p.c, p.L), deep.x_minus(p.c, p.L)
    roots = (f"{_g(xp, 10)}  (x_− = {_g(xm, 6)}, a saddle between 0 and x_+)" if xp == xp
             else "none (c >= c_exist)")
    cap = min(p.d_min, p.sigma.size)
    rows = [
        ("problem", _deep_problem_text(problem)),
        ("c = K(nλ_HΠλ_l)^(1/(L+1))", _g(p.c, 10) + ("" if problem.class_sizes is None else "  (at n = N/K)")),
    ]
    if equal:
        rows.append(("x_+ (alive root at c)", roots))
    else:  # class sizes, or (C)'s 1-direction: each direction has its own c_j and roots
        rows += [("c_j (per direction)", _vec(p.c_j, 4)), ("x_+ (per direction)", _vec(p.x_plus, 4))]
    rows += [
        ("thresholds", f"c_exist = {_g(p.c_exist, 10)}  c_glob = {_g(p.c_glob, 10)}"),
        ("", _threshold_sentence(p)),
    ]
    rows += [
        ("geometry", p.geometry + ("" if p.gram_unique else "  (Gram not unique: d_min cuts a tied group)")),
        ("rank", f"{p.rank} (at most min(d_min, directions) = {cap})"),
        ("f*", _g(p.objective, 10)),
        ("f_sad", "+inf (the optimum is the only critical point)" if not math.isfinite(p.saddle_value)
         else f"{_g(p.saddle_value, 10)}  (f_sad − f* = {_g(p.saddle_gap, 6)}: the lowest non-global critical value)"),
        ("‖W_l‖_F², l = 1..L", _vec(p.layer_norms2)),
        ("‖H‖_F²", _g(p.h_norm2, 6)),
        ("‖w_k‖ (rows of W_L)", _vec(p.w_norms)),
        ("‖μ_k‖ (class means of H)", _vec(p.h_norms)),
        ("b*", _vec(p.bias)),
    ]
    lines = _rows_text(rows)
    lines.append("  Local minima by rank (THEORY §9.2: the first r directions alive at x_+, the others dead)")
    lines.append(f"    {'rank':>4}  {'f_r':<16}f_r − f*")
    for m in p.local_minima:
        kind = "origin W = H = 0" if m.rank == 0 else ""
        status = "global" if m.is_global else ("local minimum" if p.L > 1 else "")
        note = ", ".join(t for t in (kind, status) if t)
        lines.append(f"    {m.rank:>4}  {m.value:<16.10g}{m.value - p.objective:<14.6g}{note}".rstrip())
    return "\n".join(lines)


def _format_relu(problem: Problem, p: deep.ReluPrediction) -> str:
    """THEORY §9.6's deep ReLU values as text."""
    d = p.dnc
    if d.exists:
        dnc = f"L_DNC = {_g(d.loss, 10)}  (a critical point; numerically a local minimum)"
        beats = (f"yes: L_DNC < 1/2 (c = {_g(p.c)} < c_glob = {_g(p.c_glob)})" if d.beats_zero
                 else f"no: the origin (1/2) is lower (c = {_g(p.c)} >= c_glob = {_g(p.c_glob)})")
    else:
        why = (f"a width below K = {p.K}" if min(p.widths) < p.K
               else f"c = {_g(p.c)} >= c_exist = {_g(p.c_exist)}")
        dnc, beats = f"does not exist ({why})", "—"
    rows = [
        ("problem", _deep_problem_text(problem)),
        ("c = K(nλ_HΠλ_l)^(1/(L+1))", _g(p.c, 10)),
        ("thresholds", f"c_exist = {_g(p.c_exist, 10)}  c_glob = {_g(p.c_glob, 10)}"),
        ("DNC (THEORY §9.6)", dnc),
        ("DNC beats the origin", beats),
    ]
    if d.exists:
        rows += [
            ("DNC geometry", f"every layer's class means an orthogonal frame on K coordinate axes; outputs x_+ Y, "
                             f"x_+ = {_g(d.x_plus, 10)}"),
            ("‖W_l‖_F², l = 1..L", _vec(p.layer_norms2)),
            ("‖μ_k‖ of H_1..H_L", _vec(p.feature_norms)),
            ("‖w_k‖ (rows of W_L)", _g(d.w_norm, 6)),
        ]
    rows.append(("origin W = H = 0", "f = 1/2 (a strict local minimum)"))
    if p.srg is None:
        rows.append(("low rank (SRG)", f"K = {p.K} is not C(r, 2): no simple SRG family"))
    else:
        s = p.srg
        if s.exists:
            ratio = f", {_g(s.loss / d.loss, 3)} L_DNC" if d.exists else ""
            rows.append(("low rank (SRG)", f"K = C({p.srg_r}, 2): simple family L_SRG = {_g(s.loss, 10)}{ratio} "
                                           "(an upper bound: free entries and GD go lower)"))
        else:
            rows.append(("low rank (SRG)", f"K = C({p.srg_r}, 2): the simple family is no critical point here "
                                           f"(a width below r = {p.srg_r}, or c_s >= c_exist)"))
    rows.append(("global minimum", "not known in closed form (low-rank solutions can beat DNC: THEORY §9.6)"))
    return "\n".join(_rows_text(rows))


def format_prediction(problem: Problem, pred) -> str:
    """A readable table of the theory's prediction (depth > 1: THEORY §9's, with the table of local
    minima by rank for deep linear, the DNC and SRG values for deep ReLU)."""
    if isinstance(pred, deep.DeepPrediction):
        return _format_deep(problem, pred)
    if isinstance(pred, deep.ReluPrediction):
        return _format_relu(problem, pred)

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
    predicted = hasattr(pred, "merged")  # the deep UFM's prediction names no class fates
    gram = pred.gram if predicted else None
    if predicted:
        want_m = "; ".join("{" + ",".join(map(str, g)) + "}" for g in pred.merged) or "none"
        want_v = ", ".join(map(str, pred.vanished)) or "none"
        out.append(f"Classes (theory)  merged {want_m}  vanished {want_v}"
                   + ("" if gram is not None else "  (Gram not unique: not compared)"))
    else:
        out.append("Classes (last layer; the theory names no class fates here: not compared)")
    # a run stopped by the certificate (THEORY §8) is not converged: its state's classes have not
    # merged or vanished yet, while its limit, a global minimizer, has the theory's (unique) Grams
    certified = np.asarray(pr.get("stop", np.full(len(pr["merged"]), "")), dtype=object) == "certified"
    if certified.any():
        out.append(f"  certified {int(certified.sum()):>3}  their limit's classes are the theory's"
                   + ("" if gram is not None else " (up to the non-unique Gram)")
                   + "; their state at the stop is not compared")
    combos: dict = {}
    for mg, vn in zip(pr["merged"][~certified], pr["vanished"][~certified]):
        key = ("; ".join("{" + g + "}" for g in mg.split(";")) if mg else "none", vn.replace(",", ", ") or "none")
        combos[key] = combos.get(key, 0) + 1
    for (mg, vn), count in sorted(combos.items(), key=lambda kv: -kv[1]):
        out.append(f"  runs {count:>6}  merged {mg}  vanished {vn}")
    if gram is not None and (~certified).any():
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
    if result.tolerances.rule == "relu":
        return (f"Note: {n} of {result.runs} runs ended their budget of {result.config['max_steps']} steps still "
                "moving (f changed by more than the plateau tolerance over the last 1,000 steps): not_converged; "
                "a larger --max-steps lets them settle")
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
    ranks = result.rank_counts() or {}
    for label, o in result.outcomes().items():
        lo, hi = o["ci95"]
        lines.append(f"  {label:<14}{o['count']:>7}{o['fraction']:>10.3f}   [{lo:.3f}, {hi:.3f}]")
        if label in ("global", "local_min", "low_rank", "other"):  # a model with ranks: runs per rank (§9.2, §9.6)
            for r, k in ranks.get(label, {}).items():
                lo, hi = wilson_interval(k, result.runs)
                lines.append(f"    {f'(rank {r})':<12}{k:>7}{k / result.runs:>10.3f}   [{lo:.3f}, {hi:.3f}]")
    advice = result.tolerances.advice(result.problem.dtype)  # the dtype cannot resolve the landscape
    if advice:
        lines.append(f"Note: {advice}")
    if result.tolerances.rule == "relu":
        m = result.tolerances.plateau
        lines.append(f"Labels (THEORY §9.6; ReLU runs never pass a gradient test, so each takes its budget): an "
                     f"f-plateau (|Δf| <= {m:.2g} over the last 1,000 steps), then f against L_DNC (low_rank: "
                     f"f < L_DNC − {m:.2g}; dnc: within [−{m:.2g}, {10 * m:.2g}] of it, every class-mean rank K, "
                     "NC2 < 0.2); rank = the smallest class-mean rank of any layer (σ_i/σ_1 > 1e-3)")
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
    elif result.stop_rule == "certified" and result.problem.depth > 1 \
            and float(result.config["lr"]) >= (eta := certificate.step_limit(result.problem)):  # NaN: no line
        lines.append(f"The certificate of THEORY §9.3 needs η < {eta:.2g} at this problem; runs stopped by the "
                     "converged rule")
    fo = result.final_objective()
    if fo["median"] is not None:
        pred = result.prediction
        ref = f"f* = {pred.objective:.10g}" if pred.objective is not None else \
            f"L_DNC = {pred.reference:.10g}; the global minimum is not known"
        lines.append(f"Final objective (state at stop)  min {fo['min']:.10g}  median {fo['median']:.10g}  "
                     f"max {fo['max']:.10g}   ({ref})")
    m = {k: median(result.per_run[k]) for k in ("nc1", "nc2", "nc3", "gram_error")}
    if not classes:  # a target matrix without labels: no class metrics, only W Wᵀ against the theory's
        if m["gram_error"] is not None:
            lines.append(f"Median (state at stop) Gram error {m['gram_error']:.2e}  (no classes: no NC metrics)")
    elif all(v is not None for v in m.values()):
        lines.append(f"Median (state at stop) NC1 {m['nc1']:.2e}  NC2 {m['nc2']:.2e}  NC3 {m['nc3']:.2e}  "
                     f"Gram error {m['gram_error']:.2e}")
    if classes:
        lines += _layer_lines(result.per_run)
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
