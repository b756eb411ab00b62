"""The deep ReLU UFM end to end (THEORY §9.6, issue 22.3–22.4): its DNC point is a critical point at
L_DNC, where the model's per-run columns read every class-mean rank K and NC2 0; §9.6's labels
(dnc / low_rank / other / not_converged / diverged) follow its rules (an f-plateau, f against L_DNC, the
ranks — never ||∇f||); ``simulate`` and ``ncflow run`` run it on both plans with the same labels, write
files that read back, and refuse what it does not take in one line.

Expected values come from the closed forms (``maths.deep.predict_relu``) and from points built by hand,
never from the engine's own output. Problems are tiny; float64 via conftest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.batch import stop
from ncflow.dynamics.spaces import DeepReluSpace, deep_spaces
from ncflow.maths import deep, theory
from ncflow.maths import deep_objective as do
from ncflow.maths.metrics import OptimumDistance
from ncflow.outcomes import RELU_MARGIN, classify, default_tolerances
from ncflow.problem import Problem
from ncflow.result import load_summary, load_table

from helpers import one_json_object, run_cli

#: K = 3 classes of n = 2, L = 3 weight matrices, widths 4: DNC exists (widths >= K, c < c_exist)
SMALL = dict(K=3, n=2, d=4, depth=3, widths=(4, 4), activation="relu", bias=False, lambda_w=4e-3, lambda_h=4e-3,
             dtype="float64")


def _dnc_point(problem: Problem) -> do.DeepParams:
    """THEORY §9.6's DNC point built by hand: every layer's class means ‖μ‖·e_k on the first K axes
    (features >= 0, so ReLU is the identity there), W_l = (‖μ_{l+1}‖/‖μ_l‖)·[I_K 0; 0 0] for l < L and
    W_L = ‖w‖·[I_K 0]; H has no within-class spread."""
    pred = theory.predict(problem)
    K, n, L = problem.K, problem.n, problem.depth
    dims = (*problem.layer_widths, K)
    feats = pred.feature_norms  # ‖μ_k‖ of H_1..H_L
    H = np.zeros((dims[0], K * n))
    for k in range(K):
        H[k, k * n:(k + 1) * n] = feats[0]
    Ws = []
    for i in range(1, L + 1):
        W = np.zeros((dims[i], dims[i - 1]))
        W[:K, :K] = np.eye(K) * (feats[i] / feats[i - 1] if i < L else pred.dnc.w_norm)
        Ws.append(jnp.asarray(W))
    return do.DeepParams(tuple(Ws), jnp.asarray(H), jnp.zeros(K))


def test_dnc_point_is_critical_at_l_dnc_with_full_ranks():
    problem = Problem(**SMALL)
    pred = theory.predict(problem)
    assert pred.dnc.exists
    space = deep_spaces(problem)[0]
    assert isinstance(space, DeepReluSpace)
    x = _dnc_point(problem)
    f, g = space.value_and_grad_norm(problem, x)
    np.testing.assert_allclose(float(f), pred.reference, rtol=1e-12)
    assert float(g) < 1e-10  # a critical point (THEORY §9.6)
    cols = space.columns(problem, pred.arrays(problem.K, "float64"), x)
    L = problem.depth
    assert float(cols["rank"]) == problem.K and float(cols["rank_out"]) == problem.K
    assert all(float(cols[f"rank_l{i}"]) == problem.K for i in range(L))
    assert all(float(cols[f"rank_pre_l{i}"]) == problem.K for i in range(1, L))
    assert float(cols["dnc_nc2"]) < 1e-12 and float(cols[f"nc1_l{L - 1}"]) < 1e-12
    dist = space.distance(problem, pred.arrays(problem.K, "float64"), x, f)
    assert abs(float(dist.gap)) < 1e-12 and float(dist.gram_error) < 1e-10


def test_relu_ranks_use_the_relative_cut_of_theory():
    """A class-mean matrix with singular values (1, 2e-3, 5e-4): rank 2 at §9.6's cut 1e-3."""
    U, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 3)))
    M = jnp.asarray(U * np.array([1.0, 2e-3, 5e-4]))
    assert float(do._relative_rank(M)) == 2
    assert float(do._relative_rank(jnp.zeros((5, 3)))) == 0


def _tols(problem):
    return default_tolerances(problem, theory.predict(problem))


