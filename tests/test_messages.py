"""Issue 21 (parts 2, 4 and 7): a full disk, the remaining tracebacks and hangs, and messages that
say only what is true. Each refusal is one line on stderr naming the flag the user gave, exit 2,
no traceback, before anything is compiled; a write that fails after the computation prints the
report and then one line (exit 1), and keeps earlier results whole."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import time
import warnings

import numpy as np
import pytest

import ncflow
import ncflow.batch.loop
from ncflow import io as nio
from ncflow.errors import ProblemError
from ncflow.result import load_summary, load_table

from helpers import ncflow_command, one_json_object, run_cli, subprocess_env

TINY = ["-K", "3", "-d", "4", "-n", "2", "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--no-progress"]
SWEEP_TOML = """
[problem]
K = 3
d = 4
n = 2
lambda_h = 1e-2
[solver]
runs = 2
max_steps = 50
[grid]
lambda_w = [1e-2, 2e-2]
"""


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if the engine is reached (i.e. something would be compiled)."""
    def boom(*a, **k):
        raise AssertionError("the engine was called: the input must be refused before compiling")
    monkeypatch.setattr(ncflow.batch.loop, "simulate", boom)
    monkeypatch.setattr(ncflow.batch.loop, "simulate_points", boom)


def one_line_error(code: int, err: str, status: int = 2) -> str:
    """The single error line of ``err`` (asserting exit ``status``, one line, no traceback)."""
    assert code == status, err
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def disk_full_after(monkeypatch, good: int = 0, name: str = "") -> None:
    """Make ncflow's atomic writes fail with ENOSPC, after ``good`` successful writes of files
    whose name ends with ``name`` (every file: "")."""
    real, seen = nio.atomic_write_bytes, []

    def write(path, data):
        if str(path).endswith(name):
            seen.append(path)
            if len(seen) > good:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(nio, "atomic_write_bytes", write)


