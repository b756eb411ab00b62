"""The exact collapsed representation of gradient descent (THEORY.md §4).

Write each feature as ``h_{k,i} = μ_k + e_{k,i}`` with ``Σ_i e_{k,i} = 0``. Full-batch GD on
(W, H, b) moves every class mean by the same step and every deviation by the same linear map
``A = (1 − ηλ_H) I − (η/N) WᵀW``, so it is carried exactly by

    W (K, d),  M = [μ_1 … μ_K] (d, K),  G = Σ e eᵀ (d, d),  b (K,)

at O(K d²) work per step instead of O(K d N). The loss, ||H||², the full gradient norm and the
NC metrics all follow from this state. Written for ONE run; vmap outside.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.maths.metrics import ClassStats
from ncflow.maths.metrics import class_stats as _class_stats
from ncflow.maths.objective import Params, coeff
from ncflow.problem import Problem


class Collapsed(NamedTuple):
    """Collapsed GD state of one run: ``W (K, d)``, ``M (d, K)``, ``G (d, d)``, ``b (K,)``."""

    W: Float[Array, "K d"]
    M: Float[Array, "d K"]
    G: Float[Array, "d d"]
    b: Float[Array, " K"]


def collapse(problem: Problem, params: Params) -> Collapsed:
    """The collapsed state of a full point: class means and within-class scatter of H."""
    return Collapsed(*_class_stats(problem, params)[:4])


def expand(problem: Problem, x: Collapsed) -> Params:
    """A full point with the same class means and within-class scatter (shape ``H (d, N)``).

    The deviations are rebuilt as ``E = G^{1/2} Φᵀ`` with Φ orthonormal columns orthogonal to
    every class indicator, which reproduces H up to a within-class orthogonal mixing of the
    samples. The objective, its gradient norm, its Hessian spectrum and every NC metric are
    invariant under that mixing, so they are exact on the rebuilt point. Needs N − K ≥ rank(G)
    (true whenever G came from a real H); otherwise the excess is dropped.
    """
    d, K, n = problem.d, problem.K, problem.n
    N = K * n
    # Orthonormal basis of the within-class space: per class, the Helmert-like complement of 1_n.
    if n > 1:
        Bn = np.linalg.qr(np.concatenate([np.ones((n, 1)), np.eye(n)[:, : n - 1]], axis=1))[0][:, 1:]
        Phi = np.kron(np.eye(K), Bn)  # (N, K(n-1))
    else:
        Phi = np.zeros((N, 0))
    evals, evecs = jnp.linalg.eigh(x.G)
    root = evecs * jnp.sqrt(jnp.clip(evals, 0.0))  # G = root rootᵀ
    m = min(d, Phi.shape[1])
    # Take the m largest directions of G.
    root = root[:, d - m:]
    E = root @ jnp.asarray(Phi[:, :m].T, x.G.dtype)
    H = jnp.repeat(x.M, n, axis=1) + E
    return Params(x.W, H, x.b)


def class_stats(problem: Problem, x: Collapsed) -> ClassStats:
    """The collapsed state is already class statistics."""
    del problem
    return ClassStats(x.W, x.M, x.G, x.b)


def _parts(problem: Problem, x: Collapsed):
    W, M, G, b = x
    n, N = problem.n, problem.N
    T = jnp.eye(problem.K, dtype=W.dtype)
    Rm = W @ M + b[:, None] - T  # class-mean residual (K, K)
    X = W @ G  # (K, d), shared by ∇W, the loss and the G update
    S = X @ W.T  # W G Wᵀ (K, K)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    gW = (n * (Rm @ M.T) + X) / N + lw * W
    gM = (W.T @ Rm) / N + lh * M  # the step applied to each class mean
    if problem.bias:
        gb = n * jnp.sum(Rm, axis=1) / N + coeff(problem, "lambda_b") * b
    else:
        gb = jnp.zeros_like(b)
    return Rm, X, S, gW, gM, gb


def objective(problem: Problem, x: Collapsed) -> Float[Array, ""]:
    """f(W, H, b) from the collapsed state: ``(n||R_m||² + tr(W G Wᵀ))/(2N) + regularizers``."""
    W, M, G, b = x
    n, N = problem.n, problem.N
    Rm = W @ M + b[:, None] - jnp.eye(problem.K, dtype=W.dtype)
    f = (n * jnp.sum(Rm * Rm) + jnp.sum((W @ G) * W)) / (2 * N)
    f = f + 0.5 * coeff(problem, "lambda_w") * jnp.sum(W * W)
    f = f + 0.5 * coeff(problem, "lambda_h") * (n * jnp.sum(M * M) + jnp.trace(G))
    if problem.bias:
        f = f + 0.5 * coeff(problem, "lambda_b") * jnp.sum(b * b)
    return f


def value_and_grad_norm(problem: Problem, x: Collapsed) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Objective and the norm of the FULL gradient over (W, H, b), from the collapsed state.

    ``||∇_H||² = n Σ_k ||g_k||² + tr(G B²)`` with ``B = WᵀW/N + λ_H I``, expanded as
    ``λ_H² tr G + 2λ_H tr(WGWᵀ)/N + tr(WGWᵀ WWᵀ)/N²``.
    """
    W, M, G, b = x
    n, N = problem.n, problem.N
    Rm, X, S, gW, gM, gb = _parts(problem, x)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    trG, trS = jnp.trace(G), jnp.trace(S)
    f = (n * jnp.sum(Rm * Rm) + trS) / (2 * N) + 0.5 * lw * jnp.sum(W * W) + 0.5 * lh * (n * jnp.sum(M * M) + trG)
    if problem.bias:
        f = f + 0.5 * coeff(problem, "lambda_b") * jnp.sum(b * b)
    dev = lh * lh * trG + 2 * lh * trS / N + jnp.sum(S * (W @ W.T)) / N**2
    g2 = jnp.sum(gW * gW) + n * jnp.sum(gM * gM) + jnp.maximum(dev, 0.0) + jnp.sum(gb * gb)
    return f, jnp.sqrt(g2)


