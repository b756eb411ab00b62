"""Problem: validation of every field (message starts with the field name and states the
accepted range) and the derived values c, N, bias_mode (THEORY.md §1)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.problem import Problem, ProblemError

BASE = dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=2e-3)


def make(**overrides):
    return Problem(**{**BASE, **overrides})


# ----------------------------------------------------------------------------- valid problems
def test_valid_construction_and_defaults():
    p = make()
    assert (p.K, p.d, p.n) == (4, 8, 5)
    assert p.lambda_w == 5e-3 and p.lambda_h == 2e-3
    assert p.lambda_b == 0.0
    assert p.bias is True
    assert p.loss == "mse"
    assert p.alpha == 1.0 and p.target_scale == 1.0
    assert p.dtype == "float32"  # the one default of API, CLI and TOML (ncflow.settings)
    assert p.jnp_dtype == np.dtype("float32")
    assert make(dtype="float64").jnp_dtype == np.dtype("float64")


# equinox warns when a numpy scalar lands in a static field; harmless for hashable scalars.
@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")
@pytest.mark.parametrize(
    "kw",
    [
        dict(K=2, d=1, n=1),  # smallest sizes
        dict(K=np.int64(3), d=np.int32(2), n=np.int64(7)),  # numpy integers are integers
        dict(lambda_w=0.0, lambda_h=0.0),  # zero decay is allowed
        dict(lambda_b=0.3),
        dict(bias=False),
        dict(bias=np.bool_(False)),
        dict(loss="rescaled-mse", alpha=3.0, target_scale=2.0),
        dict(dtype="float32"),
    ],
)
def test_valid_variants(kw):
    make(**kw)


def test_batched_coefficients_are_accepted():
    p = make(lambda_w=jnp.array([1e-3, 2e-3, 3e-3]), lambda_b=np.array([0.0, 0.1, 0.2]))
    assert p.bias_mode == "regularized"  # any nonzero λ_b in the batch
    leaves = jax.tree_util.tree_leaves(p)
    assert any(getattr(x, "shape", ()) == (3,) for x in leaves)


def test_sizes_flags_and_dtype_are_static_coefficients_are_leaves():
    p = make(lambda_b=0.1, loss="rescaled-mse", alpha=2.0, target_scale=3.0)
    leaves = [float(x) for x in jax.tree_util.tree_leaves(p)]
    assert sorted(leaves) == sorted([5e-3, 2e-3, 0.1, 2.0, 3.0])


# ----------------------------------------------------------------------------- derived values
@pytest.mark.parametrize("K,n,lw,lh", [(4, 5, 5e-3, 5e-3), (10, 100, 5e-4, 5e-4), (3, 2, 0.2, 1e-3), (2, 1, 0.0, 1.0)])
def test_c_and_N(K, n, lw, lh):
    p = Problem(K=K, d=3, n=n, lambda_w=lw, lambda_h=lh)
    assert p.N == n * K
    assert math.isclose(p.c, K * math.sqrt(n * lw * lh), rel_tol=1e-15, abs_tol=0.0)


def test_c_reference_value():
    # THEORY.md §6 first row: K=4, n=5, λ=5e-3  ->  c = 4 * sqrt(5 * 2.5e-5)
    assert math.isclose(make(lambda_w=5e-3, lambda_h=5e-3).c, 0.044721359549995794, rel_tol=1e-14)


def test_bias_mode():
    assert make().bias_mode == "unregularized"
    assert make(lambda_b=0.0).bias_mode == "unregularized"
    assert make(lambda_b=1e-3).bias_mode == "regularized"
    assert make(bias=False).bias_mode == "none"


def test_describe():
    desc = make(lambda_b=0.25).describe()
    assert desc == {
        "K": 4, "d": 8, "n": 5, "lambda_w": 5e-3, "lambda_h": 2e-3, "lambda_b": 0.25,
        "bias": "regularized", "loss": "mse", "alpha": 1.0, "target_scale": 1.0, "dtype": "float32",
    }


# ----------------------------------------------------------------------------- invalid problems
def _raises(field, range_text, **overrides):
    with pytest.raises(ProblemError) as info:
        make(**overrides)
    msg = str(info.value)
    assert msg.startswith(field + " "), msg
    assert range_text in msg, msg
    return msg


def test_problem_error_is_value_error():
    assert issubclass(ProblemError, ValueError)


@pytest.mark.parametrize(
    "field,value,range_text",
    [
        ("K", 1, "in [2, 1048576]"),
        ("K", 0, "in [2, 1048576]"),
        ("K", -3, "in [2, 1048576]"),
        ("K", 2**20 + 1, "in [2, 1048576]"),
        ("d", 0, "in [1, 65536]"),
        ("d", -1, "in [1, 65536]"),
        ("n", 0, "in [1, 16777216]"),
    ],
)
def test_sizes_below_range(field, value, range_text):
    msg = _raises(field, range_text, **{field: value})
    assert "integer" in msg


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")
@pytest.mark.parametrize("field", ["K", "d", "n"])
@pytest.mark.parametrize("value", [2.5, 4.0, "4", True, None, np.float64(3.0)])
def test_sizes_must_be_integers(field, value):
    # d and n also demand integers; the floor is stated in every message.
    floor = {"K": "in [2, ", "d": "in [1, ", "n": "in [1, "}[field]
    msg = _raises(field, floor, **{field: value})
    assert "integer" in msg


@pytest.mark.parametrize("field", ["lambda_w", "lambda_h", "lambda_b"])
@pytest.mark.parametrize("value", [-1.0, -1e-12, np.array([0.1, -0.1])])
def test_negative_lambdas(field, value):
    _raises(field, ">= 0", **{field: value})


@pytest.mark.parametrize("field", ["lambda_w", "lambda_h", "lambda_b"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.array([0.1, np.nan])])
def test_nonfinite_lambdas_rejected(field, value):
    _raises(field, "finite", **{field: value})


def test_nonfinite_lambda_message_states_range():
    # Negative and non-numeric λ's are rejected with the accepted range (">= 0") in the
    # message; NaN / ±inf must be too (ProblemError contract: name the field and the range).
    bad = []
    for field in ("lambda_w", "lambda_h", "lambda_b"):
        for value in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ProblemError) as info:
                make(**{field: value})
            msg = str(info.value)
            if not (msg.startswith(field + " ") and ">= 0" in msg and "finite" in msg):
                bad.append(msg)
    assert not bad, "messages without the accepted range: " + "; ".join(bad)


@pytest.mark.parametrize("field", ["lambda_w", "lambda_b"])
@pytest.mark.parametrize("value", ["abc", object(), [1.0, "x"]])
def test_non_numeric_lambdas(field, value):
    _raises(field, ">= 0", **{field: value})


@pytest.mark.parametrize("lb", [0.1, 1e-12, np.array([0.0, 0.1])])
def test_lambda_b_needs_bias(lb):
    msg = _raises("lambda_b", "bias=False", bias=False, lambda_b=lb)
    assert "0" in msg


def test_bias_must_be_bool():
    _raises("bias", "True or False", bias=1)
    _raises("bias", "True or False", bias="yes")


@pytest.mark.parametrize("loss", ["MSE", "ce", "", None, "rescaled_mse"])
def test_bad_loss(loss):
    msg = _raises("loss", "mse", loss=loss)
    assert "rescaled-mse" in msg


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "f64", "int32", None, np.float64])
def test_bad_dtype(dtype):
    msg = _raises("dtype", "float32", dtype=dtype)
    assert "float64" in msg


@pytest.mark.parametrize("field", ["alpha", "target_scale"])
@pytest.mark.parametrize("value", [0.0, -1.0, -1e-9])
def test_alpha_and_target_scale_positive(field, value):
    _raises(field, "> 0", loss="rescaled-mse", **{field: value})


@pytest.mark.parametrize("field", ["alpha", "target_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_alpha_and_target_scale_finite(field, value):
    _raises(field, "finite", loss="rescaled-mse", **{field: value})


def test_alpha_validated_even_for_plain_mse():
    _raises("alpha", "> 0", alpha=0.0)


@pytest.mark.parametrize("field", ["alpha", "target_scale"])
def test_rescaled_mse_coefficients_are_refused_with_plain_mse(field):
    with pytest.raises(ProblemError) as info:
        make(**{field: 2.0})  # loss "mse": the value would be silently ignored
    assert str(info.value).startswith(field + " is only used with loss rescaled-mse"), str(info.value)
    assert info.value.field == field
    make(**{field: 1.0})  # the default (the engine's lanes of an mse batch hold it)
    make(**{field: np.ones(3)})
