"""The deep UFM as a problem (issue 22, items 1, 2 and 6's theory part): ``Problem(depth=...,
widths=..., activation=..., lambda_w=[...])``, its validation (one line naming the field, flag or
TOML key), ``ncflow theory --depth`` (text and JSON) against THEORY §9.7's reference rows and
:func:`ncflow.maths.deep.predict_deep`, depth 1 unchanged, and the honest refusal of ``run``,
``sweep`` and ``simulate`` while the deep engine is not wired. Nothing here compiles a program."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

import ncflow
import ncflow.batch.loop
from ncflow.errors import ConfigError, ProblemError
from ncflow.maths import deep, theory
from ncflow.problem import Problem
from ncflow.settings import SETTINGS
from ncflow.sweep.config import SweepError, parse_config

from helpers import run_cli

SMALL = ["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "5e-3", "--lambda-h", "5e-3"]


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if anything reaches the batch loop (i.e. would compile a program)."""
    def boom(*a, **k):
        raise AssertionError("the run reached the engine: it must be refused before compiling")
    monkeypatch.setattr(ncflow.batch.loop, "simulate", boom)
    monkeypatch.setattr(ncflow.batch.loop, "simulate_points", boom)


def _one_line_error(code, out, err, flag):
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0], err
    return lines[0]


def theory_json(capsys, argv) -> dict:
    code, out, err = run_cli(["theory", "--json", *argv], capsys)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


# ----------------------------------------------------------------------------- the stored problem
def test_depth_one_is_todays_problem():
    p = Problem()
    assert (p.depth, p.widths, p.activation, p.lambda_hidden) == (1, None, "linear", None)
    assert p.layer_widths == (p.d,) and p.layer_lambdas == (p.lambda_w,)
    assert set(p.describe()) == {"K", "d", "n", "lambda_w", "lambda_h", "lambda_b", "bias", "loss", "alpha",
                                 "target_scale", "dtype"}
    assert Problem(lambda_w=[2e-3]) == Problem(lambda_w=2e-3)  # a list of depth = 1 value


def test_per_layer_lambdas_and_widths():
    p = Problem(K=4, n=5, d=8, depth=3, widths=6, lambda_w=[1e-3, 2e-3, 5e-3])
    assert p.lambda_w == 5e-3 and p.lambda_hidden == (1e-3, 2e-3)  # lambda_w: the output layer's λ_L
    assert p.layer_lambdas == (1e-3, 2e-3, 5e-3) and p.widths == (6, 6) and p.layer_widths == (8, 6, 6)
    q = Problem(K=4, n=5, d=8, depth=3, lambda_w=5e-3)  # one λ for every layer, d for every hidden width
    assert q.lambda_hidden is None and q.layer_lambdas == (5e-3,) * 3 and q.layer_widths == (8, 8, 8)
    assert Problem(K=4, n=5, d=8, depth=3, lambda_w=[5e-3] * 3) == q  # equal values: the same problem
    assert p.describe()["lambdas"] == [1e-3, 2e-3, 5e-3] and p.describe()["widths"] == [6, 6]
    # a frozen pytree: depth, widths and activation static, the hidden λ's leaves
    leaves = sorted(float(x) for x in jax.tree_util.tree_leaves(p))
    assert leaves == sorted([5e-3, p.lambda_h, 0.0, 1.0, 1.0, 1e-3, 2e-3])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.depth = 2
    assert dataclasses.replace(p, lambda_w=7e-3).layer_lambdas == (1e-3, 2e-3, 7e-3)


def test_deep_c():
    """THEORY §9.1: c = K (n λ_H Π λ_l)^{1/(L+1)} (§9.7 A1: 0.034200; A4: 0.031748)."""
    assert Problem(K=4, n=5, depth=2, lambda_w=5e-3, lambda_h=5e-3).c == pytest.approx(0.034200, abs=5e-7)
    assert Problem(K=4, n=5, depth=2, lambda_w=[2e-3, 5e-3], lambda_h=1e-2).c == pytest.approx(0.031748, abs=5e-7)


