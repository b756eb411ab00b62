"""Closed-form predictions of the landscape theory (THEORY.md §2–§4; depth > 1: §9 through
:mod:`ncflow.maths.deep`).

Pure functions of a :class:`~ncflow.problem.Problem` with scalar coefficients. Nothing here
depends on the engine. Every global minimizer and critical point is built from "directions":
orthonormal class vectors ``U (K, s)``, feature directions ``R (d, s)`` and singular values
``z (s,)`` of ``W H``; balance ``λ_W WᵀW = λ_H H Hᵀ`` then fixes

    W = U diag(sqrt(z) (λ_H/λ_W)^{1/4}) Rᵀ,   H = R diag(sqrt(z) (λ_W/λ_H)^{1/4}) Vᵀ,   V = Yᵀ U / sqrt(n).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.maths import deep as _deep
from ncflow.maths import imbalanced as _im
from ncflow.maths.objective import Params
from ncflow.problem import Problem, ProblemError

#: the largest K for which :func:`predict` builds the dense K×K Gram and outputs by default; above
#: it the prediction holds their closed form (``gram_form``) only, so K = 100,000 answers in
#: milliseconds (the dense matrices: ``predict(problem, dense=True)``)
DENSE_MAX_K = 2048

GEOMETRIES = ("simplex_etf", "orthogonal_frame", "etf_with_mean", "zero", "rank_limited",
              "not_attained", "not_unique", "general")


class PredictionArrays(NamedTuple):
    """A :class:`Prediction` as arrays: f* (), Gram (K, K), spectrum (K,) zero-padded, b* (K,),
    whether the Gram is unique, and whether any geometry is determined at all."""

    objective: Float[Array, ""]
    gram: Float[Array, "K K"]
    spectrum: Float[Array, " K"]
    bias: Float[Array, " K"]
    gram_unique: Array
    geometry_known: Array
    gram_h: Float[Array, "K K"]
    cross: Float[Array, "K K"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the theory predicts for a problem's global minimizers.

    Attributes:
        c: K sqrt(n λ_W λ_H).
        geometry: one of :data:`GEOMETRIES`.
            ``not_attained``: exactly one of λ_W, λ_H is 0, the infimum is not attained;
            ``not_unique``: λ_W = λ_H = 0, minimizers exist at every scale.
        objective: the global minimum value f*.
        rank: s, the number of active singular directions of W H at the optimum.
        w_norm, h_norm: root-mean-square ||w_k|| and ||h_k|| (every class has this norm when the
            geometry is symmetric); None where not determined (not_attained / not_unique).
        bias: each entry of b* (all equal), None for a bias-free problem.
        gram: predicted ``W Wᵀ`` (K, K) where it is unique, else None (rank-limited, λ = 0 cases).
        spectrum: predicted nonzero eigenvalues of ``W Wᵀ``, shape (rank,), descending.
        outputs: predicted class-mean outputs ``W μ_k + b`` as columns, (K, K), or None.
        gram_form: ``(a, b)`` with ``W Wᵀ = a (I − 11ᵀ/K) + b 11ᵀ/K`` wherever the Gram is unique
            (every such geometry has this form), else None: the Gram without a K×K matrix. With
            K > :data:`DENSE_MAX_K` (and ``dense`` not asked for) ``gram`` and ``outputs`` are None
            and this is the Gram.
        bias_vector: b* (K,) (None bias-free); with class sizes its entries differ (b* = p in (A)).
        w_norms, h_norms: per-class ||w_k|| and ||μ_k|| (K,), None where not determined.
        gram_h, cross: predicted MᵀM and W M (K, K) of the class means, None where not unique.
        merged: groups of >= 2 classes whose w_k and μ_k coincide (nonzero); vanished: classes with
            w_k = μ_k = 0 (THEORY §7: minority collapse). Empty for balanced problems above c = 1.
        class_sizes: n_k (K,).
    """

    c: float
    geometry: str
    objective: float
    rank: int
    w_norm: float | None
    h_norm: float | None
    bias: float | None
    gram: np.ndarray | None
    spectrum: np.ndarray
    outputs: np.ndarray | None
    gram_form: tuple[float, float] | None = None
    bias_vector: np.ndarray | None = None
    w_norms: np.ndarray | None = None
    h_norms: np.ndarray | None = None
    gram_h: np.ndarray | None = None
    cross: np.ndarray | None = None
    merged: tuple = ()
    vanished: tuple = ()
    class_sizes: np.ndarray | None = None
    general: bool = False

    @property
    def gram_unique(self) -> bool:
        """Whether the theory fixes a unique Gram ``W Wᵀ`` (dense or as ``gram_form``)."""
        return self.gram is not None or self.gram_form is not None

    def gram_matrix(self, K: int) -> np.ndarray | None:
        """The Gram (K, K) as a dense matrix (from ``gram_form`` when it was not built), or None."""
        if self.gram is not None:
            return self.gram
        if self.gram_form is None:
            return None
        a, b = self.gram_form
        return a * (np.eye(K) - 1.0 / K) + b / K

    @property
    def reference(self) -> float:
        """The value runs are measured against (the ``gap`` column, the stop rule's f*): f*."""
        return float(self.objective)

    def arrays(self, K: int, dtype) -> "PredictionArrays":
        """The prediction as arrays (vmappable across problems of one shape)."""
        spec = np.zeros(K)
        spec[: self.spectrum.size] = self.spectrum
        gram = self.gram_matrix(K)
        gram = np.zeros((K, K)) if gram is None else gram
        return PredictionArrays(
            objective=jnp.asarray(self.objective, dtype),
            gram=jnp.asarray(gram, dtype),
            spectrum=jnp.asarray(spec, dtype),
            bias=jnp.asarray(self.bias_vector if self.bias_vector is not None else
                             np.full(K, 0.0 if self.bias is None else self.bias), dtype),
            gram_unique=jnp.asarray(self.gram_unique),
            geometry_known=jnp.asarray(self.w_norm is not None),
            gram_h=jnp.asarray(np.zeros((K, K)) if self.gram_h is None else self.gram_h, dtype),
            cross=jnp.asarray(np.zeros((K, K)) if self.cross is None else self.cross, dtype),
        )

    def to_json(self) -> dict:
        """JSON-ready summary with the keys of ``ncflow theory --json``. With class sizes or targets
        (THEORY §7) ``bias`` is the list b* (or null), and per-class ``w_norms``/``h_norms``,
        ``gram_w`` (K×K), ``merged`` and ``vanished`` are added."""
        out = {
            "c": self.c, "geometry": self.geometry, "objective": self.objective,
            "rank": self.rank, "w_norm": self.w_norm, "h_norm": self.h_norm, "bias": self.bias,
        }
        if self.general:
            lst = lambda a: None if a is None else np.asarray(a, float).tolist()  # noqa: E731
            sizes = None if self.class_sizes is None else [int(v) for v in self.class_sizes]
            out.update(class_sizes=sizes, w_norms=lst(self.w_norms), h_norms=lst(self.h_norms),
                       gram_w=lst(self.gram), gram_h=lst(self.gram_h), cross=lst(self.cross),
                       spectrum=lst(self.spectrum), gram_unique=self.gram_unique,
                       merged=[list(g) for g in self.merged], vanished=list(self.vanished))
        return out


