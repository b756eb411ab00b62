"""The early certificate of THEORY.md §8 (ncflow.maths.certificate) against float64 numerics:
the saddle gap f_sad − f* from every critical point the closed forms build, from GD restricted to an
invariant subspace and from a blind Newton search; the curvature bound L(f) against dense Hessians;
the rounding bound against float64 evaluations of float32 states; and soundness on long GD runs
(runs that converge to a saddle are never certified, every certified run ends global)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow import landscape
from ncflow.errors import ConfigError, ProblemError
from ncflow.maths import certificate as cert
from ncflow.maths import collapsed as col
from ncflow.maths import objective as obj
from ncflow.maths import theory
from ncflow.maths.objective import Params
from ncflow.problem import Problem

SHAPE = dict(K=4, n=3, d=5)  # d = K + 1: the smallest d with a certificate in every bias mode


def problem(**kw) -> Problem:
    return Problem(dtype=kw.pop("dtype", "float64"), **kw)


#: small problems, one per case of THEORY §8 (c = K sqrt(n λ_W λ_H); (C)'s threshold is c/(1 − c))
CASES = {
    "A_c_small": problem(**SHAPE, lambda_w=1e-2, lambda_h=5.2e-3),  # c ≈ 0.050
    "A_c_near_1": problem(**SHAPE, lambda_w=0.2, lambda_h=0.094),  # c ≈ 0.950
    "B": problem(**SHAPE, lambda_w=0.03, lambda_h=0.03, bias=False),  # c ≈ 0.208
    "C_below": problem(**SHAPE, lambda_w=0.03, lambda_h=0.03, lambda_b=0.1),  # threshold 0.263
    "A_rank_limited": problem(K=4, n=3, d=2, lambda_w=0.03, lambda_h=0.03),  # d < K − 1
    "B_rank_limited": problem(K=4, n=3, d=2, lambda_w=0.03, lambda_h=0.03, bias=False),
}
C_ABOVE = problem(**SHAPE, lambda_w=0.03, lambda_h=0.03, lambda_b=1.0)  # γ = 0.5 > c ≈ 0.208


def tree64(x):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), x)


def take(x, i: int):
    """Run i of a batched pytree."""
    return jax.tree_util.tree_map(lambda a: a[i], x)


@jax.jit
def value_grad(p: Problem, x: Params):
    f, g = obj.value_and_gradient(p, x)
    return f, jnp.sqrt(obj.tree_sq_norm(g))


def hessian_eigs(p: Problem, x: Params) -> np.ndarray:
    return np.linalg.eigvalsh(landscape.hessian_matrix(p, x))


def rotate(x: Params, rng) -> Params:
    """Another point of x's orbit: (W Q, Qᵀ H, b) with Q a random rotation of the features."""
    Q = np.linalg.qr(rng.standard_normal((x.W.shape[1],) * 2))[0]
    return tree64(Params(np.asarray(x.W) @ Q, Q.T @ np.asarray(x.H), x.b))


def centered_basis(K: int) -> np.ndarray:
    """Orthonormal basis (K, K−1) of the complement of 1."""
    return np.linalg.qr(np.concatenate([np.ones((K, 1)), np.eye(K)[:, : K - 1]], axis=1))[0][:, 1:]


def random_frame(rng, rows: int, cols: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((rows, max(cols, 1))))[0][:, :cols]


