"""The deep UFM objective (THEORY.md §9.1 deep linear, §9.6 deep ReLU) for ONE run: value, analytic
gradient (backprop written by hand), Hessian-vector products, per-layer class statistics, the
Gaussian start and the flop count of a GD step. No batch axis: vmap outside.

Model: ``H (d_0, N)`` free with columns class-major, ``W_l (d_l, d_{l−1})`` for l = 1..L, d_L = K.
Features ``A_0 = H``, ``Z_l = W_l A_{l−1}`` and ``A_l = act(Z_l)`` for l < L (act = identity or ReLU
with ReLU'(0) = 0), output ``W_L A_{L−1} + b 1ᵀ``:

    f = 1/(2N) ||W_L A_{L−1} + b 1ᵀ − Y||² + Σ_l λ_l/2 ||W_l||² + λ_H/2 ||H||² + λ_b/2 ||b||²

The problem's shape lives in a frozen, hashable :class:`DeepSpec` (static under jit); the
coefficients in :class:`DeepCoeffs`, data that may be traced (per-lane values under vmap). Bias
modes as THEORY §1: "unregularized" (A) and "regularized" (C) both carry b and the λ_b term (λ_b = 0
is (A), exactly), "none" (B) keeps b as a zero vector with zero gradient, so every mode has the same
pytree. ReLU has no bias (THEORY §9.6): a ReLU spec with a bias is refused.

Two exact orders of the linear gradient, chosen by flop count at trace time (:func:`flops_per_step`):
layer by layer (the only one for ReLU), or product first — P = W_L⋯W_1 from the K-row suffixes
U_l = W_L⋯W_{l+1}, the output P H, dP = R Hᵀ, ∇H = Pᵀ R and ∇W_l = U_lᵀ dP (W_{l−1}⋯W_1)ᵀ by
:func:`layer_gradients`, whose products all have K columns — O(K d_0 N + K Σ_l d_l d_{l−1}) instead of
O(N Σ_l d_l d_{l−1}). At L = 1 both are :mod:`ncflow.maths.objective`'s formulas in its order.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ncflow.errors import ProblemError
from ncflow.maths.metrics import ClassStats, class_mean_metrics
from ncflow.problem import BIAS_MODES, DTYPES
from ncflow.settings import ACTIVATIONS

__all__ = ["ACTIVATIONS", "DeepCoeffs", "DeepParams", "DeepSpec", "DeepStats", "class_moments", "class_stats",
           "coeffs", "coeffs_of", "counts", "flops_per_step", "gaussian_start", "gd_step", "gradient", "hvp",
           "inner_size", "labels", "last_layer", "layer_gradients", "layer_metrics", "objective", "pmj_singular",
           "product_chain", "spec_of", "sq_norm", "value_and_grad_norm", "value_and_gradient"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class DeepSpec:
    """The static shape of one deep UFM problem (hashable: a jit static argument, a cache key).

    Attributes:
        K: classes (>= 2); d_L = K.
        sizes: class sizes n_k (K,) ints >= 1 (an int n is taken as n for every class); N = Σ n_k.
        widths: (d_0, ..., d_{L−1}): rows of H and of W_1..W_{L−1}; L = len(widths) >= 1.
        activation: "linear" (THEORY §9.1) or "relu" (§9.6, bias "none" only).
        bias: "unregularized" (A), "none" (B) or "regularized" (C).
        dtype: "float32" or "float64" (of the starts and labels built here).
    """

    K: int
    sizes: tuple
    widths: tuple
    activation: str = "linear"
    bias: str = "unregularized"
    dtype: str = "float32"

    def __post_init__(self):
        if not _is_int(self.K) or self.K < 2:
            raise ProblemError(f"K must be an integer >= 2, got {self.K!r}", field="K")
        sizes = (self.sizes,) * self.K if _is_int(self.sizes) else self.sizes
        try:
            sizes = tuple(sizes)
        except TypeError:
            sizes = ()
        if len(sizes) != self.K or not all(_is_int(v) and v >= 1 for v in sizes):
            raise ProblemError(f"sizes must be an integer >= 1 or K = {self.K} integers >= 1, got {self.sizes!r}",
                               field="sizes")
        try:
            widths = tuple(self.widths)
        except TypeError:
            widths = ()
        if len(widths) < 1 or not all(_is_int(v) and v >= 1 for v in widths):
            raise ProblemError(f"widths must be a non-empty tuple (d_0, ..., d_{{L-1}}) of integers >= 1, got "
                               f"{self.widths!r}", field="widths")
        if self.activation not in ACTIVATIONS:
            raise ProblemError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}",
                               field="activation")
        if self.bias not in BIAS_MODES:
            raise ProblemError(f"bias must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}", field="bias")
        if self.activation == "relu" and self.bias != "none":
            raise ProblemError(f"bias must be 'none' with activation 'relu' (the deep ReLU UFM of THEORY §9.6 has "
                               f"no bias), got {self.bias!r}", field="bias")
        if self.dtype not in DTYPES:
            raise ProblemError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}", field="dtype")
        object.__setattr__(self, "sizes", tuple(int(v) for v in sizes))
        object.__setattr__(self, "widths", tuple(int(v) for v in widths))

    @property
    def L(self) -> int:
        """Depth: the number of weight matrices."""
        return len(self.widths)

    @property
    def dims(self) -> tuple:
        """(d_0, ..., d_{L−1}, d_L = K)."""
        return (*self.widths, self.K)

    @property
    def N(self) -> int:
        """Total number of samples Σ n_k."""
        return sum(self.sizes)

    @property
    def balanced(self) -> bool:
        """Whether every class has the same size."""
        return len(set(self.sizes)) == 1

    @property
    def has_bias(self) -> bool:
        """Whether b enters the model (bias modes (A) and (C))."""
        return self.bias != "none"


class DeepCoeffs(NamedTuple):
    """The coefficients of one run (arrays, possibly traced): ``lambdas (L,)`` on W_1..W_L, ``lambda_h ()``
    on H, ``lambda_b ()`` on b (used with a bias; 0 in mode (A))."""

    lambdas: Float[Array, " L"]
    lambda_h: Float[Array, ""]
    lambda_b: Float[Array, ""]


def coeffs(spec: DeepSpec, lambdas, lambda_h, lambda_b=0.0) -> DeepCoeffs:
    """:class:`DeepCoeffs` in ``spec.dtype``: ``lambdas`` one value for every layer or L values.

    Concrete values are checked (finite, >= 0; one clear line naming the field); traced ones are not."""
    dt = jnp.dtype(spec.dtype)
    lams = jnp.broadcast_to(jnp.asarray(lambdas, dt), (spec.L,)) if np.ndim(lambdas) == 0 else jnp.asarray(lambdas, dt)
    if lams.shape != (spec.L,):
        raise ProblemError(f"lambdas must be one value or L = {spec.L} values, got shape {lams.shape}",
                           field="lambdas")
    for name, v in (("lambdas", lambdas), ("lambda_h", lambda_h), ("lambda_b", lambda_b)):
        if not isinstance(v, jax.core.Tracer):
            a = np.asarray(v, np.float64)
            if not (np.all(np.isfinite(a)) and np.all(a >= 0)):
                raise ProblemError(f"{name} must be finite and >= 0, got {v!r}", field=name)
    return DeepCoeffs(lams, jnp.asarray(lambda_h, dt), jnp.asarray(lambda_b, dt))


class DeepParams(NamedTuple):
    """The variables of one run: ``Ws`` = (W_1 (d_1, d_0), ..., W_L (K, d_{L−1})), ``H (d_0, N)``,
    ``b (K,)`` (zeros, and never moved, bias-free)."""

    Ws: tuple
    H: Float[Array, "d0 N"]
    b: Float[Array, " K"]


class DeepStats(NamedTuple):
    """Per-layer class statistics of one run (the NC metrics of every layer read them).

    ``means[l] (d_l, K)`` and ``scatters[l] (d_l, d_l)`` (Σ e eᵀ, not divided by N) of the features A_l,
    l = 0..L−1 (A_0 = H; linear: A_l = W_l⋯W_1 H). ReLU also gives the pre-activations Z_l = W_l A_{l−1},
    l = 1..L−1, in ``pre_means[l−1]``, ``pre_scatters[l−1]`` (empty tuples for linear, where Z_l = A_l).
    ``Ws`` and ``b`` as in the state; ``counts`` n_k (K,), or None for balanced classes (the
    convention of :class:`~ncflow.maths.metrics.ClassStats`)."""

    Ws: tuple
    means: tuple
    scatters: tuple
    pre_means: tuple
    pre_scatters: tuple
    b: Float[Array, " K"]
    counts: Float[Array, " K"] | None


def last_layer(stats: DeepStats) -> ClassStats:
    """The last features' statistics with the classifier W_L as a :class:`ClassStats`, so that
    :func:`ncflow.maths.metrics.nc_metrics` scores the deep model's last layer (L = 1: the UFM's)."""
    return ClassStats(stats.Ws[-1], stats.means[-1], stats.scatters[-1], stats.b, stats.counts)


# ----------------------------------------------------------------------------------- helpers
def labels(spec: DeepSpec, dtype=None) -> Float[Array, "K N"]:
    """One-hot labels ``Y (K, N)``, class-major (class k's n_k columns after class k−1's)."""
    dt = jnp.dtype(spec.dtype if dtype is None else dtype)
    if spec.balanced:
        return jnp.repeat(jnp.eye(spec.K, dtype=dt), spec.sizes[0], axis=1)
    return jnp.asarray(np.eye(spec.K)[:, np.repeat(np.arange(spec.K), spec.sizes)], dt)


def sq_norm(params: DeepParams) -> Float[Array, ""]:
    """Σ_l ||W_l||² + ||H||² + ||b||² (of any pytree: the squared norm of all its leaves)."""
    return sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(params))


def _bias(spec: DeepSpec, b):
    """The bias that enters the model: b, or zeros bias-free (so f does not depend on the unused b)."""
    return b if spec.has_bias else jnp.zeros_like(b)


def _relu(Z):
    """ReLU written so that its derivative at 0 is 0 (jnp.maximum's would be ½) under jvp too."""
    return jnp.where(Z > 0, Z, jnp.zeros_like(Z))


def product_chain(Ws: tuple):
    """P = W_L⋯W_1 (K, d_0) and the suffixes ``U_l = W_L⋯W_{l+1} (K, d_l)`` for l = 1..L−1 (in
    ``suffixes[l−1]``; ``suffixes[L−1]`` is None for U_L = I). Cost 2K Σ_{l<L} d_l d_{l−1}."""
    L = len(Ws)
    U = Ws[-1]
    suffixes = [None] * L
    for j in range(L - 1, 0, -1):  # U_j = W_L⋯W_{j+1}
        suffixes[j - 1] = U
        U = U @ Ws[j - 1]
    return U, tuple(suffixes)


def layer_gradients(Ws: tuple, suffixes: tuple, dP: Float[Array, "K d0"], lambdas) -> tuple:
    """``∇W_l = U_lᵀ dP (W_{l−1}⋯W_1)ᵀ + λ_l W_l`` (d_l, d_{l−1}) for l = 1..L, given dP = ∂f_data/∂P
    (K, d_0) and the suffixes of :func:`product_chain`. Every product has K columns: with
    V_1 = dPᵀ and V_l = W_{l−1} V_{l−1} (d_{l−1}, K), ∇W_l = (V_l U_l)ᵀ; cost 4K Σ_{l<L} d_l d_{l−1}."""
    L = len(Ws)
    V = dP.T
    grads = []
    for j in range(1, L + 1):  # ∇W_j
        if j > 1:
            V = Ws[j - 2] @ V
        g = V.T if j == L else (V @ suffixes[j - 1]).T
        grads.append(g + lambdas[j - 1] * Ws[j - 1])
    return tuple(grads)


def _product_first(spec: DeepSpec) -> bool:
    """Whether the linear gradient goes product first (fewer flops than layer by layer)."""
    return spec.activation == "linear" and _flops_product(spec) < _flops_layers(spec)


def inner_size(spec: DeepSpec) -> int:
    """Σ_{l=1}^{L−1} d_l d_{l−1}: the hidden weight matrices' sizes."""
    d = spec.dims
    return sum(d[i] * d[i - 1] for i in range(1, spec.L))


def _flops_layers(spec: DeepSpec) -> int:
    d = spec.dims
    return 6 * spec.N * sum(d[i] * d[i - 1] for i in range(1, spec.L + 1))


def _flops_product(spec: DeepSpec) -> int:
    return 6 * spec.K * spec.widths[0] * spec.N + 6 * spec.K * inner_size(spec)


def flops_per_step(spec: DeepSpec) -> int:
    """Estimated flops of one full GD step: 6 N Σ_l d_l d_{l−1} layer by layer (ReLU), or the product-first
    order's 6 K d_0 N + 6 K Σ_{l<L} d_l d_{l−1} where that is smaller (linear). L = 1: 6 K d N, as
    ``FULL.flops_per_step``."""
    return _flops_product(spec) if _product_first(spec) else _flops_layers(spec)


# ----------------------------------------------------------------------------------- objective
def _value(spec: DeepSpec, co: DeepCoeffs, params: DeepParams, Z) -> Float[Array, ""]:
    """f from the output error Z = out − Y (K, N), summed in objective.py's order at L = 1."""
    Ws, H, b = params
    f = 0.5 * jnp.sum(Z * Z) / spec.N
    for lam, W in zip(_unstack(co.lambdas, spec.L), Ws):
        f = f + 0.5 * lam * jnp.sum(W**2)
    f = f + 0.5 * co.lambda_h * jnp.sum(H**2)
    if spec.has_bias:
        f = f + 0.5 * co.lambda_b * jnp.sum(b**2)
    return f


def _finish(spec: DeepSpec, co: DeepCoeffs, params: DeepParams, Z, chain, acts, pres):
    """f and the gradient from the output error Z = out − Y (K, N) and :func:`_forward`'s other outputs."""
    Ws, H, b = params
    R = Z / spec.N
    if chain is not None:  # product first (linear)
        P, suffixes = chain
        gWs = layer_gradients(Ws, suffixes, R @ H.T, _unstack(co.lambdas, spec.L))
        gH = P.T @ R + co.lambda_h * H
    else:  # layer by layer
        lams = _unstack(co.lambdas, spec.L)
        gWs = [None] * spec.L
        gWs[-1] = R @ acts[-1].T + lams[-1] * Ws[-1]
        delta = Ws[-1].T @ R
        for j in range(spec.L - 1, 0, -1):  # W_j, j = L−1..1: delta is ∂f/∂A_j on entry
            if spec.activation == "relu":
                delta = jnp.where(pres[j - 1] > 0, delta, jnp.zeros_like(delta))
            gWs[j - 1] = delta @ acts[j - 1].T + lams[j - 1] * Ws[j - 1]
            delta = Ws[j - 1].T @ delta
        gH = delta + co.lambda_h * H
        gWs = tuple(gWs)
    gb = jnp.sum(R, axis=1) + co.lambda_b * b if spec.has_bias else jnp.zeros_like(b)
    return _value(spec, co, params, Z), DeepParams(gWs, gH, gb)


def _unstack(lambdas, L: int) -> tuple:
    return tuple(lambdas[i] for i in range(L))


def _forward(spec: DeepSpec, params: DeepParams, product: bool):
    """(Z = out − Y, (P, suffixes) or None, features A_0..A_{L−1}, pre-activations Z_1..Z_{L−1})."""
    Ws, H, b = params
    Y = labels(spec, H.dtype)
    if product:
        P, suffixes = product_chain(Ws)
        return P @ H + _bias(spec, b)[:, None] - Y, (P, suffixes), (H,), ()
    acts, pres = [H], []
    for W in Ws[:-1]:
        Zl = W @ acts[-1]
        pres.append(Zl)
        acts.append(_relu(Zl) if spec.activation == "relu" else Zl)
    return Ws[-1] @ acts[-1] + _bias(spec, b)[:, None] - Y, None, tuple(acts), tuple(pres)


def value_and_gradient(spec: DeepSpec, co: DeepCoeffs, params: DeepParams) -> tuple[Float[Array, ""], DeepParams]:
    """The objective f () and its analytic gradient (a :class:`DeepParams` of the same shapes), by
    backprop written here (module doc: the order is chosen by flop count)."""
    product = _product_first(spec)
    Z, chain, acts, pres = _forward(spec, params, product)
    return _finish(spec, co, params, Z, chain, acts, pres)


def objective(spec: DeepSpec, co: DeepCoeffs, params: DeepParams) -> Float[Array, ""]:
    """The objective f (shape ()) of the module doc."""
    return _value(spec, co, params, _forward(spec, params, _product_first(spec))[0])


def gradient(spec: DeepSpec, co: DeepCoeffs, params: DeepParams) -> DeepParams:
    """The analytic gradient (shapes of ``params``; ∇b = 0 bias-free)."""
    return value_and_gradient(spec, co, params)[1]


def value_and_grad_norm(spec: DeepSpec, co: DeepCoeffs, params: DeepParams):
    """``(f, ||∇f||)``, both shape ()."""
    f, g = value_and_gradient(spec, co, params)
    return f, jnp.sqrt(sq_norm(g))


def hvp(spec: DeepSpec, co: DeepCoeffs, params: DeepParams, tangent: DeepParams) -> DeepParams:
    """Hessian-vector product ``∇²f(params) · tangent`` (forward mode over the analytic gradient; ReLU: the
    Hessian of the piece of f on which the point lies, masks held fixed)."""
    return jax.jvp(lambda p: gradient(spec, co, p), (params,), (tangent,))[1]


def gd_step(spec: DeepSpec, co: DeepCoeffs, params: DeepParams, lr) -> DeepParams:
    """One GD step of size ``lr`` (a scalar, possibly traced); b stays 0 bias-free."""
    g = gradient(spec, co, params)
    return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g)