def test_relu_tolerances_never_stop_by_gradient():
    problem = Problem(**SMALL)
    t = _tols(problem)
    L_dnc = theory.predict(problem).reference
    assert t.rule == "relu" and t.gtol == 0.0 and t.strict_gtol == 0.0
    assert t.plateau == pytest.approx(RELU_MARGIN * max(L_dnc, 1e-2)) and t.dnc_rank == problem.K


def test_classify_relu_follows_the_rules_of_theory():
    problem = Problem(**SMALL)
    t = _tols(problem)
    m, K = t.plateau, problem.K
    # gap = f − L_DNC, f's change over the last 1,000 steps, smallest rank, last NC2, engine status
    rows = [
        (0.5 * m, 0.1 * m, K, 0.05, 3, "dnc"),
        (5.0 * m, 0.1 * m, K, 0.05, 3, "dnc"),           # DNC approached from above (sublinearly)
        (20.0 * m, 0.1 * m, K, 0.05, 3, "other"),        # too far above L_DNC
        (0.5 * m, 0.1 * m, K - 1, 0.05, 3, "other"),     # a rank below K at L_DNC's value: not DNC
        (0.5 * m, 0.1 * m, K, 0.5, 3, "other"),          # not an orthogonal frame
        (-2.0 * m, 0.5 * m, K - 1, 0.5, 3, "low_rank"),
        (-2.0 * m, 0.5 * m, K, 0.05, 3, "low_rank"),     # any loss below DNC's, whatever its ranks
        (-2.0 * m, 3.0 * m, K - 1, 0.5, 3, "not_converged"),  # still moving: no plateau
        (0.5 * m, np.nan, K, 0.05, 3, "not_converged"),  # shorter than one window
        (np.nan, np.nan, K, 0.05, 2, "diverged"),
    ]
    gap, change, rank, nc2, status, want = map(np.asarray, zip(*rows))
    f = theory.predict(problem).reference + gap
    z = np.zeros(len(rows))
    dist = OptimumDistance(gap=gap, gram_error=z, self_duality=z, w_norm=z, h_norm=z, bias_error=z, gram_h_error=z,
                           cross_error=z)
    called = []
    labels, lo, hi = classify(f, np.full(len(rows), 1e-2), dist, [t], status, lambda idx: called.append(idx),
                              point_of=np.zeros(len(rows), int), f_change=change,
                              columns={"rank": rank.astype(float), "dnc_nc2": nc2.astype(float)})
    assert list(labels) == list(want)
    assert not called and np.all(np.isnan(lo)) and np.all(np.isnan(hi))  # no Hessian: never by ||∇f||


def test_no_dnc_label_where_dnc_does_not_exist():
    """Widths below K: DNC is no critical point (THEORY §9.6), so no run is called dnc."""
    problem = Problem(**{**SMALL, "widths": (2, 2)})
    t = _tols(problem)
    assert t.dnc_rank == 0
    assert np.isnan(theory.predict(problem).reference)


def test_plateau_columns_mark_every_thousand_steps():
    class Lanes:
        steps = np.array([1000, 1100, 2000])
        f_mark = np.array([5.0, 5.0, 4.0])
        f_change = np.array([np.nan, -1.0, -1.0])
    out = stop.plateau_columns(Lanes, np.array([3.0, 2.0, 3.5]), np.array([100, 100, 100]))
    np.testing.assert_array_equal(out["f_mark"], [3.0, 5.0, 3.5])  # lanes 0 and 2 crossed a multiple of 1,000
    np.testing.assert_array_equal(out["f_change"], [-2.0, -1.0, -0.5])


def test_default_step_is_the_deep_bound_at_dnc():
    problem = Problem(**SMALL)
    pred = theory.predict(problem)
    linear = deep.predict_deep(3, 2, 3, (4, 4, 4), 4e-3, 4e-3, bias="none")
    assert theory.default_step_size(problem) == pytest.approx(deep.default_step_size(linear, 0.0))
    assert 0 < theory.default_step_size(problem) < 1 and pred.objective is None


