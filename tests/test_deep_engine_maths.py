"""The deep UFM engines' maths for one run (ncflow.maths.deep_objective, ncflow.maths.deep_collapsed):
the hand-written gradient against autodiff of an objective written here, L = 1 against the UFM's own
objective, collapsed deep linear GD against full GD (THEORY §9.4), convergence to §9.7's A1 value, the
per-layer statistics, the start, and vmap over runs. Float64 (conftest)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.dynamics import spaces, starts
from ncflow.errors import ProblemError
from ncflow.maths import deep
from ncflow.maths import deep_collapsed as dc
from ncflow.maths import deep_objective as do
from ncflow.maths import objective as obj
from ncflow.maths.metrics import class_stats as ufm_class_stats
from ncflow.problem import Problem

from helpers import assert_trees_close, plain_deep_objective

UNEQUAL = (3, 6, 2, 5)
LAMBDA_B = {"unregularized": 0.0, "none": 0.0, "regularized": 0.03}


# ----------------------------------------------------------------------------- written here, independently
_plain_objective = plain_deep_objective  # THEORY §9.1, §9.6, written in tests/helpers.py


def _plain_grad(spec, co, p):
    g = jax.grad(_plain_objective, argnums=2)(spec, co, p)
    return g if spec.bias != "none" else g._replace(b=jnp.zeros_like(g.b))


def _features(spec, p):
    """Every layer's features and pre-activations, numpy, and per-class moments of each."""
    A, feats, pres = np.asarray(p.H), [np.asarray(p.H)], []
    for W in p.Ws[:-1]:
        Z = np.asarray(W) @ A
        pres.append(Z)
        A = np.maximum(Z, 0.0) if spec.activation == "relu" else Z
        feats.append(A)
    lab = np.repeat(np.arange(spec.K), spec.sizes)

    def moments(X):
        M = np.stack([X[:, lab == k].mean(axis=1) for k in range(spec.K)], axis=1)
        E = X - M[:, lab]
        return M, E @ E.T
    return [moments(X) for X in feats], [moments(X) for X in pres]


def _spec(widths, act="linear", bias="unregularized", sizes=UNEQUAL, K=4):
    return do.DeepSpec(K=K, sizes=sizes, widths=widths, activation=act, bias=bias, dtype="float64")


def _coeffs(spec, seed=0):
    lams = [0.004 + 0.003 * i for i in range(spec.L)]
    return do.coeffs(spec, lams, 0.006, LAMBDA_B[spec.bias])


def _point(spec, seed=0, scale=1.0):
    """A Gaussian point with a non-zero bias (zeros bias-free)."""
    p = do.gaussian_start(spec, jax.random.key(seed), scale)
    b = 0.1 * jax.random.normal(jax.random.key(seed + 100), (spec.K,)) if spec.bias != "none" else p.b
    return p._replace(b=b)


def _state_error(spec, x, ref):
    """max over the leaves of two collapsed states of max|x − ref| / scale: max|leaf| for W_l, M and b (0 where
    b = 0, bias-free), and ||H||² = Σ_k n_k ||μ_k||² + tr G for G, the scale its rounding has in full GD (which
    carries H, not G: where G decays far below ||H||² the full run's G = E Eᵀ keeps only absolute accuracy)."""
    h2 = float(dc.sq_norm(spec, ref._replace(Ws=(), b=jnp.zeros_like(ref.b))))
    errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip((*x.Ws, x.M), (*ref.Ws, ref.M))]
    errs.append(float(jnp.max(jnp.abs(x.G - ref.G))) / h2)
    scale_b = float(jnp.max(jnp.abs(ref.b)))
    errs.append(float(jnp.max(jnp.abs(x.b - ref.b))) / scale_b if scale_b > 0 else float(jnp.max(jnp.abs(x.b))))
    return max(errs)


# ----------------------------------------------------------------------------- gradient and HVP
CASES = [(act, bias, sizes) for act, bias in [("linear", "unregularized"), ("linear", "none"),
                                                ("linear", "regularized"), ("relu", "none")]
         for sizes in (5, UNEQUAL)]
