"""NC metrics (THEORY.md §5) and distances to the predicted optimum, against independent numpy
computations from the definitions on the full H."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.maths import objective as obj
from ncflow.maths import theory
from ncflow.maths.metrics import ClassStats, NCMetrics, class_stats, nc_metrics, optimum_distance
from ncflow.maths.objective import Params
from ncflow.problem import Problem

CASE_A = dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=2e-3, dtype="float64")
CASE_B = dict(K=4, n=5, d=8, lambda_w=1e-2, lambda_h=2e-3, bias=False, dtype="float64")


@jax.jit
def metrics_of(p: Problem, x: Params) -> NCMetrics:
    return nc_metrics(class_stats(p, x), p.N)


@jax.jit
def distance_of(p: Problem, pred, x: Params):
    """(f(x), optimum_distance of x to the prediction ``pred``)."""
    value = obj.objective(p, x)
    return value, optimum_distance(p, pred, class_stats(p, x), value)


def as_np(x: Params):
    return tuple(np.asarray(a, dtype=np.float64) for a in x)


def reference_metrics(W, H, b, K, n):
    """THEORY.md §5 from the definitions, on the full H (d, N), numpy only."""
    d, N = H.shape
    labels = np.arange(N) // n
    mu = np.stack([H[:, labels == k].mean(axis=1) for k in range(K)], axis=1)  # (d, K)
    muG = H.mean(axis=1)
    E = H - mu[:, labels]
    Sw = E @ E.T / N
    Hbar = mu - muG[:, None]
    Sb = Hbar @ Hbar.T / K
    nc1 = np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K
    P = (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)
    Wc = W - W.mean(axis=0, keepdims=True)

    def dist(A):
        return np.linalg.norm(A / np.linalg.norm(A) - P)

    return dict(nc1=nc1, nc2=dist(Wc @ Wc.T), nc3=dist(Wc @ Hbar), nc4=np.linalg.norm(W @ muG + b),
                nc2_uncentered=dist(W @ W.T), within_between=np.trace(Sw) / np.trace(Sb))


def noisy_point(p: Problem, seed: int, noise: float, shift=0.0) -> Params:
    """The case optimum with within-class noise on H (and optionally a global feature shift)."""
    x = theory.global_minimizer(p)
    rng = np.random.default_rng(seed)
    H = np.asarray(x.H) + noise * rng.standard_normal(x.H.shape) + shift * rng.standard_normal((p.d, 1))
    W = np.asarray(x.W) + 0.05 * rng.standard_normal(x.W.shape)
    return Params(W, H, np.asarray(x.b) + 0.01 * rng.standard_normal(p.K))


# ----------------------------------------------------------------------------- exact geometries
def test_etf_optimum_scores_zero():
    p = Problem(**CASE_A)
    x = theory.global_minimizer(p, jax.random.PRNGKey(0))
    m = metrics_of(p, x)
    assert float(m.nc1) < 1e-12
    assert float(m.nc2) < 1e-10
    assert float(m.nc3) < 1e-10
    assert float(m.nc4) == pytest.approx(1 / math.sqrt(p.K), rel=1e-10)  # ||b*|| with μ_G = 0
    assert float(m.within_between) < 1e-12
    # An ETF is not an orthogonal frame: its uncentered Gram already is P up to scale.
    assert float(m.nc2_uncentered) < 1e-10


def test_orthogonal_frame():
    p = Problem(**CASE_B)
    x = theory.global_minimizer(p, jax.random.PRNGKey(1))
    m = metrics_of(p, x)
    K = p.K
    assert float(m.nc1) < 1e-12
    assert float(m.nc2) < 1e-10  # centering turns the orthogonal frame into an ETF
    assert float(m.nc3) < 1e-10
    assert float(m.nc2_uncentered) == pytest.approx(math.sqrt(2 - 2 * math.sqrt((K - 1) / K)), rel=1e-10)
    ref = reference_metrics(*as_np(x), K, p.n)
    assert float(m.nc2_uncentered) == pytest.approx(ref["nc2_uncentered"], rel=1e-12)


def test_zero_solution_is_finite():
    p = Problem(**CASE_A)
    x = Params(np.zeros((p.K, p.d)), np.zeros((p.d, p.N)), np.full(p.K, 1.0 / p.K))
    m = metrics_of(p, x)
    for name, v in m._asdict().items():
        assert np.isfinite(float(v)), name
    assert float(m.nc1) == 0.0  # 0/0 defined as 0 (metrics.py module doc)
    assert float(m.within_between) == 0.0
    assert float(m.nc2) == pytest.approx(1.0)  # zero matrix normalizes to 0: ||P||_F = 1
    assert float(m.nc3) == pytest.approx(1.0)
    assert float(m.nc2_uncentered) == pytest.approx(1.0)
    assert float(m.nc4) == pytest.approx(1 / math.sqrt(p.K))


def test_collapsed_zero_between_class_spread():
    # All class means exactly equal but within-class spread present: Σ_B = 0, tr Σ_W > 0.
    # Dyadic entries whose class sums are exactly 0, so every class mean is exactly 0 (a nonzero
    # common mean would leave O(eps) between-class spread after XLA's fused reductions).
    p = Problem(**CASE_A)
    rng = np.random.default_rng(3)
    a = rng.choice([-1.0, -0.5, 0.5, 1.0], size=(p.d, p.K, 2))
    E = np.concatenate([a, -a, np.zeros((p.d, p.K, 1))], axis=2)  # (d, K, n=5), class sums 0
    H = jnp.asarray(E.reshape(p.d, p.N))
    x = Params(rng.standard_normal((p.K, p.d)), H, np.zeros(p.K))
    m = metrics_of(p, x)
    for name, v in m._asdict().items():
        assert not np.isnan(float(v)), name
    assert float(m.nc1) == 0.0  # no between-class spread to compare with (module doc)
    assert float(m.within_between) == np.inf


# ----------------------------------------------------------------------------- against definitions
@pytest.mark.parametrize("noise", [1e-3, 0.1, 1.0])
def test_within_class_noise_matches_definitions(noise):
    p = Problem(**CASE_A)
    x = noisy_point(p, 0, noise, shift=0.2)
    m = metrics_of(p, x)
    ref = reference_metrics(*as_np(x), p.K, p.n)
    assert float(m.nc1) > 0 and float(m.within_between) > 0
    for name, want in ref.items():
        assert float(getattr(m, name)) == pytest.approx(want, rel=1e-9), name


def test_nc1_grows_with_noise():
    p = Problem(**CASE_A)
    vals = [float(metrics_of(p, noisy_point(p, 0, s)).nc1) for s in (1e-3, 1e-2, 1e-1)]
    assert 0 < vals[0] < vals[1] < vals[2]
    # NC1 is quadratic in the within-class noise at fixed means (up to the means' own shift).
    assert vals[1] / vals[0] == pytest.approx(100, rel=0.05)


def test_nc1_in_low_rank_between_class_spread():
    # d < K−1: Σ_B has rank d; the pseudo-inverse keeps it finite and equal to the definition.
    p = Problem(K=5, n=3, d=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    rng = np.random.default_rng(4)
    x = Params(rng.standard_normal((5, 2)), rng.standard_normal((2, 15)), rng.standard_normal(5))
    m = metrics_of(p, x)
    ref = reference_metrics(*as_np(x), p.K, p.n)
    for name, want in ref.items():
        assert float(getattr(m, name)) == pytest.approx(want, rel=1e-9), name


def test_class_stats_match_numpy():
    p = Problem(**CASE_A)
    x = noisy_point(p, 1, 0.5, shift=1.0)
    st = jax.jit(class_stats)(p, x)
    assert isinstance(st, ClassStats)
    W, H, b = as_np(x)
    labels = np.arange(p.N) // p.n
    M = np.stack([H[:, labels == k].mean(axis=1) for k in range(p.K)], axis=1)
    E = H - M[:, labels]
    np.testing.assert_allclose(np.asarray(st.M), M, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(st.G), E @ E.T, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.asarray(st.W), W)
    np.testing.assert_array_equal(np.asarray(st.b), b)
    assert st.M.shape == (p.d, p.K) and st.G.shape == (p.d, p.d)


def test_metrics_vmap_over_points():
    p = Problem(**CASE_A)
    pts = [noisy_point(p, i, 0.1 * (i + 1), shift=0.1 * i) for i in range(5)]
    batch = Params(*(np.stack(a) for a in zip(*pts)))
    mb = jax.jit(jax.vmap(lambda x: nc_metrics(class_stats(p, x), p.N)))(batch)
    assert mb.nc1.shape == (5,)
    for i, x in enumerate(pts):
        mi = metrics_of(p, x)
        for name in NCMetrics._fields:
            assert float(getattr(mb, name)[i]) == pytest.approx(float(getattr(mi, name)), rel=1e-12), (i, name)


# ----------------------------------------------------------------------------- optimum distance
def test_optimum_distance_zero_at_rotated_minimizer():
    p = Problem(**CASE_A)
    pred = theory.predict(p)
    x = theory.global_minimizer(p, jax.random.PRNGKey(7))
    f, dist = distance_of(p, pred.arrays(p.K, p.dtype), x)
    assert float(dist.gap) == pytest.approx(float(f) - pred.objective, abs=1e-16)
    assert abs(float(dist.gap)) < 1e-12 * pred.objective
    assert float(dist.gram_error) < 1e-12
    assert float(dist.self_duality) < 1e-12
    assert float(dist.bias_error) < 1e-12
    assert float(dist.w_norm) == pytest.approx(pred.w_norm, rel=1e-12)
    assert float(dist.h_norm) == pytest.approx(pred.h_norm, rel=1e-12)


def test_optimum_distance_rank_limited_uses_spectrum():
    p = Problem(K=4, n=5, d=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    pred = theory.predict(p)
    assert pred.gram is None
    x = theory.global_minimizer(p, jax.random.PRNGKey(8))
    _, dist = distance_of(p, pred.arrays(p.K, p.dtype), x)
    assert abs(float(dist.gap)) < 1e-12 * pred.objective
    assert float(dist.gram_error) < 1e-12


def test_optimum_distance_orthogonal_frame_vs_etf():
    # The bias-free optimum (orthogonal frame) compared against the case-A (ETF) prediction.
    pa, pb = Problem(**CASE_A), Problem(**CASE_B)
    pred_a = theory.predict(pa)
    xb = theory.global_minimizer(pb, jax.random.PRNGKey(9))
    f, dist = distance_of(pa, pred_a.arrays(pa.K, pa.dtype), xb)
    assert float(dist.gram_error) > 0.1
    assert float(dist.gap) == pytest.approx(float(f) - pred_a.objective, rel=1e-12)
    assert float(dist.gap) > 0


def test_optimum_distance_gap_and_bias_error():
    p = Problem(**CASE_A)
    pred = theory.predict(p)
    x = theory.global_minimizer(p)
    b = np.array(x.b)
    b[2] += 0.3
    x = x._replace(b=b)
    f, dist = distance_of(p, pred.arrays(p.K, p.dtype), x)
    # Moving one bias entry by δ off the optimum raises f by exactly δ²/2 (f is quadratic in b
    # with ∂²f/∂b_k² = 1 and ∇_b f = 0 at the optimum).
    assert float(dist.gap) == pytest.approx(0.3**2 / 2, rel=1e-9)
    assert float(dist.bias_error) == pytest.approx(0.3, rel=1e-12)


def test_nc1_from_the_triangular_factor_equals_the_svd_pseudo_inverse():
    """_nc1 for d > K (the K×K factor R of X = QR, no Q formed) and d <= K (SVD of X) against numpy's
    SVD pseudo-inverse, on full-rank and centred (rank K−1) X in float64 and float32."""
    from ncflow.maths.metrics import _nc1

    def ref(X, Sw, K):
        U, s, _ = np.linalg.svd(X, full_matrices=False)
        keep = s > s.max() * max(X.shape) * np.finfo(X.dtype).eps * 10
        return np.sum((np.einsum("dj,de,ej->j", U, Sw, U) / np.where(keep, s, 1.0) ** 2)[keep]) / K

    rng = np.random.default_rng(0)
    for trial in range(40):
        d, K = int(rng.choice([3, 11, 64])), int(rng.choice([4, 10]))
        X = rng.normal(size=(d, K)) * rng.uniform(0.01, 10, size=K)
        if trial % 2:
            X = X - X.mean(axis=1, keepdims=True)
        E = rng.normal(size=(d, 3 * d)) * 1e-3
        Sw = E @ E.T
        want = ref(X, Sw, K)
        got64 = float(_nc1(jnp.asarray(X), jnp.asarray(Sw), K, jnp.float64))
        got32 = float(_nc1(jnp.asarray(X, jnp.float32), jnp.asarray(Sw, jnp.float32), K, jnp.float32))
        np.testing.assert_allclose(got64, want, rtol=1e-10, err_msg=f"trial {trial} d={d} K={K}")
        np.testing.assert_allclose(got32, want, rtol=1e-3, err_msg=f"trial {trial} d={d} K={K} float32")