# ----------------------------------------------------------------------------------- statistics
def class_moments(spec: DeepSpec, A: Float[Array, "d N"]):
    """Class means ``M (d, K)`` and within-class scatter ``G = Σ e eᵀ (d, d)`` of features ``A (d, N)``
    (class-major columns)."""
    d = A.shape[0]
    if spec.balanced:
        Ak = A.reshape(d, spec.K, spec.sizes[0])
        M = jnp.mean(Ak, axis=2)
        E = (Ak - M[:, :, None]).reshape(d, spec.N)
        return M, E @ E.T
    Y = labels(spec, A.dtype)
    M = (A @ Y.T) / jnp.asarray(spec.sizes, A.dtype)
    E = A - M @ Y
    return M, E @ E.T


def counts(spec: DeepSpec, dtype):
    """n_k (K,) as an array, or None for balanced classes (ClassStats' convention)."""
    return None if spec.balanced else jnp.asarray(spec.sizes, dtype)


def class_stats(spec: DeepSpec, params: DeepParams) -> DeepStats:
    """Per-layer class statistics (:class:`DeepStats`) of a full point."""
    _, _, acts, pres = _forward(spec, params, product=False)
    feats = [class_moments(spec, A) for A in acts]
    pre = [class_moments(spec, Zl) for Zl in pres] if spec.activation == "relu" else []
    return DeepStats(tuple(params.Ws), tuple(m for m, _ in feats), tuple(g for _, g in feats),
                     tuple(m for m, _ in pre), tuple(g for _, g in pre), params.b, counts(spec, params.H.dtype))


