"""Outcome classification of finished runs against the theory, and its tolerances.

Labels (in this order, codes 0–4):

* ``global``: stationary (||∇f|| <= gtol), |f − f*| <= gap_tol and the Gram of W matches the
  predicted geometry (ETF / orthogonal frame / zero / rank-limited spectrum) within geom_tol (with
  class sizes or targets, THEORY §7: W Wᵀ, MᵀM and W M against the predicted matrices, or the
  spectrum of W Wᵀ where the Gram is not unique) — or
  certified by the early certificate of THEORY §8 (stop rule "certified": the run's LIMIT is a
  global minimizer; its state at the stop is not stationary, see ``certified_step``);
* ``saddle``: stationary, not global, and Lanczos on Hessian-vector products finds a Ritz value
  below −neg_tol·max(1, |λ_max|). A Ritz value is an upper bound on λ_min, so this *certifies*
  negative curvature;
* ``local_min``: stationary, not global, and no negative curvature found (the theory says
  this never happens for d >= K−1; ncflow reports it if it does). Stationary here means to the
  dtype's own tolerance too (``Tolerances.own_gtol``), so a loose user ``gtol`` cannot produce it;
* ``not_converged``: finite but not stationary when the budget ran out — or stopped by a user's
  gtol looser than the dtype's, away from the optimum and without negative curvature;
* ``diverged``: non-finite values, or |f| grew past 10⁶·max(1, |f_0|).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ncflow.codes import CERTIFIED, DIVERGED, LABELS  # noqa: F401  (LABELS re-exported)
from ncflow.maths.theory import Prediction
from ncflow.problem import Problem

#: relative objective accuracy a converged run is asked for, by dtype
TARGET_REL = {"float64": 1e-11, "float32": 1e-4}
#: relative Gram tolerance of the geometry check, by dtype
GEOM_TOL = {"float64": 1e-4, "float32": 5e-2}
#: floor of the gradient tolerance (rounding floor of the gradient), by dtype
GTOL_FLOOR = {"float64": 1e-12, "float32": 1e-6}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Tolerances of one problem's stopping rule and classification.

    Attributes:
        gtol: stationarity: ||∇f|| <= gtol.
        ftol: the objective changed by at most ftol over the last check interval (stopping).
        gap_tol: |f − f*| <= gap_tol for ``global``.
        geom_tol: relative Gram error <= geom_tol for ``global``.
        neg_tol: negative curvature threshold, relative to max(1, |λ_max|).
        strict_gtol: stopping tolerance away from the predicted optimum: gtol/1000 (never below
            the dtype's rounding floor). Near a saddle the gradient can be below gtol while the
            run is still escaping; only a run stationary to this tolerance (e.g. one started
            exactly at a critical point) stops there. Classification still uses gtol.
        own_gtol: the dtype's and problem's own stationarity tolerance (what gtol is when the user
            gives none). ``local_min`` — a claim the theory says never holds — needs ||∇f|| at or
            below it as well, so a loose user gtol cannot produce it: such a run is not_converged.
    """

    gtol: float
    ftol: float
    gap_tol: float
    geom_tol: float
    neg_tol: float
    strict_gtol: float = 0.0
    own_gtol: float = 0.0

    def to_json(self) -> dict:
        """The tolerances as a plain dict."""
        return dataclasses.asdict(self)