WIDTHS = {1: (6,), 2: (6, 9), 3: (5, 9, 7)}


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("act, bias, sizes", CASES)
def test_gradient_equals_autodiff(monkeypatch, L, act, bias, sizes):
    """Value and analytic gradient = jax.grad of the objective written here, in both linear orders."""
    spec = _spec(WIDTHS[L], act, bias, sizes)
    co = _coeffs(spec)
    p = _point(spec, seed=L)
    f_ref, g_ref = _plain_objective(spec, co, p), _plain_grad(spec, co, p)
    orders = (False, True) if act == "linear" else (False,)
    for product in orders:
        monkeypatch.setattr(do, "_product_first", lambda s, product=product: product)
        f, g = do.value_and_gradient(spec, co, p)
        assert float(f) == pytest.approx(float(f_ref), rel=1e-14)
        assert float(do.objective(spec, co, p)) == pytest.approx(float(f_ref), rel=1e-14)
        assert_trees_close(g, g_ref, rtol=1e-12, atol=1e-15)
    if act == "relu" and L > 1:  # the masks really cut something
        assert np.mean(np.asarray(p.Ws[0] @ p.H) <= 0) > 0.3


def test_product_order_is_chosen_by_flops():
    wide = _spec((64, 64, 64), sizes=20, K=10)
    assert do._product_first(wide) and do.flops_per_step(wide) == 6 * 10 * 64 * 200 + 6 * 10 * 64 * 64 * 2
    # a wide H feeding narrow layers: layer by layer is cheaper (6·20·4240 < 6·10·512·20 + 6·10·4160)
    narrow = _spec((512, 8, 8), sizes=2, K=10)
    assert not do._product_first(narrow) and do.flops_per_step(narrow) == 6 * 20 * (8 * 512 + 8 * 8 + 10 * 8)
    assert not do._product_first(_spec((64, 64, 64), "relu", "none", sizes=20, K=10))


@pytest.mark.parametrize("act, bias", [("linear", "regularized"), ("relu", "none")])
def test_hvp_equals_autodiff(act, bias):
    spec = _spec((5, 9, 7), act, bias)
    co = _coeffs(spec)
    p, t = _point(spec, 1), _point(spec, 2)
    ref = jax.jvp(lambda q: _plain_grad(spec, co, q), (p,), (t,))[1]
    assert_trees_close(do.hvp(spec, co, p, t), ref, rtol=1e-11, atol=1e-14)


# ----------------------------------------------------------------------------- L = 1 is the UFM
@pytest.mark.parametrize("bias", ["unregularized", "none", "regularized"])
@pytest.mark.parametrize("sizes", [5, UNEQUAL])
def test_one_layer_is_the_ufm_objective(bias, sizes):
    """At L = 1 value, gradient, statistics, start and flop counts are ncflow.maths.objective's (1e-14)."""
    spec = _spec((8,), "linear", bias, sizes)
    kw = dict(n=sizes) if isinstance(sizes, int) else dict(class_sizes=sizes)
    prob = Problem(K=4, d=8, lambda_w=0.004, lambda_h=0.006, lambda_b=LAMBDA_B[bias], bias=bias != "none",
                   dtype="float64", **kw)
    co = _coeffs(spec)
    start = do.gaussian_start(spec, jax.random.key(3), 0.7)
    assert_trees_close(start.H, starts.gaussian(prob, jax.random.key(3), 0.7).H, rtol=0, atol=0)
    assert_trees_close(start.Ws[0], starts.gaussian(prob, jax.random.key(3), 0.7).W, rtol=0, atol=0)
    p = _point(spec, 4)
    q = obj.Params(p.Ws[0], p.H, p.b)
    f, g = do.value_and_gradient(spec, co, p)
    f1, g1 = obj.value_and_gradient(prob, q)
    assert abs(float(f) - float(f1)) <= 1e-14 * abs(float(f1))
    assert_trees_close((g.Ws[0], g.H, g.b), tuple(g1), rtol=1e-14, atol=1e-16)
    st, st1 = do.last_layer(do.class_stats(spec, p)), ufm_class_stats(prob, q)
    assert_trees_close(st[:4], st1[:4], rtol=1e-13, atol=1e-15)
    assert do.flops_per_step(spec) == spaces.FULL.flops_per_step(prob)
    assert dc.flops_per_step(spec) == spaces.COLLAPSED.flops_per_step(prob)


# ----------------------------------------------------------------------------- collapsed = full
@functools.partial(jax.jit, static_argnames=("spec", "steps"))
def _run_both(spec, co, p, lr, steps):
    """``steps`` GD steps of both engines from p; returns both final states and f along the way."""
    def body(carry, _):
        full, col = carry
        return (do.gd_step(spec, co, full, lr), dc.gd_step(spec, co, col, lr)), \
            (do.objective(spec, co, full), dc.objective(spec, co, col))
    (full, col), fs = jax.lax.scan(body, (p, dc.collapse(spec, p)), None, length=steps)
    return full, col, fs