def layer_metrics(spec: DeepSpec, stats: DeepStats) -> dict:
    """Per-layer NC metrics of one run, {name: shape ()}, for the features A_l of layer l = 0..L−1
    (A_0 = H, A_l = features after l weight layers) and W_{l+1}, the weights that read them
    (:func:`ncflow.maths.metrics.class_mean_metrics`):

    ``nc1_l{l}`` NC1 of A_l; ``nc2_l{l}`` NC2 of A_l's class means against the simplex ETF (bias modes
    (A), (C)) or the orthogonal frame I/√K ((B)); ``nc3_l{l}`` ||W_{l+1}ᵀW_{l+1}/‖·‖_F − M̄_lM̄_lᵀ/‖·‖_F||_F;
    ``rank_l{l}`` the numerical rank (:func:`~ncflow.maths.metrics.numerical_rank`: singular values above
    sqrt(eps of ``spec.dtype``) · max(s_1, 1)) of the class-mean matrix M̄_l (d_l, K). Class means are
    centered (M − μ_G) in mode (A) only, as :func:`pmj_singular` centers P M: at a rank-r local minimum of
    THEORY §9.2 every rank_l is r.
    """
    center = spec.bias == "unregularized"
    frame = "orthogonal" if spec.bias == "none" else "etf"
    per_layer = [class_mean_metrics(stats.Ws[i], stats.means[i], stats.scatters[i], stats.counts, spec.N, center,
                                    frame, spec.dtype) for i in range(spec.L)]
    return {f"{name}_l{i}": vals[j] for j, name in enumerate(("nc1", "nc2", "nc3", "rank"))
            for i, vals in enumerate(per_layer)}