def default_tolerances(problem: Problem, pred: Prediction, gtol: float | None = None) -> Tolerances:
    """Tolerances that suit the dtype and the problem's curvature scale.

    With target relative accuracy ``r`` (1e-11 in float64, 1e-4 in float32) and objective scale
    ``S = max(|f*|, 1e-2)``: near a minimum the gap is at most ||∇f||²/(2μ), where μ ≈
    min(λ_W, λ_H/(1 + ρ/N)) is the slowest curvature (THEORY.md §4), so ``gtol = sqrt(2 μ r S)``
    (never below the dtype's rounding floor) guarantees a gap <= r S; ``gap_tol = 10 r S`` plus
    100 eps S of rounding. The Gram tolerance is 1e-4 (float64) or 5e-2 (float32), raised to
    4 gtol / (μ ||W*||_F) (twice the Gram error a stop at ||∇f|| = gtol allows; capped at 0.25)
    when that is larger, e.g. for λ_W ≪ λ_H. The gap to the nearest saddle value, (1−c)²/(2K),
    is orders of magnitude larger than any of these, so the classification is robust to them.
    """
    dt = problem.dtype
    eps = float(np.finfo(dt).eps)
    rel = TARGET_REL[dt]
    scale = max(abs(pred.objective), 1e-2)
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    rho = float(pred.spectrum[0]) if pred.spectrum.size and pred.w_norm is not None else 0.0
    mu = min(lw, lh / (1.0 + rho / problem.N))
    own = max(math.sqrt(2 * mu * rel * scale) if mu > 0 else 0.0, GTOL_FLOOR[dt])
    if gtol is None:
        gtol = own
    geom_tol = GEOM_TOL[dt]
    w_frob = math.sqrt(problem.K) * pred.w_norm if pred.w_norm else 0.0
    if mu > 0 and w_frob > 0:
        # at ||∇f|| <= gtol the parameters are within ~gtol/μ of the optimum, which moves the
        # Gram by ~2 ||ΔW|| / ||W*||_F relative; allow twice that when it exceeds the default
        geom_tol = max(geom_tol, 4 * gtol / (mu * w_frob))
    return Tolerances(gtol=float(gtol), ftol=rel * scale, gap_tol=10 * rel * scale + 100 * eps * scale,
                      geom_tol=float(min(geom_tol, 0.25)), neg_tol=math.sqrt(eps),
                      strict_gtol=float(max(gtol * 1e-3, GTOL_FLOOR[dt])), own_gtol=float(own))


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


def classify(f, gnorm, dist, tols, status, hessian_extremes, point_of=None):
    """Label every run (see the module doc).

    Args:
        f, gnorm: final objective and full gradient norm, (R,).
        dist: ``ncflow.maths.metrics.OptimumDistance`` of (R,) arrays (gap, gram_error, ...).
        tols: the :class:`Tolerances` of every run, a sequence of length R; with ``point_of``,
            one per point (a sequence of length P).
        point_of: None, or the point of every run, (R,) int in [0, P): run r uses
            ``tols[point_of[r]]`` (a batch of 100,000 runs need not list 100,000 Tolerances).
        status: the engine's final ``ncflow.codes`` status, (R,).
        hessian_extremes: ``fn(indices) -> (min Ritz values, max Ritz values)`` for the runs at
            ``indices`` (only runs that are stationary but not global are asked for).

    Returns:
        ``(labels (R,) str, min_eig (R,), max_eig (R,))``; Hessian estimates are NaN for runs that
        did not need them.
    """
    def column(name):
        col = np.asarray([getattr(t, name) for t in tols], np.float64)
        return col if point_of is None else col[np.asarray(point_of)]
    gtol, gap_tol, geom_tol, neg_tol, own_gtol = map(column, ("gtol", "gap_tol", "geom_tol", "neg_tol", "own_gtol"))
    finite = np.isfinite(f) & np.isfinite(gnorm)
    diverged = ~finite | (status == DIVERGED)
    certified = ~diverged & (status == CERTIFIED)  # THEORY §8: the limit is global, the state need not be stationary
    stationary = ~diverged & ~certified & (gnorm <= gtol)
    geometry_ok = (dist.gram_error <= geom_tol) & (dist.gram_h_error <= geom_tol) & (dist.cross_error <= geom_tol)
    is_global = certified | (stationary & (np.abs(dist.gap) <= gap_tol) & geometry_ok)
    cand = np.nonzero(stationary & ~is_global)[0]
    min_eig = np.full(len(f), np.nan)
    max_eig = np.full(len(f), np.nan)
    if len(cand):
        lo, hi = hessian_extremes(cand)
        min_eig[cand], max_eig[cand] = lo, hi
    saddle = np.zeros(len(f), bool)
    saddle[cand] = min_eig[cand] < -neg_tol[cand] * np.maximum(1.0, np.abs(max_eig[cand]))
    code = np.full(len(f), LABELS.index("not_converged"), np.int8)  # indices into LABELS: no per-run strings
    code[is_global] = LABELS.index("global")
    code[cand[gnorm[cand] <= own_gtol[cand]]] = LABELS.index("local_min")  # stationary by the dtype's own tolerance too
    code[saddle] = LABELS.index("saddle")
    code[diverged] = LABELS.index("diverged")
    return np.asarray(LABELS)[code], min_eig, max_eig
