"""The engine with class sizes and targets (THEORY §7): the collapsed representation (per-sample GD
on H, class sizes as per-lane values) against the full one, one compiled program for problems that
differ only in their sizes and λ's, and outcomes against the §7 prediction."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.batch import loop
from ncflow.maths import collapsed as C
from ncflow.maths import imbalanced as im
from ncflow.maths import objective as O
from ncflow.problem import Problem, RowBasis

from helpers import rel_diff


def _random(rng, bias_mode):
    K = int(rng.integers(2, 6))
    kw = dict(class_sizes=tuple(int(v) for v in rng.integers(1, 9, K)), d=int(rng.integers(1, K + 3)),
              lambda_w=float(rng.uniform(1e-3, 5e-2)), lambda_h=float(rng.uniform(1e-3, 5e-2)), dtype="float64")
    if bias_mode == "none":
        kw["bias"] = False
    elif bias_mode == "regularized":
        kw["lambda_b"] = float(rng.uniform(1e-3, 1.0))
    return Problem(**kw)


def _full_and_collapsed_gd(p, q, seed: int, steps: int = 200):
    """``steps`` full GD steps of ``p`` from a random point (W, H ~ N(0, 1), b ~ N(0, 0.09) or 0) and
    the same number of collapsed steps of ``q`` (``p`` itself, or ``p`` with its row basis) from that
    point collapsed, at half the default step: ``(final Params, final collapsed state)``."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = O.Params(jax.random.normal(k1, (p.K, p.d)), jax.random.normal(k2, (p.d, p.N)),
                 0.3 * jax.random.normal(k3, (p.K,)) if p.bias else jnp.zeros(p.K))
    lr = 0.5 * ncflow.theory.default_step_size(p)

    @jax.jit
    def run(x, c):
        def body(_, xc):
            x, c = xc
            return jax.tree_util.tree_map(lambda a, g: a - lr * g, x, O.gradient(p, x)), C.gd_step(q, c, lr)
        return jax.lax.fori_loop(0, steps, body, (x, c))

    return run(x, C.collapse(q, x))


@pytest.mark.parametrize("i", range(12))
def test_collapsed_equals_full_per_sample_gd(i):
    """200 steps of the collapsed step from a random full point equal 200 full GD steps (their class
    statistics), to 1e-12 relative in float64; so do f and the FULL gradient norm."""
    rng = np.random.default_rng(i)
    p = _random(rng, ("unregularized", "none", "regularized")[i % 3])
    x, c = _full_and_collapsed_gd(p, p, i)
    ref = C.collapse(p, x)
    for a, b in zip(c, ref):
        assert float(np.max(rel_diff(np.asarray(a), np.asarray(b)))) <= 1e-12 or \
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-12 * max(1.0, float(np.max(np.abs(b))))
    f, g = C.value_and_grad_norm(p, c)
    assert float(f) == pytest.approx(float(O.objective(p, x)), rel=1e-12)
    assert float(g) == pytest.approx(float(O.gradient_norm(p, x)), rel=1e-10)


def test_per_lane_sizes_inside_the_engine_match_each_alone():
    """A batch whose points differ in class sizes runs as lanes of one program (collapsed), and each
    point's runs equal the same point run alone (the init's first N columns do not depend on the
    batch) to float64 rounding."""
    kw = dict(d=4, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
    probs = [Problem(class_sizes=s, **kw) for s in ((20, 5, 2), (8, 8, 3), (6, 2, 1))]
    cfg = ncflow.Config(runs=3, max_steps=600, progress=False, engine="collapsed", stop="converged")
    pts = [loop.Point(problem=q, runs=3, lr=0.5, init_scale=1.0, seed=7) for q in probs]
    together = loop.simulate_points(pts, cfg)
    for q, r in zip(probs, together):
        alone = ncflow.simulate(q, cfg, lr=0.5, seed=7)
        np.testing.assert_allclose(r.per_run["objective"], alone.per_run["objective"], rtol=1e-12)
        np.testing.assert_array_equal(r.per_run["steps"], alone.per_run["steps"])


def test_a_sweep_over_sizes_compiles_once(compile_counter):
    """Problems that share K and d and differ only in their sizes (and λ's) share every program:
    a second batch of other sizes (the same largest N) compiles nothing."""
    cfg = ncflow.Config(runs=4, max_steps=300, progress=False, engine="auto")

    def batch(sizes, lam, runs):  # the same largest N (36) and total runs (12): the same shapes
        return [loop.Point(problem=Problem(class_sizes=s, d=3, lambda_w=lam, lambda_h=lam, dtype="float64"),
                           runs=runs, lr=0.4, init_scale=1.0, seed=0) for s in sizes]

    loop.simulate_points(batch([(30, 3, 3), (10, 10, 1)], 1e-2, 6), cfg)
    with compile_counter:
        rs = loop.simulate_points(batch([(30, 4, 2), (12, 2, 2), (9, 9, 9)], 3e-2, 4), cfg)
    assert compile_counter.count == 0, compile_counter.names
    assert all(r.representation == "collapsed" for r in rs)


def test_full_engine_refuses_mixed_sizes():
    pts = [loop.Point(problem=Problem(class_sizes=s, d=3, dtype="float64"), runs=2, lr=0.4, init_scale=1.0, seed=0)
           for s in ((3, 2), (4, 1, 1)[:2])]
    with pytest.raises(ncflow.ConfigError, match="engine"):
        loop.simulate_points(pts, ncflow.Config(runs=2, engine="full", progress=False))


@pytest.mark.parametrize("engine", ["collapsed", "full"])
def test_runs_reach_the_imbalanced_optimum_with_merged_classes(engine):
    """[40,10,2,2], λ past the merge threshold √2/54: every run global; its W Wᵀ, MᵀM, W M at the
    prediction; the minority classes 2 and 3 merged in every run, as predicted."""
    p = Problem(class_sizes=(40, 10, 2, 2), d=5, lambda_w=0.03, lambda_h=0.03, dtype="float64")
    r = ncflow.simulate(p, runs=6, engine=engine, stop="converged", progress=False)
    assert list(r.per_run["outcome"]) == ["global"] * 6
    for k in ("gram_error", "gram_h_error", "cross_error"):
        assert np.max(r.per_run[k]) < 1e-6, k
    assert r.prediction.merged == ((2, 3),)
    assert list(r.per_run["merged"]) == ["2,3"] * 6 and list(r.per_run["vanished"]) == [""] * 6
    assert all(r.per_run["classes_as_predicted"])


def test_targets_run_on_the_full_engine():
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(3), [6, 3, 2])
    T = 0.9 * np.eye(3)[:, lab] + 0.1 / 3 + 0.1 * rng.normal(size=(3, 11))
    p = Problem(targets=T, labels=lab, d=3, lambda_w=0.01, lambda_h=0.01, dtype="float64")
    r = ncflow.simulate(p, runs=4, stop="converged", progress=False)
    assert r.representation == "full"
    assert list(r.per_run["outcome"]) == ["global"] * 4
    assert np.max(np.abs(r.per_run["objective"] - im.optimum(p).objective)) < 1e-10