#: THEORY §9.6's rank cut for the deep ReLU UFM: singular values of a class-mean matrix above this
#: fraction of the largest count (ReLU runs chatter across kinks, so the dtype's own cut would count noise)
RELU_RANK_TOL = 1e-3


def _relative_rank(X: Float[Array, "d K"]) -> Float[Array, ""]:
    """#{s_i > RELU_RANK_TOL · s_1} over the singular values of ``X`` (0 where X = 0), shape ()."""
    s = jnp.linalg.svd(X, compute_uv=False)
    top = jnp.max(s)
    return jnp.where(top > 0, jnp.sum(s > RELU_RANK_TOL * top), 0).astype(X.dtype)


def relu_metrics(spec: DeepSpec, stats: DeepStats) -> dict:
    """Per-layer metrics of ONE deep ReLU run (THEORY §9.6), {name: shape ()}: :func:`layer_metrics`
    (``nc1_l{l}``, ``nc2_l{l}`` against the orthogonal frame, ``nc3_l{l}`` of the features A_l, l = 0..L−1,
    A_0 = H) with ``rank_l{l}`` = the rank of A_l's class means at §9.6's cut (singular values above
    ``RELU_RANK_TOL`` = 1e-3 of the largest), ``rank_pre_l{l}`` the same of the pre-activations
    Z_l = W_l A_{l−1}, l = 1..L−1, ``rank_out`` of the outputs' class means W_L M_{L−1}, ``rank``: the
    smallest of them all (K at DNC; r < K for a low-rank solution), and ``dnc_nc2``: the last features'
    NC2 against the orthogonal frame (= ``nc2_l{L−1}``; 0 at DNC)."""
    out = layer_metrics(spec, stats)
    ranks = {f"rank_l{i}": _relative_rank(M) for i, M in enumerate(stats.means)}
    ranks |= {f"rank_pre_l{i + 1}": _relative_rank(M) for i, M in enumerate(stats.pre_means)}
    ranks["rank_out"] = _relative_rank(stats.Ws[-1] @ stats.means[-1])
    out |= ranks
    out["rank"] = jnp.min(jnp.stack(list(ranks.values())))
    out["dnc_nc2"] = out[f"nc2_l{spec.L - 1}"]
    return out