def critical_point_c(p: Problem, s: int, one: bool, rng) -> Params:
    """(C) above the threshold, which theory.critical_point does not build: s centred directions
    (singular value √n(1 − c) of W H each) and, if ``one``, the direction along 1 (singular value
    √n(1 − c − c/λ_b), b = c/(Kλ_b)·1; without it b = 1/(K(1 + λ_b))·1). Balanced factors
    W = U diag(√z (λ_H/λ_W)^¼) Rᵀ, H = R diag(√z (λ_W/λ_H)^¼) Vᵀ with V = Yᵀ U/√n."""
    K, n, d = p.K, p.n, p.d
    lw, lh, lb, c = float(p.lambda_w), float(p.lambda_h), float(p.lambda_b), p.c
    U = centered_basis(K) @ random_frame(rng, K - 1, K - 1)[:, :s]
    z = [math.sqrt(n) * (1 - c)] * s
    if one:
        U = np.concatenate([U, np.ones((K, 1)) / math.sqrt(K)], axis=1)
        z.append(math.sqrt(n) * (1 - c - c / lb))
    z = np.asarray(z)
    assert z.size <= d and np.all(z > 0)
    R = random_frame(rng, d, z.size)
    V = np.repeat(np.eye(K), n, axis=1).T @ U / math.sqrt(n)
    a = np.sqrt(z) * (lh / lw) ** 0.25
    W, H = (U * a) @ R.T, (R * (z / a)) @ V.T
    b = np.full(K, c / (K * lb) if one else 1 / (K * (1 + lb)))
    return tree64(Params(W, H, b))


# ----------------------------------------------------------------------------- saddle_gap

@pytest.mark.parametrize("name", sorted(CASES))
def test_lowest_nonglobal_critical_value_from_the_closed_form_critical_points(name):
    """Every critical point of theory.critical_point (s = 0..max_active, rotated features): zero
    gradient; s < max_active has a negative Hessian eigenvalue (at most the §3/§7 value), the top s
    is a minimum at f*; the lowest non-global value is f* + saddle_gap."""
    p = CASES[name]
    top = theory.max_active(p)
    rng = np.random.default_rng(10)
    values = []
    for s in range(top + 1):
        x = rotate(theory.critical_point(p, s), rng)
        f, gn = value_grad(p, x)
        assert float(gn) < 1e-10, (s, float(gn))
        eig = hessian_eigs(p, x)
        if s < top:
            assert eig[0] < -1e-6 and eig[0] <= theory.saddle_min_eigenvalue(p) + 1e-9, (s, eig[0])
        else:
            assert eig[0] > -1e-9, eig[0]
        values.append(float(f))
    f_star = values[top]
    assert abs(f_star - theory.predict(p).objective) < 1e-12
    assert abs(min(values[:top]) - (f_star + cert.saddle_gap(p))) < 1e-10, (values, cert.saddle_gap(p))


def c_above_values(p: Problem, rng) -> dict:
    """{(s, one): f} over every critical point of critical_point_c that fits in d, each checked
    critical; the global one (K − 1 centred directions and 1) checked against theory.predict and
    every other one for a negative Hessian eigenvalue."""
    out = {}
    for s in range(p.K):
        for one in (False, True):
            if s + one > p.d:
                continue
            x = critical_point_c(p, s, one, rng)
            f, gn = value_grad(p, x)
            assert float(gn) < 1e-10, (s, one, float(gn))
            eig = hessian_eigs(p, x)
            out[(s, one)] = (float(f), eig[0])
    return out


def test_c_above_threshold_gap_from_enumerated_critical_points():
    """(C) above the threshold, d = K+1 (certified) and d = K (no certificate: THEORY has no proof,
    but the §8 value holds): the global point is (K−1 centred, 1-direction) at theory's f*; every
    other one is a strict saddle; the lowest is the one without the 1-direction, at
    f* + (γ − c)²/(2Kγ) = f* + saddle_gap."""
    rng = np.random.default_rng(0)
    gap = cert.saddle_gap(C_ABOVE)
    c, g = C_ABOVE.c, 1.0 / (1.0 + 1.0 / float(C_ABOVE.lambda_b))
    assert gap == pytest.approx((g - c) ** 2 / (2 * C_ABOVE.K * g), rel=1e-14)  # the min{} is this term
    for d in (C_ABOVE.K + 1, C_ABOVE.K):
        p = problem(K=4, n=3, d=d, lambda_w=0.03, lambda_h=0.03, lambda_b=1.0)
        vals = c_above_values(p, rng)
        f_star, eig_star = vals.pop((p.K - 1, True))
        assert abs(f_star - theory.predict(p).objective) < 1e-12 and eig_star > -1e-9
        assert all(e < -1e-6 for _, e in vals.values()), vals
        low = min(v for v, _ in vals.values())
        assert abs(low - (f_star + gap)) < 1e-10, (low - f_star, gap)
        assert min(vals, key=lambda k: vals[k][0]) == (p.K - 1, False)


