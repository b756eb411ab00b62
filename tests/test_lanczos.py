"""Lanczos extreme eigenvalues against dense eigvalsh (float64 via tests/conftest.py)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.maths.lanczos import (
    LanczosResult,
    dense_hessian_eigvalsh,
    lanczos_extremes,
    make_hvp,
    min_eigenvalue_pytree,
)


def _sym_with_spectrum(rng: np.random.Generator, eigs: np.ndarray) -> np.ndarray:
    n = eigs.shape[0]
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * eigs) @ Q.T


def _mv(A, x):
    return A @ x


@partial(jax.jit, static_argnums=(2,))
def _run(A, v0, m):
    """Jitted ``lanczos_extremes`` on a dense matrix (eager dispatch is slow on CPU)."""
    return lanczos_extremes(partial(_mv, A), v0, m)


def test_x64_enabled():
    assert jnp.zeros(()).dtype == jnp.float64


def test_full_krylov_exact():
    rng = np.random.default_rng(0)
    eigs = rng.uniform(-3.0, 5.0, size=50)
    A = jnp.asarray(_sym_with_spectrum(rng, eigs))
    v0 = jnp.asarray(rng.standard_normal(50))
    res = _run(A, v0, 50)
    assert isinstance(res, LanczosResult)
    ref = np.linalg.eigvalsh(np.asarray(A))
    assert abs(float(res.min_eig) - ref[0]) < 1e-8
    assert abs(float(res.max_eig) - ref[-1]) < 1e-8
    # Full Krylov space: every Ritz value is an eigenvalue.
    np.testing.assert_allclose(np.asarray(res.ritz), ref, atol=1e-8)
    assert float(res.residual_norm) < 1e-7
    # min_vec is a unit eigenvector of the smallest eigenvalue.
    x = np.asarray(res.min_vec)
    assert abs(np.linalg.norm(x) - 1.0) < 1e-10
    np.testing.assert_allclose(np.asarray(A) @ x, ref[0] * x, atol=1e-7)


def test_partial_krylov_well_separated():
    rng = np.random.default_rng(1)
    eigs = np.concatenate([[-5.0, 10.0], rng.uniform(-1.0, 1.0, size=48)])
    A = jnp.asarray(_sym_with_spectrum(rng, eigs))
    v0 = jnp.asarray(rng.standard_normal(50))
    res = _run(A, v0, 30)
    assert abs(float(res.min_eig) + 5.0) < 1e-4
    assert abs(float(res.max_eig) - 10.0) < 1e-4
    assert int(res.krylov_dim) == 30
    # Ritz values interlace: all inside the spectrum, ascending.
    r = np.asarray(res.ritz)
    assert np.all(np.diff(r) >= -1e-12)
    assert r[0] >= -5.0 - 1e-9 and r[-1] <= 10.0 + 1e-9


def test_breakdown_small_matrix():
    rng = np.random.default_rng(2)
    eigs = np.array([-2.0, -0.5, 0.3, 1.0, 4.0])
    A = jnp.asarray(_sym_with_spectrum(rng, eigs))
    v0 = jnp.asarray(rng.standard_normal(5))
    res = _run(A, v0, 20)
    for leaf in res:
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert int(res.krylov_dim) == 5
    assert abs(float(res.min_eig) + 2.0) < 1e-10
    assert abs(float(res.max_eig) - 4.0) < 1e-10
    r = np.asarray(res.ritz)
    np.testing.assert_allclose(r[:5], eigs, atol=1e-10)
    np.testing.assert_allclose(r[5:], 4.0, atol=1e-10)
    assert float(res.residual_norm) < 1e-9


def test_invariant_subspace_start():
    """v0 in a 2-D invariant subspace: only those two eigenvalues are visible, no NaN."""
    rng = np.random.default_rng(3)
    n = 12
    eigs = np.linspace(-3.0, 3.0, n)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = jnp.asarray((Q * eigs) @ Q.T)
    v0 = jnp.asarray(0.6 * Q[:, 4] + 0.8 * Q[:, 9])
    res = _run(A, v0, 10)
    assert int(res.krylov_dim) == 2
    assert abs(float(res.min_eig) - eigs[4]) < 1e-10
    assert abs(float(res.max_eig) - eigs[9]) < 1e-10
    assert np.all(np.isfinite(np.asarray(res.ritz)))


def test_eigenvector_start_and_zero_start():
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
    res = _run(A, jnp.array([0.0, 0.0, 2.0, 0.0]), 6)
    assert int(res.krylov_dim) == 1
    assert float(res.min_eig) == pytest.approx(3.0) and float(res.max_eig) == pytest.approx(3.0)
    np.testing.assert_allclose(np.asarray(res.min_vec), [0.0, 0.0, 1.0, 0.0], atol=1e-12)

    res0 = _run(A, jnp.zeros(4), 6)
    assert int(res0.krylov_dim) == 0
    for leaf in res0:
        assert np.all(np.isfinite(np.asarray(leaf)))
    # Zero operator: finite, eigenvalue 0.
    resz = _run(jnp.zeros((4, 4)), jnp.ones(4), 6)
    assert float(resz.min_eig) == 0.0 and float(resz.max_eig) == 0.0
    assert int(resz.krylov_dim) == 1


def test_vmap_batch_of_matrices():
    rng = np.random.default_rng(4)
    B, n = 8, 20
    mats = np.stack([_sym_with_spectrum(rng, rng.uniform(-2, 2, n) * (i + 1)) for i in range(B)])
    v0s = rng.standard_normal((B, n))

    def hvp(M, x):
        return M @ x

    run = jax.jit(jax.vmap(lambda M, v0: lanczos_extremes(partial(hvp, M), v0, n)))
    res = run(jnp.asarray(mats), jnp.asarray(v0s))
    assert res.min_vec.shape == (B, n) and res.ritz.shape == (B, n)
    ref = np.linalg.eigvalsh(mats)
    np.testing.assert_allclose(np.asarray(res.min_eig), ref[:, 0], atol=1e-8)
    np.testing.assert_allclose(np.asarray(res.max_eig), ref[:, -1], atol=1e-8)

    # Mixed breakdown inside one batch: zero start, eigenvector start, regular starts.
    v0s_mixed = v0s.copy()
    v0s_mixed[0] = 0.0
    v0s_mixed[1] = np.linalg.eigh(mats[1])[1][:, 3]  # eigenvector start: krylov_dim == 1
    res_m = run(jnp.asarray(mats), jnp.asarray(v0s_mixed))
    kd = np.asarray(res_m.krylov_dim)
    assert kd[0] == 0 and kd[1] == 1 and np.all(kd[2:] == n)
    assert np.all(np.isfinite(np.asarray(res_m.ritz)))
    np.testing.assert_allclose(np.asarray(res_m.min_eig)[2:], ref[2:, 0], atol=1e-8)
    assert float(res_m.min_eig[1]) == pytest.approx(np.linalg.eigh(mats[1])[0][3], abs=1e-10)


def _quartic(p):
    x, y = p["x"], p["y"]
    quad = 0.5 * jnp.sum(x**2) - 0.7 * jnp.sum(y**2) + 0.3 * jnp.sum(x[:3] * y)
    return quad + 0.25 * jnp.sum(x**4) + jnp.sum(y**2) ** 2 + jnp.sum(x) * jnp.sum(y) ** 2


def test_pytree_helper_matches_dense():
    point = {"x": jnp.linspace(-1.0, 1.0, 5), "y": jnp.array([0.2, -0.4, 0.1])}
    dense = np.asarray(jax.jit(dense_hessian_eigvalsh, static_argnums=0)(_quartic, point))
    assert dense.shape == (8,) and np.all(np.diff(dense) >= 0)
    helper = jax.jit(min_eigenvalue_pytree, static_argnums=(0, 3))
    lo, hi, resid = helper(make_hvp(_quartic), point, jax.random.PRNGKey(0), 8)
    assert abs(float(lo) - dense[0]) < 1e-8
    assert abs(float(hi) - dense[-1]) < 1e-8
    assert float(resid) < 1e-7
    # The Hessian of 0.5|a|^2 is the identity.
    half_sq = dense_hessian_eigvalsh(lambda p: 0.5 * jnp.sum(p["a"] ** 2), {"a": jnp.ones(3)})
    np.testing.assert_allclose(np.asarray(half_sq), np.ones(3))
