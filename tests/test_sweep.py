"""Sweeps (ncflow.sweep, `ncflow sweep`): config validation, files, equivalence with
ncflow.simulate, resume after a partial run and after a real SIGKILL, refusal of another sweep.

float64 for the exactness checks (1e-12); the SIGKILL test runs a small float32 sweep in a
subprocess and requires the resumed files to equal an uninterrupted sweep's exactly.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import ncflow
from ncflow import io as nio
from ncflow.cli.app import main
from ncflow.result import ResultIncompleteError
from ncflow.sweep.run import SweepError, load_config, parse_config, run_sweep

from helpers import REPO, ncflow_command

BASE64 = {
    "description": "float64 equivalence",
    "problem": {"K": 3, "d": 3, "n": 2, "lambda_h": 5e-2, "dtype": "float64"},
    "solver": {"runs": 6, "seed": 7, "max_steps": 3000, "engine": "full", "stop": "converged"},
    "grid": {"lambda_w": [5e-2, 2e-2]},
}

KILL_TOML = """
description = "SIGKILL resume test"
[problem]
K = 4
n = 5
lambda_h = 1e-2
dtype = "float32"
[solver]
runs = 48
seed = 3
max_steps = 2500
early_stop = false
engine = "full"
[grid]
d = [4, 5, 6]
lambda_w = [1e-2, 3e-2]
"""


def _files(directory):
    """{relative path: bytes} of every file under ``directory``."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out


@pytest.fixture(scope="module")
def sweep64(tmp_path_factory):
    """The float64 sweep on ONE device (as on one GPU): both points' runs share the device, so
    lanes of different points are compacted together as runs finish."""
    import jax

    out = tmp_path_factory.mktemp("sweep64") / "out"
    report = run_sweep(BASE64, out, devices=jax.devices()[:1])
    return out, report


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("raw, needle", [
    ({"problem": {"K": 1}}, "problem.K must be an integer in [2, 1048576], got 1"),
    ({"problem": {"K": 3.0}}, "problem.K must be an integer in [2, 1048576]"),
    ({"problem": {"lambda_w": -1e-3}}, "problem.lambda_w must be a finite number >= 0"),
    ({"problem": {"dtype": "float16"}}, 'problem.dtype must be one of "float32", "float64"'),
    ({"problem": {"bias": "yes"}}, "problem.bias must be true or false"),
    ({"problem": {"runs": 3}}, "problem.runs is not a setting (it belongs in [solver])"),
    ({"solver": {"runs": 0}}, "solver.runs must be an integer in [1, 2147483647], got 0"),
    ({"solver": {"max_steps": 2**31}}, "solver.max_steps must be an integer in [1, 2147483647]"),
    ({"solver": {"seed": 2**32}}, "solver.seed must be an integer in [0, 4294967295]"),
    ({"solver": {"lr": 0.0}}, 'solver.lr must be a finite number > 0 or "auto"'),
    ({"solver": {"engine": "fast"}}, "solver.engine must be one of"),
    ({"solver": {"optimizer": "sgd-ish"}}, "solver.optimizer"),
    ({"grid": {"lambda_w": []}}, "grid.lambda_w must be a non-empty list"),
    ({"grid": {"lambda_w": 1e-3}}, "grid.lambda_w must be a non-empty list"),
    ({"grid": {"lambda_w": [1e-3, -1.0]}}, "grid.lambda_w[1] must be a finite number >= 0, got -1.0"),
    ({"grid": {"lambda_w": [1e-3, 1e-3]}}, "grid.lambda_w[1] repeats the value"),
    ({"grid": {"d": [4, 0]}}, "grid.d[1] must be an integer in [1, 65536]"),
    ({"grid": {"lambda_w": {"geomspace": [0, 1, 3]}}}, "grid.lambda_w.geomspace must be [start, stop, num]"),
    ({"grid": {"lambda_w": {"logspace": [1, 2, 3]}}}, "grid.lambda_w must be a list or"),
    ({"grid": {"layers": [1, 2]}}, "grid.layers is not a problem or solver setting"),  # depth is one now (§9)
    ({"problem": {"lambda_w": 1e-3}, "grid": {"lambda_w": [1e-3]}}, "problem.lambda_w is also swept by grid.lambda_w"),
    ({"problem": {"bias": False}, "grid": {"lambda_b": [0.0, 0.1]}},
     "point 1 (lambda_b=0.1): grid.lambda_b must be 0 when bias = false"),
    ({"problem": {"loss": "rescaled-mse"}, "solver": {"engine": "collapsed"}}, "solver.engine"),
    ({"extra": 1}, "unknown top-level key 'extra'"),
])
def test_bad_configs_name_the_key_and_range(raw, needle):
    with pytest.raises(SweepError) as e:
        parse_config(raw)
    assert needle in str(e.value)


