"""A deep linear sweep's summary and figures: summary.csv counts the runs per rank reached (alive
directions, THEORY §9.2) with 95% Wilson intervals, beside the outcome labels of its model; `ncflow
plot` draws the fraction per rank against the swept value; resume and DataFrames keep working."""

import os
import types

import numpy as np
import pytest

import ncflow
from ncflow import io as nio
from ncflow.cli.app import main
from ncflow.codes import ALL_LABELS, LABELS, RELU_LABELS
from ncflow.stats import wilson_interval
from ncflow.sweep.config import parse_config
from ncflow.sweep.frame import sweep_outcome_labels
from ncflow.sweep.run import max_rank, run_sweep, sweep_labels, sweep_max_rank

# K = 3 (case A: K − 1 = 2 directions), d = 4, depth 2: ranks 0..2. With λ = 5e-2 (c ≈ 0.19 < c_glob)
# small starts stay at the origin (rank 0), middling ones reach rank 1, large ones rank 2 (THEORY §9.2)
DEEP = {"problem": {"K": 3, "n": 2, "d": 4, "depth": 2, "widths": [4], "lambda_w": 5e-2, "lambda_h": 5e-2,
                    "dtype": "float64"},
        "solver": {"runs": 10, "seed": 0, "max_steps": 4000, "stop": "converged"},
        "grid": {"init_scale": [0.1, 0.3, 1.0]}}


@pytest.fixture(scope="module")
def deep_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "sweep"
    report = run_sweep(DEEP, out)
    assert report.status == "complete"
    return out


def _runs(out, i):
    return nio.read_table_csv(out / "points" / f"{i:04d}" / "runs.csv")


def test_summary_counts_the_runs_per_rank_with_wilson_intervals(deep_sweep):
    s = nio.read_table_csv(deep_sweep / "summary.csv")
    names = list(s)
    assert [n[:-6] for n in names if n.endswith("_count") and not n.startswith("rank")] == list(LABELS)
    ranks = sorted(int(n[4:-6]) for n in names if n.startswith("rank") and n.endswith("_count") and n[4:-6].isdigit())
    assert ranks == [0, 1, 2]  # min(d_min = 4, K − 1 = 2)
    seen = set()
    for i in range(3):
        rank = _runs(deep_sweep, i)["rank"]
        finite = rank[np.isfinite(rank)].astype(int)
        seen |= set(finite.tolist())
        counts = [int(s[f"rank{r}_count"][i]) for r in ranks]
        assert counts == np.bincount(finite, minlength=3).tolist()
        assert sum(counts) == finite.size == s["runs"][i] == 10
        for r in ranks:
            lo, hi = wilson_interval(counts[r], 10)
            assert s[f"rank{r}_fraction"][i] == pytest.approx(counts[r] / 10, abs=1e-15)
            assert (s[f"rank{r}_ci_low"][i], s[f"rank{r}_ci_high"][i]) == pytest.approx((lo, hi), abs=1e-15)
        theory = nio.read_json(deep_sweep / "points" / f"{i:04d}" / "summary.json")["theory"]
        assert s["rank_star"][i] == theory["rank"] == 2
        # the outcome columns still count the outcomes
        outcome = _runs(deep_sweep, i)["outcome"]
        for lb in LABELS:
            assert s[f"{lb}_count"][i] == int(np.sum(outcome == lb))
    assert len(seen) >= 2, f"the init scales should reach different ranks, saw {seen}"


def test_plot_draws_the_fraction_per_rank(deep_sweep, capsys):
    from ncflow import plot

    assert main(["plot", str(deep_sweep), "--format", "png"]) == 0
    files = capsys.readouterr().out.split()
    names = sorted(os.path.relpath(f, deep_sweep) for f in files)
    assert names == ["fractions_init_scale.png", "ranks_init_scale.png"]
    from test_plot import _all_text, _errorbar_series, assert_legends_off_the_data, assert_real_png

    for f in files:
        assert_real_png(f)
    table = plot.sweep_columns(str(deep_sweep))
    fig = plot.ranks_figure(table, "init_scale")
    ax = fig.axes[0]
    assert ax.xaxis.get_scale() == "log"
    series = _errorbar_series(ax)
    shown = [r for r in (0, 1, 2) if r == 2 or table[f"rank{r}_count"].sum() > 0]
    assert len(series) == len(shown)
    for s_, r in zip(series, shown):  # every fraction with its Wilson interval
        seg = s_.lines[2][0].get_segments()
        order = np.argsort(table["init_scale"])
        np.testing.assert_allclose([b[0][1] for b in seg], table[f"rank{r}_ci_low"][order], atol=1e-12)
        np.testing.assert_allclose([b[1][1] for b in seg], table[f"rank{r}_ci_high"][order], atol=1e-12)
    text = _all_text(fig)
    assert "rank 2 (global)" in text and "95% Wilson" in text and "10 runs per point" in text
    assert_legends_off_the_data(fig)


