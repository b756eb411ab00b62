"""Closed forms of the deep UFMs (THEORY.md §9): deep linear (every critical point, local minima,
f_sad) and the deep ReLU DNC / simple low-rank (SRG) values. Pure numpy, ONE problem, K×K work.

Deep linear: Z = W_L⋯W_1 H with H (d_0, N), W_l (d_l, d_{l−1}), d_L = K, m = L + 1 factors and
τ = (λ_H Π_l λ_l)^{1/m}. Per singular direction j of the (centred) target — σ_j, fit weight w_j
(1, or γ = λ_b/(1+λ_b) for the 1-direction of (C)) — a critical point puts Z's singular value at
x σ_j, x ∈ {0, x_−(c_j), x_+(c_j)}, c_j = N τ σ_j^{−2L/m}/w_j, and the direction costs
(w_j σ_j²/2N) φ_{c_j}(x) with

    φ_c(x) = (x − 1)² + m c x^{2/m}      (x = 0: a dead direction, φ = 1).

Balanced factorizations attain the regularizer: every factor of direction j has λ_l a_{l,j}² =
τ s_j^{2/m}, s_j = x_j σ_j (λ_0 = λ_H). L = 1 is THEORY §2/§7 (x_+ = 1 − c, benign landscape).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from ncflow.errors import ProblemError
from ncflow.maths import imbalanced as _im
from ncflow.problem import BIAS_MODES, Problem

__all__ = ["DeepPrediction", "DeepPredictionArrays", "LocalMin", "ReluPrediction", "ReluSolution", "c_exist",
           "c_glob", "critical_point", "default_step_size", "gain", "phi", "predict_deep", "predict_relu", "relu_dnc",
           "relu_srg_simple", "srg_rank", "x_minus", "x_plus"]

#: relative tolerance for tied gains / singular values (from THEORY §7's module)
TIE_RTOL = _im.TIE_RTOL


# ----------------------------------------------------------------------------------- the scalar theory
def _check_L(L) -> int:
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise ProblemError(f"L must be an integer >= 1 (the number of weight matrices), got {L!r}", field="L")
    return int(L)


def _check_c(c) -> np.ndarray:
    a = np.asarray(c, np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ProblemError(f"c must be finite and >= 0, got {c!r}", field="c")
    return a


def _out(a: np.ndarray, like):
    return float(a) if np.ndim(like) == 0 else a


def phi(c, x, L: int):
    """φ_c(x) = (x − 1)² + m c x^{2/m}, m = L + 1: a direction's price relative to its dead value 1
    (THEORY §9.1). ``c`` and ``x`` (x >= 0) broadcast; returns their broadcast shape (a float for
    scalars)."""
    m = _check_L(L) + 1
    c_, x_ = np.asarray(c, np.float64), np.asarray(x, np.float64)
    out = (x_ - 1.0) ** 2 + m * c_ * x_ ** (2.0 / m)
    return _out(out, np.broadcast(c_, x_))


def _peak(L: int) -> float:
    """Where g(x) = x^q (1 − x), q = (L−1)/(L+1), peaks: (L−1)/(2L)."""
    return (L - 1) / (2 * L)


def c_exist(L: int) -> float:
    """The largest c with an alive critical root: ((L−1)/(2L))^{(L−1)/(L+1)} (L+1)/(2L) (L = 1: 1)."""
    L = _check_L(L)
    return _peak(L) ** ((L - 1) / (L + 1)) * (L + 1) / (2 * L)


def c_glob(L: int) -> float:
    """The c below which the alive root beats the dead direction: ((L−1)/L)^{(L−1)/(L+1)}/L (L = 1: 1)."""
    L = _check_L(L)
    return ((L - 1) / L) ** ((L - 1) / (L + 1)) / L


def _bisect(c: np.ndarray, L: int, lo: float, hi: float, increasing: bool) -> np.ndarray:
    """Root of g(x) = x^q (1 − x) − c on [lo, hi] where g is monotone, by bisection to the last bit."""
    q = (L - 1) / (L + 1)
    a, b = np.full(c.shape, lo), np.full(c.shape, hi)
    for _ in range(2200):  # enough to reach any positive float64 from an O(1) interval
        mid = 0.5 * (a + b)
        done = (mid <= a) | (mid >= b)
        if np.all(done):
            break
        g = mid**q * (1.0 - mid) - c
        right = (g < 0) if increasing else (g > 0)
        a = np.where(~done & right, mid, a)
        b = np.where(~done & ~right, mid, b)
    return 0.5 * (a + b)


def x_plus(c, L: int):
    """The alive root x_+ of x^q (1 − x) = c, q = (L−1)/(L+1), in [(L−1)/(2L), 1]: the local minimum
    of φ_c. NaN where c >= c_exist(L) (no alive root). L = 1: 1 − c (c < 1). ``c`` scalar or array."""
    L = _check_L(L)
    c_ = _check_c(c)
    if L == 1:
        out = np.where(c_ < 1.0, 1.0 - c_, np.nan)
    else:
        root = _bisect(np.atleast_1d(c_), L, _peak(L), 1.0, increasing=False).reshape(c_.shape)
        out = np.where(c_ < c_exist(L), root, np.nan)
    return _out(out, c)


def x_minus(c, L: int):
    """The saddle root x_− of x^q (1 − x) = c in [0, (L−1)/(2L)] (a local maximum of φ_c between the
    local minima 0 and x_+). NaN where c >= c_exist(L), and for L = 1 (x = 0 is not a local minimum
    there: no such root). ``c`` scalar or array."""
    L = _check_L(L)
    c_ = _check_c(c)
    if L == 1:
        out = np.full(c_.shape, np.nan)
    else:
        root = _bisect(np.atleast_1d(c_), L, 0.0, _peak(L), increasing=True).reshape(c_.shape)
        out = np.where(c_ < c_exist(L), root, np.nan)
    return _out(out, c)


def gain(c, L: int):
    """Δ(c) = 1 − φ_c(x_+(c)): what an alive direction saves over a dead one, in units of its dead
    value (> 0 iff c < c_glob(L)); NaN where c >= c_exist(L). L = 1: (1 − c)²."""
    xp = np.asarray(x_plus(c, L), np.float64)
    out = 1.0 - np.asarray(phi(c, np.nan_to_num(xp), L), np.float64)
    return _out(np.where(np.isnan(xp), np.nan, out), c)


# ----------------------------------------------------------------------------------- deep linear
class LocalMin(NamedTuple):
    """One class of local minima (THEORY §9.2): the first ``rank`` directions of the c-order alive at
    their x_+, the others dead.

    Attributes:
        rank: r, the number of alive directions.
        value: f_r.
        singular_values: (K,) the predicted singular values of P M J, descending (P = W_L⋯W_1,
            M (d_0, K) the class means of H; J = I − 11ᵀ/K in (A), I in (B) and (C), whose 1-direction
            is a direction of the landscape): what a classifier compares a finished run with.
        bias: b (K,) at these points (None bias-free).
        is_global: whether f_r = f*.
    """

    rank: int
    value: float
    singular_values: np.ndarray
    bias: np.ndarray | None
    is_global: bool


@dataclasses.dataclass(frozen=True)
class DeepPrediction:
    """What THEORY §9 predicts for a deep linear UFM (J target directions in the c-order: smallest
    c_j first).

    Attributes:
        K, L: classes and depth (number of weight matrices); m = L + 1 factors.
        class_sizes: n_k (K,); N = Σ n_k.
        widths: (d_0, ..., d_{L−1}); d_min their minimum (the largest rank of Z).
        bias_mode: "unregularized" (A), "none" (B) or "regularized" (C).
        c: K (n λ_H Π λ_l)^{1/m} at n = N/K (the balanced c; = §1's c at L = 1).
        tau: (λ_H Π λ_l)^{1/m}.
        sigma, weights, c_j: (J,) each direction's target singular value σ_j, fit weight w_j and
            c_j = N τ σ_j^{−2L/m}/w_j.
        x_plus, x_minus: (J,) its roots (NaN where c_j >= c_exist, and x_minus at L = 1).
        gains: (J,) (w_j σ_j²/2N) Δ(c_j): what keeping j alive saves (NaN where it cannot be alive).
        alive: (J,) bool, whether j is alive at the global optimum.
        U, V: (K, J) the directions' left singular vectors (class space) and right ones in the
            coordinates Q = Yᵀ D^{-1/2} (one-hot: Z = Σ_j x_j σ_j u_j (Q v_j)ᵀ).
        objective: f*; rank: its number of alive directions; geometry: "zero", "simplex_etf" (A, and
            C with the 1-direction dead), "orthogonal_frame" (B), "etf_with_mean" (C, 1-direction
            alive), "rank_limited" (d_min below the alive count), "general" (unequal class sizes).
        origin_value: f_0, every direction dead (W = H = 0, b at its best).
        local_minima: every class of local minima (r = 0 .. min(d_min, #{c_j < c_exist}) for L >= 2;
            the global one only at L = 1, whose landscape is benign).
        saddle_value: f_sad, the lowest non-global critical value (§9.3; +inf when the optimum is
            the only critical point).
        c_exist, c_glob: the thresholds at this L.
        layer_norms2: (L,) ‖W_l‖_F² at the optimum, l = 1..L; h_norm2: ‖H‖_F².
        w_norms, h_norms: (K,) ‖w_k‖ (rows of W_L) and ‖μ_k‖ (class means of H) at the optimum; None
            where d_min cuts a tied group (the split depends on the chosen directions).
        gram_w, gram_h: W_L W_Lᵀ and MᵀM (K, K) at the optimum (None where not unique).
        bias: b* (K,) (None bias-free).
        singular_values: (K,) of P M J at the optimum (see :class:`LocalMin`).
        gram_unique: whether every global minimizer has these Grams and per-class norms.
    """

    K: int
    L: int
    class_sizes: np.ndarray
    widths: tuple
    d_min: int
    bias_mode: str
    c: float
    tau: float
    sigma: np.ndarray
    weights: np.ndarray
    c_j: np.ndarray
    x_plus: np.ndarray
    x_minus: np.ndarray
    gains: np.ndarray
    alive: np.ndarray
    U: np.ndarray
    V: np.ndarray
    objective: float
    rank: int
    geometry: str
    origin_value: float
    local_minima: tuple
    saddle_value: float
    c_exist: float
    c_glob: float
    layer_norms2: np.ndarray
    h_norm2: float
    w_norms: np.ndarray | None
    h_norms: np.ndarray | None
    gram_w: np.ndarray | None
    gram_h: np.ndarray | None
    bias: np.ndarray | None
    singular_values: np.ndarray
    gram_unique: bool
    lambdas: tuple = ()
    lambda_h: float = 0.0
    lambda_b: float = 0.0

    @property
    def N(self) -> int:
        """Total number of samples Σ n_k."""
        return int(self.class_sizes.sum())

    @property
    def reference(self) -> float:
        """The value runs are measured against: f*."""
        return float(self.objective)

    @property
    def saddle_gap(self) -> float:
        """f_sad − f* (+inf when the optimum is the only critical point)."""
        return self.saddle_value - self.objective

    def critical_offsets(self) -> np.ndarray:
        """f_r − f* of every NON-global local minimum (ascending): the critical values a stationary
        run may end at besides f* (THEORY §9.2; saddles are transients)."""
        return np.sort([m.value - self.objective for m in self.local_minima if not m.is_global])

    def arrays(self, K: int, dtype) -> "DeepPredictionArrays":
        """The prediction as numpy arrays of fixed shapes (stackable over the points of a batch): the
        fields of :class:`~ncflow.maths.theory.PredictionArrays` (``gram`` = W_L W_Lᵀ, ``gram_h`` = MᵀM
        of H, ``cross`` unused: zeros) and every local minimum's f_r and P M J singular values,
        indexed by rank and padded with NaN to K + 1 ranks."""
        gram = np.zeros((K, K)) if self.gram_w is None else self.gram_w
        spec = np.sort(np.linalg.eigvalsh(gram))[::-1] if self.gram_w is not None else np.zeros(K)
        values = np.full(K + 1, np.nan)
        svs = np.full((K + 1, K), np.nan)
        for m in self.local_minima:
            values[m.rank] = m.value
            svs[m.rank] = m.singular_values[:K]
        bias = np.zeros(K) if self.bias is None else self.bias
        a = lambda v: np.asarray(v, dtype)  # noqa: E731
        return DeepPredictionArrays(
            objective=a(self.objective), gram=a(gram), spectrum=a(spec), bias=a(bias),
            gram_unique=np.asarray(self.gram_unique), geometry_known=np.asarray(True),
            gram_h=a(np.zeros((K, K)) if self.gram_h is None else self.gram_h), cross=a(np.zeros((K, K))),
            singular_values=a(self.singular_values[:K]), minima_values=a(values), minima_singular=a(svs),
            threshold=a((self.L - 1) / (2 * self.L)))


class DeepPredictionArrays(NamedTuple):
    """A :class:`DeepPrediction` as arrays for the engine (one run's; a batch stacks them).

    ``objective ()``, ``gram (K, K)`` (W_L W_Lᵀ at the optimum, zeros where not unique), ``spectrum (K,)``
    its eigenvalues, ``bias (K,)``, ``gram_unique``, ``geometry_known`` (bool ()), ``gram_h (K, K)``
    (MᵀM of H), ``cross (K, K)`` (zeros: not compared), ``singular_values (K,)`` of P M J at the optimum,
    ``minima_values (K + 1,)`` f_r by rank r and ``minima_singular (K + 1, K)`` their P M J singular values
    (NaN where no local minimum of that rank exists), ``threshold ()`` = (L − 1)/(2L), the alive cut of
    THEORY §9.2."""

    objective: np.ndarray
    gram: np.ndarray
    spectrum: np.ndarray
    bias: np.ndarray
    gram_unique: np.ndarray
    geometry_known: np.ndarray
    gram_h: np.ndarray
    cross: np.ndarray
    singular_values: np.ndarray
    minima_values: np.ndarray
    minima_singular: np.ndarray
    threshold: np.ndarray


def _positive(v) -> bool:
    """Whether v is a real number, finite and > 0."""
    try:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
            and math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False


def _check_inputs(K, n, L, widths, lambda_h, lambdas, bias, lambda_b):
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ProblemError(f"K must be an integer >= 2, got {K!r}", field="K")
    L = _check_L(L)
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        sizes = (int(n),) * K
    else:
        try:
            sizes = tuple(n)
        except TypeError:
            raise ProblemError(f"n must be an integer >= 1 or a tuple of K = {K} class sizes, got {n!r}",
                               field="n") from None
    if len(sizes) != K or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in sizes):
        raise ProblemError(f"n must be an integer >= 1 or a tuple of K = {K} integers >= 1, got {n!r}", field="n")
    sizes = tuple(int(v) for v in sizes)
    try:
        widths = tuple(widths)
    except TypeError:
        raise ProblemError(f"widths must be a tuple of L = {L} integers >= 1, got {widths!r}", field="widths") from None
    if len(widths) != L or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in widths):
        raise ProblemError(f"widths must be a tuple (d_0, ..., d_{{L-1}}) of L = {L} integers >= 1, got {widths!r}",
                           field="widths")
    lams = (lambdas,) * L if np.ndim(lambdas) == 0 else tuple(lambdas)
    if len(lams) != L or not all(_positive(v) for v in lams):
        raise ProblemError(f"lambdas must be L = {L} finite values > 0 (one per weight matrix), got {lambdas!r}",
                           field="lambdas")
    if not _positive(lambda_h):
        raise ProblemError(f"lambda_h must be finite and > 0, got {lambda_h!r}", field="lambda_h")
    if bias not in BIAS_MODES:
        raise ProblemError(f"bias must be one of {', '.join(BIAS_MODES)}, got {bias!r}", field="bias")
    if not (lambda_b == 0 or _positive(lambda_b)):
        raise ProblemError(f"lambda_b must be finite and >= 0, got {lambda_b!r}", field="lambda_b")
    lb = float(lambda_b)
    if bias == "regularized" and not (math.isfinite(lb) and lb > 0):
        raise ProblemError(f"lambda_b must be finite and > 0 with bias 'regularized', got {lambda_b!r}",
                           field="lambda_b")
    if bias != "regularized" and lb != 0.0:
        raise ProblemError(f"lambda_b must be 0 unless bias is 'regularized', got {lambda_b!r}", field="lambda_b")
    if bias == "regularized" and len(set(sizes)) > 1:
        raise ProblemError("bias 'regularized' has a closed form for balanced classes only (THEORY §9.5)",
                           field="bias")
    return K, sizes, L, tuple(int(v) for v in widths), float(lambda_h), tuple(float(v) for v in lams), bias, lb


def _directions(K: int, sizes: tuple, bias: str, lambda_b: float):
    """σ (J,), weights (J,), U (K, J), V (K, J) of the target's directions (unsorted)."""
    B = _im.basis(Problem(class_sizes=sizes))  # one-hot: T_Q = D^{1/2}, q = √n
    balanced = len(set(sizes)) == 1
    if bias == "none":
        A = B.TQ
    else:  # (A) and (C): the centred target; (C) adds the 1-direction below
        A = B.TQ - np.outer(B.TQ @ B.q / B.N, B.q)
    U, s, Vt = np.linalg.svd(A)
    J = K if bias == "none" else K - 1  # (A), (C): drop the zero singular value (vector q)
    U, s, V = U[:, :J], s[:J], Vt[:J].T
    if balanced:
        s = np.full(J, math.sqrt(sizes[0]))  # exact ties
    w = np.ones(J)
    if bias == "regularized":
        one = np.ones((K, 1)) / math.sqrt(K)
        U, V = np.concatenate([U, one], axis=1), np.concatenate([V, one], axis=1)
        s = np.append(s, math.sqrt(sizes[0]))
        w = np.append(w, lambda_b / (1 + lambda_b))
    return s, w, U, V


def _bias_at(U, V, s, n_k, bias_mode: str, lambda_b: float) -> np.ndarray | None:
    """b (K,) at the point Z_Q = Σ_j s_j u_j v_jᵀ: the best b for that Z, (T − Z)1/(N(1 + λ_b)) (one-hot:
    T_Q = D^{1/2}, q = √n); None bias-free. (A): p at every critical point."""
    if bias_mode == "none":
        return None
    sq = np.sqrt(n_k)
    return (n_k - ((U * s) @ V.T) @ sq) / (n_k.sum() * (1 + lambda_b))


def _pm_singular(U, V, xs, sigma, sizes, bias_mode) -> np.ndarray:
    """Singular values (K,) of P M J = Z_Q D^{-1/2} J for Z_Q = Σ_j x_j σ_j u_j v_jᵀ."""
    K = U.shape[0]
    Z = (U * (xs * sigma)) @ V.T
    PM = Z / np.sqrt(np.asarray(sizes, np.float64))
    if bias_mode == "unregularized":
        PM = PM - PM.mean(axis=1, keepdims=True)
    return np.sort(np.linalg.svd(PM, compute_uv=False))[::-1][:K]


def predict_deep(K: int, n, L: int, widths, lambda_h: float, lambdas, bias: str = "unregularized",
                 lambda_b: float = 0.0) -> DeepPrediction:
    """THEORY §9's closed forms for the deep linear UFM (§9.1–§9.3, (C) by §9.5).

    Args:
        K: classes (>= 2).
        n: samples per class (int) or class sizes (tuple of K ints; (C) needs them equal).
        L: weight matrices (>= 1; L = 1 is §2/§7).
        widths: (d_0, ..., d_{L−1}): rows of H and of W_1..W_{L−1} (W_L has K rows).
        lambda_h: weight decay on H (> 0).
        lambdas: (λ_1, ..., λ_L) on W_1..W_L (> 0), or one value for every layer.
        bias: "unregularized" (A), "none" (B) or "regularized" (C, with ``lambda_b`` > 0).

    Returns a :class:`DeepPrediction`. Raises :class:`~ncflow.errors.ProblemError` naming the
    argument for bad input. The (C) values assume no critical point mixes the 1-direction with 1^⊥
    (THEORY §9.5: proved for L = 1 only), and its swaps into f_sad likewise.
    """
    K, sizes, L, widths, lh, lams, bias, lb = _check_inputs(K, n, L, widths, lambda_h, lambdas, bias, lambda_b)
    m = L + 1
    n_k = np.asarray(sizes, np.float64)
    N = float(n_k.sum())
    log_tau = (math.log(lh) + sum(math.log(v) for v in lams)) / m
    tau = math.exp(log_tau)
    c = K * math.exp(math.log(N / K) / m + log_tau)
    sigma, w, U, V = _directions(K, sizes, bias, lb)
    cj = N * tau * sigma ** (-2.0 * L / m) / w
    order = np.argsort(cj, kind="stable")
    sigma, w, U, V, cj = sigma[order], w[order], U[:, order], V[:, order], cj[order]
    J = sigma.size
    xp, xm = np.asarray(x_plus(cj, L)), np.asarray(x_minus(cj, L))
    dead = w * sigma**2 / (2 * N)  # each direction's dead value
    gains = dead * np.asarray(gain(cj, L))
    f0 = float(np.sum(dead))
    d_min = min(widths)
    ce, cg = c_exist(L), c_glob(L)
    can = int(np.sum(~np.isnan(xp)))  # directions that have an alive root (a prefix of the c-order)
    r_star = min(d_min, int(np.sum(gains[:can] > 0)))
    top = min(d_min, can)
    values = f0 - np.concatenate([[0.0], np.cumsum(gains[:top])])  # f_r, r = 0..top

    def point(r):
        xs = np.where(np.arange(J) < r, np.nan_to_num(xp), 0.0)
        return xs, _bias_at(U, V, xs * sigma, n_k, bias, lb)

    ranks = range(top + 1) if L > 1 else [r_star]
    mins = []
    for r in ranks:
        xs, b = point(r)
        mins.append(LocalMin(r, float(values[r]), _pm_singular(U, V, xs, sigma, sizes, bias), b, r == r_star))
    f_star = float(values[r_star])
    # f_sad (§9.3): single flips (drop a kept, add a missing one if d_min allows) and swaps
    scale = max(float(np.nanmax(np.abs(gains), initial=0.0)), 1e-300)
    kept, missing = list(range(r_star)), list(range(r_star, can))
    gaps = [gains[i] for i in kept]
    if r_star < d_min:
        gaps += [-gains[j] for j in missing]
    gaps += [gains[i] - gains[j] for i in kept for j in missing]
    gaps = [g for g in gaps if g > TIE_RTOL * scale]
    f_sad = f_star + float(min(gaps)) if gaps else math.inf
    # the optimum's norms and Grams
    xs, b = point(r_star)
    e = (xs * sigma) ** (2.0 / m)  # s_j^{2/m}; 0 for dead directions
    layer_norms2 = np.array([tau / lam * e.sum() for lam in lams])
    h_norm2 = float(tau / lh * e.sum())
    cut = 0 < r_star < J and abs(cj[r_star - 1] - cj[r_star]) <= TIE_RTOL * cj[r_star] and r_star == d_min
    gram_w = gram_h = w_norms = h_norms = None
    if not cut:
        gram_w = (tau / lams[-1]) * (U * e) @ U.T
        Vd = V / np.sqrt(n_k)[:, None]
        gram_h = (tau / lh) * (Vd * e) @ Vd.T
        w_norms = np.sqrt(np.clip(np.diag(gram_w), 0, None))
        h_norms = np.sqrt(np.clip(np.diag(gram_h), 0, None))
    if r_star == 0:
        geometry = "zero"
    elif len(set(sizes)) > 1:
        geometry = "rank_limited" if int(np.sum(gains[:can] > 0)) > d_min else "general"
    elif bias == "none":
        geometry = "orthogonal_frame" if r_star == K else "rank_limited"
    else:  # balanced (A), (C): every centred direction ties, so fewer than K − 1 means d_min cut them
        geometry = {K: "etf_with_mean", K - 1: "simplex_etf"}.get(r_star, "rank_limited")
    return DeepPrediction(
        K=K, L=L, class_sizes=n_k, widths=widths, d_min=d_min, bias_mode=bias, c=c, tau=tau, sigma=sigma,
        weights=w, c_j=cj, x_plus=xp, x_minus=xm, gains=gains, alive=np.arange(J) < r_star, U=U, V=V,
        objective=f_star, rank=r_star, geometry=geometry, origin_value=f0, local_minima=tuple(mins),
        saddle_value=f_sad, c_exist=ce, c_glob=cg, layer_norms2=layer_norms2, h_norm2=h_norm2,
        w_norms=w_norms, h_norms=h_norms, gram_w=gram_w, gram_h=gram_h, bias=b,
        singular_values=mins[[mm.rank for mm in mins].index(r_star)].singular_values, gram_unique=not cut,
        lambdas=lams, lambda_h=lh, lambda_b=lb)


def critical_point(pred: DeepPrediction, r: int | None = None):
    """The exact critical point keeping the first ``r`` directions of the c-order alive at x_+ (the
    local minimum of rank r for L >= 2, a strict saddle below the optimum's rank at L = 1; default: the
    global optimum), float64 numpy, feature frames on the first r coordinate axes of every layer.

    Returns ``(Ws, H, b)``: Ws a tuple of L matrices W_l (d_l, d_{l−1}) (d_L = K), H (d_0, N)
    class-major, b (K,) (None bias-free). Builds N columns: for tests and starts, not for huge N.
    """
    r = pred.rank if r is None else r
    top = min(pred.d_min, int(np.sum(~np.isnan(pred.x_plus))))
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r <= top:
        raise ProblemError(f"r must be an integer in [0, {top}] (alive directions), got {r!r}", field="r")
    m, K = pred.L + 1, pred.K
    s = pred.x_plus[:r] * pred.sigma[:r]
    e = s ** (2.0 / m)
    lams = (pred.lambda_h, *pred.lambdas)
    a = [np.sqrt(pred.tau / lam * e) for lam in lams]  # per-factor singular values (r,)
    dims = (*pred.widths, K)
    n_k = pred.class_sizes
    counts = n_k.astype(np.int64)
    Q = np.repeat(np.eye(K), counts, axis=0) / np.sqrt(np.repeat(n_k, counts))[:, None]  # (N, K) = Yᵀ D^{-1/2}
    H = (np.eye(dims[0])[:, :r] * a[0]) @ (Q @ pred.V[:, :r]).T
    Ws = []
    for i in range(1, pred.L + 1):
        left = pred.U[:, :r] if i == pred.L else np.eye(dims[i])[:, :r]
        Ws.append((left * a[i]) @ np.eye(dims[i - 1])[:, :r].T)
    b = _bias_at(pred.U[:, :r], pred.V[:, :r], s, n_k, pred.bias_mode, pred.lambda_b)
    return tuple(Ws), H, b


# ----------------------------------------------------------------------------------- deep ReLU (§9.6)
class ReluSolution(NamedTuple):
    """A deep ReLU UFM family's value (THEORY §9.6).

    Attributes:
        loss: φ_c(x_+)/2 at the family's best scale (NaN where it is not a critical point: c >= c_exist
            or a width too small).
        c: the family's effective c; x_plus: its root.
        exists: whether the family is a critical point here; beats_zero: and below the origin's 1/2.
        w_norm, h_norm: ‖w_k‖ (rows of W_L) and ‖μ_k‖ (class means of H_1) (DNC only; None otherwise).
    """

    loss: float
    c: float
    x_plus: float
    exists: bool
    beats_zero: bool
    w_norm: float | None = None
    h_norm: float | None = None


def _relu_check(K, n, L, lambda_h, lambdas):
    K, sizes, L, _, lh, lams, _, _ = _check_inputs(K, n, L, (K,) * _check_L(L), lambda_h, lambdas, "none", 0.0)
    if len(set(sizes)) > 1:
        raise ProblemError("n must be one integer (the deep ReLU closed forms are balanced)", field="n")
    return K, sizes[0], L, lh, lams


def _family(c: float, L: int, ok: bool, **norms) -> ReluSolution:
    exists = bool(ok and c < c_exist(L))
    xp = x_plus(c, L) if exists else math.nan
    loss = 0.5 * phi(c, xp, L) if exists else math.nan
    return ReluSolution(loss, c, xp, exists, bool(exists and c < c_glob(L)),
                        **{k: (v(xp) if exists else None) for k, v in norms.items()})


def relu_dnc(K: int, n: int, L: int, widths, lambda_h: float, lambdas) -> ReluSolution:
    """Deep neural collapse of the deep ReLU UFM (H_1 free, H_{l+1} = ReLU(W_l H_l), output W_L H_L, no
    bias; widths d_1..d_L of H_1..H_L): every layer an orthogonal frame on K coordinate axes, the
    bias-free deep-linear optimum. L_DNC = φ_c(x_+)/2, c = K (n λ_H Π λ_l)^{1/(L+1)}; a critical point
    iff every width >= K and c < c_exist; ‖w_k‖² = (τ/λ_L)(n x_+²)^{1/m}, ‖μ_k‖² = (τ/λ_H)(n x_+²)^{1/m}/n.
    Scalars in, a :class:`ReluSolution` out."""
    K, n, L, lh, lams = _relu_check(K, n, L, lambda_h, lambdas)
    _check_inputs(K, n, L, widths, lh, lams, "none", 0.0)
    m = L + 1
    tau = math.exp((math.log(lh) + sum(math.log(v) for v in lams)) / m)
    c = K * math.exp(math.log(n) / m) * tau
    s2m = lambda xp: (n * xp**2) ** (1.0 / m)  # noqa: E731
    return _family(c, L, min(widths) >= K, w_norm=lambda xp: math.sqrt(tau / lams[-1] * s2m(xp)),
                   h_norm=lambda xp: math.sqrt(tau / lh * s2m(xp) / n))


def relu_srg_simple(K: int, r: int, n: int, L: int, lambda_h: float, lambdas, widths=None) -> ReluSolution:
    """The simple symmetric low-rank (SRG) family of the deep ReLU UFM (THEORY §9.6): K = C(r, 2)
    classes = edges of the complete graph K_r, B (r, K) its vertex–edge incidence; H_1 ∝ B, W_1..W_{L−2}
    ∝ I_r, W_{L−1} ∝ Bᵀ(I − J/4) (pre-activation ∝ BᵀB − J of rank r, whose ReLU is ∝ I_K), W_L ∝ I_K.
    Its value is φ_{c_s}(x_+)/2 with (c_s/c_DNC)^{L+1} = r 2^{L−3}/(r − 1)^{L−2}. Needs L >= 2, r >= 3;
    ``widths`` (d_1..d_L), if given, must hold d_1..d_{L−1} >= r and d_L >= K for it to exist."""
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 3:
        raise ProblemError(f"r must be an integer >= 3, got {r!r}", field="r")
    if isinstance(K, (int, np.integer)) and K != r * (r - 1) // 2:
        raise ProblemError(f"K must be C(r, 2) = {r * (r - 1) // 2} for r = {r}, got {K!r}", field="K")
    K, n, L, lh, lams = _relu_check(K, n, L, lambda_h, lambdas)
    if L < 2:
        raise ProblemError(f"L must be >= 2 for the SRG family (W_{{L-1}} makes the low rank), got {L}", field="L")
    ok = True
    if widths is not None:
        _check_inputs(K, n, L, widths, lh, lams, "none", 0.0)
        ok = min(widths[:-1]) >= r and widths[-1] >= K
    m = L + 1
    c_dnc = K * math.exp((math.log(n) + math.log(lh) + sum(math.log(v) for v in lams)) / m)
    ratio = (r * 2.0 ** (L - 3) / (r - 1) ** (L - 2)) ** (1.0 / m)
    return _family(c_dnc * ratio, L, ok)


def srg_rank(K: int) -> int | None:
    """r with K = C(r, 2) = r(r − 1)/2 and r >= 3 (the simple SRG family's graph K_r), else None."""
    r = int(round((1 + math.sqrt(1 + 8 * K)) / 2))
    return r if r >= 3 and r * (r - 1) // 2 == K else None


@dataclasses.dataclass(frozen=True)
class ReluPrediction:
    """What THEORY §9.6 gives for a deep ReLU UFM (balanced classes, no bias): the origin, the DNC
    critical point and the simple low-rank (SRG) family. The global minimum is NOT known in closed
    form (low-rank solutions beat DNC; GD finds values below the simple family's): ``objective`` is
    None.

    Attributes:
        K, n, L: classes, samples per class, weight matrices.
        widths: (d_1, ..., d_L), the rows of H_1 (free) and of H_2..H_L.
        lambdas: (λ_1, ..., λ_L); lambda_h: λ_H.
        c, tau: K (n λ_H Π λ_l)^{1/(L+1)} and (λ_H Π λ_l)^{1/(L+1)}; c_exist, c_glob: the thresholds.
        origin_value: 1/2, the value at W = H = 0 (a strict local minimum for L >= 2).
        dnc: the DNC :class:`ReluSolution` (loss NaN where it is no critical point).
        layer_norms2: (L,) ‖W_l‖_F² at DNC, l = 1..L (None where DNC does not exist).
        feature_norms: (L,) ‖μ_k‖ of every class mean of H_1, ..., H_L at DNC (an orthogonal frame on
            K coordinate axes at every layer; the outputs are x_+ Y); None where DNC does not exist.
        srg_r: r with K = C(r, 2) (None: K is no such number, no simple SRG family).
        srg: the simple SRG family's :class:`ReluSolution` (an upper bound on the infimum where it
            exists), or None.
    """

    K: int
    n: int
    L: int
    widths: tuple
    lambdas: tuple
    lambda_h: float
    c: float
    tau: float
    c_exist: float
    c_glob: float
    origin_value: float
    dnc: ReluSolution
    layer_norms2: np.ndarray | None
    feature_norms: np.ndarray | None
    srg_r: int | None
    srg: ReluSolution | None

    objective = None  #: the global minimum: not known in closed form (THEORY §9.6)

    @property
    def reference(self) -> float:
        """The value runs are measured against: L_DNC (NaN where DNC is no critical point). Not f*."""
        return float(self.dnc.loss)

    @property
    def N(self) -> int:
        """Total number of samples K n."""
        return self.K * self.n

    def arrays(self, K: int, dtype) -> "DeepPredictionArrays":
        """The DNC critical point as engine arrays (the fields of :class:`DeepPredictionArrays`):
        ``objective`` = L_DNC, ``gram`` = W_L W_Lᵀ = ‖w‖² I (K, K), its ``spectrum``, ``gram_h`` = MᵀM of
        H_1's class means = ‖μ‖² I; zeros and ``geometry_known`` False where DNC does not exist; the
        deep-linear fields (local minima by rank, P M J singular values, threshold) are NaN."""
        a = lambda v: np.asarray(v, dtype)  # noqa: E731
        ok = self.dnc.exists
        w2 = self.dnc.w_norm**2 if ok else 0.0
        h2 = self.dnc.h_norm**2 if ok else 0.0
        nan = np.full(K, np.nan)
        return DeepPredictionArrays(
            objective=a(self.reference), gram=a(w2 * np.eye(K)), spectrum=a(np.full(K, w2)), bias=a(np.zeros(K)),
            gram_unique=np.asarray(True), geometry_known=np.asarray(ok), gram_h=a(h2 * np.eye(K)),
            cross=a(np.zeros((K, K))), singular_values=a(nan), minima_values=a(np.full(K + 1, np.nan)),
            minima_singular=a(np.full((K + 1, K), np.nan)), threshold=a(np.nan))


def predict_relu(K: int, n: int, L: int, widths, lambda_h: float, lambdas) -> ReluPrediction:
    """THEORY §9.6's values for the deep ReLU UFM (H_1 free, H_{l+1} = ReLU(W_l H_l), output W_L H_L,
    no bias): K classes of ``n``, L >= 2 weight matrices, ``widths`` (d_1, ..., d_L) of H_1..H_L,
    λ_H and (λ_1, ..., λ_L) (or one value). Returns a :class:`ReluPrediction`; bad input raises
    :class:`~ncflow.errors.ProblemError` naming the argument."""
    K, n, L, lh, lams = _relu_check(K, n, L, lambda_h, lambdas)
    if L < 2:
        raise ProblemError(f"L must be >= 2 for the deep ReLU UFM (a hidden layer), got {L}", field="L")
    widths = _check_inputs(K, n, L, widths, lh, lams, "none", 0.0)[3]
    dnc = relu_dnc(K, n, L, widths, lh, lams)
    m = L + 1
    tau = math.exp((math.log(lh) + sum(math.log(v) for v in lams)) / m)
    norms2 = feats = None
    if dnc.exists:
        e = (n * dnc.x_plus**2) ** (1.0 / m)  # s^{2/m}, s = √n x_+
        norms2 = np.array([tau / lam * K * e for lam in lams])
        # class means after l weight layers (λ_0 = λ_H): Π_{i<=l} (τ/λ_i) s^{2(l+1)/m} / n
        factors = np.cumprod([tau / v for v in (lh, *lams[:-1])])
        feats = np.sqrt(factors * e ** np.arange(1, L + 1) / n)
    r = srg_rank(K)
    srg = relu_srg_simple(K, r, n, L, lh, lams, widths=widths) if r is not None else None
    return ReluPrediction(K=K, n=n, L=L, widths=widths, lambdas=lams, lambda_h=lh, c=dnc.c, tau=tau,
                          c_exist=c_exist(L), c_glob=c_glob(L), origin_value=0.5, dnc=dnc, layer_norms2=norms2,
                          feature_norms=feats, srg_r=r, srg=srg)


def default_step_size(pred: DeepPrediction, init_scale: float = 1.0) -> float:
    """The default GD step of a deep linear UFM, ``1/L_GN`` with L_GN a Gauss–Newton curvature bound at
    the larger of the optimum and a typical Gaussian start of scale ``init_scale`` (float).

    Factors i = 0..L (H, W_1, ..., W_L) with squared operator norms a_i² (H's divided by N): at the
    optimum (τ/λ_i) s^{2/m} for the strongest alive direction s = x_+ σ, at the start
    (scale²/d_{i−1})(√d_i + √d_{i−1})² (H: (scale²/d_0)(√d_0 + √N)²/N). L_GN = 1 + Σ_i Π_{j≠i} a_j² + max λ
    (the 1: the bias direction, kept as a floor). L = 1: the same form as ``theory.default_step_size``."""
    dims = (*pred.widths, pred.K)
    N = pred.N
    lams = (pred.lambda_h, *pred.lambdas)
    alive = np.nan_to_num(pred.x_plus * pred.sigma)
    e = float(np.max(alive, initial=0.0)) ** (2.0 / (pred.L + 1))
    opt = [pred.tau / lam * e for lam in lams]
    opt[0] /= N
    s2 = init_scale**2
    start = [s2 / dims[0] * (math.sqrt(dims[0]) + math.sqrt(N)) ** 2 / N]
    start += [s2 / dims[i - 1] * (math.sqrt(dims[i]) + math.sqrt(dims[i - 1])) ** 2 for i in range(1, pred.L + 1)]
    a2 = [max(o, t) for o, t in zip(opt, start)]
    gn = sum(math.prod(a2[:i] + a2[i + 1:]) for i in range(len(a2)))
    return 1.0 / (1.0 + gn + max(max(lams), pred.lambda_b))
