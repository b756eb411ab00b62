"""Outcome classification of finished runs against the theory, and its tolerances.

Labels (in this order, codes 0–4):

* ``global``: stationary (||∇f|| <= gtol), |f − f*| <= gap_tol and the Gram of W matches the
  predicted geometry (ETF / orthogonal frame / zero / rank-limited spectrum) within geom_tol (with
  class sizes or targets, THEORY §7: W Wᵀ, MᵀM and W M against the predicted matrices, or the
  spectrum of W Wᵀ where the Gram is not unique) — or
  certified by the early certificate of THEORY §8 (stop rule "certified": the run's LIMIT is a
  global minimizer; its state at the stop is not stationary, see ``certified_step``);
* ``saddle``: stationary, not global, its value within gap_tol of a NON-global critical value of
  the landscape (THEORY §3, §7: ``ncflow.maths.critical``), and Lanczos on Hessian-vector products
  finds a Ritz value below −neg_tol·max(1, |λ_max|). A Ritz value is an upper bound on λ_min, so
  this *certifies* negative curvature;
* ``local_min``: stationary to the dtype's own tolerance too (``Tolerances.own_gtol``), not
  global, at a non-global critical value, and no negative curvature found although the landscape's
  weakest saddle curvature is one Lanczos resolves (the theory says this never happens for
  d >= K−1; ncflow reports it if it does);
* ``not_converged``: finite but not stationary when the budget ran out — or stationary but not
  shown to be at a critical point: away from every critical value, or in a landscape the dtype
  cannot resolve (``Tolerances.resolved``: its critical values lie closer together than the
  rounding of f; the report then advises float64);
* ``diverged``: non-finite values, or |f| grew past 10⁶·max(1, |f_0|).

Every tolerance is bounded by the landscape's own scale: gap_tol <= (f_sad − f*)/20, and gtol <=
sqrt(2 μ gap_tol) with μ the slowest curvature at the optimum (the radial curvature of its
weakest direction included, which vanishes as c → 1), so that neither the stop rule nor the labels
can take a point between two critical values for either of them. Where the theory gives no
landscape (rescaled MSE, a regularized bias with class sizes or with d <= K, λ_W λ_H = 0:
``Tolerances.offsets`` None), the value test is skipped and the dtype's own tolerances decide.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ncflow.codes import CERTIFIED, DIVERGED, LABELS, RELU_LABELS  # noqa: F401  (LABELS re-exported)
from ncflow.maths import critical
from ncflow.maths.deep import DeepPrediction, ReluPrediction
from ncflow.maths.theory import Prediction
from ncflow.problem import Problem

#: relative objective accuracy a converged run is asked for, by dtype
TARGET_REL = {"float64": 1e-11, "float32": 1e-4}
#: relative Gram tolerance of the geometry check, by dtype
GEOM_TOL = {"float64": 1e-4, "float32": 5e-2}
#: floor of the gradient tolerance (rounding floor of the gradient), by dtype
GTOL_FLOOR = {"float64": 1e-12, "float32": 1e-6}
#: the value window of the landscape: gap_tol is at most this fraction of f_sad − f*, inside the
#: certificate's 10% margin, so a run certified global can never be taken for a saddle
LANDSCAPE_FRACTION = 1.0 / 20
#: the rounding of a computed objective, relative to its scale S, in units of the dtype's eps
ROUNDING_EPS = 100
#: the classifier's value windows exceed gap_tol by this fraction of the rounding bound: the summaries
#: evaluate f again, a few ulps away from the value the stop rule saw
RECHECK_FRACTION = 0.1
#: Lanczos resolves a curvature this many times neg_tol (a local_min claim needs it)
CURVATURE_MARGIN = 10.0
#: the deep ReLU UFM (THEORY §9.6), relative to S = max(L_DNC, 1e-2): ``low_rank`` needs f < L_DNC − m S,
#: ``dnc`` −m S < f − L_DNC < 10 m S, and every label but diverged needs an f-plateau: |Δf| <= m S over the
#: last 1,000 steps (``ncflow.batch.stop.PLATEAU_STEPS``)
RELU_MARGIN = 1e-3
#: ``dnc`` needs the last features' NC2 against the orthogonal frame below this (THEORY §9.6: it decays
#: sublinearly, ≈ 0.07 after 30k steps at lr 0.5)
RELU_NC2 = 0.2


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Tolerances of one problem's stopping rule and classification.

    Attributes:
        gtol: stationarity: ||∇f|| <= gtol.
        ftol: the objective changed by at most ftol over the last check interval (stopping).
        gap_tol: |f − f*| <= gap_tol for ``global``; also the window of "at a critical value".
        geom_tol: relative Gram error <= geom_tol for ``global``.
        neg_tol: negative curvature threshold, relative to max(1, |λ_max|).
        strict_gtol: stopping tolerance away from the predicted optimum: gtol/1000 (never below
            the dtype's rounding floor). Near a saddle the gradient can be below gtol while the
            run is still escaping; only a run stationary to this tolerance (e.g. one started
            exactly at a critical point) stops there. Classification still uses gtol.
        own_gtol: the dtype's and problem's own stationarity tolerance (what gtol is when the user
            gives none). ``local_min`` — a claim the theory says never holds — needs ||∇f|| at or
            below it as well, so a loose user gtol cannot produce it: such a run is not_converged.
        offsets: f_S − f* of every non-global critical value, ascending (``critical_offsets``);
            None where the theory gives no landscape (then no value test is made).
        resolved: whether the dtype tells the critical values apart: the rounding of f
            (100 eps S) is at most (f_sad − f*)/20. When False no run is called ``saddle`` or
            ``local_min`` (they are ``not_converged``) and the report advises float64.
        curvature_resolved: whether Lanczos can see the weakest saddle's negative curvature
            (|λ_min| >= 10 neg_tol); ``local_min`` needs it.
        landscape_gap: f_sad − f* (inf: the optimum is the only critical point; NaN: unknown).
        rounding: the rounding of a computed f, 100 eps S.
        rule: "landscape" (the labels above) or "relu" (THEORY §9.6's dnc / low_rank / other, judged
            by an f-plateau, f against L_DNC and the ranks, never by ||∇f||: see :func:`classify_relu`).
        plateau: (relu) the largest |Δf| over the last 1,000 steps of a run on a plateau; also the margin
            m S around L_DNC (``gap_tol`` is the same number).
        dnc_rank: (relu) the class-mean rank every layer has at DNC (K), 0 where DNC does not exist.
    """

    gtol: float
    ftol: float
    gap_tol: float
    geom_tol: float
    neg_tol: float
    strict_gtol: float = 0.0
    own_gtol: float = 0.0
    offsets: tuple | None = None
    resolved: bool = True
    curvature_resolved: bool = True
    landscape_gap: float = math.nan
    rounding: float = 0.0
    rule: str = "landscape"
    plateau: float = math.nan
    dnc_rank: int = 0

    def to_json(self) -> dict:
        """The tolerances as a plain dict (``offsets`` as a list, or None)."""
        out = dataclasses.asdict(self)
        out["offsets"] = None if self.offsets is None else [float(v) for v in self.offsets]
        return out

    def advice(self, dtype: str) -> str | None:
        """One line for the report where the dtype cannot resolve the landscape, else None."""
        if self.resolved:
            return None
        return (f"{dtype} cannot resolve this landscape: the nearest non-global critical value lies "
                f"{self.landscape_gap:.3g} above f*, within 20x the rounding of f ({self.rounding:.3g}); "
                "stationary runs away from the optimum are reported not_converged, never saddle or "
                "local_min. Use --dtype float64.")