BAD_PROBLEMS = [
    (dict(depth=0), "depth", "depth must be an integer in [1, 64]"),
    (dict(depth=65), "depth", "depth must be an integer in [1, 64]"),
    (dict(depth=2.0), "depth", "depth must be an integer in [1, 64]"),
    (dict(depth=True), "depth", "depth must be an integer in [1, 64]"),
    (dict(depth=3, widths=(4, 5, 6)), "widths", "depth - 1 = 2 integers"),
    (dict(depth=3, widths=(4,)), "widths", "depth - 1 = 2 integers"),
    (dict(depth=2, widths=0), "widths", "widths must be an integer in [1, 65536]"),
    (dict(depth=2, widths=[]), "widths", "widths must be an integer in [1, 65536]"),
    (dict(widths=8), "widths", "widths is only used with depth >= 2"),
    (dict(depth=3, lambda_w=[1e-3, 2e-3]), "lambda_w", "a list of depth = 3 numbers"),
    (dict(depth=2, lambda_w=[1e-3, -1.0]), "lambda_w", "lambda_w must be a finite number >= 0 or a list"),
    (dict(depth=2, lambda_w=[]), "lambda_w", "lambda_w must be a finite number >= 0 or a list"),
    (dict(lambda_hidden=(1e-3,)), "lambda_hidden", "only used with depth >= 2"),
    (dict(depth=3, lambda_hidden=(1e-3,)), "lambda_hidden", "depth - 1 = 2 values"),
    (dict(depth=2, lambda_w=[1e-3, 2e-3], lambda_hidden=(1e-3,)), "lambda_hidden", "cannot be combined"),
    (dict(depth=2, activation="tanh"), "activation", 'activation must be one of "linear", "relu"'),
    (dict(activation="relu", bias=False), "activation", "needs depth >= 2"),
    (dict(depth=2, activation="relu"), "activation", "needs bias=False"),
    (dict(depth=2, activation="relu", bias=False, class_sizes=(9, 7, 4, 2)), "class_sizes", "balanced classes"),
    (dict(depth=2, loss="rescaled-mse"), "loss", "depth 1 only"),
    (dict(depth=2, targets=np.eye(4)), "targets", "one-hot classes"),
]


@pytest.mark.parametrize("kw, field, text", BAD_PROBLEMS, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD_PROBLEMS)])
def test_bad_deep_problem_is_one_line_naming_the_field(kw, field, text):
    with pytest.raises(ProblemError) as e:
        Problem(**{"K": 4, "n": 5, "d": 8, **kw})
    msg = str(e.value)
    assert e.value.field == field and msg.startswith(field) and text in msg and "\n" not in msg, msg


def test_relu_takes_equal_class_sizes():
    p = Problem(d=8, class_sizes=(5, 5, 5, 5), depth=2, activation="relu", bias=False)
    assert p.K == 4 and p.activation == "relu"


BAD_FLAGS = [
    (["--depth", "0"], "--depth must be an integer in [1, 64]"),
    (["--depth", "3", "--widths", "4,5,6"], "--widths must be one integer or a list of depth - 1 = 2"),
    (["--depth", "3", "--width", "x"], "--widths must be an integer in [1, 65536]"),
    (["--width", "8"], "--widths is only used with depth >= 2"),
    (["--depth", "3", "--lambda-w", "1e-3,2e-3"], "--lambda-w must be one number or a list of depth = 3"),
    (["--depth", "2", "--lambda-w", "1e-3,abc"], "--lambda-w must be a finite number >= 0"),
    (["--depth", "2", "--activation", "tanh"], '--activation must be one of "linear", "relu"'),
    (["--depth", "2", "--activation", "relu", "--no-bias", "--class-sizes", "9,7,4,2"], "--class-sizes must be equal"),
    (["--depth", "2", "--activation", "relu"], "--activation relu needs bias=False (--no-bias)"),
]


