"""Issue 21 (5, 9): a saved per-run table that does not hold the runs its summary.json counts is
refused in one line (CSV and Parquet), and the per-run table as a pandas DataFrame
(``Result.to_pandas``), pandas being an optional extra that ``import ncflow`` never loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ncflow
from ncflow import io as nio
from ncflow.result import ResultIncompleteError

from helpers import subprocess_env

RUNS = 5


@pytest.fixture(scope="module")
def result():
    """A real float64 result of a few runs (seconds)."""
    p = ncflow.Problem(K=3, d=4, n=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    return ncflow.simulate(p, runs=RUNS, seed=1, max_steps=3000, progress=False)


@pytest.fixture
def saved(result, tmp_path):
    out = tmp_path / "res"
    result.save(str(out))
    return out


def _refused(directory) -> str:
    with pytest.raises(ResultIncompleteError) as e:
        ncflow.load_table(str(directory))
    msg = str(e.value)
    assert "\n" not in msg and "run it again with --overwrite" in msg
    return msg


# ------------------------------------------------------------------ item 5: load_table checks the row count


def test_intact_table_loads_whole(saved, result):
    table = ncflow.load_table(str(saved))
    assert table["run"].tolist() == list(range(RUNS))
    np.testing.assert_array_equal(table["objective"], result.per_run["objective"])


def test_emptied_runs_csv_is_refused(saved):
    (saved / "runs.csv").write_text("")
    assert f"holds 0 of the {RUNS} runs" in _refused(saved)


def test_runs_csv_cut_at_a_line_boundary_is_refused(saved):
    lines = (saved / "runs.csv").read_text().splitlines(keepends=True)
    (saved / "runs.csv").write_text("".join(lines[:3]))  # the header and 2 runs: parses as a shorter table
    assert f"holds 2 of the {RUNS} runs" in _refused(saved)


def test_runs_csv_cut_inside_its_last_cell_is_refused(saved):
    text = (saved / "runs.csv").read_text()
    assert text.endswith("\n")
    (saved / "runs.csv").write_text(text[:-3])  # every row still has every cell
    assert "does not end with a newline" in _refused(saved)


def test_runs_parquet_with_fewer_rows_is_refused(result, tmp_path):
    out = tmp_path / "pq"
    result.save(str(out), table_format="parquet")
    assert len(ncflow.load_table(str(out))["run"]) == RUNS
    short = {k: v[:3] for k, v in nio.read_table_parquet(out / "runs.parquet").items()}
    nio.write_table_parquet(out / "runs.parquet", short)
    assert f"holds 3 of the {RUNS} runs" in _refused(out)


# ------------------------------------------------------------------ item 9: Result.to_pandas


def test_to_pandas_one_row_per_run_with_proper_dtypes(result):
    import pandas as pd

    df = result.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == RUNS and list(df.columns) == list(result.per_run)
    assert df["run"].dtype == np.int64 and df["steps"].dtype == np.int64
    assert df["objective"].dtype == np.float64 and df["nc1"].dtype == np.float64
    assert isinstance(df["outcome"].dtype, pd.CategoricalDtype)
    assert list(df["outcome"].cat.categories) == list(ncflow.LABELS)
    assert df["outcome"].astype(str).tolist() == [str(o) for o in result.outcome]
    np.testing.assert_array_equal(df["objective"].to_numpy(), result.per_run["objective"])
    np.testing.assert_array_equal(df["steps"].to_numpy(), result.per_run["steps"])
    counts = df["outcome"].value_counts()
    assert set(counts.index) == set(ncflow.LABELS)  # the labels no run reached too, with 0
    assert sum(counts[label] for label in ncflow.LABELS) == RUNS
    for label, o in result.outcomes().items():
        assert counts[label] == o["count"]


def test_to_pandas_equals_the_saved_table_read_back(result, saved):
    import pandas as pd

    back = nio.to_dataframe(ncflow.load_table(str(saved)), categories={"outcome": ncflow.LABELS})
    mine = result.to_pandas()
    numeric = [c for c in mine.columns if mine[c].dtype.kind in "if"]
    assert {"run", "steps", "objective", "gap", "nc1"} <= set(numeric)
    pd.testing.assert_frame_equal(mine[numeric], back[numeric])
    assert mine["outcome"].equals(back["outcome"])


def test_to_dataframe_dtypes_of_missing_cells_and_unlisted_categories():
    import pandas as pd

    df = nio.to_dataframe({"ok": np.array([True, None, False], dtype=object), "none": [None, None, None],
                           "label": ["b", "zzz", None]}, categories={"label": ["a", "b"]})
    assert str(df["ok"].dtype) == "boolean" and df["ok"].isna().tolist() == [False, True, False]
    assert df["none"].dtype == object
    assert list(df["label"].cat.categories) == ["a", "b", "zzz"]  # a value outside the given ones is kept
    assert df["label"].isna().tolist() == [False, False, True]
    assert df["label"].value_counts()["a"] == 0
    with pytest.raises(ValueError, match="equal length"):
        nio.to_dataframe({"a": [1, 2], "b": [1]})
    assert isinstance(df, pd.DataFrame)


def test_missing_pandas_is_one_line_naming_the_extra(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError) as e:
        result.to_pandas()
    assert str(e.value) == "DataFrames need the optional dependency pandas: pip install ncflow[pandas]"


def test_import_ncflow_never_imports_pandas():
    code = ("import sys, ncflow; ncflow.Result; ncflow.sweep_table; ncflow.load_table; "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