def _radial_curvature(problem: Problem, offsets_known: bool) -> float:
    """The slowest curvature of the optimum's kept directions (THEORY §7): a direction of
    strength s = σ − Nτ has the 2×2 Hessian block [[s/(κ²N) + λ_W, (s − Nτ)/N], [·, κ²s/N + λ_H]]
    (κ² = sqrt(λ_H/λ_W)), whose smaller eigenvalue is about det/trace =
    (4τs/N)/((κ² + κ⁻²)s/N + λ_W + λ_H): ≈ 2λ for strong directions, → 0 as s → 0 (c → 1).
    +inf where no direction is kept or the landscape is unknown."""
    dg = critical.direction_gains(problem) if offsets_known else None
    if dg is None or dg[0].size == 0:
        return math.inf
    gains, keep = dg
    N = problem.N
    s = math.sqrt(2 * N * float(gains[min(keep, gains.size) - 1]))  # weakest kept strength
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    tau, k2 = math.sqrt(lw * lh), math.sqrt(lh / lw)
    return (4 * tau * s / N) / ((k2 + 1 / k2) * s / N + lw + lh)


def _windows(dt: str, scale: float, land: float, mu: float) -> tuple[float, float, bool, float]:
    """The value and gradient windows of a landscape whose nearest non-global critical value lies
    ``land`` above f* (inf: none; NaN: unknown), at objective scale ``scale`` and slowest curvature
    ``mu``: ``(gap_tol, own gtol, resolved, rounding)`` with rounding = 100 eps S,
    gap_tol = min(10 r S + rounding, max(land/20, rounding)), own gtol = max(min(sqrt(2 μ r S),
    sqrt(2 μ gap_tol)), the dtype's floor), resolved = rounding <= land/20."""
    eps, rel = float(np.finfo(dt).eps), TARGET_REL[dt]
    rounding = ROUNDING_EPS * eps * scale
    gap_tol = 10 * rel * scale + rounding
    resolved = True
    if math.isfinite(land):
        gap_tol = min(gap_tol, max(LANDSCAPE_FRACTION * land, rounding))
        resolved = rounding <= LANDSCAPE_FRACTION * land
    own = math.sqrt(2 * mu * rel * scale) if mu > 0 else 0.0
    if mu > 0 and math.isfinite(land):
        own = min(own, math.sqrt(2 * mu * gap_tol))
    return gap_tol, max(own, GTOL_FLOOR[dt]), resolved, rounding


