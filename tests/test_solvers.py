"""Optimizers through optax (momentum, nesterov, adam), their defaults and the validation of
every optimizer/init setting (Config errors name the field; the CLI names the flag)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow import Config, ConfigError
from ncflow.cli.app import main
from ncflow.config import OPTIMIZERS
from ncflow.dynamics import build as solvers
from ncflow.dynamics import starts as init
from ncflow.maths import objective, theory
from ncflow.maths.objective import Params
from ncflow.problem import Problem

from helpers import assert_trees_close

P = Problem(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
PB = Problem(K=3, d=4, n=2, lambda_w=3e-2, lambda_h=3e-2, bias=False, dtype="float64")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, field", [
    (dict(optimizer="sgd"), "optimizer"),
    (dict(momentum=0.5), "momentum"),                       # gd has no momentum
    (dict(optimizer="adam", momentum=0.5), "momentum"),
    (dict(optimizer="momentum", momentum=1.0), "momentum"),
    (dict(optimizer="nesterov", momentum=-0.1), "momentum"),
    (dict(optimizer="adam", beta1=1.0), "beta1"),
    (dict(optimizer="adam", beta2=-0.5), "beta2"),
    (dict(optimizer="adam", adam_eps=0.0), "adam_eps"),
    (dict(flow_time=1.0), "flow_time"),                     # flow_time without flow
    (dict(optimizer="flow", flow_time=0.0), "flow_time"),
    (dict(optimizer="flow", rtol=0.0), "rtol"),
    (dict(optimizer="flow", atol=float("nan")), "atol"),
    (dict(optimizer="adam", engine="collapsed"), "engine"),
    (dict(init="uniform"), "init"),
    (dict(active=1), "active"),                             # active without saddle
    (dict(init="saddle"), "active"),                        # saddle without active
    (dict(init="saddle", active=-1), "active"),
    (dict(init="saddle", active=1.5), "active"),
    (dict(init="saddle", active=1, perturb=-1.0), "perturb"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        Config(**kwargs)
    assert str(e.value).startswith(field), str(e.value)


@pytest.mark.parametrize("problem, active, start", [
    (P, 3, "active must be in [0, 2]"),                     # s = K-1 = max_active is the minimum
    (P, 4, "active must be in [0, 2]"),                     # s >= K
    (Problem(K=4, d=2, n=3, lambda_w=2e-2, lambda_h=2e-2, dtype="float64"), 2, "active must be in [0, 1]"),  # d-limited
    (Problem(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=2e-2, loss="rescaled-mse", dtype="float64"), 0,
     "init: saddle needs loss mse"),
    (Problem(K=4, d=5, n=3, lambda_w=0.2, lambda_h=0.2, dtype="float64"), 0, "init: saddle needs c < 1"),
])
def test_saddle_checks_need_the_problem(problem, active, start):
    cfg = Config(init="saddle", active=active)
    with pytest.raises(ConfigError) as e:
        solvers.dynamics_for(problem, cfg)
    assert str(e.value).startswith(start), str(e.value)


def test_valid_settings():
    for opt in OPTIMIZERS:
        Config(optimizer=opt)
    Config(optimizer="momentum", momentum=0.0)
    Config(optimizer="flow", flow_time=2.0)
    Config(init="saddle", active=0, perturb=0.0)
    assert solvers.dynamics_for(P, Config(optimizer="adam")).name == "full+adam"
    assert solvers.dynamics_for(P, Config(optimizer="momentum", engine="auto")).name == "full+momentum"
    assert solvers.dynamics_for(P, Config(engine="full")).name == "full"
    assert solvers.dynamics_for(P, Config(init="saddle", active=2, engine="full")).name == "full+escape"


def test_default_lr():
    base = theory.default_step_size(P, 1.0)
    assert solvers.default_lr(P, Config()) == base
    assert solvers.default_lr(P, Config(optimizer="flow")) == base
    assert solvers.default_lr(P, Config(optimizer="momentum")) == pytest.approx(base * (1 - 0.9))
    assert solvers.default_lr(P, Config(optimizer="nesterov", momentum=0.5)) == pytest.approx(base * 0.5)
    assert solvers.default_lr(P, Config(optimizer="adam")) == solvers.ADAM_DEFAULT_LR == 1e-3


SMALL = ["-K", "4", "-n", "3", "-d", "5", "--lambda-w", "2e-2", "--lambda-h", "2e-2", "--runs", "2",
         "--no-progress", "--max-steps", "10"]


@pytest.mark.parametrize("extra, flag", [
    (["--momentum", "0.5"], "--momentum"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum"),
    (["--flow-time", "1"], "--flow-time"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--init", "uniform"], "--init"),
    (["--active", "1"], "--active"),
    (["--init", "saddle"], "--active"),
    (["--init", "saddle", "--active", "3"], "--active"),
    (["--init", "saddle", "--active", "4"], "--active"),
])
def test_cli_errors_name_the_flag(capsys, extra, flag):
    try:
        rc = main(["run", *SMALL, *extra])
    except SystemExit as e:  # argparse-level rejections
        rc = e.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2
    assert len(lines) == 1 and flag in lines[0], err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- one-run steps
def _start(problem, key=0):
    return init.gaussian(problem, jax.random.key(key), 1.0)


@pytest.mark.parametrize("opt", ["momentum", "nesterov", "adam"])
def test_optax_step_invariants(opt):
    """A bias-free problem keeps b = 0 exactly while W moves (budgets are masked by the engine,
    not by lr = 0: see tests/test_batch.py)."""
    rep = solvers.dynamics_for(PB, Config(optimizer=opt))
    step = jax.jit(lambda x, lr: rep.step(PB, x, lr))
    x = rep.from_params(PB, _start(PB))
    for _ in range(5):
        x = step(x, 0.05)
    assert bool(jnp.all(x.params.b == 0)) and not np.array_equal(x.params.W, _start(PB).W)


def test_heavy_ball_and_nesterov_match_their_recursions():
    """Heavy ball: v ← g + μv, θ ← θ − ηv. Nesterov (optax): v ← g + μv, θ ← θ − η(g + μv)."""
    mu, eta = 0.7, 0.05
    for opt in ("momentum", "nesterov"):
        rep = solvers.dynamics_for(P, Config(optimizer=opt, momentum=mu))
        x = rep.from_params(P, _start(P))
        th = _start(P)
        v = jax.tree_util.tree_map(jnp.zeros_like, th)
        for _ in range(4):
            x = rep.step(P, x, eta)
            g = objective.gradient(P, th)
            v = jax.tree_util.tree_map(lambda gi, vi: gi + mu * vi, g, v)
            d = v if opt == "momentum" else jax.tree_util.tree_map(lambda gi, vi: gi + mu * vi, g, v)
            th = jax.tree_util.tree_map(lambda t, di: t - eta * di, th, d)
        assert_trees_close(x.params, th, rtol=1e-12, atol=1e-14)


def test_adam_matches_its_recursion():
    b1, b2, eps, eta = 0.8, 0.95, 1e-6, 0.01
    rep = solvers.dynamics_for(P, Config(optimizer="adam", beta1=b1, beta2=b2, adam_eps=eps))
    x = rep.from_params(P, _start(P))
    th = _start(P)
    m = jax.tree_util.tree_map(jnp.zeros_like, th)
    s = jax.tree_util.tree_map(jnp.zeros_like, th)
    for t in range(1, 4):
        x = rep.step(P, x, eta)
        g = objective.gradient(P, th)
        m = jax.tree_util.tree_map(lambda mi, gi: b1 * mi + (1 - b1) * gi, m, g)
        s = jax.tree_util.tree_map(lambda si, gi: b2 * si + (1 - b2) * gi * gi, s, g)
        th = Params(*(ti - eta * (mi / (1 - b1**t)) / (jnp.sqrt(si / (1 - b2**t)) + eps)
                      for ti, mi, si in zip(th, m, s)))
    assert_trees_close(x.params, th, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- engine path
@pytest.mark.parametrize("opt, lr, start", [("momentum", None, "orthogonal"), ("adam", 0.02, "gaussian")])
def test_simulate_optax_reaches_global(opt, lr, start):
    """Default heavy-ball step (1/L)(1 − μ) from orthogonal starts, and Adam at lr = 0.02 (its
    default 1e-3 is slow on purpose) from Gaussian starts, reach the global orbit."""
    r = ncflow.simulate(P, runs=3, optimizer=opt, lr=lr, init=start, max_steps=6000, progress=False)
    assert r.representation == f"full+{opt}"
    assert list(r.outcome) == ["global"] * 3, r.per_run
    np.testing.assert_allclose(r.per_run["objective"], theory.predict(P).objective, rtol=1e-9)