def test_config_normalization_hash_and_points():
    a = parse_config({"problem": {"lambda_b": 0}, "grid": {"lambda_h": {"geomspace": [1e-4, 1e-2, 3]},
                                                            "d": [4, 5]}})
    b = parse_config({"problem": {"lambda_b": 0.0}, "grid": {"lambda_h": [1e-4, 1e-3, 1e-2], "d": [4, 5]}})
    assert a.hash == b.hash  # 0 and 0.0, a range and its list: the same normalized config
    assert [p.swept for p in a.points][:3] == [{"lambda_h": 1e-4, "d": 4}, {"lambda_h": 1e-4, "d": 5},
                                               {"lambda_h": pytest.approx(1e-3), "d": 4}]
    assert len(a.points) == 6 and a.swept == ("lambda_h", "d")
    groups = a.shape_groups()
    assert [[p.index for p in g] for g in groups] == [[0, 2, 4], [1, 3, 5]]  # one batch per d
    assert parse_config({"solver": {"runs": 5}}).hash != a.hash
    opt = parse_config({"grid": {"optimizer": ["gd", "momentum"], "lambda_w": [1e-3, 1e-2]}})
    assert [[p.index for p in g] for g in opt.shape_groups()] == [[0, 1], [2, 3]]  # batch-wide setting
    assert opt.points[2].lr < opt.points[0].lr  # each optimizer's default step
    p = parse_config({}).points[0]
    assert p.settings["runs"] == 1000 and p.settings["max_steps"] == 30_000  # `ncflow run` defaults
    assert p.lr == pytest.approx(ncflow.maths.theory.default_step_size(p.problem, 1.0))