def default_tolerances(problem: Problem, pred: Prediction, gtol: float | None = None) -> Tolerances:
    """Tolerances that suit the dtype, the problem's curvature scale and its landscape.

    With target relative accuracy ``r`` (1e-11 in float64, 1e-4 in float32) and objective scale
    ``S = max(|f*|, 1e-2)``: near a minimum the gap is at most ||∇f||²/(2μ), where μ is the slowest
    curvature at the optimum — min(λ_W, λ_H/(1 + ρ/N)) (THEORY.md §4) and the radial curvature of
    the weakest kept direction, which vanishes as c → 1 (:func:`_radial_curvature`).
    ``gap_tol = min(10 r S + 100 eps S, (f_sad − f*)/20)`` (never below the rounding 100 eps S),
    and ``gtol = min(sqrt(2 μ r S), sqrt(2 μ gap_tol))`` (never below the dtype's rounding floor),
    so a stop at ||∇f|| <= gtol near f* is closer to f* than to any other critical value. Where the
    rounding exceeds (f_sad − f*)/20 the landscape is not ``resolved`` in this dtype. The Gram
    tolerance is 1e-4 (float64) or 5e-2 (float32), raised to 4 gtol / (μ ||W*||_F) (twice the Gram
    error a stop at ||∇f|| = gtol allows; capped at 0.25) when that is larger, e.g. for λ_W ≪ λ_H.
    """
    if isinstance(pred, DeepPrediction):
        return _deep_tolerances(problem, pred, gtol)
    if isinstance(pred, ReluPrediction):
        return _relu_tolerances(problem, pred)
    dt = problem.dtype
    eps = float(np.finfo(dt).eps)
    rel = TARGET_REL[dt]
    scale = max(abs(pred.objective), 1e-2)
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    rho = float(pred.spectrum[0]) if pred.spectrum.size and pred.w_norm is not None else 0.0
    scalar = not any(np.ndim(getattr(problem, k)) for k in ("lambda_w", "lambda_h", "lambda_b"))
    offsets = critical.critical_offsets(problem) if scalar else None
    mu = min(lw, lh / (1.0 + rho / problem.N), _radial_curvature(problem, offsets is not None))
    land = float(offsets[0]) if offsets is not None and offsets.size else (math.nan if offsets is None else math.inf)
    gap_tol, own, resolved, rounding = _windows(dt, scale, land, mu)
    if gtol is None:
        gtol = own
    geom_tol = GEOM_TOL[dt]
    w_frob = math.sqrt(problem.K) * pred.w_norm if pred.w_norm else 0.0
    if mu > 0 and w_frob > 0:
        # at ||∇f|| <= gtol the parameters are within ~gtol/μ of the optimum, which moves the
        # Gram by ~2 ||ΔW|| / ||W*||_F relative; allow twice that when it exceeds the default
        geom_tol = max(geom_tol, 4 * gtol / (mu * w_frob))
    neg_tol = math.sqrt(eps)
    curv = critical.weakest_saddle_curvature(problem) if offsets is not None else None
    top = 1.0 + rho / problem.N + max(lw, lh)  # the stiffest curvature near the optimum (THEORY §4)
    curvature_resolved = curv is None or -curv >= CURVATURE_MARGIN * neg_tol * max(1.0, top)
    return Tolerances(gtol=float(gtol), ftol=rel * scale, gap_tol=float(gap_tol),
                      geom_tol=float(min(geom_tol, 0.25)), neg_tol=neg_tol,
                      strict_gtol=float(max(gtol * 1e-3, GTOL_FLOOR[dt])), own_gtol=float(own),
                      offsets=None if offsets is None else tuple(float(v) for v in offsets),
                      resolved=bool(resolved), curvature_resolved=bool(curvature_resolved),
                      landscape_gap=float(land), rounding=float(rounding))


