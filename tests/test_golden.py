"""The refactoring safety net: per-run results of tiny configurations equal the committed golden
file bit for bit (steps, outcome, the exact float64 bits of the final objective), for full and
collapsed GD, an optax optimizer and the gradient flow, on 1 and 4 devices.

A change that alters a result on purpose regenerates the file (``python tests/golden/make_golden.py``)
and says so in its commit message.
"""

import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("make_golden", os.path.join(HERE, "golden", "make_golden.py"))
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


@pytest.fixture(scope="module")
def computed():
    return make_golden.compute()


@pytest.fixture(scope="module")
def golden():
    with open(make_golden.PATH) as fh:
        return json.load(fh)


def test_golden_covers_every_case(golden):
    want = {f"{name}@{n}" for name, _, _ in make_golden.CASES for n in make_golden.DEVICES}
    assert set(golden) == want
    outcomes = {o for v in golden.values() for o in v["outcome"]}
    assert {"global", "saddle", "not_converged"} <= outcomes  # the file exercises several labels


@pytest.mark.parametrize("case", [f"{name}@{n}" for name, _, _ in make_golden.CASES for n in make_golden.DEVICES])
def test_per_run_results_equal_the_golden_file(computed, golden, case):
    assert computed[case] == golden[case]
