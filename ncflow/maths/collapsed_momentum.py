"""The exact collapsed representation of heavy-ball and Nesterov momentum (THEORY.md §4 extended).

ncflow's momentum optimizers are ``optax.sgd(1, momentum=β, nesterov=...)`` scaled by the step η
(``ncflow.dynamics.steppers.Optax``): optax's ``trace`` keeps a velocity v of every parameter and

    heavy ball:  v ← g + β v,  θ ← θ − η v
    Nesterov:    v ← g + β v,  θ ← θ − η (g + β v)      (v the NEW velocity)

with g = ∇f(θ) at the current point and v = 0 at the start. Write each feature as
``h_{k,i} = μ_k + e_{k,i}`` and its velocity as ``u_k + ε_{k,i}`` (Σ_i e = Σ_i ε = 0 within each
class). The gradient of a feature is ``Wᵀ r_k/N + λ_H h`` (r_k the residual of its class mean), so
its deviation is ``g_e = B e`` with ``B = WᵀW/N + λ_H I`` (the CURRENT W): every deviation pair
moves by the same linear map,

    [e; ε] ← T [e; ε],   T = [[I − cB, qI], [B, βI]],
    heavy ball: c = η, q = −ηβ;   Nesterov: c = η(1 + β), q = −ηβ²,

and the class means, W, b and their velocities follow optax's rule with the class-mean gradients of
§4. The run is therefore carried exactly by the point ``Collapsed(W, M, G = Σ e eᵀ, b)``, the
velocity ``Collapsed(v_W, v_M, Σ ε εᵀ, v_b)`` and the cross moment ``C = Σ e εᵀ`` (d, d): the joint
second moment S = [[G, C], [Cᵀ, V]] of (e, ε) moves by ``S ← T S Tᵀ`` and W's gradient needs only
the current G. Cost O(K d² + d²) per step, independent of N; with β = 0 it is §4's GD step.

``T`` is applied without forming it: ``T = T0 + L R`` with ``T0 = [[1 − cλ_H, q], [λ_H, β]] ⊗ I``,
``L = [−c; 1] ⊗ Wᵀ/N`` and ``R = [W, 0]``, so ``T S Tᵀ = T0 S T0ᵀ + Z Lᵀ + L Zᵀ`` with
``Z = T0 S Rᵀ + ½ L (R S Rᵀ)`` (2d, K): two products of size K × d × 2d (``W [M | G | C]`` and
``Wᵀ [R_m | Zᵀ]``, merged with the class means' products as in ``collapsed.gd_step``) and O(d²)
elementwise work.

Class sizes and targets (THEORY §7) take the same state and the same helpers as collapsed GD
(:mod:`ncflow.maths.collapsed`): per-sample steps, ``R_m D Mᵀ`` in W's gradient, row-space
coordinates of a target matrix. A bias-free problem keeps b and its velocity as they are (the full
stepper masks b's update). Written for ONE run; vmap outside.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ncflow.maths.collapsed import _RDM, Collapsed, _residual, _Rn, _weights
from ncflow.maths.objective import coeff
from ncflow.problem import Problem


class CollapsedMomentum(NamedTuple):
    """Collapsed momentum state of one run.

    Attributes:
        params: the point, ``Collapsed(W (K, d), M (d, K), G (d, d), b (K,))`` (G = Σ e eᵀ).
        velocity: optax's trace in the same coordinates, ``Collapsed(v_W (K, d), v_M (d, K),
            V (d, d), v_b (K,))``: v_M the class means of H's velocity (targets: its row-space
            coordinates), V = Σ ε εᵀ the within-class second moment of H's velocity.
        cross: ``C = Σ e εᵀ`` (d, d), the cross moment of deviations and their velocities (not
            symmetric).
    """

    params: Collapsed
    velocity: Collapsed
    cross: Float[Array, "d d"]


def init(x: Collapsed) -> CollapsedMomentum:
    """The state at point ``x`` with zero velocity (optax's trace starts at zeros)."""
    zero = Collapsed(*(jnp.zeros_like(a) for a in x))
    return CollapsedMomentum(x, zero, jnp.zeros_like(x.G))


def coefficients(lr, beta: float, nesterov: bool):
    """``(c, q)`` of the deviation map ``T = [[I − cB, qI], [B, βI]]``: heavy ball ``(η, −ηβ)``,
    Nesterov ``(η(1 + β), −ηβ²)`` (scalars, ``lr`` possibly traced)."""
    if nesterov:
        return lr * (1.0 + beta), -lr * beta * beta
    return lr, -lr * beta


def step(problem: Problem, s: CollapsedMomentum, lr, beta: float, nesterov: bool = False) -> CollapsedMomentum:
    """One heavy-ball (``nesterov=False``) or Nesterov step of size ``lr`` and momentum ``beta``,
    exactly as ``optax.sgd(1, momentum=beta, nesterov=nesterov)`` scaled by ``lr`` moves the full
    point (module docstring). Shapes as :class:`CollapsedMomentum`; ``lr`` a scalar (possibly
    traced), ``beta`` a Python float."""
    (W, M, G, b), (vW, vM, V, vb), C = s
    K = problem.K
    n, N = _weights(problem)
    lw, lh = coeff(problem, "lambda_w"), coeff(problem, "lambda_h")
    r = M.shape[1]  # K, or the row-space dimension of a target matrix
    P = W @ jnp.concatenate([M, G, C], axis=1)  # W [M | G | C]  (K, r + 2d)
    d = G.shape[0]
    Rm = P[:, :r] + b[:, None] - jnp.eye(K, dtype=W.dtype) if problem.row_basis is None else \
        _residual(problem, P[:, :r], b)
    Xe, Xc = P[:, r:r + d], P[:, r + d:]  # W G, W C  (K, d)
    Sk = Xe @ W.T  # W G Wᵀ  (K, K)
    c, q = coefficients(lr, beta, nesterov)
    a = 1.0 - c * lh
    half = (0.5 / N) * (Sk @ W)  # ½ W G Wᵀ W/N  (K, d)
    Ze = a * Xe + q * Xc - c * half  # Z_eᵀ, Z_vᵀ: the two blocks of Zᵀ  (K, d)
    Zv = lh * Xe + beta * Xc + half
    WtRZ = W.T @ jnp.concatenate([Rm, Ze, Zv], axis=1)  # Wᵀ [R_m | Z_eᵀ | Z_vᵀ]  (d, r + 2d)
    # the explicit parts: gradients at the current point (§4), then optax's trace
    gW = (_RDM(n, Rm, M) + Xe) / N + lw * W
    gM = WtRZ[:, :r] / N + lh * M
    gb = _Rn(problem, n, Rm) / N + coeff(problem, "lambda_b") * b if problem.bias else jnp.zeros_like(b)
    vW, vM, vb = gW + beta * vW, gM + beta * vM, gb + beta * vb
    if nesterov:
        dW, dM, db = gW + beta * vW, gM + beta * vM, gb + beta * vb
    else:
        dW, dM, db = vW, vM, vb
    # the deviations' second moments: S ← T S Tᵀ = T0 S T0ᵀ + Z Lᵀ + L Zᵀ, whose blocks need
    # Ue = (Z_e W/N)ᵀ = Wᵀ Z_eᵀ/N and Uv = (Z_v W/N)ᵀ  (d, d)
    Ue, Uv = WtRZ[:, r:r + d] / N, WtRZ[:, r + d:] / N
    Cs = C + C.T
    G_new = (a * a) * G + (a * q) * Cs + (q * q) * V - c * (Ue + Ue.T)
    C_new = (a * lh) * G + (a * beta) * C + (q * lh) * C.T + (q * beta) * V + Ue.T - c * Uv
    V_new = (lh * lh) * G + (lh * beta) * Cs + (beta * beta) * V + Uv + Uv.T
    b_new = b - lr * db if problem.bias else b
    point = Collapsed(W - lr * dW, M - lr * dM, G_new, b_new)
    return CollapsedMomentum(point, Collapsed(vW, vM, V_new, vb), C_new)


def flops_per_step(problem: Problem) -> int:
    """Estimated flops of :func:`step`: the products ``W [M | G | C]`` and ``Wᵀ [R_m | Zᵀ]``
    (8 K d² + 4 K² d), the K-sized ones (6 K² d) and about 30 d² + 20 K d elementwise."""
    K, d = problem.K, problem.d
    return 8 * K * d * d + 10 * K * K * d + 30 * d * d + 20 * K * d
