"""The test matrix of ``ncflow run`` (issue 21, part 3): optimizer × problem kind × bias mode × engine ×
plan × start kind, each cell run in this process as ``ncflow run ... --dtype float64 --json --out DIR``.

Every cell either

* runs to an outcome: exit 0, one JSON summary, ``Result.final_params(i)`` and
  ``final_params(i, exact=True)`` give run i's point (whose objective is the per-run objective; the
  exact replay of a collapsed run ends where the collapsed engine did), and the files written by
  ``Result.save`` read back through ``ncflow.load_table`` / ``ncflow.load_summary``; or
* is refused up front: exit 2, one line on stderr naming the option, nothing compiled, nothing written.

Which cells are refused is stated here by the documented rules (:func:`refusal_flags`), so a cell
that is refused where it should run, or runs where it should be refused, fails.

1200 cells: 690 refused, 510 run. The default suite takes greedy pairwise coverings (every pair of
values of two factors that occurs among the runnable cells, likewise the refused ones, occurs in a
chosen cell): all 175 pairs of the refused cells in 37 cells; for the runnable cells, whose every
program set costs seconds of compilation, at most 16 program sets: 21 cells, every value of every
factor and 148 of the 167 pairs (pairwise coverage of all 167 needs about 30 program sets, twice the
default suite's budget; the pairs left to the slow suite include momentum × class sizes, whose
crashes tests/test_crashes.py pins, and adam × targets). The other 489 run cells
and 653 refused cells are ``slow`` (``python -m pytest tests/test_matrix.py -m slow``);
``test_matrix_counts`` asserts these numbers.
Problems are tiny (K=3, d=4, n=2 or N=6, 2 runs, at most 100 steps): compilation dominates.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ncflow
import ncflow.batch.loop
from ncflow.maths.objective import objective
from ncflow.outcomes import LABELS

from helpers import one_json_object, run_cli

OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "flow")
KINDS = ("balanced", "sizes", "targets", "targets+labels", "rescaled")
BIASES = ("unregularized", "none", "regularized")
ENGINES = ("full", "collapsed")
PLANS = ("cpu", "wide")
INITS = ("gaussian", "orthogonal", "small", "saddle")
FACTORS = (OPTIMIZERS, KINDS, BIASES, ENGINES, PLANS, INITS)
GENERAL = ("sizes", "targets", "targets+labels")  # THEORY §7 problems
RUNS, STEPS = 2, 100


def refusal_flags(cell) -> set:
    """The options a refused cell's one line may name (empty: the cell runs). The documented rules:
    the collapsed engine runs gd, momentum and nesterov only, on the MSE loss only; class sizes and
    targets take the gaussian and small starts only; the saddle start needs the MSE loss; the rescaled
    MSE's closed form (what every run is classified against) covers an unregularized bias only."""
    opt, kind, bias, engine, _plan, init = cell
    flags = set()
    if kind == "rescaled" and bias != "unregularized":
        flags.add({"none": "--no-bias", "regularized": "--lambda-b"}[bias])
    if engine == "collapsed" and (opt in ("adam", "flow") or kind == "rescaled"):
        flags.add("--engine")
    if kind in GENERAL and init in ("orthogonal", "saddle"):
        flags.add("--init")
    if init == "saddle" and kind == "rescaled":
        flags.add("--init")
    return flags


def _pairs(cell) -> set:
    return {(i, cell[i], j, cell[j]) for i, j in itertools.combinations(range(len(cell)), 2)}


def _program_key(cell) -> tuple:
    """Cells that differ only in λ_b > 0 vs λ_b = 0 share their compiled programs (a coefficient)."""
    opt, kind, bias, engine, plan, init = cell
    return (opt, kind, "unregularized" if bias == "regularized" else bias, engine, plan, init)


#: the default suite compiles the programs of at most this many run cells (about 4-5 s of CPU each)
PROGRAM_BUDGET = 16
#: a wide-plan cell compiles about 1.5 times as long as a cpu-plan one
WIDE_COST = 1.5


def pairwise_covering(cells: list, budget: int | None = None) -> list:
    """A greedy pairwise covering of ``cells``: cells are chosen, the one covering the most pairs of
    factor values not yet covered per unit of compilation first, until every pair that occurs in
    ``cells`` occurs in a chosen cell, or ``budget`` distinct program sets are chosen (then only cells
    whose programs are already compiled are added). Deterministic."""
    pairs = {c: _pairs(c) for c in cells}
    need = set().union(*pairs.values())
    chosen, keys = [], set()

    def value(c):
        cost = 0.15 if _program_key(c) in keys else WIDE_COST if c[4] == "wide" else 1.0
        return len(pairs[c] & need) / cost, c

    while need:
        free = [c for c in cells if _program_key(c) in keys and pairs[c] & need]
        pool = free or (cells if budget is None or len(keys) < budget else [])
        if not pool:
            break
        best = max(pool, key=value)
        chosen.append(best)
        keys.add(_program_key(best))
        need -= pairs[best]
    return chosen


CELLS = list(itertools.product(*FACTORS))
REFUSED = [c for c in CELLS if refusal_flags(c)]
RUNNABLE = [c for c in CELLS if not refusal_flags(c)]
DEFAULT_RUN = set(pairwise_covering(RUNNABLE, PROGRAM_BUDGET))
DEFAULT_REFUSED = set(pairwise_covering(REFUSED))


def _params(cells, default):
    return [pytest.param(c, id="-".join(c), marks=() if c in default else pytest.mark.slow) for c in cells]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """A random target matrix T (3, 6) and labels (6,) of every class, as .npy files."""
    d = tmp_path_factory.mktemp("targets")
    np.save(d / "T.npy", np.random.default_rng(21).standard_normal((3, 6)))
    np.save(d / "L.npy", np.array([0, 0, 1, 1, 2, 2]))
    return d


