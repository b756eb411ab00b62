"""Sweeps over class sizes (THEORY §7): grid keys class_sizes, ratio and majority; one batch (one
compiled program) for a sweep over the imbalance ratio; one-line refusals naming the key."""

import pytest

from ncflow.sweep import SweepError
from ncflow.sweep.config import parse_config

BASE = {"problem": {"K": 4, "d": 5, "n": 2, "lambda_w": 0.02, "lambda_h": 0.02, "dtype": "float64"},
        "solver": {"runs": 4, "max_steps": 2000}}


def test_ratio_grid_is_one_batch_with_two_level_sizes():
    raw = {**BASE, "problem": {**BASE["problem"], "majority": 2}, "grid": {"ratio": [1.0, 5.0, 10.0]}}
    cfg = parse_config(raw)
    assert [p.problem.class_sizes for p in cfg.points] == [(2, 2, 2, 2), (10, 10, 2, 2), (20, 20, 2, 2)]
    assert len(cfg.shape_groups()) == 1
    assert "majority" in cfg.normalized["problem"] and "class_sizes" not in cfg.normalized["problem"]


def test_class_sizes_and_lambda_grid():
    problem = {k: v for k, v in BASE["problem"].items() if k != "lambda_w"}
    grid = {"class_sizes": [[9, 7, 4, 2], [40, 10, 2, 2]], "lambda_w": [0.01, 0.03]}
    raw = {**BASE, "problem": problem, "grid": grid}
    cfg = parse_config(raw)
    assert len(cfg.points) == 4 and len(cfg.shape_groups()) == 1
    assert {p.problem.class_sizes for p in cfg.points} == {(9, 7, 4, 2), (40, 10, 2, 2)}


def test_full_engine_splits_batches_by_sizes():
    raw = {**BASE, "solver": {**BASE["solver"], "engine": "full"},
           "grid": {"class_sizes": [[3, 2, 2, 1], [4, 4, 1, 1]]}}
    assert len(parse_config(raw).shape_groups()) == 2


def test_hash_of_a_balanced_sweep_is_unchanged_by_the_new_keys():
    assert "class_sizes" not in parse_config(BASE).normalized["problem"]


@pytest.mark.parametrize("problem, grid, where", [
    ({"majority": 2}, {}, "problem.ratio"),
    ({"majority": 4, "ratio": 2.0}, {}, "problem.majority"),
    ({}, {"ratio": [0.5]}, "grid.ratio[0]"),
    ({}, {"class_sizes": [[3, 0, 1, 1]]}, "grid.class_sizes[0]"),
    ({"class_sizes": [1, 2, 3]}, {}, "problem.class_sizes"),
])
def test_bad_size_keys_name_the_key(problem, grid, where):
    raw = {**BASE, "problem": {**BASE["problem"], **problem}, "grid": grid}
    with pytest.raises(SweepError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)