# ----------------------------------------------------------------------------------- start
def gaussian_start(spec: DeepSpec, key, scale) -> DeepParams:
    """Gaussian start of ONE run: entries of W_l (d_l, d_{l−1}) are N(0, scale²/d_{l−1}) (fan-in), of
    H (d_0, N) N(0, scale²/d_0), b = 0.

    One draw ``normal(key, (Σ_l d_l d_{l−1} + d_0 N,))``: W_1's entries, ..., W_L's, then H's (row-major
    for balanced classes, column by column otherwise), so at L = 1 the start is exactly
    :func:`ncflow.dynamics.starts.gaussian`'s (run i is the same run in the 1-layer engine)."""
    dt = jnp.dtype(spec.dtype)
    d = spec.dims
    sizes = [d[i] * d[i - 1] for i in range(1, spec.L + 1)]
    z = jax.random.normal(key, (sum(sizes) + d[0] * spec.N,), dt)
    s = jnp.asarray(scale, dt)
    Ws, at = [], 0
    for i in range(1, spec.L + 1):
        std = s / jnp.sqrt(jnp.asarray(d[i - 1], dt))
        Ws.append((std * z[at: at + sizes[i - 1]]).reshape(d[i], d[i - 1]))
        at += sizes[i - 1]
    std = s / jnp.sqrt(jnp.asarray(d[0], dt))
    zh = std * z[at:]
    H = zh.reshape(d[0], spec.N) if spec.balanced else zh.reshape(spec.N, d[0]).T
    return DeepParams(tuple(Ws), H, jnp.zeros((spec.K,), dt))