def test_c_above_threshold_below_d_k_the_formula_is_not_the_gap():
    """Why (C) with d <= K − 1 gets no certificate: above the threshold the optimum keeps K − 1
    centred directions and the lowest saddle SWAPS one for the 1-direction, at gap
    ((1 − c)² − (γ − c)²/γ)/(2K), which here is below the §8 value (that would certify a saddle)."""
    rng = np.random.default_rng(1)
    p = problem(K=4, n=3, d=3, lambda_w=0.03, lambda_h=0.03, lambda_b=3.0)
    assert cert.saddle_gap(p) is None
    vals = c_above_values(p, rng)
    f_star = theory.predict(p).objective
    assert abs(vals.pop((3, False))[0] - f_star) < 1e-12
    assert all(e < -1e-6 for _, e in vals.values()), vals
    low = min(v for v, _ in vals.values()) - f_star
    c, g = p.c, 0.75
    assert abs(low - ((1 - c) ** 2 - (g - c) ** 2 / g) / (2 * p.K)) < 1e-10
    formula = cert.saddle_gap(problem(K=4, n=3, d=5, lambda_w=0.03, lambda_h=0.03, lambda_b=3.0))
    assert low < formula - 1e-3, (low, formula)


# GD on (W, H, b) in float64 from each start of a batch, recording f before every step.
@functools.partial(jax.jit, static_argnums=(3,))
def gd_runs(p: Problem, x0: Params, lr, steps: int):
    def one(x):
        def body(x, _):
            f, g = obj.value_and_gradient(p, x)
            return jax.tree_util.tree_map(lambda a, ga: a - lr * ga, x, g), f
        return jax.lax.scan(body, x, None, length=steps)
    return jax.vmap(one)(x0)


def gaussian_starts(p: Problem, runs: int, seed: int, active: int | None = None, scale: float = 1.0) -> Params:
    """W, H ~ N(0, scale²/d), b ~ N(0, scale²/d) (0 if bias-free); feature coordinates past
    ``active`` exactly 0 (a subspace GD never leaves: their gradient is exactly 0)."""
    K, d, N = p.K, p.d, p.N
    rng = np.random.default_rng(seed)
    sig = scale / math.sqrt(d)
    W = rng.standard_normal((runs, K, d)) * sig
    H = rng.standard_normal((runs, d, N)) * sig
    b = rng.standard_normal((runs, K)) * sig * p.bias
    if active is not None:
        W[:, :, active:] = 0.0
        H[:, active:, :] = 0.0
    return tree64(Params(W, H, b))


def optimum_rank(p: Problem) -> int:
    return theory.predict(p).rank


RESTRICTED = {**{k: CASES[k] for k in ("A_c_small", "B", "C_below", "A_rank_limited")}, "C_above": C_ABOVE}


@pytest.mark.parametrize("name", sorted(RESTRICTED))
def test_lowest_saddle_by_restricted_gd(name):
    """The lowest saddle found without any closed form: GD from a random start with all but
    rank(opt) − 1 feature coordinates exactly 0 converges to the minimum of f over that invariant
    subspace. Every non-global critical point has rank < rank(opt), so that minimum is the lowest
    non-global critical value: f* + saddle_gap; it is critical in the full space and a strict saddle."""
    p = RESTRICTED[name]
    x0 = gaussian_starts(p, 2, seed=3, active=optimum_rank(p) - 1)
    x, fs = gd_runs(p, x0, theory.default_step_size(p), 12000)
    f_star = theory.predict(p).objective
    for i in range(2):
        xi = take(x, i)
        f, gn = value_grad(p, xi)
        assert float(gn) < 1e-9, float(gn)
        assert abs(float(f) - (f_star + cert.saddle_gap(p))) < 1e-10, (float(f) - f_star, cert.saddle_gap(p))
        assert hessian_eigs(p, xi)[0] < -1e-6


