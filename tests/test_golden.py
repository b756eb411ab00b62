"""The refactoring safety net: per-run results of tiny configurations equal the committed golden
file bit for bit (steps, outcome, the exact float64 bits of the final objective), for full and
collapsed GD, an optax optimizer and the gradient flow, on 1 and 4 devices.

A change that alters a result on purpose regenerates the file (``python tests/golden/make_golden.py``)
and says so in its commit message.

Float32 cases: steps and outcomes are compared exactly, the objective to 8 float32 ulps. XLA compiles
for the host CPU's vector instructions, and the float32 collapsed case's last bits differ between
two AMD EPYC machines of this project (one with AVX-512, one without); float64 bits agree on both.
"""

import importlib.util
import json
import os

import numpy as np
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
    got, want = computed[case], golden[case]
    if "f32" not in case.split("@")[0]:
        assert got == want
        return
    assert {k: v for k, v in got.items() if k != "objective_hex"} == \
        {k: v for k, v in want.items() if k != "objective_hex"}
    g = np.asarray([float.fromhex(h) for h in got["objective_hex"]], np.float32)
    w = np.asarray([float.fromhex(h) for h in want["objective_hex"]], np.float32)
    ulps = np.abs(g.view(np.int32).astype(np.int64) - w.view(np.int32).astype(np.int64))
    assert ulps.max() <= 8, (ulps, got["objective_hex"], want["objective_hex"])