def _deep_tolerances(problem: Problem, pred: DeepPrediction, gtol: float | None) -> Tolerances:
    """Tolerances of a deep linear UFM (THEORY §9.2): ``offsets`` are f_r − f* of the non-global local
    minima (a stationary run there is a candidate; Lanczos finds no negative curvature at a local
    minimum, so it is labelled ``local_min``); the landscape gap is f_sad − f*. As at depth 1, with
    μ = the smallest λ (λ_H, λ_1..λ_L) standing in for the optimum's slowest curvature:
    gap_tol = min(10 r S + 100 eps S, (f_sad − f*)/20), own gtol = min(sqrt(2 μ r S), sqrt(2 μ gap_tol)),
    the Gram tolerance 1e-4 (float64) / 5e-2 (float32)."""
    dt = problem.dtype
    eps = float(np.finfo(dt).eps)
    rel = TARGET_REL[dt]
    scale = max(abs(pred.objective), 1e-2)
    gap_tol, own, resolved, rounding = _windows(dt, scale, float(pred.saddle_gap), min(pred.lambda_h, *pred.lambdas))
    gtol = own if gtol is None else gtol
    return Tolerances(gtol=float(gtol), ftol=rel * scale, gap_tol=float(gap_tol), geom_tol=GEOM_TOL[dt],
                      neg_tol=math.sqrt(eps), strict_gtol=float(max(gtol * 1e-3, GTOL_FLOOR[dt])), own_gtol=float(own),
                      offsets=tuple(float(v) for v in pred.critical_offsets()), resolved=bool(resolved),
                      curvature_resolved=True, landscape_gap=float(pred.saddle_gap), rounding=float(rounding))


