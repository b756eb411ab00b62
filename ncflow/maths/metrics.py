"""Neural-collapse metrics (THEORY.md §5) and distances to the predicted optimum.

Written for one run; vmap over runs. Every metric is computed from *class statistics*
``(W, M, G, b)`` — class means ``M (d, K)`` and within-class scatter ``G = Σ e eᵀ (d, d)`` — so
the same code serves the full engine (via :func:`class_stats`) and the collapsed one.

Conventions (the paper's code): ``Σ_W = G / N``, ``Σ_B = H̄ H̄ᵀ / K`` with ``H̄ = M − μ_G``,
``W̃`` = W with its rows centred, ``P = (I − 11ᵀ/K)/sqrt(K−1)``.
Class sizes (THEORY §7; the stats carry ``counts`` n_k): μ_G is the sample-weighted mean
``M n / N`` (what the bias acts on), Σ_W = G/N, Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ (the
paper-code convention) and ``nc1_weighted`` the same NC1 with the n_k-weighted
Σ_B = Σ_k (n_k/N)(μ_k − μ_G)(μ_k − μ_G)ᵀ. NC2/NC3 still compare with the simplex ETF (they are not 0
at an imbalanced optimum); the distances to the PREDICTED W Wᵀ, MᵀM and W M
(:func:`optimum_distance`: ``gram_error``, ``gram_h_error``, ``cross_error``) are the measures that
vanish there. NC4 = ||W μ_G + b|| is ||p|| at the (A) optimum. Balanced stats (``counts`` None) keep
the plain means and no ``nc1_weighted``.
Degenerate points (these never return NaN):
- NC1 = tr(Σ_W Σ_B^†)/K uses a pseudo-inverse with relative cut-off; where Σ_B = 0 exactly
  (the zero solution) there is no between-class spread to compare with, and NC1 is defined as 0.
- A zero matrix normalizes to zero, so NC2 = NC3 = ||P||_F = 1 where W̃ (or W̃H̄) vanishes.
- ``within_between`` = tr Σ_W / tr Σ_B is 0 when both vanish and +inf when only Σ_B does.
- Σ_W is positive semi-definite; where it has decayed to rounding noise (e.g. 1e-39 in a long
  collapsed run) NC1 and tr Σ_W are clipped at 0 rather than reported as tiny negatives.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.maths.objective import Params, coeff, labels
from ncflow.maths.theory import PredictionArrays
from ncflow.problem import Problem


class ClassStats(NamedTuple):
    """Class statistics of one run: ``W (K, d)``, means ``M (d, K)``, scatter ``G (d, d)``, ``b (K,)``,
    and the class sizes ``counts (K,)`` (None: balanced)."""

    W: Float[Array, "K d"]
    M: Float[Array, "d K"]
    G: Float[Array, "d d"]
    b: Float[Array, " K"]
    counts: Float[Array, " K"] | None = None


class NCMetrics(NamedTuple):
    """Scalar collapse metrics of one run (each a 0-d array; a vmapped batch has shape (runs,))."""

    nc1: Float[Array, ""]
    nc2: Float[Array, ""]
    nc3: Float[Array, ""]
    nc4: Float[Array, ""]
    nc2_uncentered: Float[Array, ""]
    within_between: Float[Array, ""]
    nc1_weighted: Float[Array, ""]


class OptimumDistance(NamedTuple):
    """Distance of one run to the predicted optimum, rotation-invariant.

    ``gap``: f − f*. ``gram_error``: ||W Wᵀ − (W Wᵀ)*||_F / max(||(W Wᵀ)*||_F, 1) where the
    Gram is unique, else the same for the sorted spectra (rank-limited optima); 0 where the
    theory fixes no geometry (λ_W λ_H = 0). ``self_duality``: ||Mᵀ − κ W||_F /
    max(||W||_F, 1) with κ = sqrt(λ_W/(n λ_H)). ``w_norm``, ``h_norm``: RMS ||w_k||, ||μ_k||.
    ``bias_error``: max_k |b_k − b*| (0 without a bias). ``gram_h_error``, ``cross_error``: the
    same relative distance of MᵀM and W M to the prediction (0 where it is not unique). With class
    sizes, ``self_duality`` is the balance residual ||λ_W WᵀW − λ_H HHᵀ||_F / (λ_W ||W||²) (per-class
    self-duality does not hold in (A) under imbalance).
    """

    gap: Float[Array, ""]
    gram_error: Float[Array, ""]
    self_duality: Float[Array, ""]
    w_norm: Float[Array, ""]
    h_norm: Float[Array, ""]
    bias_error: Float[Array, ""]
    gram_h_error: Float[Array, ""]
    cross_error: Float[Array, ""]


def class_stats(problem: Problem, params: Params) -> ClassStats:
    """Class means and within-class scatter of ``H (d, N)`` (class-major columns)."""
    if problem.general:
        return _general_stats(problem, params)
    d, K, n = problem.d, problem.K, problem.n
    Hk = params.H.reshape(d, K, n)
    M = jnp.mean(Hk, axis=2)
    E = (Hk - M[:, :, None]).reshape(d, K * n)
    return ClassStats(params.W, M, E @ E.T, params.b)


def _general_stats(problem: Problem, params: Params) -> ClassStats:
    """Class statistics with class sizes or labels (columns outside every class are ignored). A
    target matrix without labels has no classes: M = 0 and G = H Hᵀ (the NC metrics are then 0)."""
    if problem.targets is not None and problem.labels is None and problem.class_sizes is None:
        H = params.H
        return ClassStats(params.W, jnp.zeros((H.shape[0], problem.K), H.dtype), H @ H.T, params.b, None)
    Y = labels(problem)  # (K, columns)
    counts = jnp.sum(Y, axis=1)
    M = (params.H @ Y.T) / jnp.maximum(counts, 1.0)
    E = (params.H - M @ Y) * jnp.sum(Y, axis=0)[None, :]
    return ClassStats(params.W, M, E @ E.T, params.b, counts)


def _safe_normalize(X):
    nrm = jnp.sqrt(jnp.sum(X * X))
    return jnp.where(nrm > 0, X / jnp.where(nrm > 0, nrm, 1.0), jnp.zeros_like(X))


def _etf_target(K: int, dtype) -> Float[Array, "K K"]:
    return (jnp.eye(K, dtype=dtype) - 1.0 / K) / np.sqrt(K - 1)


def nc_metrics(stats: ClassStats, N: int) -> NCMetrics:
    """NC1–NC4, uncentered NC2 and tr Σ_W / tr Σ_B of one run (conventions in the module doc)."""
    W, M, G, b, counts = stats
    d, K = M.shape
    dtype = W.dtype
    if counts is None:
        muG = jnp.mean(M, axis=1)
    else:
        N = jnp.sum(counts)
        muG = M @ counts / N
    Hbar = M - muG[:, None]
    Sw = G / N
    nc1 = _nc1(Hbar / float(np.sqrt(K)), Sw, K, dtype)  # Σ_B = (Hbar/√K)(Hbar/√K)ᵀ
    nc1w = nc1 if counts is None else _nc1(Hbar * jnp.sqrt(counts / N), Sw, K, dtype)
    P = _etf_target(K, dtype)
    Wc = W - jnp.mean(W, axis=0, keepdims=True)
    nc2 = jnp.sqrt(jnp.sum((_safe_normalize(Wc @ Wc.T) - P) ** 2))
    nc3 = jnp.sqrt(jnp.sum((_safe_normalize(Wc @ Hbar) - P) ** 2))
    nc4 = jnp.sqrt(jnp.sum((W @ muG + b) ** 2))
    nc2u = jnp.sqrt(jnp.sum((_safe_normalize(W @ W.T) - P) ** 2))
    trW, trB = jnp.maximum(jnp.trace(Sw), 0.0), jnp.sum(Hbar * Hbar) / K
    ratio = jnp.where(trB > 0, trW / jnp.where(trB > 0, trB, 1.0), jnp.where(trW > 0, jnp.inf, 0.0))
    return NCMetrics(nc1, nc2, nc3, nc4, nc2u, ratio, nc1w)


def _nc1(X: Float[Array, "d K"], Sw: Float[Array, "d d"], K: int, dtype) -> Float[Array, ""]:
    """tr(Σ_W Σ_B^†)/K with Σ_B = X Xᵀ: Σ_j u_jᵀ Σ_W u_j / s_j² over the left singular pairs (u_j, s_j)
    of X above a cut-off relative to the largest, set by ``dtype``: the state's dtype (X may have been
    promoted to float64 while its values carry float32 rounding, which the cut-off must discard).

    For d > K the pairs come from the K×K triangular factor R of X = QR: XᵀX = RᵀR, so the SVD
    R = U_R S Vᵀ gives the singular values S and u_j = X v_j / s_j, without forming Q (only the QR's
    Householder factorization runs: on GPUs that call is batched, while forming Q loops over the
    batch and a d×K SVD is not batched either)."""
    d = X.shape[0]
    if d > K:
        R = jax.lax.linalg.qr(X, full_matrices=False)[1]  # (K, K); Q is unused and never computed
        _, s, Vt = jnp.linalg.svd(R)
        Y = X @ Vt.T  # columns s_j u_j
        s2 = jnp.where(s > 0, s, 1.0) ** 2
        proj = jnp.einsum("dj,de,ej->j", Y, Sw, Y) / s2  # u_jᵀ Σ_W u_j
    else:
        U, s, _ = jnp.linalg.svd(X, full_matrices=False)
        proj = jnp.einsum("dj,de,ej->j", U, Sw, U)
    cutoff = jnp.max(s) * max(d, K) * jnp.finfo(dtype).eps * 10
    keep = s > cutoff
    inv_s2 = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0) ** 2, 0.0)
    return jnp.maximum(jnp.sum(inv_s2 * proj) / K, 0.0)


def rank_tolerance(dtype) -> float:
    """The cut-off factor of :func:`numerical_rank` for values carried in ``dtype``: sqrt(eps)
    (1.5e-8 in float64, 3.5e-4 in float32). Rounding alone leaves singular values near eps·s_1; a
    direction that GD is killing decays only geometrically (by about 1 − ηλ per step), so a stopped
    run still carries it at roughly ||∇f||/λ: sqrt(eps) sits between the two at the default stop."""
    return float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def numerical_rank(X: Float[Array, "d K"], dtype) -> Float[Array, ""]:
    """#{s_i > tol · max(s_1, 1)} over the singular values s (descending) of ``X``, tol =
    :func:`rank_tolerance` (dtype): relative to the largest singular value, and absolute below 1 (so
    a point shrinking to 0, such as a run at the origin W = H = 0, has rank 0, not the rank of its
    vanishing remainder). A float of X's dtype, shape ()."""
    s = jnp.linalg.svd(X, compute_uv=False)
    return jnp.sum(s > jnp.maximum(jnp.max(s), 1.0) * rank_tolerance(dtype)).astype(X.dtype)


