"""``ncflow run``: JSON output, --out files and refusal to overwrite, flag validation before any
compilation, exact step accounting without early stopping, and the installed console script.

Mostly in-process (``ncflow.cli.app`` returns the exit code; argparse errors raise SystemExit(2));
one subprocess test runs the real ``ncflow`` command with ``--dtype float64`` in a fresh
interpreter, where float64 is not already enabled. Problems are tiny: compilation dominates.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys

import jax
import pytest

import ncflow.batch.loop  # noqa: F401
import ncflow.cli.run
from ncflow.cli.app import main
from ncflow.outcomes import LABELS

from helpers import ncflow_command, one_json_object, run_cli, subprocess_env

TINY = ["-K", "3", "-d", "4", "-n", "2", "--lambda-w", "1e-2", "--lambda-h", "1e-2"]


def check_summary_keys(s: dict) -> None:
    assert {"c", "geometry", "objective", "w_norm", "h_norm", "bias"} <= set(s["theory"])
    assert set(s["outcomes"]) == set(LABELS)
    for label in LABELS:
        o = s["outcomes"][label]
        assert {"count", "fraction", "ci95"} <= set(o)
        assert len(o["ci95"]) == 2 and o["ci95"][0] <= o["fraction"] <= o["ci95"][1]
    assert sum(o["count"] for o in s["outcomes"].values()) == s["runs"]
    assert set(s["final_objective"]) == {"min", "median", "max"}
    assert {"compile_s", "run_s", "run_steps_per_s"} <= set(s["timing"])


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if the engine is reached (i.e. something would be compiled)."""
    def boom(*a, **k):
        raise AssertionError("the engine was called: the flag must be rejected before compiling")
    monkeypatch.setattr(ncflow.batch.loop, "simulate", boom)
    monkeypatch.setattr(ncflow.batch.loop, "simulate_points", boom)
    monkeypatch.setattr(ncflow.cli.run, "simulate", boom, raising=False)  # if imported at module level


# ------------------------------------------------------------------ JSON + --out (one compile)
@pytest.fixture(scope="module")
def json_out_run(tmp_path_factory):
    """One in-process ``ncflow run --json --out DIR`` on a tiny problem, no early stop, 50 steps."""
    out_dir = tmp_path_factory.mktemp("cli") / "result"
    argv = ["run", *TINY, "--runs", "3", "--seed", "4", "--no-early-stop", "--max-steps", "50",
            "--json", "--out", str(out_dir)]
    # main() tries to set jax_num_cpu_devices (one CPU device per core), which would silently
    # apply to the rest of the test session if JAX's backend had not started yet: start it first
    jax.devices()
    # capsys is function-scoped: capture this module-scoped run by hand
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue(), out_dir


def test_json_prints_exactly_one_object_with_the_documented_keys(json_out_run):
    code, out, err, _ = json_out_run
    assert code == 0, err
    s = one_json_object(out)
    check_summary_keys(s)
    assert s["runs"] == 3
    assert s["problem"]["K"] == 3 and s["problem"]["dtype"] == "float32"  # the CLI's default dtype
    assert "Traceback" not in err


def test_no_early_stop_takes_exactly_max_steps(json_out_run):
    _, out, _, _ = json_out_run
    s = one_json_object(out)
    assert s["timing"]["run_steps"] == 3 * 50
    assert s["outcomes"]["not_converged"]["count"] == 3  # 50 steps are far from stationary


def test_out_writes_the_result_files(json_out_run):
    _, out, _, out_dir = json_out_run
    assert {"runs.csv", "summary.json", "config.json"} <= set(os.listdir(out_dir))
    from ncflow import io as nio

    table = nio.read_table_csv(out_dir / "runs.csv")
    assert table["run"].tolist() == [0, 1, 2]
    assert table["steps"].tolist() == [50, 50, 50]
    assert nio.read_json(out_dir / "summary.json")["outcomes"] == one_json_object(out)["outcomes"]


def test_second_run_into_same_out_exits_2_and_keeps_files(json_out_run, capsys, no_engine, tmp_path,
                                                          compile_counter):
    _, _, _, out_dir = json_out_run
    before = {f: (out_dir / f).read_bytes() for f in os.listdir(out_dir)}
    with compile_counter:
        code, out, err = run_cli(["run", *TINY, "--runs", "3", "--json", "--out", str(out_dir)], capsys)
    assert compile_counter.count == 0, compile_counter.names  # refused before anything was compiled
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0], err
    assert "Traceback" not in err and out == ""
    assert {f: (out_dir / f).read_bytes() for f in os.listdir(out_dir)} == before
    # a path that is a file is refused the same way
    f = tmp_path / "a_file"
    f.write_text("x")
    code, _, err = run_cli(["run", *TINY, "--out", str(f)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err


# ------------------------------------------------------------------ bad flags: exit 2, fast
@pytest.mark.parametrize("flags, flag", [
    (["--runs", "0"], "--runs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--max-steps", "0"], "--max-steps"),
    (["--init-scale", "-1"], "--init-scale"),
    (["--seed", "-1"], "--seed"),
    (["--dtype", "float16"], "--dtype"),
    (["--engine", "foo"], "--engine"),
    (["--classes", "1"], "--classes"),
])
def test_bad_flag_exits_2_with_one_line_naming_it(flags, flag, capsys, no_engine, compile_counter):
    with compile_counter:
        code, out, err = run_cli(["run", *flags], capsys)
    assert compile_counter.count == 0, compile_counter.names
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0], err
    assert "Traceback" not in err and out == ""


