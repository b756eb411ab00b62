"""The collapsed GD step of a BATCH with the lanes on the minor axis (an opt-in layout of the wide plan).

The engine writes every step for ONE run and vmaps it (:mod:`ncflow.batch.programs`). Vmapped, each
tiny product of the collapsed step (THEORY §4: 10×10 by 10×20 in the default problem) becomes a
batched matrix product with the lanes as its batch axis, which on an accelerator is a series of
small batched-GEMM kernels far from any roofline (issue 23). This module holds the other layout of
the same step: the state of ``L`` lanes as

    W (K, d, L),  M (d, K, L),  G (d, d, L),  b (K, L)

— the run axis LAST — with every per-lane coefficient (step size, λ's, class sizes) as a lane
vector ``(L,)`` (class sizes ``(K, L)``), and each small product a sum over the contracted axis of
broadcast products: ``(A B)[i, j, :] = Σ_c A[i, c, :] * B[c, j, :]``, unrolled into multiply-adds of
lane vectors — elementwise across lanes, no ``dot_general``, no reduction. The wide plan transposes
its lanes-major state into this layout once per chunk call (:func:`to_lanes_minor`), runs the chunk's
masked steps here and transposes back (:func:`from_lanes_minor`) before its check
(``Config.step_layout = "lanes"``).

The same maths as :func:`ncflow.maths.collapsed.gd_step`, term by term (the sums' order differs:
equal to rounding, 1e-13 relative in float64 over tens of steps, ``tests/test_lanes_minor.py``).
Handled: depth 1, the MSE loss, one-hot labels (balanced or per-lane class sizes), every bias mode,
plain GD. Anything else (targets, rescaled MSE, momentum/Nesterov/Adam/flow, the saddle start's
escape recorder, the full space, deep models) is refused by :func:`supports` (None), and the caller
keeps the vmapped one-run step. Whether this layout is faster than the vmapped step is a property of
the device: it has not been measured on a GPU yet (``benchmarks/layouts.py``), so no plan picks it
by itself.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ncflow.dynamics.steppers import GD
from ncflow.maths.collapsed import Collapsed
from ncflow.problem import Problem

__all__ = ["Coefficients", "coefficients", "from_lanes_minor", "gd_step", "masked", "supports", "to_lanes_minor",
           "why_not"]


class Coefficients(NamedTuple):
    """Per-lane coefficients of a lanes-minor batch step.

    Attributes:
        lr, lambda_w, lambda_h, lambda_b: ``(L,)`` each.
        n: class sizes ``(K, L)``, or None for balanced classes (the problem's static ``n``).
        N: samples per lane ``(L,)`` (class sizes), or the static ``N`` as a Python float (balanced).
    """

    lr: Float[Array, " L"]
    lambda_w: Float[Array, " L"]
    lambda_h: Float[Array, " L"]
    lambda_b: Float[Array, " L"]
    n: Float[Array, "K L"] | None
    N: Float[Array, " L"] | float


def why_not(problem: Problem, dynamics) -> str | None:
    """Why the lanes-minor step cannot run ``dynamics`` on ``problem`` (a batch's base problem), as a
    phrase for a one-line refusal, or None when it can."""
    if problem.depth != 1:
        return f"depth {problem.depth} (deep models keep the vmapped step)"
    if dynamics.space.name != "collapsed":
        return f"the {dynamics.space.name} engine (it needs engine collapsed)"
    if type(dynamics.stepper) is not GD:
        return f"engine {dynamics.name} (it needs plain gd without the saddle start's escape recorder)"
    if problem.loss != "mse":
        return f"loss {problem.loss} (it needs mse)"
    if problem.targets is not None or problem.row_basis is not None:
        return "a target matrix (it needs one-hot labels)"
    return None


def supports(problem: Problem, dynamics) -> Callable | None:
    """The lanes-minor step :func:`gd_step` when it can run ``dynamics`` on ``problem`` (a batch's
    base problem), else None: the caller keeps the vmapped one-run step (:func:`why_not` says why)."""
    return gd_step if why_not(problem, dynamics) is None else None


def to_lanes_minor(x):
    """A lanes-major state (every leaf ``(L, ...)``) with the lane axis moved last: ``(..., L)``."""
    return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, -1), x)


def from_lanes_minor(x):
    """The inverse of :func:`to_lanes_minor`: every leaf ``(..., L)`` back to ``(L, ...)``."""
    return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, -1, 0), x)


def masked(live, new, old):
    """Per lane: ``new`` where ``live`` (shape (L,)), else ``old`` exactly (lanes-minor leaves)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new, old)


def coefficients(problem_b: Problem, lr) -> Coefficients:
    """The lane vectors of a batch's problem ``problem_b`` (the engine's per-lane problem:
    coefficients ``(L,)``, class sizes ``(L, K)``) and step sizes ``lr (L,)``."""
    dt = problem_b.dtype
    lr = jnp.asarray(lr, dt)

    def lane(name):
        return jnp.broadcast_to(jnp.asarray(getattr(problem_b, name), dt), lr.shape)

    if problem_b.class_sizes is None:
        n, N = None, float(problem_b.N)
    else:
        n = jnp.asarray(problem_b.class_sizes, dt).T  # (K, L)
        N = jnp.sum(n, axis=0)
    return Coefficients(lr, lane("lambda_w"), lane("lambda_h"), lane("lambda_b"), n, N)


def _mm(A, B):
    """``(i, c, L) × (c, j, L) → (i, j, L)``: per lane, the product of two small matrices as the sum
    over ``c`` of broadcast products, unrolled into a chain of multiply-adds across lanes.

    Not ``jnp.sum(A[:, :, None] * B[None], axis=1)``: in float32 XLA:CPU (jax 0.10.2) computed that
    reduction wrongly for some shapes (relative error 1.5 at (64, 10) × (10, 64) with 1,024 lanes;
    ``tests/test_lanes_minor.py``), and materialized its product."""
    acc = A[:, 0, None, :] * B[None, 0, :, :]
    for c in range(1, A.shape[1]):
        acc = acc + A[:, c, None, :] * B[None, c, :, :]
    return acc


def _t(A):
    """Per lane, the transpose of a small matrix: ``(i, j, L) → (j, i, L)``."""
    return jnp.swapaxes(A, 0, 1)


def gd_step(problem: Problem, c: Coefficients, x: Collapsed) -> Collapsed:
    """One exact collapsed GD step of every lane (:func:`ncflow.maths.collapsed.gd_step`, lanes minor).

    Args:
        problem: the batch's problem (its static K, bias and class-size mode are read).
        c: the lanes' :class:`Coefficients`.
        x: ``Collapsed(W (K, d, L), M (d, K, L), G (d, d, L), b (K, L))``.

    Returns:
        The next state, same shapes. ``lr = 0`` in a lane leaves that lane exactly unchanged.
    """
    W, M, G, b = x
    K = problem.K
    Wt = _t(W)  # (d, K, L)
    Rm = _mm(W, M) + b[:, None, :] - jnp.eye(K, dtype=W.dtype)[:, :, None]  # (K, K, L)
    X = _mm(W, G)  # W G (K, d, L)
    S = _mm(X, Wt)  # W G Wᵀ (K, K, L)
    a = 1.0 - c.lr * c.lambda_h
    s = c.lr / c.N
    Z = (-a * s) * X + (0.5 * s * s) * _mm(S, W)  # (K, d, L)
    WtZ = _mm(Wt, Z)  # (d, d, L)
    if c.n is None:  # balanced: n R_m Mᵀ and n Σ_k r_k, as the one-run step
        RDM = problem.n * _mm(Rm, _t(M))
        Rn = problem.n * jnp.sum(Rm, axis=1)
    else:
        RDM = _mm(Rm * c.n[None, :, :], _t(M))
        Rn = jnp.sum(Rm * c.n[None, :, :], axis=1)
    gW = (RDM + X) / c.N + c.lambda_w * W
    gM = _mm(Wt, Rm) / c.N + c.lambda_h * M
    G_new = (a * a) * G + WtZ + _t(WtZ)
    b_new = b - c.lr * (Rn / c.N + c.lambda_b * b) if problem.bias else b
    return Collapsed(W - c.lr * gW, M - c.lr * gM, G_new, b_new)
