"""The execution plans (ncflow.batch.plan): the wide plan forced on CPU gives the host rule's per-run
stop steps and outcomes; its device loop does not depend on how often the host visits; matrix-product
precision is explicit and reduced precision is an honest opt-in (emulated on CPU); memory per device.

Float64 with x64 on (conftest): the device evaluates the stop rule in float64, like the host.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.batch import plan as plan_mod
from ncflow.batch.layout import make_layout
from ncflow.batch.loop import Point, simulate_points
from ncflow.batch.memory import available_memory_bytes, estimate_memory
from ncflow.config import Config
from ncflow.dynamics.build import dynamics_for
from ncflow.dynamics.precision import PRECISIONS, elementwise_products, emulated, round_mantissa, step_fn
from ncflow.errors import ConfigError
from ncflow.problem import Problem

SMALL = dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")
PER_RUN_EXACT = ("steps", "outcome", "stop", "certified_step")

CASES = {
    "certified": (dict(SMALL), dict(runs=24)),
    "converged": (dict(SMALL), dict(runs=24, stop="converged")),
    "float32": (dict(SMALL, dtype="float32"), dict(runs=24, stop="converged")),
    "diverged": (dict(SMALL), dict(runs=8, lr=3.0)),
    "origin-saddle": (dict(SMALL), dict(runs=4, init_scale=0.0, stop="converged", max_steps=3000)),
    "budget": (dict(SMALL), dict(runs=10, stop="converged", max_steps=250)),
    "history": (dict(K=3, d=4, n=3, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
                dict(runs=6, history=True, stop="converged")),
    "bias-free-full": (dict(SMALL, bias=False), dict(runs=8, engine="full")),
    "momentum": (dict(SMALL), dict(runs=6, optimizer="momentum", max_steps=4000)),
    "class-sizes": (dict(class_sizes=[9, 7, 4, 2], d=5, lambda_w=1e-2, lambda_h=1e-2, dtype="float64"),
                    dict(runs=8)),
}


def _run(prob_kw, cfg_kw, plan, devices=None):
    return ncflow.simulate(Problem(**prob_kw), Config(progress=False, plan=plan, **cfg_kw), devices=devices)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wide_plan_forced_on_cpu_stops_every_run_like_the_host_rule(case):
    prob_kw, cfg_kw = CASES[case]
    cpu = _run(prob_kw, cfg_kw, "cpu")
    wide = _run(prob_kw, cfg_kw, "wide")
    assert cpu.timing["plan"] == "cpu" and wide.timing["plan"] == "wide"
    for k in PER_RUN_EXACT:
        np.testing.assert_array_equal(wide.per_run[k], cpu.per_run[k], err_msg=k)
    rtol = 1e-5 if prob_kw.get("dtype") == "float32" else 1e-10
    np.testing.assert_allclose(wide.per_run["objective"], cpu.per_run["objective"], rtol=rtol, atol=1e-12)
    if cfg_kw.get("history"):
        np.testing.assert_array_equal(wide.history["step"], cpu.history["step"])
        np.testing.assert_allclose(wide.history["objective"], cpu.history["objective"], rtol=1e-10)


def test_wide_plan_on_two_devices_matches_one():
    prob_kw, cfg_kw = CASES["certified"]
    one = _run(prob_kw, cfg_kw, "wide", devices=jax.devices()[:1])
    two = _run(prob_kw, cfg_kw, "wide", devices=jax.devices()[:2])
    assert two.timing["devices"] == 2
    for k in PER_RUN_EXACT:
        np.testing.assert_array_equal(two.per_run[k], one.per_run[k], err_msg=k)


def test_wide_results_do_not_depend_on_how_often_the_host_visits(monkeypatch):
    prob_kw, cfg_kw = CASES["converged"]
    often = None
    monkeypatch.setattr("ncflow.batch.loop.MAX_CHUNKS_PER_VISIT", 1)  # a visit after every chunk
    often = _run(prob_kw, cfg_kw, "wide")
    monkeypatch.setattr("ncflow.batch.loop.MAX_CHUNKS_PER_VISIT", 10**5)
    monkeypatch.setattr("ncflow.batch.loop.VISIT_SECONDS", 1e3)  # as many chunks per visit as it takes
    rare = _run(prob_kw, cfg_kw, "wide")
    for k in PER_RUN_EXACT + ("objective", "grad_norm"):
        np.testing.assert_array_equal(rare.per_run[k], often.per_run[k], err_msg=k)


def test_a_second_wide_batch_of_the_same_shape_compiles_nothing(compile_counter):
    _run(dict(SMALL), dict(runs=8), "wide")
    with compile_counter:
        _run(dict(SMALL, lambda_w=4e-3), dict(runs=8, seed=3), "wide")
    assert compile_counter.count == 0, compile_counter.names


def test_summaries_on_the_devices_equal_the_gathered_ones(monkeypatch):
    """The accelerators' path (summaries vmapped where the lanes live) on one CPU device."""
    prob_kw, cfg_kw = dict(SMALL, d=12), dict(runs=12, stop="converged", history=True)
    host = _run(prob_kw, cfg_kw, "wide", devices=jax.devices()[:1])
    monkeypatch.setattr(plan_mod.Plan, "batched_lapack", property(lambda self: True))
    dev = _run(prob_kw, cfg_kw, "wide", devices=jax.devices()[:1])
    for k in ("objective", "nc1", "nc2", "nc3", "gram_error", "grad_norm"):
        np.testing.assert_allclose(dev.per_run[k], host.per_run[k], rtol=1e-9, atol=1e-13, err_msg=k)
    np.testing.assert_array_equal(dev.per_run["outcome"], host.per_run["outcome"])
    for k in ("nc1", "nc2", "nc3"):  # the history's diagnostics, also computed on the devices
        np.testing.assert_allclose(dev.history[k], host.history[k], rtol=1e-9, atol=1e-13, err_msg=k)


