"""The early certificate of a global outcome (THEORY.md §8), evaluated on the host per lane.

Theorem (§8): let f_sad be the lowest non-global critical value of f and L(f) a bound on the
largest Hessian eigenvalue over the sublevel set {f' <= f}. If at some step T of gradient descent
with step η

    (H1) f(θ_T) < f_sad    and    (H2) η L(f(θ_T)) < 2,

every later step decreases f by at least η(1 − ηL/2)||∇f||² and the run converges to one point of
the global set. Only the current state matters, so a check at chunk ends is sound.

In floating point f(θ_T) is known only up to the rounding of its evaluation (:func:`rounding_bound`),
and the check keeps a margin: :func:`certified` asks for
``f + rounding < f* + (1 − margin)(f_sad − f*)`` and ``η L(f + rounding) < 2``.

Everything here is elementwise over scalars or arrays of one shape ``(lanes,)`` (any shape that
broadcasts), with a problem whose coefficients are scalars or such arrays. It is numpy on the host by
default; :func:`hessian_bound`, :func:`rounding_bound` and :func:`certified` also take ``xp=jax.numpy``,
so the wide execution plan evaluates the same formulas on the device, inside its stop loop (there in
float64 when ``jax_enable_x64`` is on, else in float32).

Deep linear UFMs (depth L > 1, THEORY §9.3): the same theorem with f_sad − f* of the deep landscape
(:class:`ncflow.maths.deep.DeepPrediction`'s ``saddle_gap``) and the curvature bound L_deep(F)
(:func:`deep_hessian_bound`); the rounding bound covers the deep engines' evaluation of f
(``space`` "deep_full"/"deep_collapsed"). L_deep is sound but large: it allows only small steps
(:func:`step_limit`), so at practical steps (η ≈ 0.5) no deep run is ever certified and runs stop by
the converged rule. The deep ReLU UFM has no certificate (NaN gaps).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import numpy as np

from ncflow.errors import ConfigError, ProblemError
from ncflow.maths import imbalanced as _imbalanced
from ncflow.maths import theory as _theory
from ncflow.problem import Problem

__all__ = ["SPACES", "certified", "data_floor", "data_norms", "deep_hessian_bound", "hessian_bound",
           "rounding_bound", "saddle_gap", "saddle_gaps", "step_limit"]

#: the state spaces whose objective evaluation :func:`rounding_bound` covers (the engines' names): a
#: space not listed here has no certificate. The deep spaces evaluate the deep UFM's f (THEORY §9).
SPACES = ("full", "collapsed", "deep_full", "deep_collapsed")

#: the form of f's evaluation behind each space name (the deep spaces' own formulas at depth > 1)
_FORM = {"full": "full", "collapsed": "collapsed", "deep_full": "full", "deep_collapsed": "collapsed"}

#: (C): the 1-direction counts as alive (and the above-threshold gap, the smaller, is used) once
#: γ >= c(1 − _THRESHOLD_SLACK), so that rounding in the comparison can only make the gap smaller
_THRESHOLD_SLACK = 1e-9


def _float(xp):
    """The widest float of the array namespace ``xp`` (numpy: float64; jax.numpy: float64 with x64,
    else float32)."""
    return np.float64 if xp is np else xp.result_type(float)


def _coef(problem: Problem, name: str, xp=np):
    """A coefficient of ``problem`` as a float64 array (shape () or (lanes,))."""
    return xp.asarray(getattr(problem, name), dtype=_float(xp))


def saddle_gaps(problem: Problem) -> np.ndarray:
    """f_sad − f* per lane, shape () or (lanes,) (the problem's coefficient shape); NaN where no
    certificate applies. THEORY.md §8, balanced classes:

    - (A) λ_b = 0 and (B) bias-free: (1 − c)²/(2K) for every d (rank-limited d included: THEORY §3,
      the saddles keep one direction fewer than the optimum; ties between directions are global).
    - (C) λ_b > 0 with d >= K+1: below the threshold λ_b <= c/(1 − c), (1 − c)²/(2K); above it
      min{(1 − c)², (γ − c)²/γ}/(2K) with γ = λ_b/(1 + λ_b) (the saddle that drops the direction
      along 1; → 0 at the threshold). The 1-direction is treated as alive from
      γ >= c(1 − 1e-9) on, so a threshold comparison flipped by rounding only shrinks the gap.
    - c >= 1: +inf (the global minimizer is the only critical point).
    - NaN (no proof, no early call): loss "rescaled-mse"; (C) with d <= K, whatever c (THEORY §7: strict
      saddles shown for d >= K+1 only; for d <= K−1 above the threshold the lowest saddle swaps a
      centred direction for the 1-direction and the §8 formula is not its gap); λ_W = 0 or λ_H = 0
      (no attained, isolated optimum).

    Class sizes or a target matrix (THEORY §7, ``problem.general``; the problem's own sizes/targets,
    coefficients scalars or arrays): (A) and (B), any d, through the §7 landscape — critical values
    f_S for sets S of alive singular pairs, the lowest non-global one drops the weakest kept alive
    direction (gap (σ − Nτ)²/(2N)) or, with d below the number of alive directions, swaps the d-th
    for the (d+1)-th (ties are global); +inf with no alive direction (the zero solution and every
    minority collapse down to it). (C) λ_b > 0: NaN for every d (THEORY §7 characterizes the critical
    points of (A) and (B) only; with sizes or targets there is no closed form for f_sad, even for
    d >= K+1 where strict saddles are shown). λ_W = 0 or λ_H = 0: NaN.

    Deep UFMs (depth > 1, THEORY §9.3 (H1)): the deep linear landscape's f_sad − f*
    (``theory.predict(lane).saddle_gap``: |Δ(c)|/(2K) balanced, single flips and swaps in general,
    +inf where the optimum is the only critical point), lane by lane (``lambda_hidden`` (lanes, L − 1)
    included). NaN for the deep ReLU UFM (no landscape theory), for (C) λ_b > 0 (THEORY §9.5: the
    absence of critical points mixing the 1-direction with 1^⊥ is proved for L = 1 only) and where
    any λ is 0.
    """
    K, n, d = problem.K, problem.n, problem.d
    lw, lh, lb = (_coef(problem, k) for k in ("lambda_w", "lambda_h", "lambda_b"))
    lw, lh, lb = np.broadcast_arrays(lw, lh, lb)
    if problem.depth > 1:
        return _deep_gaps(problem, lw, lh, lb)
    c = K * np.sqrt(n * lw * lh)
    gap = (1.0 - c) ** 2 / (2 * K)
    if problem.bias:
        with np.errstate(divide="ignore", invalid="ignore"):
            g = lb / (1.0 + lb)
            above = (lb > 0) & (g >= c * (1.0 - _THRESHOLD_SLACK))
            one_dir = np.where(above, (g - c) ** 2 / np.where(g > 0, g, 1.0), np.inf)
        gap = np.where(above, np.minimum((1.0 - c) ** 2, one_dir) / (2 * K), gap)
    gap = np.where(c >= 1.0, np.inf, gap)
    if problem.bias and d <= K:  # (C) without a proof, whatever c
        gap = np.where(lb > 0, np.nan, gap)
    gap = np.where((lw == 0) | (lh == 0), np.nan, gap)
    if problem.loss != "mse":
        gap = np.full_like(gap, np.nan)
    if problem.general:
        gap = _general_gaps(problem, lw, lh, lb)
    return np.asarray(gap, dtype=np.float64)


def _general_gaps(problem: Problem, lw: np.ndarray, lh: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """:func:`saddle_gaps` of a §7 problem (class sizes or a target matrix), lane by lane: the
    landscape of THEORY §7 ((A) λ_b = 0 and (B) bias-free, any sizes, any target, any d) through
    :func:`ncflow.maths.imbalanced.saddle_gap`; NaN for (C) λ_b > 0 and where λ_W λ_H = 0."""
    if problem.row_basis is not None or np.ndim(problem.class_sizes) > 1 or np.ndim(problem.targets) > 2:
        raise ProblemError("saddle_gaps needs a problem with its own class sizes or targets, not the engine's "
                           "per-lane data", field="class_sizes" if problem.targets is None else "targets")
    out = np.full(lw.shape, np.nan)
    for i in np.ndindex(lw.shape):
        w, h, b = float(lw[i]), float(lh[i]), float(lb[i])
        if w == 0.0 or h == 0.0 or (problem.bias and b != 0.0):  # no attained optimum; (C): no proof
            continue
        lane = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b), problem, (w, h, b))
        out[i] = _imbalanced.saddle_gap(lane)
    return out


def _deep_gaps(problem: Problem, lw: np.ndarray, lh: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """:func:`saddle_gaps` at depth > 1 (THEORY §9.3 (H1)), lane by lane through the deep linear
    theory (``theory.predict`` → :class:`~ncflow.maths.deep.DeepPrediction`); NaN for ReLU, for (C)
    λ_b > 0 and where a λ is 0."""
    hidden = [np.asarray(v, np.float64) for v in problem.layer_lambdas[:-1]]
    shape = np.broadcast_shapes(lw.shape, *(h.shape for h in hidden))
    out = np.full(shape, np.nan)
    if problem.activation != "linear" or problem.loss != "mse":
        return out
    if problem.row_basis is not None or np.ndim(problem.class_sizes) > 1:
        raise ProblemError("saddle_gaps needs a problem with its own class sizes, not the engine's per-lane data",
                           field="class_sizes")
    lw, lh, lb = (np.broadcast_to(a, shape) for a in (lw, lh, lb))
    hidden = [np.broadcast_to(h, shape) for h in hidden]
    for i in np.ndindex(shape):
        w, h, b = float(lw[i]), float(lh[i]), float(lb[i])
        hid = tuple(float(v[i]) for v in hidden)
        if min(w, h, *hid) <= 0.0 or (problem.bias and b != 0.0):  # no attained optimum; (C): no proof
            continue
        lane = dataclasses.replace(problem, lambda_w=w, lambda_h=h, lambda_b=b,
                                   lambda_hidden=None if all(v == w for v in hid) else hid)
        out[i] = _theory.predict(lane).saddle_gap
    return out


def saddle_gap(problem: Problem) -> float | None:
    """f_sad − f* of a problem with scalar coefficients (THEORY.md §8), as a float (``math.inf``
    where c >= 1), or None where no certificate applies; the cases are those of :func:`saddle_gaps`.
    ``f_sad = theory.predict(problem).objective + saddle_gap(problem)``."""
    if any(np.ndim(getattr(problem, k)) for k in ("lambda_w", "lambda_h", "lambda_b")) \
            or np.ndim(problem.lambda_hidden) > 1:
        raise ProblemError("saddle_gap needs scalar coefficients; got a batched problem (use saddle_gaps)")
    g = float(saddle_gaps(problem))
    return None if math.isnan(g) else g


def hessian_bound(problem: Problem, f, xp=np, *, samples=None, floor=None) -> np.ndarray:
    """L(f): an upper bound on the largest Hessian eigenvalue of f at every point of the sublevel
    set {f' <= f} (THEORY.md §8), elementwise over ``f`` and the problem's coefficients (scalars or
    arrays that broadcast, e.g. (lanes,)); returns float64 of the broadcast shape.

        L(f) = a·(1[bias] + 2(f − D)/(N min(λ_W, λ_H))) + √(a·2f/N) + max(λ_W, λ_H, λ_b),  a = max(α, 1)

    (a = 1 for the MSE loss and D = 0: THEORY's formula). Proof: the Hessian's quadratic form at
    direction (dW, dH, db) is (1/N)||Ω^½(dW H + W dH + db 1ᵀ)||² + (2/N)⟨Ω(WH + b1ᵀ − T), dW dH⟩ + the
    regularizers; the first term is at most a(1[bias] + (||W||² + ||H||²)/N)||d||² by Cauchy–Schwarz,
    with ||W||² + ||H||² <= 2(f − D)/min(λ_W, λ_H) on the sublevel set, D any lower bound on the data
    term; the second at most ||Ω(WH + b1ᵀ − T)||_F ||d||²/N <= √(2aNf)||d||²/N. +inf where
    min(λ_W, λ_H) = 0. The proof holds for any target T (THEORY §7: class sizes, soft labels,
    regression). Depth L > 1: THEORY §9.3's L_deep (:func:`deep_hessian_bound`, per-lane
    ``lambda_hidden`` (lanes, L − 1) included), which at L = 1 is this L(f).

    ``xp``: numpy (default) or jax.numpy (traceable; the rescaled loss's α must then be concrete).
    ``samples``: N per lane (broadcasting with ``f``), for a batch whose lanes have different class
    sizes (default ``problem.N``). ``floor``: D per lane (default 0), e.g. :func:`data_floor`: the
    residual no point of rank <= d avoids, which a target with a large unreachable part (regression,
    d below its rank) would otherwise count as weight norm.
    """
    if problem.depth > 1:  # THEORY §9.3 (H2)
        N = problem.N if samples is None else samples
        return deep_hessian_bound(f, _layer_stack(problem, xp), N, bias=problem.bias,
                                  lambda_b=_coef(problem, "lambda_b", xp), floor=floor, xp=xp)
    f = xp.maximum(xp.asarray(f, dtype=_float(xp)), 0.0)
    lw, lh, lb = (_coef(problem, k, xp) for k in ("lambda_w", "lambda_h", "lambda_b"))
    a = max(float(np.max(np.asarray(problem.alpha))), 1.0) if problem.loss != "mse" else 1.0
    N = problem.N if samples is None else xp.asarray(samples, dtype=_float(xp))
    reg = f if floor is None else xp.maximum(f - xp.asarray(floor, dtype=_float(xp)), 0.0)  # >= the regularizers
    lmin = xp.minimum(lw, lh)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = xp.where(lmin > 0, 2.0 * reg / (N * xp.where(lmin > 0, lmin, 1.0)), np.inf)
    lmax = xp.maximum(xp.maximum(lw, lh), lb if problem.bias else 0.0)
    return a * (float(problem.bias) + quad) + xp.sqrt(a * 2.0 * f / N) + lmax


def _layer_stack(problem: Problem, xp=np):
    """(λ_0 = λ_H, λ_1, ..., λ_L) of ``problem`` stacked on a last axis: shape (..., L + 1), the
    coefficient shape (e.g. (lanes,)) in front; float64 (xp's widest float), traceable."""
    fl = _float(xp)
    lams = [xp.asarray(problem.lambda_h, dtype=fl)] + [xp.asarray(v, dtype=fl) for v in problem.layer_lambdas]
    shape = functools.reduce(np.broadcast_shapes, [np.shape(v) for v in lams])
    return xp.stack([xp.broadcast_to(v, shape) for v in lams], axis=-1)


def deep_hessian_bound(f, lambdas, samples, *, bias: bool = False, lambda_b=0.0, floor=None, xp=np) -> np.ndarray:
    """L_deep(F) of THEORY §9.3 (H2): an upper bound on the largest Hessian eigenvalue of the deep
    linear UFM's f at every point of the sublevel set {f' <= F} (m = L + 1 factors A_0 = H,
    A_1 = W_1, ..., A_L = W_L with weights λ_0 = λ_H, λ_1, ..., λ_L; Λ = Π λ_i):

        L_deep(F) = 1[bias] + max(λ_i, λ_b) + m·maxλ·(2F'/m)^{m−1}/(ΛN)
                    + (m − 1)√(2F/N)·max_{i<j} √((2F'/(m − 2))^{m−2} λ_iλ_j/Λ),     F' = F − D

    ((2F'/(m−2))^{m−2} := 1 at m = 2, where this is §8's L(f)). Proof: the Hessian's quadratic form at
    direction d = (dA_0..dA_L, db) is (1/N)||DZ[d]||² + (1/N)⟨R, D²Z[d, d]⟩ + Σλ_i||dA_i||² + λ_b||db||²
    with Z = A_L⋯A_0 + b1ᵀ, R = Z − Y. First term: ||DZ[d]|| <= Σ_i Π_{k≠i}||A_k|| ||dA_i|| + √N||db||,
    so by Cauchy–Schwarz at most (1[bias] + Σ_i Π_{k≠i}||A_k||²/N)||d||²; with u_k = λ_k||A_k||²,
    Σ_k u_k <= 2F' on the sublevel set (the regularizers are at most f − D), Σ_i Π_{k≠i}||A_k||² =
    Σ_i λ_i Π_{k≠i}u_k/Λ <= maxλ·e_{m−1}(u)/Λ <= maxλ·m(2F'/m)^{m−1}/Λ (Maclaurin). Second term:
    ||D²Z[d, d]|| <= 2Σ_{i<j} Π_{k≠i,j}||A_k|| ||dA_i|| ||dA_j|| <= (m − 1)·max_{i<j}Π_{k≠i,j}||A_k||·||d||²,
    with Π_{k≠i,j}||A_k||² = λ_iλ_j Π_{k≠i,j}u_k/Λ <= λ_iλ_j(2F'/(m−2))^{m−2}/Λ (AM–GM), and
    ||R|| <= √(2NF). Elementwise over ``f`` and the coefficients; computed in logarithms (Λ
    underflows in float32 at depth).

    Args:
        f: F, any shape broadcasting with the coefficients (e.g. (lanes,)); negative F counts as 0.
        lambdas: (..., m) the weights λ_0 = λ_H, λ_1, ..., λ_L on the last axis (m >= 2 static).
        samples: N (scalar or broadcasting with ``f``).
        bias: whether the model carries b (bias modes (A), (C)); ``lambda_b``: its λ_b.
        floor: D, a lower bound on the data term (default 0).
        xp: numpy or jax.numpy (traceable).

    Returns:
        float64 (xp's widest float) of the broadcast shape; +inf where some λ_i is 0.
    """
    fl = _float(xp)
    lams = xp.asarray(lambdas, dtype=fl)
    m = int(lams.shape[-1])
    if m < 2:
        raise ConfigError(f"lambdas must hold m >= 2 weights (λ_H, λ_1, ..., λ_L) on its last axis, got {m}",
                          field="lambdas")
    F = xp.maximum(xp.asarray(f, dtype=fl), 0.0)
    reg = F if floor is None else xp.maximum(F - xp.asarray(floor, dtype=fl), 0.0)
    N = xp.asarray(samples, dtype=fl)
    pos = xp.all(lams > 0, axis=-1)
    logs = xp.log(xp.where(pos[..., None], lams, 1.0))
    log_prod = xp.sum(logs, axis=-1)
    top = xp.sort(logs, axis=-1)
    lmax = xp.max(lams, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_reg = xp.log(reg)  # −inf at F' = 0: the terms below are then 0
        norms = m * xp.exp(top[..., -1] + (m - 1) * (log_reg + math.log(2.0 / m)) - log_prod) / N
        pair = 0.5 * (top[..., -1] + top[..., -2] - log_prod)
        if m > 2:
            pair = pair + 0.5 * (m - 2) * (log_reg + math.log(2.0 / (m - 2)))
        cross = (m - 1) * xp.sqrt(2.0 * F / N) * xp.exp(pair)
    lmax = xp.maximum(lmax, xp.asarray(lambda_b, dtype=fl)) if bias else lmax
    out = float(bias) + lmax + norms + cross
    return xp.where(pos, out, math.inf)


def step_limit(problem: Problem) -> float:
    """2/L(f*): the certificate (:func:`certified`) can hold only at steps η below this, as it
    evaluates L at some f >= f* and L grows with f (THEORY §8; depth > 1: L_deep of §9.3, small —
    K=4, n=5, d=8, λ=5e-3 gives 0.37 at L = 2). Scalar coefficients; NaN where no certificate applies
    (:func:`saddle_gap` None) or f* is unknown."""
    if saddle_gap(problem) is None:
        return math.nan
    f_star = _theory.predict(problem).objective
    if f_star is None or not math.isfinite(f_star):
        return math.nan
    floor = data_floor(problem) if problem.general else None
    return float(2.0 / hessian_bound(problem, f_star, floor=floor))


def data_floor(problem: Problem) -> float:
    """D: a lower bound on the data term ||WH + b1ᵀ − T||²/(2N) over every point, for
    :func:`hessian_bound`. §7 problems ((A), (B), scalar coefficients): Σ_{j>d} σ_j²/(2N) over the
    singular values of the (centred) target (Eckart–Young: W H has rank <= d; in (A) the free bias
    removes the sample mean). 0 elsewhere (balanced problems keep THEORY's L; (C) has no gap)."""
    if not problem.general or problem.loss != "mse" or (problem.bias and np.any(np.asarray(problem.lambda_b) != 0)):
        return 0.0
    return _imbalanced.data_floor(problem)


def _gamma(m: float, u: float) -> float:
    """γ_m = m u/(1 − m u), the classic bound on the relative error of m roundings (inf past 1/2)."""
    mu = m * u
    return mu / (1.0 - mu) if mu < 0.5 else math.inf


def data_norms(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """(N, ||T||_F) of ``problem``'s data as float64: the samples and the Frobenius norm of the
    target (one-hot: √N; rescaled MSE: M√N; a target matrix: ||T||_F), what the curvature and
    rounding bounds of a §7 problem need per lane. Also takes the engine's per-lane data (class
    sizes (lanes, K), targets (lanes, K, N), a :class:`~ncflow.problem.RowBasis`): shape (lanes,)."""
    if problem.row_basis is not None:
        rb = problem.row_basis
        TQ = np.asarray(rb.TQ, np.float64)
        return np.asarray(rb.N, np.float64), np.sqrt(np.sum(TQ * TQ, axis=(-2, -1)))
    if problem.targets is not None:
        T = np.asarray(problem.targets, np.float64)
        return np.asarray(T.shape[-1], np.float64) + np.zeros(T.shape[:-2]), np.sqrt(np.sum(T * T, axis=(-2, -1)))
    if problem.class_sizes is not None:
        N = np.sum(np.asarray(problem.class_sizes, np.float64), axis=-1)
        return N, np.sqrt(N)
    N = float(problem.N)
    t = 1.0 if problem.loss == "mse" else float(np.max(np.abs(np.asarray(problem.target_scale, np.float64))))
    return np.asarray(N), np.asarray(t * math.sqrt(N))


def _lane_data(problem: Problem, samples, target_norm):
    """(N, ||T||_F) of a §7 lane: the given values, or where None the problem's own (:func:`data_norms`)."""
    if samples is None or target_norm is None:
        N0, T0 = data_norms(problem)
        samples = N0 if samples is None else samples
        target_norm = T0 if target_norm is None else target_norm
    return samples, target_norm


def _cancellation(Z, P, T, M, b2, g, xp):
    """||Z|| ||e|| + 2||e||² with ||e|| <= g·A: the data term's cancellation part, times 2N (see
    :func:`rounding_bound`). ``Z`` bounds the residual's norm, ``P`` ||W|| ||H||-like (or ||W|| ||M||),
    ``T`` the target's norm, ``M`` the columns the bias is broadcast over (N, or K collapsed) and
    ``b2`` ||b||²; A = P + min(Z + P + T, √(M ||b||²)) + T >= || |W||H| + |b|1ᵀ + |T| ||."""
    B = xp.minimum(Z + P + T, xp.sqrt(M * b2))  # >= √M ||b|| (also when λ_b = 0: b from the residual)
    A = P + B + T
    return Z * g * A + 2 * (g * A) ** 2


def _rounding_general(problem: Problem, f, space: str, u: float, u_in: float, norms, N, T, xp):
    """The rounding bound of a §7 problem (class sizes or a target matrix; MSE): :func:`rounding_bound`'s
    derivation with the lane's own N and ||T||_F (arrays, broadcasting with ``f``).

    Collapsed one-hot: Σ_k n_k ||r_k||² = ||R_m D^½||², and the entrywise error of R_m = W M + b1ᵀ − I
    is at most γ(|W||M| + |b|1ᵀ + I), so in the weighted norm ||e D^½|| <= γ(||W|| ||M D^½|| + √N||b|| +
    √N) with ||M D^½||² = Σ n_k||μ_k||² <= ||H||²; collapsed targets: R_c = W C + b qᵀ − T_Q with
    ||C|| <= ||H||, ||q|| = √N, ||T_Q|| = ||T||. Both are the full form's A = ||W|| ||H|| + √N||b|| +
    ||T||, with ||Z|| <= √(2Nf) (the weighted data term is at most f), plus tr(W G Wᵀ)'s term. The
    per-entry γ is γ_{d+4}: a length-d dot product, two additions, and the dtype's rounding of the
    stored T (T_Q) and q. The relative part counts the terms of the largest sum: full K N, d N, K d;
    collapsed K r, d r, K d with r = K (one-hot) or r <= 2K + 1 (targets, padded to the batch's r);
    the +10 covers the few scalar roundings (N and the coefficients stored in the dtype, 1/(2N), λ/2,
    the sums of the parts)."""
    K, d = problem.K, problem.d
    WH, WG, b2 = norms
    g_z = _gamma(d + 4, u) + 2.1 * u_in  # per entry of the residual, relative to |W||H| + |b| + |T|
    Z = xp.sqrt(2.0 * N * f)  # >= the (weighted) residual's norm
    data = _cancellation(Z, WH, T, N, b2, g_z, xp) / N
    if space == "full":
        Nmax = problem.N  # static: the batch's largest N
        m = max(K * Nmax, d * Nmax, K * d, K) + 10
    else:
        r = K if problem.targets is None and problem.row_basis is None else 2 * K + 1
        g_s = _gamma(2 * d + K * d + 2, u) + 4.2 * u_in  # tr(W G Wᵀ) relative to ||W||² tr G
        data = data + g_s * WG / (2 * N)
        m = max(K * r, d * r, K * d, K, d) + 10
    g = _gamma(m, u)
    return g * f + (1.0 + g) * data


def _rounding_deep(problem: Problem, f, form: str, u: float, u_in: float, sq_norm, xp, N) -> np.ndarray:
    """The rounding bound of the deep linear UFM's f (depth L > 1), evaluated by
    :mod:`ncflow.maths.deep_objective` (``form`` "full") or :mod:`ncflow.maths.deep_collapsed`
    ("collapsed"), for states whose exact objective is ``f``; ``N`` the samples (scalar or per lane).

    :func:`rounding_bound`'s argument with the product of m = L + 1 factors in place of W H. The
    output's entries are a chain of L + 1 products (in either order: product first P = W_L⋯W_1 then
    P H, or layer by layer), so |Ẑ − Z| <= γ_s(|W_L|⋯|W_1||H| + |b|1ᵀ + |Y|) entrywise with
    s = d_0 + ... + d_{L−1} + 2 (the inner dimensions and the two additions; first order,
    γ_a + γ_b <= γ_{a+b}), and || |W_L|⋯|H| ||_F <= Π_i ||A_i||_F =: Π. On the sublevel set
    Π² = Π_i u_i/Λ <= (2f/m)^m/Λ (u_i = λ_i||A_i||², Σu_i <= 2f, AM–GM), and with ``sq_norm`` S
    (Σ_i ||A_i||² + ||b||²) Π² <= (S/m)^m; the smaller is used. The data term then moves by
    (||Z|| ||e|| + 2||e||²)/N with ||e|| <= γ_s(Π + √N||b|| + √N), ||Z|| <= √(2Nf) (:func:`_cancellation`,
    with ||Y||_F = √N for one-hot classes, any sizes). Collapsed: the residual R_m = P M + b1ᵀ − I in the
    sample-weighted norm (Σ_k n_k||r_k||² <= 2Nf; ||M D^½|| <= ||H||) gives the same terms, and
    tr(P G Pᵀ) moves by at most γ_{2s + K d_0}·Π_{l>=1}||W_l||² tr G <= γ_{2s+Kd_0}·Π² (P's own rounding
    twice, P G and the K d_0-term sum; G positive semidefinite). The relative part counts the terms of
    the largest sum (full K N, d_0 N, d_l d_{l−1}; collapsed K², K d_0, d_l d_{l−1}) + L + 10 for the
    layers' regularizers and the scalar roundings. Rounded matrix-product inputs (``u_in``) add 2.1·L·u_in
    per entry (each of the L products rounds its two inputs)."""
    K, L = problem.K, problem.depth
    dims = tuple(problem.layer_widths) + (K,)
    s = sum(dims[:-1])
    m = L + 1
    d0 = dims[0]
    fl = _float(xp)
    lams = _layer_stack(problem, xp)
    lb = _coef(problem, "lambda_b", xp)
    N = xp.asarray(N, dtype=fl)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = xp.all(lams > 0, axis=-1)
        log_prod = xp.sum(xp.log(xp.where(pos[..., None], lams, 1.0)), axis=-1)
        log_p2 = xp.where(pos, m * xp.log(2.0 * f / m) - log_prod, math.inf)  # log Π² on the sublevel set
        if sq_norm is not None:
            log_p2 = xp.minimum(log_p2, m * xp.log(sq_norm / m))
        P = xp.exp(0.5 * log_p2)
        if problem.bias:
            b2 = xp.where(lb > 0, 2.0 * f / xp.where(lb > 0, lb, 1.0), math.inf)
            if sq_norm is not None:
                b2 = xp.minimum(b2, sq_norm)
        else:
            b2 = 0.0 * f
        g_z = _gamma(s + 2, u) + 2.1 * L * u_in
        T = xp.sqrt(N)
        data = _cancellation(xp.sqrt(2.0 * N * f), P, T, N, b2, g_z, xp) / N
        inner = max(dims[i] * dims[i - 1] for i in range(1, L + 1))
        if form == "full":
            n_max = problem.N  # static: the batch's largest N
            terms = max(K * n_max, d0 * n_max, inner, K)
        else:
            g_s = _gamma(2 * s + K * d0 + 2, u) + 4.2 * L * u_in
            data = data + g_s * P * P / (2.0 * N)
            terms = max(K * K, K * d0, inner, K, d0)
    g = _gamma(terms + L + 10, u)
    return g * f + (1.0 + g) * data


def _rounding_at(problem: Problem, f: np.ndarray, space: str, u: float, u_in: float,
                 sq_norm: np.ndarray | None, xp=np, data=None) -> np.ndarray:
    """The a-priori rounding bound of one space, for states whose exact objective is ``f``
    (``data``: (N, ||T||_F) of a §7 problem's lanes)."""
    if problem.depth > 1:
        return _rounding_deep(problem, f, space, u, u_in, sq_norm, xp, problem.N if data is None else data[0])
    K, d, n, N = problem.K, problem.d, problem.n, problem.N
    lw, lh, lb = (_coef(problem, k, xp) for k in ("lambda_w", "lambda_h", "lambda_b"))
    mse = problem.loss == "mse"
    alpha = 1.0 if mse else float(np.max(np.asarray(problem.alpha, np.float64)))
    t = 1.0 if mse else float(np.max(np.abs(np.asarray(problem.target_scale, np.float64))))
    w_hi, w_lo = max(alpha, 1.0), min(alpha, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        W2 = xp.where(lw > 0, 2.0 * f / xp.where(lw > 0, lw, 1.0), math.inf)  # >= ||W||_F²
        H2 = xp.where(lh > 0, 2.0 * f / xp.where(lh > 0, lh, 1.0), math.inf)  # >= ||H||_F² = n||M||² + tr G
        WH = xp.sqrt(W2 * H2)  # >= ||W||_F ||H||_F
        WG = W2 * H2  # >= ||W||_F² tr G
        if sq_norm is not None:
            W2, H2 = xp.minimum(W2, sq_norm), xp.minimum(H2, sq_norm)
            WH, WG = xp.minimum(WH, sq_norm / 2), xp.minimum(WG, sq_norm**2 / 4)
        b2 = xp.where(lb > 0, 2.0 * f / xp.where(lb > 0, lb, 1.0), math.inf) if problem.bias else 0.0 * f
        if sq_norm is not None:
            b2 = xp.minimum(b2, sq_norm)
    if problem.general:
        return _rounding_general(problem, f, space, u, u_in, (WH, WG, b2), *data, xp)
    g_z = _gamma(d + 2, u) + 2.1 * u_in  # per-entry error of (W @ H + b − T) relative to |W||H| + |b| + |T|
    if space == "full":
        Z = xp.sqrt(2.0 * N * f / w_lo)  # >= ||WH + b1ᵀ − T||_F
        data = w_hi * _cancellation(Z, WH, t * math.sqrt(N), N, b2, g_z, xp) / N
        m = max(K * N, d * N, K * d, K) + 10
    else:
        Z = xp.sqrt(2.0 * K * f)  # >= ||W M + b1ᵀ − I||_F, as n||R_m||²/(2N) <= f
        WM = WH / math.sqrt(n)  # >= ||W||_F ||M||_F
        g_s = _gamma(2 * d + K * d + 2, u) + 4.2 * u_in  # tr(W G Wᵀ) relative to ||W||² tr G
        # 2.0 * N: a Python int 2N > 2^31 would reach a jitted bound as an int32 (N = 100·2^24)
        data = n * _cancellation(Z, WM, math.sqrt(K), K, b2, g_z, xp) / N + g_s * WG / (2.0 * N)
        m = max(K * K, d * K, K) + 10
    g = _gamma(m, u)
    return g * f + (1.0 + g) * data


def rounding_bound(problem: Problem, f, *, space: str | None = None, dtype=None, sq_norm=None,
                   dot_input_roundoff: float = 0.0, samples=None, target_norm=None, xp=np) -> np.ndarray:
    """An upper bound on |f_computed − f| when f is evaluated in floating point by ncflow's objective:
    :func:`ncflow.maths.objective.objective` / ``value_and_gradient`` (``space="full"``) or
    :func:`ncflow.maths.collapsed.objective` / ``value_and_grad_norm`` (``space="collapsed"``);
    None: the larger of the two (the collapsed form exists for the MSE loss only). THEORY.md §8
    ("in floating point: evaluate f with its rounding bound").

    Args:
        problem: scalar coefficients or arrays that broadcast with ``f`` (e.g. (lanes,)).
        f: the computed objective(s), any shape (e.g. (lanes,)).
        dtype: the evaluation dtype (default the problem's); its eps sets the unit u.
        sq_norm: optional ||W||_F² + ||H||_F² + ||b||² of each state (collapsed: ||W||² + n||M||² +
            tr G + ||b||²), broadcasting with ``f``: tightens the norms, which otherwise come from
            the sublevel set alone (||W||² <= 2f/λ_W, ||H||² <= 2f/λ_H, ||b||² <= 2f/λ_b) and are
            loose for small λ.
        dot_input_roundoff: the relative rounding of matrix-product INPUTS, 0 for true products in
            the dtype; 2**-11 where float32 products run in TF32 (JAX's default precision on
            NVIDIA GPUs since Ampere), 2**-8 for bfloat16 passes.
        samples, target_norm: N and ||T||_F per lane (broadcasting with ``f``) of a §7 problem
            (class sizes or targets; default :func:`data_norms` of the problem, which needs its
            data concrete); ignored for balanced problems.
        xp: numpy (default) or jax.numpy (traceable: the wide plan's stop loop).

    Returns:
        float64 array of the broadcast shape; +inf where the bound is uninformative, where f is
        not finite and where f < 0 (a state outside the assumptions, e.g. G not semidefinite).

    Derivation (first order, standard model fl(x∘y) = (x∘y)(1+δ), |δ| <= u; γ_m = mu/(1 − mu)).
    f is a sum of nonnegative parts: the data term ||Z||²/(2N) with Z = WH + b1ᵀ − T (collapsed:
    (n||R_m||² + tr(WGWᵀ))/(2N), R_m = WM + b1ᵀ − I) and the regularizers λ||·||²/2. Every such sum
    of m nonnegative computed terms, in any order, is exact to a factor 1 ± γ_m; the coefficients
    rounded to the dtype add one u each. What is not relative to f is the cancellation inside Z:
    each entry is a length-d dot product plus two additions, so |Ẑ − Z| <= γ_{d+2}(|W||H| + |b|1ᵀ +
    |T|) entrywise, which moves the data term by at most (||Z|| ||e|| + ||e||²/2)/N with
    ||e|| <= γ_{d+2}(||W||_F||H||_F + √N||b|| + ||T||_F); the code takes (||Z|| ||e|| + 2||e||²)/N,
    which also holds with ||Z|| bounded from the COMPUTED f (||Z|| <= ||Ẑ|| + ||e||). tr(WGWᵀ)
    moves by at most γ_{2d+Kd+2}||W||_F² tr G (G positive semidefinite). Norms are bounded by f as above (and
    √N||b|| <= ||Z|| + ||W||||H|| + ||T|| when λ_b = 0). Hence

        |f̂ − f| <= γ_m f + (1 + γ_m)·(cancellation terms),   m = max(KN, dN, Kd, K) + 10
                                                              (collapsed: max(K², dK, K) + 10).

    The constant: u is taken as the dtype's eps (twice the unit roundoff of round-to-nearest), which
    covers fused multiply-adds, any summation order and the neglected O(u²) terms with a factor 2 to
    spare. The bound is a function of the exact f; it is evaluated at f̂ + 2B(f̂) (B the bound at
    f̂), which covers the exact f to first order. The full form's m grows like dN: for large
    problems in float32 the bound blocks early calls (evaluate in the collapsed space, or in
    float64 from the state: ``dtype="float64"``).

    Class sizes and targets (THEORY §7): the same argument with the lane's N and ||T||_F (one-hot
    √N) in A, and the collapsed data term written in the sample-weighted norm (one-hot:
    Σ_k n_k||r_k||² = ||R_m D^½||²) or in row-space coordinates (targets: ||R_c||², ||q|| = √N,
    ||T_Q|| = ||T||), which gives the full form's A; see :func:`_rounding_general`.

    Deep linear UFMs (depth L > 1; ``space`` "deep_full"/"full" or "deep_collapsed"/"collapsed", None:
    the larger): the same argument for the chain of L + 1 factors, with ||W|| ||H|| replaced by
    Π_i ||A_i||_F <= √((2f/m)^m/Λ) (and <= √((S/m)^m) from ``sq_norm`` S); see :func:`_rounding_deep`.
    The deep ReLU UFM has no rounding bound (ConfigError).
    """
    if space is not None and space not in SPACES:
        raise ConfigError(f"space must be one of {', '.join(SPACES)} or None, got {space!r}", field="space")
    if problem.depth > 1 and problem.activation != "linear":
        raise ConfigError(f"rounding_bound covers the deep LINEAR UFM's f; got activation {problem.activation!r} "
                          "(no certificate for the deep ReLU UFM)", field="activation")
    if not (math.isfinite(dot_input_roundoff) and 0.0 <= dot_input_roundoff < 1.0):
        raise ConfigError(f"dot_input_roundoff must be in [0, 1), got {dot_input_roundoff!r}",
                          field="dot_input_roundoff")
    u = float(np.finfo(np.dtype(problem.dtype if dtype is None else dtype)).eps)
    spaces = [_FORM[space]] if space is not None else ["full"] + (["collapsed"] if problem.loss == "mse" else [])
    f = xp.asarray(f, dtype=_float(xp))
    finite = xp.isfinite(f) & (f >= 0)  # f < 0: not a sum of nonnegative parts (e.g. G not PSD)
    f = xp.where(finite, f, 0.0)
    sq = None if sq_norm is None else xp.asarray(sq_norm, dtype=_float(xp)) * (1.0 + 1e-3)
    data = None
    if problem.general:
        data = tuple(xp.asarray(v, dtype=_float(xp)) for v in _lane_data(problem, samples, target_norm))

    def bound(x):
        return functools.reduce(xp.maximum, [_rounding_at(problem, x, s, u, dot_input_roundoff, sq, xp, data)
                                             for s in spaces])

    with np.errstate(invalid="ignore", over="ignore"):
        b0 = bound(f)
        out = bound(f + 2.0 * b0)
    return xp.where(finite & ~xp.isnan(out), out, math.inf)


def _as_gap(gap) -> np.ndarray:
    """``gap`` as float64 with NaN for None (scalar None, or None entries of a sequence)."""
    if gap is None:
        return np.array(np.nan)
    a = np.asarray(gap)
    if a.dtype == object:
        a = np.vectorize(lambda g: np.nan if g is None else float(g), otypes=[np.float64])(a)
    return a.astype(np.float64)


def certified(problem: Problem, f, lr, f_star, gap, margin: float = 0.1, *, space: str | None = None,
              sq_norm=None, dot_input_roundoff: float = 0.0, samples=None, target_norm=None, floor=None,
              xp=np) -> np.ndarray:
    """Where the early certificate of THEORY.md §8 holds, elementwise over lanes:

        (H1) f + r < f* + (1 − margin)·gap    and    (H2) 0 < lr·L(f + r) < 2,

    r = :func:`rounding_bound` of f in the problem's dtype (``space``, ``sq_norm``,
    ``dot_input_roundoff``, ``samples`` and ``target_norm`` are passed on), L = :func:`hessian_bound`
    (at ``samples``: each lane's N, for a §7 batch whose lanes have different class sizes, and
    ``floor``: each lane's :func:`data_floor`; both default to the problem's own for a §7 problem).
    A lane that passes is ``global``: its GD run from this state converges to a global minimizer.

    Args:
        problem: sizes, bias mode, loss and dtype; coefficients scalars or (lanes,) arrays.
        f: the current objective of each lane as computed in the problem's dtype, () or (lanes,).
        lr: the GD step of each lane, () or (lanes,).
        f_star: the global minimum f* of each lane (``theory.predict``), () or (lanes,).
        gap: f_sad − f* of each lane (:func:`saddle_gap`/:func:`saddle_gaps`): a float, an array
            (NaN = no certificate), None, or a sequence with None entries; False wherever None/NaN.
        margin: the fraction of the gap kept free, in [0, 1).

    Returns:
        bool array of the broadcast shape of all inputs (and the coefficients).
    """
    if not (isinstance(margin, (int, float, np.floating)) and 0.0 <= margin < 1.0):
        raise ConfigError(f"margin must be in [0, 1), got {margin!r}", field="margin")
    if xp is np:
        g = _as_gap(gap)
        if np.any(g < 0):
            raise ConfigError(f"gap must be >= 0 (f_sad − f*) or None/NaN, got min {np.nanmin(g)!r}", field="gap")
    else:  # traced: an array of gaps (NaN = none), checked where it was built
        g = xp.asarray(gap, dtype=_float(xp))
    fl = _float(xp)
    f, lr, f_star = (xp.asarray(v, dtype=fl) for v in (f, lr, f_star))
    if problem.general:
        samples, target_norm = _lane_data(problem, samples, target_norm)
    if problem.general and floor is None:
        floor = data_floor(problem)
    f_up = f + rounding_bound(problem, f, space=space, sq_norm=sq_norm, dot_input_roundoff=dot_input_roundoff,
                              samples=samples, target_norm=target_norm, xp=xp)
    with np.errstate(invalid="ignore", over="ignore"):
        h1 = f_up < f_star + (1.0 - margin) * g
        h2 = (lr > 0) & (lr * hessian_bound(problem, f_up, xp, samples=samples, floor=floor) < 2.0)
    ok = h1 & h2 & xp.isfinite(f) & ~xp.isnan(g) & xp.isfinite(f_star)
    coef_shapes = (np.shape(getattr(problem, k)) for k in ("lambda_w", "lambda_h", "lambda_b"))
    shape = np.broadcast_shapes(ok.shape, *coef_shapes)
    return xp.broadcast_to(ok, shape).copy()