# ------------------------------------------------------------------ the installed command
def test_console_script_json_float64(tmp_path):
    """The ``ncflow`` executable in a fresh interpreter: --dtype float64 switches float64 on
    itself; stdout is exactly one JSON object; --no-early-stop runs every step."""
    exe = shutil.which("ncflow") or os.path.join(os.path.dirname(sys.executable), "ncflow")
    assert os.path.exists(exe), "the ncflow console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    proc = subprocess.run(
        [exe, "run", *TINY, "--runs", "2", "--dtype", "float64", "--no-early-stop", "--max-steps", "40",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = one_json_object(proc.stdout)
    check_summary_keys(s)
    assert s["problem"]["dtype"] == "float64"
    assert s["timing"]["run_steps"] == 2 * 40
    assert s["final_objective"]["min"] is not None
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- compilation cache
def test_compile_cache_choice(tmp_path, monkeypatch, capsys):
    from ncflow.cli.common import compile_cache_dir

    assert compile_cache_dir("off") is None
    monkeypatch.setenv("NCFLOW_COMPILE_CACHE", "off")
    assert compile_cache_dir(None) is None
    monkeypatch.delenv("NCFLOW_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = compile_cache_dir(None)
    assert default == str(tmp_path / "xdg" / "ncflow" / "xla") and os.path.isdir(default)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert compile_cache_dir(str(afile / "cache")) is None  # cannot be created: a file is in the way
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compilation cache" in err[0] and "compiling without it" in err[0]


def test_a_corrupt_compile_cache_degrades_to_compiling_with_one_line(tmp_path):
    cache = tmp_path / "cache"
    argv = ["run", "--runs", "2", "-K", "3", "-d", "3", "-n", "2", "--max-steps", "100", "--no-progress",
            "--compile-cache", str(cache)]
    first = subprocess.run(ncflow_command(*argv), capture_output=True, text=True, timeout=180, env=subprocess_env())
    assert first.returncode == 0, first.stderr
    entries = [p for p in cache.iterdir() if p.is_file()]
    assert entries  # the run filled the cache
    for p in entries:
        p.write_bytes(b"not a cache entry")
    second = subprocess.run(ncflow_command(*argv), capture_output=True, text=True, timeout=180,
                            env=subprocess_env())
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1].startswith("Timing") or "Timing" in second.stdout
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "compilation cache" in lines[0], second.stderr


# --------------------------------------------------------------------------- --out checked first
def test_out_that_cannot_be_created_is_refused_before_compiling(tmp_path, capsys, no_engine):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, out, err = run_cli(["run", *TINY, "--out", str(afile / "sub")], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].count("--out") == 1 and "cannot be created" in lines[0], err
    assert afile.read_text() == "keep me"


def test_out_claimed_by_another_live_run_is_refused_before_compiling(tmp_path, capsys, no_engine):
    from ncflow.result import CLAIM_FILE

    out_dir = tmp_path / "busy"
    out_dir.mkdir()
    (out_dir / CLAIM_FILE).write_text(str(os.getppid()))  # a live process that is not this one
    code, out, err = run_cli(["run", *TINY, "--out", str(out_dir)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "being written by another ncflow run" in lines[0], err
    assert sorted(os.listdir(out_dir)) == [CLAIM_FILE]  # nothing written, the other run's claim kept


def test_a_stale_claim_is_taken_over_and_released(tmp_path, capsys):
    from ncflow.result import CLAIM_FILE

    out_dir = tmp_path / "stale"
    out_dir.mkdir()
    (out_dir / CLAIM_FILE).write_text("999999999")  # no such process
    code, out, err = run_cli(["run", *TINY, "--runs", "2", "--out", str(out_dir)], capsys)
    assert code == 0, err
    files = set(os.listdir(out_dir))
    assert {"runs.csv", "summary.json", "config.json"} <= files and CLAIM_FILE not in files


def test_empty_out_is_refused(capsys, no_engine):
    code, out, err = run_cli(["run", *TINY, "--out", ""], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err