# ----------------------------------------------------------------------------------- from a Problem
def spec_of(problem) -> DeepSpec:
    """The :class:`DeepSpec` of a (base, concrete) :class:`~ncflow.problem.Problem` of any depth: its K,
    class sizes (n for every class, or ``class_sizes``), ``layer_widths``, activation, bias mode and
    dtype. A batch whose lanes differ in class sizes has no single spec (the engine refuses it)."""
    sizes = tuple(int(v) for v in problem.sizes)
    return DeepSpec(K=problem.K, sizes=sizes, widths=tuple(problem.layer_widths), activation=problem.activation,
                    bias=problem.bias_mode, dtype=problem.dtype)


def coeffs_of(spec: DeepSpec, problem) -> DeepCoeffs:
    """The :class:`DeepCoeffs` of ONE run's problem (its coefficients may be traced lane values):
    ``layer_lambdas`` (L,), λ_H and λ_b (0 bias-free), in ``spec.dtype``; not re-validated."""
    dt = jnp.dtype(spec.dtype)
    lams = jnp.stack([jnp.asarray(v, dt) for v in problem.layer_lambdas])
    lb = jnp.asarray(problem.lambda_b, dt) if spec.has_bias else jnp.zeros((), dt)
    return DeepCoeffs(lams, jnp.asarray(problem.lambda_h, dt), lb)


def pmj_singular(spec: DeepSpec, Ws: tuple, M: Float[Array, "d0 K"]) -> Float[Array, " K"]:
    """Singular values (K,) of P M J, descending (THEORY §9.2's x_i for balanced classes): P = W_L⋯W_1,
    M (d_0, K) the class means of H, J = I − 11ᵀ/K in bias mode (A), I otherwise."""
    P = product_chain(tuple(Ws))[0]
    PM = P @ M
    if spec.bias == "unregularized":
        PM = PM - jnp.mean(PM, axis=1, keepdims=True)
    return jnp.linalg.svd(PM, compute_uv=False)