def _relu_tolerances(problem: Problem, pred: ReluPrediction) -> Tolerances:
    """Tolerances of a deep ReLU UFM (THEORY §9.6). Its runs chatter across ReLU kinks and never pass a
    gradient test, so none stops by one (gtol = 0: a run takes its budget unless it diverges, or sits
    exactly at a point of zero gradient such as the origin); the labels use an f-plateau and a window of
    ``RELU_MARGIN`` · max(L_DNC, 1e-2) around L_DNC (:func:`classify_relu`)."""
    dt = problem.dtype
    ref = pred.reference
    scale = max(abs(ref), 1e-2) if math.isfinite(ref) else 1e-2
    m = RELU_MARGIN * scale
    eps = float(np.finfo(dt).eps)
    return Tolerances(gtol=0.0, ftol=TARGET_REL[dt] * scale, gap_tol=m, geom_tol=GEOM_TOL[dt], neg_tol=math.sqrt(eps),
                      strict_gtol=0.0, own_gtol=0.0, offsets=None, resolved=True, curvature_resolved=False,
                      landscape_gap=math.nan, rounding=ROUNDING_EPS * eps * scale, rule="relu", plateau=m,
                      dnc_rank=problem.K if pred.dnc.exists else 0)


def classify_relu(f, f_change, dist, tols, status, columns, point_of=None) -> np.ndarray:
    """THEORY §9.6's labels of deep ReLU runs, (R,) str (``ncflow.RELU_LABELS``):

    * ``diverged``: non-finite f, or the engine's DIVERGED status;
    * ``not_converged``: f moved by more than ``plateau`` over the last 1,000 steps (no f-plateau; a run
      shorter than that has none either);
    * ``low_rank``: on a plateau with f < L_DNC − m (a loss below deep neural collapse's);
    * ``dnc``: on a plateau, −m < f − L_DNC < 10 m, every layer's class means (features and
      pre-activations) of rank K and the last features' NC2 against the orthogonal frame below
      ``RELU_NC2``;
    * ``other``: any other plateau (e.g. classes merged: a class-mean rank below K with f above L_DNC).

    ``f_change`` (R,): f's change over the last 1,000 steps (``ncflow.batch.stop.plateau_columns``);
    ``dist.gap`` = f − L_DNC; ``columns``: the model's per-run columns ``rank`` (the smallest class-mean
    rank of any layer) and ``dnc_nc2``; ``tols``,
    ``point_of`` as :func:`classify`. Never ``global``: the global minimum is not known (low-rank solutions
    beat DNC)."""
    R = len(f)
    per_point = list(tols)
    point = np.arange(R) if point_of is None else np.asarray(point_of, np.int64)
    m = np.asarray([t.plateau for t in per_point], np.float64)[point]
    full = np.asarray([t.dnc_rank for t in per_point], np.float64)[point]
    gap = np.asarray(dist.gap, np.float64)
    f = np.asarray(f, np.float64)
    diverged = ~np.isfinite(f) | (np.asarray(status) == DIVERGED)
    flat = ~diverged & (np.abs(np.asarray(f_change, np.float64)) <= m)
    rank = np.asarray(columns["rank"], np.float64)
    nc2 = np.asarray(columns["dnc_nc2"], np.float64)
    with np.errstate(invalid="ignore"):
        low = flat & (gap < -m)
        dnc = flat & (gap > -m) & (gap < 10 * m) & (full > 0) & (rank == full) & (nc2 < RELU_NC2)
    code = np.full(R, RELU_LABELS.index("not_converged"), np.int8)
    code[flat] = RELU_LABELS.index("other")
    code[low] = RELU_LABELS.index("low_rank")
    code[dnc] = RELU_LABELS.index("dnc")
    code[diverged] = RELU_LABELS.index("diverged")
    return np.asarray(RELU_LABELS)[code]