def test_accelerator_path_leaves_final_states_on_the_devices(monkeypatch):
    """On an accelerator (single process) the final states are not copied to the host: Result.final_state
    holds the devices' arrays, equal to the host path's; Hessian probes (origin saddles) and the §7
    columns read their few rows from there; a batch of two points gives each its own rows."""
    sizes = dict(class_sizes=[6, 4, 2], d=4, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    cases = [(dict(SMALL), dict(runs=4, init_scale=0.0, stop="converged", max_steps=3000)),  # Hessian probes
             (sizes, dict(runs=5))]
    host = [_run(p, c, "wide", devices=jax.devices()[:2]) for p, c in cases]
    pts = [Point(Problem(**SMALL), 3, 0.5, 1.0, 1), Point(Problem(**SMALL, lambda_b=1e-3), 2, 0.5, 1.0, 2)]
    host_pts = simulate_points(pts, Config(progress=False, plan="wide"), devices=jax.devices()[:2])
    monkeypatch.setattr(plan_mod.Plan, "batched_lapack", property(lambda self: True))
    dev = [_run(p, c, "wide", devices=jax.devices()[:2]) for p, c in cases]
    dev_pts = simulate_points(pts, Config(progress=False, plan="wide"), devices=jax.devices()[:2])
    assert set(host[0].per_run["outcome"]) == {"saddle"}
    for h, d in zip(host + host_pts, dev + dev_pts):
        assert isinstance(d.final_state.W, jax.Array) and isinstance(h.final_state.W, np.ndarray)
        assert d.final_state.W.shape[0] == d.runs
        for leaf_h, leaf_d in zip(h.final_state, d.final_state):
            np.testing.assert_allclose(np.asarray(leaf_d), leaf_h, rtol=1e-9, atol=1e-13)
        for k in ("outcome", "steps", "stop") + (("classes_as_predicted", "merged") if "merged" in h.per_run else ()):
            np.testing.assert_array_equal(d.per_run[k], h.per_run[k], err_msg=k)
        np.testing.assert_allclose(d.per_run["min_hessian_eig"], h.per_run["min_hessian_eig"], rtol=1e-6)
        p0 = d.final_params(0)
        np.testing.assert_allclose(np.asarray(p0.W), np.asarray(h.final_params(0).W), rtol=1e-9, atol=1e-13)


def test_auto_plan_is_cpu_on_cpu_and_wide_elsewhere():
    cfg = Config()
    prec = PRECISIONS["float32"]
    assert plan_mod.choose(cfg, "cpu", "collapsed") == plan_mod.Plan("cpu", "cpu", prec)
    assert plan_mod.choose(cfg, "gpu", "collapsed").name == "wide"
    assert plan_mod.choose(cfg, "tpu", "collapsed").name == "wide"
    assert plan_mod.choose(dataclasses.replace(cfg, plan="cpu"), "gpu", "full").name == "cpu"


def test_wide_layout_is_one_aligned_group_per_device():
    lay = make_layout(1000, None, jax.devices()[:4], align=32)
    assert lay.lanes_per_device == 256 and lay.group == 256  # ceil(250/32)*32
    assert (lay.lane_batch_index() >= 0).sum() == 1000


# ------------------------------------------------------------------------------ precision
def test_round_mantissa_matches_bfloat16_and_tf32_rounding():
    import ml_dtypes

    x = jnp.asarray(np.random.default_rng(0).normal(size=2000) * 10.0 ** np.arange(-10, 10).repeat(100),
                    jnp.float32)
    bf = np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(round_mantissa(x, 7)), bf)
    tf = np.asarray(round_mantissa(x, 10))
    rel = np.abs(tf - np.asarray(x)) / np.abs(np.asarray(x))
    assert rel.max() <= 2.0**-11 and rel.max() > 2.0**-13  # rounded to 10 bits, to nearest
    assert np.all(np.asarray(round_mantissa(jnp.asarray([np.inf, -np.inf], jnp.float32), 10)) == [np.inf, -np.inf])
    f64 = jnp.asarray([1.0 + 2.0**-30])
    assert round_mantissa(f64, 7) is f64  # only float32 is rounded


