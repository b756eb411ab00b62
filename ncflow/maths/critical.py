"""The critical values of ONE problem's landscape, as offsets above f* (THEORY.md §3, §7, §8).

Every critical point of the UFM keeps a set S of the target's alive singular directions (|S| <= d),
and each kept direction j lowers the value by its *gain* g_j = (σ_j − Nτ)²/(2N) (THEORY §7;
balanced: (1 − c)²/(2K) for each of the K−1 directions of (A), K of (B)). The optimum keeps the
min(d, alive) largest gains, so every critical value is

    f_S = f* + (Σ_{top min(d, alive)} g − Σ_{j∈S} g_j),

and the landscape is resolved by a computation only where these offsets are told apart from 0 and
from each other by more than the rounding of f. :func:`direction_gains` lists the gains where the
theory knows them; :func:`critical_offsets` the distinct offsets of the non-global critical values
(ascending; the smallest is f_sad − f*); :func:`weakest_saddle_curvature` the least negative
curvature a saddle of the landscape is proven to have (what Lanczos must resolve to call a
stationary point a minimum). The classifier (``ncflow.outcomes``) uses them to call a run a saddle
or a local minimum only near a critical value, and to say where the dtype cannot resolve the
landscape.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ncflow.maths import imbalanced as _imbalanced
from ncflow.problem import Problem

#: relative tolerance under which two gains (and two offsets) count as equal: a swap of tied
#: directions is still global
TIE_RTOL = _imbalanced.TIE_RTOL
#: at most this many combinations of gain groups are enumerated (beyond it the values are unknown)
MAX_COMBINATIONS = 200_000


def direction_gains(problem: Problem) -> tuple[np.ndarray, int] | None:
    """The gains g_j of the alive directions, descending (alive,), and how many a critical point
    may keep (d); None where the theory gives no landscape: the rescaled MSE, λ_W λ_H = 0, a
    regularized bias (C) with d <= K (balanced) or with class sizes or targets (THEORY §7 and §8
    prove the landscape of (A) and (B) only there). Scalar coefficients only (one point)."""
    lw, lh, lb = (float(getattr(problem, k)) for k in ("lambda_w", "lambda_h", "lambda_b"))
    if problem.loss != "mse" or lw == 0.0 or lh == 0.0:
        return None
    if problem.general:
        if problem.bias and lb > 0.0:
            return None
        return np.sort(_imbalanced.alive_gains(problem))[::-1], problem.d
    K, c = problem.K, float(problem.c)
    if c >= 1.0:
        return np.zeros(0), problem.d
    if problem.bias and lb > 0.0 and problem.d <= K:
        return None
    gains = [(1.0 - c) ** 2 / (2 * K)] * (K if not problem.bias else K - 1)
    if problem.bias and lb > 0.0:
        gamma = lb / (1.0 + lb)
        if gamma > c:  # the direction along 1 is alive above the threshold (THEORY §2 (C), §9.5 at L = 1)
            gains.append((gamma - c) ** 2 / (gamma * 2 * K))
    return np.sort(np.asarray(gains))[::-1], problem.d


def critical_offsets(problem: Problem) -> np.ndarray | None:
    """f_S − f* > 0 of every non-global critical value, distinct and ascending (offsets,); the
    first is f_sad − f*, an empty array where the optimum is the only critical point (c >= 1, no
    alive direction). None where :func:`direction_gains` is None or the sets are too many to list
    (more than :data:`MAX_COMBINATIONS` combinations of distinct gains)."""
    dg = direction_gains(problem)
    if dg is None:
        return None
    gains, keep = dg
    if gains.size == 0:
        return np.zeros(0)
    top = float(np.sum(gains[: min(keep, gains.size)]))
    values, counts = _groups(gains)
    if math.prod(int(m) + 1 for m in counts) > MAX_COMBINATIONS:
        return None
    sums = set()
    for combo in itertools.product(*(range(int(m) + 1) for m in counts)):
        if sum(combo) <= keep:
            sums.add(float(np.dot(combo, values)))
    off = np.sort(top - np.fromiter(sums, float))
    tie = TIE_RTOL * max(top, float(gains[0]))
    off = off[off > tie]
    if off.size:
        keep_mask = np.concatenate([[True], np.diff(off) > tie])
        off = off[keep_mask]
    return off


def weakest_saddle_curvature(problem: Problem) -> float | None:
    """An upper bound on λ_min at the saddle whose negative curvature is the weakest of the
    landscape: the weakest alive direction σ added along a spare feature direction,
    (λ_W+λ_H)/2 − sqrt(((λ_W−λ_H)/2)² + σ²/N²) (THEORY §3, §7). None where the landscape is unknown
    or has no saddle. (A swap saddle of a rank-limited §7 problem can curve less; see
    ``imbalanced.saddle_curvature_bound``.)"""
    dg = direction_gains(problem)
    if dg is None or dg[0].size == 0:
        return None
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    if problem.general:
        s = _imbalanced.alive_strengths(problem)
        weakest = float(np.min(s)) / problem.N
    else:
        weakest = 1.0 / (problem.K * math.sqrt(problem.n))  # σ/N = √n/(nK)
    return (lw + lh) / 2 - math.sqrt(((lw - lh) / 2) ** 2 + weakest**2)


def _groups(gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gains (within :data:`TIE_RTOL`) and their multiplicities, for descending ``gains``."""
    values: list[float] = []
    counts: list[int] = []
    for g in gains:
        if values and abs(values[-1] - g) <= TIE_RTOL * max(abs(values[-1]), 1e-300):
            counts[-1] += 1
        else:
            values.append(float(g))
            counts.append(1)
    return np.asarray(values), np.asarray(counts)
