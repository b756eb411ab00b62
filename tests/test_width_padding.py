"""Zero-padded hidden widths under full deep GD (issue 22.3; benchmarks/width_padding.py (a)): a run started
at its true widths and padded with zero rows and columns keeps its padded units exactly zero at every step of
``ncflow.maths.deep_objective.gd_step``, and its f and real entries are the unpadded run's. Linear and ReLU,
float64 (conftest)."""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import pytest

from ncflow.maths import deep_objective as do

from helpers import assert_trees_close, plain_deep_objective, rel_diff

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from width_padding import pad_params, unpad_params  # noqa: E402

STEPS = 40
WIDTHS, PADDED = (3, 5, 4), (6, 9, 7)


def _setup(activation):
    bias = "unregularized" if activation == "linear" else "none"
    spec = do.DeepSpec(K=4, sizes=(3, 6, 2, 5), widths=WIDTHS, activation=activation, bias=bias, dtype="float64")
    pspec = dataclasses.replace(spec, widths=PADDED)
    lams = [0.004, 0.006, 0.008]
    co, pco = do.coeffs(spec, lams, 0.005), do.coeffs(pspec, lams, 0.005)
    x0 = do.gaussian_start(spec, jax.random.key(3), 1.0)
    if spec.has_bias:
        x0 = x0._replace(b=0.1 * jax.random.normal(jax.random.key(4), (spec.K,)))
    return spec, pspec, co, pco, x0


def _trajectory(spec, co, x0, lr=0.2):
    """The GD states x_0..x_STEPS, stacked on a leading axis."""
    def body(x, _):
        return do.gd_step(spec, co, x, lr), x
    last, xs = jax.jit(lambda x: jax.lax.scan(body, x, None, length=STEPS))(x0)
    return jax.tree_util.tree_map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)[None]]), xs, last)


def _padded_parts(ys) -> list:
    """Every padded row and column of a stacked padded trajectory."""
    dims = (*WIDTHS, ys.Ws[-1].shape[1])
    parts = [ys.H[:, WIDTHS[0]:]]
    for i, W in enumerate(ys.Ws):
        parts += [W[:, dims[i + 1]:], W[:, :, dims[i]:]]
    return [p for p in parts if p.size]


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_padded_units_stay_zero_and_f_is_equal(activation):
    spec, pspec, co, pco, x0 = _setup(activation)
    if activation == "relu":  # the masks really cut something
        assert np.mean(np.asarray(x0.Ws[0] @ x0.H) <= 0) > 0.3
    xs = _trajectory(spec, co, x0)
    ys = _trajectory(pspec, pco, pad_params(x0, PADDED))
    for part in _padded_parts(ys):
        assert np.all(part == 0.0)  # exactly, at every step
    f_ref = np.asarray(jax.jit(jax.vmap(lambda x: plain_deep_objective(spec, co, x)))(xs))
    f_pad = np.asarray(jax.jit(jax.vmap(lambda y: do.objective(pspec, pco, y)))(ys))
    f = np.asarray(jax.jit(jax.vmap(lambda x: do.objective(spec, co, x)))(xs))
    assert np.max(rel_diff(f_pad, f_ref)) <= 1e-12 and np.max(rel_diff(f, f_ref)) <= 1e-12
    assert_trees_close(jax.vmap(lambda y: unpad_params(y, WIDTHS))(ys), xs)
    assert f[-1] < 0.9 * f[0]  # the runs moved


def test_a_start_drawn_at_the_padded_width_is_another_model():
    """Padding is exact only for a start drawn at the true width: one drawn at the padded width has non-zero
    padded units that stay non-zero, and another f."""
    spec, pspec, co, pco, x0 = _setup("relu")
    wide = do.gaussian_start(pspec, jax.random.key(3), 1.0)
    ys = _trajectory(pspec, pco, wide)
    assert max(np.max(np.abs(p[-1])) for p in _padded_parts(ys)) > 1e-3
    assert rel_diff(do.objective(pspec, pco, wide), plain_deep_objective(spec, co, x0)) > 1e-3
