"""ncflow.features and `ncflow metrics`: NC metrics of real-network features (.npz).

Exactness fixtures come from the closed form (theory.global_minimizer); the noisy case is checked
against an independent numpy computation (explicit pseudo-inverse, per-sample loops). float64.
"""

import json
import math

import jax
import numpy as np
import pytest

from ncflow import Problem
from ncflow.cli.app import main
from ncflow.features import FeaturesError, compare, features_metrics, load_features, make_features, predicted_metrics
from ncflow.maths import metrics, theory


def _etf_arrays(K=4, d=6, n=5, lw=5e-3, lh=5e-3):
    p = Problem(K=K, d=d, n=n, lambda_w=lw, lambda_h=lh, dtype="float64")
    W, H, b = (np.asarray(a) for a in theory.global_minimizer(p, key=jax.random.key(3)))
    labels = np.repeat(np.arange(K), n)
    return p, W, H, b, labels


def _reference_nc1(H, labels, K):
    """Independent NC1: per-sample loop for Σ_W, np.linalg.pinv for Σ_B^†."""
    d, N = H.shape
    mu = np.stack([H[:, labels == k].mean(axis=1) for k in range(K)], axis=1)
    muG = H.mean(axis=1)
    Sw = np.zeros((d, d))
    for i in range(N):
        e = H[:, i] - mu[:, labels[i]]
        Sw += np.outer(e, e) / N
    Sb = sum(np.outer(mu[:, k] - muG, mu[:, k] - muG) for k in range(K)) / K
    return float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / K)


def test_exact_etf_scores_zero_and_matches_the_prediction():
    p, W, H, b, labels = _etf_arrays()
    m = features_metrics(H, labels, W, b)
    assert m["nc1"] < 1e-20
    assert m["nc2"] < 1e-12 and m["nc3"] < 1e-12 and m["nc2_uncentered"] < 1e-12
    assert m["nc4"] == pytest.approx(1 / math.sqrt(p.K), rel=1e-12)  # b* = 1/K at the case-(A) optimum
    assert m["class_sizes"] == [p.n] * p.K
    pred = predicted_metrics(p)
    for k in ("nc2", "nc3", "nc4", "nc2_uncentered", "w_norm", "mean_norm"):
        assert m[k] == pytest.approx(pred[k], abs=1e-12), k


def test_predicted_metrics_of_orthogonal_frame_and_zero_solution():
    frame = predicted_metrics(Problem(K=4, d=6, n=5, lambda_w=5e-3, lambda_h=5e-3, bias=False, dtype="float64"))
    assert frame["nc2"] == pytest.approx(0.0, abs=1e-12)  # centering turns the frame into an ETF
    assert frame["nc2_uncentered"] == pytest.approx(math.sqrt(2 - 2 * math.sqrt(3 / 4)), rel=1e-12)
    p, W, H, b, labels = _etf_arrays(lw=5e-3, lh=5e-3)
    pb = Problem(K=4, d=6, n=5, lambda_w=5e-3, lambda_h=5e-3, bias=False, dtype="float64")
    Wb, Hb, _ = (np.asarray(a) for a in theory.global_minimizer(pb))
    mb = features_metrics(Hb, labels, Wb)
    for k in ("nc2", "nc3", "nc4", "nc2_uncentered"):
        assert mb[k] == pytest.approx(frame[k], abs=1e-12), k
    zero = predicted_metrics(Problem(K=4, d=6, n=5, lambda_w=0.5, lambda_h=0.5, dtype="float64"))
    assert zero["nc2"] == 1.0 and zero["nc1"] == 0.0 and zero["nc4"] == pytest.approx(0.5)
    assert predicted_metrics(Problem(K=5, d=2, n=3, dtype="float64"))["nc2"] is None  # rank-limited: no unique Gram


def test_noisy_balanced_nc1_matches_numpy_and_ncflow_metrics():
    p, W, H, b, labels = _etf_arrays()
    rng = np.random.default_rng(0)
    Hn = H + 0.05 * rng.standard_normal(H.shape)
    m = features_metrics(Hn, labels, W, b)
    assert m["nc1"] == pytest.approx(_reference_nc1(Hn, labels, p.K), rel=1e-10)
    assert m["nc1"] > 1e-4
    # balanced classes: the same numbers as the engine's metrics (class statistics in JAX)
    st = metrics.class_stats(p, type(theory.global_minimizer(p))(W, Hn, b))
    ref = metrics.nc_metrics(st, p.N)
    for k in ("nc1", "nc2", "nc3", "nc4", "nc2_uncentered", "within_between"):
        assert m[k] == pytest.approx(float(getattr(ref, k)), rel=1e-9, abs=1e-14), k


