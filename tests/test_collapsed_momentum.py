"""Heavy ball and Nesterov on the exact collapsed space (ncflow.maths.collapsed_momentum) against the
full optax stepper: the point, the velocity and the cross moment Σ e εᵀ after 300 steps agree to
1e-12 relative in float64 (bias modes A/B/C, class sizes, d > N, targets); through
``ncflow.simulate`` the collapsed engine gives the same per-run outcomes, steps and final objectives
as the full one; ``auto`` picks it where its step is cheaper; adam and flow stay full-only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ncflow
from ncflow import Config, ConfigError
from ncflow.dynamics import build, starts
from ncflow.dynamics.spaces import COLLAPSED, FULL
from ncflow.dynamics.steppers import Optax
from ncflow.maths import collapsed as C
from ncflow.maths import collapsed_momentum as CM
from ncflow.maths import objective as O
from ncflow.maths import theory
from ncflow.problem import Problem

from helpers import assert_trees_close

STEPS = 300
LAM = dict(lambda_w=5e-3, lambda_h=5e-3, dtype="float64")
#: name -> problem: bias modes A/B/C at K=4, d=8, n=5; unequal class sizes; d > N; a target matrix
PROBLEMS = {
    "A": Problem(K=4, d=8, n=5, **LAM),
    "B": Problem(K=4, d=8, n=5, bias=False, **LAM),
    "C": Problem(K=4, d=8, n=5, lambda_b=0.05, **LAM),
    "sizes": Problem(class_sizes=(7, 5, 3, 1), d=6, **LAM),
    "d>N": Problem(K=3, d=10, n=2, **LAM),
    "targets": Problem(targets=0.8 * np.eye(3)[:, [0, 0, 0, 1, 1, 2, 2, 2]] + 0.2 / 3
                       + 0.1 * np.random.default_rng(1).normal(size=(3, 8)),
                       labels=np.array([0, 0, 0, 1, 1, 2, 2, 2]), d=5, **LAM),
}


def _carried(p: Problem) -> Problem:
    """``p`` as the collapsed engine carries it: a target matrix in its row-space coordinates."""
    return p if p.targets is None else dataclasses.replace(p, row_basis=C.row_space(p))


def _within(p: Problem) -> np.ndarray:
    """The projector (N, N) onto the within-class space: I − Σ_k 1_k 1_kᵀ/n_k, or I − Q Qᵀ."""
    if p.targets is not None:
        Q = np.asarray(C.row_space(p).Q)
        return np.eye(p.N) - Q @ Q.T
    sizes = p.class_sizes or (p.n,) * p.K
    Y = np.eye(len(sizes))[:, np.repeat(np.arange(len(sizes)), sizes)]  # one-hot labels (K, N)
    return np.eye(p.N) - Y.T @ np.diag(1.0 / np.asarray(sizes, np.float64)) @ Y


def _start(p: Problem, seed: int) -> O.Params:
    """The engine's Gaussian start with a random bias (b stays 0 bias-free)."""
    x = starts.gaussian(p, jax.random.key(seed), 1.0)
    return x._replace(b=0.3 * jax.random.normal(jax.random.key(seed + 100), (p.K,)) if p.bias else x.b)


def _both(p: Problem, opt: str, beta: float, lr: float, seed: int = 0, steps: int = STEPS):
    """``steps`` steps of the full Optax stepper and of the collapsed momentum stepper from the same
    start: ``(full OptaxState, CollapsedMomentum)``."""
    q = _carried(p)
    st = Optax(kind=opt, momentum=beta)
    x = _start(p, seed)

    @jax.jit
    def run(x):
        a, b = st.init(FULL, p, x), st.init(COLLAPSED, q, COLLAPSED.from_params(q, x))

        def body(_, ab):
            return st.step(FULL, p, ab[0], lr), st.step(COLLAPSED, q, ab[1], lr)
        return jax.lax.fori_loop(0, steps, body, (a, b))

    return run(x)


