"""Closed forms of ncflow.theory (THEORY.md §2–§4, §6) against exact gradients, dense and
Lanczos Hessian spectra, and long float64 gradient descent."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ncflow.maths import lanczos, theory
from ncflow.maths import objective as obj
from ncflow.maths.metrics import class_stats, nc_metrics, optimum_distance
from ncflow.maths.objective import Params
from ncflow.problem import Problem, ProblemError

from helpers import rel_diff

# Jitted reports (CPU compiles dominate the run time, so each test compiles one program per
# problem shape). The Problem is a pytree: sizes/flags static, coefficients traced leaves, so
# problems of one shape share the compiled code.

def _dense_hessian_eigs(p: Problem, x: Params):
    """Full Hessian spectrum of f on the raveled (W, H, b), ascending."""
    v, unravel = ravel_pytree(x)
    Hm = jax.hessian(lambda u: obj.objective(p, unravel(u)))(v)
    return jnp.linalg.eigvalsh(0.5 * (Hm + Hm.T))


@jax.jit
def point_report(p: Problem, x: Params):
    """(gradient norm, objective, NC metrics, dense Hessian spectrum) at x."""
    return (obj.gradient_norm(p, x), obj.objective(p, x), nc_metrics(class_stats(p, x), p.N),
            _dense_hessian_eigs(p, x))


@functools.partial(jax.jit, static_argnums=(3,))
def lanczos_report(p: Problem, x: Params, key, num_iters: int):
    """(gradient norm, objective, (min, max, residual) of the Hessian spectrum via
    ncflow.lanczos on the analytic HVP)."""
    mm = lanczos.min_eigenvalue_pytree(lambda pt, t: obj.hvp(p, pt, t), x, key, num_iters)
    return obj.gradient_norm(p, x), obj.objective(p, x), mm


@functools.partial(jax.jit, static_argnums=(3,))
def gradient_descent(p: Problem, x: Params, eta, steps: int, prediction):
    """Plain full-batch GD on (W, H, b) with the analytic gradient; returns the final objective
    and its distance to ``prediction`` (PredictionArrays)."""
    def body(_, q):
        g = obj.gradient(p, q)
        return jax.tree_util.tree_map(lambda a, ga: a - eta * ga, q, g)
    x = jax.lax.fori_loop(0, steps, body, x)
    f = obj.objective(p, x)
    return f, optimum_distance(p, prediction, class_stats(p, x), f)


def gaussian_start(p: Problem, seed: int) -> Params:
    """W, H ~ N(0, 1/d) entries, b = 0."""
    rng = np.random.default_rng(seed)
    s = 1.0 / math.sqrt(p.d)
    return Params(jnp.asarray(s * rng.standard_normal((p.K, p.d))),
                  jnp.asarray(s * rng.standard_normal((p.d, p.N))), jnp.zeros(p.K))


# ============================================================================ §6 reference table
# (K, n, d, λ_W, λ_H, λ_b or None for case B) -> (f*, ||w_k||, ||h_k||, b* or None)
TABLE = [
    ((4, 5, 8, 5e-3, 5e-3, 0.0), ("0.0327910197", "1.265722", "0.566048", "0.25")),
    ((4, 5, 8, 5e-3, 5e-3, 5e-3), ("0.0334129102", "1.265722", "0.566048", "0.248756")),
    ((4, 5, 8, 1e-2, 2e-3, 0.0), ("0.0294000000", "0.848528", "0.848528", "0.25")),
    ((4, 5, 8, 5e-3, 5e-3, None), ("0.0437213595", "1.461529", "0.653616", None)),
    ((4, 5, 8, 0.2, 0.1, 0.1), ("0.3863636364", "0", "0", "0.227273")),
    ((10, 100, 9, 5e-4, 5e-4, 0.0), ("0.043875", "2.924038", "0.2924038", "0.1")),
    ((10, 100, 16, 5e-4, 5e-4, 0.0), ("0.043875", "2.924038", "0.2924038", "0.1")),
]


def _matches_printed(value: float, printed: str) -> bool:
    """rel 1e-6, or within half a unit of the last printed digit (the table is rounded)."""
    target = float(printed)
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    half_ulp = 0.5 * 10.0 ** (-decimals) * (1 + 1e-9)
    return abs(value - target) <= max(1e-6 * abs(target), half_ulp)


@pytest.mark.parametrize("row,expect", TABLE, ids=[str(r[0]) for r in TABLE])
def test_reference_table(row, expect):
    K, n, d, lw, lh, lb = row
    p = Problem(K=K, n=n, d=d, lambda_w=lw, lambda_h=lh, lambda_b=lb or 0.0, bias=lb is not None, dtype="float64")
    pred = theory.predict(p)
    f, w, h, b = expect
    assert _matches_printed(pred.objective, f), (pred.objective, f)
    assert _matches_printed(pred.w_norm, w), (pred.w_norm, w)
    assert _matches_printed(pred.h_norm, h), (pred.h_norm, h)
    if b is None:
        assert pred.bias is None
    else:
        assert _matches_printed(pred.bias, b), (pred.bias, b)
    assert pred.c == pytest.approx(K * math.sqrt(n * lw * lh), rel=1e-14)


def test_closed_forms_case_a():
    # THEORY.md §2 (A) formulas against predict on a problem with λ_W ≠ λ_H.
    K, n, d, lw, lh = 5, 7, 6, 3e-3, 8e-3
    p = Problem(K=K, n=n, d=d, lambda_w=lw, lambda_h=lh, dtype="float64")
    c = K * math.sqrt(n * lw * lh)
    pred = theory.predict(p)
    assert pred.geometry == "simplex_etf" and pred.rank == K - 1
    assert pred.objective == pytest.approx((K - 1) * c * (2 - c) / (2 * K), rel=1e-13)
    assert pred.w_norm**2 == pytest.approx((K - 1) / K * math.sqrt(n * lh / lw) * (1 - c), rel=1e-13)
    assert pred.h_norm**2 == pytest.approx((K - 1) / K * math.sqrt(lw / (n * lh)) * (1 - c), rel=1e-13)
    rho = math.sqrt(n * lh / lw) * (1 - c)
    np.testing.assert_allclose(pred.gram, rho * (np.eye(K) - 1.0 / K), atol=1e-13)
    np.testing.assert_allclose(pred.outputs, (1 - c) * np.eye(K) + c / K, atol=1e-13)
    assert pred.bias == pytest.approx(1.0 / K, rel=1e-15)


def test_closed_forms_case_c_above_threshold():
    K, n, d, lw, lh, lb = 4, 5, 8, 1e-2, 1e-2, 0.5
    p = Problem(K=K, n=n, d=d, lambda_w=lw, lambda_h=lh, lambda_b=lb, dtype="float64")
    c = p.c
    assert lb > c / (1 - c)
    pred = theory.predict(p)
    assert pred.geometry == "etf_with_mean"
    assert pred.bias == pytest.approx(c / (K * lb), rel=1e-14)
    J = np.ones((K, K)) / K
    gram = math.sqrt(n * lh / lw) * ((1 - c) * (np.eye(K) - J) + (1 - c - c / lb) * J)
    np.testing.assert_allclose(pred.gram, gram, atol=1e-13)
    f = (K - 1) * c * (2 - c) / (2 * K) + (c - c**2 / 2 - c**2 / (2 * lb)) / K
    assert pred.objective == pytest.approx(f, rel=1e-13)


def test_rescaled_mse_reduces_to_case_a():
    kw = dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=3e-3, dtype="float64")
    a = theory.predict(Problem(**kw))
    r = theory.predict(Problem(**kw, loss="rescaled-mse", alpha=1.0, target_scale=1.0))
    assert r.objective == pytest.approx(a.objective, rel=1e-13)
    assert r.bias == pytest.approx(a.bias, rel=1e-13)
    np.testing.assert_allclose(r.gram, a.gram, atol=1e-13)


def test_predict_rejects_batched_problem():
    with pytest.raises(ProblemError):
        theory.predict(Problem(K=3, d=3, n=2, lambda_w=jnp.array([1e-3, 2e-3]), lambda_h=1e-3, dtype="float64"))


# ============================================================================ a spread of problems
# Small (K=4, n=5) problems with λ's chosen so that GD converges in a few thousand steps.
# c = 4 sqrt(5 λ_W λ_H); for λ = 1e-2: c ≈ 0.0894, threshold c/(1−c) ≈ 0.0982.
SPREAD = {
    "A": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
    "A_unequal": dict(K=4, n=5, d=8, lambda_w=2e-2, lambda_h=5e-3, dtype="float64"),
    "A_unequal_table": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=2e-3, dtype="float64"),
    "A_d_eq_K-1": dict(K=4, n=5, d=3, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
    "A_c_ge_1": dict(K=4, n=5, d=8, lambda_w=0.2, lambda_h=0.2, dtype="float64"),
    "C_below_threshold": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=1e-2, lambda_b=0.05, dtype="float64"),
    "C_above_threshold": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=1e-2, lambda_b=0.5, dtype="float64"),
    "C_c_ge_1": dict(K=4, n=5, d=8, lambda_w=0.2, lambda_h=0.1, lambda_b=0.1, dtype="float64"),
    "B": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=1e-2, bias=False, dtype="float64"),
    "B_unequal": dict(K=4, n=5, d=8, lambda_w=5e-3, lambda_h=2e-2, bias=False, dtype="float64"),
    "B_c_ge_1": dict(K=4, n=5, d=8, lambda_w=0.2, lambda_h=0.2, bias=False, dtype="float64"),
    "A_rank_limited": dict(K=4, n=5, d=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
    "B_rank_limited": dict(K=4, n=5, d=3, lambda_w=1e-2, lambda_h=1e-2, bias=False, dtype="float64"),
    "rescaled": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=1e-2, loss="rescaled-mse",
                     alpha=3.0, target_scale=2.0, dtype="float64"),
}
EXPECTED_GEOMETRY = {
    "A": "simplex_etf", "A_unequal": "simplex_etf", "A_unequal_table": "simplex_etf",
    "A_d_eq_K-1": "simplex_etf", "A_c_ge_1": "zero", "C_below_threshold": "simplex_etf",
    "C_above_threshold": "etf_with_mean", "C_c_ge_1": "zero", "B": "orthogonal_frame",
    "B_unequal": "orthogonal_frame", "B_c_ge_1": "zero", "A_rank_limited": "rank_limited",
    "B_rank_limited": "rank_limited", "rescaled": "simplex_etf",
}


def test_spread_covers_the_cases():
    ps = {k: Problem(**v) for k, v in SPREAD.items()}
    assert ps["A"].c < 1 <= ps["A_c_ge_1"].c
    assert ps["C_below_threshold"].lambda_b <= ps["C_below_threshold"].c / (1 - ps["C_below_threshold"].c)
    assert ps["C_above_threshold"].lambda_b > ps["C_above_threshold"].c / (1 - ps["C_above_threshold"].c)
    assert ps["C_c_ge_1"].c >= 1 and ps["B_c_ge_1"].c >= 1 and ps["B"].c < 1
    assert ps["A_rank_limited"].d < ps["A_rank_limited"].K - 1
    assert ps["B_rank_limited"].d < ps["B_rank_limited"].K


@pytest.mark.parametrize("name", SPREAD)
def test_predicted_geometry(name):
    assert theory.predict(Problem(**SPREAD[name])).geometry == EXPECTED_GEOMETRY[name]


def test_global_minimizer_is_one_orbit():
    # Two keys give two points of the orbit (W Q, Qᵀ H, b): same Gram, same outputs.
    p = Problem(**SPREAD["A_unequal"])
    (W1, H1, _), (W2, H2, _), (W0, H0, _) = (
        (np.asarray(a) for a in theory.global_minimizer(p, k))
        for k in (jax.random.PRNGKey(1), jax.random.PRNGKey(2), None))
    assert not np.allclose(W1, W2)
    for W, H in ((W1, H1), (W2, H2)):
        np.testing.assert_allclose(W @ W.T, W0 @ W0.T, atol=1e-12)
        np.testing.assert_allclose(W @ H, W0 @ H0, atol=1e-12)


def _hessian_zero_count(p: Problem, pred) -> int | None:
    """Predicted number of zero Hessian eigenvalues at a global minimizer of a problem with a bias:
    the dimension of the rotation orbit (d(d−1) − (d−r)(d−r−1))/2, r = rank of W, plus for a
    rank-limited optimum the choice of r of the K−1 equivalent class directions, r(K−1−r)."""
    if not p.bias:
        return None
    d, r = p.d, pred.rank
    count = (d * (d - 1) - (d - r) * (d - r - 1)) // 2
    if pred.geometry == "rank_limited":
        count += r * (p.K - 1 - r)
    return count


@pytest.mark.parametrize("name", SPREAD)
def test_global_minimizer(name):
    p = Problem(**SPREAD[name])
    pred = theory.predict(p)
    x = theory.global_minimizer(p, jax.random.PRNGKey(3))
    gn, f, m, eigs = point_report(p, x)
    assert float(gn) < 1e-10
    assert rel_diff(float(f), pred.objective) <= 1e-12
    W, H, b = (np.asarray(a) for a in x)
    # Norms and bias as predicted (RMS over classes / samples).
    assert math.sqrt(np.sum(W**2) / p.K) == pytest.approx(pred.w_norm, rel=1e-10, abs=1e-14)
    assert math.sqrt(np.sum(H**2) / p.N) == pytest.approx(pred.h_norm, rel=1e-10, abs=1e-14)
    if p.bias:
        np.testing.assert_allclose(b, pred.bias, rtol=1e-12)
    else:
        np.testing.assert_array_equal(b, 0.0)
    if pred.gram is not None:
        np.testing.assert_allclose(W @ W.T, pred.gram, atol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(W @ W.T))[::-1][: pred.rank], pred.spectrum, atol=1e-12)
    if pred.geometry in ("simplex_etf", "etf_with_mean", "orthogonal_frame"):
        # NC2/NC3 are centered: an orthogonal frame scores 0 as well.
        assert float(m.nc1) < 1e-10 and float(m.nc2) < 1e-10 and float(m.nc3) < 1e-10

    # Hessian at the global minimizer: no negative curvature, flat exactly along the orbit.
    eigs = np.asarray(eigs)
    assert eigs[0] >= -1e-10, eigs[:5]
    expect = _hessian_zero_count(p, pred)
    if expect is not None:
        assert int(np.sum(np.abs(eigs) < 1e-8)) == expect, (int(np.sum(np.abs(eigs) < 1e-8)), expect)
    if p.bias_mode == "unregularized" and p.loss == "mse" and p.d >= p.K and pred.geometry == "simplex_etf":
        d, K = p.d, p.K
        assert expect == (d * (d - 1) - (d - K + 1) * (d - K)) // 2  # THEORY.md orbit dimension
    # The default step is stable at the optimum: 0 < η < 2/L, L the largest Hessian eigenvalue.
    eta = theory.default_step_size(p)
    assert 0 < eta < 2 / float(eigs[-1])


# Steps of GD from the Gaussian start (seed 0). Measured first step with rel gap <= 1e-8 (and
# staying there): 250–2750 for most cases, 4250 for "rescaled", 6750 for "A_unequal_table"
# (λ_H = 2e-3 is the slowest mode); 20000 leaves a margin of ~3x on the slowest.
GD_STEPS = 20_000


@pytest.mark.parametrize("name", SPREAD)
def test_gradient_descent_reaches_prediction(name):
    p = Problem(**SPREAD[name])
    pred = theory.predict(p)
    eta = theory.default_step_size(p)
    f, dist = gradient_descent(p, gaussian_start(p, 0), eta, GD_STEPS, pred.arrays(p.K, p.dtype))
    f = float(f)
    assert rel_diff(f, pred.objective) <= 1e-8, (f, pred.objective)
    assert f >= pred.objective * (1 - 1e-12)  # f* is a lower bound
    assert float(dist.gram_error) < 1e-6
    if p.bias:
        assert float(dist.bias_error) < 1e-6


# ============================================================================ critical points (§3)
# Small enough for a dense Hessian (196 variables); the shapes match SPREAD so the compiled
# reports are shared.
TINY = {
    "A": dict(K=4, n=5, d=8, lambda_w=3e-2, lambda_h=1e-2, dtype="float64"),
    "A_d_eq_K-1": dict(K=4, n=5, d=3, lambda_w=3e-2, lambda_h=1e-2, dtype="float64"),
    "C_below_threshold": dict(K=4, n=5, d=8, lambda_w=3e-2, lambda_h=1e-2, lambda_b=0.1, dtype="float64"),
    "B": dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=3e-2, bias=False, dtype="float64"),
}


@pytest.mark.parametrize("name", TINY)
def test_critical_points_dense_hessian(name):
    p = Problem(**TINY[name])
    smax = theory.max_active(p)
    saddle = theory.saddle_min_eigenvalue(p)
    assert saddle < 0 and p.c < 1
    assert saddle == pytest.approx(-theory.origin_growth_rate(p), rel=1e-15)
    for s in range(smax + 1):
        # Random class directions and feature frame (a key) on the d = 8 problems; the fixed
        # frames (key=None) elsewhere keep the number of compiled random shapes down.
        key = jax.random.PRNGKey(10 + s) if p.d == 8 and p.bias_mode != "regularized" else None
        x = theory.critical_point(p, s, key)
        gn, f, _, eigs = point_report(p, x)
        assert float(gn) < 1e-10, s
        f = float(f)
        assert abs(f - theory.critical_value(p, s)) <= 1e-12 * abs(f), s
        eigs = np.asarray(eigs)
        if s < smax:
            assert abs(eigs[0] - saddle) < 1e-8, (s, eigs[0], saddle)
        else:
            assert eigs[0] >= -1e-10, (s, eigs[0])
            assert f == pytest.approx(theory.predict(p).objective, rel=1e-12)
    # f_s decreases with s by (1 − c)²/(2K) per direction.
    vals = [theory.critical_value(p, s) for s in range(smax + 1)]
    np.testing.assert_allclose(np.diff(vals), -(1 - p.c) ** 2 / (2 * p.K), rtol=1e-12)


def test_critical_point_orbit_zero_count_case_a():
    p = Problem(**TINY["A"])  # d = 8 >= K = 4
    x = theory.critical_point(p, theory.max_active(p), jax.random.PRNGKey(0))
    eigs = np.asarray(point_report(p, x)[3])
    d, K = p.d, p.K
    assert int(np.sum(np.abs(eigs) < 1e-8)) == (d * (d - 1) - (d - K + 1) * (d - K)) // 2


LARGER = {
    "A": dict(K=6, n=6, d=8, lambda_w=2e-2, lambda_h=1e-2, dtype="float64"),
    "B": dict(K=6, n=6, d=8, lambda_w=2e-2, lambda_h=1e-2, bias=False, dtype="float64"),
}


@pytest.mark.parametrize("name", LARGER)
def test_critical_points_lanczos(name):
    p = Problem(**LARGER[name])
    smax = theory.max_active(p)
    saddle = theory.saddle_min_eigenvalue(p)
    for s in sorted({0, 1, smax - 1, smax}):
        x = theory.critical_point(p, s, jax.random.PRNGKey(20 + s))
        gn, f, mm = lanczos_report(p, x, jax.random.PRNGKey(99), 80)
        assert float(gn) < 1e-10
        assert float(f) == pytest.approx(theory.critical_value(p, s), rel=1e-12)
        lo, hi, res = (float(v) for v in mm)
        if s < smax:
            assert abs(lo - saddle) < 1e-8, (s, lo, saddle, res)
        else:
            assert abs(lo) < 1e-8, (s, lo, res)  # a minimum with a flat orbit: λ_min = 0


def test_critical_point_validation():
    p = Problem(**TINY["A"])
    with pytest.raises(ProblemError):
        theory.critical_point(p, theory.max_active(p) + 1)
    with pytest.raises(ProblemError):
        theory.critical_point(p, -1)
    with pytest.raises(ProblemError):
        theory.critical_point(Problem(K=4, n=2, d=5, lambda_w=0.3, lambda_h=0.3, dtype="float64"), 1)  # c >= 1
    with pytest.raises(ProblemError):
        theory.critical_value(Problem(K=4, n=2, d=5, lambda_w=3e-2, lambda_h=1e-2, lambda_b=5.0, dtype="float64"), 1)


def test_origin_is_critical_point_zero():
    p = Problem(**TINY["A"])
    x = theory.critical_point(p, 0)
    np.testing.assert_array_equal(np.asarray(x.W), 0.0)
    np.testing.assert_array_equal(np.asarray(x.H), 0.0)
    np.testing.assert_allclose(np.asarray(x.b), 1.0 / p.K)
    assert theory.critical_value(p, 0) == pytest.approx((p.K - 1) / (2 * p.K))
