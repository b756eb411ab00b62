"""`ncflow theory`: JSON and table output, and flag validation (exit 2, one stderr line naming
the flag, no traceback). Mostly in-process through ``ncflow.cli.app``; two subprocess runs
check the real ``python -m ncflow.cli`` entry point."""

import json
import math
import subprocess

import pytest

from ncflow.maths import theory
from ncflow.problem import Problem

from helpers import REPO, cli_exit_code, ncflow_command, subprocess_env

JSON_KEYS = {"c", "geometry", "objective", "w_norm", "h_norm", "bias"}
SMALL = ["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "5e-3", "--lambda-h", "5e-3"]


def run_json(capsys, argv):
    rc = cli_exit_code(["theory", "--json", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # ONE JSON object
    return json.loads(lines[0])


# ----------------------------------------------------------------------------- JSON
def test_json_case_a(capsys):
    data = run_json(capsys, SMALL)
    assert JSON_KEYS <= set(data)
    pred = theory.predict(Problem(K=4, n=5, d=8, lambda_w=5e-3, lambda_h=5e-3, dtype="float64"))
    assert data["geometry"] == "simplex_etf"
    assert data["c"] == pytest.approx(4 * math.sqrt(5 * 5e-3 * 5e-3), rel=1e-12)
    assert data["objective"] == pytest.approx(0.0327910197, abs=1e-10)
    assert data["objective"] == pytest.approx(pred.objective, rel=1e-12)
    assert data["w_norm"] == pytest.approx(1.265722, abs=1e-6)
    assert data["h_norm"] == pytest.approx(0.566048, abs=1e-6)
    assert data["bias"] == pytest.approx(0.25, rel=1e-12)


def test_json_no_bias(capsys):
    data = run_json(capsys, [*SMALL, "--no-bias"])
    assert JSON_KEYS <= set(data)
    assert data["bias"] is None
    assert data["geometry"] == "orthogonal_frame"
    assert data["objective"] == pytest.approx(0.0437213595, abs=1e-10)


def test_json_regularized_bias(capsys):
    data = run_json(capsys, [*SMALL, "--lambda-b", "5e-3"])
    assert data["geometry"] == "simplex_etf"
    assert data["bias"] == pytest.approx(0.248756, abs=1e-6)
    assert data["objective"] == pytest.approx(0.0334129102, abs=1e-10)


def test_json_defaults(capsys):
    data = run_json(capsys, [])  # K=10, d=10 (the defaults of `ncflow run`), n=100, λ = 5e-4 (§6 last row)
    assert data["geometry"] == "simplex_etf"
    assert data["objective"] == pytest.approx(0.043875, rel=1e-10)
    assert data["bias"] == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize(
    "argv,geometry",
    [
        (["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "0.2", "--lambda-h", "0.2"], "zero"),
        (["-K", "5", "-n", "5", "-d", "2", "--lambda-w", "1e-2", "--lambda-h", "1e-2"], "rank_limited"),
        (["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--lambda-b", "0.5"],
         "etf_with_mean"),
        (["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "0", "--lambda-h", "0"], "not_unique"),
    ],
)
def test_json_other_geometries_are_valid_json(capsys, argv, geometry):
    data = run_json(capsys, argv)
    assert data["geometry"] == geometry
    assert JSON_KEYS <= set(data)


def test_json_rescaled_mse(capsys):
    data = run_json(capsys, [*SMALL, "--loss", "rescaled-mse", "--alpha", "3", "--target-scale", "2"])
    pred = theory.predict(Problem(K=4, n=5, d=8, lambda_w=5e-3, lambda_h=5e-3, loss="rescaled-mse",
                                  alpha=3.0, target_scale=2.0, dtype="float64"))
    assert data["geometry"] == "simplex_etf"
    assert data["objective"] == pytest.approx(pred.objective, rel=1e-12)
    assert data["bias"] == pytest.approx(pred.bias, rel=1e-12)


def test_rescaled_mse_outside_closed_form_is_a_usage_error(capsys):
    # The rescaled-MSE closed form needs a bias with λ_b = 0: a clean exit 2, not a traceback.
    rc = cli_exit_code(["theory", *SMALL, "--loss", "rescaled-mse", "--no-bias"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == ""


# ----------------------------------------------------------------------------- table
def test_human_table_mentions_geometry(capsys):
    rc = cli_exit_code(["theory", *SMALL])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "geometry" in out and "simplex_etf" in out
    assert "0.03279101966" in out  # f* printed with 10 significant digits


def test_human_table_no_bias(capsys):
    rc = cli_exit_code(["theory", *SMALL, "--no-bias"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "orthogonal_frame" in out


# ----------------------------------------------------------------------------- bad values
BAD = [
    (["--classes", "1"], "--classes"),
    (["-K", "1"], "--classes"),
    (["--classes", "2.5"], "--classes"),
    (["--dim", "abc"], "--dim"),
    (["--dim", "0"], "--dim"),
    (["--per-class", "0"], "--per-class"),
    (["--lambda-w", "-1"], "--lambda-w"),
    (["--lambda-w", "nan"], "--lambda-w"),
    (["--lambda-w", "inf"], "--lambda-w"),
    (["--lambda-h", "-1e-3"], "--lambda-h"),
    (["--lambda-b", "-0.1"], "--lambda-b"),
    (["--lambda-b", "0.1", "--no-bias"], "--lambda-b"),
    (["--loss", "hinge"], "--loss"),
    (["--loss", "rescaled-mse", "--alpha", "0"], "--alpha"),
    (["--loss", "rescaled-mse", "--target-scale", "-1"], "--target-scale"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_exit_2(capsys, argv, flag):
    rc = cli_exit_code(["theory", *argv])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0], err
    assert out == ""


# ----------------------------------------------------------------------------- real entry point
def _cli(*argv):
    return subprocess.run(ncflow_command(*argv), capture_output=True, text=True,
                          env=subprocess_env(JAX_PLATFORMS="cpu"), cwd=str(REPO), timeout=120)


def test_subprocess_json():
    proc = _cli("theory", "--json", *SMALL, "--no-bias")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # the whole stdout is one JSON object
    assert JSON_KEYS <= set(data)
    assert data["bias"] is None and data["geometry"] == "orthogonal_frame"


def test_subprocess_bad_value():
    proc = _cli("theory", "--lambda-w", "nan")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--lambda-w" in lines[0], proc.stderr
    assert proc.stdout == ""
