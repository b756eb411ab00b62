"""Regression tests of the crashes after the computation (issue 21, part 2), each named by its report:

* ``ncflow run --class-sizes ... --optimizer momentum`` (nesterov, adam, flow; ``--targets``):
  ``AttributeError: 'OptaxState' object has no attribute 'W'`` — the §7 per-run columns read the
  optimizer's state instead of its point;
* ``Result.final_params(i)`` of a ``targets`` problem on the collapsed engine: ``TypeError`` — the
  state is in row-space coordinates, which the expansion needs;
* ``Result.final_params(i, exact=True)`` on every collapsed result: ``AttributeError: 'FullSpace'
  object has no attribute 'step'`` (and, for a saddle start, the engine name "collapsed+escape"
  refused as a Config field);
* ``ncflow run -K 10 -n 4635`` (N > 46,340, float32): N² reached a jitted function as a 32-bit int;
* found on the way: the Hessian probe of a saddle candidate of a collapsed ``targets`` run could not
  trace the expansion of its state (``TracerArrayConversionError``).

The matrix of tests/test_matrix.py runs every optimizer on every problem kind; these tests pin the
reported commands and check the repaired values against an independent computation.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ncflow
import ncflow.batch.loop
from ncflow import Problem, simulate
from ncflow.maths.objective import objective
from ncflow.outcomes import class_fates

from helpers import ncflow_command, one_json_object, run_cli, subprocess_env


# ------------------------------------------------------------------ optimizers on §7 problems
@pytest.fixture
def results(monkeypatch):
    """The Results the engine returns to the CLI, in order."""
    got = []
    simulate_ = ncflow.batch.loop.simulate

    def spy(*a, **k):
        got.append(simulate_(*a, **k))
        return got[-1]

    monkeypatch.setattr(ncflow.batch.loop, "simulate", spy)
    return got


@pytest.mark.parametrize("data", ["class-sizes", "targets"])
def test_momentum_on_class_sizes_and_targets_finishes_and_saves(data, tmp_path, capsys, results):
    """The reported command (and its ``--targets`` twin) exits 0 and saves the §7 per-run columns;
    with classes, the merged/vanished columns are the classes' fates at each run's final point
    (``final_params``: W and the class means of H), not at anything else in momentum's state."""
    extra = ["--class-sizes", "4,2,1,1"]
    if data == "targets":
        np.save(tmp_path / "T.npy", np.random.default_rng(0).standard_normal((4, 8)))
        extra = ["--targets", str(tmp_path / "T.npy")]
    out = tmp_path / "out"
    code, stdout, err = run_cli(["run", "--dim", "8", *extra, "--runs", "2", "--max-steps", "300", "--optimizer",
                                 "momentum", "--json", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    s = one_json_object(stdout)
    assert s["runs"] == 2 and s["engine"] == "full+momentum"
    table = ncflow.load_table(out)
    assert {"nc1_weighted", "gram_h_error", "cross_error"} <= set(table)
    if data == "targets":  # no labels: no classes
        return
    assert {"merged", "vanished", "classes_as_predicted"} <= set(table)
    r = results[0]
    p, pr = r.problem, r.prediction
    tol = max(r.tolerances.geom_tol, 1e-6)
    scale = (float(np.max(pr.w_norms)) ** 2, float(np.max(pr.h_norms)) ** 2)
    Y = np.eye(p.K)[:, p.label_vector()]
    for i in range(r.runs):
        x = r.final_params(i)
        merged, vanished = class_fates(np.asarray(x.W), np.asarray(x.H) @ Y.T / Y.sum(axis=1), tol, scale)
        assert (r.per_run["merged"][i], r.per_run["vanished"][i]) == (merged, vanished)


# ------------------------------------------------------------------ final_params of collapsed results
@pytest.fixture(scope="module")
def targets_pair():
    """The same 2 runs of a target-matrix problem (float64, 60 steps, no early stop) on both engines."""
    T = np.random.default_rng(3).standard_normal((3, 7))
    p = Problem(K=3, d=4, targets=T, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    kw = dict(runs=2, max_steps=60, early_stop=False, seed=5, progress=False)
    return simulate(p, engine="full", **kw), simulate(p, engine="collapsed", **kw)


def test_final_params_of_a_collapsed_targets_run(targets_pair):
    full, col = targets_pair
    assert col.representation == "collapsed" and full.representation == "full"
    p = col.problem
    for i in range(col.runs):
        x, ref = col.final_params(i), full.final_params(i)
        assert [np.shape(a) for a in x] == [(3, 4), (4, 7), (3,)]
        assert float(objective(p, x)) == pytest.approx(float(col.per_run["objective"][i]), rel=1e-12)
        # W and b are carried exactly; H up to a mixing inside the complement of the targets' row space
        np.testing.assert_allclose(np.asarray(x.W), np.asarray(ref.W), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(x.b), np.asarray(ref.b), rtol=1e-9, atol=1e-12)
        Hx, Hr = np.asarray(x.H), np.asarray(ref.H)
        np.testing.assert_allclose(Hx @ Hx.T, Hr @ Hr.T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Hx @ p.targets.T, Hr @ p.targets.T, rtol=1e-9, atol=1e-12)


def test_final_params_exact_replays_a_collapsed_targets_run(targets_pair):
    full, col = targets_pair
    for i in range(col.runs):
        xe, ref = col.final_params(i, exact=True), full.final_params(i)
        for a, b in zip(xe, ref):  # the exact H: the full engine's own trajectory, to rounding
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_final_params_of_a_collapsed_targets_run_with_labels():
    T = np.random.default_rng(4).standard_normal((3, 6))
    p = Problem(K=3, d=4, targets=T, labels=np.array([0, 1, 2, 2, 1, 0]), dtype="float64")
    r = simulate(p, runs=2, max_steps=40, engine="collapsed", progress=False)
    for i in range(r.runs):
        f = float(r.per_run["objective"][i])
        assert float(objective(p, r.final_params(i))) == pytest.approx(f, rel=1e-12)
        assert float(objective(p, r.final_params(i, exact=True))) == pytest.approx(f, rel=1e-9)


def test_hessian_probe_of_a_collapsed_targets_run():
    """A stationary, non-global collapsed targets run (no bias, started at the origin: a saddle) is
    probed by Lanczos on its expanded point inside the engine: the expansion must trace (it called
    numpy on the per-lane row basis). Same outcome and λ_min as the full engine."""
    T = np.random.default_rng(6).standard_normal((3, 6))
    p = Problem(K=3, d=4, targets=T, bias=False, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    kw = dict(runs=2, max_steps=20, init_scale=0.0, progress=False)
    col, full = simulate(p, engine="collapsed", **kw), simulate(p, engine="full", **kw)
    assert list(col.outcome) == list(full.outcome) == ["saddle", "saddle"]
    np.testing.assert_allclose(col.per_run["min_hessian_eig"], full.per_run["min_hessian_eig"], rtol=1e-8)


def test_final_params_exact_on_a_collapsed_result_is_the_full_engine_run():
    """``exact=True`` replays the run on the full representation: the full engine's own final state."""
    p = Problem(K=3, d=4, n=3, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    kw = dict(runs=2, max_steps=50, early_stop=False, seed=7, progress=False)
    col, full = simulate(p, engine="collapsed", **kw), simulate(p, engine="full", **kw)
    for i in range(col.runs):
        xe, ref = col.final_params(i, exact=True), full.final_params(i)
        for a, b in zip(xe, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    with pytest.raises(IndexError, match="run index"):
        col.final_params(col.runs)


def test_final_params_exact_on_a_collapsed_saddle_start():
    """A saddle start runs as "collapsed+escape"; its replay starts at the same perturbed saddle."""
    p = Problem(K=3, d=4, n=3, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    r = simulate(p, engine="collapsed", init="saddle", active=1, runs=2, max_steps=50, early_stop=False,
                 progress=False)
    assert r.representation == "collapsed+escape"
    for i in range(r.runs):
        x, xe = r.final_params(i), r.final_params(i, exact=True)
        assert float(objective(p, xe)) == pytest.approx(float(r.per_run["objective"][i]), rel=1e-9)
        np.testing.assert_allclose(np.asarray(xe.W), np.asarray(x.W), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(xe.b), np.asarray(x.b), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ N > 46,340 in float32
def test_float32_run_with_more_than_46340_samples_finishes():
    """N = 60,000 samples, float32, in a fresh interpreter (jax_enable_x64 off, as for every float32
    run of the command line): N² and 2N must not reach a jitted function as 32-bit integers."""
    argv = ["run", "-K", "3", "-d", "2", "-n", "20000", "--runs", "2", "--max-steps", "20", "--json",
            "--plan", "cpu"]
    done = subprocess.run(ncflow_command(*argv), capture_output=True, text=True, timeout=180, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-2000:]
    s = one_json_object(done.stdout)
    assert s["problem"]["n"] == 20000 and s["problem"]["dtype"] == "float32"
    assert s["final_objective"]["max"] is not None and np.isfinite(s["final_objective"]["max"])


_LARGE_N = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
assert not jax.config.read("jax_enable_x64")
from ncflow import Problem
from ncflow.maths import certificate, collapsed
out = []
for K, d, n in json.loads(sys.argv[1]):
    p = Problem(K=K, d=d, n=n, lambda_w=1e-2, lambda_h=1e-2)
    rng = np.random.default_rng(0)
    W, M = rng.standard_normal((K, d)).astype(np.float32), rng.standard_normal((d, K)).astype(np.float32)
    A = rng.standard_normal((d, d)).astype(np.float32)
    x = collapsed.Collapsed(W, M, A @ A.T, np.zeros(K, np.float32))
    f, g = jax.jit(lambda x: collapsed.value_and_grad_norm(p, x))(x)
    bound = jax.jit(lambda f: certificate.rounding_bound(p, f, space="collapsed", xp=jnp))(f)
    out.append({"f": float(f), "g": float(g), "bound": float(bound)})
print(json.dumps(out))
"""


def _collapsed_value_and_grad_norm_float64(K, d, n, W, M, G, lw, lh):
    """The collapsed f and ||∇f|| (THEORY §4) in float64 numpy, with a zero unregularized bias."""
    N = K * n
    R = W @ M - np.eye(K)  # b = 0
    f = (n * np.sum(R * R) + np.sum((W @ G) * W)) / (2 * N) + lw / 2 * np.sum(W * W) + lh / 2 * (
        n * np.sum(M * M) + np.trace(G))
    gW = (n * R @ M.T + W @ G) / N + lw * W
    gM = W.T @ R / N + lh * M
    gb = n * R.sum(axis=1) / N
    S = W @ G @ W.T
    dev = lh * lh * np.trace(G) + 2 * lh * np.trace(S) / N + np.sum(S * (W @ W.T)) / N**2
    return f, np.sqrt(np.sum(gW * gW) + n * np.sum(gM * gM) + dev + np.sum(gb * gb))


def test_collapsed_maths_and_certificate_jit_past_32_bit_sample_counts():
    """In float32 without x64: the collapsed objective and gradient norm at N = 60,000 (N² > 2^31) and
    the certificate's rounding bound at N = 100·2^24 (2N > 2^31) compile and agree with float64 numpy."""
    cases = [(3, 2, 20000), (100, 2, 2**24)]
    done = subprocess.run([sys.executable, "-c", _LARGE_N, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-2000:]
    for (K, d, n), got in zip(cases, json.loads(done.stdout)):
        rng = np.random.default_rng(0)
        W, M = rng.standard_normal((K, d)).astype(np.float32), rng.standard_normal((d, K)).astype(np.float32)
        A = rng.standard_normal((d, d)).astype(np.float32)
        args = [a.astype(np.float64) for a in (W, M, A @ A.T)]
        f, g = _collapsed_value_and_grad_norm_float64(K, d, n, *args, 1e-2, 1e-2)
        assert got["f"] == pytest.approx(f, rel=1e-4)
        assert got["g"] == pytest.approx(g, rel=1e-4)
        assert np.isfinite(got["bound"]) and got["bound"] > 0
