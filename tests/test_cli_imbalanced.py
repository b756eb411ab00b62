"""`ncflow theory` with class sizes, the two-level shorthand and target files (THEORY §7): the JSON
keys, the table, and one-line refusals (exit 2) naming the flag."""

import json

import numpy as np
import pytest

from ncflow.maths import imbalanced as im
from ncflow.problem import Problem

from helpers import cli_exit_code

SIZES = ["--class-sizes", "40,10,2,2", "-d", "5"]


def theory_json(capsys, argv):
    rc = cli_exit_code(["theory", "--json", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1
    return json.loads(lines[0])


def test_json_has_the_per_class_keys(capsys):
    data = theory_json(capsys, SIZES + ["--lambda-w", "0.03", "--lambda-h", "0.03"])
    o = im.optimum(Problem(class_sizes=(40, 10, 2, 2), d=5, lambda_w=0.03, lambda_h=0.03))
    assert data["objective"] == pytest.approx(o.objective, rel=1e-12)
    assert data["bias"] == pytest.approx(list(o.bias), rel=1e-12)
    assert data["w_norms"] == pytest.approx(list(o.w_norms), rel=1e-12)
    assert data["h_norms"] == pytest.approx(list(o.h_norms), rel=1e-12)
    assert np.asarray(data["gram_w"]).shape == (4, 4)
    assert data["merged"] == [[2, 3]] and data["vanished"] == []  # λ past the merge threshold √2/54
    assert data["class_sizes"] == [40, 10, 2, 2] and data["problem"]["class_sizes"] == [40, 10, 2, 2]


def test_bias_free_json_bias_is_null_and_vanished_listed(capsys):
    data = theory_json(capsys, ["--class-sizes", "10,6,3,2", "-d", "5", "--lambda-w", "0.08", "--lambda-h", "0.07",
                                "--no-bias"])
    assert data["bias"] is None and data["vanished"] == [3]
    assert data["objective"] == pytest.approx(0.4207800807, abs=1e-10)


def test_two_level_shorthand(capsys):
    data = theory_json(capsys, ["-K", "5", "--majority", "2", "--ratio", "10", "-n", "3"])
    assert data["class_sizes"] == [30, 30, 3, 3, 3]


def test_table(capsys):
    assert cli_exit_code(["theory", *SIZES]) == 0
    out = capsys.readouterr().out
    assert "n_k=40,10,2,2" in out and "merged classes" in out and "‖w_k‖" in out


def test_targets_and_labels_files(capsys, tmp_path):
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(3), [4, 3, 2])
    T = 0.9 * np.eye(3)[:, lab] + 0.1 / 3 + 0.05 * rng.normal(size=(3, 9))
    np.save(tmp_path / "T.npy", T)
    np.save(tmp_path / "y.npy", lab)
    data = theory_json(capsys, ["--targets", str(tmp_path / "T.npy"), "--labels", str(tmp_path / "y.npy"),
                                "--lambda-w", "0.01", "--lambda-h", "0.01"])
    assert data["objective"] == pytest.approx(im.optimum(Problem(targets=T, labels=lab, lambda_w=0.01,
                                                                 lambda_h=0.01)).objective, rel=1e-12)
    assert len(data["h_norms"]) == 3


@pytest.mark.parametrize("argv, flag", [
    (["--class-sizes", "4,0"], "--class-sizes"),
    (["--class-sizes", "4"], "--class-sizes"),
    (["--class-sizes", "a,b"], "--class-sizes"),
    (["-K", "3", "--class-sizes", "4,5"], "--class-sizes"),
    (["--class-sizes", "4,5", "-n", "3"], "--per-class"),
    (["-K", "4", "--majority", "4", "--ratio", "3"], "--majority"),
    (["-K", "4", "--majority", "2"], "--majority"),
    (["--ratio", "0.5", "--majority", "1"], "--ratio"),
    (["--targets", "/nonexistent.npy"], "--targets"),
    (["--labels", "/nonexistent.npy"], "--labels"),
])
def test_bad_values_exit_2_naming_the_flag(capsys, argv, flag):
    assert cli_exit_code(["theory", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


def test_bad_target_file_contents(capsys, tmp_path):
    np.save(tmp_path / "T.npy", np.full((3, 4), np.nan))
    assert cli_exit_code(["theory", "--targets", str(tmp_path / "T.npy")]) == 2
    err = capsys.readouterr().err
    assert "--targets must be finite" in err
    np.save(tmp_path / "T.npy", np.ones((3, 4)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 7]))
    assert cli_exit_code(["theory", "--targets", str(tmp_path / "T.npy"), "--labels", str(tmp_path / "y.npy")]) == 2
    assert "--labels must have entries in [0, 2]" in capsys.readouterr().err


def test_metrics_of_features_with_unequal_sizes_against_the_imbalanced_optimum(capsys, tmp_path):
    """`ncflow metrics` on features with class sizes 9,7,4,2 at the §7 optimum: the UFM side is the
    imbalanced prediction (NC2 0.259, NC3 0.274 against the ETF, NC4 = ||p||) and the features'
    distances to its W Wᵀ, MᵀM, W M are ~0."""
    p = Problem(class_sizes=(9, 7, 4, 2), d=5, lambda_w=0.01, lambda_h=0.01)
    W, H, b = im.minimizer(p)
    np.savez(tmp_path / "f.npz", H=H, labels=p.label_vector(), W=W, b=b)
    assert cli_exit_code(["metrics", str(tmp_path / "f.npz"), "--lambda-w", "0.01", "--lambda-h", "0.01",
                          "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    f, u = data["features"], data["ufm"]["metrics"]
    assert data["ufm"]["problem"]["class_sizes"] == [9, 7, 4, 2]
    assert u["nc2"] == pytest.approx(0.259, abs=1e-3) and u["nc3"] == pytest.approx(0.274, abs=1e-3)
    assert u["nc4"] == pytest.approx(np.linalg.norm(np.array([9, 7, 4, 2]) / 22), rel=1e-10)
    for k in ("nc2", "nc3", "nc4", "mean_norm", "w_norm"):
        assert f[k] == pytest.approx(u[k], rel=1e-9), k
    for k in ("gram_w_dist", "gram_h_dist", "cross_dist"):
        assert f[k] < 1e-9, k
    assert f["nc1"] < 1e-20 and f["nc1_weighted"] < 1e-20
