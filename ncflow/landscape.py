"""Landscape probes: Hessian spectra, the critical points of THEORY.md §3, one feature's landscape.

All functions take a :class:`~ncflow.problem.Problem` with scalar coefficients and work on ONE
point. The variables are (W, H, b) flattened in that order; a bias-free problem has no b
variable (its b is fixed at 0), so its Hessian has size Kd + dN instead of Kd + dN + K.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ncflow.maths import objective as _o
from ncflow.maths import theory
from ncflow.maths.lanczos import lanczos_extremes
from ncflow.maths.objective import Params
from ncflow.problem import Problem

#: |eigenvalue| below this counts as zero in :func:`critical_point_report` (float64)
ZERO_TOL = 1e-8


def _flatten(problem: Problem, params: Params):
    """Flat variable vector of ``params`` and its inverse (b dropped when bias-free)."""
    W, H, b = (jnp.asarray(a, problem.dtype) for a in params)
    sizes = [W.size, H.size] + ([b.size] if problem.bias else [])
    flat = jnp.concatenate([W.ravel(), H.ravel()] + ([b] if problem.bias else []))

    def unflatten(v):
        Wv = v[: sizes[0]].reshape(W.shape)
        Hv = v[sizes[0]: sizes[0] + sizes[1]].reshape(H.shape)
        bv = v[sizes[0] + sizes[1]:] if problem.bias else jnp.zeros_like(b)
        return Params(Wv, Hv, bv)

    return flat, unflatten


@jax.jit
def _dense_hessian(problem: Problem, params: Params):
    flat, unflatten = _flatten(problem, params)

    def grad_flat(v):
        return _flatten(problem, _o.gradient(problem, unflatten(v)))[0]

    return jax.jacfwd(grad_flat)(flat)


@jax.jit
def _value_grad_norm(problem: Problem, params: Params):
    f, g = _o.value_and_gradient(problem, params)
    return f, jnp.sqrt(_o.tree_sq_norm(g))


@functools.partial(jax.jit, static_argnums=2)
def _lanczos(problem: Problem, params: Params, m: int, key):
    flat, unflatten = _flatten(problem, params)
    p = unflatten(flat)

    def mv(v):
        return _flatten(problem, _o.hvp(problem, p, unflatten(v)))[0]

    return lanczos_extremes(mv, jax.random.normal(key, flat.shape, flat.dtype), m)


def _params(problem: Problem, params: Params) -> Params:
    return Params(*(jnp.asarray(a, problem.dtype) for a in params))


def hessian_matrix(problem: Problem, params: Params) -> np.ndarray:
    """The dense Hessian ``(P, P)`` of the objective at ``params`` (P = Kd + dN [+ K]),
    symmetrized; forward-mode Jacobian of the analytic gradient. Small problems only. Compiled
    once per problem shape (coefficients are traced)."""
    Hm = np.asarray(_dense_hessian(problem, _params(problem, params)), np.float64)
    return 0.5 * (Hm + Hm.T)


def hessian_spectrum(problem: Problem, params: Params, k: int | None = None, key=None,
                     iters: int | None = None) -> np.ndarray:
    """Hessian eigenvalues of the objective at ``params``, ascending.

    Args:
        k: None: the full spectrum ``(P,)`` from the dense Hessian (small problems: P² memory).
            An int: the ``k`` smallest Ritz values ``(k,)`` of a Lanczos run on Hessian-vector
            products (``ncflow.lanczos``, full reorthogonalization) — the extreme ones converge
            first (see :func:`hessian_extremes` for the largest).
        key: PRNG key of the Lanczos start vector (default: key(0)).
        iters: Lanczos steps (default ``min(P, max(4k, 64))``).
    """
    if k is None:
        return np.linalg.eigvalsh(hessian_matrix(problem, params))
    P = _flatten(problem, params)[0].shape[0]
    m = min(P, iters or max(4 * k, 64))
    if not 1 <= k <= m:
        raise ValueError(f"k must be an integer in [1, {m}], got {k!r}")
    res = _lanczos(problem, _params(problem, params), m, jax.random.key(0) if key is None else key)
    return np.sort(np.asarray(res.ritz, np.float64))[:k]


def hessian_extremes(problem: Problem, params: Params, iters: int = 64, key=None) -> tuple[float, float]:
    """``(λ_min, λ_max)`` of the Hessian by Lanczos (Ritz values: λ_min from above, λ_max from below)."""
    m = min(_flatten(problem, params)[0].shape[0], iters)
    res = _lanczos(problem, _params(problem, params), m, jax.random.key(0) if key is None else key)
    return float(res.min_eig), float(res.max_eig)


@dataclasses.dataclass(frozen=True)
class CriticalPointInfo:
    """One row of :func:`critical_point_report`.

    Attributes:
        s: active directions; value: f_s (theory.critical_value); objective: f at the built point;
        grad_norm: ||∇f|| there; min_eig: smallest Hessian eigenvalue; predicted_min_eig:
        theory.saddle_min_eigenvalue for saddles (None at the minimum s = max_active);
        negative, zero: numbers of eigenvalues < −tol and with |λ| < tol; kind: "saddle" or "minimum".
    """

    s: int
    value: float
    objective: float
    grad_norm: float
    min_eig: float
    predicted_min_eig: float | None
    negative: int
    zero: int
    kind: str


def critical_point_report(problem: Problem, tol: float = ZERO_TOL) -> list[CriticalPointInfo]:
    """For each s = 0..max_active: the closed-form critical point (``theory.critical_point``),
    its value, gradient norm and dense Hessian spectrum summary (small problems)."""
    rows = []
    top = theory.max_active(problem)
    for s in range(top + 1):
        x = theory.critical_point(problem, s)
        eig = hessian_spectrum(problem, x)
        f, gn = _value_grad_norm(problem, x)
        rows.append(CriticalPointInfo(
            s=s, value=theory.critical_value(problem, s), objective=float(f),
            grad_norm=float(gn), min_eig=float(eig[0]),
            predicted_min_eig=theory.saddle_min_eigenvalue(problem) if s < top else None,
            negative=int(np.sum(eig < -tol)), zero=int(np.sum(np.abs(eig) < tol)),
            kind="saddle" if s < top else "minimum"))
    return rows


def feature_landscape(problem: Problem, norms, angles, loss: str | None = None, k: int = 0,
                      plane_class: int | None = None) -> np.ndarray:
    """The objective as a function of ONE feature (paper's Fig. 2), shape ``(len(norms), len(angles))``.

    W, b and every other feature sit at the global minimizer (``theory.global_minimizer``: the
    simplex ETF for case A); the first sample of class ``k`` is replaced by

        h = norm · (cos(angle) ŵ_k + sin(angle) e),

    with ŵ_k = w_k/||w_k|| and e the unit vector of the plane spanned by w_k and w_j
    (j = ``plane_class``, default the next class) orthogonal to w_k. The objective is a strictly
    convex quadratic in h whose minimizer is the optimal h_k = √(λ_W/(nλ_H)) w_k: angle 0 and
    norm ||h_k||.

    Args:
        norms, angles: 1-D grids (angles in radians).
        loss: None (the problem's loss), "mse" or "rescaled-mse" (with the problem's α, M: 1 for
            an mse problem).
    """
    if loss is not None and loss != problem.loss:
        fields = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
        fields["loss"] = loss
        if loss != "rescaled-mse":  # α and M apply to the rescaled MSE only: back to their defaults
            fields.update(alpha=1.0, target_scale=1.0)
        problem = Problem(**fields)
    K, n = problem.K, problem.n
    if not 0 <= k < K:
        raise ValueError(f"k must be a class index in [0, {K - 1}], got {k!r}")
    j = (k + 1) % K if plane_class is None else plane_class
    x = theory.global_minimizer(problem)
    W = np.asarray(x.W, np.float64)
    if np.linalg.norm(W[k]) == 0:
        raise ValueError("w_k = 0 at the optimum (zero solution, c >= 1): no angle to w_k is defined")
    wk = W[k] / np.linalg.norm(W[k])
    e = W[j] - (W[j] @ wk) * wk
    if np.linalg.norm(e) < 1e-12:
        raise ValueError(f"w_{j} is parallel to w_{k}; choose another plane_class")
    e /= np.linalg.norm(e)
    col = k * n
    norms = jnp.asarray(np.asarray(norms, np.float64), problem.dtype)
    angles = jnp.asarray(np.asarray(angles, np.float64), problem.dtype)
    wk_, e_ = jnp.asarray(wk, problem.dtype), jnp.asarray(e, problem.dtype)

    @jax.jit
    def grid(norms, angles):
        def one(r, a):
            h = r * (jnp.cos(a) * wk_ + jnp.sin(a) * e_)
            return _o.objective(problem, Params(x.W, x.H.at[:, col].set(h), x.b))

        return jax.vmap(lambda r: jax.vmap(lambda a: one(r, a))(angles))(norms)

    return np.asarray(grid(norms, angles), np.float64)
