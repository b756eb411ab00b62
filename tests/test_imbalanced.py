"""THEORY §7: any class sizes, any targets. Closed forms against §7's reference values, against
today's balanced theory for equal sizes, against the secular equation, and against long float64
gradient descent on random problems over every mode (merge/vanish and d < K−1 included)."""

import itertools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.errors import ProblemError
from ncflow.maths import imbalanced as im
from ncflow.maths import objective as O
from ncflow.maths import theory
from ncflow.problem import Problem

REF = dict(d=5, lambda_w=0.01, lambda_h=0.01)


# ------------------------------------------------------------------ the problem
def test_problem_sizes_set_k_and_n():
    p = Problem(class_sizes=(40, 10, 2, 2))
    assert (p.K, p.N, p.general) == (4, 54, True)
    assert Problem(class_sizes="3,2").class_sizes == (3, 2)
    assert not Problem().general


@pytest.mark.parametrize("kw, field", [
    (dict(class_sizes=(0, 3)), "class_sizes"),
    (dict(class_sizes=(3,)), "class_sizes"),
    (dict(class_sizes=(2.5, 3)), "class_sizes"),
    (dict(class_sizes=(True, 3)), "class_sizes"),
    (dict(class_sizes="4,x"), "class_sizes"),
    (dict(K=5, class_sizes=(1, 2, 3)), "class_sizes"),
    (dict(class_sizes=(2**24 + 1, 1)), "class_sizes"),
    (dict(targets=np.full((3, 4), np.nan)), "targets"),
    (dict(targets=np.ones(4)), "targets"),
    (dict(targets=np.ones((3, 4)), labels=np.array([0, 1, 2, 3])), "labels"),
    (dict(targets=np.ones((3, 4)), labels=np.array([0, 1, 1, 1])), "labels"),
    (dict(targets=np.ones((3, 4)), labels=np.array([0, 1, 2])), "labels"),
    (dict(targets=np.ones((3, 4)), class_sizes=(1, 1, 1)), "class_sizes"),
    (dict(class_sizes=(3, 2), loss="rescaled-mse"), "class_sizes"),
])
def test_problem_refuses_bad_sizes_targets_labels(kw, field):
    with pytest.raises(ProblemError) as e:
        Problem(**kw)
    assert e.value.field == field and str(e.value).startswith(field)


# ------------------------------------------------------------------ §7 reference values
def test_reference_values_unregularized():
    o = im.optimum(Problem(class_sizes=(9, 7, 4, 2), **REF))
    assert o.objective == pytest.approx(0.0623404922, abs=1e-10)
    np.testing.assert_allclose(o.w_norms, [1.346558, 1.304870, 1.177980, 1.000255], atol=1e-6)
    np.testing.assert_allclose(o.h_norms, [0.405477, 0.482323, 0.626436, 0.783011], atol=1e-6)
    np.testing.assert_allclose(o.bias, np.array([9, 7, 4, 2]) / 22, rtol=1e-14)


def test_reference_values_bias_free_and_regularized():
    assert im.optimum(Problem(class_sizes=(9, 7, 4, 2), bias=False, **REF)).objective == \
        pytest.approx(0.0861996487, abs=1e-10)
    o = im.optimum(Problem(class_sizes=(10, 6, 3, 2), bias=False, d=5, lambda_w=0.08, lambda_h=0.07))
    assert o.objective == pytest.approx(0.4207800807, abs=1e-10)
    assert o.vanished == (3,) and o.w_norms[3] == 0
    o = im.optimum(Problem(class_sizes=(9, 7, 4, 2), lambda_b=0.03, **REF))
    assert o.objective == pytest.approx(0.0666872591, abs=1e-10)
    np.testing.assert_allclose(o.bias, [0.363402, 0.299743, 0.194383, 0.112954], atol=1e-6)
    assert o.bias_bound <= 1e-12  # the root's certificate: ||b − b*|| <= ||∇F||/λ_b