def class_fates(W: np.ndarray, M: np.ndarray, tol: float, scale: tuple[float, float] | None = None) -> tuple[str, str]:
    """Which classes merged and which vanished in ONE run's final state (THEORY §7 minority
    collapse): ``W (K, d)``, class means ``M (d, K)``. Class k vanished when ||w_k||² and ||μ_k||² are
    at most ``tol`` times the largest; classes i, j merged when ||w_i − w_j||² and ||μ_i − μ_j||² are
    (and neither vanished). ``scale``: the predicted largest ||w_k||² and ||μ_k||², used where they
    exceed the run's own (1 where the prediction is the zero solution, so that a run that converged
    to zero up to rounding has every class vanished). Returns ``("2,3;5,6", "4")``: merged groups
    separated by ";", vanished classes by ","; empty strings for none."""
    W, M = np.asarray(W, np.float64), np.asarray(M, np.float64)
    K = W.shape[0]
    w2, m2 = np.sum(W * W, axis=1), np.sum(M * M, axis=0)
    pw, pm = scale if scale is not None else (0.0, 0.0)
    if scale is not None and pw == 0.0:
        pw = pm = 1.0
    sw, sm = max(float(w2.max()), pw, 1e-300), max(float(m2.max()), pm, 1e-300)
    vanished = [k for k in range(K) if w2[k] <= tol * sw and m2[k] <= tol * sm]
    alive = [k for k in range(K) if k not in vanished]
    groups: list[list[int]] = []
    for k in alive:
        for g in groups:
            i = g[0]
            if np.sum((W[i] - W[k]) ** 2) <= tol * sw and np.sum((M[:, i] - M[:, k]) ** 2) <= tol * sm:
                g.append(k)
                break
        else:
            groups.append([k])
    merged = ";".join(",".join(map(str, g)) for g in groups if len(g) > 1)
    return merged, ",".join(map(str, vanished))


def fates_text(merged: tuple, vanished: tuple) -> tuple[str, str]:
    """A prediction's merged groups and vanished classes in the per-run format of :func:`class_fates`."""
    return ";".join(",".join(map(str, g)) for g in merged), ",".join(map(str, vanished))


def near_critical_value(gap: np.ndarray, offsets: tuple | None, window: np.ndarray) -> np.ndarray:
    """Whether each f − f* (``gap``, (R,)) lies within ``window`` (R,) of a non-global critical
    value f* + offset (``offsets`` ascending, from :class:`Tolerances`); True everywhere where the
    landscape is unknown (``offsets`` None), False where it has no non-global critical value."""
    gap = np.asarray(gap, np.float64)
    if offsets is None:
        return np.ones(gap.shape, bool)
    off = np.asarray(offsets, np.float64)
    if off.size == 0:
        return np.zeros(gap.shape, bool)
    i = np.clip(np.searchsorted(off, gap), 1, off.size)
    nearest = np.minimum(np.abs(gap - off[i - 1]), np.abs(gap - off[np.minimum(i, off.size - 1)]))
    return np.isfinite(gap) & (nearest <= window)