def test_simulate_relu_on_both_plans_with_the_same_labels():
    problem = Problem(**SMALL)
    kw = dict(runs=6, lr=0.5, max_steps=3000, seed=3, progress=False)
    cpu = ncflow.simulate(problem, plan="cpu", **kw)
    wide = ncflow.simulate(problem, plan="wide", **kw)
    assert set(cpu.outcome) <= set(ncflow.RELU_LABELS) and cpu.representation == "deep_relu"
    assert list(cpu.outcome) == list(wide.outcome)
    np.testing.assert_allclose(cpu.per_run["objective"], wide.per_run["objective"], rtol=1e-10)
    assert np.all(cpu.per_run["steps"] == 3000)  # no gradient test: every run takes its budget
    assert set(cpu.outcomes()) == set(ncflow.RELU_LABELS)
    assert cpu.summary()["limit"]["objective"] is None  # the global minimum is not known
    gap = cpu.per_run["objective"] - theory.predict(problem).reference
    np.testing.assert_allclose(cpu.per_run["gap"], gap, atol=1e-12)
    low = cpu.outcome == "low_rank"
    assert np.all(gap[low] < 0) and np.all(cpu.outcome[gap < -2 * _tols(problem).plateau] != "dnc")


def test_cli_run_relu_reports_labels_and_writes_files(capsys, tmp_path):
    out_dir = tmp_path / "relu"
    argv = ["run", "-K", "3", "-n", "2", "-d", "4", "--depth", "3", "--width", "4", "--activation", "relu",
            "--no-bias", "--lambda-w", "4e-3", "--lambda-h", "4e-3", "--dtype", "float64", "--runs", "4",
            "--lr", "0.5", "--max-steps", "2000", "--seed", "1"]
    code, out, err = run_cli([*argv, "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "dnc" in out and "low_rank" in out and "L_DNC" in out and "pre-activation rank" in out
    assert "global" not in out.split("Outcomes of")[1].split("Labels")[0]  # never a claim of global
    s = load_summary(str(out_dir))
    assert set(s["outcomes"]) == set(ncflow.RELU_LABELS)
    table = load_table(str(out_dir))
    assert set(np.asarray(table["outcome"]).astype(str)) <= set(ncflow.RELU_LABELS)
    assert {"rank", "rank_out", "rank_pre_l1", "rank_pre_l2", "dnc_nc2"} <= set(table)
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    assert one_json_object(out)["theory"]["dnc_objective"] == pytest.approx(theory.predict(
        Problem(**SMALL)).reference)


@pytest.mark.parametrize("argv, flag", [
    (["--activation", "relu"], "activation"),  # a bias: the deep ReLU UFM has none
    (["--activation", "relu", "--no-bias", "--engine", "collapsed"], "engine"),
    (["--activation", "relu", "--no-bias", "--optimizer", "adam"], "optimizer"),
    (["--activation", "relu", "--no-bias", "--class-sizes", "2,3,4"], "--class-sizes"),
])
def test_cli_refuses_what_relu_does_not_take(argv, flag, capsys, tmp_path):
    out_dir = tmp_path / "o"
    code, out, err = run_cli(["run", "-K", "3", "-d", "4", "--depth", "3", "--runs", "2", "--out",
                              str(out_dir), *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0]
    assert not out_dir.exists()


@pytest.mark.slow  # ~10 s; tests/test_sharding.py covers sharding of the batch engine in the default suite
@pytest.mark.parametrize("kind", ["relu", "linear"])
def test_deep_runs_sharded_over_devices_equal_one_device(kind):
    """Deep runs over 4 (conftest's simulated) devices give one device's per-run results."""
    p = Problem(**SMALL) if kind == "relu" else Problem(K=3, n=2, d=4, depth=2, widths=4, lambda_w=5e-3,
                                                           lambda_h=5e-3, dtype="float64")
    kw = dict(runs=9, lr=0.5, max_steps=2000, seed=2, progress=False, group=2)
    one = ncflow.simulate(p, devices=jax.devices()[:1], **kw)
    four = ncflow.simulate(p, devices=jax.devices(), **kw)
    assert four.timing["devices"] == 4 and one.timing["devices"] == 1
    np.testing.assert_array_equal(four.outcome, one.outcome)
    np.testing.assert_array_equal(four.per_run["steps"], one.per_run["steps"])
    np.testing.assert_allclose(four.per_run["objective"], one.per_run["objective"], rtol=1e-12)
    np.testing.assert_array_equal(four.per_run["rank"], one.per_run["rank"])