def _with_row_basis(p):
    b = im.basis(p)
    LQ = b.LQ if b.LQ is not None else np.zeros((b.TQ.shape[1], p.K))
    rb = RowBasis(jnp.asarray(b.TQ), jnp.asarray(b.q), jnp.asarray(LQ), jnp.asarray(b.counts),
                  jnp.asarray(float(b.N)), jnp.asarray(b.Q))
    return dataclasses.replace(p, row_basis=rb)


@pytest.mark.parametrize("i", range(9))
def test_collapsed_targets_equal_full_gd(i):
    """Any target through the row-space basis of [T; 1ᵀ; L]: 200 collapsed steps (W, C, G, b) equal
    200 full GD steps on (W, H, b) to 1e-12 relative (objective, full gradient norm, W, b, C = H Q,
    G = H Hᵀ − C Cᵀ), soft labels and regression targets, with and without labels."""
    rng = np.random.default_rng(50 + i)
    K, N = int(rng.integers(2, 5)), int(rng.integers(6, 15))
    lab = np.sort(np.concatenate([np.arange(K), rng.integers(0, K, N - K)]))
    T = rng.normal(size=(K, N)) if i % 2 else 0.8 * np.eye(K)[:, lab] + 0.2 / K
    bias_kw = ({}, {"bias": False}, {"lambda_b": 0.1})[i % 3]
    p = Problem(targets=T, labels=lab if i % 4 else None, d=int(rng.integers(1, K + 3)), lambda_w=0.02,
                lambda_h=0.03, dtype="float64", **bias_kw)
    q = _with_row_basis(p)
    assert p.N == N
    x, c = _full_and_collapsed_gd(p, q, i)
    ref = C.collapse(q, x)
    for a, b in zip(c, ref):
        scale = max(1.0, float(np.max(np.abs(np.asarray(b)))))
        assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-12 * scale
    f, g = C.value_and_grad_norm(q, c)
    assert float(f) == pytest.approx(float(O.objective(p, x)), rel=1e-12)
    assert float(g) == pytest.approx(float(O.gradient_norm(p, x)), rel=1e-10)
    if p.labels is not None:  # class statistics of the collapsed state = those of H
        from ncflow.maths.metrics import class_stats
        s1, s2 = C.class_stats(q, c), class_stats(p, x)
        np.testing.assert_allclose(np.asarray(s1.M), np.asarray(s2.M), atol=1e-12)
        np.testing.assert_allclose(np.asarray(s1.G), np.asarray(s2.G), atol=1e-11)


@pytest.mark.parametrize("labels", [True, False])
def test_targets_collapsed_engine_equals_full_engine(labels):
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(3), [6, 3, 2])
    T = 0.9 * np.eye(3)[:, lab] + 0.1 / 3 + 0.1 * rng.normal(size=(3, 11))
    p = Problem(targets=T, labels=lab if labels else None, d=3, lambda_w=0.01, lambda_h=0.01, dtype="float64")
    kw = dict(runs=4, stop="converged", progress=False, seed=3)
    full, col = ncflow.simulate(p, engine="full", **kw), ncflow.simulate(p, engine="collapsed", **kw)
    assert list(col.per_run["outcome"]) == ["global"] * 4
    np.testing.assert_array_equal(full.per_run["steps"], col.per_run["steps"])
    np.testing.assert_allclose(full.per_run["objective"], col.per_run["objective"], rtol=1e-12)
    np.testing.assert_allclose(full.per_run["nc1"], col.per_run["nc1"], rtol=1e-6, atol=1e-12)


def test_staircase_plateaus_are_not_saddles():
    """THEORY §7's staircase: from a small start ([40,10,2,2], λ = 1e-3, entries of std 1e-4) the
    three modes are learned one after another (plateaus in between); every run ends global, none is
    stopped on a plateau and labelled saddle."""
    p = Problem(class_sizes=(40, 10, 2, 2), d=10, lambda_w=1e-3, lambda_h=1e-3, dtype="float64")
    r = ncflow.simulate(p, runs=8, init_scale=1e-4 * np.sqrt(10), stop="converged", progress=False, history=True)
    assert list(r.per_run["outcome"]) == ["global"] * 8
    assert list(r.per_run["merged"]) == [""] * 8 and all(r.per_run["classes_as_predicted"])