COLLAPSE_CASES = {  # (widths, bias, sizes, K): A, B, C; balanced and unequal n_k; unequal widths; d_0 < K
    "L2-A-balanced": ((8, 8), "unregularized", 5, 4),
    "L3-C-unequal": ((8, 6, 7), "regularized", UNEQUAL, 4),
    "L3-A-d0<K": ((3, 8, 6), "unregularized", (4, 2, 5, 3, 6), 5),
    "L2-B-d0<K": ((2, 6), "none", (3, 4, 2, 5, 3), 5),
}


@pytest.mark.parametrize("case", COLLAPSE_CASES)
def test_collapsed_gd_equals_full_gd(case):
    """THEORY §9.4: the collapsed state follows full GD to <= 1e-12 relative over 300 steps at η = 0.5 (G relative
    to ||H||²: with d_0 < K it decays to 1e-7 of that, and full GD's G only keeps ~1e-17·||H||² accuracy)."""
    widths, bias, sizes, K = COLLAPSE_CASES[case]
    spec = _spec(widths, "linear", bias, sizes, K)
    co = _coeffs(spec)
    p = _point(spec, 7, scale=1.0)
    full, col, (f_full, f_col) = _run_both(spec, co, p, 0.5, 300)
    assert float(f_full[-1]) < 0.8 * float(f_full[0])  # it really moved
    assert np.max(np.abs(np.asarray(f_full) - np.asarray(f_col)) / np.asarray(f_full)) <= 1e-12
    assert _state_error(spec, col, dc.collapse(spec, full)) <= 1e-12
    f1, g1 = do.value_and_grad_norm(spec, co, full)
    f2, g2 = dc.value_and_grad_norm(spec, co, col)
    assert abs(float(f1 - f2)) <= 1e-12 * float(f1) and abs(float(g1 - g2)) <= 1e-10 * float(g1)


