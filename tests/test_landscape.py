"""Landscape probes: Hessian spectra at the optimum and at every critical point, Lanczos
extremes, and the one-feature landscape (paper's Fig. 2)."""

import jax
import numpy as np
import pytest

from ncflow import landscape
from ncflow.maths import theory
from ncflow.problem import Problem

PA = Problem(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=3e-2, dtype="float64")


@pytest.mark.parametrize("K, d", [(4, 5), (3, 5), (4, 4)])
def test_optimum_hessian_counts(K, d):
    """Case A, d >= K: no negative eigenvalue and exactly the dimension of the O(d) orbit,
    [d(d−1) − (d−K+1)(d−K)]/2, of zero eigenvalues (|λ| < 1e-8)."""
    p = Problem(K=K, d=d, n=2, lambda_w=2e-2, lambda_h=3e-2, dtype="float64")
    eig = landscape.hessian_spectrum(p, theory.global_minimizer(p, key=jax.random.key(1)))
    assert eig.shape == (K * d + d * p.N + K,)
    assert np.sum(eig < -1e-8) == 0
    assert np.sum(np.abs(eig) < 1e-8) == (d * (d - 1) - (d - K + 1) * (d - K)) // 2
    assert np.min(eig[np.abs(eig) >= 1e-8]) > 1e-4  # the zero cluster is well separated


def test_critical_point_report():
    """Every s < K−1 is a strict saddle whose smallest eigenvalue is theory.saddle_min_eigenvalue,
    with exactly (K−1−s)(d−s) negative eigenvalues, all equal to it (the free class × free
    feature directions); s = K−1 is the minimum."""
    rows = landscape.critical_point_report(PA)
    assert [r.s for r in rows] == [0, 1, 2, 3]
    lam = theory.saddle_min_eigenvalue(PA)
    for r in rows:
        assert r.grad_norm < 1e-12
        assert r.objective == pytest.approx(r.value, rel=1e-12)
        if r.s < 3:
            assert r.kind == "saddle"
            assert r.min_eig == pytest.approx(lam, rel=1e-10)
            assert r.predicted_min_eig == pytest.approx(lam, rel=1e-14)
            assert r.negative == (PA.K - 1 - r.s) * (PA.d - r.s)
        else:
            assert r.kind == "minimum" and r.negative == 0 and r.zero == 9
    eig = landscape.hessian_spectrum(PA, theory.critical_point(PA, 1))
    np.testing.assert_allclose(eig[: rows[1].negative], lam, rtol=1e-10)
    assert eig[rows[1].negative] > -1e-8


def test_bias_free_report():
    """Bias-free: the Hessian is over (W, H) only; saddles s < K have (K−s)(d−s) negative
    eigenvalues at the same λ_min."""
    p = Problem(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, bias=False, dtype="float64")
    assert landscape.hessian_spectrum(p, theory.critical_point(p, 0)).shape == (p.K * p.d + p.d * p.N,)
    rows = landscape.critical_point_report(p)
    assert [r.kind for r in rows] == ["saddle"] * 3 + ["minimum"]
    for r in rows[:-1]:
        assert r.negative == (p.K - r.s) * (p.d - r.s)
        assert r.min_eig == pytest.approx(theory.saddle_min_eigenvalue(p), rel=1e-10)


def test_lanczos_matches_dense():
    x = theory.critical_point(PA, 1)
    dense = landscape.hessian_spectrum(PA, x)
    lo = landscape.hessian_spectrum(PA, x, k=2)
    np.testing.assert_allclose(lo, dense[:2], rtol=1e-8)
    mn, mx = landscape.hessian_extremes(PA, x)
    assert mn == pytest.approx(dense[0], rel=1e-8) and mx == pytest.approx(dense[-1], rel=1e-8)


@pytest.mark.parametrize("loss", ["mse", "rescaled-mse"])
def test_feature_landscape(loss):
    """The minimum over a fine (norm, angle) grid is at angle 0 and norm ||h_k||, and its value
    is f*. (MSE; rescaled MSE with α = 2, M = 1.5.) A rescaled-mse problem asked for its mse
    landscape drops α and M."""
    rescaled = dict(loss="rescaled-mse", alpha=2.0, target_scale=1.5)
    p = Problem(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=2e-2, **rescaled, dtype="float64")
    pk = Problem(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=2e-2, **(rescaled if loss == "rescaled-mse" else {}),
                 dtype="float64")
    hk = theory.predict(pk).h_norm
    norms = np.linspace(0.0, 2.5 * hk, 251)
    angles = np.linspace(-np.pi, np.pi, 181)
    F = landscape.feature_landscape(p, norms, angles, loss=loss)
    assert F.shape == (251, 181)
    i, j = np.unravel_index(np.argmin(F), F.shape)
    assert angles[j] == pytest.approx(0.0, abs=1e-12)
    assert abs(norms[i] - hk) <= norms[1] - norms[0]
    exact = landscape.feature_landscape(p, [hk], [0.0], loss=loss)
    assert exact[0, 0] == pytest.approx(theory.predict(pk).objective, rel=1e-12)
    assert exact[0, 0] <= F.min() + 1e-15
