"""Tests of benchmarks/baselines.py (the reference implementations of the speed benchmark).

A tiny float32 problem: every available baseline must decrease the objective from its
initialization, and all must agree on the median final objective to within 5% (they draw
their initializations from different RNGs, so per-run values differ).
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

import baselines  # noqa: E402

TINY = dict(K=3, d=4, n=2, lam_w=1e-2, lam_h=1e-2, lam_b=1e-2, lr=0.5)
STEPS = 200
RUNS = 4


def _check_result(res, runs, steps):
    assert set(res) >= {"final_objective", "seconds", "compile_s", "run_steps", "runs_timed"}
    assert res["final_objective"].shape == (res["runs_timed"],)
    assert res["runs_timed"] == runs
    assert res["run_steps"] == runs * steps
    assert res["seconds"] > 0.0
    assert res["compile_s"] >= 0.0
    assert np.all(np.isfinite(res["final_objective"]))


def _decreases(fn):
    init = fn(**TINY, steps=0, runs=RUNS, dtype="float32", seed=0)
    final = fn(**TINY, steps=STEPS, runs=RUNS, dtype="float32", seed=0)
    _check_result(init, RUNS, 0)
    _check_result(final, RUNS, STEPS)
    assert np.all(final["final_objective"] < init["final_objective"]), (init, final)
    return final


@pytest.fixture(scope="module")
def numpy_result():
    return _decreases(baselines.numpy_loop)


@pytest.fixture(scope="module")
def jax_result():
    return _decreases(baselines.naive_jax)


def _agree(a, b):
    ma, mb = np.median(a["final_objective"]), np.median(b["final_objective"])
    assert abs(ma - mb) <= 0.05 * max(abs(ma), abs(mb)), (ma, mb)


def test_numpy_loop_decreases(numpy_result):
    assert numpy_result["compile_s"] == 0.0


def test_naive_jax_decreases_and_agrees(numpy_result, jax_result):
    _agree(numpy_result, jax_result)


def test_torch_loop_decreases_and_agrees(numpy_result):
    pytest.importorskip("torch")
    _agree(numpy_result, _decreases(baselines.torch_loop))


def test_numpy_grads_match_finite_difference():
    K, d, n = 3, 4, 2
    rng = np.random.default_rng(1)
    W = rng.standard_normal((K, d))
    H = rng.standard_normal((d, n * K))
    b = rng.standard_normal(K)
    Y = baselines.labels_onehot(K, n, "float64")
    lams = (1e-2, 2e-2, 3e-2)
    grads = baselines.numpy_grads(W, H, b, Y, *lams)
    eps = 1e-6
    for idx, (P, G) in enumerate(zip((W, H, b), grads)):
        fd = np.zeros_like(P)
        for j in np.ndindex(P.shape):
            args = [W.copy(), H.copy(), b.copy()]
            args[idx][j] += eps
            fp = baselines.numpy_objective(*args, Y, *lams)
            args[idx][j] -= 2 * eps
            fm = baselines.numpy_objective(*args, Y, *lams)
            fd[j] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(G, fd, rtol=1e-6, atol=1e-8)


def test_labels_are_class_major():
    Y = baselines.labels_onehot(3, 2)
    assert Y.shape == (3, 6)
    np.testing.assert_array_equal(Y.argmax(axis=0), [0, 0, 1, 1, 2, 2])


def test_max_wall_s_limits_runs():
    res = baselines.numpy_loop(**TINY, steps=5, runs=50, dtype="float32", max_wall_s=0.0)
    assert res["runs_timed"] == 1
    assert res["run_steps"] == 5
    assert res["final_objective"].shape == (1,)
    assert res["runs_requested"] == 50


def test_float64_without_x64_raises(monkeypatch):
    # tests/conftest.py turns x64 on for the whole session; simulate it being off.
    monkeypatch.setattr(baselines, "_x64_enabled", lambda: False)
    with pytest.raises(ValueError, match="x64"):
        baselines.naive_jax(**TINY, steps=1, runs=1, dtype="float64")
    with pytest.raises(ValueError, match="x64"):
        baselines.matmul_ceiling(dtype="float64", size=8, repeats=1)


def test_naive_jax_float32_stays_float32(jax_result):
    # Even under x64 mode (tests/conftest.py) Python-scalar coefficients must not promote
    # the float32 program to float64.
    assert jax_result["final_objective"].dtype == np.float32


def test_matmul_ceiling_and_rss():
    out = baselines.matmul_ceiling(size=64, repeats=2)
    assert out["jax_gflops"] > 0 and out["numpy_gflops"] > 0
    assert baselines.peak_rss_mb() > 1.0
