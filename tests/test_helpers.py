"""The shared test helpers can fail: the compile counter sees a fresh compile and not a cached
call, and the one tree comparison rejects what its documented tolerances reject."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import EXACT, F32_TOL, F64_TOL, CompileCounter, assert_trees_close, rel_diff


def test_compile_counter_sees_a_fresh_compile_and_not_a_cached_call(compile_counter):
    f = jax.jit(lambda x: 2.0 * x + 1.0)  # a new function: nothing cached for it yet
    x = np.arange(3.0)
    with compile_counter:
        f(x).block_until_ready()
    assert compile_counter.count >= 1, compile_counter.names
    assert any("lambda" in name for name in compile_counter.names), compile_counter.names
    with compile_counter:  # each block restarts at zero
        f(x).block_until_ready()
    assert compile_counter.count == 0, compile_counter.names
    with compile_counter:  # a new shape is a new program
        f(np.arange(4.0)).block_until_ready()
    assert compile_counter.count >= 1, compile_counter.names


def test_compile_counter_stops_listening_after_its_block():
    c = CompileCounter()
    with c:
        pass
    jax.jit(lambda x: x - 3.0)(np.arange(5.0)).block_until_ready()
    assert c.count == 0
    with pytest.raises(RuntimeError, match="inside"):  # an exception inside the block still unregisters
        with c:
            raise RuntimeError("inside")
    jax.jit(lambda x: x * 7.0)(np.arange(5.0)).block_until_ready()
    assert c.count == 0


def test_tree_comparison_float64_tolerance():
    x = {"W": np.ones((2, 3)), "b": np.zeros(2)}
    assert_trees_close(x, {"W": x["W"] * (1 + 0.5 * F64_TOL["rtol"]), "b": x["b"] + 0.5 * F64_TOL["atol"]})
    with pytest.raises(AssertionError):
        assert_trees_close(x, {"W": x["W"] * (1 + 4 * F64_TOL["rtol"]), "b": x["b"]})
    with pytest.raises(AssertionError):
        assert_trees_close(x, {"W": x["W"], "b": x["b"] + 4 * F64_TOL["atol"]})
    with pytest.raises(AssertionError):  # structure is compared too
        assert_trees_close(x, {"W": x["W"]})


def test_tree_comparison_float32_default_and_exact():
    a = jnp.ones(4, jnp.float32)
    assert_trees_close(a, a * (1 + 0.5 * F32_TOL["rtol"]))  # float32: the float32 row
    with pytest.raises(AssertionError):
        assert_trees_close(a, a * (1 + 4 * F32_TOL["rtol"]))
    with pytest.raises(AssertionError):  # float32 arithmetic against a float64 tolerance fails
        assert_trees_close(a, a * np.float32(1 + 1e-6), **F64_TOL)
    b = np.nextafter(np.ones(4), 2.0)
    assert_trees_close(np.ones(4), np.ones(4), **EXACT)
    with pytest.raises(AssertionError):  # one ulp apart is not exact
        assert_trees_close(np.ones(4), b, **EXACT)


def test_rel_diff():
    np.testing.assert_array_equal(rel_diff([1.0, 3.0], [2.0, 3.0]), [0.5, 0.0])
    assert rel_diff(1e-3, 0.0) > 1e290 and rel_diff(0.0, 0.0) == 0.0  # b = 0 is floored: no 0/0
