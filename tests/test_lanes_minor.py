"""The lanes-minor step layout (ncflow.dynamics.lanes; ``Config.step_layout = "lanes"``): T steps of the
lanes-minor batch step equal T steps of the vmapped one-run collapsed step to 1e-13 in float64, per lane
with its own step size and λ's, in every bias mode and with per-lane class sizes; the wide plan with the
lanes layout stops every run at the same step with the same outcome as the vmapped layout; what the
layout cannot run is refused in one line, naming step_layout.

Float64 with x64 on (conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.config import Config
from ncflow.dynamics import lanes
from ncflow.dynamics.build import dynamics_for
from ncflow.dynamics.spaces import COLLAPSED
from ncflow.errors import ConfigError
from ncflow.maths.collapsed import Collapsed
from ncflow.problem import Problem

from helpers import run_cli

BIAS_MODES = {"unregularized": dict(bias=True, lambda_b=0.0), "regularized": dict(bias=True, lambda_b=3e-2),
              "none": dict(bias=False)}
PER_RUN_EXACT = ("steps", "outcome", "stop", "certified_step")


def _batch(K: int, d: int, L: int, seed: int, sizes=None, **prob):
    """A batch's per-lane problem (coefficients (L,) all different, or class sizes (L, K)), random
    lanes-major states and step sizes (L,)."""
    rng = np.random.default_rng(seed)
    coef = {"lambda_w": rng.uniform(1e-3, 5e-2, L), "lambda_h": rng.uniform(1e-3, 5e-2, L),
            "lambda_b": rng.uniform(1e-3, 5e-2, L) if prob.get("lambda_b") else np.zeros(L),
            "alpha": np.ones(L), "target_scale": np.ones(L)}  # every coefficient per lane, as the engine's
    kw = {k: v for k, v in prob.items() if k != "lambda_b"}
    if sizes is not None:
        cs = rng.integers(2, 9, size=(L, K)).astype(np.float64)
        base = Problem(K=K, d=d, dtype="float64", class_sizes=cs, columns=int(cs.sum(1).max()), **coef, **kw)
    else:
        base = Problem(K=K, d=d, n=5, dtype="float64", **coef, **kw)
    E = rng.normal(size=(L, d, 3 * d)) / np.sqrt(d)
    b = rng.normal(size=(L, K)) if prob.get("bias", True) else np.zeros((L, K))
    x = Collapsed(rng.normal(size=(L, K, d)) / np.sqrt(d), rng.normal(size=(L, d, K)) / np.sqrt(d),
                  np.einsum("lik,ljk->lij", E, E), b)
    lr = rng.uniform(0.2, 0.9, L)
    return base, jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(lr)


def _vmapped_steps(base, x, lr, T):
    def body(x, _):
        return jax.vmap(COLLAPSED.gd_step)(base, x, lr), None
    return jax.lax.scan(body, x, None, length=T)[0]


def _lanes_steps(base, x, lr, T):
    c = lanes.coefficients(base, lr)

    def body(x, _):
        return lanes.gd_step(base, c, x), None
    return lanes.from_lanes_minor(jax.lax.scan(body, lanes.to_lanes_minor(x), None, length=T)[0])


def _max_rel(a, b) -> float:
    """The largest per-lane difference of each leaf relative to that lane's largest entry."""
    out = 0.0
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        u, v = np.asarray(u).reshape(len(u), -1), np.asarray(v).reshape(len(v), -1)
        scale = np.maximum(np.max(np.abs(v), axis=1), 1e-300)
        out = max(out, float(np.max(np.max(np.abs(u - v), axis=1) / scale)))
    return out


@pytest.mark.parametrize("sizes", [None, "per-lane"])
@pytest.mark.parametrize("mode", sorted(BIAS_MODES))
def test_lanes_minor_steps_equal_the_vmapped_one_run_step(mode, sizes):
    K, d, L, T = 4, 5, 7, 40
    base, x, lr = _batch(K, d, L, seed=len(mode) + (sizes is not None), sizes=sizes, **BIAS_MODES[mode])
    want = jax.jit(_vmapped_steps, static_argnums=3)(base, x, lr, T)
    got = jax.jit(_lanes_steps, static_argnums=3)(base, x, lr, T)
    assert got.W.shape == (L, K, d) and got.G.shape == (L, d, d) and got.b.shape == (L, K)
    moved = _max_rel(x, want)
    assert moved > 1e-3  # the steps did move every leaf the comparison is about
    assert _max_rel(got, want) < 1e-13
    if mode == "none":
        np.testing.assert_array_equal(got.b, x.b)  # a bias-free model keeps b


@pytest.mark.parametrize("shape", [(64, 10, 64), (10, 64, 10), (10, 10, 64)])
def test_small_products_are_right_in_float32_over_many_lanes(shape):
    # jnp.sum(A[:, :, None] * B[None], axis=1) was wrong by 150% at (64, 10, 64) x 1,024 lanes on XLA:CPU
    i, c, j = shape
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(i, c, 1024)), rng.normal(size=(c, j, 1024))
    got = np.asarray(jax.jit(lanes._mm)(jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)), np.float64)
    want = np.einsum("icl,cjl->ijl", A, B)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


def test_a_lane_with_zero_step_size_keeps_its_state_exactly():
    base, x, lr = _batch(3, 4, 5, seed=3)
    lr = lr.at[2].set(0.0)
    got = jax.jit(_lanes_steps, static_argnums=3)(base, x, lr, 3)
    for u, v in zip(got, x):
        np.testing.assert_array_equal(u[2], v[2])
        assert not np.array_equal(u[0], v[0])