def _scalars(problem: Problem) -> tuple[float, float, float]:
    try:
        return float(problem.lambda_w), float(problem.lambda_h), float(problem.lambda_b)
    except TypeError:
        raise ProblemError("theory needs scalar coefficients; got a batched problem") from None


def _centered_basis(K: int) -> np.ndarray:
    """Orthonormal basis of the complement of 1 in R^K (Helmert), shape (K, K-1)."""
    B = np.linalg.qr(np.concatenate([np.ones((K, 1)), np.eye(K)[:, : K - 1]], axis=1))[0]
    return B[:, 1:]


def _direction_values(problem: Problem, dense: bool = True) -> tuple[np.ndarray | None, np.ndarray, float | None,
                                                                     float]:
    """Class directions U (K, s), singular values z (s,), bias entry b*, and f* of the optimum.

    The directions are a deterministic choice; every other global minimizer is a rotation
    (and, when rank-limited, another choice of s of the equivalent class directions). With
    ``dense=False`` U is None (no K×K basis is built; z, b* and f* are the same).
    """
    def centered(K):
        return _centered_basis(K) if dense else None

    K, d, n = problem.K, problem.d, problem.n
    lw, lh, lb = _scalars(problem)
    c = problem.c
    sq_n = math.sqrt(n)
    if problem.loss == "rescaled-mse":
        if not problem.bias or lb != 0.0 or d < K - 1:
            field = "d" if d < K - 1 else "bias" if not problem.bias else "lambda_b"  # the setting to change
            raise ProblemError("the rescaled-MSE closed form covers lambda_b = 0 with a bias and d >= K-1 only",
                               field=field)
        alpha, M = float(problem.alpha), float(problem.target_scale)
        eps = c * (alpha + K - 1) / (alpha * K)
        delta = max(M - eps, 0.0)
        b = (alpha * M - delta * (K - 1) * (alpha - 1) / K) / (alpha + K - 1)
        if delta == 0.0:
            f = alpha * M**2 * (K - 1) / (2 * (alpha + K - 1))
            return np.zeros((K, 0)), np.zeros(0), b, f
        f = (K - 1) * (c / K) * (M - eps / 2)
        return centered(K), np.full(K - 1, sq_n * delta), b, f
    if not problem.bias:
        s = 0 if c >= 1 else min(d, K)
        f = 0.5 - s * (1 - c) ** 2 / (2 * K)
        return (np.eye(K)[:, :s] if dense else None), np.full(s, sq_n * (1 - c)), None, f
    b0 = 1.0 / (K * (1 + lb))
    f_zero = (K - 1) / (2 * K) + lb / (2 * K * (1 + lb))
    if c >= 1:
        return np.zeros((K, 0)), np.zeros(0), b0, f_zero
    if lb > 0 and lb > c / (1 - c) and d >= K:
        U = np.concatenate([_centered_basis(K), np.ones((K, 1)) / math.sqrt(K)], axis=1) if dense else None
        z = np.concatenate([np.full(K - 1, sq_n * (1 - c)), [sq_n * (1 - c - c / lb)]])
        f = (K - 1) * c * (2 - c) / (2 * K) + (c - c**2 / 2 - c**2 / (2 * lb)) / K
        return U, z, c / (K * lb), f
    s = min(d, K - 1)
    return (_centered_basis(K)[:, :s] if dense else None), np.full(s, sq_n * (1 - c)), b0, \
        f_zero - s * (1 - c) ** 2 / (2 * K)


