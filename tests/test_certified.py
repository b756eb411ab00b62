"""The "certified" stop rule (THEORY §8) end to end: sound on random problems across the cases, the
same outcome tables as the "converged" rule wherever both give one, and what a certified run reports.

Soundness (float64): 54 random problems — (A) and (C) on both sides of the λ_b threshold with c from
0.05 to past 1 (the zero solution), rank-limited d < K − 1, and bias-free — 4 runs each. Every run
certified under ``stop="certified"`` is ``global`` when the same run (same seed) is continued under
``stop="converged"``, and the per-run outcomes of the two rules agree wherever the converged run
gives one (not ``not_converged``). The test can fail: it also demands that most runs are certified.
"""

from __future__ import annotations

import numpy as np
import pytest

import ncflow
from ncflow.dynamics.build import default_lr
from ncflow.maths import certificate

K, N_PER = 4, 5
RUNS = 4
SHAPES = {"bias": dict(d=8, bias=True), "rank_limited": dict(d=2, bias=True), "bias_free": dict(d=8, bias=False)}


def _problems(kind: str, count: int, rng) -> list:
    out = []
    for i in range(count):
        c = [0.05, 0.5, 0.9, 0.97, 1.2][i % 5] * rng.uniform(0.9, 1.05)
        ratio = np.exp(rng.uniform(np.log(0.25), np.log(4.0)))
        lam = c / (K * np.sqrt(N_PER))  # sqrt(λ_W λ_H)
        lw, lh = lam * np.sqrt(ratio), lam / np.sqrt(ratio)
        lb = 0.0
        if SHAPES[kind]["bias"] and i % 3 and c < 1:
            threshold = c / (1 - c)
            lb = threshold * (rng.uniform(0.5, 0.95) if i % 3 == 1 else rng.uniform(1.05, 3.0))
        out.append(ncflow.Problem(K=K, n=N_PER, lambda_w=float(lw), lambda_h=float(lh), lambda_b=float(lb),
                                  dtype="float64", **SHAPES[kind]))
    return out


def _run(problems, stop: str):
    # the converged rule needs up to ~45,000 steps on the slowest of these problems (c near 1)
    config = ncflow.Config(stop=stop, max_steps=20_000 if stop == "certified" else 150_000, progress=False)
    points = [ncflow.Point(problem=p, runs=RUNS, lr=default_lr(p, config), init_scale=1.0, seed=11)
              for p in problems]
    return ncflow.simulate_points(points, config)


@pytest.fixture(scope="module")
def paired():
    rng = np.random.default_rng(2022)
    out = {}
    for kind in SHAPES:
        problems = _problems(kind, 18, rng)
        out[kind] = (problems, _run(problems, "certified"), _run(problems, "converged"))
    return out


def test_the_problems_cover_the_cases(paired):
    modes = {p.bias_mode for probs, _, _ in paired.values() for p in probs}
    assert modes == {"unregularized", "regularized", "none"}
    cs = np.array([p.c for probs, _, _ in paired.values() for p in probs])
    assert (cs >= 1).any() and ((cs > 0.85) & (cs < 1)).any() and (cs < 0.1).any()
    above = [p for p in paired["bias"][0] if p.bias_mode == "regularized" and p.lambda_b > p.c / (1 - p.c)]
    below = [p for p in paired["bias"][0] if p.bias_mode == "regularized" and p.lambda_b <= p.c / (1 - p.c)]
    assert above and below
    assert sum(len(probs) for probs, _, _ in paired.values()) >= 50


def test_every_certified_run_ends_global(paired):
    certified = 0
    for kind, (problems, cert, conv) in paired.items():
        for p, a, b in zip(problems, cert, conv):
            stopped = a.per_run["stop"] == "certified"
            certified += int(stopped.sum())
            assert np.all(b.outcome[stopped] == "global"), (kind, p.describe(), b.outcome, a.per_run["stop"])
            assert np.all(a.outcome[stopped] == "global")
            # certified earlier than (or when) the converged rule stops
            assert np.all(a.per_run["steps"][stopped] <= b.per_run["steps"][stopped])
    assert certified >= 0.8 * RUNS * sum(len(v[0]) for v in paired.values())