# ------------------------------------------------------------------ part 2: a full disk
def test_run_out_on_a_full_disk_prints_the_report_then_one_line_and_keeps_the_old_result(tmp_path, capsys,
                                                                                        monkeypatch):
    out = tmp_path / "res"
    argv = ["run", *TINY, "--runs", "2", "--max-steps", "50", "--out", f"{out}/"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"Results written to {out}/ " in stdout and "//" not in stdout  # one separator, however --out ends
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    disk_full_after(monkeypatch)
    code, stdout, err = run_cli([*argv, "--overwrite", "--seed", "7"], capsys)
    line = one_line_error(code, err, status=1)
    assert line.startswith("ncflow run: error: --out ") and "No space left on device" in line
    assert "Outcomes of 2 runs" in stdout and "Results written" not in stdout  # the report, no false claim
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # the earlier result, whole
    assert sorted(os.listdir(tmp_path)) == ["res"]  # no staging directory left behind

    code, stdout, err = run_cli([*argv, "--overwrite", "--json"], capsys)  # --json: the summary still prints
    one_line_error(code, err, status=1)
    assert one_json_object(stdout)["runs"] == 2


def test_sweep_out_on_a_full_disk_prints_the_complete_points_then_one_line(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_TOML)
    out = tmp_path / "sw"
    disk_full_after(monkeypatch, good=1, name="runs.csv")  # point 0 is written, point 1 finds the disk full
    code, stdout, err = run_cli(["sweep", str(cfg), "--out", str(out), "--no-progress"], capsys)
    assert code == 1 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("ncflow sweep: error: --out ") and "No space left" in errors[0]
    assert "1 of 2 points complete" in stdout
    summary = load_summary(str(out / "points" / "0000"))
    assert summary["runs"] == 2

    monkeypatch.undo()  # space again: the same command resumes and leaves point 0 as it was
    code, stdout, err = run_cli(["sweep", str(cfg), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "1 run now, 1 already complete" in stdout
    assert load_summary(str(out / "points" / "0000")) == summary


# ------------------------------------------------------------------ part 4: tracebacks and hangs
@pytest.mark.parametrize("value", ["2147483648", "100000", "1025", "0"])
def test_cpu_devices_outside_its_range_is_one_line(value, capsys, no_engine):
    line = one_line_error(*run_cli(["run", *TINY, "--cpu-devices", value], capsys)[::2])
    assert "--cpu-devices" in line and "[1, 1024]" in line


def test_the_default_cpu_devices_never_exceed_the_cap(monkeypatch):
    import argparse

    import jax

    from ncflow.cli import common

    asked = []
    monkeypatch.setattr(os, "cpu_count", lambda: 4096)
    monkeypatch.setattr(jax.config, "update", lambda k, v: asked.append((k, v)))
    args = argparse.Namespace(coordinator=None, distributed=False, cpu_devices=None, num_processes=None,
                              dtype="float32", compile_cache="off")
    common.configure_jax(args)
    assert ("jax_num_cpu_devices", 1024) in asked


@pytest.mark.parametrize("command", ["theory", "run"])
@pytest.mark.parametrize("ratio", ["1e308", "1e10"])
def test_a_huge_ratio_blames_ratio(command, ratio, capsys, no_engine):
    line = one_line_error(*run_cli([command, "-K", "10", "--majority", "5", "--ratio", ratio], capsys)[::2])
    assert line.startswith(f"ncflow {command}: error: --ratio must be a number in [1, ")
    assert "--class-sizes" not in line
    hi = float(line.split("[1, ")[1].split(")")[0])  # round(ratio × n) may reach the 2^24 samples of a class
    assert hi == pytest.approx((2**24 + 0.5) / 100, rel=1e-9)


def test_the_largest_ratio_that_fits_is_accepted_and_the_next_refused(capsys):
    code, out, err = run_cli(["theory", "-K", "10", "--majority", "5", "--ratio", "167772.16"], capsys)
    assert code == 0, err
    assert "n_k=16777216," in out
    line = one_line_error(*run_cli(["theory", "-K", "10", "--majority", "5", "--ratio", "167772.17"], capsys)[::2])
    assert "--ratio must be" in line


@pytest.mark.parametrize("command", ["theory", "run"])
def test_targets_3d_and_labels_2d_are_one_line(command, tmp_path, capsys, no_engine):
    np.save(tmp_path / "T3.npy", np.ones((2, 3, 8)))
    np.save(tmp_path / "T.npy", np.eye(3)[:, [0, 0, 1, 1, 2, 2]])
    np.save(tmp_path / "y2.npy", np.array([[0, 0, 1, 1, 2, 2]]))
    line = one_line_error(*run_cli([command, "--targets", str(tmp_path / "T3.npy")], capsys)[::2])
    assert "--targets must be a real 2-D (K, N) array" in line and "(2, 3, 8)" in line
    line = one_line_error(*run_cli([command, "--targets", str(tmp_path / "T.npy"), "--labels",
                                    str(tmp_path / "y2.npy")], capsys)[::2])
    assert "--labels must be a 1-D integer array" in line and "(1, 6)" in line


def test_api_refuses_the_engines_per_lane_shapes():
    with pytest.raises(ProblemError, match=r"targets must be a real 2-D") as e:
        ncflow.Problem(targets=np.ones((2, 3, 8)))
    assert e.value.field == "targets"
    with pytest.raises(ProblemError, match=r"labels must be a 1-D") as e:
        ncflow.Problem(targets=np.eye(3)[:, [0, 0, 1, 1, 2, 2]], labels=np.array([[0, 0, 1, 1, 2, 2]]))
    assert e.value.field == "labels"
    with pytest.raises(ProblemError, match=r"class_sizes must be") as e:
        ncflow.Problem(class_sizes=np.full((2, 3), 4))
    assert e.value.field == "class_sizes"


def test_sweep_out_under_a_file_or_unwritable_is_one_line(tmp_path, capsys, no_engine, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_TOML)
    (tmp_path / "afile").write_text("x")
    line = one_line_error(*run_cli(["sweep", str(cfg), "--out", str(tmp_path / "afile" / "sub")], capsys)[::2])
    assert line.startswith("ncflow sweep: error: --out ") and "not a directory" in line

    import ncflow.cli.sweep as cli_sweep

    def read_only(*a, **k):  # a read-only directory (also for root, who may write anywhere)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(cli_sweep.tempfile, "mkstemp", read_only)
    (tmp_path / "ro").mkdir()
    line = one_line_error(*run_cli(["sweep", str(cfg), "--out", str(tmp_path / "ro" / "new")], capsys)[::2])
    assert line.startswith("ncflow sweep: error: --out ") and "Permission denied" in line
    assert os.listdir(tmp_path / "ro") == []  # the directory it created is taken back


def test_lost_peer_line_names_the_other_process(monkeypatch):
    import jax

    from ncflow.cli.app import lost_peer

    err = ValueError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error [127.0.0.1]:7553: "
                     "Connection reset by peer")
    assert lost_peer(err) is None  # one process: not a lost peer, the error stays an error
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    line = lost_peer(err)
    assert line.startswith("lost process 1 of this 2-process job (connection reset by peer)")
    assert lost_peer(ValueError("an unrelated error")) is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_process_of_two_ends_the_survivor_with_one_line(victim, tmp_path):
    """The survivor of a 2-process run whose peer is killed mid-run ends at its next collective
    with one line naming the peer, at once (not after the ~100 s heartbeat timeout, and not by
    the coordination client's C++ abort)."""
    port = _free_port()
    common = ncflow_command("run", *TINY, "--runs", "8", "--max-steps", "2000000", "--no-early-stop", "--chunk",
                            "100", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--cpu-devices", "1")
    env = subprocess_env()
    procs, errs = {}, {}
    try:
        for pid in (1, 0):
            errs[pid] = open(tmp_path / f"err{pid}", "w+")
            procs[pid] = subprocess.Popen(common + ["--process-id", str(pid)], stdout=subprocess.DEVNULL,
                                          stderr=errs[pid], env=env)
        deadline = time.time() + 180
        while "is connected to 1 peer" not in (tmp_path / "err0").read_text():  # gloo is up: the loop runs
            assert time.time() < deadline and procs[0].poll() is None, (tmp_path / "err0").read_text()
            time.sleep(0.5)
        time.sleep(2)
        procs[victim].kill()
        survivor = procs[1 - victim]
        t0 = time.time()
        code = survivor.wait(timeout=90)
        waited = time.time() - t0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for f in errs.values():
            f.close()
    err = (tmp_path / f"err{1 - victim}").read_text()
    assert code == 1, err
    assert "Traceback" not in err and "Check failure" not in err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert lines == [f"ncflow run: error: lost process {victim} of this 2-process job (connection reset by peer): "
                     f"it stopped or became unreachable, so process {1 - victim} stops too"], err
    assert waited < 30


# ------------------------------------------------------------------ part 7: what is true
def test_targets_without_labels_report_no_class_metrics(tmp_path, capsys):
    T = np.random.default_rng(0).random((3, 6))
    np.save(tmp_path / "T.npy", T)
    code, stdout, err = run_cli(["run", "--targets", str(tmp_path / "T.npy"), "--runs", "2", "--max-steps", "50",
                                 "--no-progress", "--json", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    s = one_json_object(stdout)
    assert all(s["median_metrics"][k] is None for k in ("nc1", "nc2", "nc3", "nc4"))
    assert s["median_metrics"]["gram_error"] is not None  # W Wᵀ against the theory's: still measured
    assert s["limit"]["nc1"] is None and s["limit"]["nc2"] is None and s["limit"]["nc3"] is None
    table = load_table(str(tmp_path / "o"))
    assert np.isnan(table["nc1"]).all() and np.isnan(table["nc2"]).all() and np.isnan(table["nc3"]).all()
    # the theory: no c (a balanced one-hot notion), the target's singular values and the threshold Nτ
    assert "c" not in s["theory"]
    sigma = np.linalg.svd(T - T.mean(axis=1, keepdims=True), compute_uv=False)  # unregularized bias: centred
    np.testing.assert_allclose(s["theory"]["target_singular_values"], sigma, rtol=1e-10)
    assert s["theory"]["survival_threshold"] == pytest.approx(6 * math.sqrt(5e-4 * 5e-4), rel=1e-12)
    assert s["theory"]["surviving_directions"] == int(np.sum(sigma > 6 * 5e-4))

    code, stdout, err = run_cli(["run", "--targets", str(tmp_path / "T.npy"), "--runs", "2", "--max-steps", "50",
                                 "--no-progress"], capsys)
    assert code == 0, err
    assert "NC1" not in stdout and "NC2" not in stdout and "no classes" in stdout


def test_targets_without_labels_history_has_no_class_metrics():
    """The history's NC columns are NaN too (they recorded NC1 = 0 and NC2 = 0.335 of no classes);
    its objective and gradient columns are still recorded."""
    T = np.random.default_rng(0).random((3, 6))
    r = ncflow.simulate(ncflow.Problem(targets=T, dtype="float64"), runs=2, max_steps=50, history=True)
    assert all(np.isnan(r.history[k]).all() for k in ("nc1", "nc2", "nc3"))
    assert np.isfinite(r.history["objective"]).any()


def test_theory_json_for_targets_has_the_threshold_not_c(tmp_path, capsys):
    T = np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    np.save(tmp_path / "T.npy", T)
    code, stdout, err = run_cli(["theory", "--targets", str(tmp_path / "T.npy"), "--lambda-w", "0.04",
                                 "--lambda-h", "0.01", "--json"], capsys)
    assert code == 0, err
    data = one_json_object(stdout)
    assert "c" not in data
    assert data["survival_threshold"] == pytest.approx(4 * math.sqrt(0.04 * 0.01), rel=1e-12)
    sigma = np.linalg.svd(T - T.mean(axis=1, keepdims=True), compute_uv=False)
    np.testing.assert_allclose(data["target_singular_values"], sigma, rtol=1e-10, atol=1e-14)
    assert data["surviving_directions"] == int(np.sum(sigma > data["survival_threshold"]))
    code, stdout, err = run_cli(["theory", "--json"], capsys)  # a one-hot problem keeps its c
    assert "c" in one_json_object(stdout)


@pytest.mark.parametrize("flags, flag", [
    (["--init-scale", "3.4e38"], "--init-scale"),
    (["--lambda-w", "3e38"], "--lambda-w"),
    (["--loss", "rescaled-mse", "--alpha", "3e38"], "--alpha"),
])
def test_a_tiny_default_step_blames_the_flag_given(flags, flag, capsys, compile_counter):
    with compile_counter:
        line = one_line_error(*run_cli(["run", *TINY, *flags, "--runs", "2", "--max-steps", "50"], capsys)[::2])
    assert line.startswith(f"ncflow run: error: {flag} = ") and "--lr" not in line
    assert "default step size" in line
    assert compile_counter.count == 0, compile_counter.names


def test_an_explicit_tiny_lr_still_blames_lr(capsys, compile_counter):
    with compile_counter:
        line = one_line_error(*run_cli(["run", *TINY, "--lr", "1e-39", "--runs", "2"], capsys)[::2])
    assert line.startswith("ncflow run: error: --lr must be 0 or at least")
    assert compile_counter.count == 0, compile_counter.names


def test_a_huge_group_blames_group(capsys, no_engine):
    code, out, err = run_cli(["run", *TINY, "--group", "2147483647", "--runs", "2", "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "would be refused: --group: " in out and "--runs" not in out


def test_a_huge_group_is_refused_by_group_before_compiling(capsys, compile_counter):
    with compile_counter:
        code, _, err = run_cli(["run", *TINY, "--group", "2147483647", "--runs", "2", "--max-steps", "50"], capsys)
    assert code == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error" in ln]  # (a time estimate's note may come first)
    assert len(errors) == 1 and errors[0].startswith("ncflow run: error: --group: 2 runs"), err
    assert "smaller group" in errors[0]
    assert compile_counter.count == 0, compile_counter.names


def test_huge_targets_are_one_line_without_numpy_warnings(tmp_path, capsys, no_engine):
    np.save(tmp_path / "T.npy", 1e300 * np.eye(3)[:, [0, 0, 1, 1, 2, 2]])
    for command in (["theory"], ["run", "--runs", "2", "--max-steps", "50", "--no-progress"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = one_line_error(*run_cli([*command, "--targets", str(tmp_path / "T.npy")], capsys)[::2])
        assert not caught, [str(w.message) for w in caught]
        assert "--targets must have entries of magnitude at most 3.403e+38" in line


def test_a_refused_sweep_leaves_no_directory(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_TOML)
    for out in (tmp_path / "new", tmp_path / "deep" / "er"):
        line = one_line_error(*run_cli(["sweep", str(cfg), "--out", str(out), "--runs", "2000000000"], capsys)[::2])
        assert "solver.runs" in line
        assert not out.exists() and not (tmp_path / "deep").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(*run_cli(["sweep", str(cfg), "--out", str(empty), "--runs", "2000000000"], capsys)[::2])
    assert os.listdir(empty) == []  # the user's own (empty) directory stays, without a .lock


def test_sweep_prints_its_directory_with_one_separator(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_TOML)
    code, out, err = run_cli(["sweep", str(cfg), "--out", f"{tmp_path / 'sw'}//", "--no-progress"], capsys)
    assert code == 0, err
    assert f"files in {tmp_path / 'sw'}/ (" in out and "//" not in out