def _predict_general(problem: Problem) -> Prediction:
    """THEORY §7: class sizes or a target matrix (:mod:`ncflow.maths.imbalanced`)."""
    _scalars(problem)
    o = _im.optimum(problem)
    spectrum = np.sort(np.clip(np.linalg.eigvalsh(o.gram_w), 0, None))[::-1][: o.kept] if o.determined \
        else np.zeros(0)
    geometry = "zero" if o.kept == 0 else ("general" if o.determined else "not_unique")
    bias = None if o.bias is None else [float(v) for v in o.bias]
    unique = o.gram_unique and o.determined
    w_norm = math.sqrt(float(np.mean(o.w_norms**2))) if o.determined else None
    h_norm = (math.sqrt(float(np.mean(o.h_norms**2))) if o.h_norms is not None else None) if o.determined else None
    outputs = None
    if unique and o.cross is not None:
        outputs = o.cross + (0.0 if o.bias is None else o.bias[:, None])
    sizes = problem.sizes
    return Prediction(problem.c, geometry, float(o.objective), o.kept, w_norm, h_norm, bias,
                      o.gram_w if unique else None, spectrum, outputs,
                      bias_vector=None if o.bias is None else np.asarray(o.bias),
                      w_norms=o.w_norms if o.determined else None, h_norms=o.h_norms if o.determined else None,
                      gram_h=o.gram_h if unique else None, cross=o.cross if unique else None,
                      merged=o.merged if unique else (), vanished=o.vanished if unique else (),
                      class_sizes=sizes if problem.class_sizes is not None or problem.labels is not None else None,
                      general=True)