def argv(cell, data, out) -> list:
    """The ``ncflow run`` command line of a cell."""
    opt, kind, bias, engine, plan, init = cell
    a = ["run", "-K", "3", "-d", "4", "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--dtype", "float64",
         "--runs", str(RUNS), "--max-steps", str(STEPS), "--optimizer", opt, "--engine", engine, "--plan", plan,
         "--init", init, "--no-progress", "--json", "--out", str(out)]
    a += {"balanced": ["-n", "2"], "rescaled": ["-n", "2", "--loss", "rescaled-mse", "--alpha", "2"],
          "sizes": ["--class-sizes", "3,2,1"], "targets": ["--targets", str(data / "T.npy")],
          "targets+labels": ["--targets", str(data / "T.npy"), "--labels", str(data / "L.npy")]}[kind]
    a += {"unregularized": [], "none": ["--no-bias"], "regularized": ["--lambda-b", "1e-2"]}[bias]
    if init == "saddle":
        a += ["--active", "1"]
    return a


@pytest.fixture
def results(monkeypatch):
    """The Results the engine returns to the CLI, in order."""
    got = []
    simulate = ncflow.batch.loop.simulate

    def spy(*a, **k):
        got.append(simulate(*a, **k))
        return got[-1]

    monkeypatch.setattr(ncflow.batch.loop, "simulate", spy)
    return got


def test_matrix_counts():
    """The numbers the module docstring (and issue 21's closing note) quote."""
    run_pairs = set().union(*(_pairs(c) for c in RUNNABLE))
    covered = set().union(*(_pairs(c) for c in DEFAULT_RUN))
    counts = dict(cells=len(CELLS), run=len(RUNNABLE), refused=len(REFUSED),
                  default_run=len(DEFAULT_RUN), default_programs=len({_program_key(c) for c in DEFAULT_RUN}),
                  default_refused=len(DEFAULT_REFUSED), pairs=len(run_pairs), pairs_run_by_default=len(covered))
    print(f"ncflow run matrix: {counts}")
    assert counts == dict(cells=1200, run=510, refused=690, default_run=21, default_programs=16,
                          default_refused=37, pairs=167, pairs_run_by_default=148)
    for i, values in enumerate(FACTORS):  # every value of every factor runs in the default suite
        assert {c[i] for c in DEFAULT_RUN} == set(values)
    # every pair of values among the refused cells is refused in the default suite
    assert set().union(*(_pairs(c) for c in DEFAULT_REFUSED)) == set().union(*(_pairs(c) for c in REFUSED))


@pytest.mark.parametrize("cell", _params(RUNNABLE, DEFAULT_RUN))
def test_cell_runs_to_an_outcome(cell, data_files, tmp_path, results, capsys):
    opt, _kind, bias, engine, plan, init = cell
    out = tmp_path / "out"
    code, stdout, err = run_cli(argv(cell, data_files, out), capsys)
    assert code == 0, err
    assert "Traceback" not in err
    summary = one_json_object(stdout)
    assert len(results) == 1
    r = results[0]
    assert r.runs == RUNS and set(r.outcome) <= set(LABELS)
    assert (r.representation.split("+")[0], r.config["optimizer"], r.config["plan"], r.config["init"]) == \
        (engine, opt, plan, init)
    assert r.problem.bias_mode == bias
    p = r.problem
    collapsed = engine == "collapsed"
    for i in range(RUNS):
        x, xe = r.final_params(i), r.final_params(i, exact=True)
        for params in (x, xe):
            assert [np.shape(a) for a in params] == [(3, 4), (4, 6), (3,)]  # every kind has N = 6
        f = float(r.per_run["objective"][i])
        assert np.isfinite(f), r.outcome  # tiny problems, default steps: nothing diverges
        assert float(objective(p, x)) == pytest.approx(f, rel=1e-9, abs=1e-15)
        if collapsed:  # the replay on the full representation ends where the collapsed run did
            assert float(objective(p, xe)) == pytest.approx(f, rel=1e-8, abs=1e-14)
            np.testing.assert_allclose(np.asarray(xe.W), np.asarray(x.W), rtol=1e-7, atol=1e-10)
            np.testing.assert_allclose(np.asarray(xe.b), np.asarray(x.b), rtol=1e-7, atol=1e-10)
        else:  # a full run's state is its exact point
            for a, b in zip(xe, x):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    table, saved = ncflow.load_table(out), ncflow.load_summary(out)
    np.testing.assert_array_equal(table["outcome"].astype(str), r.outcome.astype(str))
    np.testing.assert_array_equal(table["steps"], r.per_run["steps"])
    np.testing.assert_allclose(table["objective"], r.per_run["objective"], rtol=1e-15)
    assert saved["outcomes"] == summary["outcomes"]
    assert sum(v["count"] for v in saved["outcomes"].values()) == RUNS


@pytest.mark.parametrize("cell", _params(REFUSED, DEFAULT_REFUSED))
def test_cell_is_refused_up_front(cell, data_files, tmp_path, results, capsys, compile_counter):
    out = tmp_path / "out"
    with compile_counter:
        code, stdout, err = run_cli(argv(cell, data_files, out), capsys)
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncflow run: error: "), err
    assert any(flag in lines[0] for flag in refusal_flags(cell)), lines[0]
    assert compile_counter.count == 0, compile_counter.names
    assert results == [] and stdout == ""
    assert not (out / "summary.json").exists()
