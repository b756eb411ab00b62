"""Initializations "orthogonal", "small" and "saddle", and the escape time from a saddle.

Escape (init "saddle", s active directions, perturbation entries N(0, ε²/d)): near the saddle
the fastest modes pair one of the K−1−s free centered class directions with one of the d−s
free feature directions, m = (K−1−s)(d−s) modes (test_landscape checks that this is exactly
the negative eigenspace), all with curvature −g, g = theory.origin_growth_rate, for EVERY s
(no slower rate for s > 0). The perturbation puts E|x_u|² = mε²/d into them, GD multiplies
each by (1 + gη) per step, and f − f_s ≈ −(g/2)|x_u|²(1 + gη)^{2t}; so f falls below
f_s − margin after t ≈ ln(2·margin/(g m ε²/d)) / (2 ln(1 + gη)) steps
(``solvers.predicted_escape_steps``; ≈ ln(·)/(2gη) for small gη). The median over runs must
agree within 10% (the stated tolerance; the observed agreement is a few %).
"""

import operator
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow import Config
from ncflow.dynamics import build as solvers
from ncflow.dynamics import starts as init
from ncflow.maths import objective, theory
from ncflow.problem import Problem

from helpers import assert_trees_close, subprocess_env

P = Problem(K=4, d=6, n=3, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
EPS = 1e-4


def test_registry():
    assert set(init.INITIALIZERS) >= {"gaussian", "orthogonal", "small", "saddle"}
    for kind in ("gaussian", "orthogonal", "small"):
        fn = init.initializer(P, Config(init=kind))
        x = jax.jit(lambda k, fn=fn: fn(P, k, 1.0))(jax.random.key(0))
        assert x.W.shape == (P.K, P.d) and x.H.shape == (P.d, P.N) and bool(jnp.all(x.b == 0))


@pytest.mark.parametrize("K, d", [(4, 6), (5, 3)])
def test_orthogonal(K, d):
    """All singular values equal; ||W||² = K s², ||H||² = N s² (the Gaussian start's means)."""
    p = Problem(K=K, d=d, n=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    s = 0.7
    make = jax.jit(lambda k: init.orthogonal(p, k, s))
    x = make(jax.random.key(2))
    W, H = np.asarray(x.W), np.asarray(x.H)
    sw, sh = np.linalg.svd(W, compute_uv=False), np.linalg.svd(H, compute_uv=False)
    np.testing.assert_allclose(sw, s * np.sqrt(K / min(K, d)), rtol=1e-12)
    np.testing.assert_allclose(sh, s * np.sqrt(p.N / min(d, p.N)), rtol=1e-12)
    assert np.sum(W**2) == pytest.approx(K * s**2) and np.sum(H**2) == pytest.approx(p.N * s**2)
    y = make(jax.random.key(3))
    assert not np.allclose(W, np.asarray(y.W))


def test_small():
    key = jax.random.key(4)
    x, g = init.small(P, key, 2.0), init.gaussian(P, key, 2e-3)
    for a, b in zip(x, g):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_saddle_start(s):
    """The start is theory.critical_point(problem, s) + a Gaussian perturbation of W, H."""
    cfg = Config(init="saddle", active=s, perturb=1e-2)
    fn = init.initializer(P, cfg)
    key = jax.random.key(9)
    x = fn(P, key, 1.0)
    c = theory.critical_point(P, s)
    e = init.gaussian(P, key, 1e-2)
    np.testing.assert_allclose(x.W, c.W + e.W, atol=1e-14)
    np.testing.assert_allclose(x.H, c.H + e.H, atol=1e-14)
    np.testing.assert_allclose(x.b, c.b, atol=1e-15)
    exact = init.initializer(P, Config(init="saddle", active=s, perturb=0.0))(P, key, 1.0)
    assert float(objective.gradient_norm(P, exact)) < 1e-13


def test_saddle_start_batched_problem():
    """Inside jit/vmap with per-lane coefficients the critical point is each lane's own."""
    lams = [(2e-2, 2e-2), (1e-2, 4e-2)]
    probs = [Problem(K=4, d=6, n=3, lambda_w=a, lambda_h=b, dtype="float64") for a, b in lams]
    batched = jax.tree_util.tree_map(lambda *v: jnp.asarray(v), *probs)
    xs = jax.jit(jax.vmap(lambda p: init.critical_point_jnp(p, 2)))(batched)
    for i, p in enumerate(probs):
        c = theory.critical_point(p, 2)
        assert_trees_close(jax.tree_util.tree_map(operator.itemgetter(i), xs), c, rtol=1e-7, atol=1e-14)  # np's rtol
    with pytest.raises(ValueError, match="active"):
        init.saddle_factory(P, Config(init="saddle", active=3))


def _direct_escape(s, runs, steps, perturb):
    """Escape steps of ``runs`` runs of GD driven directly (full engine, vmapped)."""
    cfg = Config(init="saddle", active=s, perturb=perturb, engine="full")
    rep = solvers.dynamics_for(P, cfg)
    fn = init.initializer(P, cfg)
    lr = solvers.default_lr(P, cfg)

    @jax.jit
    def run(keys):
        x = jax.vmap(lambda k: rep.from_params(P, fn(P, k, 1.0)))(keys)
        x = jax.lax.fori_loop(0, steps, lambda i, x: jax.vmap(lambda xi: rep.step(P, xi, lr))(x), x)
        return jax.vmap(lambda xi: rep.extras(P, xi)["escape_step"])(x)

    return np.asarray(run(jax.vmap(lambda i: init.run_key(0, i))(jnp.arange(runs)))), lr


def test_escape_from_origin():
    """s = 0 (the origin): the median escape step matches the linearized prediction within 10%;
    an unperturbed start never escapes (NaN)."""
    esc, lr = _direct_escape(0, 16, 300, EPS)
    pred = solvers.predicted_escape_steps(P, 0, EPS, lr)
    assert np.all(np.isfinite(esc))
    assert abs(np.median(esc) / pred - 1) < 0.10, (np.median(esc), pred)
    g = theory.origin_growth_rate(P)  # the brief's continuous-time form, ln(·)/(2gη), within 25%
    assert abs(np.median(esc) / (pred * np.log1p(g * lr) / (g * lr)) - 1) < 0.25
    never, _ = _direct_escape(0, 2, 50, 0.0)
    assert np.all(np.isnan(never))


def test_escape_from_saddle_through_engine():
    """s = 1 through ncflow.simulate (collapsed GD wrapped by the recorder): the same rate g
    governs the escape; median within 10% of the prediction."""
    r = ncflow.simulate(P, runs=8, init="saddle", active=1, perturb=EPS, max_steps=200, progress=False,
                        engine="collapsed")
    assert r.representation == "collapsed+escape"
    esc = r.per_run["escape_step"]
    assert np.all(np.isfinite(esc))
    pred = solvers.predicted_escape_steps(P, 1, EPS, float(r.config["lr"]))
    assert abs(np.median(esc) / pred - 1) < 0.10, (esc, pred)


_EVERY_START = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
import ncflow
devices = jax.devices()[: int(sys.argv[1])]
p = ncflow.Problem(K=10, d=10, n=2, lambda_w=5e-3, lambda_h=5e-3)
for init, extra in (("gaussian", {}), ("orthogonal", {}), ("small", {}), ("saddle", {"active": 1})):
    r = ncflow.simulate(p, runs=4, init=init, max_steps=200, progress=False, devices=devices, **extra)
    print(init, r.runs, int(r.per_run["steps"].max()))
"""


@pytest.mark.parametrize("devices", [1, 2])
def test_every_start_runs_through_the_engine(devices):
    """Every start kind runs through the engine on 1 and 2 CPU devices within a time limit.

    Regression: ``ncflow run -K 10 -d 10 -n 2 --init orthogonal`` never finished on 2 devices. The
    orthogonal start took two batched LAPACK QRs (W's and H's) in one program; XLA's CPU runtime ran
    them at once, each split its batch over the intra-op thread pool and waited for it, and the two
    devices' programs exhausted a 2-thread pool. The start now orthonormalizes without LAPACK."""
    proc = subprocess.run([sys.executable, "-c", _EVERY_START, str(devices)], capture_output=True, text=True,
                          timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert [lines[i] for i in range(0, len(lines), 3)] == ["gaussian", "orthogonal", "small", "saddle"]