def _predict_deep(problem: Problem):
    """THEORY §9 for a problem of depth > 1: :func:`ncflow.maths.deep.predict_deep` (linear) or
    :func:`ncflow.maths.deep.predict_relu` (relu), with the problem's fields; errors name them."""
    lw, lh, lb = _scalars(problem)
    lams = tuple(float(v) for v in problem.layer_lambdas)
    if min(lams) <= 0.0:
        raise ProblemError(f"lambda_w must be > 0 at every layer for the deep theory (THEORY §9, depth "
                           f"{problem.depth}), got λ_1..λ_L = {list(lams)}", field="lambda_w")
    if lh <= 0.0:
        raise ProblemError(f"lambda_h must be > 0 for the deep theory (THEORY §9, depth {problem.depth}), got {lh:g}",
                           field="lambda_h")
    if problem.activation == "relu":
        return _deep.predict_relu(problem.K, int(problem.sizes[0]), problem.depth, problem.layer_widths, lh, lams)
    if problem.bias_mode == "regularized" and problem.class_sizes is not None and len(set(problem.class_sizes)) > 1:
        raise ProblemError("lambda_b must be 0 with unequal class_sizes at depth > 1: the regularized bias has a "
                           "closed form for balanced classes only (THEORY §9.5)", field="lambda_b")
    n = problem.class_sizes if problem.class_sizes is not None else problem.n
    return _deep.predict_deep(problem.K, n, problem.depth, problem.layer_widths, lh, lams, bias=problem.bias_mode,
                              lambda_b=lb)


def predict(problem: Problem, dense: bool | None = None):
    """The theory's prediction for ``problem``'s global minimum (THEORY.md §2; §7 for class sizes
    or targets, through :mod:`ncflow.maths.imbalanced`, always dense).

    ``dense``: build the K×K ``gram`` and ``outputs`` (None: only when K <= :data:`DENSE_MAX_K`;
    the scalars, the spectrum and ``gram_form`` are always there, in O(K) work and memory).

    Returns a :class:`Prediction` at depth 1. A deep problem (depth > 1, THEORY §9) returns
    :class:`ncflow.maths.deep.DeepPrediction` (activation linear: f*, every rank-r local minimum,
    f_sad, thresholds, per-layer norms) or :class:`ncflow.maths.deep.ReluPrediction` (relu: the DNC
    critical point and the simple low-rank family; its ``objective`` is None, not known in closed
    form); ``dense`` does not apply there."""
    if problem.depth > 1:
        return _predict_deep(problem)
    if problem.general:
        return _predict_general(problem)
    K, d, n = problem.K, problem.d, problem.n
    lw, lh, _ = _scalars(problem)
    dense = K <= DENSE_MAX_K if dense is None else bool(dense)
    U, z, b, f = _direction_values(problem, dense)
    s = z.shape[0]
    if s == 0:
        geometry = "zero"
    elif not problem.bias:
        geometry = "orthogonal_frame" if d >= K else "rank_limited"
    elif problem.bias and s == K:
        geometry = "etf_with_mean"
    else:
        geometry = "simplex_etf" if d >= K - 1 else "rank_limited"
    if s > 0 and lw * lh == 0.0:
        geometry = "not_unique" if lw == lh == 0.0 else "not_attained"
        return Prediction(problem.c, geometry, f, s, None, None, b, None, np.zeros(0), None)
    wscale = math.sqrt(lh / lw) if s else 1.0
    spectrum = np.sort(z * wscale)[::-1]  # eigenvalues of W Wᵀ = U diag(z sqrt(λ_H/λ_W)) Uᵀ
    w_norm = math.sqrt(float(np.sum(spectrum)) / K)
    h_norm = math.sqrt(float(np.sum(z / wscale)) / (n * K)) if s else 0.0
    gram = outputs = form = gram_h = cross = None
    if geometry != "rank_limited":  # unique: a (I − 11ᵀ/K) + b 11ᵀ/K (s = 0, K − 1 centred, or K)
        form = (float(z[0] * wscale), float(z[-1] * wscale) if s == K else 0.0) if s else (0.0, 0.0)
        if dense:
            gram = (U * (z * wscale)) @ U.T if s else np.zeros((K, K))
            outputs = (U * (z / math.sqrt(n))) @ U.T + (0.0 if b is None else b)
            gram_h = (U * (z / (wscale * n))) @ U.T if s else np.zeros((K, K))  # μ_k = H y_k / n
            cross = outputs - (0.0 if b is None else b)
    return Prediction(problem.c, geometry, f, s, w_norm, h_norm, b, gram, spectrum, outputs, form,
                      bias_vector=None if b is None else np.full(K, b), w_norms=np.full(K, w_norm),
                      h_norms=np.full(K, h_norm), gram_h=gram_h, cross=cross, class_sizes=np.full(K, float(n)),
                      vanished=tuple(range(K)) if s == 0 else ())


