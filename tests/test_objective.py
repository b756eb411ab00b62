"""Objective, analytic gradient, value_and_gradient and HVP against autodiff and finite
differences (THEORY.md §1), float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ncflow.maths import objective as obj
from ncflow.maths.objective import Params
from ncflow.problem import Problem

# The bias modes of THEORY.md §1 (A, C, B) and the rescaled MSE.
PROBLEMS = {
    "unregularized": dict(K=4, d=6, n=3, lambda_w=3e-2, lambda_h=7e-3, dtype="float64"),
    "regularized": dict(K=4, d=6, n=3, lambda_w=3e-2, lambda_h=7e-3, lambda_b=0.2, dtype="float64"),
    "bias-free": dict(K=4, d=6, n=3, lambda_w=3e-2, lambda_h=7e-3, bias=False, dtype="float64"),
    "rescaled-mse": dict(K=4, d=6, n=3, lambda_w=3e-2, lambda_h=7e-3, loss="rescaled-mse",
                         alpha=3.0, target_scale=2.0, dtype="float64"),
    "rescaled-mse-reg-bias": dict(K=3, d=2, n=4, lambda_w=1e-1, lambda_h=2e-2, lambda_b=0.5,
                                  loss="rescaled-mse", alpha=0.5, target_scale=1.5, dtype="float64"),
}
# Jitted entry points (eager dispatch compiles op by op and is slow on CPU). The Problem is a
# pytree: its sizes/flags are static aux data, its coefficients are traced leaves.
@jax.jit
def evaluate(p: Problem, x: Params) -> dict:
    """Everything the tests compare at one point, in one compiled program per problem shape."""
    return {
        "f": obj.objective(p, x),
        "g": obj.gradient(p, x),
        "g_ad": jax.grad(obj.objective, argnums=1)(p, x),
        "vg": obj.value_and_gradient(p, x),
        "gn": obj.gradient_norm(p, x),
        "sq": obj.tree_sq_norm(x),
        "R": obj.residual(p, x),
    }


def objective_j(p, x):
    return evaluate(p, x)["f"]


def gradient_j(p, x):
    return evaluate(p, x)["g"]


hvp_j = jax.jit(obj.hvp)

TINY = {
    "unregularized": dict(K=3, d=2, n=2, lambda_w=3e-2, lambda_h=7e-3, dtype="float64"),
    "regularized": dict(K=3, d=2, n=2, lambda_w=3e-2, lambda_h=7e-3, lambda_b=0.2, dtype="float64"),
    "bias-free": dict(K=3, d=2, n=2, lambda_w=3e-2, lambda_h=7e-3, bias=False, dtype="float64"),
    "rescaled-mse": dict(K=3, d=2, n=2, lambda_w=3e-2, lambda_h=7e-3, loss="rescaled-mse",
                         alpha=3.0, target_scale=2.0, dtype="float64"),
}


def random_params(p: Problem, seed: int, scale=1.0) -> Params:
    """A random point (numpy RNG: jax.random compiles slowly on CPU)."""
    rng = np.random.default_rng(seed)
    W = scale * rng.standard_normal((p.K, p.d))
    H = scale * rng.standard_normal((p.d, p.N))
    # A bias-free problem carries b as a zero vector (objective.py module doc).
    b = rng.standard_normal(p.K) if p.bias else np.zeros(p.K)
    # numpy leaves: the tests' own arithmetic stays in numpy (eager jnp ops compile one by one).
    return Params(*(np.asarray(a, p.dtype) for a in (W, H, b)))


def flat(tree):
    """The leaves of a pytree as one numpy vector, in ravel_pytree order."""
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(tree)])


def unflat(like: Params, v) -> Params:
    """Inverse of ``flat`` for a Params shaped like ``like`` (numpy)."""
    out, i = [], 0
    for a in like:
        out.append(np.asarray(v[i:i + a.size]).reshape(a.shape))
        i += a.size
    return Params(*out)


def rel_err(a, b):
    a, b = flat(a), flat(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def reference_objective(p: Problem, x: Params) -> float:
    """THEORY.md §1 written out in numpy, sample by sample (independent of objective.py)."""
    W, H, b = (np.asarray(a) for a in x)
    lw, lh, lb = float(p.lambda_w), float(p.lambda_h), float(p.lambda_b)
    alpha, M = (float(p.alpha), float(p.target_scale)) if p.loss == "rescaled-mse" else (1.0, 1.0)
    total = 0.0
    for i in range(p.N):
        y = i // p.n  # class-major columns
        z = W @ H[:, i] + (b if p.bias else 0.0)
        total += alpha * (z[y] - M) ** 2 + sum(z[j] ** 2 for j in range(p.K) if j != y)
    f = total / (2 * p.N) + lw / 2 * np.sum(W**2) + lh / 2 * np.sum(H**2)
    if p.bias:
        f += lb / 2 * np.sum(b**2)
    return f


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("K,n", [(2, 1), (3, 4), (5, 2)])
def test_labels_class_major(K, n):
    p = Problem(K=K, d=2, n=n, dtype="float64")
    Y = np.asarray(obj.labels(p))
    assert Y.shape == (K, n * K)
    assert Y.dtype == np.float64
    expect = np.zeros((K, n * K))
    for i in range(n * K):
        expect[i // n, i] = 1.0  # column i belongs to class i // n
    np.testing.assert_array_equal(Y, expect)


def test_targets_and_weights():
    p = Problem(**PROBLEMS["rescaled-mse"])
    T, Om = obj.targets_and_weights(p)
    Y = np.asarray(obj.labels(p))
    np.testing.assert_array_equal(np.asarray(T), 2.0 * Y)
    np.testing.assert_array_equal(np.asarray(Om), 1.0 + 2.0 * Y)
    T, Om = obj.targets_and_weights(Problem(**PROBLEMS["unregularized"]))
    assert Om is None
    np.testing.assert_array_equal(np.asarray(T), np.asarray(obj.labels(Problem(**PROBLEMS["unregularized"]))))


# ----------------------------------------------------------------------------- objective value
@pytest.mark.parametrize("name", PROBLEMS)
def test_objective_matches_definition(name):
    p = Problem(**PROBLEMS[name])
    x = random_params(p, 1, 0.5)
    f = float(objective_j(p, x))
    assert abs(f - reference_objective(p, x)) <= 1e-12 * abs(f)


def test_objective_at_zero():
    # W = H = 0, b = 0: f = ||Y||²/(2N) = 1/2.
    p = Problem(K=5, d=3, n=4, lambda_w=0.1, lambda_h=0.2, lambda_b=0.3, dtype="float64")
    x = Params(np.zeros((5, 3)), np.zeros((3, 20)), np.zeros(5))
    assert float(objective_j(p, x)) == pytest.approx(0.5, rel=1e-15)


def test_bias_free_objective_ignores_b():
    # Bias-free (case B) means b ≡ 0: the objective may not depend on the (unused) b leaf.
    p = Problem(**PROBLEMS["bias-free"])
    x = random_params(p, 2)
    x_b = x._replace(b=np.ones(p.K))
    assert float(objective_j(p, x_b)) == pytest.approx(float(objective_j(p, x)), rel=1e-14)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_autodiff(name, seed):
    p = Problem(**PROBLEMS[name])
    x = random_params(p, seed)
    out = evaluate(p, x)
    g, g_ad = out["g"], out["g_ad"]
    # W and H blocks, then the whole gradient (b included: for a bias-free problem the
    # analytic ∇b is forced to 0, so autodiff must agree that f does not depend on b).
    assert rel_err(g.W, g_ad.W) < 1e-12
    assert rel_err(g.H, g_ad.H) < 1e-12
    if not p.bias:
        np.testing.assert_array_equal(np.asarray(g.b), 0.0)
    assert rel_err(g, g_ad) < 1e-12


@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_matches_formula(name):
    # ∇_W = R Hᵀ + λ_W W, ∇_H = Wᵀ R + λ_H H, ∇_b = R 1 + λ_b b with R = Ω⊙(WH + b1ᵀ − T)/N.
    p = Problem(**PROBLEMS[name])
    x = random_params(p, 3)
    W, H, b = (np.asarray(a) for a in x)
    Y = np.asarray(obj.labels(p))
    if p.loss == "rescaled-mse":
        T, Om = float(p.target_scale) * Y, 1 + (float(p.alpha) - 1) * Y
    else:
        T, Om = Y, np.ones_like(Y)
    R = Om * (W @ H + b[:, None] - T) / p.N
    g = evaluate(p, x)["g"]
    np.testing.assert_allclose(np.asarray(g.W), R @ H.T + float(p.lambda_w) * W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(g.H), W.T @ R + float(p.lambda_h) * H, rtol=1e-12, atol=1e-14)
    gb = R.sum(1) + float(p.lambda_b) * b if p.bias else np.zeros(p.K)
    np.testing.assert_allclose(np.asarray(g.b), gb, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(evaluate(p, x)["R"]), R, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_central_differences(name):
    p = Problem(**PROBLEMS[name])
    x = random_params(p, 4, 0.7)
    g = gradient_j(p, x)

    def f(q):
        return objective_j(p, q)

    h = 1e-6
    for seed in range(4):
        v = random_params(p, 100 + seed)  # b-tangent zero when bias-free
        vnorm = np.linalg.norm(flat(v))
        v = Params(*(a / vnorm for a in v))
        plus = Params(*(a + h * t for a, t in zip(x, v)))
        minus = Params(*(a - h * t for a, t in zip(x, v)))
        fd = (float(f(plus)) - float(f(minus))) / (2 * h)
        dd = float(np.dot(flat(g), flat(v)))
        assert abs(fd - dd) <= 1e-7 * max(abs(dd), 1e-3), (seed, fd, dd)


@pytest.mark.parametrize("name", PROBLEMS)
def test_value_and_gradient(name):
    p = Problem(**PROBLEMS[name])
    x = random_params(p, 5)
    out = evaluate(p, x)
    f, g = out["vg"]
    assert abs(float(f) - float(out["f"])) <= 1e-14 * abs(float(f))
    assert rel_err(g, out["g"]) < 1e-14
    assert isinstance(g, Params)


@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_norm(name):
    p = Problem(**PROBLEMS[name])
    x = random_params(p, 6)
    out = evaluate(p, x)
    expect = np.linalg.norm(flat(out["g"]))
    assert float(out["gn"]) == pytest.approx(expect, rel=1e-13)
    assert float(out["sq"]) == pytest.approx(np.sum(flat(x) ** 2), rel=1e-13)


def test_vmap_over_points():
    p = Problem(**PROBLEMS["regularized"])
    pts = [random_params(p, 7 + i) for i in range(3)]
    xs = Params(*(np.stack(a) for a in zip(*pts)))
    fs, gs = jax.jit(jax.vmap(obj.value_and_gradient, in_axes=(None, 0)))(p, xs)
    gs = Params(*(np.asarray(a) for a in gs))
    for i, xi in enumerate(pts):
        assert float(fs[i]) == pytest.approx(float(objective_j(p, xi)), rel=1e-14)
        assert rel_err(Params(*(a[i] for a in gs)), gradient_j(p, xi)) < 1e-14


def test_vmap_over_coefficients():
    # Problems that differ only in coefficients batch in one compiled program (problem.py doc).
    lws, lbs = np.array([1e-3, 2e-2, 0.3]), np.array([0.0, 0.1, 0.5])
    batch = Problem(K=3, d=2, n=2, lambda_w=lws, lambda_h=np.full(3, 7e-3),
                    lambda_b=lbs, alpha=np.ones(3), target_scale=np.ones(3), dtype="float64")
    x = random_params(Problem(K=3, d=2, n=2, dtype="float64"), 11)
    fs, gs = jax.jit(jax.vmap(obj.value_and_gradient, in_axes=(0, None)))(batch, x)
    gs = Params(*(np.asarray(a) for a in gs))
    for i in range(3):
        pi = Problem(K=3, d=2, n=2, lambda_w=float(lws[i]), lambda_h=7e-3, lambda_b=float(lbs[i]), dtype="float64")
        assert float(fs[i]) == pytest.approx(float(objective_j(pi, x)), rel=1e-14)
        assert rel_err(Params(*(a[i] for a in gs)), gradient_j(pi, x)) < 1e-14


def test_float32_problem_stays_float32():
    p = Problem(K=3, d=2, n=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float32")
    x = Params(np.ones((3, 2), np.float32), np.ones((2, 6), np.float32), np.zeros(3, np.float32))
    assert objective_j(p, x).dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in gradient_j(p, x))


# ----------------------------------------------------------------------------- Hessian-vector products
@jax.jit
def _hessian_and_hvp_matrix(p: Problem, x: Params):
    """Dense Hessian of f on the raveled (W, H, b), and the matrix whose columns are hvp(e_i)."""
    v, unravel = ravel_pytree(x)
    Hm = jax.hessian(lambda u: obj.objective(p, unravel(u)))(v)
    cols = jax.vmap(lambda e: ravel_pytree(obj.hvp(p, x, unravel(e)))[0])(jnp.eye(v.size, dtype=v.dtype))
    return Hm, cols.T


@pytest.mark.parametrize("name", TINY)
def test_hvp_matches_dense_hessian(name):
    # hvp applied to every basis tangent (b included) rebuilds the dense jax.hessian of f, so
    # it is a symmetric Hessian (Lanczos relies on it); random products agree too.
    p = Problem(**TINY[name])
    x = random_params(p, 8)
    v = flat(x)
    Hm, J = _hessian_and_hvp_matrix(p, x)
    Hm, J = np.asarray(Hm), np.asarray(J)
    scale = np.abs(Hm).max()
    rng = np.random.default_rng(0)
    for _ in range(3):
        t = rng.standard_normal(v.size)
        if not p.bias:  # tangents of a bias-free problem live in (W, H)
            t[-p.K:] = 0.0
        got = flat(hvp_j(p, x, unflat(x, t)))
        want = Hm @ t
        assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    assert np.abs(J - J.T).max() <= 1e-13 * scale, "hvp is not symmetric"
    assert np.abs(J - Hm).max() <= 1e-13 * scale, "hvp differs from the dense Hessian"