def test_c_above_threshold_blind_newton_search_finds_no_other_critical_values():
    """Critical points of (C) above the threshold found with no ansatz: Levenberg–Marquardt on
    ||∇f||² from random starts at several scales, on the collapsed objective (every critical point
    has G = 0: ∇_E f = (WᵀW/N + λ_H)E vanishes only at E = 0) of K = 3, d = K + 1. Every critical
    value found is one of f0 − s(1 − c)²/(2K) − [one](γ − c)²/(2Kγ), the values of the points with
    b ∝ 1 (no critical point with another b turns up), the global one and the lowest saddle among
    them; every non-global one found is a strict saddle."""
    p = problem(K=3, n=2, d=4, lambda_w=0.05, lambda_h=0.05, lambda_b=0.5)
    K, d, c, lb = p.K, p.d, p.c, float(p.lambda_b)
    g = lb / (1 + lb)
    assert g > 1.2 * c  # well above the threshold λ_b = c/(1 − c), i.e. γ = c
    P = 2 * K * d + K

    def f(v):
        W, M, b = v[: K * d].reshape(K, d), v[K * d: 2 * K * d].reshape(d, K), v[2 * K * d:]
        return col.objective(p, col.Collapsed(W, M, jnp.zeros((d, d)), b))

    fgh = jax.jit(jax.vmap(lambda v: (f(v), jax.grad(f)(v), jax.hessian(f)(v))))
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.standard_normal((32, P)) * s for s in (0.5, 2.0)])
    for _ in range(40):  # Levenberg–Marquardt steps on the host (small LAPACK solves, no compile)
        fv, gv, Hv = (np.asarray(t) for t in fgh(jnp.asarray(v)))
        mu = 1e-12 + 1e-3 * np.linalg.norm(gv, axis=1)
        v = v - np.linalg.solve(Hv @ Hv + mu[:, None, None] * np.eye(P), Hv @ gv[..., None])[..., 0]
    fv, gv, Hv = (np.asarray(t) for t in fgh(jnp.asarray(v)))
    gn, lmin = np.linalg.norm(gv, axis=1), np.linalg.eigvalsh(Hv)[:, 0]
    crit = gn < 1e-9
    assert crit.sum() >= 40, crit.sum()
    f0 = (K - 1) / (2 * K) + lb / (2 * K * (1 + lb))
    predicted = np.array([f0 - s * (1 - c) ** 2 / (2 * K) - one * (g - c) ** 2 / (2 * K * g)
                          for s in range(K) for one in (0, 1) if s + one <= d])
    dist = np.min(np.abs(fv[crit, None] - predicted[None, :]), axis=1)
    assert np.all(dist < 1e-9), fv[crit][dist >= 1e-9]
    f_star = theory.predict(p).objective
    found = np.unique(np.round(fv[crit], 9))
    assert abs(found[0] - f_star) < 1e-9
    assert abs(found[1] - (f_star + cert.saddle_gap(p))) < 1e-9
    assert np.all(lmin[crit & (fv > f_star + 1e-6)] < -1e-6)


def test_saddle_gap_none_without_a_proof_and_inf_without_saddles():
    kw = dict(K=4, n=3, lambda_w=0.03, lambda_h=0.03)
    assert cert.saddle_gap(problem(d=5, loss="rescaled-mse", alpha=2.0, target_scale=1.5, **kw)) is None
    assert cert.saddle_gap(problem(d=5, loss="rescaled-mse", **kw)) is None
    for d in (1, 3, 4):  # (C) with d <= K, both sides of the threshold and c >= 1
        for lb in (0.1, 1.0):
            assert cert.saddle_gap(problem(d=d, lambda_b=lb, **kw)) is None
        assert cert.saddle_gap(problem(d=d, K=4, n=3, lambda_w=0.3, lambda_h=0.3, lambda_b=0.1)) is None
    assert cert.saddle_gap(problem(d=5, K=4, n=3, lambda_w=0.0, lambda_h=0.03)) is None
    assert cert.saddle_gap(problem(d=5, K=4, n=3, lambda_w=0.03, lambda_h=0.0, bias=False)) is None
    for bias, lb in ((True, 0.0), (False, 0.0), (True, 0.1), (True, 10.0)):  # c ≈ 2.08
        assert cert.saddle_gap(problem(d=5, K=4, n=3, lambda_w=0.3, lambda_h=0.3, bias=bias, lambda_b=lb)) == math.inf
    with pytest.raises(ProblemError, match="scalar"):
        cert.saddle_gap(problem(d=5, K=4, n=3, lambda_w=np.array([0.03, 0.04]), lambda_h=0.03))


