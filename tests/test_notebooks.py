"""The notebooks under notebooks/: saved outputs (fast) and headless execution (slow).

* fast (default suite): every notebook exists, is valid nbformat, was generated from the current
  ``notebooks/build.py`` (same cell sources), was executed (every code cell has an execution
  count, in order 1, 2, ..., and the build stamp says so), holds no error output, and ends with a
  markdown conclusion cell preceded by a code cell that printed the computed conclusion;
* slow (``python -m pytest -m slow tests/test_notebooks.py``): every notebook executes headless
  with nbclient (kernel python3, 600 s per cell) in a temporary copy without an error.

Regenerate and re-execute the notebooks with ``python notebooks/build.py``.
"""

import importlib.util
import os
import shutil

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart", "theory_check", "phase_diagrams", "convergence_rates")
CELL_TIMEOUT = 600


def _build_module():
    spec = importlib.util.spec_from_file_location("ncflow_notebook_build", os.path.join(NB_DIR, "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(name):
    path = os.path.join(NB_DIR, f"{name}.ipynb")
    assert os.path.exists(path), f"{path} is missing; run python notebooks/build.py"
    return nbformat.read(path, as_version=4)


def _errors(nb):
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
    return out


def test_build_defines_every_notebook():
    assert tuple(_build_module().NOTEBOOKS) == NOTEBOOKS
    readme = os.path.join(NB_DIR, "README.md")
    assert os.path.exists(readme)
    text = open(readme, encoding="utf-8").read()
    for name in NOTEBOOKS:
        assert f"{name}.ipynb" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_saved_and_executed(name):
    nb = _read(name)
    nbformat.validate(nb)
    build = _build_module()
    # generated from the current build.py: same cells, same sources
    expected = [(kind, src) for kind, src in build.NOTEBOOKS[name]]
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert got == expected, f"{name}.ipynb is stale: regenerate it with python notebooks/build.py"
    stamp = nb.metadata.get("ncflow_build", {})
    assert stamp.get("source_sha256") == build.source_hash(expected)
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    from nbclient import NotebookClient

    src = os.path.join(NB_DIR, f"{name}.ipynb")
    dst = tmp_path / f"{name}.ipynb"
    shutil.copy(src, dst)
    nb = nbformat.read(str(dst), as_version=4)
    for cell in nb.cells:  # run from a clean copy: no stale outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert _errors(nb) == []
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    nbformat.write(nb, str(dst))