def test_emulated_rounds_the_inputs_of_every_matrix_product():
    rng = np.random.default_rng(1)
    A, B = (jnp.asarray(rng.normal(size=(5, 5)), jnp.float32) for _ in range(2))

    def f(a, b):
        return jax.jit(lambda u, v: u @ v)(a, b) + a  # a product inside a nested jit

    got = jax.jit(emulated(f, 7))(A, B)
    want = round_mantissa(A, 7) @ round_mantissa(B, 7) + A
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    assert np.abs(np.asarray(got) - np.asarray(f(A, B))).max() > 1e-4  # and that is not the full product


def _dots(fn, *args) -> int:
    """The number of dot_general equations in the jaxpr of ``fn(*args)``, nested jits included."""
    def count(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "dot_general"
            for p in eqn.params.values():
                if hasattr(p, "jaxpr"):
                    n += count(p.jaxpr if hasattr(p.jaxpr, "eqns") else p.jaxpr.jaxpr)
        return n
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_elementwise_products_equal_the_products_and_replace_every_dot_or_none():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(4, 6)), rng.normal(size=(6, 3))
    v, u = rng.normal(size=6), rng.normal(size=4)

    def f(a, b, v, u):  # matrix-matrix, transposed operands, matrix-vector, vector-matrix, a nested jit
        inner = jax.jit(lambda x, y: x @ y)
        return (a @ b, (b.T @ a.T).T, a @ v, u @ a, inner(a.T, u), jnp.dot(v, v), a @ b.astype(jnp.float32))

    args = (A, B, v, u)
    want = f(*args)
    got = jax.jit(elementwise_products(f))(*args)
    assert _dots(f, *args) == 7 and _dots(elementwise_products(f), *args) == 0
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-13, atol=1e-13)
    # one product over the limit: every product stays a dot (a partial rewrite was measured slower)
    big = rng.normal(size=(30, 30))

    def g(a, b, m):
        return a @ b, m @ m
    assert _dots(elementwise_products(g, limit=1000), A, B, big) == 2
    assert _dots(elementwise_products(g, limit=30**3), A, B, big) == 0
    assert _dots(jax.vmap(elementwise_products(f)), *(np.stack([x, x]) for x in args)) == 0  # vmapped outside

    def loop(a, b):  # control flow (e.g. the "flow" optimizer's ODE solver): left as it is
        return jax.lax.fori_loop(0, 3, lambda i, m: m @ b.T @ b, a)
    assert elementwise_products(loop)(A, B.T).shape == (4, 6)
    np.testing.assert_array_equal(np.asarray(jax.jit(elementwise_products(loop))(A, B.T)),
                                  np.asarray(jax.jit(loop)(A, B.T)))