def test_unbalanced_classes_and_features_layout(tmp_path):
    rng = np.random.default_rng(1)
    K, d = 3, 5
    sizes = [2, 7, 13]
    labels = np.concatenate([np.full(s, k) for k, s in enumerate(sizes)])
    perm = rng.permutation(labels.size)
    labels = labels[perm]
    centers = 3 * rng.standard_normal((d, K))
    H = centers[:, labels] + 0.3 * rng.standard_normal((d, labels.size))
    path = tmp_path / "f.npz"
    np.savez(path, features=H.T.astype(np.float32), labels=labels.astype(np.int32))
    feats = load_features(path)
    assert feats.K == 3 and feats.d == d and feats.N == 22
    assert feats.class_sizes().tolist() == sizes
    m = features_metrics(feats.H, feats.labels, K=feats.K)
    assert m["nc1"] == pytest.approx(_reference_nc1(feats.H, feats.labels, K), rel=1e-10)
    assert m["nc2"] is None and m["nc3"] is None and m["nc4"] is None
    rep = compare(feats)
    assert rep["ufm"]["problem"]["class_sizes"] == sizes  # THEORY §7: the imbalanced optimum, not n = N/K
    assert rep["class_sizes"] == sizes


def test_cli_metrics_table_and_json(tmp_path, capsys):
    p, W, H, b, labels = _etf_arrays()
    path = tmp_path / "etf.npz"
    np.savez(path, H=H, labels=labels, W=W, b=b)
    assert main(["metrics", str(path), "--lambda-w", "5e-3", "--lambda-h", "5e-3"]) == 0
    out = capsys.readouterr().out
    assert "NC1" in out and "UFM optimum" in out and "simplex_etf" in out
    assert main(["metrics", str(path), "--json", "--lambda-w", "5e-3", "--lambda-h", "5e-3"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["K"] == 4 and rep["d"] == 6 and rep["N"] == 20
    assert rep["features"]["nc1"] < 1e-20 and rep["features"]["nc2"] < 1e-12
    assert rep["ufm"]["metrics"]["nc2"] == pytest.approx(0.0, abs=1e-12)
    assert rep["ufm"]["theory"]["objective"] == pytest.approx(theory.predict(p).objective)
    np.savez(tmp_path / "now.npz", H=H, labels=labels)
    assert main(["metrics", str(tmp_path / "now.npz"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["features"]["nc2"] is None and rep["has_W"] is False


def _bad_cases(tmp_path):
    d, N, K = 3, 8, 2
    rng = np.random.default_rng(2)
    H = rng.standard_normal((d, N))
    y = np.arange(N) % K
    W = rng.standard_normal((K, d))
    nan_H = H.copy()
    nan_H[0, 0] = np.nan
    inf_W = W.copy()
    inf_W[1, 2] = np.inf
    cases = {
        "missing_H": (dict(labels=y), "H"),
        "missing_labels": (dict(H=H), "labels"),
        "both_layouts": (dict(H=H, features=H.T, labels=y), "features"),
        "H_1d": (dict(H=H[0], labels=y), "H"),
        "labels_length": (dict(H=H, labels=y[:-1]), "labels"),
        "labels_float": (dict(H=H, labels=y.astype(float)), "labels"),
        "labels_negative": (dict(H=H, labels=y - 1), "labels"),
        "labels_beyond_W": (dict(H=H, labels=np.arange(N) % 3, W=W), "labels"),
        "one_class": (dict(H=H, labels=np.zeros(N, int)), "labels"),
        "empty_class": (dict(H=H, labels=(np.arange(N) % 2) * 2), "labels"),
        "nan_H": (dict(H=nan_H, labels=y), "H"),
        "inf_W": (dict(H=H, labels=y, W=inf_W), "W"),
        "W_shape": (dict(H=H, labels=y, W=W[:, :2]), "W"),
        "b_shape": (dict(H=H, labels=y, W=W, b=np.zeros(3)), "b"),
        "b_without_W": (dict(H=H, labels=y, b=np.zeros(2)), "b"),
        "H_object": (dict(H=np.array([[1, "a"]], dtype=object), labels=y), "H"),
    }
    files = {}
    for name, (arrays, needle) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        files[name] = (path, needle)
    text = tmp_path / "text.npz"
    text.write_text("not an archive\n")
    files["not_npz"] = (text, "not an .npz")
    npy = tmp_path / "plain.npy"
    np.save(npy, H)
    files["npy_file"] = (npy, "not an .npz")
    files["not_found"] = (tmp_path / "missing.npz", "no such file")
    return files


def test_bad_files_exit_2_with_the_array_named(tmp_path, capsys):
    for name, (path, needle) in _bad_cases(tmp_path).items():
        assert main(["metrics", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ncflow metrics: error:"), (name, err)
        assert needle in err, (name, err)
        with pytest.raises(FeaturesError):
            load_features(path)


def test_make_features_checks_in_memory_arrays():
    with pytest.raises(FeaturesError, match="labels"):
        make_features(np.zeros((2, 3)), np.array([0, 1]))
    f = make_features(np.eye(2), np.array([0, 1]))
    assert f.K == 2 and f.W is None