def test_saddle_gaps_vectorized_and_threshold_side():
    """saddle_gaps over lanes equals saddle_gap lane by lane; (C)'s gap is continuous from below up
    to the threshold, where the 1-direction saddle takes over and the gap drops to 0."""
    c = CASES["C_below"].c
    thr = c / (1 - c)
    lbs = np.array([0.0, 0.5 * thr, thr * (1 - 1e-6), thr * (1 + 1e-6), 2 * thr, 1e3])
    lws = np.array([0.03, 0.03, 0.03, 0.03, 0.03, 0.3])  # the last lane: c ≈ 2.08
    batched = problem(**SHAPE, lambda_w=lws, lambda_h=lws, lambda_b=lbs)
    gaps = cert.saddle_gaps(batched)
    per_lane = [cert.saddle_gap(problem(**SHAPE, lambda_w=w, lambda_h=w, lambda_b=b)) for w, b in zip(lws, lbs)]
    np.testing.assert_array_equal(gaps, [np.nan if g is None else g for g in per_lane])
    below = (1 - c) ** 2 / (2 * SHAPE["K"])
    assert gaps[0] == gaps[1] == below and gaps[5] == math.inf
    assert 0 < gaps[3] < 1e-9 < gaps[2]  # just above the threshold: γ − c ≈ 1e-6 c
    assert gaps[3] < gaps[4] < below


# ----------------------------------------------------------------------------- hessian_bound

@pytest.mark.parametrize("bias,lambda_b", [(True, 0.0), (False, 0.0), (True, 0.1)])
def test_hessian_bound_dominates_the_largest_eigenvalue_on_the_sublevel_set(bias, lambda_b):
    """λ_max(∇²f(x)) <= L(f(x)) at random points at several scales, at the optimum and the
    saddles and near them, at scaled optima and at points with a large bias (x lies in the
    sublevel set of its own f, and L is nondecreasing)."""
    p = problem(**SHAPE, lambda_w=0.05, lambda_h=0.02, bias=bias, lambda_b=lambda_b)  # c ≈ 0.22
    rng = np.random.default_rng(7)
    points = [gaussian_starts(p, 1, seed=s, scale=sc) for s, sc in enumerate((0.05, 0.5, 1.5, 4.0, 10.0))]
    points = [take(x, 0) for x in points]
    top = theory.max_active(p)
    for s in range(top + 1):
        x = theory.critical_point(p, s)
        for eps in (0.0, 1e-3, 0.3):
            points.append(Params(*(a + eps * rng.standard_normal(a.shape) for a in x)))
    xo = theory.global_minimizer(p)
    for t in (2.0, 5.0):
        points.append(Params(t * xo.W, t * xo.H, xo.b))
    if bias:
        points.append(Params(xo.W, xo.H, xo.b + 3.0 * rng.standard_normal(p.K)))
    # Where single terms of L are nearly tight: all of f in ||H||² (W = 0, H rank one with
    # λ_H = min λ): 2f/(N min λ); the origin with large λ: the bias term 1 (λ = 0.3) and, bias-free
    # (λ = 1), the residual term √(2f/N).
    H = np.zeros((p.d, p.N))
    H[0] = 40.0 * rng.standard_normal(p.N) / math.sqrt(p.N)
    cases = [(p, x) for x in points] + [(p, Params(0 * xo.W, H, xo.b))]
    big = problem(**SHAPE, lambda_w=0.3 if bias else 1.0, lambda_h=0.3 if bias else 1.0, bias=bias, lambda_b=lambda_b)
    cases.append((big, theory.global_minimizer(big)))  # c >= 1: the zero solution
    ratios = []
    for q, x in cases:
        x = tree64(x)
        f = float(obj.objective(q, x))
        lmax = hessian_eigs(q, x)[-1]
        L = float(cert.hessian_bound(q, f))
        assert lmax <= L * (1 + 1e-12), (f, lmax, L)
        ratios.append(lmax / L)
    assert max(ratios) > 0.5  # and not vacuous


