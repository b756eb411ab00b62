"""The notebooks under notebooks/: jupytext sources, saved executed outputs (fast), headless runs (slow).

* fast (default suite): every notebook source ``notebooks/<name>.py`` (jupytext percent format,
  paired ``ipynb,py:percent``) has its ``<name>.ipynb``, which is valid nbformat, carries the
  sha256 of the current source in its build stamp (not stale), holds the same cells as the source,
  was executed (every code cell has an execution count, in order 1, 2, ...), holds no error output,
  and ends with a markdown conclusion cell preceded by a code cell that printed the computed
  conclusion; every ``ncflow.Problem`` a source builds names its dtype; every source draws in
  ncflow.plot's house style (``use_style()``, one- or two-column widths, log axes through
  ``ncflow.plot.log_axis``); ``build.py --check``
  reports missing, stale and unexecuted notebooks;
* slow (``python -m pytest -m slow tests/test_notebooks.py``): every source, built with
  ``notebooks/build.py``, executes headless with nbclient (kernel python3, 600 s per cell) in a
  temporary directory without an error.

Edit a notebook's ``.py`` and re-execute it with ``python notebooks/build.py <name>``.
"""

import ast
import glob
import hashlib
import importlib.util
import os
import shutil

import jupytext
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart", "theory_check", "phase_diagrams", "convergence_rates", "imbalance", "deep")
CELL_TIMEOUT = 600


