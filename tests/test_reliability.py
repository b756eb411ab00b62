"""Issue 15 regressions: result directories complete or recognizably incomplete, estimates that
cover the host and refuse by name, the theory and metrics at large K, progress by steps, and the
traceback cases of the issue (each refused in one line, exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ncflow
from ncflow import Problem
from ncflow import io as nio
from ncflow.result import ResultIncompleteError, load_summary, load_table

from helpers import ncflow_command, run_cli, subprocess_env

TINY = ["-K", "3", "-d", "4", "-n", "2", "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--no-progress"]


def _fake_result(history: bool, runs: int = 3):
    """A tiny Result built by hand (no engine), enough for save/load."""
    from ncflow.maths import theory
    from ncflow.outcomes import default_tolerances
    from ncflow.result import Result

    p = Problem(K=3, d=4, n=2, lambda_w=1e-2, lambda_h=1e-2)
    pred = theory.predict(p)
    per_run = {"run": np.arange(runs), "outcome": np.array(["global"] * runs, dtype=object),
               "steps": np.full(runs, 10), "objective": np.full(runs, 0.1)}
    for k in ("nc1", "nc2", "nc3", "nc4", "gram_error", "grad_norm"):
        per_run[k] = np.full(runs, 1e-3)
    hist = {"step": np.array([1, 10]), "objective": np.ones((2, runs))} if history else None
    return Result(problem=p, prediction=pred, tolerances=default_tolerances(p, pred), config={"runs": runs},
                  per_run=per_run, history=hist, timing={}, final_state=None, representation="full", device="cpu")


# ------------------------------------------------------------------ item 3: result directories
def test_overwrite_without_history_removes_the_old_history_and_figures(tmp_path):
    out = tmp_path / "res"
    _fake_result(history=True).save(str(out))
    (out / "convergence.png").write_bytes(b"old figure")
    (out / "notes.txt").write_text("the user's own file")
    _fake_result(history=False, runs=5).save(str(out), overwrite=True)
    names = set(os.listdir(out))
    assert "history.csv" not in names and "convergence.png" not in names
    assert "notes.txt" in names  # not the result's: kept
    assert load_summary(str(out))["runs"] == 5 and len(load_table(str(out))["run"]) == 5
    assert not [n for n in os.listdir(tmp_path) if n != "res"]  # no staging directory left


def test_a_save_killed_midway_leaves_the_old_result_or_a_recognizably_incomplete_one(tmp_path, monkeypatch):
    out = tmp_path / "res"
    _fake_result(history=True).save(str(out))
    real = nio.write_json

    def crash(path, obj):  # the kill comes while the new result's files are written
        if str(path).endswith("summary.json"):
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(nio, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        _fake_result(history=False, runs=5).save(str(out), overwrite=True)
    monkeypatch.setattr(nio, "write_json", real)
    assert load_summary(str(out))["runs"] == 3 and len(load_table(str(out))["run"]) == 3  # the old one, whole
    assert sorted(os.listdir(tmp_path)) == ["res"]  # the staging directory is gone

    # a crash inside the commit (after the old completion mark is removed) reads as incomplete
    def boom(*a, **k):
        raise OSError("disk gone")

    stage = nio.stage_dir(out)
    nio.write_json(os.path.join(stage, "summary.json"), {"x": 1})
    (out / "summary.json").unlink()
    with pytest.raises(ResultIncompleteError, match="incomplete result"):
        load_table(str(out))
    with pytest.raises(ResultIncompleteError, match="incomplete"):
        load_summary(str(out))


def test_stale_staging_directories_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = tmp_path / f".res.ncflow-tmp-{dead}-abc"
    orphan.mkdir()
    (orphan / "runs.csv").write_text("big")
    live = tmp_path / f".res.ncflow-tmp-{os.getpid()}-xyz"
    live.mkdir()
    assert nio.remove_stale_stages(tmp_path) == 1
    assert not orphan.exists() and live.exists()


def test_truncated_summary_and_corrupt_table_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "res"
    _fake_result(history=True).save(str(out))
    (out / "summary.json").write_text('{"runs": 3, "outc')
    with pytest.raises(ResultIncompleteError, match="unreadable"):
        load_summary(str(out))
    code, _, err = run_cli(["plot", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "unreadable" in err
    _fake_result(history=True).save(str(out), overwrite=True)
    (out / "history.csv").write_text("step,run,objective\n1,0\n")
    code, _, err = run_cli(["plot", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "history.csv" in err


def test_plot_refuses_a_corrupt_manifest_and_says_a_sweep_is_partial(tmp_path, capsys):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "manifest.json").write_text("{not json")
    code, _, err = run_cli(["plot", str(sweep)], capsys)
    assert code == 2 and err.count("\n") == 1 and "manifest.json" in err
    (sweep / "manifest.json").write_text(json.dumps({"points": 3, "swept": []}))
    (sweep / "summary.csv").write_text("point\n")
    code, _, err = run_cli(["plot", str(sweep)], capsys)
    assert code == 0 and "partial sweep (0 of 3 points complete)" in err


def test_history_of_a_point_does_not_depend_on_its_batch_mates():
    from ncflow.batch.history import own_rows

    steps = np.array([100, 300, 5100, 5100])
    rec = {"step": np.array([0, 100, 200, 300, 500, 800, 1300, 2100, 3300, 5100]),
           "objective": np.arange(40.0).reshape(10, 4)}
    alone = own_rows({k: v[:9] if k == "step" else v[:9] for k, v in rec.items()}, steps[:2], 100, 30000)
    batch = own_rows(rec, steps[:2], 100, 30000)  # its batch ran on to step 5100
    assert alone["step"].tolist() == batch["step"].tolist() == [0, 100, 200, 300]
    np.testing.assert_array_equal(alone["objective"], batch["objective"])


# ------------------------------------------------------------------ item 4: estimates
def test_host_memory_counts_history_and_runs_and_refusal_names_the_setting():
    from ncflow.batch import estimate as est
    from ncflow.config import Config
    from ncflow.dynamics.build import dynamics_for

    p = Problem(K=4, d=4, n=3)
    dyn = dynamics_for(p, Config())
    plain = est.estimate(p, dyn, Config(), 100_000, devices=2)
    hist = est.estimate(p, dyn, Config(history=True), 100_000, devices=2, saved=True)
    assert hist.host_bytes > 0.5 * 2**30 > plain.host_bytes  # 100,000 runs with history: GiB, not 0.01
    assert hist.blame() == "history"
    huge = est.estimate(p, dyn, Config(), 10**7, devices=2)
    field, msg = est.refusal(huge, 2**30, "10000000 runs")
    assert field == "runs" and "use fewer runs" in msg
    assert plain.seconds is not None and plain.run_steps == 100_000 * 30_000


def test_simulate_refuses_ten_million_runs_before_allocating():
    with pytest.raises(ncflow.ConfigError, match=r"^runs: .*GiB"):
        ncflow.simulate(Problem(K=4, d=4, n=3), runs=10**7, memory_limit_bytes=2**30, progress=False)


def test_run_dry_run_prints_memory_and_time_and_refuses_by_flag(capsys):
    code, out, _ = run_cli(["run", *TINY, "--runs", "8", "--dry-run"], capsys)
    assert code == 0 and "memory about" in out and "time at most" in out
    code, out, _ = run_cli(["run", "-K", "4", "-d", "4", "-n", "3", "--runs", "100000000", "--dry-run", "--json"],
                           capsys)
    assert code == 2 and json.loads(out)["fits"] is False


def test_sweep_dry_run_estimates_and_large_sizes_answer_fast(tmp_path, capsys):
    big = tmp_path / "big.toml"
    big.write_text("[problem]\nK = 100000\nd = 4\nn = 1\n[solver]\nruns = 2\n")
    t0 = time.perf_counter()
    code, out, _ = run_cli(["sweep", str(big), "--dry-run"], capsys)
    assert code == 0 and "estimate" in out and "time <=" in out and time.perf_counter() - t0 < 20
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nlambda_w = { geomspace = [1e-4, 1e-2, 1000] }\n"
                    "lambda_h = { geomspace = [1e-4, 1e-2, 1000] }\n")
    t0 = time.perf_counter()
    code, _, err = run_cli(["sweep", str(grid), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "1000000 points" in err and time.perf_counter() - t0 < 5
    huge = tmp_path / "huge.toml"
    huge.write_text("[grid]\nlambda_w = { linspace = [0, 1, 1000000000000] }\n")
    code, _, err = run_cli(["sweep", str(huge), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "grid.lambda_w" in err


# ------------------------------------------------------------------ item 5: theory and metrics at scale
def test_theory_at_100000_classes_answers_in_seconds_without_dense_matrices(capsys):
    t0 = time.perf_counter()
    code, out, _ = run_cli(["theory", "--classes", "100000", "--json"], capsys)
    assert code == 0 and time.perf_counter() - t0 < 10
    assert json.loads(out)["geometry"] in ("simplex_etf", "zero")
    pred = ncflow.predict(Problem(K=60_000, d=60_000, n=1, lambda_w=1e-7, lambda_h=1e-7, dtype="float64"))
    assert pred.gram is None and pred.gram_form is not None and pred.gram_unique


@pytest.mark.parametrize("kw", [dict(), dict(bias=False), dict(lambda_b=50.0), dict(d=2)])
def test_closed_form_gram_equals_the_dense_one(kw):
    from ncflow.maths import theory

    p = Problem(K=6, d=kw.pop("d", 8), n=3, lambda_w=1e-2, lambda_h=2e-2, dtype="float64", **kw)
    dense, scalar = theory.predict(p, dense=True), theory.predict(p, dense=False)
    assert scalar.gram is None and scalar.objective == dense.objective
    if dense.gram is None:
        assert scalar.gram_form is None
    else:
        np.testing.assert_allclose(scalar.gram_matrix(6), dense.gram, atol=1e-13)


def test_metrics_at_large_k_match_the_dense_formulas(monkeypatch):
    from ncflow import features as F

    rng = np.random.default_rng(0)
    K, d, N = 30, 12, 120
    H, labels, W = rng.normal(size=(d, N)), np.arange(N) % K, rng.normal(size=(K, d))
    dense = F.features_metrics(H, labels, W)
    monkeypatch.setattr(F, "DENSE_MAX_K", 4)
    light = F.features_metrics(H, labels, W)
    for k in ("nc1", "nc2", "nc3", "nc2_uncentered", "nc4"):
        assert light[k] == pytest.approx(dense[k], rel=1e-9, abs=1e-12)


def test_metrics_with_a_label_of_10_12_is_refused_before_allocating(tmp_path, capsys):
    f = tmp_path / "f.npz"
    np.savez(f, H=np.ones((3, 4)), labels=np.array([0, 1, 2, 10**12]))
    code, _, err = run_cli(["metrics", str(f)], capsys)
    assert code == 2 and err.count("\n") == 1 and "labels" in err


# ------------------------------------------------------------------ the traceback cases
@pytest.mark.parametrize("argv,needle", [
    (["run", "--loss", "rescaled-mse", "--dim", "5", "--runs", "2"], "rescaled-MSE"),
    (["run", *TINY, "--lambda-w", "1e-300", "--lambda-h", "1e-300", "--runs", "2"], "--lambda-w"),
])
def test_traceback_cases_are_one_line(argv, needle, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_tiny_lambdas_do_not_underflow_c():
    assert Problem(lambda_w=1e-300, lambda_h=1e-300, dtype="float64").c == pytest.approx(1e-298, rel=1e-12)


@pytest.mark.parametrize("call,exc,needle", [
    (lambda P: ncflow.simulate(P, runs=2, devices=[]), ValueError, "devices"),
    (lambda P: ncflow.simulate(None), TypeError, "problem must be an ncflow.Problem"),
    (lambda P: ncflow.simulate(P, bogus=1), TypeError, "'bogus'"),
    (lambda P: ncflow.simulate(P, runs=2, memory_limit_bytes="1"), ncflow.ConfigError, "memory_limit_bytes"),
    (lambda P: ncflow.simulate(P, config=3), TypeError, "config must be"),
    (lambda P: ncflow.simulate_points([], ncflow.Config()), ValueError, "points"),
])
def test_api_calls_with_wrong_types_raise_one_clear_error(call, exc, needle):
    with pytest.raises(exc, match=needle):
        call(Problem(K=3, d=3, n=2))


def test_chunk_is_capped_at_the_budget():
    from ncflow.config import Config, cap_chunk

    assert cap_chunk(Config(chunk=100_000, max_steps=5000)).chunk == 5000
    r = ncflow.simulate(Problem(K=3, d=3, n=2, lambda_w=1e-2, lambda_h=1e-2), runs=2, chunk=100_000, max_steps=50,
                        progress=False)
    assert r.config["chunk"] == 50 and int(r.per_run["steps"].max()) <= 50


def test_theory_into_a_closed_pipe_and_sigint_at_start_up():
    env = subprocess_env()
    p = subprocess.run(" ".join(ncflow_command("theory", "--json")) + " | head -c 1", shell=True, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr
    for wait in (0.3, 1.2):  # while importing; while JAX starts
        child = subprocess.Popen(ncflow_command("run", *TINY, "--runs", "2"), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(wait)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
        assert "Traceback" not in err and child.returncode in (130, 0), (child.returncode, err)  # 0: it finished


# ------------------------------------------------------------------ item 8: progress by steps
def test_progress_counts_steps_with_an_eta_bound():
    import io

    from ncflow.progress import Progress

    out = io.StringIO()
    t = [0.0]
    with Progress(10 * 30_000, desc="steps", unit="run-steps", eta_bound=True, enabled=True, stream=out,
                  clock=lambda: t[0]) as bar:
        t[0] = 2.0
        bar.update(150_000, extra="3/10 runs finished")
    text = out.getvalue()
    assert " 50.0%" in text and "150000/300000" in text and "<=00:02" in text and "run-steps/s" in text
    assert "3/10 runs finished" in text


def test_the_landscape_snippet_of_docs_dynamics_runs_as_written():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "dynamics.md"), encoding="utf-8").read()
    start = text.index('import jax\njax.config.update("jax_enable_x64"')
    code = text[start:text.index("```", start)]
    exec(compile(code, "docs/dynamics.md", "exec"), {})


def test_the_report_says_when_the_budget_decided_outcomes():
    from ncflow.report import budget_hint

    r = _fake_result(history=False)
    r.per_run["outcome"] = np.array(["not_converged", "global", "not_converged"], dtype=object)
    r.per_run["stop"] = np.array(["budget", "certified", "budget"])
    r.config["max_steps"] = 30000
    assert "2 of 3 runs used their whole budget of 30000 steps" in budget_hint(r)
