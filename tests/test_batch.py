"""The many-run machinery piece by piece: the stop rule as a pure function, the lane table's
reordering, the one place where budgets are masked, the history buffers, and the process-wide
program cache (a second ``simulate`` of the same shape compiles nothing)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.batch import programs, stop
from ncflow.batch.history import History, record_chunks
from ncflow.batch.lanes import LaneTable
from ncflow.codes import BUDGET, CONVERGED, DIVERGED, PADDING, RUNNING, STEP_FAILED
from ncflow.outcomes import Tolerances

_POINT = ncflow.Point(problem=ncflow.Problem(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2), runs=5, lr=0.5,
                      init_scale=1.0, seed=0)
TOL = Tolerances(gtol=1e-6, ftol=1e-9, gap_tol=1e-8, geom_tol=1e-3, neg_tol=1e-8, strict_gtol=1e-9)


def _table(n=6, f_star=0.5):
    batch = np.arange(n)
    batch[-1] = -1  # one padding lane
    return LaneTable.build(batch, np.zeros(n, int), [_POINT], [TOL], [f_star], [None]).replace(
        f0=np.full(n, 1.0), f_prev=np.full(n, 0.5), steps=np.full(n, 100))


def _status(lanes, f, g, done=None, failed=None, early_stop=True, max_steps=1000):
    n = len(f)
    done = np.zeros(n, bool) if done is None else done
    failed = np.zeros(n, bool) if failed is None else failed
    return stop.next_status(lanes, np.asarray(f, float), np.asarray(g, float), done, failed,
                            early_stop=early_stop, max_steps=max_steps)


def test_stop_rule_each_branch():
    lanes = _table()
    f = [0.5, 0.5, 0.7, np.nan, 2e6, 0.5]
    g = [1e-7, 1e-5, 1e-7, 1.0, 1.0, 1e-7]
    s = _status(lanes, f, g)
    assert s[0] == CONVERGED  # at the predicted optimum: gtol applies
    assert s[1] == RUNNING  # gradient above gtol
    assert s[2] == RUNNING  # away from f*: must be stationary to strict_gtol (1e-9), 1e-7 is not
    assert s[3] == DIVERGED and s[4] == DIVERGED  # non-finite; |f| > 1e6 max(1, |f0|)
    assert s[5] == PADDING  # padding never changes
    s = _status(lanes.replace(f_prev=np.full(6, 0.7)), [0.7] * 6, [1e-10] * 6)  # strictly stationary away from f*
    assert s[0] == CONVERGED


def test_stop_rule_needs_a_small_objective_change():
    lanes = _table().replace(f_prev=np.full(6, 0.4))
    assert _status(lanes, [0.5] * 6, [1e-7] * 6)[0] == RUNNING


def test_stop_rule_budget_stepper_and_no_early_stop():
    lanes = _table()
    f, g = [0.6] * 6, [1.0] * 6
    done = np.array([True, False, False, False, False, False])
    failed = np.array([False, True, False, False, False, False])
    s = _status(lanes, f, g, done=done, failed=failed)
    assert s[0] == BUDGET and s[1] == STEP_FAILED and s[2] == RUNNING
    s = _status(lanes.replace(steps=np.full(6, 1000)), f, g)
    assert list(s[:5]) == [BUDGET] * 5
    # without early stop a converged or even non-finite lane keeps running until its budget
    s = _status(lanes, [0.5, np.nan, 0.5, 0.5, 0.5, 0.5], [1e-7] * 6, early_stop=False)
    assert list(s[:5]) == [RUNNING] * 5
    assert not np.shares_memory(s, lanes.status)


def test_lane_table_take_reorders_every_column():
    status = _table().status.copy()
    status[2] = CONVERGED
    lanes = _table().replace(steps=np.arange(6) * 10, f_prev=np.arange(6) / 10.0, status=status)
    order = np.array([5, 3, 1, 0, 2, 4])
    moved = lanes.take(order)
    for field in dataclasses.fields(LaneTable):
        np.testing.assert_array_equal(getattr(moved, field.name), getattr(lanes, field.name)[order])
    assert moved.finished.sum() == 1 and moved.running.sum() == 4  # the padding lane is neither
    assert moved.status[4] == CONVERGED and moved.status[0] == PADDING


def test_masked_step_keeps_a_lane_exactly():
    new = {"W": jnp.full((3, 2, 2), np.inf), "b": jnp.full((3, 2), np.nan)}
    old = {"W": jnp.arange(12.0).reshape(3, 2, 2), "b": jnp.ones((3, 2))}
    out = programs._masked(jnp.array([True, False, True]), new, old)
    np.testing.assert_array_equal(out["W"][1], old["W"][1])
    np.testing.assert_array_equal(out["b"][1], old["b"][1])
    assert np.all(np.isinf(np.asarray(out["W"])[[0, 2]])) and np.all(np.isnan(np.asarray(out["b"])[[0, 2]]))


def test_history_buffers_are_written_by_batch_index():
    h = History(runs=4, max_chunks=30, chunk=10, max_steps=295)
    assert record_chunks(30) == h.at and 1 in h.at
    cols = {k: np.array([0.0, 1.0, 2.0, 3.0]) for k in ("objective", "grad_norm", "nc1", "nc2", "nc3")}
    h.write(0, np.array([2, -1, 0, 1]), cols)  # lane 1 is padding; lanes hold runs 2, 0, 1
    h.write(30, np.array([1, 2, -1, 0]), cols)
    out = h.for_runs(np.array([0, 1, 2]), f_star=0.5)
    np.testing.assert_array_equal(out["step"], [0, 295])  # capped by max_steps
    np.testing.assert_array_equal(out["objective"], [[2.0, 3.0, 0.0], [3.0, 0.0, 1.0]])
    np.testing.assert_array_equal(out["gap"], out["objective"] - 0.5)


def test_second_simulate_of_the_same_shape_compiles_nothing(compile_counter):
    p = ncflow.Problem(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
    first = ncflow.simulate(p, runs=5, seed=1, max_steps=400, progress=False, engine="collapsed")
    size = programs.cache_size()
    q = ncflow.Problem(K=3, d=4, n=2, lambda_w=3e-2, lambda_h=1e-2, dtype="float64")  # same shape
    with compile_counter:
        second = ncflow.simulate(q, runs=5, seed=2, max_steps=400, progress=False, engine="collapsed")
    assert compile_counter.count == 0, compile_counter.names
    assert programs.cache_size() == size
    assert second.timing["compile_cpu_s"] == 0.0 and first.runs == second.runs == 5


def test_a_new_shape_compiles_its_own_programs(compile_counter):
    p = ncflow.Problem(K=3, d=5, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
    size = programs.cache_size()
    with compile_counter:
        ncflow.simulate(p, runs=3, max_steps=100, progress=False, engine="collapsed")
    assert compile_counter.count > 0 and programs.cache_size() > size


@pytest.mark.parametrize("devices", [1, 4])
def test_budget_shorter_than_a_chunk_is_exact(devices):
    """A run whose budget ends inside a chunk takes exactly its budget: the masked steps of the
    chunk leave it bitwise where it stopped (the same as a chunk that ends there)."""
    p = ncflow.Problem(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
    kw = dict(runs=3, seed=4, progress=False, engine="full", devices=jax.devices()[:devices])
    a = ncflow.simulate(p, max_steps=37, chunk=100, **kw)
    b = ncflow.simulate(p, max_steps=37, chunk=37, **kw)
    assert list(a.per_run["steps"]) == [37] * 3
    np.testing.assert_array_equal(a.final_state.W, b.final_state.W)
    np.testing.assert_array_equal(a.per_run["objective"], b.per_run["objective"])
