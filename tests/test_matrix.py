"""The test matrix of ``ncflow run`` (issue 21, part 3): optimizer × problem kind × bias mode × engine ×
plan × start kind × model, each cell run in this process as ``ncflow run ... --dtype float64 --json --out DIR``.
The models: ``ufm`` (depth 1), ``deep`` (the deep linear UFM of THEORY §9: ``--depth 2 --width 4``) and
``deep_relu`` (THEORY §9.6: ``--depth 2 --width 4 --activation relu``; ``--no-bias`` only where the bias
factor says none, so its other bias modes are refused).

Every cell either

* runs to an outcome: exit 0, one JSON summary counting the model's labels (``Problem.outcome_labels``:
  ``ncflow.LABELS``, the deep ReLU UFM's ``ncflow.RELU_LABELS``), ``Result.final_params(i)`` and
  ``final_params(i, exact=True)`` give run i's point (``Params``; ``DeepParams`` at depth 2) whose
  objective is the per-run objective (the exact replay of a collapsed run, deep linear too, ends where
  the collapsed engine did), and the files written by ``Result.save`` read back through
  ``ncflow.load_table`` / ``ncflow.load_summary``; or
* is refused up front: exit 2, one line on stderr naming the option, nothing compiled, nothing written.

Which cells are refused is stated here by the documented rules (:func:`refusal_flags`), so a cell
that is refused where it should run, or runs where it should be refused, fails.

3600 cells: 3046 refused, 554 run (510 of depth 1, 40 deep linear, 4 deep ReLU). The default suite
takes greedy pairwise coverings (every pair of values of two factors that occurs among the runnable
cells, likewise the refused ones, occurs in a chosen cell): all 242 pairs of the refused cells in 31
cells; for the runnable cells, whose every program set costs seconds of compilation, at most 21
program sets: for depth 1, 16 program sets in 21 cells, every value of every factor and 148 of the
167 pairs of depth-1 factor values (pairwise coverage of all 167 needs about 30 program sets, twice
that budget; the pairs left to the slow suite include momentum × class sizes, whose crashes
tests/test_crashes.py pins, and adam × targets); for the deep models, a covering of their own on top
of those cells, 5 program sets in 5 cells (every pair of the 78 that occur among the deep runnable
cells, so every value each deep model runs with; 4 would leave the deep linear UFM's bias mode none
to the slow suite). In all 26 cells, 192 of the 208 pairs. The other 528 run cells and 3015 refused
cells are ``slow`` (``python -m pytest tests/test_matrix.py -m slow``); ``test_matrix_counts``
asserts these numbers.
Problems are tiny (K=3, d=4, n=2 or N=6, 2 runs, at most 100 steps): compilation dominates.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

import ncflow
import ncflow.batch.loop
from ncflow.maths import deep_objective
from ncflow.maths.objective import objective
from ncflow.outcomes import LABELS, RELU_LABELS

from helpers import one_json_object, run_cli

OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "flow")
KINDS = ("balanced", "sizes", "targets", "targets+labels", "rescaled")
BIASES = ("unregularized", "none", "regularized")
ENGINES = ("full", "collapsed")
PLANS = ("cpu", "wide")
INITS = ("gaussian", "orthogonal", "small", "saddle")
MODELS = ("ufm", "deep", "deep_relu")
FACTORS = (OPTIMIZERS, KINDS, BIASES, ENGINES, PLANS, INITS, MODELS)
GENERAL = ("sizes", "targets", "targets+labels")  # THEORY §7 problems
TARGETS = ("targets", "targets+labels")
RUNS, STEPS = 2, 100


def refusal_flags(cell) -> set:
    """The options a refused cell's one line may name (empty: the cell runs). The documented rules:
    the collapsed engine runs gd, momentum and nesterov only, on the MSE loss only; class sizes and
    targets take the gaussian and small starts only; the saddle start needs the MSE loss; the rescaled
    MSE's closed form (what every run is classified against) covers an unregularized bias only.
    Deep UFMs (docs/deep.md): the deep engine runs plain GD only, from a gaussian or small start, on
    one-hot classes (no target matrix) and the MSE loss only; the deep linear UFM's regularized bias
    has a closed form for balanced classes only; the deep ReLU UFM needs --no-bias (the line names
    --activation), balanced classes (no unequal class sizes) and has no collapsed engine."""
    opt, kind, bias, engine, _plan, init, model = cell
    flags = set()
    if kind == "rescaled" and bias != "unregularized":
        flags.add({"none": "--no-bias", "regularized": "--lambda-b"}[bias])
    if engine == "collapsed" and (opt in ("adam", "flow") or kind == "rescaled"):
        flags.add("--engine")
    if kind in GENERAL and init in ("orthogonal", "saddle"):
        flags.add("--init")
    if init == "saddle" and kind == "rescaled":
        flags.add("--init")
    if model == "ufm":
        return flags
    if opt != "gd":
        flags.add("--optimizer")
    if init not in ("gaussian", "small"):
        flags.add("--init")
    if kind in TARGETS:
        flags.add("--targets")
    if kind == "rescaled":
        flags.add("--loss")
    if model == "deep" and kind == "sizes" and bias == "regularized":
        flags.add("--lambda-b")
    if model == "deep_relu":
        if bias != "none":
            flags.add("--activation")
        if kind == "sizes":
            flags.add("--class-sizes")
        if engine == "collapsed":
            flags.add("--engine")
    return flags


def _pairs(cell) -> set:
    return {(i, cell[i], j, cell[j]) for i, j in itertools.combinations(range(len(cell)), 2)}


def _program_key(cell) -> tuple:
    """Depth-1 cells that differ only in λ_b > 0 vs λ_b = 0 share their compiled programs (a
    coefficient); the deep engine's static shape names the bias mode, so deep ones do not."""
    opt, kind, bias, engine, plan, init, model = cell
    if model == "ufm" and bias == "regularized":
        bias = "unregularized"
    return (opt, kind, bias, engine, plan, init, model)