def _random_orthonormal(key, rows: int, cols: int) -> np.ndarray:
    A = np.asarray(jax.random.normal(key, (rows, max(cols, 1)), dtype="float64"))
    Q, R = np.linalg.qr(A)
    return (Q * np.sign(np.diag(R)))[:, :cols]


def _build(problem: Problem, U: np.ndarray, z: np.ndarray, b: float | None, key) -> Params:
    K, d, n = problem.K, problem.d, problem.n
    lw, lh, _ = _scalars(problem)
    s = z.shape[0]
    if s > d:
        raise ProblemError(f"cannot place {s} directions in d = {d} feature dimensions")
    if s and lw * lh == 0.0:
        raise ProblemError("lambda_w and lambda_h must be > 0 to build a minimizer or critical point")
    Rd = np.eye(d)[:, :s] if key is None else _random_orthonormal(key, d, s)
    Y = np.repeat(np.eye(K), n, axis=1)
    V = Y.T @ U / math.sqrt(n)
    if s:
        a = np.sqrt(z) * (lh / lw) ** 0.25
        W = (U * a) @ Rd.T
        H = (Rd * (z / a)) @ V.T
    else:
        W, H = np.zeros((K, d)), np.zeros((d, n * K))
    bb = np.zeros(K) if b is None else np.full(K, b)
    dt = problem.dtype
    return Params(jax.numpy.asarray(W, dt), jax.numpy.asarray(H, dt), jax.numpy.asarray(bb, dt))


def global_minimizer(problem: Problem, key=None) -> Params:
    """An exact global minimizer ``Params(W (K, d), H (d, N), b (K,))``.

    With ``key`` the feature directions are a random orthonormal frame (another point of the
    same orbit); without it they are the first coordinate axes.
    """
    U, z, b, _ = _direction_values(problem)
    return _build(problem, U, z, b, key)


def max_active(problem: Problem) -> int:
    """The largest number of active directions s of a critical point of ``problem``'s family."""
    return min(problem.d, problem.K if not problem.bias else problem.K - 1)


def _check_critical_family(problem: Problem, s: int) -> None:
    lw, lh, lb = _scalars(problem)
    if problem.loss != "mse":
        raise ProblemError("critical points are given in closed form for loss='mse' only")
    c = problem.c
    if problem.bias and lb > 0 and c < 1 and lb > c / (1 - c):
        raise ProblemError("critical points are given in closed form for lambda_b <= c/(1-c) only")
    if not (isinstance(s, (int, np.integer)) and 0 <= s <= max_active(problem)):
        raise ProblemError(f"active directions s must be an integer in [0, {max_active(problem)}], got {s!r}")