def classify(f, gnorm, dist, tols, status, hessian_extremes, point_of=None, critical_error=None, f_change=None,
             columns=None):
    """Label every run (see the module doc; the deep ReLU UFM's tolerances, ``rule`` "relu", hand the runs
    to :func:`classify_relu` with ``f_change`` and ``columns``, and no Hessian is asked for).

    Args:
        f, gnorm: final objective and full gradient norm, (R,).
        dist: ``ncflow.maths.metrics.OptimumDistance`` of (R,) arrays (gap, gram_error, ...).
        tols: the :class:`Tolerances` of every run, a sequence of length R; with ``point_of``,
            one per point (a sequence of length P).
        point_of: None, or the point of every run, (R,) int in [0, P): run r uses
            ``tols[point_of[r]]`` (a batch of 100,000 runs need not list 100,000 Tolerances).
        status: the engine's final ``ncflow.codes`` status, (R,).
        hessian_extremes: ``fn(indices) -> (min Ritz values, max Ritz values)`` for the runs at
            ``indices`` (only runs that are stationary, not global and at a non-global critical
            value of a resolved landscape are asked for).
        f_change, columns: (relu only) f's change over the last 1,000 steps, (R,), and the model's
            per-run columns (see :func:`classify_relu`).
        critical_error: None, or (R,) the model's distance of each run's geometry to the predicted
            critical point of its kind (the deep UFM: P M J's singular values against the local
            minimum of the run's rank, THEORY §9.2): a run counts as at a non-global critical value
            only where it is <= geom_tol too (NaN: no such critical point).

    Returns:
        ``(labels (R,) str, min_eig (R,), max_eig (R,))``; Hessian estimates are NaN for runs that
        did not need them.
    """
    R = len(f)
    per_point = list(tols)
    if per_point and per_point[0].rule == "relu":
        nan = np.full(R, np.nan)
        return classify_relu(f, f_change, dist, per_point, status, columns, point_of), nan, nan.copy()
    point = np.arange(R) if point_of is None else np.asarray(point_of, np.int64)

    def column(name):
        return np.asarray([getattr(t, name) for t in per_point], np.float64)[point]
    gtol, gap_tol, geom_tol, neg_tol, own_gtol = map(column, ("gtol", "gap_tol", "geom_tol", "neg_tol", "own_gtol"))
    # the stop rule compared the engine's f at its last check; the summaries evaluate f again (another
    # program, another summation order): allow a tenth of the rounding bound (10 eps S) for that
    gap_tol = gap_tol + RECHECK_FRACTION * column("rounding")
    resolved, curv_ok = (column(k).astype(bool) for k in ("resolved", "curvature_resolved"))
    finite = np.isfinite(f) & np.isfinite(gnorm)
    diverged = ~finite | (status == DIVERGED)
    certified = ~diverged & (status == CERTIFIED)  # THEORY §8: the limit is global, the state need not be stationary
    stationary = ~diverged & ~certified & (gnorm <= gtol)
    geometry_ok = (dist.gram_error <= geom_tol) & (dist.gram_h_error <= geom_tol) & (dist.cross_error <= geom_tol)
    is_global = certified | (stationary & (np.abs(dist.gap) <= gap_tol) & geometry_ok)
    near = np.zeros(R, bool)
    order = np.argsort(point, kind="stable")
    starts = np.searchsorted(point[order], np.arange(len(per_point) + 1))
    gap = np.asarray(dist.gap, np.float64)
    for i, t in enumerate(per_point):  # runs grouped by point: one searchsorted per point
        rows = order[starts[i]:starts[i + 1]]
        if rows.size:
            near[rows] = near_critical_value(gap[rows], t.offsets, gap_tol[rows])
    if critical_error is not None:
        near &= np.asarray(critical_error, np.float64) <= geom_tol
    cand = np.nonzero(stationary & ~is_global & near & resolved)[0]  # at a non-global critical value
    min_eig = np.full(R, np.nan)
    max_eig = np.full(R, np.nan)
    if len(cand):
        lo, hi = hessian_extremes(cand)
        min_eig[cand], max_eig[cand] = lo, hi
    saddle = np.zeros(R, bool)
    saddle[cand] = min_eig[cand] < -neg_tol[cand] * np.maximum(1.0, np.abs(max_eig[cand]))
    code = np.full(R, LABELS.index("not_converged"), np.int8)  # indices into LABELS: no per-run strings
    code[is_global] = LABELS.index("global")
    minimum = cand[(gnorm[cand] <= own_gtol[cand]) & curv_ok[cand]]  # stationary by the dtype's own tolerance too
    code[minimum] = LABELS.index("local_min")
    code[saddle] = LABELS.index("saddle")
    code[diverged] = LABELS.index("diverged")
    return np.asarray(LABELS)[code], min_eig, max_eig