#: the default suite compiles the programs of at most this many depth-1 run cells (about 4-5 s of CPU each)
PROGRAM_BUDGET = 16
#: ... and of at most this many deep run cells (a covering of their own)
DEEP_PROGRAM_BUDGET = 5
#: a wide-plan cell compiles about 1.5 times as long as a cpu-plan one
WIDE_COST = 1.5


def pairwise_covering(cells: list, budget: int | None = None, covered: set = frozenset()) -> list:
    """A greedy pairwise covering of ``cells``: cells are chosen, the one covering the most pairs of
    factor values not yet covered per unit of compilation first, until every pair that occurs in
    ``cells`` occurs in a chosen cell (or is in ``covered``: pairs that other chosen cells cover), or
    ``budget`` distinct program sets are chosen (then only cells whose programs are already compiled
    are added). Deterministic."""
    pairs = {c: _pairs(c) for c in cells}
    need = set().union(*pairs.values()) - covered
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
RUNNABLE_DEEP = [c for c in RUNNABLE if c[6] != "ufm"]
_DEFAULT_UFM = pairwise_covering([c for c in RUNNABLE if c[6] == "ufm"], PROGRAM_BUDGET)
DEFAULT_RUN = set(_DEFAULT_UFM) | set(pairwise_covering(RUNNABLE_DEEP, DEEP_PROGRAM_BUDGET,
                                                          set().union(*map(_pairs, _DEFAULT_UFM))))
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
    opt, kind, bias, engine, plan, init, model = cell
    a = ["run", "-K", "3", "-d", "4", "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--dtype", "float64",
         "--runs", str(RUNS), "--max-steps", str(STEPS), "--optimizer", opt, "--engine", engine, "--plan", plan,
         "--init", init, "--no-progress", "--json", "--out", str(out)]
    a += {"balanced": ["-n", "2"], "rescaled": ["-n", "2", "--loss", "rescaled-mse", "--alpha", "2"],
          "sizes": ["--class-sizes", "3,2,1"], "targets": ["--targets", str(data / "T.npy")],
          "targets+labels": ["--targets", str(data / "T.npy"), "--labels", str(data / "L.npy")]}[kind]
    a += {"unregularized": [], "none": ["--no-bias"], "regularized": ["--lambda-b", "1e-2"]}[bias]
    if init == "saddle":
        a += ["--active", "1"]
    a += {"ufm": [], "deep": ["--depth", "2", "--width", "4"],
          "deep_relu": ["--depth", "2", "--width", "4", "--activation", "relu"]}[model]
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
    deep_pairs = set().union(*(_pairs(c) for c in RUNNABLE_DEEP))
    ufm_pairs = {q for q in set().union(*(_pairs(c) for c in RUNNABLE if c[6] == "ufm")) if q[2] != 6}
    refused_pairs = set().union(*(_pairs(c) for c in REFUSED))
    counts = dict(cells=len(CELLS), run=len(RUNNABLE), refused=len(REFUSED),
                  run_deep=len(RUNNABLE_DEEP), default_run=len(DEFAULT_RUN),
                  default_programs=len({_program_key(c) for c in DEFAULT_RUN}),
                  default_deep_programs=len({_program_key(c) for c in DEFAULT_RUN if c[6] != "ufm"}),
                  default_refused=len(DEFAULT_REFUSED), pairs=len(run_pairs), pairs_run_by_default=len(covered),
                  deep_pairs=len(deep_pairs), deep_pairs_run_by_default=len(deep_pairs & covered),
                  ufm_pairs=len(ufm_pairs),
                  ufm_pairs_run_by_default=len(ufm_pairs & set().union(*(_pairs(c) for c in DEFAULT_RUN
                                                                            if c[6] == "ufm"))),
                  refused_pairs=len(refused_pairs))
    print(f"ncflow run matrix: {counts}")
    assert counts == dict(cells=3600, run=554, refused=3046, run_deep=44, default_run=26,
                          default_programs=21, default_deep_programs=5, default_refused=31,
                          pairs=208, pairs_run_by_default=192, deep_pairs=78,
                          deep_pairs_run_by_default=78, ufm_pairs=167, ufm_pairs_run_by_default=148,
                          refused_pairs=242)
    for i, values in enumerate(FACTORS):  # every value of every factor runs in the default suite
        assert {c[i] for c in DEFAULT_RUN} == set(values)
    for model in MODELS[1:]:  # ... and so does every value each deep model runs with
        for i in range(len(FACTORS)):
            assert {c[i] for c in DEFAULT_RUN if c[6] == model} == {c[i] for c in RUNNABLE if c[6] == model}
    # every pair of values among the refused cells is refused in the default suite
    assert set().union(*(_pairs(c) for c in DEFAULT_REFUSED)) == refused_pairs