def gd_step(problem: Problem, x: Collapsed, lr) -> Collapsed:
    """One exact GD step of step size ``lr`` on the collapsed state (no autodiff, fused).

    ``G ← A G Aᵀ`` with ``A = a I − s WᵀW`` (a = 1 − ηλ_H, s = η/N) is applied as the symmetric
    low-rank update ``G ← a² G + WᵀZ + ZᵀW`` with ``Z = −a s X + ½ s² S W``, ``X = W G``,
    ``S = X Wᵀ``. Five matrix products (two of them merged: ``W [M | G]`` and ``Wᵀ [R_m | Z]``),
    about 4Kd² + 8K²d flops. ``lr = 0`` leaves the state exactly unchanged.
    """
    W, M, G, b = x
    K, n, N = problem.K, problem.n, problem.N
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    WMG = W @ jnp.concatenate([M, G], axis=1)  # (K, K + d)
    Rm = WMG[:, :K] + b[:, None] - jnp.eye(K, dtype=W.dtype)
    X = WMG[:, K:]
    S = X @ W.T
    a = 1.0 - lr * lh
    s = lr / N
    Z = (-a * s) * X + (0.5 * s * s) * (S @ W)
    WtRZ = W.T @ jnp.concatenate([Rm, Z], axis=1)  # (d, K + d)
    WtZ = WtRZ[:, K:]
    gW = (n * (Rm @ M.T) + X) / N + lw * W
    gM = WtRZ[:, :K] / N + lh * M
    G_new = (a * a) * G + WtZ + WtZ.T
    b_new = b - lr * (n * jnp.sum(Rm, axis=1) / N + coeff(problem, "lambda_b") * b) if problem.bias else b
    return Collapsed(W - lr * gW, M - lr * gM, G_new, b_new)