def test_example_config_is_valid():
    cfg = load_config(os.path.join(REPO, "examples", "sweep_lambda.toml"))
    assert len(cfg.points) == 25 and len(cfg.shape_groups()) == 1 and cfg.swept == ("lambda_w", "lambda_h")
    assert min(p.problem.c for p in cfg.points) < 1 < max(p.problem.c for p in cfg.points)


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[problem]\nK = 1\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "problem.K must be an integer in [2, 1048576]" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[problem\nK = 3\n")
    assert main(["sweep", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text('[grid]\nd = [4, 5]\n')
    assert main(["sweep", str(good), "--dim", "6", "--out", str(tmp_path / "o")]) == 2
    assert "grid.d" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_dry_run_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[problem]\nK = 4\n[grid]\nlambda_w = [1e-3, 1e-2]\nd = [3, 4]\n')
    assert main(["sweep", str(cfg), "--dry-run", "--json", "--runs", "7"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["points"]) == 4 and plan["shape_groups"] == [[0, 2], [1, 3]]
    assert plan["config_hash"] == load_config(cfg, {"runs": 7}).hash != load_config(cfg).hash


# --------------------------------------------------------------------------- running (float64)


def test_point_equals_simulate_with_the_same_settings(sweep64):
    out, report = sweep64
    assert report.status == "complete" and report.ran == [0, 1]
    cfg = parse_config(BASE64)
    p = cfg.points[1]  # second in its batch: its lanes sit behind point 0's
    ref = ncflow.simulate(p.problem, runs=6, seed=7, max_steps=3000, engine="full", init_scale=1.0,
                          stop="converged", progress=False)
    table = nio.read_table_csv(cfg.point_dir(out, 1) + "/runs.csv")
    assert table["outcome"].tolist() == ref.outcome.tolist()
    np.testing.assert_allclose(table["objective"], ref.per_run["objective"], rtol=0, atol=1e-12)
    assert (ref.outcome == "global").all()


def test_files_manifest_and_summary(sweep64):
    out, report = sweep64
    manifest = nio.read_json(out / "manifest.json")
    assert manifest["status"] == "complete" and manifest["points"] == 2 and manifest["completed"] == 2
    assert manifest["config_hash"] == parse_config(BASE64).hash
    assert manifest["master_seed"] == 7 and manifest["config"]["grid"] == {"lambda_w": [5e-2, 2e-2]}
    assert {"ncflow", "jax", "jaxlib", "device"} <= set(manifest["versions"])
    assert manifest["wall_s"] > 0
    s = nio.read_table_csv(out / "summary.csv")
    assert s["point"].tolist() == [0, 1] and s["lambda_w"].tolist() == [5e-2, 2e-2]
    for label in ncflow.LABELS:
        for suffix in ("count", "fraction", "ci_low", "ci_high"):
            assert f"{label}_{suffix}" in s
    # a depth-1 sweep's layout (module doc of ncflow.sweep): no rank columns, the labels in report order
    assert list(s) == (["point", "lambda_w", "K", "d", "n", "lambda_h", "lambda_b", "bias", "init_scale", "runs",
                        "lr_used", "c", "geometry", "f_star"]
                       + [f"{lb}_{k}" for lb in ncflow.LABELS for k in ("count", "fraction", "ci_low", "ci_high")]
                       + ["objective_median", "objective_min", "objective_max", "nc1_median", "nc2_median",
                          "nc3_median", "steps_median"])
    assert s["global_count"].tolist() == [6, 6] and s["geometry"].tolist() == ["simplex_etf"] * 2
    pred = ncflow.predict(ncflow.Problem(K=3, d=3, n=2, lambda_w=2e-2, lambda_h=5e-2, dtype="float64"))
    assert s["f_star"][1] == pred.objective and s["c"][1] == pytest.approx(pred.c)
    assert abs(s["objective_median"][1] - pred.objective) < 1e-10
    for name in ("points/0000/runs.csv", "points/0000/summary.json", "points/0000/config.json",
                 "points/0001/point.json"):
        assert (out / name).is_file()
    for table in (s, nio.read_table_csv(out / "points/0000/runs.csv")):
        assert not [c for c in table if "time" in c or c.endswith("_s") or "wall" in c]
    assert not [f for f in _files(out) if f.endswith((".pkl", ".pickle", ".npy", ".npz"))]


def test_resume_of_a_partial_batch_runs_only_its_missing_point_exactly(sweep64, tmp_path):
    out, _ = sweep64
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = _files(copy)
    os.remove(copy / "points/0001/summary.json")  # point 1 incomplete; its runs.csv stays stale
    report = run_sweep(BASE64, copy, devices=jax.devices()[:1])
    assert report.ran == [1] and report.skipped == [0] and report.recomputed == []
    assert report.status == "complete"
    after = _files(copy)
    for name in before:
        if not name.endswith(("summary.json", "manifest.json", "config.json")):  # those hold timing/versions
            assert after[name] == before[name], name
    again = run_sweep(BASE64, copy, devices=jax.devices()[:1])
    assert again.ran == [] and again.skipped == [0, 1] and again.recomputed == []
    assert nio.read_json(copy / "manifest.json")["sessions"] == 3


def test_resume_modes_hand_the_right_points_to_the_engine(sweep64, tmp_path, monkeypatch):
    import ncflow.batch.loop

    out, _ = sweep64
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / "points/0000/summary.json")
    seen = []

    class Stop(Exception):
        pass

    def fake(points, config, devices=None):
        seen.append([(float(p.problem.lambda_w), p.runs, p.seed) for p in points])
        raise Stop

    monkeypatch.setattr(ncflow.batch.loop, "simulate_points", fake)
    with pytest.raises(Stop):
        run_sweep(BASE64, copy, resume="missing")
    assert seen == [[(5e-2, 6, 7)]]  # point 0 alone
    with pytest.raises(Stop):
        run_sweep(BASE64, copy, resume="exact")
    assert seen[-1] == [(5e-2, 6, 7), (2e-2, 6, 7)]  # exact: the whole batch again
    with pytest.raises(SweepError, match="resume must be one of missing, exact"):
        run_sweep(BASE64, copy, resume="never")
    assert nio.read_json(copy / "manifest.json")["status"] == "partial"


def test_another_sweep_in_the_directory_is_refused_untouched(sweep64, tmp_path, capsys):
    out, _ = sweep64
    before = _files(out)
    other = {**BASE64, "solver": {**BASE64["solver"], "runs": 5}}
    with pytest.raises(SweepError, match="holds a different sweep"):
        run_sweep(other, out)
    toml = tmp_path / "other.toml"
    toml.write_text('[problem]\nK = 3\nd = 3\nn = 2\ndtype = "float64"\n[solver]\nruns = 2\n')
    assert main(["sweep", str(toml), "--out", str(out)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert _files(out) == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not empty"):
        run_sweep(BASE64, stray)
    assert os.listdir(stray) == ["notes.txt"]


# --------------------------------------------------------------------------- issue 21: damaged tables, DataFrames


def test_resume_reruns_a_point_whose_runs_csv_was_cut_or_emptied(sweep64, tmp_path):
    out, _ = sweep64
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = _files(copy)
    p0, p1 = copy / "points/0000/runs.csv", copy / "points/0001/runs.csv"
    lines = p1.read_text().splitlines(keepends=True)
    p1.write_text("".join(lines[:3]))  # cut at a line boundary: the header and 2 of its 6 runs
    said = []
    report = run_sweep(BASE64, copy, devices=jax.devices()[:1], log=said.append)
    assert report.ran == [1] and report.skipped == [0] and report.status == "complete"
    assert [m for m in said if m.startswith("point 1: ") and "holds 2 of the 6 runs" in m
            and m.endswith("running it again")], said
    p0.write_text("")  # emptied
    text = p1.read_text()
    p1.write_text(text[:-2])  # cut inside its last cell: every row still has every cell
    said = []
    report = run_sweep(BASE64, copy, devices=jax.devices()[:1], log=said.append)
    assert report.ran == [0, 1] and report.skipped == [] and report.status == "complete"
    assert [m for m in said if m.startswith("point 0: ") and "holds 0 of the 6 runs" in m], said
    assert [m for m in said if m.startswith("point 1: ") and "does not end with a newline" in m], said
    after = _files(copy)
    for name in before:  # the sweep ends with the full files, those of the uninterrupted sweep
        if not name.endswith(("summary.json", "manifest.json", "config.json")):  # those hold timing/versions
            assert after[name] == before[name], name
    assert len(ncflow.load_table(str(copy / "points/0000"))["run"]) == 6


def test_sweep_table_one_row_per_point_with_the_grid_as_columns(sweep64):
    import pandas as pd

    out, _ = sweep64
    df = ncflow.sweep_table(out)
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    assert df["point"].tolist() == [0, 1] and df["lambda_w"].tolist() == [5e-2, 2e-2]
    assert df["point"].dtype == np.int64 and df["lambda_w"].dtype == np.float64
    for label in ncflow.LABELS:
        for suffix in ("count", "fraction", "ci_low", "ci_high"):
            assert f"{label}_{suffix}" in df.columns
    assert df["global_count"].dtype == np.int64 and df["global_fraction"].dtype == np.float64
    assert df["global_count"].tolist() == [6, 6] and df["global_fraction"].tolist() == [1.0, 1.0]
    assert (df["global_ci_low"] < 1.0).all() and (df["global_ci_high"] == 1.0).all()
    pred = ncflow.predict(ncflow.Problem(K=3, d=3, n=2, lambda_w=2e-2, lambda_h=5e-2, dtype="float64"))
    assert df.set_index("lambda_w").loc[2e-2, "f_star"] == pred.objective


def test_sweep_table_per_run_rows_carry_their_point_and_grid_values(sweep64, tmp_path):
    import pandas as pd

    out, _ = sweep64
    df = ncflow.sweep_table(out, per_run=True)
    assert len(df) == 12 and list(df.columns[:3]) == ["point", "lambda_w", "run"]
    assert df["point"].tolist() == [0] * 6 + [1] * 6 and df["run"].tolist() == list(range(6)) * 2
    assert df["lambda_w"].tolist() == [5e-2] * 6 + [2e-2] * 6
    assert df["steps"].dtype == np.int64 and df["objective"].dtype == np.float64
    assert isinstance(df["outcome"].dtype, pd.CategoricalDtype)
    assert list(df["outcome"].cat.categories) == list(ncflow.LABELS)
    one = nio.read_table_csv(out / "points/0001/runs.csv")
    np.testing.assert_array_equal(df[df.point == 1]["objective"].to_numpy(), one["objective"])
    assert df.groupby("lambda_w")["outcome"].value_counts().loc[(2e-2, "global")] == 6
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lines = (copy / "points/0001/runs.csv").read_text().splitlines(keepends=True)
    (copy / "points/0001/runs.csv").write_text("".join(lines[:4]))
    with pytest.raises(ResultIncompleteError, match="holds 3 of the 6 runs"):
        ncflow.sweep_table(copy, per_run=True)


def test_sweep_table_refusals_in_one_line(sweep64, tmp_path, monkeypatch):
    import sys

    with pytest.raises(SweepError, match="holds no sweep"):
        ncflow.sweep_table(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SweepError, match="manifest.json is unreadable"):
        ncflow.sweep_table(tmp_path)
    out, _ = sweep64
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError) as e:
        ncflow.sweep_table(out)
    assert str(e.value) == "DataFrames need the optional dependency pandas: pip install ncflow[pandas]"


# --------------------------------------------------------------------------- SIGKILL and resume


def _sweep_cmd(cfg, out, cache):
    return ncflow_command("sweep", cfg, "--out", out, "--no-progress", "--compile-cache", cache)


def _complete(out):
    pts = out / "points"
    if not pts.is_dir():
        return 0
    # points/NNNN only: a killed writer's staging directory (.NNNN.ncflow-tmp-...) beside them may
    # already hold its summary.json, and counting it made this test flaky (1 run in 4)
    return sum((pts / p / "summary.json").exists() for p in os.listdir(pts) if not p.startswith("."))


def test_sigkill_then_resume_equals_an_uninterrupted_sweep(tmp_path):
    t_start = time.monotonic()
    cfg = tmp_path / "kill.toml"
    cfg.write_text(KILL_TOML)
    cache = tmp_path / "xla-cache"
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the uninterrupted reference (also fills the compilation cache the other runs reuse)
    done = subprocess.run(_sweep_cmd(cfg, ref, cache), capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0, done.stderr
    n_points = 6
    proc = subprocess.Popen(_sweep_cmd(cfg, cut, cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    try:
        killed_at = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if 0 < _complete(cut) < n_points:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                killed_at = _complete(cut)
                break
            time.sleep(0.005)
        assert killed_at is not None, f"could not catch the sweep mid-way (exit {proc.poll()})"
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert nio.read_json(cut / "manifest.json")["status"] == "partial"
    assert 0 < killed_at < n_points
    print(f"killed with {killed_at} of {n_points} points complete")
    (cut / "points" / ".runs.csv.stale.tmp").write_text("left by a killed writer")
    resumed = subprocess.run(_sweep_cmd(cfg, cut, cache), capture_output=True, text=True, timeout=50, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_points - killed_at} run now" in resumed.stdout
    assert nio.read_json(cut / "manifest.json")["status"] == "complete"
    a, b = _files(ref), _files(cut)
    assert not [f for f in b if f.endswith(".tmp")]  # temporaries of the killed run are cleaned up
    assert a["summary.csv"] == b["summary.csv"]
    runs = sorted(f for f in a if f.endswith("runs.csv"))
    assert len(runs) == n_points
    for name in runs:
        assert a[name] == b[name], name
    ta = nio.read_table_csv(ref / "summary.csv")
    assert sorted(set(ta["d"].tolist())) == [4, 5, 6] and len(ta["point"]) == n_points
    assert time.monotonic() - t_start < 120