def test_hessian_bound_vectorized_over_lanes():
    lw, lh, lb = np.array([0.01, 0.1, 0.0]), np.array([0.02, 0.01, 0.3]), np.array([0.0, 0.5, 0.1])
    f = np.array([0.1, 0.4, 0.2])
    batched = cert.hessian_bound(problem(**SHAPE, lambda_w=lw, lambda_h=lh, lambda_b=lb), f)
    lanes = [float(cert.hessian_bound(problem(**SHAPE, lambda_w=a, lambda_h=b, lambda_b=c), x))
             for a, b, c, x in zip(lw, lh, lb, f)]
    np.testing.assert_array_equal(batched, lanes)
    assert batched[2] == math.inf  # λ_W = 0: the sublevel set is unbounded
    assert cert.hessian_bound(CASES["B"], np.zeros((2, 3))).shape == (2, 3)


# ----------------------------------------------------------------------------- rounding_bound

def _f32_states(p32: Problem, p64: Problem):
    """float32 states: random at several scales, the optimum, scaled optima, saddles, noise, and
    the optimum plus a hidden cancelling pair in the spare features (W_S = s AΠ, H_S = s(I − Π)B,
    Π a projector: W_S H_S = 0 exactly, but every entry of W H is then a sum of terms of size s²)."""
    rng = np.random.default_rng(11)
    xs = [take(gaussian_starts(p64, 1, seed=s, scale=sc), 0) for s, sc in enumerate((0.1, 1.0, 3.0))]
    xo = theory.global_minimizer(p64)  # features in the first rank(opt) coordinates
    xs += [xo, Params(3 * xo.W, 3 * xo.H, xo.b), Params(0.5 * xo.W, 0.5 * xo.H, xo.b)]
    xs += [theory.critical_point(p64, s) for s in (0, theory.max_active(p64) - 1)]
    xs += [Params(*(a + 1e-2 * rng.standard_normal(a.shape) for a in xo))]
    r = theory.predict(p64).rank
    m = p64.d - r
    if m >= 2:
        F = np.linalg.qr(rng.standard_normal((m, m)))[0][:, : m // 2]
        Pi = F @ F.T
        W, H = np.array(xo.W), np.array(xo.H)
        W[:, r:] = 30.0 * rng.standard_normal((p64.K, m)) @ Pi
        H[r:, :] = 30.0 * (np.eye(m) - Pi) @ rng.standard_normal((m, p64.N))
        xs.append(Params(W, H, xo.b))
    return [jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), x) for x in xs]


@jax.jit
def _objectives(p: Problem, x: Params, xc: col.Collapsed):
    """f by each implementation, in p's dtype: full objective and value_and_gradient at the point
    x, collapsed objective and value_and_grad_norm at the collapsed state xc."""
    return (obj.objective(p, x), obj.value_and_gradient(p, x)[0], col.objective(p, xc),
            col.value_and_grad_norm(p, xc)[0])


_collapse = jax.jit(col.collapse)


@jax.jit
def _references(p: Problem, x: Params, xc: col.Collapsed):
    """float64 f of the point and of the collapsed state, and their squared norms
    ||W||² + ||H||² + ||b||² (collapsed: ||W||² + n||M||² + tr G + ||b||²)."""
    sq_c = jnp.sum(xc.W**2) + p.n * jnp.sum(xc.M**2) + jnp.trace(xc.G) + jnp.sum(xc.b**2)
    return obj.objective(p, x), col.objective(p, xc), obj.tree_sq_norm(x), sq_c


ROUNDING = {
    "A_default": dict(K=10, n=100, d=10, lambda_w=5e-4, lambda_h=5e-4),
    "A_small_lambda": dict(K=10, n=100, d=10, lambda_w=1e-5, lambda_h=2e-5),
    "B": dict(K=4, n=5, d=8, lambda_w=5e-3, lambda_h=5e-3, bias=False),
    "C": dict(K=4, n=5, d=8, lambda_w=5e-3, lambda_h=5e-3, lambda_b=5e-3),
    "A_tiny_lambda": dict(K=4, n=5, d=8, lambda_w=1e-8, lambda_h=1e-8),  # the cancellation term dominates
}