def test_resume_keeps_the_summary_and_the_frame_has_the_labels(deep_sweep):
    before = (deep_sweep / "summary.csv").read_bytes()
    report = run_sweep(DEEP, deep_sweep)
    assert report.ran == [] and report.skipped == [0, 1, 2]
    assert (deep_sweep / "summary.csv").read_bytes() == before
    pytest.importorskip("pandas")
    df = ncflow.sweep_table(deep_sweep, per_run=True)
    assert list(df["outcome"].cat.categories) == list(LABELS)
    wide = ncflow.sweep_table(deep_sweep)
    assert wide["rank0_count"].tolist() == [int(np.sum(df[df.point == i]["rank"] == 0)) for i in range(3)]


def test_depth_one_sweeps_have_no_rank_columns():
    cfg = parse_config({"problem": {"K": 3, "d": 3, "n": 2}, "grid": {"lambda_w": [1e-2, 1e-1]}})
    assert sweep_labels(cfg) == LABELS and sweep_max_rank(cfg) is None
    deep = parse_config({**DEEP, "problem": {**DEEP["problem"], "bias": False}})
    assert sweep_max_rank(deep) == 3  # case (B): K directions
    narrow = parse_config({**DEEP, "problem": {**DEEP["problem"], "widths": [1]}})
    assert sweep_max_rank(narrow) == 1  # capped by d_min


def _stub(*models):
    """A stand-in SweepConfig whose points have the given (depth, activation) models."""
    points = [types.SimpleNamespace(problem=types.SimpleNamespace(
        outcome_labels=RELU_LABELS if d > 1 and a == "relu" else LABELS, depth=d, activation=a, K=4, d=4,
        layer_widths=(4,) * d, bias_mode="none")) for d, a in models]
    return types.SimpleNamespace(points=points)


def test_labels_of_mixed_and_relu_sweeps():
    assert sweep_labels(_stub((2, "relu"), (3, "relu"))) == RELU_LABELS  # one model: its report order
    assert sweep_labels(_stub((1, "linear"), (2, "relu"))) == ALL_LABELS  # mixed: the union, ALL_LABELS order
    assert sweep_max_rank(_stub((2, "relu"))) is None  # ReLU runs have no rank column
    assert sweep_max_rank(_stub((1, "linear"), (2, "linear"))) == 4
    assert max_rank(_stub((2, "relu")).points[0].problem) is None
    # the DataFrame's categories before any point is complete: from the manifest's config
    man = {"config": {"problem": {"depth": 2, "activation": "relu"}}}
    assert sweep_outcome_labels(man, {"point": []}) == RELU_LABELS
    man = {"config": {"problem": {"depth": 2}, "grid": {"activation": ["linear", "relu"]}}}
    assert sweep_outcome_labels(man, {"point": []}) == ALL_LABELS
    assert sweep_outcome_labels({"config": {"problem": {}}}, {"point": []}) == LABELS
    # after: the summary's label columns, in their order
    summary = {"point": [0], **{f"{lb}_count": [0] for lb in RELU_LABELS}, "rank0_count": [1]}
    assert sweep_outcome_labels(man, summary) == RELU_LABELS


def test_a_deep_relu_sweep_writes_its_labels_and_plots_them(tmp_path, capsys):
    raw = {"problem": {"K": 3, "n": 2, "d": 4, "depth": 2, "activation": "relu", "bias": False, "lambda_w": 5e-3,
                       "lambda_h": 5e-3, "dtype": "float64"},
           "solver": {"runs": 8, "max_steps": 2000}, "grid": {"init_scale": [0.1, 1.0]}}
    out = tmp_path / "relu"
    run_sweep(raw, out)
    s = nio.read_table_csv(out / "summary.csv")
    assert [n[:-6] for n in s if n.endswith("_count")] == list(RELU_LABELS)  # no rank columns, no global
    assert "rank_star" not in s and "global_fraction" not in s
    for i in range(2):
        outcome = _runs(out, i)["outcome"]
        assert [int(s[f"{lb}_count"][i]) for lb in RELU_LABELS] == [int(np.sum(outcome == lb)) for lb in RELU_LABELS]
        assert sum(int(s[f"{lb}_count"][i]) for lb in RELU_LABELS) == 8
    assert main(["plot", str(out), "--format", "png"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "fractions_init_scale.png")]
