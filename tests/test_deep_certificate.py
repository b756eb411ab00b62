"""The early certificate at depth L for the deep linear UFM (THEORY §8 with §9.3's f_sad and L_deep;
issue 22.4).

- L_deep at m = 2 is §8's L(f) (the deep formula against the one-layer ``hessian_bound``);
- L_deep bounds the Hessian's largest |eigenvalue| at random points of the sublevel set {f <= F}
  (F = f at the point itself, the tightest; dense Hessian from ``deep_objective.hvp``), including
  strongly imbalanced points, at several L and per-layer λ's;
- soundness: on small random deep linear problems (c below c_glob) at a step with η·L_deep < 2, every
  run certified global, continued with plain GD, reaches f* (every non-global critical value is at
  least f_sad − f* above it);
- at lr 0.5 on THEORY §9.7's A1 no run is certified and the report says what step the certificate
  needs; the deep ReLU UFM has no certificate; the wide plan certifies like the cpu plan.

Expected values come from the theory (``theory.predict``) or exact linear algebra, never from the
engine's own output. Float64 via conftest.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ncflow
from ncflow.maths import certificate, deep, theory
from ncflow.maths import deep_objective as do
from ncflow.problem import Problem

#: THEORY §9.7, A1: K=4, n=5, d=8, L=2, λ=5e-3 (A)
A1 = dict(K=4, n=5, d=8, depth=2, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")


def _stack(problem):
    return np.asarray([problem.lambda_h, *problem.layer_lambdas], np.float64)


@pytest.mark.parametrize("kw", [dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3),
                                dict(K=3, d=2, n=7, lambda_w=2e-2, lambda_h=1e-4, bias=False),
                                dict(K=5, d=6, n=3, lambda_w=1e-3, lambda_h=3e-2, lambda_b=0.2)])
def test_l_deep_at_m2_is_the_one_layer_bound(kw):
    p = Problem(dtype="float64", **kw)
    f = np.array([0.0, 1e-3, 0.05, 0.3, 2.0])
    lb = p.lambda_b
    got = certificate.deep_hessian_bound(f, [p.lambda_h, p.lambda_w], p.N, bias=p.bias, lambda_b=lb)
    np.testing.assert_allclose(got, certificate.hessian_bound(p, f), rtol=1e-13)
    # §8's formula written out
    want = float(p.bias) + max(p.lambda_w, p.lambda_h, lb if p.bias else 0.0) \
        + 2 * f / (p.N * min(p.lambda_w, p.lambda_h)) + np.sqrt(2 * f / p.N)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_l_deep_reproduces_theory_steps_and_is_infinite_without_decay():
    # THEORY §9.3: K=4, n=5, d=8, λ=5e-3 needs η < 0.032 (L=2), 0.0027 (L=3), 0.0003 (L=4) at f_sad
    for L, eta in ((2, 0.032), (3, 0.0027), (4, 0.0003)):
        p = Problem(K=4, n=5, d=8, depth=L, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")
        got = 2.0 / float(certificate.hessian_bound(p, theory.predict(p).saddle_value))
        assert got == pytest.approx(eta, rel=0.06), (L, got)
    assert np.isinf(certificate.deep_hessian_bound(0.1, [5e-3, 0.0, 5e-3], 20))


def _dense_hessian(spec, co):
    """A jitted map params -> the dense Hessian (symmetrized), column by column from ``do.hvp``."""
    def hess(params):
        flat, unravel = ravel_pytree(params)

        def col(v):
            return ravel_pytree(do.hvp(spec, co, params, unravel(v)))[0]

        Hm = jax.vmap(col)(jnp.eye(flat.size, dtype=flat.dtype))
        return 0.5 * (Hm + Hm.T)
    return jax.jit(hess)


def _rank_one_chain(spec, rng, lams, x):
    """A balanced rank-one chain A_i = t_i v_{i+1} v_iᵀ (unit v_i; λ_i t_i² equal) whose product
    x√n e_1 1_1ᵀ/√n fits class 1's target direction: the Cauchy–Schwarz steps of L_deep's proof are
    nearly tight there once the regularizers dominate f (large λ)."""
    dims = (*spec.widths, spec.K)
    m = spec.L + 1
    n = spec.sizes[0]
    v = [rng.normal(size=k) for k in dims[:-1]]
    v = [a / np.linalg.norm(a) for a in v] + [np.eye(spec.K)[0]]
    cls = np.zeros(spec.N)
    cls[:n] = 1 / math.sqrt(n)
    P2 = n * x * x  # ||product||² = Π_i t_i²;  λ_i t_i² = (P2 Λ)^{1/m}
    u = math.exp((math.log(P2) + sum(math.log(lam) for lam in lams)) / m)
    t = [math.sqrt(u / lam) for lam in lams]
    H = t[0] * np.outer(v[0], cls)
    Ws = tuple(jnp.asarray(t[i] * np.outer(v[i], v[i - 1])) for i in range(1, m))
    return do.DeepParams(Ws, jnp.asarray(H), jnp.zeros(spec.K))


@pytest.mark.parametrize("L,lams,bias,tight", [(2, (5e-3, 5e-3, 5e-3), "unregularized", 1e-3),
                                               (2, (1e-2, 2e-3, 5e-2), "none", 1e-3),
                                               (2, (0.8, 0.8, 0.8), "none", 0.15),
                                               (3, (5e-3, 1e-2, 3e-3, 2e-2), "unregularized", 1e-4),
                                               (3, (0.5, 0.5, 0.5, 0.5), "unregularized", 0.15),
                                               (4, (2e-2, 1e-2, 5e-3, 2e-2, 1e-2), "regularized", 1e-5)])
def test_l_deep_bounds_the_hessian_on_the_sublevel_set(L, lams, bias, tight):
    K, n, d0 = 3, 2, 4
    widths = (d0,) + (3, 4, 3)[: L - 1]
    spec = do.DeepSpec(K=K, sizes=n, widths=widths, bias=bias, dtype="float64")
    lb = 0.1 if bias == "regularized" else 0.0
    co = do.coeffs(spec, lams[1:], lams[0], lb)
    hessian = _dense_hessian(spec, co)
    rng = np.random.default_rng(L)
    ratios = []
    for trial in range(10):
        if trial % 2:  # Gaussian, random per-factor scales: imbalanced chains
            p = do.gaussian_start(spec, jax.random.PRNGKey(trial), 1.0)
            s = np.exp(rng.uniform(-1.0, 1.0, L + 1))
            p = do.DeepParams(tuple(W * s[i + 1] for i, W in enumerate(p.Ws)), p.H * s[0],
                              jnp.asarray(rng.normal(size=K)) if bias != "none" else p.b)
        else:
            p = _rank_one_chain(spec, rng, lams, float(rng.uniform(0.5, 2.0)))
        F = float(do.objective(spec, co, p))  # the point lies in {f <= F}
        eig = np.linalg.eigvalsh(np.asarray(hessian(p)))
        bound = float(certificate.deep_hessian_bound(F, np.asarray(lams), spec.N, bias=bias != "none",
                                                     lambda_b=lb))
        assert max(abs(eig[0]), eig[-1]) <= bound * (1 + 1e-10), (trial, F, eig[[0, -1]], bound)
        ratios.append(eig[-1] / bound)
    assert max(ratios) > tight, ratios  # the points reach where the bound is not vacuous


def test_deep_saddle_gap_is_theory_and_relu_has_none():
    p = Problem(**A1)
    assert certificate.saddle_gap(p) == pytest.approx(0.1503538121 - 0.0380307182, abs=1e-9)  # §9.7 A1
    c = p.c
    assert certificate.saddle_gap(p) == pytest.approx(abs(deep.gain(c, 2)) / (2 * 4), rel=1e-9)  # |Δ(c)|/(2K)
    relu = Problem(K=4, n=5, d=8, depth=3, lambda_w=5e-3, lambda_h=5e-3, activation="relu", bias=False)
    assert certificate.saddle_gap(relu) is None and math.isnan(certificate.step_limit(relu))
    # per-lane hidden λ's (the engine's (lanes, L − 1) array): each lane is its own problem's gap
    hid = np.array([[5e-3, 5e-3], [1e-2, 2e-3]])
    batch = Problem(K=4, n=5, d=8, depth=3, lambda_w=np.array([5e-3, 4e-3]), lambda_h=np.array([5e-3, 6e-3]),
                    lambda_hidden=hid, dtype="float64")
    want = [certificate.saddle_gap(Problem(K=4, n=5, d=8, depth=3, lambda_w=[*hid[i], w], lambda_h=h,
                                           dtype="float64"))
            for i, (w, h) in enumerate(((5e-3, 5e-3), (4e-3, 6e-3)))]
    np.testing.assert_allclose(certificate.saddle_gaps(batch), want, rtol=1e-12)


def test_traced_bounds_take_per_lane_hidden_lambdas():
    hid = np.array([[5e-3, 5e-3], [1e-2, 2e-3], [3e-3, 4e-2]])
    lw, lh = np.array([5e-3, 4e-3, 1e-2]), np.array([5e-3, 6e-3, 2e-3])
    batch = Problem(K=4, n=5, d=8, depth=3, lambda_w=lw, lambda_h=lh, lambda_hidden=hid, dtype="float64")
    f = np.array([0.05, 0.1, 0.2])
    host = certificate.hessian_bound(batch, f)
    traced = jax.jit(lambda prob, x: certificate.hessian_bound(prob, x, jnp))  # the coefficients are leaves
    np.testing.assert_allclose(np.asarray(traced(batch, f)), host, rtol=1e-12)
    for i in range(3):  # lane i is the scalar problem with its own λ's
        one = Problem(K=4, n=5, d=8, depth=3, lambda_w=[*hid[i], lw[i]], lambda_h=lh[i], dtype="float64")
        assert host[i] == pytest.approx(float(certificate.hessian_bound(one, f[i])), rel=1e-13)
    for space in ("deep_full", "deep_collapsed"):
        r_host = certificate.rounding_bound(batch, f, space=space, sq_norm=f * 50)
        r_jit = jax.jit(lambda prob, x, sp=space: certificate.rounding_bound(prob, x, space=sp, sq_norm=x * 50,
                                                                             xp=jnp))(batch, f)
        np.testing.assert_allclose(np.asarray(r_jit), r_host, rtol=1e-12)
        assert np.all((r_host > 0) & (r_host < 1e-10))


def test_deep_rounding_bound_covers_float32_evaluation():
    """f of random deep states evaluated in float32 by both deep engines is within the bound of the
    float64 value (the bound of f computed in float32)."""
    from ncflow.maths import deep_collapsed as dc

    spec64 = do.DeepSpec(K=4, sizes=5, widths=(8, 6, 8), dtype="float64")
    spec32 = do.DeepSpec(K=4, sizes=5, widths=(8, 6, 8), dtype="float32")
    p = Problem(K=4, n=5, d=8, depth=3, widths=(6, 8), lambda_w=[1e-2, 3e-3, 5e-3], lambda_h=2e-3, dtype="float32")
    co64, co32 = do.coeffs(spec64, p.layer_lambdas, p.lambda_h), do.coeffs(spec32, p.layer_lambdas, p.lambda_h)
    full64, full32 = (jax.jit(lambda x, s=s, c=c: do.objective(s, c, x)) for s, c in ((spec64, co64), (spec32, co32)))
    coll32 = jax.jit(lambda x: dc.objective(spec32, co32, dc.collapse(spec32, x)))
    for seed in range(4):
        x64 = do.gaussian_start(spec64, jax.random.PRNGKey(seed), 1.5)
        x32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), x64)
        x64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), x32)  # the same point in both dtypes
        exact = float(full64(x64))
        for space, f32 in (("deep_full", full32(x32)), ("deep_collapsed", coll32(x32))):
            bound = float(certificate.rounding_bound(p, float(f32), space=space, sq_norm=float(do.sq_norm(x64))))
            assert abs(float(f32) - exact) <= bound, (space, seed, float(f32) - exact, bound)
            assert bound < 0.05 * exact  # informative: a few % at these far-from-balanced random states


def _random_problem(rng):
    """A small deep linear problem with c well below c_glob (the optimum alive) and random λ's."""
    while True:
        K, n, L = int(rng.integers(3, 5)), int(rng.integers(2, 6)), int(rng.integers(2, 4))
        widths = tuple(int(v) for v in rng.integers(K, K + 3, L - 1))
        d = int(rng.integers(K, K + 3))
        lams = [float(v) for v in np.exp(rng.uniform(np.log(2e-3), np.log(2e-2), L))]
        lh = float(np.exp(rng.uniform(np.log(2e-3), np.log(2e-2))))
        bias = bool(rng.integers(0, 2))
        p = Problem(K=K, n=n, d=d, depth=L, widths=widths, lambda_w=lams, lambda_h=lh, bias=bias, dtype="float64")
        if p.c < 0.7 * deep.c_glob(L):
            return p