@pytest.mark.parametrize("name", sorted(ROUNDING))
def test_rounding_bound_covers_float32_evaluations(name):
    """|f computed in float32 − f of the same float32 numbers in float64| <= rounding_bound, for
    the full objective (at the float32 point) and the collapsed one (at a float32 collapsed state:
    the float64 collapse of the point, rounded, so that G stays positive semidefinite as the
    engine's G ← A G Aᵀ keeps it), with and without the state's squared norm."""
    p32, p64 = problem(dtype="float32", **ROUNDING[name]), problem(**ROUNDING[name])
    worst = 0.0
    for x32 in _f32_states(p32, p64):
        xc32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _collapse(p64, tree64(x32)))
        f32 = _objectives(p32, x32, xc32)
        f64, fc64, sq, sq_c = (float(v) for v in _references(p64, tree64(x32), tree64(xc32)))
        for space, vals, ref, norm in (("full", f32[:2], f64, sq), ("collapsed", f32[2:], fc64, sq_c)):
            for v in (float(a) for a in vals):
                for sq_norm in (None, norm):
                    bound = float(cert.rounding_bound(p32, v, space=space, sq_norm=sq_norm))
                    assert abs(v - ref) <= bound, (space, v, ref, bound)
                    worst = max(worst, abs(v - ref) / bound)
                assert float(cert.rounding_bound(p32, v)) >= float(cert.rounding_bound(p32, v, space=space))
        assert float(cert.rounding_bound(p64, f64, space="full", sq_norm=sq)) < 1e-9 * max(f64, 1.0)
    assert worst > 0  # the float32 evaluations do round


def test_rounding_bound_leaves_room_for_the_certificate():
    """At the default problem's optimum the float32 bound is a small part of the certificate's
    margin in both spaces, so it does not block early calls; TF32 products cost more but still fit
    once the state's norm is given."""
    p32 = problem(dtype="float32", **ROUNDING["A_default"])
    p64 = problem(**ROUNDING["A_default"])
    gap, f_star = cert.saddle_gap(p64), theory.predict(p64).objective
    for space in ("full", "collapsed"):
        assert float(cert.rounding_bound(p32, f_star, space=space)) < 0.1 * 0.1 * gap
    sq = float(obj.tree_sq_norm(theory.global_minimizer(p64)))
    plain = float(cert.rounding_bound(p32, f_star, space="collapsed", sq_norm=sq))
    tf32 = float(cert.rounding_bound(p32, f_star, space="collapsed", sq_norm=sq, dot_input_roundoff=2.0**-11))
    assert plain < tf32 < 0.5 * gap  # with the state's norm; the sublevel-set norms are too loose for TF32
    assert cert.rounding_bound(p32, np.array([np.nan, np.inf, f_star])).tolist()[:2] == [math.inf, math.inf]
    with pytest.raises(ConfigError, match="space"):
        cert.rounding_bound(p32, 0.1, space="dense")


# ----------------------------------------------------------------------------- certified

SOUND = {**{k: CASES[k] for k in ("A_c_small", "A_c_near_1", "B", "C_below", "A_rank_limited")},
         "C_above": C_ABOVE, "A_zero_solution": problem(**SHAPE, lambda_w=0.2, lambda_h=0.2)}