def test_nc2_nc3_against_etf_are_not_zero_under_imbalance():
    """§7: NC2/NC3 against the simplex ETF are 0.259 / 0.274 for [9,7,4,2], λ = 1e-2, (A)."""
    from ncflow.maths.metrics import ClassStats, nc_metrics
    p = Problem(class_sizes=(9, 7, 4, 2), **REF)
    W, H, b = im.minimizer(p)
    M = np.stack([H[:, p.label_vector() == k].mean(axis=1) for k in range(4)], axis=1)
    nc = nc_metrics(ClassStats(jnp.asarray(W), jnp.asarray(M), jnp.zeros((5, 5)), jnp.asarray(b),
                               jnp.asarray(p.sizes)), p.N)
    assert float(nc.nc2) == pytest.approx(0.259, abs=1e-3)
    assert float(nc.nc3) == pytest.approx(0.274, abs=1e-3)
    assert float(nc.nc4) == pytest.approx(float(np.linalg.norm(p.sizes / p.N)), rel=1e-10)


@pytest.mark.parametrize("sizes", [(9, 7, 4, 2), (40, 10, 2, 2), (5, 5, 3, 3, 3, 1), (7, 7), (1, 2, 3, 4, 5, 6)])
def test_secular_equation_spectrum(sizes):
    n = np.asarray(sizes, float)
    C = np.diag(n) - np.outer(n, n) / n.sum()
    np.testing.assert_allclose(im.secular_spectrum(sizes), np.linalg.eigvalsh(C)[::-1], atol=1e-12 * n.max())
    o = im.optimum(Problem(class_sizes=sizes, d=len(sizes), lambda_w=1e-9, lambda_h=1e-9))
    np.testing.assert_allclose(o.sigma**2, im.secular_spectrum(sizes), atol=1e-10 * n.max())


def test_two_level_thresholds():
    """(A), two levels: minorities merge iff n_min <= N²λ_Wλ_H and vanish iff K n_maj n_min/N <= N²λ_Wλ_H."""
    sizes = (40, 10, 2, 2)
    N = sum(sizes)

    def state(lam):
        o = im.optimum(Problem(class_sizes=(40, 40, 2, 2), d=5, lambda_w=lam, lambda_h=lam))
        return o.merged, o.vanished

    N, n_maj, n_min, K = 84, 40, 2, 4
    merge_at = math.sqrt(n_min) / N  # λ where N²λ² = n_min
    vanish_at = math.sqrt(K * n_maj * n_min / N) / N
    assert state(0.9 * merge_at) == ((), ())
    assert state(1.1 * merge_at) == (((2, 3),), ())
    assert state(0.99 * vanish_at) == (((2, 3),), ())
    assert state(1.01 * vanish_at)[1] == (2, 3)


def test_bias_free_minority_collapse_threshold():
    """(B): w_k = h_k = 0 iff n_k <= N²λ_Wλ_H."""
    sizes = (30, 12, 3, 1)
    N = sum(sizes)
    for lam in np.geomspace(1e-3, 0.2, 25):
        o = im.optimum(Problem(class_sizes=sizes, bias=False, d=4, lambda_w=lam, lambda_h=lam))
        expect = tuple(k for k, n in enumerate(sizes) if n <= N**2 * lam**2)
        assert o.vanished == expect


def test_regularized_bias_closed_form_equals_root():
    """(C) above the threshold: the one-hot closed form (b*_k = τ√n_k/λ_b, W Wᵀ = κ²Â,
    f* = f*_B − Nλ_Wλ_H/(2λ_b)) equals the root of F solved numerically."""
    p = Problem(class_sizes=(9, 7, 4, 2), lambda_b=5.0, **REF)
    closed = im.optimum(p)
    assert closed.bias_bound == 0.0
    tau, N, n = 0.01, 22, np.array([9, 7, 4, 2.0])
    np.testing.assert_allclose(closed.bias, tau * np.sqrt(n) / 5.0, rtol=1e-14)
    fB = im.optimum(Problem(class_sizes=(9, 7, 4, 2), bias=False, **REF)).objective
    assert closed.objective == pytest.approx(fB - N * 1e-4 / 10.0, rel=1e-13)
    A = np.diag(np.sqrt(n)) - N * tau * np.eye(4) - (tau / 5.0) * np.outer(np.sqrt(n), np.sqrt(n))
    np.testing.assert_allclose(closed.gram_w, A, atol=1e-13)
    b, bound = im._bias_root(im.basis(p), tau, 5.0, p.d, [np.zeros(4)])
    np.testing.assert_allclose(b, closed.bias, atol=1e-12)
    assert bound < 1e-12


