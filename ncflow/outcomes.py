"""Outcome classification of finished runs against the theory, and its tolerances.

Labels (in this order, codes 0–4):

* ``global``: stationary (||∇f|| <= gtol), |f − f*| <= gap_tol and the Gram of W matches the
  predicted geometry (ETF / orthogonal frame / zero / rank-limited spectrum) within geom_tol;
* ``saddle``: stationary, not global, and Lanczos on Hessian-vector products finds a Ritz value
  below −neg_tol·max(1, |λ_max|). A Ritz value is an upper bound on λ_min, so this *certifies*
  negative curvature;
* ``local_min``: stationary, not global, and no negative curvature found (the theory says
  this never happens for d >= K−1; ncflow reports it if it does);
* ``not_converged``: finite but not stationary when the budget ran out;
* ``diverged``: non-finite values, or |f| grew past 10⁶·max(1, |f_0|).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ncflow.maths import objective as _o
from ncflow.maths.lanczos import lanczos_extremes
from ncflow.codes import DIVERGED, LABELS  # noqa: F401  (LABELS re-exported)
from ncflow.problem import Problem
from ncflow.maths.theory import Prediction


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
    """

    gtol: float
    ftol: float
    gap_tol: float
    geom_tol: float
    neg_tol: float
    strict_gtol: float = 0.0

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
    if gtol is None:
        gtol = math.sqrt(2 * mu * rel * scale) if mu > 0 else 0.0
        gtol = max(gtol, GTOL_FLOOR[dt])
    geom_tol = GEOM_TOL[dt]
    w_frob = math.sqrt(problem.K) * pred.w_norm if pred.w_norm else 0.0
    if mu > 0 and w_frob > 0:
        # at ||∇f|| <= gtol the parameters are within ~gtol/μ of the optimum, which moves the
        # Gram by ~2 ||ΔW|| / ||W*||_F relative; allow twice that when it exceeds the default
        geom_tol = max(geom_tol, 4 * gtol / (mu * w_frob))
    return Tolerances(gtol=float(gtol), ftol=rel * scale, gap_tol=10 * rel * scale + 100 * eps * scale,
                      geom_tol=float(min(geom_tol, 0.25)), neg_tol=math.sqrt(eps),
                      strict_gtol=float(max(gtol * 1e-3, GTOL_FLOOR[dt])))


def _lanczos_program(problem: Problem, rep, iters: int):
    def one(p, xi, key):
        params = rep.to_params(p, xi)
        flat, unravel = ravel_pytree(params)

        def mv(v):
            return ravel_pytree(_o.hvp(p, params, unravel(v)))[0]

        v0 = jax.random.normal(key, flat.shape, flat.dtype)
        r = lanczos_extremes(mv, v0, iters)
        return r.min_eig, r.max_eig

    # lanes one after another: batched LAPACK (the tridiagonal eigh) can deadlock a small
    # intra-op thread pool, and a run's estimate must not depend on its batch
    return jax.jit(lambda p, x, k: jax.lax.map(lambda t: one(*t), (p, x, k)))


def hessian_extremes(problem: Problem, rep, x, prob_b, lanes: np.ndarray, iters: int, batch: int = 16):
    """Lanczos estimates (min Ritz value, max Ritz value) of the full Hessian for ``lanes``.

    Lanes are processed ``batch`` at a time (padded), with ONE compiled program.
    """
    lo = np.full(len(lanes), np.nan)
    hi = np.full(len(lanes), np.nan)
    if len(lanes) == 0:
        return lo, hi
    prog = _lanczos_program(problem, rep, iters)
    b = batch  # fixed width: a run's estimate does not depend on how many others need one
    for s in range(0, len(lanes), b):
        idx = lanes[s:s + b]
        pad = np.concatenate([idx, np.full(b - len(idx), idx[0])])
        j = jnp.asarray(pad)
        xs = jax.tree_util.tree_map(lambda a: a[j], x)
        ps = jax.tree_util.tree_map(lambda a: a[j], prob_b)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(20220301), i))(j)
        mn, mx = prog(ps, xs, keys)
        lo[s:s + len(idx)] = np.asarray(mn, np.float64)[: len(idx)]
        hi[s:s + len(idx)] = np.asarray(mx, np.float64)[: len(idx)]
    return lo, hi


def classify(problem, rep, x, prob_b, f, gnorm, dist, lane_point, tols, iters, status):
    """Label every run (see the module doc). Returns ``(labels (R,) str, min_eig (R,), max_eig (R,))``;
    Hessian estimates are NaN for runs that did not need them."""
    gtol = np.asarray([tols[i].gtol for i in lane_point])
    gap_tol = np.asarray([tols[i].gap_tol for i in lane_point])
    geom_tol = np.asarray([tols[i].geom_tol for i in lane_point])
    neg_tol = np.asarray([tols[i].neg_tol for i in lane_point])
    finite = np.isfinite(f) & np.isfinite(gnorm)
    diverged = ~finite | (status == DIVERGED)
    stationary = ~diverged & (gnorm <= gtol)
    is_global = stationary & (np.abs(dist.gap) <= gap_tol) & (dist.gram_error <= geom_tol)
    cand = np.nonzero(stationary & ~is_global)[0]
    min_eig = np.full(len(f), np.nan)
    max_eig = np.full(len(f), np.nan)
    lo, hi = hessian_extremes(problem, rep, x, prob_b, cand, iters)
    min_eig[cand], max_eig[cand] = lo, hi
    saddle = np.zeros(len(f), bool)
    saddle[cand] = lo < -neg_tol[cand] * np.maximum(1.0, np.abs(hi))
    labels = np.full(len(f), "not_converged", dtype=object)
    labels[is_global] = "global"
    labels[cand] = "local_min"
    labels[saddle] = "saddle"
    labels[diverged] = "diverged"
    return labels.astype(str), min_eig, max_eig