def _continue(result, steps: int) -> np.ndarray:
    """f after ``steps`` more plain GD steps of every run's final state (full deep space)."""
    p = result.problem
    spec = do.spec_of(p)
    co = do.coeffs_of(spec, p)
    lr = float(result.config["lr"])
    states = [result.final_params(i) for i in range(result.runs)]
    x = jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(v) for v in a]), *states)

    @jax.jit
    def run(x):
        def body(_, x):
            return jax.vmap(lambda y: do.gd_step(spec, co, y, lr))(x)
        x = jax.lax.fori_loop(0, steps, body, x)
        return jax.vmap(lambda y: do.objective(spec, co, y))(x)

    return np.asarray(run(x))


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3, 4))])
def test_every_certified_run_is_global_when_continued(seed):
    rng = np.random.default_rng(100 + seed)
    p = _random_problem(rng)
    pred = theory.predict(p)
    gap = certificate.saddle_gap(p)
    lr = 0.5 * certificate.step_limit(p)
    a_star = (p.N * max(p.layer_lambdas) / math.sqrt(p.n)) ** (1.0 / (p.depth - 1))  # §9.2's start scale
    r = ncflow.simulate(p, runs=8, lr=lr, init_scale=float(rng.uniform(2.5, 4.5)) * a_star,
                        max_steps=8000, seed=seed, engine="collapsed", chunk=200)
    assert r.stop_rule == "certified"
    cert = r.per_run["stop"] == "certified"
    assert cert.any(), (p.describe(), lr, list(r.outcome))  # not vacuous: the certificate fires
    assert np.all(r.outcome[cert] == "global")
    # the certified state is below f* + 0.9 (f_sad − f*), and not yet converged (the point of the certificate)
    f_stop = r.per_run["objective"][cert]
    assert np.all(f_stop < pred.objective + 0.9 * gap)
    f_cont = _continue(r, 25000)
    np.testing.assert_array_less(np.abs(f_cont[cert] - pred.objective), 1e-3 * gap)  # at f*, not at any f_r