def test_any_target_soft_thresholding():
    """Label smoothing (1−ε)Y + ε/K and a regression target: f* = Σ φ(σ_j) of T (B) or T P_N (A)."""
    rng = np.random.default_rng(3)
    lab = np.repeat(np.arange(3), [5, 3, 2])
    for T in (0.9 * np.eye(3)[:, lab] + 0.1 / 3, rng.normal(size=(3, 10))):
        for bias in (False, True):
            p = Problem(targets=T, labels=lab, bias=bias, d=3, lambda_w=0.02, lambda_h=0.03)
            N, tau = 10, math.sqrt(0.02 * 0.03)
            A = T - T.mean(axis=1, keepdims=True) if bias else T
            s = np.linalg.svd(A, compute_uv=False)
            assert im.optimum(p).objective == pytest.approx(float(np.sum(im.phi(s, N, tau))), rel=1e-13)


# ------------------------------------------------------------------ balanced limit
BALANCED = [dict(), dict(lambda_b=5e-3), dict(bias=False), dict(lambda_w=0.2, lambda_h=0.1, lambda_b=0.1),
            dict(lambda_b=3.0), dict(d=2), dict(d=3, lambda_b=3.0), dict(d=2, bias=False),
            dict(lambda_w=1e-2, lambda_h=2e-3)]