def _build_module():
    spec = importlib.util.spec_from_file_location("ncflow_notebook_build", os.path.join(NB_DIR, "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _source(name):
    path = os.path.join(NB_DIR, f"{name}.py")
    assert os.path.exists(path), f"{path} is missing"
    return path


def _read(name):
    path = os.path.join(NB_DIR, f"{name}.ipynb")
    assert os.path.exists(path), f"{path} is missing; run python notebooks/build.py {name}"
    return nbformat.read(path, as_version=4)


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def _errors(nb):
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
    return out


def _jupytext_sources():
    """Names of the .py files in notebooks/ that carry a jupytext header."""
    names = []
    for path in sorted(glob.glob(os.path.join(NB_DIR, "*.py"))):
        with open(path, encoding="utf-8") as f:
            head = f.read(400)
        if head.startswith("# ---\n# jupyter:\n"):
            names.append(os.path.splitext(os.path.basename(path))[0])
    return names


def test_build_lists_every_source():
    build = _build_module()
    assert tuple(build.NOTEBOOKS) == NOTEBOOKS
    assert sorted(_jupytext_sources()) == sorted(NOTEBOOKS)
    readme = os.path.join(NB_DIR, "README.md")
    text = open(readme, encoding="utf-8").read()
    for name in NOTEBOOKS:
        assert f"{name}.ipynb" in text and f"{name}.py" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_is_paired_percent_script(name):
    src = jupytext.read(_source(name))
    meta = src.metadata
    assert meta["jupytext"]["formats"] == "ipynb,py:percent"
    assert meta["jupytext"]["text_representation"]["format_name"] == "percent"
    assert meta["kernelspec"]["name"] == "python3"
    kinds = {c.cell_type for c in src.cells}
    assert kinds == {"code", "markdown"}, kinds


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_saved_current_and_executed(name):
    nb = _read(name)
    nbformat.validate(nb)
    with open(_source(name), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = nb.metadata.get("ncflow_build", {})
    assert stamp.get("source_sha256") == digest, (
        f"{name}.ipynb is stale ({name}.py changed since it was built): run python notebooks/build.py {name}")
    assert _cells(nb) == _cells(jupytext.read(_source(name))), f"{name}.ipynb's cells differ from {name}.py"
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert stamp.get("executed") is True, f"{name}.ipynb was written without executing it"
    # every code cell executed, in order, in one kernel session
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    counts = [c.execution_count for c in code]
    assert None not in counts, f"unexecuted code cells in {name}.ipynb: {counts}"
    assert counts == list(range(1, len(code) + 1)), f"cells not executed in order: {counts}"
    assert _errors(nb) == []
    # ends with a markdown conclusion after a code cell that printed the computed conclusion
    assert nb.cells[-1].cell_type == "markdown" and nb.cells[-1].source.strip()
    assert nb.cells[-2].cell_type == "code"
    printed = "".join(o.get("text", "") for o in nb.cells[-2].outputs if o.get("output_type") == "stream")
    assert printed.strip(), "the conclusion cell printed nothing"


def _dtype_dicts(tree):
    """Names bound at top level to a dict display or dict(...) call with a ``dtype`` key."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and _has_dtype(node.value, set()):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _has_dtype(node, dicts):
    """Whether a ``**`` argument (a name, a dict display or a dict(...) call) supplies ``dtype``."""
    if isinstance(node, ast.Name):
        return node.id in dicts
    if isinstance(node, ast.Dict):
        return any((k is None and _has_dtype(v, dicts)) or (isinstance(k, ast.Constant) and k.value == "dtype")
                   for k, v in zip(node.keys, node.values, strict=True))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return any(kw.arg == "dtype" or (kw.arg is None and _has_dtype(kw.value, dicts)) for kw in node.keywords)
    return False


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_problem_names_its_dtype(name):
    """ncflow.Problem's default dtype is not what a notebook relies on: each call passes dtype."""
    tree = ast.parse(open(_source(name), encoding="utf-8").read())
    dicts = _dtype_dicts(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "Problem"]
    assert calls, f"{name}.py builds no ncflow.Problem"
    missing = [n.lineno for n in calls
               if not any(kw.arg == "dtype" or (kw.arg is None and _has_dtype(kw.value, dicts)) for kw in n.keywords)]
    assert missing == [], f"{name}.py: ncflow.Problem without an explicit dtype on line(s) {missing}"


def test_dtype_check_sees_a_missing_dtype():
    tree = ast.parse('BASE = dict(K=4, d=8)\nFULL = {**BASE, "dtype": "float64"}\n')
    dicts = _dtype_dicts(tree)
    assert dicts == {"FULL"}
    assert not _has_dtype(ast.parse("{**BASE}", mode="eval").body, dicts)
    assert _has_dtype(ast.parse('{**FULL, "d": 3}', mode="eval").body, dicts)


WIDTHS = ("ncflow.plot.COLUMN_WIDTH", "ncflow.plot.PAGE_WIDTH")


def _style_problems(source: str) -> list[str]:
    """Where a notebook source leaves ncflow.plot's house style: no ``ncflow.plot.use_style()`` call,
    matplotlib's own log scales (``semilogy``, ``loglog``, ``set_xscale`` ...: no readable ticks
    inside one decade) instead of ``ncflow.plot.log_axis``, a figure width other than one or both
    columns."""
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    out = []
    if not any(ast.unparse(n.func) == "ncflow.plot.use_style" for n in calls):
        out.append("no ncflow.plot.use_style()")
    out += [f"line {n.lineno}: {n.func.attr}" for n in calls
            if n.func.attr in ("semilogx", "semilogy", "loglog", "set_xscale", "set_yscale")]
    for n in calls:
        for kw in n.keywords:
            width = ast.unparse(kw.value.elts[0]) if isinstance(kw.value, ast.Tuple) else None
            if kw.arg == "figsize" and width not in WIDTHS:
                out.append(f"line {n.lineno}: figsize {ast.unparse(kw.value)}")
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_figures_take_the_house_style(name):
    """Every notebook draws in ncflow.plot's house style: one- or two-column widths, readable log axes."""
    assert _style_problems(open(_source(name), encoding="utf-8").read()) == []


def test_style_check_sees_a_figure_outside_the_house_style():
    bad = "fig, ax = plt.subplots(figsize=(6, 3))\nax.set_yscale('log')\nax.semilogy([1], [1])\n"
    assert _style_problems(bad) == ["no ncflow.plot.use_style()", "line 2: set_yscale", "line 3: semilogy",
                                    "line 1: figsize (6, 3)"]
    good = ("ncflow.plot.use_style()\nfig, ax = plt.subplots(figsize=(ncflow.plot.COLUMN_WIDTH, 2.6))\n"
            "ncflow.plot.log_axis(ax, 'y')\n")
    assert _style_problems(good) == []


def _copy_sources(tmp_path, name, build, monkeypatch):
    shutil.copy(_source(name), tmp_path / f"{name}.py")
    shutil.copy(os.path.join(NB_DIR, f"{name}.ipynb"), tmp_path / f"{name}.ipynb")
    monkeypatch.setattr(build, "HERE", str(tmp_path))


def test_check_reports_stale_missing_and_unexecuted(tmp_path, monkeypatch, capsys):
    build = _build_module()
    name = "quickstart"
    _copy_sources(tmp_path, name, build, monkeypatch)
    assert build.main(["--check", name]) == 0
    # a changed source makes the saved notebook stale
    with open(tmp_path / f"{name}.py", "a", encoding="utf-8") as f:
        f.write("\n# %%\nprint('one more cell')\n")
    capsys.readouterr()
    assert build.main(["--check", name]) == 1
    err = capsys.readouterr().err
    assert f"{name}.ipynb is stale" in err and f"build.py {name}" in err
    # a notebook written without executing it is flagged too
    assert build.main(["--no-execute", name]) == 0
    nb = nbformat.read(str(tmp_path / f"{name}.ipynb"), as_version=4)
    assert _cells(nb)[-1] == ("code", "print('one more cell')")
    assert nb.metadata["ncflow_build"]["executed"] is False
    capsys.readouterr()
    assert build.main(["--check", name]) == 1
    assert "without executing" in capsys.readouterr().err
    # and a missing one
    os.remove(tmp_path / f"{name}.ipynb")
    assert build.main(["--check", name]) == 1
    assert f"{name}.ipynb is missing" in capsys.readouterr().err


def test_check_sees_cells_edited_in_the_ipynb(tmp_path, monkeypatch, capsys):
    build = _build_module()
    name = "quickstart"
    shutil.copy(_source(name), tmp_path / f"{name}.py")
    monkeypatch.setattr(build, "HERE", str(tmp_path))
    assert build.main(["--no-execute", name]) == 0  # current stamp, unexecuted
    path = str(tmp_path / f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\nedited in Jupyter"
    nbformat.write(nb, path)
    assert build.main(["--check", name]) == 1
    assert "cells differ" in capsys.readouterr().err


def test_build_rejects_bad_arguments(capsys):
    build = _build_module()
    with pytest.raises(SystemExit) as e:
        build.main(["--check", "nope"])
    assert e.value.code == 2 and "unknown notebook(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        build.main(["--timeout", "0", "quickstart"])
    assert e.value.code == 2 and "--timeout must be a positive" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    build = _build_module()
    nb = build.make_notebook(name)  # from the source: no stale outputs
    build.execute(nb, timeout=CELL_TIMEOUT, cwd=str(tmp_path))
    assert _errors(nb) == []
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