def test_cpu_steps_use_elementwise_products_except_when_emulating_reduced_precision():
    p = Problem(K=10, d=10, n=100)  # the default problem: its collapsed step has only small products
    dyn = dynamics_for(p, Config())
    x = dyn.space.from_params(p, ncflow.Params(jnp.ones((10, 10)), jnp.ones((10, 1000)), jnp.ones(10)))
    args = (p, x, 0.5)
    assert _dots(dyn.step, *args) > 0
    assert _dots(step_fn(dyn.step, PRECISIONS["float32"], "cpu"), *args) == 0
    assert _dots(step_fn(dyn.step, PRECISIONS["tf32"], "cpu"), *args) > 0  # emulation rounds dot operands
    step = dyn.step
    assert step_fn(step, PRECISIONS["float32"], "gpu") is step  # accelerators: the step as written
    # a float64 batch steps at full precision whatever matmul_precision says
    assert plan_mod.choose(Config(matmul_precision="bf16"), "cpu", "collapsed", "float64").precision.name == "float32"
    assert plan_mod.choose(Config(matmul_precision="bf16"), "cpu", "collapsed", "float32").precision.name == "bf16"


def test_reduced_precision_steps_are_never_certified_and_bf16_is_labelled_honestly():
    """Emulated on CPU: tf32 steps still converge (classified global, by stationarity, no early
    certificate); bf16 steps cannot meet the float32 tolerance and end not_converged at the budget
    — never a false saddle or local_min."""
    p = Problem(**dict(SMALL, dtype="float32"))
    full = ncflow.simulate(p, runs=12, progress=False)
    tf32 = ncflow.simulate(p, runs=12, progress=False, matmul_precision="tf32")
    bf16 = ncflow.simulate(p, runs=12, progress=False, matmul_precision="bf16", max_steps=3000)
    assert set(full.per_run["stop"]) == {"certified"}
    assert set(tf32.per_run["stop"]) == {"converged"} and set(tf32.per_run["outcome"]) == {"global"}
    assert np.isnan(tf32.per_run["certified_step"]).all()
    assert set(bf16.per_run["outcome"]) == {"not_converged"} and set(bf16.per_run["stop"]) == {"budget"}
    assert tf32.config["matmul_precision"] == "tf32"


def test_float64_runs_ignore_the_matmul_precision():
    p = Problem(**SMALL)
    a = ncflow.simulate(p, runs=6, progress=False, stop="converged")
    b = ncflow.simulate(p, runs=6, progress=False, stop="converged", matmul_precision="bf16")
    np.testing.assert_array_equal(a.per_run["objective"], b.per_run["objective"])


def test_bad_plan_and_precision_name_the_field():
    with pytest.raises(ConfigError, match="plan must be one of"):
        Config(plan="gpu")
    with pytest.raises(ConfigError, match="matmul_precision must be one of"):
        Config(matmul_precision="fp8")


# ------------------------------------------------------------------------------ memory
def test_memory_estimate_counts_the_wide_steps_temporaries_per_device():
    p = Problem(K=10, d=64, n=20)
    dyn = dynamics_for(p, Config())
    cpu = estimate_memory(p, dyn, 25_000, 16)
    wide = estimate_memory(p, dyn, 25_000, 25_000, wide=True)
    assert wide > 1.5 * cpu  # three more states per lane, at once
    assert estimate_memory(p, dyn, 25_000, 16, devices=4) == 4 * cpu  # CPU devices share the host


def test_refusal_names_runs_and_the_per_device_estimate():
    msg = r"^runs: .*plan wide\) need about [0-9.]+ [KMG]iB of .*memory, more than the [0-9.]+ [KMG]?i?B available"
    with pytest.raises(ConfigError, match=msg):
        ncflow.simulate(Problem(**SMALL), runs=64, plan="wide", progress=False, memory_limit_bytes=1000)


def test_available_memory_is_the_least_free_of_the_devices():
    class Dev:
        platform, process_index = "gpu", 0

        def __init__(self, free):
            self.free = free

        def memory_stats(self):
            return {"bytes_limit": 100 + self.free, "bytes_in_use": 100}

    assert available_memory_bytes([Dev(5 * 2**30), Dev(3 * 2**30)]) == 3 * 2**30
    assert available_memory_bytes(jax.devices()[:1]) > 0  # CPU: the host's available memory
