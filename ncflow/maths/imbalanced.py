"""Closed forms for any class sizes and any targets (THEORY.md §7): pure numpy, ONE problem.

Everything is soft-thresholding of a small matrix. Let Q (N, r) be an orthonormal basis of the row
space of [T; 1ᵀ] (r <= K+1; for one-hot labels Q = Yᵀ D^{-1/2}, r = K, and nothing of size N is
formed), ``T_Q = T Q`` (K, r) and ``q = Qᵀ 1`` (r,), so ||q||² = N. With τ = sqrt(λ_W λ_H) and
φ(σ) = σ²/(2N) for σ <= Nτ, τσ − Nτ²/2 above (a direction survives iff σ > Nτ, with strength
s = σ − Nτ):

* (B) bias-free: Z*_Q = SVT_{Nτ}(T_Q);
* (A) λ_b = 0: b* = T_Q q / N (= p for one-hot labels) and Z*_Q = SVT_{Nτ}(T_Q (I − q qᵀ/N));
* (C) λ_b > 0: b* minimizes the strongly convex F(b) = Σ_j φ(σ_j(T_Q − b qᵀ)) + λ_b ||b||²/2
  (closed form for one-hot labels above the threshold λ_b >= Σ_k p_k c_k/(1 − c_k), c_k = Nτ/√n_k;
  otherwise its root, solved until ||b − b*|| <= ||∇F||/λ_b is below the tolerance);
* d below the number of surviving directions keeps the d largest (a cut inside a tied eigenspace
  leaves f* exact but the Gram non-unique).

Then f* = Σ_{kept} φ(σ_j) + Σ_{others} σ_j²/(2N) (+ λ_b||b*||²/2), ``W Wᵀ = κ² U S Uᵀ`` with
κ² = sqrt(λ_H/λ_W), and ``H = R S^{1/2} Vᵀ Qᵀ / κ``. Nothing here depends on the engine.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

#: relative tolerance for "equal" singular values (ties), merged and vanished classes
TIE_RTOL = 1e-9
#: certified tolerance of the regularized-bias root: ||b − b*|| <= this (relative to max(1, ||b*||))
ROOT_TOL = 1e-13


class Basis(NamedTuple):
    """The row-space coordinates of a problem: ``TQ (K, r)``, ``q (r,)``, ``LQ (r, K)`` = Qᵀ Lᵀ
    (L the one-hot label matrix; None without labels), ``counts (K,)`` (0 without labels), N, and
    Q itself (N, r) or None when it is implicit (one-hot: Q = Yᵀ D^{-1/2})."""

    TQ: np.ndarray
    q: np.ndarray
    LQ: np.ndarray | None
    counts: np.ndarray
    N: int
    Q: np.ndarray | None


class Optimum(NamedTuple):
    """The global optimum of a §7 problem (and what the tests and the engine compare with).

    Attributes:
        objective: f*.
        bias: b* (K,), or None bias-free.
        sigma: every singular value of the thresholded matrix, descending (min(K, r),).
        kept: how many directions the optimum keeps (the rank of W Wᵀ).
        U (K, s), S (s,), V (r, s): Z*_Q = U diag(S) Vᵀ with S = σ − Nτ of the kept directions.
        gram_w: predicted W Wᵀ (K, K); gram_h: MᵀM (K, K) of the class means (None without
            labels); cross: W M (K, K) (None without labels).
        w_norms, h_norms: per-class ||w_k|| and ||μ_k|| (h_norms None without labels).
        merged: groups (tuples of class indices, each of >= 2 classes) whose w_k and μ_k coincide
            and are nonzero; vanished: classes with w_k = 0 and μ_k = 0.
        gram_unique: whether every global minimizer has this W Wᵀ (False when d cuts a tied
            eigenspace, or λ_W λ_H = 0).
        determined: False where λ_W λ_H = 0 (no geometry, only f*).
        bias_bound: certified ||b − b*|| of a regularized bias found as a root (0 for closed forms;
            NaN where it is not certified: d below the number of surviving directions).
        tau, kappa2: sqrt(λ_W λ_H) and sqrt(λ_H/λ_W).
    """

    objective: float
    bias: np.ndarray | None
    sigma: np.ndarray
    kept: int
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    gram_w: np.ndarray
    gram_h: np.ndarray | None
    cross: np.ndarray | None
    w_norms: np.ndarray
    h_norms: np.ndarray | None
    merged: tuple
    vanished: tuple
    gram_unique: bool
    determined: bool
    bias_bound: float
    tau: float
    kappa2: float


def basis(problem) -> Basis:
    """Row-space coordinates of ``problem``'s target (one-hot: closed form, O(K)). For a target
    matrix with labels, Q spans the rows of [T; 1ᵀ; L] (r <= 2K + 1), so that the class means are
    exact in these coordinates too (μ_k = C Qᵀ l_k / n_k); the soft-thresholding is unchanged (T's
    rows lie in span Q)."""
    K = problem.K
    if problem.targets is None:  # one-hot labels with class sizes (or balanced)
        n = problem.sizes
        r = np.sqrt(n)
        return Basis(np.diag(r), r.copy(), np.diag(r), n, int(n.sum()), None)
    T = np.asarray(problem.targets, np.float64)
    N = T.shape[1]
    labels = problem.label_vector()
    rows = [T, np.ones((1, N))] + ([] if labels is None else [np.eye(K)[:, labels]])
    A = np.concatenate(rows, axis=0)
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    keep = s > s[0] * max(A.shape) * np.finfo(float).eps * 10
    Q = vt[keep].T  # (N, r)
    if labels is None:
        LQ, counts = None, np.zeros(K)
    else:
        L = np.eye(K)[:, labels]
        LQ, counts = Q.T @ L.T, L.sum(axis=1)
    return Basis(T @ Q, Q.T @ np.ones(N), LQ, counts, N, Q)


def phi(sigma, N: int, tau: float):
    """The price of one singular direction of strength ``sigma`` (THEORY §7)."""
    sigma = np.asarray(sigma, np.float64)
    return np.where(sigma <= N * tau, sigma**2 / (2 * N), tau * sigma - N * tau**2 / 2)


def secular_spectrum(sizes) -> np.ndarray:
    """Eigenvalues of C = D − n nᵀ/N (one-hot, λ_b = 0), descending, from the secular equation:
    0 (vector 1), n_g with multiplicity m_g − 1 for each size shared by m_g classes, and one root of
    Σ_k n_k²/(n_k − x) = N in each gap between consecutive distinct sizes (bisection)."""
    n = np.asarray(sizes, np.float64)
    N = n.sum()
    vals, mult = np.unique(n, return_counts=True)  # ascending distinct sizes
    out = [0.0]
    for v, m in zip(vals, mult):
        out += [v] * (m - 1)
    g = lambda x: np.sum(n**2 / (n - x)) - N  # noqa: E731  increasing on each gap
    for lo, hi in zip(vals[:-1], vals[1:]):
        a, b = lo, hi
        for _ in range(200):
            mid = 0.5 * (a + b)
            if mid <= a or mid >= b:
                break
            if g(mid) < 0:
                a = mid
            else:
                b = mid
        out.append(0.5 * (a + b))
    return np.sort(np.asarray(out))[::-1]


def _svd(A):
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    return U, s, Vt.T


def _keep_count(s: np.ndarray, N: int, tau: float, d: int) -> int:
    return int(min(d, np.sum(s > N * tau)))


def _value(s: np.ndarray, N: int, tau: float, d: int) -> float:
    """min over Z of rank <= d of ||Z − A||²/(2N) + τ||Z||_*, from A's singular values."""
    k = _keep_count(s, N, tau, d)
    return float(np.sum(phi(s[:k], N, tau)) + np.sum(s[k:] ** 2) / (2 * N))