def normalized_distance(A: Float[Array, "m m"], B: Float[Array, "m m"]) -> Float[Array, ""]:
    """||A/||A||_F − B/||B||_F||_F, shape (): the distance of two matrices' directions (a zero matrix
    normalizes to zero)."""
    return jnp.sqrt(jnp.sum((_safe_normalize(A) - _safe_normalize(B)) ** 2))


def class_mean_metrics(W_next: Float[Array, "e d"], M: Float[Array, "d K"], G: Float[Array, "d d"],
                       counts, N: int, center: bool, frame: str, dtype) -> tuple:
    """NC metrics of ONE layer of a deep model: ``(nc1, nc2, nc3, rank)``, each shape ().

    ``M (d, K)``, ``G (d, d)``: the layer's class means and within-class scatter Σ e eᵀ; ``W_next
    (e, d)``: the weights that read this layer; ``counts`` n_k (K,) or None (balanced); ``center``: use
    M̄ = M − μ_G (μ_G as :func:`nc_metrics`) for NC2, NC3 and the rank, else M itself; ``frame``: "etf"
    (target P of §5) or "orthogonal" (I/√K) for NC2; ``dtype``: the state's dtype (cut-offs).

    - nc1 = tr(Σ_W Σ_B^†)/K, exactly :func:`nc_metrics`' NC1 of these statistics;
    - nc2 = ||M̄ᵀM̄/||M̄ᵀM̄||_F − T||_F, T the frame's Gram (||T||_F = 1);
    - nc3 = ||W_nextᵀW_next/||·||_F − M̄M̄ᵀ/||·||_F||_F: the weights' row space and scale profile against
      the class means' (a Gram form of self-duality that needs no e = K; 0 at every critical point of
      THEORY §9.2 whose alive directions share one x);
    - rank = :func:`numerical_rank` of M̄ (d, K).
    """
    d, K = M.shape
    muG = jnp.mean(M, axis=1) if counts is None else M @ counts / jnp.sum(counts)
    N = N if counts is None else jnp.sum(counts)
    Hbar = M - muG[:, None]
    nc1 = _nc1(Hbar / float(np.sqrt(K)), G / N, K, dtype)
    Mb = Hbar if center else M
    target = _etf_target(K, M.dtype) if frame == "etf" else jnp.eye(K, dtype=M.dtype) / float(np.sqrt(K))
    nc2 = normalized_distance(Mb.T @ Mb, target)
    nc3 = normalized_distance(W_next.T @ W_next, Mb @ Mb.T)
    return nc1, nc2, nc3, numerical_rank(Mb, dtype)