def test_outcome_tables_agree_where_both_give_one(paired):
    for kind, (problems, cert, conv) in paired.items():
        for p, a, b in zip(problems, cert, conv):
            both = (b.outcome != "not_converged") & (a.outcome != "not_converged")
            np.testing.assert_array_equal(a.outcome[both], b.outcome[both], err_msg=f"{kind} {p.describe()}")


def test_the_certified_step_is_measured_under_both_rules(paired):
    problems, cert, conv = paired["bias"]
    for a, b in zip(cert, conv):
        np.testing.assert_array_equal(a.per_run["certified_step"], b.per_run["certified_step"])
        stopped = a.per_run["stop"] == "certified"
        np.testing.assert_array_equal(a.per_run["certified_step"][stopped], a.per_run["steps"][stopped])


def test_a_certified_run_reports_its_state_and_its_limit(paired):
    problems, cert, _ = paired["bias"]
    i = next(i for i, r in enumerate(cert) if (r.per_run["stop"] == "certified").all() and r.problem.c < 0.5)
    r = cert[i]
    s = r.summary()
    assert s["stop_rule"] == "certified" and s["certified"]["stopped_there"] == RUNS
    assert s["limit"]["objective"] == pytest.approx(r.prediction.objective)
    assert s["limit"]["nc1"] < 1e-10 and s["limit"]["nc2"] < 1e-10
    # the state at the stop is not the optimum, and nothing presents it as such
    assert np.all(r.per_run["objective"] > r.prediction.objective + 1e-6)
    text = r.report()
    assert "stop rule certified" in text and "state at stop" in text and "their limit (theory)" in text
    assert np.all((r.per_run["certified_margin"] > 0) & (r.per_run["certified_margin"] <= 1))


def test_no_early_call_without_a_proof():
    p = ncflow.Problem(K=3, d=3, n=2, lambda_w=2e-2, lambda_h=2e-2, lambda_b=5.0, dtype="float64")  # (C), d <= K
    assert certificate.saddle_gap(p) is None
    r = ncflow.simulate(p, runs=2, max_steps=3000, progress=False, engine="full")
    assert not np.any(r.per_run["stop"] == "certified") and np.all(np.isnan(r.per_run["certified_step"]))
    q = ncflow.Problem(K=3, d=3, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")
    r = ncflow.simulate(q, runs=2, max_steps=3000, progress=False, optimizer="momentum")
    assert not np.any(r.per_run["stop"] == "certified")


@pytest.mark.parametrize("fields", [dict(d=8), dict(d=8, bias=False), dict(d=8, lambda_b=2.0), dict(d=3)])
def test_the_limit_equals_the_metrics_of_the_theory_minimizer(fields):
    """Result.limit() computes NC2 = NC3 from the predicted Gram in numpy; it equals the JAX
    metrics of the exact global minimizer (float64), and is None where the Gram is not unique."""
    from ncflow.maths import metrics, theory

    p = ncflow.Problem(K=4, n=5, lambda_w=2e-2, lambda_h=1e-2, dtype="float64", **fields)
    r = ncflow.simulate(p, runs=1, max_steps=100, progress=False)
    lim = r.limit()
    nc = metrics.nc_metrics(metrics.class_stats(p, theory.global_minimizer(p)), p.N)
    assert lim["objective"] == r.prediction.objective and lim["nc1"] == 0.0 and float(nc.nc1) < 1e-12
    if r.prediction.gram is None:
        assert lim["nc2"] is None and lim["nc3"] is None
    else:
        assert lim["nc2"] == pytest.approx(float(nc.nc2), abs=1e-9)
        assert lim["nc3"] == pytest.approx(float(nc.nc3), abs=1e-9)