@pytest.mark.parametrize("argv, text", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
@pytest.mark.parametrize("command", ["theory", "run"])
def test_bad_deep_flag_is_one_line_naming_the_flag(argv, text, command, capsys, no_engine):
    code, out, err = run_cli([command, "-d", "8", *argv], capsys)
    _one_line_error(code, out, err, text)


def test_bad_deep_toml_key_is_named():
    for raw, text in [({"problem": {"depth": 0}}, "problem.depth must be an integer in [1, 64]"),
                      ({"problem": {"activation": "tanh"}}, "problem.activation must be one of"),
                      ({"problem": {"depth": 2, "widths": [4, 5]}}, "problem.widths must be one integer or a list"),
                      ({"grid": {"depth": [1, 0]}}, "grid.depth[1] must be an integer in [1, 64]")]:
        with pytest.raises(SweepError) as e:
            parse_config(raw)
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_deep_keys_enter_a_sweeps_config_only_where_given():
    """Sweeps written before the deep keys existed keep their normalized config (and hash)."""
    base = parse_config({"problem": {"K": 4}})
    assert not {"depth", "widths", "activation", "lambda_hidden"} & set(base.normalized["problem"])
    assert all(not SETTINGS[k].hashed for k in ("depth", "widths", "activation"))
    parse_config({"problem": {"K": 4, "depth": 2, "widths": 6, "lambda_w": [1e-3, 2e-3]}})  # deep linear runs
    relu = parse_config({"problem": {"K": 4, "depth": 2, "widths": 6, "activation": "relu", "bias": False}})
    assert relu.normalized["problem"]["activation"] == "relu"  # given: it enters the normalized config
    with pytest.raises(SweepError) as e:  # the deep ReLU UFM has no bias (THEORY §9.6)
        parse_config({"problem": {"K": 4, "depth": 2, "widths": 6, "activation": "relu"}})
    assert "problem.activation relu needs bias=False" in str(e.value)


# ----------------------------------------------------------------------------- theory --depth
#: THEORY §9.7's rows: (flags, f*, f_sad, ‖w_k‖, ‖μ_k‖, b*); values printed to 10 / 6 decimals there
ROWS = {
    "A1": (["--depth", "2", "--width", "8"], 0.0380307182, 0.1503538121, 1.119251, 0.500544, 0.25),
    "A2": (["--depth", "3", "--width", "8"], 0.0445198815, 0.1546799210, 1.050880, 0.469968, 0.25),
    "A4": (["--depth", "2", "--width", "6", "--lambda-w", "2e-3,5e-3", "--lambda-h", "1e-2"],
           0.0353344452, 0.1485562968, 1.079323, 0.341312, 0.25),
    "B1": (["--depth", "2", "--width", "8", "--no-bias"], 0.0507076242, 0.1630307182, 1.292400, 0.577979, None),
    "A8": (["--depth", "3", "--width", "5", "-d", "5", "--class-sizes", "9,7,4,2", "--lambda-w", "1e-2",
            "--lambda-h", "1e-2"],  # no SMALL: the sizes give K and n
           0.0864202038, 0.1163293831, [1.086706, 1.069233, 1.016310, 0.935909],
           [0.324681, 0.390596, 0.536001, 0.730444], list(np.array([9, 7, 4, 2]) / 22)),
    "C2": (["--depth", "2", "--width", "8", "--lambda-b", "1"], 0.0505560869, 0.1005307182, 1.288412, 0.576195,
           0.008759),
}
#: the same rows as predict_deep arguments
ARGS = {
    "A1": dict(K=4, n=5, L=2, widths=(8, 8), lambda_h=5e-3, lambdas=5e-3),
    "A2": dict(K=4, n=5, L=3, widths=(8, 8, 8), lambda_h=5e-3, lambdas=5e-3),
    "A4": dict(K=4, n=5, L=2, widths=(8, 6), lambda_h=1e-2, lambdas=(2e-3, 5e-3)),
    "B1": dict(K=4, n=5, L=2, widths=(8, 8), lambda_h=5e-3, lambdas=5e-3, bias="none"),
    "A8": dict(K=4, n=(9, 7, 4, 2), L=3, widths=(5, 5, 5), lambda_h=1e-2, lambdas=1e-2),
    "C2": dict(K=4, n=5, L=2, widths=(8, 8), lambda_h=5e-3, lambdas=5e-3, bias="regularized", lambda_b=1.0),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_theory_json_matches_the_reference_rows(row, capsys):
    flags, f, fsad, w, mu, b = ROWS[row]
    data = theory_json(capsys, [*([] if row == "A8" else SMALL), *flags])
    assert {"objective", "rank", "minima", "f_sad"} <= set(data) and data["model"] == "deep_linear"
    assert data["objective"] == pytest.approx(f, abs=5e-11)
    assert data["f_sad"] == pytest.approx(fsad, abs=5e-11)
    np.testing.assert_allclose(data["w_norms"], np.broadcast_to(w, (4,)), atol=5e-7)
    np.testing.assert_allclose(data["h_norms"], np.broadcast_to(mu, (4,)), atol=5e-7)
    if b is None:
        assert data["bias"] is None
    else:
        np.testing.assert_allclose(data["bias"], np.broadcast_to(b, (4,)), atol=5e-7)
    # and every value is predict_deep's (the module THEORY §9 is implemented in)
    p = deep.predict_deep(**ARGS[row])
    assert data["objective"] == p.objective and data["f_sad"] == p.saddle_value and data["rank"] == p.rank
    assert data["c"] == p.c and data["geometry"] == p.geometry
    assert data["minima"] == [{"rank": m.rank, "objective": m.value, "gap": m.value - p.objective,
                               "global": m.is_global} for m in p.local_minima]
    assert data["layer_norms2"] == p.layer_norms2.tolist() and data["widths"] == list(ARGS[row]["widths"])
    assert data["problem"]["depth"] == ARGS[row]["L"]


def test_theory_json_rank_r_minima_and_thresholds(capsys):
    """§9.7: A1's f_r for r = 0..3; A6 (c between c_glob and c_exist): the origin is global, every
    alive minimum lies above it; §9.1's thresholds at L = 3."""
    a1 = theory_json(capsys, [*SMALL, *ROWS["A1"][0]])
    np.testing.assert_allclose([m["objective"] for m in a1["minima"]], [0.375, 0.2626769061, 0.1503538121,
                                                                       0.0380307182], atol=5e-11)
    assert [m["rank"] for m in a1["minima"]] == [0, 1, 2, 3] and a1["rank"] == 3
    assert a1["x_plus"] == pytest.approx(0.9653966563, abs=5e-11) and a1["geometry"] == "simplex_etf"
    a6 = theory_json(capsys, ["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "0.055", "--lambda-h", "0.055",
                              "--depth", "3", "--width", "8"])
    assert a6["rank"] == 0 and a6["geometry"] == "zero" and a6["objective"] == pytest.approx(0.375, abs=1e-15)
    assert a6["f_sad"] == pytest.approx(0.3972917912, abs=5e-11)
    np.testing.assert_allclose([m["objective"] for m in a6["minima"]], [0.375, 0.3972917912, 0.4195835824,
                                                                       0.4418753736], atol=5e-11)
    assert a6["c_exist"] == pytest.approx(0.3849001795, abs=5e-11) and a6["c_glob"] == pytest.approx(0.2721655270,
                                                                                                    abs=5e-11)
    assert a6["c_glob"] < a6["c"] < a6["c_exist"]


def test_theory_json_relu_dnc_and_srg(capsys):
    """§9.6/§9.7 B2: K=10, n=5, L=4, λ=0.004: L_DNC = 0.136396176619, the simple SRG family (r = 5)
    0.12429203 = 0.911 L_DNC; the global minimum is not known: objective null."""
    data = theory_json(capsys, ["-K", "10", "-n", "5", "-d", "30", "--depth", "4", "--width", "30", "--lambda-w",
                                "4e-3", "--lambda-h", "4e-3", "--activation", "relu", "--no-bias"])
    assert data["model"] == "deep_relu" and data["objective"] is None and data["f_sad"] is None
    assert data["dnc_objective"] == pytest.approx(0.136396176619, abs=5e-13)
    assert data["dnc_exists"] and data["dnc_beats_zero"]
    assert data["dnc_w_norm"] == pytest.approx(1.160869, abs=5e-7) and data["dnc_h_norm"] == pytest.approx(0.519157,
                                                                                                           abs=5e-7)
    assert data["dnc_feature_norms"][0] == pytest.approx(0.519157, abs=5e-7)  # H_1's class means
    assert data["dnc_layer_norms2"][-1] == pytest.approx(10 * 1.160869**2, rel=1e-6)  # ‖W_L‖² = K ‖w_k‖²
    assert data["srg"]["r"] == 5 and data["srg"]["objective"] == pytest.approx(0.12429203, abs=5e-9)
    assert data["srg"]["ratio_to_dnc"] == pytest.approx(0.911, abs=5e-4)
    assert [m["objective"] for m in data["minima"]] == [0.5, data["dnc_objective"]]
    narrow = theory_json(capsys, ["-K", "10", "-n", "5", "-d", "30", "--depth", "4", "--widths", "30,9,30",
                                  "--lambda-w", "4e-3", "--lambda-h", "4e-3", "--activation", "relu", "--no-bias"])
    assert not narrow["dnc_exists"] and narrow["dnc_objective"] is None and len(narrow["minima"]) == 1


def test_theory_text_report(capsys):
    code, out, err = run_cli(["theory", *SMALL, "--depth", "3", "--width", "8"], capsys)
    assert code == 0, err
    assert "deep linear UFM" in out and "Local minima by rank" in out
    assert "c = 0.02991 < c_glob = 0.2722: the alive root beats the origin" in out
    assert "0.04451988152" in out and "0.154679921" in out  # f* and f_sad of §9.7 A2
    code, out, err = run_cli(["theory", "-K", "4", "-n", "5", "-d", "8", "--lambda-w", "0.055", "--lambda-h", "0.055",
                              "--depth", "3"], capsys)
    assert code == 0 and "alive local minima exist, but the origin W = H = 0 is global" in out
    code, out, err = run_cli(["theory", "-K", "10", "-n", "5", "-d", "30", "--depth", "4", "--width", "30",
                              "--lambda-w", "4e-3", "--lambda-h", "4e-3", "--activation", "relu", "--no-bias"], capsys)
    assert code == 0 and "L_DNC = 0.1363961766" in out and "K = C(5, 2)" in out and "not known" in out


# ----------------------------------------------------------------------------- depth 1 unchanged
@pytest.mark.parametrize("flags", [SMALL, [*SMALL, "--no-bias"], [*SMALL, "--lambda-b", "5e-3"],
                                   ["-d", "5", "--class-sizes", "9,7,4,2", "--lambda-w", "1e-2", "--lambda-h", "1e-2"],
                                   []])
def test_depth_one_output_is_unchanged(flags, capsys):
    """``--depth 1`` (and a one-value λ list) is the problem without the flag: the same JSON and
    text, with no deep key; the JSON is the Prediction's and the problem's own."""
    plain = run_cli(["theory", "--json", *flags], capsys)[1]
    assert run_cli(["theory", "--json", *flags, "--depth", "1"], capsys)[1] == plain
    data = json.loads(plain)
    assert not {"model", "depth", "minima", "f_sad"} & set(data) and "depth" not in data["problem"]
    assert run_cli(["theory", *flags, "--depth", "1"], capsys)[1] == run_cli(["theory", *flags], capsys)[1]
    p = Problem(**{k: v for k, v in {"K": 4, "n": 5, "d": 8, "lambda_w": 5e-3, "lambda_h": 5e-3}.items()})
    assert isinstance(theory.predict(p), theory.Prediction)


# ----------------------------------------------------------------------------- the engine refuses, up front
@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_run_depth_two_relu_with_a_bias_is_refused_in_one_line(extra, capsys, tmp_path, no_engine):
    out_dir = tmp_path / "o"
    code, out, err = run_cli(["run", *SMALL, "--depth", "2", "--runs", "2", "--no-progress", "--out", str(out_dir),
                              "--activation", "relu", *extra], capsys)
    line = _one_line_error(code, out, err, "--activation")
    assert "needs bias=False" in line
    assert not out_dir.exists()  # refused before --out was claimed


def test_sweep_depth_two_relu_collapsed_is_refused_in_one_line(capsys, tmp_path, no_engine):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[problem]\nK = 4\nn = 5\nd = 8\nbias = false\n")
    code, out, err = run_cli(["sweep", str(cfg), "--depth", "2", "--activation", "relu", "--engine", "collapsed",
                              "--dry-run"], capsys)
    line = _one_line_error(code, out, err, "engine")
    assert "needs activation linear" in line


@pytest.mark.parametrize("lr", [None, 0.1])
def test_simulate_depth_two_relu_collapsed_is_refused(lr, compile_counter):
    with compile_counter, pytest.raises(ConfigError) as e:
        ncflow.simulate(Problem(K=4, n=5, d=8, depth=2, activation="relu", bias=False), runs=2, lr=lr,
                        engine="collapsed")
    assert e.value.field == "engine" and "ReLU masks act per sample" in str(e.value)
    assert compile_counter.count == 0, compile_counter.names


def test_readme_example_is_the_real_output(capsys):
    """The README's "Deep UFMs (theory)" example prints what the command prints."""
    from helpers import REPO

    text = (REPO / "README.md").read_text()
    cmd = "$ ncflow theory -K 4 -n 5 -d 8 --depth 3 --lambda-w 5e-3 --lambda-h 5e-3\n"
    block = text[text.index(cmd) + len(cmd):]
    block = block[:block.index("```")]
    code, out, err = run_cli(cmd[len("$ ncflow "):].split(), capsys)
    assert code == 0 and out == block, err
