"""Exact collapsed gradient descent of the deep LINEAR UFM (THEORY.md §9.4), for ONE run; vmap outside.

Write each column of H as ``h_{k,i} = μ_k + e_{k,i}`` (Σ_i e_{k,i} = 0). Full-batch GD on (W_1..W_L, H, b)
moves every class mean by the same step and every deviation by the same linear map, so the state

    Ws = (W_1 (d_1, d_0), ..., W_L (K, d_{L−1})),  M = [μ_1 … μ_K] (d_0, K),  G = Σ e eᵀ (d_0, d_0),  b (K,)

carries the full trajectory exactly. With D = diag(n_k), N = Σ n_k, P = W_L⋯W_1 (K, d_0),
R_m = P M + b 1ᵀ − I (columns r_k):

    dP = (R_m D Mᵀ + P G)/N,   ∇W_l = (W_L⋯W_{l+1})ᵀ dP (W_{l−1}⋯W_1)ᵀ + λ_l W_l,
    μ_k ← μ_k − η(Pᵀ r_k/N + λ_H μ_k),   G ← A G Aᵀ, A = (1 − ηλ_H) I − (η/N) PᵀP (old P),
    ∇b = R_m n/N + λ_b b,
    f = [Σ_k n_k ||r_k||² + tr(P G Pᵀ)]/(2N) + Σ_l λ_l/2 ||W_l||² + λ_H/2 (Σ_k n_k ||μ_k||² + tr G) + λ_b/2 ||b||²,
    ||∇f||² = Σ_l ||∇W_l||² + Σ_k n_k ||∇μ_k||² + tr((PᵀP/N + λ_H I)² G) + ||∇b||².

Every product involving the weights has K rows or K columns (:func:`~ncflow.maths.deep_objective.product_chain`,
:func:`~ncflow.maths.deep_objective.layer_gradients`), and ``A G Aᵀ`` is a rank-2K update of G, so a step costs
4K d_0² + 8K² d_0 + 6K Σ_{l<L} d_l d_{l−1} flops, independent of N (L = 1: §4's step, in its order).
Not valid for ReLU (its masks act per sample): every function here refuses a ReLU spec.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ncflow.errors import ProblemError
from ncflow.maths import deep_objective as _do
from ncflow.maths.deep_objective import DeepCoeffs, DeepParams, DeepSpec, DeepStats

__all__ = ["DeepCollapsed", "class_stats", "collapse", "expand", "flops_per_step", "gaussian_start", "gd_step",
           "objective", "sq_norm", "value_and_grad_norm"]


class DeepCollapsed(NamedTuple):
    """Collapsed state of one deep linear run: ``Ws`` (W_1..W_L), class means ``M (d_0, K)``,
    within-class scatter ``G = Σ e eᵀ (d_0, d_0)`` of H, ``b (K,)``."""

    Ws: tuple
    M: Float[Array, "d0 K"]
    G: Float[Array, "d0 d0"]
    b: Float[Array, " K"]


def _linear(spec: DeepSpec) -> None:
    if spec.activation != "linear":
        raise ProblemError(f"activation must be 'linear' for the collapsed deep engine (ReLU masks act per "
                           f"sample, THEORY §9.4), got {spec.activation!r}", field="activation")


def _weights(spec: DeepSpec):
    """(n, N): n a Python int (balanced) or the constant n_k (K,), and N as a Python float (so 2N and N² never
    reach a jitted function as 32-bit integers)."""
    n = spec.sizes[0] if spec.balanced else np.asarray(spec.sizes, np.float64)
    return n, float(spec.N)


def _wsq(n, A):
    """Σ_k n_k ||a_k||² over the columns a_k of A."""
    if np.ndim(n) == 0:
        return n * jnp.sum(A * A)
    return jnp.sum(jnp.asarray(n, A.dtype) * jnp.sum(A * A, axis=0))


def _RDM(n, Rm, M):
    """R_m D Mᵀ."""
    return n * (Rm @ M.T) if np.ndim(n) == 0 else (Rm * jnp.asarray(n, Rm.dtype)) @ M.T


def _Rn(n, Rm):
    """R_m n."""
    return n * jnp.sum(Rm, axis=1) if np.ndim(n) == 0 else Rm @ jnp.asarray(n, Rm.dtype)


def collapse(spec: DeepSpec, params: DeepParams) -> DeepCollapsed:
    """The collapsed state of a full point: the weights, the class means and within-class scatter of H, b."""
    _linear(spec)
    M, G = _do.class_moments(spec, params.H)
    return DeepCollapsed(tuple(params.Ws), M, G, params.b)


def expand(spec: DeepSpec, x: DeepCollapsed) -> DeepParams:
    """A full point with the same weights, class means and within-class scatter (``H (d_0, N)``).

    The deviations are rebuilt as ``E = G^{1/2} Φᵀ`` with Φ orthonormal columns orthogonal to every class
    indicator (per class, the complement of 1_{n_k}): H up to a within-class orthogonal mixing of the samples,
    under which f, ||∇f||, the Hessian spectrum, the GD trajectory's collapsed state and every class statistic
    are invariant. Needs N − K >= rank G (true whenever G came from a real H); otherwise the excess is dropped.
    """
    _linear(spec)
    d0 = spec.widths[0]
    blocks = []
    for nk in spec.sizes:
        B = np.linalg.qr(np.concatenate([np.ones((nk, 1)), np.eye(nk)[:, : nk - 1]], axis=1))[0][:, 1:]
        blocks.append(B)
    Phi = np.zeros((spec.N, spec.N - spec.K))
    r = c = 0
    for B in blocks:
        Phi[r: r + B.shape[0], c: c + B.shape[1]] = B
        r, c = r + B.shape[0], c + B.shape[1]
    evals, evecs = jnp.linalg.eigh(x.G)
    root = evecs * jnp.sqrt(jnp.clip(evals, 0.0))  # G = root rootᵀ, eigenvalues ascending
    m = min(d0, Phi.shape[1])
    E = root[:, d0 - m:] @ jnp.asarray(Phi[:, :m].T, x.G.dtype)
    H = jnp.repeat(x.M, np.asarray(spec.sizes), axis=1, total_repeat_length=spec.N) + E
    return DeepParams(tuple(x.Ws), H, x.b)


def sq_norm(spec: DeepSpec, x: DeepCollapsed) -> Float[Array, ""]:
    """Σ_l ||W_l||² + ||H||² + ||b||² with ||H||² = Σ_k n_k ||μ_k||² + tr G."""
    n, _ = _weights(spec)
    return sum(jnp.sum(W * W) for W in x.Ws) + _wsq(n, x.M) + jnp.trace(x.G) + jnp.sum(x.b * x.b)


def _residual(spec: DeepSpec, PM, b):
    """R_m = P M + b 1ᵀ − I (K, K) (b ignored bias-free)."""
    bias = b if spec.has_bias else jnp.zeros_like(b)
    return PM + bias[:, None] - jnp.eye(spec.K, dtype=PM.dtype)


def _regularizers(spec: DeepSpec, co: DeepCoeffs, x: DeepCollapsed, n):
    f = 0.0
    for i, W in enumerate(x.Ws):
        f = f + 0.5 * co.lambdas[i] * jnp.sum(W * W)
    f = f + 0.5 * co.lambda_h * (_wsq(n, x.M) + jnp.trace(x.G))
    if spec.has_bias:
        f = f + 0.5 * co.lambda_b * jnp.sum(x.b * x.b)
    return f


def objective(spec: DeepSpec, co: DeepCoeffs, x: DeepCollapsed) -> Float[Array, ""]:
    """f of the full point (shape ()), from the collapsed state (module doc)."""
    _linear(spec)
    n, N = _weights(spec)
    P, _ = _do.product_chain(x.Ws)
    Rm = _residual(spec, P @ x.M, x.b)
    return (_wsq(n, Rm) + jnp.sum((P @ x.G) * P)) / (2 * N) + _regularizers(spec, co, x, n)


def value_and_grad_norm(spec: DeepSpec, co: DeepCoeffs, x: DeepCollapsed):
    """``(f, ||∇f||)`` of the FULL objective over (W_1..W_L, H, b), both shape (), from the collapsed state.

    The H part is ``Σ_k n_k ||g_k||² + tr(G B²)``, B = PᵀP/N + λ_H I, expanded as
    ``λ_H² tr G + 2λ_H tr(PGPᵀ)/N + tr(PGPᵀ PPᵀ)/N²`` (clipped at 0 against rounding)."""
    _linear(spec)
    n, N = _weights(spec)
    P, suffixes = _do.product_chain(x.Ws)
    Rm = _residual(spec, P @ x.M, x.b)
    X = P @ x.G
    S = X @ P.T  # P G Pᵀ (K, K)
    trS, trG = jnp.trace(S), jnp.trace(x.G)
    f = (_wsq(n, Rm) + trS) / (2 * N) + _regularizers(spec, co, x, n)
    gWs = _do.layer_gradients(x.Ws, suffixes, (_RDM(n, Rm, x.M) + X) / N, co.lambdas)
    gM = (P.T @ Rm) / N + co.lambda_h * x.M
    lh = co.lambda_h
    dev = lh * lh * trG + 2 * lh * trS / N + jnp.sum(S * (P @ P.T)) / N**2
    g2 = sum(jnp.sum(g * g) for g in gWs) + _wsq(n, gM) + jnp.maximum(dev, 0.0)
    if spec.has_bias:
        gb = _Rn(n, Rm) / N + co.lambda_b * x.b
        g2 = g2 + jnp.sum(gb * gb)
    return f, jnp.sqrt(g2)


def _transposed(A):
    """Aᵀ as an array of its own (a copy of a K-row factor: K·d entries).

    The barrier keeps XLA from folding the transpose into the product that reads it: folded, that product
    contracts its left operand's first axis, which XLA:CPU hands to its generic dot instead of the faster
    small-matrix kernel (YNNPACK) that takes every other product of the step; measured 20% less CPU time
    per step at K=10, d=64, L=3, float32 (benchmarks/README.md, "Deep UFM engines"). The value is exact."""
    return lax.optimization_barrier(A.T)


def _step_gradients(Ws: tuple, suffixes: tuple, dP, lambdas) -> tuple:
    """:func:`~ncflow.maths.deep_objective.layer_gradients` (the same sums, the same values), with the K-row
    factors written out transposed (:func:`_transposed`): ``Ṽ_1 = dP``, ``Ṽ_l = Ṽ_{l−1} W_{l−1}ᵀ`` (K, d_{l−1})
    and ∇W_l = U_lᵀ Ṽ_l + λ_l W_l, ∇W_L = Ṽ_L + λ_L W_L."""
    L = len(Ws)
    Vt = dP
    grads = []
    for j in range(1, L + 1):  # ∇W_j
        if j > 1:
            Vt = Vt @ Ws[j - 2].T
        g = Vt if j == L else _transposed(suffixes[j - 1]) @ Vt
        grads.append(g + lambdas[j - 1] * Ws[j - 1])
    return tuple(grads)


def gd_step(spec: DeepSpec, co: DeepCoeffs, x: DeepCollapsed, lr) -> DeepCollapsed:
    """One exact GD step of size ``lr`` (a scalar, possibly traced) on the collapsed state.

    ``G ← A G Aᵀ`` with A = a I − s PᵀP (a = 1 − ηλ_H, s = η/N) is applied as the symmetric rank-2K update
    ``G ← a² G + PᵀZ + ZᵀP``, Z = −a s X + ½ s² S P, X = P G, S = X Pᵀ (as :func:`ncflow.maths.collapsed.gd_step`
    with W → P). ``lr = 0`` leaves the state unchanged. Products with a transposed K-row factor read a copy
    of it (:func:`_transposed`)."""
    _linear(spec)
    Ws, M, G, b = x
    K = spec.K
    n, N = _weights(spec)
    P, suffixes = _do.product_chain(Ws)
    PMG = P @ jnp.concatenate([M, G], axis=1)  # (K, K + d_0)
    Rm = _residual(spec, PMG[:, :K], b)
    X = PMG[:, K:]
    S = X @ P.T
    a = 1.0 - lr * co.lambda_h
    s = lr / N
    Z = (-a * s) * X + (0.5 * s * s) * (S @ P)
    PtRZ = _transposed(P) @ jnp.concatenate([Rm, Z], axis=1)  # (d_0, K + d_0)
    PtZ = PtRZ[:, K:]
    gWs = _step_gradients(Ws, suffixes, (_RDM(n, Rm, M) + X) / N, co.lambdas)
    gM = PtRZ[:, :K] / N + co.lambda_h * M
    G_new = (a * a) * G + PtZ + PtZ.T
    b_new = b - lr * (_Rn(n, Rm) / N + co.lambda_b * b) if spec.has_bias else b
    return DeepCollapsed(tuple(W - lr * g for W, g in zip(Ws, gWs)), M - lr * gM, G_new, b_new)


def class_stats(spec: DeepSpec, x: DeepCollapsed) -> DeepStats:
    """Per-layer class statistics: the features of layer l are F_l H with F_l = W_l⋯W_1 (F_0 = I), so their
    class means are F_l M and their scatter F_l G F_lᵀ (pre-activations: empty, as linear)."""
    _linear(spec)
    means, scatters = [x.M], [x.G]
    for W in x.Ws[:-1]:
        means.append(W @ means[-1])
        scatters.append(W @ scatters[-1] @ W.T)
    return DeepStats(tuple(x.Ws), tuple(means), tuple(scatters), (), (), x.b, _do.counts(spec, x.M.dtype))


def gaussian_start(spec: DeepSpec, key, scale) -> DeepCollapsed:
    """The collapsed state of :func:`ncflow.maths.deep_objective.gaussian_start` (the same key, the same run).

    Collapsing the full draw keeps run i identical in both engines (a direct draw of M ~ N(0, s²/(d_0 n_k))
    and G ~ Wishart(N − K, s²/d_0) has the same law but other values). It costs O(d_0² N) once per run and
    O(d_0 N) memory while it lasts — a few steps' worth of the full engine; the batch engine already draws
    full starts group by group and collapses them."""
    _linear(spec)
    return collapse(spec, _do.gaussian_start(spec, key, scale))


def flops_per_step(spec: DeepSpec) -> int:
    """Estimated flops of one collapsed step: 4K d_0² + 8K² d_0 + 6K Σ_{l<L} d_l d_{l−1} (L = 1: §4's
    4Kd² + 8K²d, as ``COLLAPSED.flops_per_step``)."""
    d0, K = spec.widths[0], spec.K
    return 4 * K * d0**2 + 8 * K**2 * d0 + 6 * K * _do.inner_size(spec)