@pytest.mark.parametrize("kw", BALANCED)
def test_equal_sizes_give_the_balanced_theory(kw):
    full = {"d": 8, "lambda_w": 5e-3, "lambda_h": 5e-3, **kw}
    a = theory.predict(Problem(K=4, n=5, **full))
    b = theory.predict(Problem(class_sizes=(5, 5, 5, 5), **full))
    assert b.objective == pytest.approx(a.objective, rel=1e-13, abs=1e-15)
    assert (b.rank, b.w_norm is None) == (a.rank, a.w_norm is None)
    assert b.w_norm == pytest.approx(a.w_norm, rel=1e-12, abs=1e-14)
    assert b.h_norm == pytest.approx(a.h_norm, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(b.spectrum, a.spectrum, rtol=1e-12, atol=1e-13)
    assert (a.gram is None) == (b.gram is None)
    if a.gram is not None:
        np.testing.assert_allclose(b.gram, a.gram, atol=1e-12)
        np.testing.assert_allclose(b.gram_h, a.gram_h, atol=1e-12)
        np.testing.assert_allclose(b.outputs, a.outputs, atol=1e-12)
    if a.bias is not None:
        np.testing.assert_allclose(b.bias_vector, a.bias, rtol=1e-12)
    assert (b.merged, b.vanished) == (a.merged, a.vanished) == ((), () if a.rank else (0, 1, 2, 3))


# ------------------------------------------------------------------ landscape (A), (B)
@pytest.mark.parametrize("bias", [True, False])
def test_critical_points_are_stationary_with_predicted_values_and_curvature(bias):
    p = Problem(class_sizes=(6, 4, 2), bias=bias, d=3, lambda_w=0.02, lambda_h=0.03, dtype="float64")
    alive = im.alive_strengths(p).size
    f_star = im.optimum(p).objective
    values = []
    for r in range(alive + 1):
        for S in itertools.combinations(range(alive), r):
            W, H, b = im.critical_point(p, S)
            x = O.Params(jnp.asarray(W), jnp.asarray(H), jnp.asarray(b))
            assert float(O.gradient_norm(p, x)) < 1e-12
            f = float(O.objective(p, x))
            assert f == pytest.approx(im.critical_value(p, S), rel=1e-12)
            values.append(f)
            if len(S) < alive:  # a strict saddle, curvature at most the bound
                flat, unravel = jax.flatten_util.ravel_pytree(x)
                hess = jax.hessian(lambda v, u=unravel: O.objective(p, u(v)))(flat)
                lam = np.linalg.eigvalsh(np.asarray(hess))[0]
                bound = im.saddle_curvature_bound(p, S)
                assert lam <= bound + 1e-10 and bound < 0
    assert min(values) == pytest.approx(f_star, rel=1e-12)
    others = sorted(v for v in values if v > f_star + 1e-12)
    assert others[0] - f_star == pytest.approx(im.saddle_gap(p), rel=1e-9)


# ------------------------------------------------------------------ long float64 GD
def _long_gd(problem, seed, max_steps=300_000, gtol=1e-11):
    K, d, N = problem.K, problem.d, problem.N
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = O.Params(jax.random.normal(k1, (K, d)) / np.sqrt(d), jax.random.normal(k2, (d, N)) / np.sqrt(d),
                 jnp.zeros(K))
    lr = 0.9 * theory.default_step_size(problem)

    @jax.jit
    def chunk(x):
        x = jax.lax.fori_loop(0, 2000, lambda i, x: jax.tree_util.tree_map(
            lambda a, g: a - lr * g, x, O.gradient(problem, x)), x)
        return x, O.gradient_norm(problem, x)

    for _ in range(max_steps // 2000):
        x, g = chunk(x)
        if g < gtol:
            break
    return x


def _random_problem(rng, mode):
    K = int(rng.integers(3, 6))
    kind = rng.choice(["sizes", "twolevel", "targets"])
    lw, lh = np.exp(rng.uniform(np.log(4e-3), np.log(6e-2), 2))
    kw = dict(d=int(rng.choice([K + 1, K, K - 1, max(1, K - 2)])), lambda_w=float(lw), lambda_h=float(lh),
              dtype="float64")
    if mode == "B":
        kw["bias"] = False
    if mode == "C":
        kw["lambda_b"] = float(np.exp(rng.uniform(np.log(1e-2), np.log(3.0))))
    if kind == "sizes":
        kw["class_sizes"] = tuple(int(v) for v in rng.integers(1, 12, K))
    elif kind == "twolevel":
        R = int(rng.integers(1, K))
        kw["class_sizes"] = (int(rng.integers(8, 20)),) * R + (int(rng.integers(1, 4)),) * (K - R)
    else:
        lab = np.repeat(np.arange(K), rng.integers(1, 6, K))
        kw["targets"] = 0.8 * np.eye(K)[:, lab] + 0.2 / K + 0.3 * rng.normal(size=(K, lab.size))
        kw["labels"] = lab
    return Problem(**kw)


@pytest.mark.parametrize("i", range(24))
def test_closed_forms_match_long_float64_gd(i):
    mode = "ABC"[i % 3]
    p = _random_problem(np.random.default_rng(1000 + i), mode)
    o = im.optimum(p)
    x = _long_gd(p, seed=i)
    f = float(O.objective(p, x))
    assert f == pytest.approx(o.objective, rel=1e-9)
    W = np.asarray(x.W)
    spec = np.sort(np.linalg.eigvalsh(W @ W.T))[::-1]
    np.testing.assert_allclose(spec[: o.kept], np.sort(np.linalg.eigvalsh(o.gram_w))[::-1][: o.kept], atol=1e-6)
    if o.gram_unique:
        np.testing.assert_allclose(W @ W.T, o.gram_w, atol=1e-6 * max(1.0, np.abs(o.gram_w).max()))
        lab = p.label_vector()
        if lab is not None:
            H = np.asarray(x.H)
            M = np.stack([H[:, lab == k].mean(axis=1) for k in range(p.K)], axis=1)
            np.testing.assert_allclose(M.T @ M, o.gram_h, atol=1e-6 * max(1.0, np.abs(o.gram_h).max()))
            np.testing.assert_allclose(W @ M, o.cross, atol=1e-6 * max(1.0, np.abs(o.cross).max()))
        for k in o.vanished:
            assert np.linalg.norm(W[k]) < 1e-5
        for group in o.merged:
            for i, j in itertools.combinations(group, 2):
                assert np.linalg.norm(W[i] - W[j]) < 1e-5
    if o.bias is not None:
        np.testing.assert_allclose(np.asarray(x.b), o.bias, atol=1e-6)


def test_random_problems_cover_every_case():
    """The 24 GD problems above include merged and vanished classes, d < K−1 and each mode."""
    seen = set()
    for i in range(24):
        p = _random_problem(np.random.default_rng(1000 + i), "ABC"[i % 3])
        o = im.optimum(p)
        seen |= {"merged"} if o.merged else set()
        seen |= {"vanished"} if o.vanished else set()
        seen |= {"d<K-1"} if p.d < p.K - 1 else set()
        seen |= {"targets"} if p.targets is not None else set()
    assert seen == {"merged", "vanished", "d<K-1", "targets"}