def test_masked_keeps_a_stopped_lane_exactly_and_transposes_round_trip():
    base, x, lr = _batch(3, 4, 6, seed=5)
    xm = lanes.to_lanes_minor(x)
    assert xm.W.shape == (3, 4, 6) and xm.M.shape == (4, 3, 6) and xm.b.shape == (3, 6)
    new = jax.jit(lambda p, x, lr: lanes.gd_step(p, lanes.coefficients(p, lr), x))(base, xm, lr)
    live = jnp.arange(6) % 2 == 0
    out = lanes.from_lanes_minor(lanes.masked(live, new, xm))
    back = lanes.from_lanes_minor(new)
    for u, v, w in zip(out, x, back):
        np.testing.assert_array_equal(u[1::2], v[1::2])
        np.testing.assert_array_equal(u[0::2], w[0::2])
    for u, v in zip(lanes.from_lanes_minor(xm), x):
        np.testing.assert_array_equal(u, v)


def test_supports_only_what_the_collapsed_gd_engine_runs():
    p = Problem(K=4, d=4, n=5)
    assert lanes.supports(p, dynamics_for(p, Config(engine="collapsed"))) is lanes.gd_step
    refused = {
        "full engine": (p, Config(engine="full")),
        "momentum": (p, Config(engine="collapsed", optimizer="momentum")),
        "saddle escape": (p, Config(engine="collapsed", init="saddle", active=1)),
        "rescaled": (Problem(K=4, d=4, n=5, loss="rescaled-mse"), Config()),
        "deep": (Problem(K=4, d=4, n=5, depth=2), Config()),
        "targets": (Problem(K=3, d=4, targets=np.eye(3, 6)), Config(engine="collapsed")),
    }
    for name, (q, cfg) in refused.items():
        dyn = dynamics_for(q, cfg)
        assert lanes.supports(q, dyn) is None, name
        assert isinstance(lanes.why_not(q, dyn), str), name


# ----------------------------------------------------------------------------- the wide plan's layout
def _simulate(layout: str, **kw):
    prob = {k: v for k, v in kw.items() if k in ("bias", "lambda_b")}
    cfg = {k: v for k, v in kw.items() if k not in prob}
    p = Problem(K=4, d=4, n=5, lambda_w=5e-2, lambda_h=5e-2, dtype="float64", **prob)
    return ncflow.simulate(p, Config(progress=False, plan="wide", engine="collapsed", step_layout=layout, chunk=7,
                                     **cfg))


@pytest.mark.parametrize("mode", [m if m == "unregularized" else pytest.param(m, marks=pytest.mark.slow)
                                  for m in sorted(BIAS_MODES)])  # the step's maths: every mode above, fast
def test_wide_plan_with_lanes_layout_stops_every_run_like_the_vmapped_layout(mode):
    kw = dict(BIAS_MODES[mode], runs=12, max_steps=3000)  # the certified stop: 42..448 steps
    vm, ln = _simulate("vmap", **kw), _simulate("lanes", **kw)
    assert vm.timing["plan"] == ln.timing["plan"] == "wide"
    assert ln.config["step_layout"] == "lanes"
    for k in PER_RUN_EXACT:
        np.testing.assert_array_equal(ln.per_run[k], vm.per_run[k], err_msg=k)
    assert len(np.unique(ln.per_run["steps"])) > 1  # runs stop at different chunks: stopped lanes are masked
    for u, v in zip(ln.final_state, vm.final_state):
        assert _max_rel(u, v) < 1e-13


def test_lanes_layout_diverges_like_the_vmapped_layout():
    vm, ln = _simulate("vmap", runs=4, lr=30.0), _simulate("lanes", runs=4, lr=30.0)
    assert set(ln.per_run["outcome"]) == {"diverged"}
    for k in PER_RUN_EXACT:
        np.testing.assert_array_equal(ln.per_run[k], vm.per_run[k], err_msg=k)


def test_lanes_layout_honours_a_budget_that_ends_inside_a_chunk():
    kw = dict(runs=8, max_steps=40)  # chunks of 7: the last one has a budget of 5
    vm, ln = _simulate("vmap", **kw), _simulate("lanes", **kw)
    np.testing.assert_array_equal(ln.per_run["steps"], np.full(8, 40))
    np.testing.assert_array_equal(ln.per_run["steps"], vm.per_run["steps"])
    for u, v in zip(ln.final_state, vm.final_state):
        assert _max_rel(u, v) < 1e-13


@pytest.mark.parametrize("cfg, words", [
    (dict(plan="cpu"), "plan wide"),
    (dict(plan="wide", engine="full"), "full"),
    (dict(plan="wide", engine="collapsed", optimizer="momentum"), "momentum"),
    (dict(plan="wide", matmul_precision="tf32"), "matmul_precision"),
])
def test_lanes_layout_is_refused_in_one_line_where_it_cannot_run(cfg, words):
    p = Problem(K=4, d=4, n=5)  # float32: matmul_precision applies
    with pytest.raises(ConfigError, match="step_layout") as e:
        ncflow.simulate(p, Config(progress=False, runs=2, max_steps=10, step_layout="lanes", **cfg))
    assert words in str(e.value) and "\n" not in str(e.value)
    assert e.value.field == "step_layout"


def test_cli_refuses_the_lanes_layout_on_the_cpu_plan_with_status_2(capsys):
    code, out, err = run_cli(["run", "--step-layout", "lanes", "--runs", "2", "--max-steps", "10"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--step-layout lanes needs plan wide" in lines[0] and "Traceback" not in err


def test_step_layout_setting_is_checked():
    with pytest.raises(ConfigError, match="step_layout must be one of"):
        Config(step_layout="soa")
    assert Config().step_layout == "vmap"
