"""The regularized MSE objective of the UFM, its analytic gradients and Hessian-vector products.

Everything here is written for ONE run: arrays have no batch axis. Batch with ``jax.vmap``.

Shapes (THEORY.md §1): ``W: (K, d)``, ``H: (d, N)`` with columns class-major, ``b: (K,)``.
A bias-free problem keeps ``b`` as a zero vector whose gradient is forced to zero, so every
problem has the same pytree structure.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.problem import Problem


class Params(NamedTuple):
    """The UFM variables of one run: ``W (K, d)``, ``H (d, N)``, ``b (K,)``."""

    W: Float[Array, "K d"]
    H: Float[Array, "d N"]
    b: Float[Array, " K"]


def coeff(problem: Problem, name: str) -> Float[Array, ""]:
    """A coefficient of ``problem`` (e.g. ``"lambda_w"``) as a scalar array of its dtype."""
    return jnp.asarray(getattr(problem, name), dtype=problem.dtype)


def sizes(problem: Problem) -> Float[Array, " K"]:
    """Per-class sample counts n_k (K,) in the problem's dtype (traced inside the engine, where
    they are per-lane values)."""
    if problem.class_sizes is None:
        return jnp.asarray(problem.sizes, problem.dtype)
    return jnp.asarray(problem.class_sizes, dtype=problem.dtype)


def _static_sizes(problem: Problem) -> bool:
    cs = problem.class_sizes
    return isinstance(cs, tuple) and all(isinstance(v, int) for v in cs) and problem.columns is None


def sample_count(problem: Problem):
    """N: a Python int for balanced problems and concrete sizes, the traced Σ n_k for per-lane
    sizes inside the engine."""
    if problem.class_sizes is None or problem.targets is not None or _static_sizes(problem):
        return problem.N
    return jnp.sum(sizes(problem))


def labels(problem: Problem) -> Float[Array, "K N"]:
    """One-hot labels ``Y (K, N)``, class-major: ``I_K ⊗ 1_nᵀ`` (balanced), class k's n_k columns
    after class k−1's (class sizes; traced sizes work too: column j is in class k iff
    Σ_{i<k} n_i <= j < Σ_{i<=k} n_i, and columns past Σ n_k belong to no class), or the labels of a
    ``targets`` problem."""
    dt = problem.dtype
    if not problem.general:
        return jnp.repeat(jnp.eye(problem.K, dtype=dt), problem.n, axis=1)
    if problem.labels is not None:
        return jax.nn.one_hot(jnp.asarray(problem.labels), problem.K, dtype=dt).T
    if _static_sizes(problem):
        return jnp.asarray(np.eye(problem.K)[:, problem.label_vector()], dt)
    n = sizes(problem)
    end = jnp.cumsum(n)
    j = jnp.arange(problem.N, dtype=dt)[None, :]
    return ((j >= (end - n)[:, None]) & (j < end[:, None])).astype(dt)


def targets_and_weights(problem: Problem) -> tuple[Float[Array, "K N"], Float[Array, "K N"] | None]:
    """Regression targets ``T (K, N)`` and per-entry weights ``Ω (K, N)`` (None for plain MSE).

    Plain MSE: ``T = Y``. Rescaled MSE: ``T = M Y`` and ``Ω = 1 + (α − 1) Y``, so that the
    per-sample loss is ``α (z_y − M)² + Σ_{j≠y} z_j²``. A target matrix given in row-space
    coordinates (``row_basis``, the collapsed engine's lanes): ``T = T_Q Qᵀ``, exact, as T's rows lie
    in span Q.
    """
    if problem.targets is not None:
        return jnp.asarray(problem.targets, problem.dtype), None
    if problem.row_basis is not None:
        rb = problem.row_basis
        return jnp.asarray(rb.TQ, problem.dtype) @ jnp.asarray(rb.Q, problem.dtype).T, None
    Y = labels(problem)
    if problem.loss == "mse":
        return Y, None
    M = coeff(problem, "target_scale")
    alpha = coeff(problem, "alpha")
    return M * Y, 1.0 + (alpha - 1.0) * Y


def _bias(problem: Problem, params: Params) -> Float[Array, " K"]:
    """The bias that enters the model: ``b``, or zeros for a bias-free problem (so that the
    objective, and hence its Hessian, does not depend on the unused ``b``)."""
    return params.b if problem.bias else jnp.zeros_like(params.b)


def residual(problem: Problem, params: Params) -> Float[Array, "K N"]:
    """The scaled residual ``R = Ω ⊙ (W H + b 1ᵀ − T) / N``, shape ``(K, N)``."""
    T, Omega = targets_and_weights(problem)
    Z = params.W @ params.H + _bias(problem, params)[:, None] - T
    if Omega is not None:
        Z = Omega * Z
    return Z / sample_count(problem)


def objective(problem: Problem, params: Params) -> Float[Array, ""]:
    """The objective f(W, H, b) of THEORY.md §1 (rescaled MSE weights the squared errors)."""
    T, Omega = targets_and_weights(problem)
    Z = params.W @ params.H + _bias(problem, params)[:, None] - T
    sq = Z * Z if Omega is None else Omega * Z * Z
    f = 0.5 * jnp.sum(sq) / sample_count(problem)
    f = f + 0.5 * coeff(problem, "lambda_w") * jnp.sum(params.W**2)
    f = f + 0.5 * coeff(problem, "lambda_h") * jnp.sum(params.H**2)
    if problem.bias:
        f = f + 0.5 * coeff(problem, "lambda_b") * jnp.sum(params.b**2)
    return f


def gradient(problem: Problem, params: Params) -> Params:
    """Analytic gradient: ``∇W = R Hᵀ + λ_W W``, ``∇H = Wᵀ R + λ_H H``, ``∇b = R 1 + λ_b b``."""
    R = residual(problem, params)
    gW = R @ params.H.T + coeff(problem, "lambda_w") * params.W
    gH = params.W.T @ R + coeff(problem, "lambda_h") * params.H
    if problem.bias:
        gb = jnp.sum(R, axis=1) + coeff(problem, "lambda_b") * params.b
    else:
        gb = jnp.zeros_like(params.b)
    return Params(gW, gH, gb)


def value_and_gradient(problem: Problem, params: Params) -> tuple[Float[Array, ""], Params]:
    """Objective and analytic gradient sharing one residual computation."""
    T, Omega = targets_and_weights(problem)
    Z = params.W @ params.H + _bias(problem, params)[:, None] - T
    WZ = Z if Omega is None else Omega * Z
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    N = sample_count(problem)
    f = 0.5 * jnp.sum(Z * WZ) / N + 0.5 * lw * jnp.sum(params.W**2) + 0.5 * lh * jnp.sum(params.H**2)
    R = WZ / N
    gW = R @ params.H.T + lw * params.W
    gH = params.W.T @ R + lh * params.H
    if problem.bias:
        lb = coeff(problem, "lambda_b")
        f = f + 0.5 * lb * jnp.sum(params.b**2)
        gb = jnp.sum(R, axis=1) + lb * params.b
    else:
        gb = jnp.zeros_like(params.b)
    return f, Params(gW, gH, gb)


def tree_sq_norm(tree) -> Float[Array, ""]:
    """Squared Euclidean norm of all leaves of a pytree, as one scalar."""
    return sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree))


def gradient_norm(problem: Problem, params: Params) -> Float[Array, ""]:
    """Euclidean norm of the full gradient over (W, H, b)."""
    return jnp.sqrt(tree_sq_norm(gradient(problem, params)))


def hvp(problem: Problem, params: Params, tangent: Params) -> Params:
    """Hessian-vector product ``∇²f(params) · tangent`` (forward-mode over the analytic gradient)."""
    return jax.jvp(lambda p: gradient(problem, p), (params,), (tangent,))[1]