def _value_grad(A: np.ndarray, N: int, tau: float, d: int):
    """The value above and its gradient in A (U φ'(Σ) Vᵀ, φ' = min(σ/N, τ) on kept directions)."""
    U, s, V = _svd(A)
    k = _keep_count(s, N, tau, d)
    dphi = s / N
    dphi[:k] = np.minimum(dphi[:k], tau)
    return _value(s, N, tau, d), (U * dphi) @ V.T


def _bias_root(B: Basis, tau: float, lb: float, d: int, starts) -> tuple[np.ndarray, float]:
    """Minimize F(b) = value(T_Q − b qᵀ) + λ_b||b||²/2 by accelerated gradient descent (F is
    (1+λ_b)-smooth and λ_b-strongly convex when d keeps every surviving direction), from each of
    ``starts``; the lowest F wins. Returns b and ||∇F||/λ_b (a certified bound on ||b − b*|| in
    the convex case)."""
    N, q = B.N, B.q
    L, mu = 1.0 + lb, lb
    beta = (math.sqrt(L) - math.sqrt(mu)) / (math.sqrt(L) + math.sqrt(mu))
    best = None
    for b0 in starts:
        b = np.array(b0, np.float64)
        y = b.copy()
        for it in range(200_000):
            _, gA = _value_grad(B.TQ - np.outer(y, q), N, tau, d)
            g = -gA @ q + lb * y
            b_new = y - g / L
            y_new = b_new + beta * (b_new - b)
            if np.dot(g, b_new - b) > 0:  # restart on a bad momentum step
                y_new = b_new.copy()
            b, y = b_new, y_new
            if it % 20 == 0:
                fb, gA = _value_grad(B.TQ - np.outer(b, q), N, tau, d)
                gb = -gA @ q + lb * b
                if np.linalg.norm(gb) / lb <= ROOT_TOL * max(1.0, np.linalg.norm(b)):
                    break
        fb, gA = _value_grad(B.TQ - np.outer(b, q), N, tau, d)
        gb = -gA @ q + lb * b
        F = fb + 0.5 * lb * float(b @ b)
        if best is None or F < best[0]:
            best = (F, b, float(np.linalg.norm(gb)) / lb)
    return best[1], best[2]