def optimum_distance(problem: Problem, prediction: PredictionArrays, stats: ClassStats,
                     value: Float[Array, ""]) -> OptimumDistance:
    """Distance of one run (its class statistics and objective ``value``) to the prediction.

    ``prediction`` is :meth:`Prediction.arrays`, so problems of one shape can be vmapped.
    """
    W, M, G, b, counts = stats
    K = problem.K
    WWt = W @ W.T
    gram_scale = jnp.maximum(jnp.sqrt(jnp.sum(prediction.gram**2)), 1.0)
    gram_err = jnp.sqrt(jnp.sum((WWt - prediction.gram) ** 2)) / gram_scale
    eig = jnp.linalg.eigvalsh(WWt)[::-1]
    spec_scale = jnp.maximum(jnp.sqrt(jnp.sum(prediction.spectrum**2)), 1.0)
    spec_err = jnp.sqrt(jnp.sum((eig - prediction.spectrum) ** 2)) / spec_scale
    geom_err = jnp.where(prediction.gram_unique, gram_err, spec_err)
    geom_err = jnp.where(prediction.geometry_known, geom_err, 0.0)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    ok = (lw > 0) & (lh > 0)
    wf = jnp.sqrt(jnp.sum(W * W))
    if counts is None:
        kappa = jnp.sqrt(jnp.where(ok, lw, 1.0) / (problem.n * jnp.where(ok, lh, 1.0)))
        sd = jnp.where(ok, jnp.sqrt(jnp.sum((M.T - kappa * W) ** 2)) / jnp.maximum(wf, 1.0), 0.0)
    else:  # the balance λ_W WᵀW = λ_H H Hᵀ of every optimum (H Hᵀ = M D Mᵀ + G), relative to λ_W ||W||²
        HHt = (M * counts) @ M.T + G
        sd = jnp.sqrt(jnp.sum((lw * W.T @ W - lh * HHt) ** 2)) / jnp.maximum(lw * wf**2, jnp.finfo(W.dtype).tiny)
        sd = jnp.where(ok, sd, 0.0)

    def rel(X, P):  # relative to the prediction where it is unique, else 0 (balanced problems: not computed)
        if not problem.general:
            return jnp.zeros((), W.dtype)
        err = jnp.sqrt(jnp.sum((X - P) ** 2)) / jnp.maximum(jnp.sqrt(jnp.sum(P**2)), 1.0)
        return jnp.where(prediction.gram_unique & prediction.geometry_known, err, 0.0)
    bias_err = jnp.max(jnp.abs(b - prediction.bias)) if problem.bias else jnp.zeros((), W.dtype)
    return OptimumDistance(
        gap=value - prediction.objective,
        gram_error=geom_err,
        self_duality=sd,
        w_norm=jnp.sqrt(jnp.sum(W * W) / K),
        h_norm=jnp.sqrt(jnp.sum(M * M) / K),
        bias_error=bias_err,
        gram_h_error=rel(M.T @ M, prediction.gram_h),
        cross_error=rel(W @ M, prediction.cross),
    )