def test_a1_at_lr_half_is_never_certified_and_the_report_says_why():
    p = Problem(**A1)
    eta = certificate.step_limit(p)
    assert 0.3 < eta < 0.45  # 2/L_deep(f*) = 0.374 at A1
    r = ncflow.simulate(p, runs=2, lr=0.5, init_scale=1.0, max_steps=20000, seed=0, engine="collapsed")
    assert r.stop_rule == "certified"
    assert r.certified()["count"] == 0 and not np.any(r.per_run["stop"] == "certified")
    assert list(r.outcome) == ["global"] * 2  # stopped by the converged rule
    assert f"The certificate of THEORY §9.3 needs η < {eta:.2g} at this problem; runs stopped by the converged " \
           "rule" in r.report()


@pytest.mark.slow  # ~35 s: two plans compiled
def test_wide_plan_certifies_deep_lanes_like_the_cpu_plan():
    p = Problem(K=4, n=5, d=8, depth=3, lambda_w=[1e-2, 3e-3, 5e-3], lambda_h=4e-3, dtype="float64")
    lr = 0.5 * certificate.step_limit(p)
    kw = dict(runs=4, lr=lr, init_scale=0.8, max_steps=4000, seed=2, engine="collapsed", chunk=200)
    cpu, wide = (ncflow.simulate(p, plan=plan, **kw) for plan in ("cpu", "wide"))
    assert cpu.timing["plan"] == "cpu" and wide.timing["plan"] == "wide"
    assert np.any(cpu.per_run["stop"] == "certified")
    np.testing.assert_array_equal(cpu.per_run["stop"], wide.per_run["stop"])
    np.testing.assert_array_equal(cpu.per_run["certified_step"], wide.per_run["certified_step"])