def _groups(X: np.ndarray, Y: np.ndarray | None) -> tuple[tuple, tuple]:
    """Merged groups and vanished classes from the Gram matrices of W (X) and of M (Y)."""
    K = X.shape[0]
    scale = max(float(np.max(np.abs(np.diag(X)))), 1e-300)
    sy = 1.0 if Y is None else max(float(np.max(np.abs(np.diag(Y)))), 1e-300)
    zero = [k for k in range(K) if X[k, k] <= TIE_RTOL * scale and (Y is None or Y[k, k] <= TIE_RTOL * sy)]
    if float(np.max(np.abs(np.diag(X)))) == 0.0:
        zero = list(range(K))
    parent = list(range(K))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    alive = [k for k in range(K) if k not in zero]
    for i, j in itertools.combinations(alive, 2):
        dx = X[i, i] + X[j, j] - 2 * X[i, j]
        dy = 0.0 if Y is None else Y[i, i] + Y[j, j] - 2 * Y[i, j]
        if dx <= TIE_RTOL * scale and dy <= TIE_RTOL * sy:
            parent[root(j)] = root(i)
    groups = {}
    for k in alive:
        groups.setdefault(root(k), []).append(k)
    merged = tuple(tuple(g) for g in groups.values() if len(g) > 1)
    return merged, tuple(zero)


def _closed_form_bias(problem, B: Basis, tau: float, lb: float):
    """The one-hot closed form of (C) above its threshold, or None where it does not apply."""
    if problem.targets is not None or problem.d < problem.K:
        return None
    n, N = B.counts, B.N
    ck = N * tau / np.sqrt(n)
    if np.any(ck >= 1):
        return None
    if lb < np.sum((n / N) * ck / (1 - ck)):
        return None
    return tau * np.sqrt(n) / lb


