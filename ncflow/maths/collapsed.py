"""The exact collapsed representation of gradient descent (THEORY.md §4).

Write each feature as ``h_{k,i} = μ_k + e_{k,i}`` with ``Σ_i e_{k,i} = 0``. Full-batch GD on
(W, H, b) moves every class mean by the same step and every deviation by the same linear map
``A = (1 − ηλ_H) I − (η/N) WᵀW``, so it is carried exactly by

    W (K, d),  M = [μ_1 … μ_K] (d, K),  G = Σ e eᵀ (d, d),  b (K,)

at O(K d²) work per step instead of O(K d N). The loss, ||H||², the full gradient norm and the
NC metrics all follow from this state. Written for ONE run; vmap outside.

Any target matrix T (THEORY §7; ``problem.row_basis`` set by the engine, per lane): with Q (N, r) an
orthonormal basis of the rows of [T; 1ᵀ; L], write H = C Qᵀ + E with E Q = 0 and carry
``W, C (d, r), G = E Eᵀ, b`` in the same ``Collapsed`` tuple (its ``M`` field holds C):
``R_c = W C + b qᵀ − T_Q``, ``∇_W = (R_c Cᵀ + W G)/N + λ_W W``, ``C ← C − η(Wᵀ R_c/N + λ_H C)``,
``∇_b = R_c q/N + λ_b b``, ``G ← A G Aᵀ``; cost O(K d² + K d r), independent of N. The class means
are ``C Qᵀ l_k / n_k`` (exact, as the labels' rows are in span Q) and the within-class scatter is
``C Cᵀ + G − M D Mᵀ``.

Class sizes (THEORY §7; ``problem.class_sizes``, per-lane values inside the engine): the same state,
per-sample GD on H (NOT n_k-weighted steps on μ_k). With D = diag(n_k) and N = Σ n_k:
``∇_W = (R_m D Mᵀ + W G)/N + λ_W W``, step on μ_k = ``Wᵀ r_k/N + λ_H μ_k``, ``∇_b = R_m n/N + λ_b b``,
``G ← A G Aᵀ`` as before; f = [Σ_k n_k ||r_k||² + tr(W G Wᵀ)]/(2N) + λ_W/2 ||W||² +
λ_H/2 (Σ_k n_k ||μ_k||² + tr G) + λ_b/2 ||b||². A balanced problem (``class_sizes`` None) takes the
code path of §4 unchanged, bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.maths.metrics import ClassStats
from ncflow.maths.metrics import class_stats as _class_stats
from ncflow.maths.objective import Params, coeff, sizes
from ncflow.problem import Problem, RowBasis


class Collapsed(NamedTuple):
    """Collapsed GD state of one run: ``W (K, d)``, ``M (d, K)``, ``G (d, d)``, ``b (K,)``."""

    W: Float[Array, "K d"]
    M: Float[Array, "d K"]
    G: Float[Array, "d d"]
    b: Float[Array, " K"]


def row_space(problem: Problem) -> RowBasis:
    """The :class:`~ncflow.problem.RowBasis` of a ``targets`` problem (THEORY §7), in float64 numpy:
    ``TQ (K, r)``, ``q (r,)``, ``LQ (r, K)`` (zeros without labels), ``counts (K,)``, ``N ()`` and
    ``Q (N, r)``: what the collapsed engine carries a target matrix in, per lane (padded by
    :func:`pad_row_space`), and what a state of such a lane is expanded with (``expand``)."""
    from ncflow.maths.imbalanced import basis

    b = basis(problem)
    LQ = b.LQ if b.LQ is not None else np.zeros((b.TQ.shape[1], problem.K))
    return RowBasis(b.TQ, b.q, LQ, np.asarray(b.counts, np.float64), np.float64(b.N), b.Q)


def pad_row_space(rb: RowBasis, width: int) -> RowBasis:
    """``rb`` with zero columns of Q (and the matching zeros of TQ, q, LQ) up to ``width`` >= r: a
    batch pads every lane to its largest r (the zero columns stay zero in the state)."""
    r = rb.TQ.shape[1]
    if width < r:
        raise ValueError(f"width must be at least the row space's dimension r = {r}, got {width}")

    def pad(a, axis):
        pads = [(0, 0)] * np.ndim(a)
        pads[axis] = (0, width - r)
        return np.pad(np.asarray(a), pads)

    return RowBasis(pad(rb.TQ, 1), pad(rb.q, 0), pad(rb.LQ, 0), rb.counts, rb.N, pad(rb.Q, 1))


def collapse(problem: Problem, params: Params) -> Collapsed:
    """The collapsed state of a full point: class means and within-class scatter of H (targets:
    C = H Q and G = H Hᵀ − C Cᵀ)."""
    if problem.row_basis is not None:
        Cq = params.H @ problem.row_basis.Q
        E = params.H - Cq @ problem.row_basis.Q.T
        return Collapsed(params.W, Cq, E @ E.T, params.b)
    return Collapsed(*_class_stats(problem, params)[:4])


def expand(problem: Problem, x: Collapsed) -> Params:
    """A full point with the same class means and within-class scatter (shape ``H (d, N)``).

    The deviations are rebuilt as ``E = G^{1/2} Φᵀ`` with Φ orthonormal columns orthogonal to
    every class indicator, which reproduces H up to a within-class orthogonal mixing of the
    samples. The objective, its gradient norm, its Hessian spectrum and every NC metric are
    invariant under that mixing, so they are exact on the rebuilt point. Needs N − K ≥ rank(G)
    (true whenever G came from a real H); otherwise the excess is dropped.
    """
    if problem.row_basis is not None:  # traceable: the engine's Hessian probes expand per-lane states
        Q = jnp.asarray(problem.row_basis.Q, x.G.dtype)  # (N, r), zero columns past a lane's own r
        N = Q.shape[0]
        pe, pv = jnp.linalg.eigh(jnp.eye(N, dtype=Q.dtype) - Q @ Q.T)  # eigenvalues 0 (span Q), 1 (its complement)
        m = min(problem.d, N)
        Phi = pv[:, N - m:] * (pe[N - m:] > 0.5)  # the m last: orthonormal complement vectors, or zero (span Q)
        evals, evecs = jnp.linalg.eigh(x.G)
        root = evecs * jnp.sqrt(jnp.clip(evals, 0.0))  # ascending: G's largest directions meet Phi's nonzero ones
        return Params(x.W, x.M @ Q.T + root[:, problem.d - m:] @ Phi.T, x.b)
    if problem.general:
        return _expand_sizes(problem, x)
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


def _expand_sizes(problem: Problem, x: Collapsed) -> Params:
    """:func:`expand` with class sizes (concrete): per class, the complement of 1_{n_k}."""
    d = problem.d
    blocks = []
    for nk in problem.class_sizes:
        B = np.linalg.qr(np.concatenate([np.ones((nk, 1)), np.eye(nk)[:, : nk - 1]], axis=1))[0][:, 1:]
        blocks.append(B)
    N = sum(problem.class_sizes)
    Phi = np.zeros((N, sum(b.shape[1] for b in blocks)))
    r = c = 0
    for B in blocks:
        Phi[r: r + B.shape[0], c: c + B.shape[1]] = B
        r, c = r + B.shape[0], c + B.shape[1]
    evals, evecs = jnp.linalg.eigh(x.G)
    root = evecs * jnp.sqrt(jnp.clip(evals, 0.0))
    m = min(d, Phi.shape[1])
    E = root[:, d - m:] @ jnp.asarray(Phi[:, :m].T, x.G.dtype)
    H = jnp.repeat(x.M, np.asarray(problem.class_sizes), axis=1, total_repeat_length=N) + E
    return Params(x.W, H, x.b)


def class_stats(problem: Problem, x: Collapsed) -> ClassStats:
    """The collapsed state is already class statistics (with the class sizes where given)."""
    if problem.row_basis is not None:
        rb = problem.row_basis
        counts = rb.counts
        M = (x.M @ rb.LQ) / jnp.maximum(counts, 1.0)
        Gw = x.M @ x.M.T + x.G - (M * counts) @ M.T
        has = jnp.sum(counts) > 0  # without labels: no classes (M = 0, the whole H Hᵀ as scatter)
        return ClassStats(x.W, jnp.where(has, M, 0.0), jnp.where(has, Gw, x.M @ x.M.T + x.G), x.b,
                          jnp.where(has, counts, jnp.ones_like(counts)))
    return ClassStats(x.W, x.M, x.G, x.b, sizes(problem) if problem.class_sizes is not None else None)


def _weights(problem: Problem):
    """(n, N): n (a Python int, balanced) or the per-class n_k (K,), and N (balanced: a Python
    float, so that 2N and N² never reach a jitted function as 32-bit integers: N > 46,340 overflowed
    int32 in N² without ``jax_enable_x64``)."""
    if problem.row_basis is not None:
        return None, problem.row_basis.N
    if problem.class_sizes is None:
        return problem.n, float(problem.N)
    n = sizes(problem)
    return n, jnp.sum(n)


def sq_norm(problem: Problem, x: Collapsed):
    """||W||² + ||H||² + ||b||² with ||H||² = Σ_k n_k ||μ_k||² + tr G (targets: ||C||² + tr G)."""
    h2 = _wsq(_weights(problem)[0], x.M)
    return jnp.sum(x.W * x.W) + h2 + jnp.trace(x.G) + jnp.sum(x.b * x.b)


def _wsq(n, A):
    """Σ_k n_k ||a_k||² over the columns a_k of A (balanced: n ||A||², exactly as before; n None:
    ||A||², the row-space coordinates of a target matrix)."""
    if n is None:
        return jnp.sum(A * A)
    return n * jnp.sum(A * A) if jnp.ndim(n) == 0 else jnp.sum(n * jnp.sum(A * A, axis=0))


def _residual(problem: Problem, WM, b):
    """R_m = W M + b 1ᵀ − I (one-hot) or R_c = W C + b qᵀ − T_Q (row-space coordinates)."""
    if problem.row_basis is not None:
        rb = problem.row_basis
        return WM + b[:, None] * rb.q[None, :] - rb.TQ
    return WM + b[:, None] - jnp.eye(problem.K, dtype=WM.dtype)


def _parts(problem: Problem, x: Collapsed):
    W, M, G, b = x
    n, N = _weights(problem)
    Rm = _residual(problem, W @ M, b)  # class-mean residual (K, K), or R_c (K, r)
    X = W @ G  # (K, d), shared by ∇W, the loss and the G update
    S = X @ W.T  # W G Wᵀ (K, K)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    gW = (_RDM(n, Rm, M) + X) / N + lw * W
    gM = (W.T @ Rm) / N + lh * M  # the step applied to each class mean
    if problem.bias:
        gb = _Rn(problem, n, Rm) / N + coeff(problem, "lambda_b") * b
    else:
        gb = jnp.zeros_like(b)
    return Rm, X, S, gW, gM, gb


def _RDM(n, Rm, M):
    """R_m D Mᵀ (balanced: n R_m Mᵀ, exactly as before; targets: R_c Cᵀ)."""
    if n is None:
        return Rm @ M.T
    return n * (Rm @ M.T) if jnp.ndim(n) == 0 else (Rm * n) @ M.T


def _Rn(problem: Problem, n, Rm):
    """R_m n (balanced: n Σ_k r_k, exactly as before; targets: R_c q)."""
    if n is None:
        return Rm @ problem.row_basis.q
    return n * jnp.sum(Rm, axis=1) if jnp.ndim(n) == 0 else Rm @ n


def objective(problem: Problem, x: Collapsed) -> Float[Array, ""]:
    """f(W, H, b) from the collapsed state: ``(n||R_m||² + tr(W G Wᵀ))/(2N) + regularizers``."""
    W, M, G, b = x
    n, N = _weights(problem)
    Rm = _residual(problem, W @ M, b)
    f = (_wsq(n, Rm) + jnp.sum((W @ G) * W)) / (2 * N)
    f = f + 0.5 * coeff(problem, "lambda_w") * jnp.sum(W * W)
    f = f + 0.5 * coeff(problem, "lambda_h") * (_wsq(n, M) + jnp.trace(G))
    if problem.bias:
        f = f + 0.5 * coeff(problem, "lambda_b") * jnp.sum(b * b)
    return f


def value_and_grad_norm(problem: Problem, x: Collapsed) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Objective and the norm of the FULL gradient over (W, H, b), from the collapsed state.

    ``||∇_H||² = n Σ_k ||g_k||² + tr(G B²)`` with ``B = WᵀW/N + λ_H I``, expanded as
    ``λ_H² tr G + 2λ_H tr(WGWᵀ)/N + tr(WGWᵀ WWᵀ)/N²``.
    """
    W, M, G, b = x
    n, N = _weights(problem)
    Rm, X, S, gW, gM, gb = _parts(problem, x)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    trG, trS = jnp.trace(G), jnp.trace(S)
    f = (_wsq(n, Rm) + trS) / (2 * N) + 0.5 * lw * jnp.sum(W * W) + 0.5 * lh * (_wsq(n, M) + trG)
    if problem.bias:
        f = f + 0.5 * coeff(problem, "lambda_b") * jnp.sum(b * b)
    dev = lh * lh * trG + 2 * lh * trS / N + jnp.sum(S * (W @ W.T)) / N**2
    g2 = jnp.sum(gW * gW) + _wsq(n, gM) + jnp.maximum(dev, 0.0) + jnp.sum(gb * gb)
    return f, jnp.sqrt(g2)