def _assert_rel(a, b, tol=1e-12):
    """max|a − b| ≤ tol · max|b| (both exactly zero where b is)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    err = float(np.max(np.abs(a - b)))
    assert err <= tol * scale if scale > 0 else err == 0.0, (err, scale)


@pytest.mark.parametrize("opt", ["momentum", "nesterov"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_collapsed_momentum_equals_full_optax(name, opt):
    """300 steps at momentum 0.9 and the default momentum step (1/L)(1 − μ): the collapsed point,
    velocity and cross moment equal those of the full optax run (class statistics of H and of its
    velocity, and H Pw Vᵀ with Pw the within-class projector) to 1e-12 relative; so do f and the
    full gradient norm."""
    p, beta = PROBLEMS[name], 0.9
    lr = theory.default_step_size(p) * (1 - beta)
    full, col = _both(p, opt, beta, lr)
    q = _carried(p)
    x, v = full.params, optax.tree_utils.tree_get(full.opt_state, "trace")
    assert not np.allclose(np.asarray(x.W), np.asarray(_start(p, 0).W))  # the runs moved
    for got, want in ((col.params, C.collapse(q, x)), (col.velocity, C.collapse(q, v))):
        for a, b in zip(got, want):
            _assert_rel(a, b)
    Pw = _within(p)
    _assert_rel(col.cross, np.asarray(x.H) @ Pw @ np.asarray(v.H).T)
    f, g = C.value_and_grad_norm(q, col.params)
    assert float(f) == pytest.approx(float(O.objective(p, x)), rel=1e-12)
    assert float(g) == pytest.approx(float(O.gradient_norm(p, x)), rel=1e-10)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_small_momentum_cases(beta):
    """β = 0: heavy ball and Nesterov are GD: the collapsed GD step, the deviations' velocity
    ε = B e (B = WᵀW/N + λ_H I), so V = B G B and C = (I − ηB) G B; β = 0.5 at twice the step: the
    same agreement with the full run as at μ = 0.9."""
    p = PROBLEMS["C"]
    lr = theory.default_step_size(p) * (1 - beta)
    if beta == 0.0:
        x = C.collapse(p, _start(p, 3))
        W, G = np.asarray(x.W), np.asarray(x.G)
        B = W.T @ W / p.N + p.lambda_h * np.eye(p.d)
        for nesterov in (False, True):
            s = CM.step(p, CM.init(x), lr, 0.0, nesterov)
            assert_trees_close(s.params, C.gd_step(p, x, lr))
            _assert_rel(s.velocity.G, B @ G @ B)
            _assert_rel(s.cross, (np.eye(p.d) - lr * B) @ G @ B)
        return
    full, col = _both(p, "nesterov", beta, 2 * lr, seed=4)
    for a, b in zip(col.params, C.collapse(p, full.params)):
        _assert_rel(a, b)


def test_the_second_moment_update_is_T_S_Tt():
    """The fused update of (G, C, V) equals T S Tᵀ with T = [[I − cB, qI], [B, βI]] formed densely,
    B = WᵀW/N + λ_H I, for both rules, from a random S (not one reachable from zero velocity)."""
    p = PROBLEMS["A"]
    rng = np.random.default_rng(7)
    d, eta, beta = p.d, 0.3, 0.8
    A = rng.normal(size=(2 * d, 2 * d))
    S = A @ A.T
    x = C.collapse(p, _start(p, 7))
    s = CM.CollapsedMomentum(x._replace(G=jnp.asarray(S[:d, :d])),
                             C.Collapsed(x.W * 0.1, x.M * 0.1, jnp.asarray(S[d:, d:]), x.b * 0.1),
                             jnp.asarray(S[:d, d:]))
    W = np.asarray(x.W)
    B = W.T @ W / p.N + p.lambda_h * np.eye(d)
    for nesterov in (False, True):
        c, q = (eta * (1 + beta), -eta * beta**2) if nesterov else (eta, -eta * beta)
        T = np.block([[np.eye(d) - c * B, q * np.eye(d)], [B, beta * np.eye(d)]])
        want = T @ S @ T.T
        out = CM.step(p, s, eta, beta, nesterov)
        got = np.block([[np.asarray(out.params.G), np.asarray(out.cross)],
                        [np.asarray(out.cross).T, np.asarray(out.velocity.G)]])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.max(np.abs(want)))


# ----------------------------------------------------------------------------- the engine
@pytest.mark.parametrize("opt", ["momentum", pytest.param("nesterov", marks=pytest.mark.slow)])
def test_engine_collapsed_momentum_equals_full(opt):
    """``ncflow.simulate`` with engine full and collapsed: the same per-run outcomes and steps, final
    objectives equal to 1e-10, and the collapsed Result's final_params (expanded, and replayed exactly
    on the full representation with the same optimizer) at the per-run objective. (About 20 s on a
    shared 2-core machine, four programs compiled: nesterov's is ``slow``; its step is checked above.)"""
    p = Problem(K=4, d=8, n=5, lambda_w=2e-2, lambda_h=2e-2, lambda_b=0.05, dtype="float64")
    kw = dict(runs=3, seed=5, optimizer=opt, stop="converged", max_steps=4000, progress=False)
    full, col = ncflow.simulate(p, engine="full", **kw), ncflow.simulate(p, engine="collapsed", **kw)
    assert (full.representation, col.representation) == (f"full+{opt}", f"collapsed+{opt}")
    assert list(col.outcome) == ["global"] * 3, col.per_run
    np.testing.assert_array_equal(full.outcome, col.outcome)
    np.testing.assert_array_equal(full.per_run["steps"], col.per_run["steps"])
    np.testing.assert_allclose(col.per_run["objective"], full.per_run["objective"], rtol=1e-10)
    np.testing.assert_allclose(col.per_run["objective"], theory.predict(p).objective, rtol=1e-9)
    f = col.per_run["objective"][1]
    assert float(O.objective(p, col.final_params(1))) == pytest.approx(f, rel=1e-10)
    xe = col.final_params(1, exact=True)
    assert float(O.objective(p, xe)) == pytest.approx(f, rel=1e-10)
    assert_trees_close(xe, full.final_params(1), rtol=1e-9, atol=1e-12)


def test_auto_picks_the_cheaper_space():
    """auto: collapsed momentum where its flops are below half the full step's (DLN's K=4, d=64,
    N=400; the default K=d=10, n=100), full on a tiny problem; adam never collapsed."""
    dln, default, tiny = Problem(K=4, d=64, n=100), Problem(), Problem(K=4, d=5, n=3)
    for opt in ("momentum", "nesterov"):
        assert build.dynamics_for(dln, Config(optimizer=opt)).name == f"collapsed+{opt}"
        assert build.dynamics_for(default, Config(optimizer=opt)).name == f"collapsed+{opt}"
        assert build.dynamics_for(tiny, Config(optimizer=opt)).name == f"full+{opt}"
        assert build.dynamics_for(default, Config(optimizer=opt, engine="full")).name == f"full+{opt}"
        d = build.dynamics_for(default, Config(optimizer=opt, init="saddle", active=2))
        assert d.name == f"collapsed+{opt}+escape"
    assert build.dynamics_for(dln, Config(optimizer="adam")).name == "full+adam"
    assert build.dynamics_for(Problem(K=4, d=64, n=100, loss="rescaled-mse", alpha=2.0),
                              Config(optimizer="momentum")).name == "full+momentum"


@pytest.mark.parametrize("opt", ["adam", "flow"])
def test_adam_and_flow_stay_refused_on_collapsed(opt):
    with pytest.raises(ConfigError) as e:
        Config(optimizer=opt, engine="collapsed")
    assert e.value.field == "engine" and "gd, momentum and nesterov" in str(e.value)
    assert not build.stepper_for(PROBLEMS["A"], Config(optimizer=opt)).supports(COLLAPSED)