def optimum(problem) -> Optimum:
    """The global optimum of ``problem`` (THEORY §7): every bias mode, any sizes, any target."""
    lw, lh, lb = float(problem.lambda_w), float(problem.lambda_h), float(problem.lambda_b)
    K, d = problem.K, problem.d
    B = basis(problem)
    N, q = B.N, B.q
    tau = math.sqrt(lw * lh)
    determined = lw > 0 and lh > 0
    kappa2 = math.sqrt(lh / lw) if determined else 1.0
    bias_bound = 0.0
    if not problem.bias:
        b = None
        A = B.TQ
    elif lb == 0.0:
        b = B.TQ @ q / N
        A = B.TQ - np.outer(b, q)
    else:
        b = _closed_form_bias(problem, B, tau, lb)
        if b is None:
            full = min(K, B.TQ.shape[1])
            start_a = B.TQ @ q / N / (1 + lb)
            starts = [start_a] if d >= full else [start_a, np.zeros(K), B.TQ @ q / N]
            b, bias_bound = _bias_root(B, tau, lb, d, starts)
            if d < full:
                bias_bound = float("nan")  # the rank-limited value function need not be convex
        A = B.TQ - np.outer(b, q)
    U, s, V = _svd(A)
    k = _keep_count(s, N, tau, d)
    f = _value(s, N, tau, d) + (0.5 * lb * float(b @ b) if b is not None else 0.0)
    Uk, Sk, Vk = U[:, :k], s[:k] - N * tau, V[:, :k]
    gram_unique = determined
    alive = int(np.sum(s > N * tau))
    if alive > d and d > 0 and abs(s[d - 1] - s[d]) <= TIE_RTOL * max(s[0], 1.0):
        gram_unique = False
    gram_w = kappa2 * (Uk * Sk) @ Uk.T
    gram_h = cross = h_norms = None
    if B.LQ is not None:
        P = Vk.T @ B.LQ / B.counts  # (k, K): V_Sᵀ L_Q D^{-1}
        gram_h = (P.T * Sk) @ P / kappa2
        cross = (Uk * Sk) @ P
        h_norms = np.sqrt(np.clip(np.diag(gram_h), 0, None))
    w_norms = np.sqrt(np.clip(np.diag(gram_w), 0, None))
    merged, vanished = _groups(gram_w, gram_h) if determined else ((), ())
    return Optimum(f, b, s, k, Uk, Sk, Vk, gram_w, gram_h, cross, w_norms, h_norms, merged, vanished,
                   bool(gram_unique), bool(determined), bias_bound, tau, kappa2)


def minimizer(problem, opt: Optimum | None = None, R: np.ndarray | None = None):
    """An exact global minimizer ``(W (K, d), H (d, N), b (K,))`` as float64 numpy, with feature
    frame ``R (d, kept)`` (default: the first coordinate axes)."""
    opt = optimum(problem) if opt is None else opt
    return _point(problem, opt.U, opt.S, opt.V, opt.bias, opt.kappa2, R)


def _point(problem, U, S, V, b, kappa2, R=None):
    K, d = problem.K, problem.d
    B = basis(problem)
    Q = B.Q if B.Q is not None else _onehot_Q(problem)
    k = S.shape[0]
    if k > d:
        raise ValueError(f"cannot place {k} directions in d = {d} feature dimensions")
    R = np.eye(d)[:, :k] if R is None else R
    a = np.sqrt(np.clip(S, 0, None))
    W = (U * (a * math.sqrt(kappa2))) @ R.T
    H = (R * (a / math.sqrt(kappa2))) @ (Q @ V).T
    bb = np.zeros(K) if b is None else np.asarray(b, np.float64)
    return W, H, bb


def _onehot_Q(problem) -> np.ndarray:
    n = problem.sizes
    labels = np.repeat(np.arange(problem.K), n.astype(np.int64))
    return np.eye(problem.K)[labels] / np.sqrt(n)  # (N, K): Yᵀ D^{-1/2}


# ---------------------------------------------------------------------------------- landscape (A), (B)
def _unregularized_parts(problem):
    if problem.bias and float(problem.lambda_b) != 0.0:
        raise ValueError("critical points are given for the bias-free and unregularized-bias modes only")
    B = basis(problem)
    tau = math.sqrt(float(problem.lambda_w) * float(problem.lambda_h))
    b = B.TQ @ B.q / B.N if problem.bias else None
    A = B.TQ - (np.outer(b, B.q) if b is not None else 0.0)
    U, s, V = _svd(A)
    return B, tau, b, U, s, V


def alive_strengths(problem) -> np.ndarray:
    """Singular values σ_j > Nτ of the (centred) target in Q coordinates, descending: the
    directions a critical point may keep ((A) and (B))."""
    B, tau, _, _, s, _ = _unregularized_parts(problem)
    return s[s > B.N * tau]


def alive_gains(problem) -> np.ndarray:
    """The gain (σ_j − Nτ)²/(2N) of each alive direction ((A), (B)), in the order of
    :func:`alive_strengths`: how much a critical point lowers f by keeping direction j."""
    B, tau, _, _, s, _ = _unregularized_parts(problem)
    alive = s[s > B.N * tau]
    return (alive - B.N * tau) ** 2 / (2 * B.N)