@pytest.mark.parametrize("name", sorted(SOUND))
def test_certificate_is_sound_on_long_gd_runs(name):
    """Long float64 GD (12000 steps, theory's default step) from random starts, from tiny
    perturbations of the lowest saddle, and from starts in the invariant subspace that converges TO
    the lowest saddle (all but rank(opt) − 1 feature coordinates exactly 0). Every run certified at
    some step ends global (f − f* < 1e-8); every random and perturbed run is certified (the test can
    fail); a run that converges to the saddle is never certified (a gap that is too large would
    certify it)."""
    p = SOUND[name]
    lr = theory.default_step_size(p)
    f_star, gap = theory.predict(p).objective, cert.saddle_gap(p)
    free = gaussian_starts(p, 4, seed=1)
    starts = [free]
    top = theory.max_active(p)
    if p.c < 1:
        sad = theory.critical_point(p, top - 1) if name != "C_above" else \
            critical_point_c(p, p.K - 1, False, np.random.default_rng(0))
        noise = gaussian_starts(p, 2, seed=2, scale=1e-6)
        starts.append(jax.tree_util.tree_map(lambda a, e: a[None] + e, sad, noise))
        starts.append(gaussian_starts(p, 2, seed=4, active=optimum_rank(p) - 1))
    x0 = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *starts)
    x, fs = gd_runs(p, x0, lr, 12000)
    fs = np.asarray(fs)
    f_end = np.array([float(obj.objective(p, take(x, i))) for i in range(fs.shape[0])])
    ok = cert.certified(p, fs, lr, f_star, gap)
    assert ok.shape == fs.shape
    is_global = f_end - f_star < 1e-8
    assert np.all(is_global[ok.any(axis=1)]), (f_end - f_star)[ok.any(axis=1)]
    n_free = 4 + (2 if p.c < 1 else 0)
    assert ok[:n_free].any(axis=1).all(), ok.any(axis=1)
    if p.c < 1:
        assert np.all(np.abs(f_end[n_free:] - (f_star + gap)) < 1e-8), f_end[n_free:] - f_star
        assert not ok[n_free:].any()
        first = ok[:n_free].argmax(axis=1)  # certified only below f_sad, with the margin
        assert np.all(fs[np.arange(n_free), first] < f_star + 0.9 * gap)


def test_certified_vectorized_inputs_and_refusals():
    p = CASES["C_below"]
    f_star, gap = theory.predict(p).objective, cert.saddle_gap(p)
    lr = theory.default_step_size(p)
    f = f_star + np.array([0.0, 0.5, 0.95, 2.0]) * gap
    np.testing.assert_array_equal(cert.certified(p, f, lr, f_star, gap), [True, True, False, False])
    np.testing.assert_array_equal(cert.certified(p, f, lr, f_star, None), [False] * 4)
    np.testing.assert_array_equal(cert.certified(p, f[:2], lr, f_star, [gap, None]), [True, False])
    np.testing.assert_array_equal(cert.certified(p, f[:2], lr, f_star, np.array([np.nan, gap])), [False, True])
    np.testing.assert_array_equal(cert.certified(p, f[:2], np.array([3.0, 0.0]), f_star, gap), [False, False])
    assert cert.certified(p, f[1], lr, f_star, gap, margin=0.6).tolist() is False
    lanes = problem(**SHAPE, lambda_w=np.array([0.03, 0.03]), lambda_h=0.03, lambda_b=np.array([0.1, 0.1]))
    assert cert.certified(lanes, f[0], lr, f_star, gap).shape == (2,)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="margin"):
            cert.certified(p, f, lr, f_star, gap, margin=bad)


def test_deep_gaps_linear_from_theory_relu_none():
    """THEORY §9.3 (H1): a deep linear point's gap is the deep landscape's f_sad − f* (its L_deep allows
    only small steps: tests/test_deep_certificate.py); the deep ReLU UFM gets none (no early call); the
    same problem at depth 1 has §8's gap."""
    from ncflow.batch import certify
    from ncflow.config import Config
    from ncflow.maths import theory
    from ncflow.problem import Problem
    deep = Problem(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, depth=2)
    assert cert.saddle_gap(deep) == pytest.approx(theory.predict(deep).saddle_gap, rel=1e-12)
    assert certify.point_gap(deep, Config()) == pytest.approx(cert.saddle_gap(deep))
    relu = Problem(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, depth=2, activation="relu", bias=False)
    assert np.isnan(cert.saddle_gaps(relu)) and cert.saddle_gap(relu) is None
    assert certify.point_gap(relu, Config()) is None
    shallow = Problem(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3)
    assert cert.saddle_gap(shallow) > 0
    assert certify.point_gap(shallow, Config()) == pytest.approx(cert.saddle_gap(shallow))