def _class_means(H, sizes):
    """(d, K) class means of H (d, N) whose columns come class by class, ``sizes`` per class."""
    edges = np.cumsum([0] + [int(v) for v in sizes])
    return np.stack([H[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)


@pytest.mark.parametrize("cell", _params(RUNNABLE, DEFAULT_RUN))
def test_cell_runs_to_an_outcome(cell, data_files, tmp_path, results, capsys):
    opt, _kind, bias, engine, plan, init, model = cell
    out = tmp_path / "out"
    code, stdout, err = run_cli(argv(cell, data_files, out), capsys)
    assert code == 0, err
    assert "Traceback" not in err
    summary = one_json_object(stdout)
    assert len(results) == 1
    r = results[0]
    p = r.problem
    deep = model != "ufm"
    labels = RELU_LABELS if model == "deep_relu" else LABELS
    assert p.outcome_labels == labels
    assert r.runs == RUNS and set(r.outcome) <= set(labels)
    assert set(summary["outcomes"]) == set(labels)
    assert {k: v["count"] for k, v in summary["outcomes"].items()} == {k: int(np.sum(r.outcome == k)) for k in labels}
    space = {"ufm": engine, "deep": f"deep_{engine}", "deep_relu": "deep_relu"}[model]
    assert (r.representation.split("+")[0], r.config["optimizer"], r.config["plan"], r.config["init"]) == \
        (space, opt, plan, init)
    assert p.bias_mode == bias
    assert (p.depth, p.activation) == {"ufm": (1, "linear"), "deep": (2, "linear"), "deep_relu": (2, "relu")}[model]
    if deep:
        spec = deep_objective.spec_of(p)
        co = deep_objective.coeffs_of(spec, p)

        def f_of(x):
            return deep_objective.objective(spec, co, x)

        def weights(x):
            return list(x.Ws)

        shapes = [(4, 4), (3, 4), (4, 6), (3,)]  # W_1 (d_1, d_0), W_2 (K, d_1), H (d_0, N), b
    else:
        def f_of(x):
            return objective(p, x)

        def weights(x):
            return [x.W]

        shapes = [(3, 4), (4, 6), (3,)]  # every kind has N = 6
    collapsed = engine == "collapsed"
    for i in range(RUNS):
        x, xe = r.final_params(i), r.final_params(i, exact=True)
        for params in (x, xe):
            assert [np.shape(a) for a in jax.tree_util.tree_leaves(params)] == shapes
        f = float(r.per_run["objective"][i])
        assert np.isfinite(f), r.outcome  # tiny problems, default steps: nothing diverges
        assert float(f_of(x)) == pytest.approx(f, rel=1e-9, abs=1e-15)
        if collapsed:  # the replay on the full representation ends where the collapsed run did
            assert float(f_of(xe)) == pytest.approx(f, rel=1e-8, abs=1e-14)
            for a, b in zip(weights(xe) + [xe.b], weights(x) + [x.b]):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-10)
            if deep:  # a deep collapsed run carries H's class means: the replay's are the same
                np.testing.assert_allclose(_class_means(np.asarray(xe.H), p.sizes),
                                           _class_means(np.asarray(x.H), p.sizes), rtol=1e-7, atol=1e-10)
                assert not np.allclose(np.asarray(xe.H), np.asarray(x.H))  # the exact H, not the expansion
        else:  # a full run's state is its exact point
            for a, b in zip(jax.tree_util.tree_leaves(xe), jax.tree_util.tree_leaves(x)):
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