def data_floor(problem) -> float:
    """min over points of ||W H + b1ᵀ − T||²/(2N) ((A), (B)): Σ_{j>d} σ_j²/(2N) over the singular
    values of the (centred) target, as W H has rank <= d (Eckart–Young)."""
    B = basis(problem)
    A = B.TQ - np.outer(B.TQ @ B.q / B.N, B.q) if problem.bias else B.TQ
    s = np.linalg.svd(A, compute_uv=False)
    return float(np.sum(s[problem.d:] ** 2) / (2 * B.N))


def critical_value(problem, S) -> float:
    """f_S at the critical point keeping the alive directions ``S`` (indices into
    :func:`alive_strengths`), THEORY §7 landscape ((A), (B))."""
    B, tau, _, _, s, _ = _unregularized_parts(problem)
    N = B.N
    keep = np.zeros(s.size, bool)
    keep[list(S)] = True
    return float(np.sum(phi(s[keep], N, tau)) + np.sum(s[~keep] ** 2) / (2 * N))


def critical_point(problem, S, R: np.ndarray | None = None):
    """The critical point ``(W, H, b)`` keeping alive directions ``S`` (|S| <= d), numpy float64."""
    B, tau, b, U, s, V = _unregularized_parts(problem)
    alive = int(np.sum(s > B.N * tau))
    S = list(S)
    if any(j < 0 or j >= alive for j in S) or len(S) > problem.d:
        raise ValueError(f"S must hold at most d = {problem.d} distinct indices in [0, {alive})")
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    return _point(problem, U[:, S], s[S] - B.N * tau, V[:, S], b, math.sqrt(lh / lw), R)


def saddle_curvature_bound(problem, S) -> float:
    """Upper bound on the smallest Hessian eigenvalue at the critical point ``S`` ((A), (B)), the
    smaller of two directions' curvatures (+inf when neither is negative: S is global):

    * with a spare feature dimension (|S| < d), the strongest missing alive σ_j added along it:
      (λ_W+λ_H)/2 − sqrt(((λ_W−λ_H)/2)² + σ_j²/N²) (THEORY §7's bound);
    * a kept σ_i rotated toward a stronger missing alive σ_j inside i's own feature direction (the
      only escape when |S| = d, e.g. the swap saddles of a rank-limited d): the smallest eigenvalue
      of [[a σ_i, −σ_j], [−σ_j, σ_i/a]]/N with a = sqrt(λ_W/λ_H), negative iff σ_j > σ_i.

    THEORY's bound alone does not hold at |S| = d: there is no spare direction to add j along
    (measured: at the swap saddle of n = [6,6,6,2], d = 1, λ = 0.01, λ_min = −0.045 > −0.112)."""
    B, tau, _, _, s, _ = _unregularized_parts(problem)
    N = B.N
    alive = s[s > N * tau]
    kept = set(S)
    missing = [alive[j] for j in range(alive.size) if j not in kept]
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    out = float("inf")
    if missing and len(kept) < problem.d:
        out = (lw + lh) / 2 - math.sqrt(((lw - lh) / 2) ** 2 + max(missing) ** 2 / N**2)
    if missing and kept:
        a = math.sqrt(lw / lh)
        si, sj = min(alive[i] for i in kept), max(missing)
        if sj > si * (1 + TIE_RTOL):
            rot = (si * (a + 1 / a) / 2 - math.sqrt((si * (a - 1 / a) / 2) ** 2 + sj**2)) / N
            out = min(out, rot)
    return out


def saddle_gap(problem) -> float:
    """f_sad − f*: the lowest non-global critical value above f* ((A), (B); THEORY §8's last
    bullet): drop the weakest kept alive direction, gap (σ − Nτ)²/(2N); or, with d below the number
    of alive directions, swap the d-th for the (d+1)-th (0 when they tie: still global, so not a
    saddle). +inf where the optimum is the only critical point (no alive direction)."""
    B, tau, _, _, s, _ = _unregularized_parts(problem)
    N = B.N
    gain = np.clip(s - N * tau, 0, None) ** 2 / (2 * N)
    alive = int(np.sum(s > N * tau))
    if alive == 0:
        return float("inf")
    k = min(problem.d, alive)
    swaps = [gain[k - 1] - gain[j] for j in range(k, alive)]
    gaps = [gain[k - 1]] + [g for g in swaps if g > TIE_RTOL * gain[0]]
    return float(min(gaps))
