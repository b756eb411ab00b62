"""Atomic writes, JSON and CSV/Parquet tables round trips."""

import json
import math
import os

import numpy as np
import pytest

from ncflow import io as nio


def test_atomic_write_text_and_bytes(tmp_path):
    p = tmp_path / "a.txt"
    nio.atomic_write_text(p, "hello\n")
    assert p.read_text() == "hello\n"
    nio.atomic_write_text(str(p), "second")
    assert p.read_text() == "second"
    nio.atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_crash_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "table.csv"
    nio.write_table_csv(p, {"a": [1, 2]})
    old = p.read_bytes()

    def boom(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        nio.write_table_csv(p, {"a": [3, 4, 5]})
    with pytest.raises(OSError):
        nio.write_json(tmp_path / "new.json", {"x": 1})
    assert p.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["table.csv"]


def test_atomic_write_keeps_mode(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("x")
    os.chmod(p, 0o640)
    nio.atomic_write_text(p, "y")
    assert (os.stat(p).st_mode & 0o777) == 0o640


def test_json_round_trip_and_conversion(tmp_path):
    p = tmp_path / "r.json"
    obj = {
        "z": 1,
        "a": np.float64(0.5),
        "i": np.int32(7),
        "b": np.bool_(True),
        "arr": np.arange(3, dtype=np.int64),
        "m": np.array([[1.0, np.nan], [np.inf, -np.inf]]),
        "nan": float("nan"),
        "t": (1, "s", None),
        "third": 1.0 / 3.0,
    }
    nio.write_json(p, obj)
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)  # strict JSON
    back = nio.read_json(p)
    assert list(back) == list(obj)  # key order kept
    assert back == {
        "z": 1,
        "a": 0.5,
        "i": 7,
        "b": True,
        "arr": [0, 1, 2],
        "m": [[1.0, None], [None, None]],
        "nan": None,
        "t": [1, "s", None],
        "third": 1.0 / 3.0,
    }
    with pytest.raises(TypeError):
        nio.write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_csv_round_trip(tmp_path):
    p = tmp_path / "t.csv"
    floats = np.array([1.0 / 3.0, np.nan, np.inf, -np.inf, 1e-300, -0.0])
    cols = {
        "i": [1, -2, 3, 4, 5, 6],
        "f": floats,
        "b": [True, False, True, True, False, False],
        "s": ["x", "with,comma", 'quo"te', "", "ünï", "line\nbreak"],
        "npint": np.arange(6, dtype=np.int32),
    }
    nio.write_table_csv(p, cols)
    back = nio.read_table_csv(p)
    assert list(back) == list(cols)
    assert back["i"].dtype == np.int64 and back["i"].tolist() == cols["i"]
    assert back["f"].dtype == np.float64
    np.testing.assert_array_equal(back["f"], floats)  # NaN-aware, exact
    assert back["f"][0] == 1.0 / 3.0
    assert math.copysign(1.0, back["f"][5]) == -1.0
    assert back["b"].dtype == bool and back["b"].tolist() == cols["b"]
    assert back["s"].tolist() == cols["s"]
    assert back["npint"].dtype == np.int64 and back["npint"].tolist() == list(range(6))
    assert "true" in p.read_text() and "0.3333333333333333" in p.read_text()


def test_csv_missing_values(tmp_path):
    p = tmp_path / "t.csv"
    nio.write_table_csv(
        p, {"i": [1, None, 3], "f": [0.5, None, 1.5], "b": [True, None, False], "n": [None] * 3}
    )
    back = nio.read_table_csv(p)
    assert back["i"].dtype == np.float64 and np.isnan(back["i"][1]) and back["i"][2] == 3.0
    assert np.isnan(back["f"][1])
    assert back["b"].tolist() == [True, None, False]
    assert back["n"].tolist() == [None, None, None]


def test_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        nio.write_table_csv(tmp_path / "x.csv", {"a": [1, 2], "b": [1]})
    with pytest.raises(TypeError):
        nio.write_table_csv(tmp_path / "x.csv", {"a": [object()]})
    assert not (tmp_path / "x.csv").exists()


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    p = tmp_path / "t.parquet"
    cols = {
        "i": np.arange(4),
        "f": np.array([1.0 / 3.0, np.nan, np.inf, 2.0]),
        "s": ["a", "b", "c", "d"],
    }
    nio.write_table_parquet(p, cols)
    back = nio.read_table_parquet(p)
    assert back["i"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(back["f"], cols["f"])
    assert back["s"].tolist() == cols["s"]
    assert os.listdir(tmp_path) == ["t.parquet"]