def critical_point(problem: Problem, s: int, key=None) -> Params:
    """An exact critical point with ``s`` active directions (THEORY.md §3).

    ``0 <= s <= max_active(problem)``; ``s = 0`` is the origin (with b at its optimum) and the
    largest s is a global minimizer. Requires c < 1 for s > 0. With ``key``, both the class
    directions and the feature frame are random; otherwise they are fixed.
    """
    _check_critical_family(problem, s)
    if s > 0 and problem.c >= 1:
        raise ProblemError("critical points with s > 0 exist only when c < 1")
    _, lh, lb = _scalars(problem)
    K = problem.K
    if problem.bias:
        basis, b = _centered_basis(K), 1.0 / (K * (1 + lb))
    else:
        basis, b = np.eye(K), None
    if key is not None:
        key, sub = jax.random.split(key)
        basis = basis @ _random_orthonormal(sub, basis.shape[1], basis.shape[1])
    z = np.full(s, math.sqrt(problem.n) * (1 - problem.c))
    return _build(problem, basis[:, :s], z, b, key)


def critical_value(problem: Problem, s: int) -> float:
    """Objective value f_s at a critical point with s active directions."""
    _check_critical_family(problem, s)
    lb = _scalars(problem)[2]
    K, c = problem.K, problem.c
    base = 0.5 if not problem.bias else (K - 1) / (2 * K) + lb / (2 * K * (1 + lb))
    return base - (s * (1 - c) ** 2 / (2 * K) if c < 1 else 0.0)


def saddle_min_eigenvalue(problem: Problem) -> float:
    """Predicted smallest Hessian eigenvalue at every critical point with s < max_active.

    ``(λ_W+λ_H)/2 − sqrt(((λ_W−λ_H)/2)² + 1/(K² n))``; negative exactly when c < 1.
    """
    lw, lh, _ = _scalars(problem)
    return (lw + lh) / 2 - math.sqrt(((lw - lh) / 2) ** 2 + 1.0 / (problem.K**2 * problem.n))


def origin_growth_rate(problem: Problem) -> float:
    """Growth rate g of every mode near the origin under gradient flow (THEORY.md §4)."""
    return -saddle_min_eigenvalue(problem)


def default_step_size(problem: Problem, init_scale: float = 1.0) -> float:
    """The default GD step, ``1 / L`` with L a bound on the curvature along the whole path.

    The Gauss–Newton part of the Hessian is bounded by ``1 + (||W||²_op + ||H||²_op)/N`` (the
    1 is the bias direction, kept as a floor for bias-free problems too), evaluated at the larger of the optimum
    (from :func:`predict`) and a typical Gaussian start of scale ``init_scale``
    (``||W||_op ≈ σ(√K+√d)``, ``||H||_op ≈ σ(√d+√N)``, σ = scale/√d); add the largest λ.
    For rescaled MSE the data term is multiplied by max(α, 1). Depth > 1: :func:`ncflow.maths.deep.default_step_size`;
    the deep ReLU UFM takes that bound at the DNC point only (the start's Gaussian bound, loose at depth,
    would give steps ~100× below the lr 0.5 of THEORY §9.6's measurements).
    """
    if problem.depth > 1:  # THEORY §9: the deep linear bound
        pred = predict(problem)
        if isinstance(pred, _deep.ReluPrediction):  # §9.6: the bound at DNC (= the bias-free deep linear optimum)
            linear = _deep.predict_deep(pred.K, pred.n, pred.L, pred.widths, pred.lambda_h, pred.lambdas, bias="none")
            return _deep.default_step_size(linear, 0.0)
        return _deep.default_step_size(pred, init_scale)
    lw, lh, lb = _scalars(problem)
    K, d, N = problem.K, problem.d, problem.N
    pred = predict(problem)
    opt = 0.0
    if pred.w_norm is not None and pred.spectrum.size:
        top = float(pred.spectrum[0])  # ||W||²_op at the optimum; ||H||²_op = top λ_W/λ_H by balance
        opt = top * (1.0 + lw / lh)
    sigma2 = init_scale**2 / d
    start = sigma2 * ((math.sqrt(K) + math.sqrt(d)) ** 2 + (math.sqrt(d) + math.sqrt(N)) ** 2)
    data = 1.0 + max(opt, start) / N
    if problem.loss == "rescaled-mse":
        data *= max(float(problem.alpha), 1.0)
    return 1.0 / (data + max(lw, lh, lb))
