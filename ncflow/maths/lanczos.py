"""Extreme eigenvalues of symmetric operators (Hessians) by Lanczos with full reorthogonalization.

Everything here is written for ONE problem: ``lanczos_extremes`` takes a matrix-free operator on
a flat vector and runs a fixed number of steps with no Python control flow on traced values, so
it is jit-compatible and vmappable when the operator closes over per-run arrays::

    jax.vmap(lambda state, v0: lanczos_extremes(partial(hvp, state), v0, m))(states, v0s)

Breakdown (the Krylov space is exhausted, e.g. ``n < num_iters`` or ``v0`` lies in a small
invariant subspace) is detected, the remaining steps become no-ops, and the unused part of the
tridiagonal matrix is masked out, so results stay exact and finite. Nothing here raises inside
jitted code; a zero start vector is reported as ``krylov_dim == 0`` (see ``LanczosResult``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

_HI = jax.lax.Precision.HIGHEST


class LanczosResult(NamedTuple):
    """Result of ``lanczos_extremes`` for one operator of size ``n`` after ``m`` steps.

    Fields:
        min_eig: ``()`` smallest Ritz value (approximates the smallest eigenvalue from above).
        max_eig: ``()`` largest Ritz value (approximates the largest eigenvalue from below).
        min_vec: ``(n,)`` unit Ritz vector of ``min_eig`` (zero if ``v0`` was zero).
        ritz: ``(m,)`` Ritz values ascending; when the Krylov space broke down after
            ``krylov_dim < m`` steps the tail ``ritz[krylov_dim:]`` repeats ``max_eig``.
        residual_norm: ``()`` ``‖A min_vec − min_eig·min_vec‖₂`` computed with one extra matvec
            (absolute, not relative); an upper bound on the distance of ``min_eig`` to the
            spectrum.
        krylov_dim: ``()`` int, the number of Lanczos vectors actually built (``1..m``), or 0
            when ``v0`` was zero; then all other fields are 0 (finite, but meaningless).
    """

    min_eig: Float[Array, ""]
    max_eig: Float[Array, ""]
    min_vec: Float[Array, " n"]
    ritz: Float[Array, " m"]
    residual_norm: Float[Array, ""]
    krylov_dim: Int[Array, ""]


def _dot(a: Array, b: Array) -> Array:
    return jnp.dot(a, b, precision=_HI)


def _lanczos_basis(
    matvec: Callable[[Array], Array], v0: Float[Array, " n"], num_iters: int, tol: float
) -> tuple[Float[Array, "m n"], Float[Array, " m"], Float[Array, " m"], Int[Array, ""]]:
    """Run ``num_iters`` Lanczos steps; returns ``(V (m, n), alpha (m,), beta (m,), k ())``.

    ``V`` rows ``>= k`` are zero, ``alpha``/``beta`` entries ``>= k`` are zero, ``beta[j]`` is the
    norm of the residual after step ``j`` (``beta[k-1]`` is the breakdown residual if ``k < m``).
    """
    n = v0.shape[0]
    dtype = v0.dtype
    norm0 = jnp.linalg.norm(v0)
    active0 = norm0 > 0
    v = v0 / jnp.where(active0, norm0, 1.0)

    def body(j, carry):
        V, alpha, beta, v, active, scale, k = carry
        V = V.at[j].set(v)  # v is zero once inactive
        w = matvec(v)
        a = _dot(v, w)
        # Two passes of classical Gram-Schmidt against the whole basis (rows > j are zero).
        # The first removes a*v and the previous beta*v_prev along with any lost orthogonality.
        w = w - _dot(V.T, _dot(V, w))
        w = w - _dot(V.T, _dot(V, w))
        b = jnp.linalg.norm(w)
        a = jnp.where(active, a, 0.0)
        b = jnp.where(active, b, 0.0)
        scale = jnp.maximum(scale, jnp.where(active, jnp.abs(a) + b, 0.0))
        k = k + active.astype(k.dtype)
        nxt_active = active & (b > tol * scale)
        v = jnp.where(nxt_active, w / jnp.where(nxt_active, b, 1.0), jnp.zeros_like(w))
        return V, alpha.at[j].set(a), beta.at[j].set(b), v, nxt_active, scale, k

    init = (
        jnp.zeros((num_iters, n), dtype),
        jnp.zeros((num_iters,), dtype),
        jnp.zeros((num_iters,), dtype),
        v,
        active0,
        jnp.zeros((), dtype),
        jnp.zeros((), jnp.int32),
    )
    V, alpha, beta, _, _, _, k = jax.lax.fori_loop(0, num_iters, body, init)
    return V, alpha, beta, k


def _masked_tridiagonal(
    alpha: Float[Array, " m"], beta: Float[Array, " m"], k: Int[Array, ""]
) -> Float[Array, "m m"]:
    """Tridiagonal ``T (m, m)`` whose leading ``k×k`` block is the Lanczos matrix.

    The trailing block is decoupled (zero off-diagonals) and its diagonal is set to a "filler"
    strictly above a Gershgorin bound of the leading block, so the ``k`` smallest eigenvalues of
    ``T`` are exactly the Ritz values and the fillers never mix with the minimal Ritz pair. The
    filler exceeds the bound by at most ~2x the block's scale, so ``‖T‖`` stays comparable.
    """
    m = alpha.shape[0]
    idx = jnp.arange(m)
    live = idx < k
    off = jnp.where(idx[:-1] < k - 1, beta[:-1], 0.0)  # couplings (j, j+1) inside the block
    radius = jnp.abs(jnp.concatenate([off, jnp.zeros((1,), off.dtype)])) + jnp.abs(
        jnp.concatenate([jnp.zeros((1,), off.dtype), off])
    )
    g_hi = jnp.max(jnp.where(live, alpha + radius, -jnp.inf))
    g_lo = jnp.min(jnp.where(live, alpha - radius, jnp.inf))
    margin = (g_hi - g_lo) + 0.1 * jnp.maximum(jnp.abs(g_hi), jnp.abs(g_lo))
    margin = jnp.where(margin > 0, margin, 1.0)
    diag = jnp.where(live, alpha, g_hi + margin)
    return jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)


def lanczos_extremes(
    matvec: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    v0: Float[Array, " n"],
    num_iters: int,
    breakdown_tol: float | None = None,
) -> LanczosResult:
    """Extreme eigenpairs of a symmetric linear operator by Lanczos with full reorthogonalization.

    Args:
        matvec: the symmetric linear operator ``x (n,) -> A x (n,)`` (e.g. a Hessian-vector
            product closed over one run's state). Must map zero to zero (it is called on the zero
            vector after a breakdown).
        v0: ``(n,)`` start vector, normalized here. A zero ``v0`` gives ``krylov_dim == 0`` and all
            other outputs 0 (finite). Integer input is cast to the default float dtype.
        num_iters: ``m``, the static number of Lanczos steps (the basis is stored as an
            ``(m, n)`` array). ``m >= n`` gives the exact spectrum (up to rounding).
        breakdown_tol: the run stops growing the Krylov space once the new residual norm is
            ``<= breakdown_tol * scale`` (``scale`` = running max of ``|alpha_j| + beta_j``);
            default ``sqrt(eps)`` of the dtype.

    Returns:
        ``LanczosResult`` with ``min_eig ()``, ``max_eig ()``, ``min_vec (n,)``, ``ritz (m,)``,
        ``residual_norm ()``, ``krylov_dim ()`` (see its docstring).
    """
    v0 = jnp.asarray(v0)
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        v0 = v0.astype(jnp.result_type(float))
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a flat vector (n,), got shape {v0.shape}")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    tol = float(np.sqrt(np.finfo(v0.dtype).eps)) if breakdown_tol is None else float(breakdown_tol)

    V, alpha, beta, k = _lanczos_basis(matvec, v0, num_iters, tol)
    k_eff = jnp.maximum(k, 1)
    T = _masked_tridiagonal(alpha, beta, k_eff)
    evals, evecs = jnp.linalg.eigh(T)

    m = num_iters
    max_eig = evals[k_eff - 1]
    ritz = jnp.where(jnp.arange(m) < k_eff, evals, max_eig)
    min_eig = evals[0]
    y = jnp.where(jnp.arange(m) < k_eff, evecs[:, 0], 0.0)
    x = _dot(V.T, y)
    xnorm = jnp.linalg.norm(x)
    min_vec = x / jnp.where(xnorm > 0, xnorm, 1.0)
    residual = jnp.linalg.norm(matvec(min_vec) - min_eig * min_vec)
    return LanczosResult(min_eig, max_eig, min_vec, ritz, residual, k)


def make_hvp(fun: Callable[[Any], Float[Array, ""]]) -> Callable[[Any, Any], Any]:
    """Hessian-vector product ``hvp(point, tangent) -> H(point) @ tangent`` of a scalar ``fun``.

    ``point`` and ``tangent`` are pytrees of the same structure; the result has that structure.
    Forward-over-reverse (``jvp`` of ``grad``).
    """

    def hvp(point: Any, tangent: Any) -> Any:
        return jax.jvp(jax.grad(fun), (point,), (tangent,))[1]

    return hvp


def min_eigenvalue_pytree(
    hvp: Callable[[Any, Any], Any], point: Any, key: Array, num_iters: int
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """Extreme Hessian eigenvalues at a pytree-valued ``point`` via ``lanczos_extremes``.

    Args:
        hvp: ``hvp(point, tangent) -> pytree`` Hessian-vector product with ``tangent`` and the
            output shaped like ``point`` (e.g. ``make_hvp(fun)``).
        point: pytree of arrays; flattened with ``jax.flatten_util.ravel_pytree`` to size ``n``.
        key: PRNG key for the Gaussian start vector ``(n,)``.
        num_iters: static number of Lanczos steps ``m``.

    Returns:
        ``(min_eig (), max_eig (), residual_norm ())`` of the smallest Ritz pair.
    """
    flat, unravel = ravel_pytree(point)

    def matvec(x: Float[Array, " n"]) -> Float[Array, " n"]:
        return ravel_pytree(hvp(point, unravel(x)))[0].astype(flat.dtype)

    v0 = jax.random.normal(key, flat.shape, dtype=flat.dtype)
    res = lanczos_extremes(matvec, v0, num_iters)
    return res.min_eig, res.max_eig, res.residual_norm


def dense_hessian_eigvalsh(
    fun: Callable[[Any], Float[Array, ""]], point: Any
) -> Float[Array, " n"]:
    """Full Hessian spectrum ``(n,)``, ascending, of scalar ``fun`` at pytree ``point``.

    Builds the dense ``(n, n)`` Hessian of ``fun`` on the raveled vector (``n`` = total number of
    scalars in ``point``), so only for small problems (tests, reference checks).
    """
    flat, unravel = ravel_pytree(point)
    H = jax.hessian(lambda x: fun(unravel(x)))(flat)
    return jnp.linalg.eigvalsh(0.5 * (H + H.T))
