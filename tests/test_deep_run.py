"""The deep linear UFM end to end (THEORY §9, issue 22.3–22.4): ``simulate`` and ``ncflow run --depth``
reach f* (THEORY §9.7's A1) and the rank-r local minima of §9.2 with a per-run ``rank`` column, the
full and collapsed deep engines give the same runs, the wide plan equals the cpu plan, the report and
the JSON count runs by rank, and what the deep engine does not run is refused in one line.

Expected values come from the theory (§9.7's printed f*, ``theory.predict``'s f_r), never from the
engine's own output. Problems are tiny; float64 via conftest.
"""

from __future__ import annotations

import numpy as np
import pytest

import ncflow
from ncflow.maths import theory
from ncflow.problem import Problem
from ncflow.result import load_summary, load_table

from helpers import one_json_object, run_cli

#: THEORY §9.7, A1: K=4, n=5, d=8, L=2, λ=5e-3 (A), f* printed to 10 decimals
A1 = dict(K=4, n=5, d=8, depth=2, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")
A1_FSTAR = 0.0380307182
#: §9.2 "Measured": L=3, λ=5e-3, η=0.5, small starts end at rank 0/1/2 local minima
L3 = dict(K=4, n=5, d=8, depth=3, lambda_w=5e-3, lambda_h=5e-3, dtype="float64")


def _minima(problem):
    return {m.rank: m for m in theory.predict(problem).local_minima}


def test_a1_reaches_the_global_minimum():
    r = ncflow.simulate(Problem(**A1), runs=2, init_scale=1.0, lr=0.5, max_steps=20000, seed=0, engine="collapsed")
    assert list(r.outcome) == ["global", "global"]
    np.testing.assert_allclose(r.per_run["objective"], A1_FSTAR, atol=1e-9)
    assert np.all(r.per_run["rank"] == 3)  # K − 1 alive directions: the simplex ETF
    assert r.rank_counts() == {"global": {"3": 2}}
    assert np.all(r.per_run["gram_error"] < 1e-4)


@pytest.mark.slow
def test_small_starts_end_at_local_minima_of_every_rank():
    p = Problem(**L3)
    r = ncflow.simulate(p, runs=8, init_scale=0.25, lr=0.5, max_steps=40000, seed=1, engine="collapsed")
    mins = _minima(p)
    ranks = r.per_run["rank"].astype(int)
    for out, rank, f in zip(r.outcome, ranks, r.per_run["objective"]):
        assert out == ("global" if mins[rank].is_global else "local_min"), (out, rank)
        assert abs(f - mins[rank].value) <= 1e-8, (rank, f, mins[rank].value)
    assert len(set(ranks)) >= 2, ranks  # several ranks from these starts (§9.2: s = 0.25 gives r = 0..3)
    lm = r.outcome == "local_min"
    assert np.all(r.per_run["min_hessian_eig"][lm] > -1e-8)  # no negative curvature at a local minimum
    counts = r.rank_counts()["local_min"]
    assert sum(counts.values()) == int(lm.sum())


@pytest.mark.slow
def test_full_and_collapsed_deep_engines_agree():
    p = Problem(**A1)
    kw = dict(runs=3, init_scale=0.5, lr=0.5, max_steps=20000, seed=3)
    full, col = (ncflow.simulate(p, engine=e, **kw) for e in ("full", "collapsed"))
    assert full.representation == "deep_full" and col.representation == "deep_collapsed"
    assert list(full.outcome) == list(col.outcome)
    np.testing.assert_array_equal(full.per_run["steps"], col.per_run["steps"])
    np.testing.assert_array_equal(full.per_run["rank"], col.per_run["rank"])
    np.testing.assert_allclose(full.per_run["objective"], col.per_run["objective"], rtol=1e-10)


def test_wide_plan_equals_cpu_plan():
    p = Problem(**A1)
    kw = dict(runs=3, init_scale=0.5, lr=0.5, max_steps=20000, seed=4, engine="collapsed")
    cpu, wide = (ncflow.simulate(p, plan=plan, **kw) for plan in ("cpu", "wide"))
    assert list(cpu.outcome) == list(wide.outcome)
    np.testing.assert_array_equal(cpu.per_run["steps"], wide.per_run["steps"])
    np.testing.assert_allclose(cpu.per_run["objective"], wide.per_run["objective"], rtol=1e-12)


@pytest.mark.slow  # ~12 s: a converged run at the default step (the other tests set lr)
def test_default_step_size_runs():
    """No lr given: the deep default step (a Gauss–Newton bound) is stable and reaches f*."""
    r = ncflow.simulate(Problem(**A1), runs=1, init_scale=1.0, max_steps=60000, seed=0, engine="collapsed")
    assert 0 < r.config["lr"] < 1
    assert r.outcome[0] == "global"
    assert abs(r.per_run["objective"][0] - A1_FSTAR) < 1e-9


CLI = ["-K", "4", "-n", "5", "-d", "8", "--lambda-w", "5e-3", "--lambda-h", "5e-3", "--dtype", "float64",
       "--no-progress"]


def test_cli_run_depth_reports_ranks_and_writes_files(capsys, tmp_path):
    out_dir = tmp_path / "o"
    code, out, err = run_cli(["run", "--depth", "3", "--init-scale", "0.25", "--lr", "0.5", "--runs", "4",
                              "--seed", "1", "--engine", "collapsed", "--json", "--out", str(out_dir), *CLI], capsys)
    assert code == 0, err
    s = one_json_object(out)
    counts = s["rank_counts"]
    assert sum(sum(v.values()) for v in counts.values()) == 4
    assert sum(counts.get("local_min", {}).values()) == s["outcomes"]["local_min"]["count"]
    assert load_summary(str(out_dir))["rank_counts"] == counts
    table = load_table(str(out_dir))
    assert len(table["rank"]) == 4 and set(np.asarray(table["rank"]).astype(int)) <= {0, 1, 2, 3}
    code, out, err = run_cli(["run", "--depth", "3", "--init-scale", "0.25", "--lr", "0.5", "--runs", "4",
                              "--seed", "1", "--engine", "collapsed", *CLI], capsys)
    assert code == 0, err
    assert "local_min" in out and "(rank " in out and "stop rule certified" in out
    assert "The certificate of THEORY §9.3 needs η < " in out  # lr 0.5: the deep certificate cannot fire


@pytest.mark.parametrize("argv, flag", [
    (["--optimizer", "adam"], "optimizer"),
    (["--optimizer", "momentum"], "optimizer"),
    (["--init", "orthogonal"], "init"),
    (["--activation", "relu"], "activation"),  # the deep ReLU UFM has no bias (THEORY §9.6)
    (["--activation", "relu", "--no-bias", "--engine", "collapsed"], "engine"),  # ReLU masks act per sample
])
def test_cli_refuses_what_the_deep_engine_does_not_run(argv, flag, capsys, tmp_path):
    out_dir = tmp_path / "o"
    code, out, err = run_cli(["run", "--depth", "2", "--runs", "2", "--out", str(out_dir), *CLI, *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0]
    assert not out_dir.exists()


@pytest.mark.slow
def test_cli_run_of_the_brief(capsys):
    """The brief's command (50 runs, default step): every run is global or a local minimum of its rank."""
    code, out, err = run_cli(["run", "--depth", "3", "--init-scale", "0.2", "--runs", "50", "--json", *CLI], capsys)
    assert code == 0, err
    s = one_json_object(out)
    assert s["outcomes"]["not_converged"]["count"] == 0 and s["outcomes"]["diverged"]["count"] == 0
    assert sum(sum(v.values()) for v in s["rank_counts"].values()) == 50