@pytest.mark.parametrize("case", ["L3-C-unequal", "L3-A-d0<K", "L2-B-d0<K"])
def test_collapsed_value_grad_norm_stats_equal_full(case):
    """At a random point: f, ||∇f||, ||θ||² and every layer's class statistics of the collapsed state are the
    full point's, and expand() rebuilds a full point with the same values."""
    widths, bias, sizes, K = COLLAPSE_CASES[case]
    spec = _spec(widths, "linear", bias, sizes, K)
    co = _coeffs(spec)
    p = _point(spec, 11)
    x = dc.collapse(spec, p)
    ref = do.value_and_grad_norm(spec, co, p)
    for got in (dc.value_and_grad_norm(spec, co, x), do.value_and_grad_norm(spec, co, dc.expand(spec, x))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-13)
    assert float(dc.objective(spec, co, x)) == pytest.approx(float(ref[0]), rel=1e-14)
    assert float(dc.sq_norm(spec, x)) == pytest.approx(float(do.sq_norm(p)), rel=1e-14)
    assert_trees_close(dc.class_stats(spec, x), do.class_stats(spec, p), rtol=1e-12, atol=1e-13)
    assert_trees_close(dc.collapse(spec, dc.expand(spec, x)), x, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("act", ["linear", "relu"])
def test_class_stats_per_layer(act):
    """Every layer's class means and scatter (and ReLU's pre-activations) against numpy on the features."""
    spec = _spec((5, 9, 7), act, "none")
    p = _point(spec, 5)
    st = do.class_stats(spec, p)
    feats, pres = _features(spec, p)
    assert len(st.means) == spec.L and len(st.pre_means) == (spec.L - 1 if act == "relu" else 0)
    for (M, G), m, g in zip(feats + pres, st.means + st.pre_means, st.scatters + st.pre_scatters):
        np.testing.assert_allclose(np.asarray(m), M, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(g), G, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.asarray(st.counts), UNEQUAL)


# ----------------------------------------------------------------------------- convergence (THEORY §9.7 A1)
def test_gd_from_near_the_a1_optimum_reaches_f_star():
    """A1 (K=4, n=5, d=8, L=2, λ=5e-3): GD at η = 0.5 from the predicted optimum + N(0, 3e-3²) noise ends at
    THEORY's f* = 0.0380307182 in both engines."""
    pred = deep.predict_deep(K=4, n=5, L=2, widths=(8, 8), lambda_h=5e-3, lambdas=5e-3)
    Ws, H, b = deep.critical_point(pred)
    rng = np.random.default_rng(0)
    noisy = lambda a: jnp.asarray(a + 3e-3 * rng.standard_normal(a.shape))  # noqa: E731
    p = do.DeepParams(tuple(noisy(W) for W in Ws), noisy(H), jnp.asarray(b))
    spec = _spec((8, 8), sizes=5)
    co = do.coeffs(spec, 5e-3, 5e-3)
    assert float(do.objective(spec, co, p)) > 0.0380307182 + 1e-5
    full, col, _ = _run_both(spec, co, p, 0.5, 4000)
    for f, g in (do.value_and_grad_norm(spec, co, full), dc.value_and_grad_norm(spec, co, col)):
        assert float(f) == pytest.approx(0.0380307182, abs=1e-10)
        assert float(g) < 1e-8


# ----------------------------------------------------------------------------- start and vmap
def test_gaussian_start_law():
    """Entries of W_l are N(0, s²/d_{l−1}) (fan-in) and of H N(0, s²/d_0): sample variances within 5 standard
    errors (√(2/m) relative for m entries)."""
    spec = _spec((200, 50), "linear", "none", sizes=3, K=10)
    s = 0.8
    p = do.gaussian_start(spec, jax.random.key(1), s)
    for X, fan_in in ((p.Ws[0], 200), (p.Ws[1], 50), (p.H, 200)):
        m = X.size
        ratio = float(jnp.mean(X**2)) / (s * s / fan_in)
        assert abs(ratio - 1) < 5 * np.sqrt(2 / m), (X.shape, ratio)
    assert not np.any(np.asarray(p.b))
    x = dc.gaussian_start(spec, jax.random.key(1), s)
    assert_trees_close(x, dc.collapse(spec, p), rtol=0, atol=0)


def test_vmap_over_keys_and_per_lane_lambdas():
    """A batch of runs (jax.vmap over keys and per-lane coefficients) = the runs one by one."""
    spec = _spec((6, 9, 5), "linear", "regularized")
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
    lams = jnp.array([[0.004, 0.005, 0.006], [0.01, 0.002, 0.003], [0.0, 0.1, 0.02]])
    lh, lb = jnp.array([0.006, 0.001, 0.02]), jnp.array([0.03, 0.0, 0.5])
    cos = jax.vmap(lambda a, h, c: do.coeffs(spec, a, h, c))(lams, lh, lb)  # traced values are not checked
    assert_trees_close(cos, do.DeepCoeffs(lams, lh, lb), rtol=0, atol=0)

    def run(key, co):
        p = do.gaussian_start(spec, key, 1.0)
        full, col, _ = _run_both(spec, co, p, 0.3, 50)
        return full, col, dc.value_and_grad_norm(spec, co, col), dc.gaussian_start(spec, key, 1.0)

    batch = jax.jit(jax.vmap(run))(keys, cos)
    for i in range(3):
        one = run(keys[i], do.DeepCoeffs(lams[i], lh[i], lb[i]))
        assert_trees_close(jax.tree_util.tree_map(lambda a, i=i: a[i], batch), one, rtol=1e-12, atol=1e-14)
    assert float(jnp.std(batch[2][0])) > 0  # the lanes differ


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, field", [
    (dict(K=1), "K"), (dict(sizes=(5, 5)), "sizes"), (dict(sizes=0), "sizes"), (dict(widths=()), "widths"),
    (dict(widths=(4, 0)), "widths"), (dict(activation="tanh"), "activation"), (dict(bias="both"), "bias"),
    (dict(activation="relu", bias="unregularized"), "bias"), (dict(dtype="float16"), "dtype"),
])
def test_spec_refuses_bad_input(kw, field):
    args = dict(K=4, sizes=5, widths=(4, 4), activation="linear", bias="unregularized", dtype="float64") | kw
    with pytest.raises(ProblemError) as e:
        do.DeepSpec(**args)
    assert e.value.field == field and str(e.value).startswith(field)


def test_coeffs_and_collapsed_refuse_bad_input():
    spec = _spec((4, 4))
    with pytest.raises(ProblemError, match="^lambdas"):
        do.coeffs(spec, [0.1, 0.1, 0.1], 0.1)
    with pytest.raises(ProblemError, match="^lambda_h"):
        do.coeffs(spec, 0.1, float("nan"))
    relu = _spec((4, 4), "relu", "none")
    with pytest.raises(ProblemError, match="^activation"):
        dc.collapse(relu, _point(relu))