def gd_step(problem: Problem, x: Collapsed, lr) -> Collapsed:
    """One exact GD step of step size ``lr`` on the collapsed state (no autodiff, fused).

    ``G ← A G Aᵀ`` with ``A = a I − s WᵀW`` (a = 1 − ηλ_H, s = η/N) is applied as the symmetric
    low-rank update ``G ← a² G + WᵀZ + ZᵀW`` with ``Z = −a s X + ½ s² S W``, ``X = W G``,
    ``S = X Wᵀ``. Five matrix products (two of them merged: ``W [M | G]`` and ``Wᵀ [R_m | Z]``),
    about 4Kd² + 8K²d flops. ``lr = 0`` leaves the state exactly unchanged.
    """
    W, M, G, b = x
    K = problem.K
    n, N = _weights(problem)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    WMG = W @ jnp.concatenate([M, G], axis=1)  # (K, K + d)
    r = M.shape[1]  # K, or the row-space dimension of a target matrix
    Rm = WMG[:, :r] + b[:, None] - jnp.eye(K, dtype=W.dtype) if problem.row_basis is None else \
        _residual(problem, WMG[:, :r], b)
    X = WMG[:, r:]
    S = X @ W.T
    a = 1.0 - lr * lh
    s = lr / N
    Z = (-a * s) * X + (0.5 * s * s) * (S @ W)
    WtRZ = W.T @ jnp.concatenate([Rm, Z], axis=1)  # (d, K + d)
    WtZ = WtRZ[:, r:]
    gW = (_RDM(n, Rm, M) + X) / N + lw * W
    gM = WtRZ[:, :r] / N + lh * M
    G_new = (a * a) * G + WtZ + WtZ.T
    b_new = b - lr * (_Rn(problem, n, Rm) / N + coeff(problem, "lambda_b") * b) if problem.bias else b
    return Collapsed(W - lr * gW, M - lr * gM, G_new, b_new)
