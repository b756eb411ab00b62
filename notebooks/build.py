"""Execute the ncflow notebooks from their jupytext sources, or check that the saved ones are current.

    python notebooks/build.py                      # execute every notebook, save it with its outputs
    python notebooks/build.py quickstart           # only the named notebook(s)
    python notebooks/build.py --no-execute         # write the notebooks without running them
    python notebooks/build.py --timeout 600        # per-cell timeout in seconds (default 600)
    python notebooks/build.py --check              # report missing or stale notebooks; runs nothing

The source of notebook ``<name>`` is ``notebooks/<name>.py`` in jupytext's percent format
(``# %%`` code cells, ``# %% [markdown]`` markdown cells), paired with ``notebooks/<name>.ipynb``
(``formats: ipynb,py:percent``); edit the ``.py``, never the ``.ipynb``. Building reads the source
with ``jupytext.read``, executes it with nbclient (kernel ``python3``, working directory
``notebooks/``, a per-cell timeout) and writes ``<name>.ipynb`` with its outputs and a stamp in the
notebook metadata (``ncflow_build``: the sha256 of the source file, whether it was executed), so
``--check`` and the tests can tell whether the saved outputs belong to the current source.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import jupytext
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = ("quickstart", "theory_check", "phase_diagrams", "convergence_rates", "imbalance", "deep")
KERNEL = "python3"
DEFAULT_TIMEOUT = 600
STAMP = "ncflow_build"  # notebook metadata key of the build stamp


def source_path(name: str) -> str:
    """The jupytext source ``notebooks/<name>.py``."""
    return os.path.join(HERE, f"{name}.py")


def notebook_path(name: str) -> str:
    """The executed notebook ``notebooks/<name>.ipynb``."""
    return os.path.join(HERE, f"{name}.ipynb")


def source_hash(name: str) -> str:
    """sha256 (hex) of the bytes of ``notebooks/<name>.py``: what a saved notebook must be built from."""
    with open(source_path(name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """The (cell type, source) pairs of ``nb``, in order."""
    return [(c.cell_type, c.source) for c in nb.cells]


def make_notebook(name: str) -> nbformat.NotebookNode:
    """The unexecuted notebook built from ``notebooks/<name>.py``, stamped with the source's hash.

    Cell ids are ``cell-00``, ``cell-01``, ... (jupytext draws random ones), so rebuilding an
    unchanged source gives an unchanged notebook apart from the outputs.
    """
    nb = jupytext.read(source_path(name), fmt="py:percent")
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata.get("jupytext", {}).pop("text_representation", None)  # belongs to the .py only
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata[STAMP] = {"source_sha256": source_hash(name), "executed": False}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = DEFAULT_TIMEOUT, cwd: str = HERE) -> float:
    """Execute ``nb`` in place with nbclient (kernel python3, per-cell ``timeout`` s); returns seconds."""
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": cwd}}).execute()
    return time.perf_counter() - t0


def problem_of(name: str) -> str | None:
    """Why the saved ``<name>.ipynb`` does not match its source (one line), or None when it is current."""
    if not os.path.exists(notebook_path(name)):
        return f"{name}.ipynb is missing"
    nb = nbformat.read(notebook_path(name), as_version=4)
    stamp = nb.metadata.get(STAMP, {})
    if stamp.get("source_sha256") != source_hash(name):
        return f"{name}.ipynb is stale: {name}.py changed since it was built"
    if cells_of(nb) != cells_of(jupytext.read(source_path(name), fmt="py:percent")):
        return f"{name}.ipynb is stale: its cells differ from {name}.py (edited by hand?)"
    if stamp.get("executed") is not True:
        return f"{name}.ipynb was written without executing it (--no-execute)"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"notebooks to build (default: all of {', '.join(NOTEBOOKS)})")
    ap.add_argument("--no-execute", action="store_true", help="write the notebooks without executing them")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="per-cell timeout in seconds")
    ap.add_argument("--check", action="store_true",
                    help="report missing or stale notebooks without executing anything (exit 1 if any)")
    args = ap.parse_args(argv)
    names = args.names or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        ap.error(f"unknown notebook(s) {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    if args.timeout <= 0:
        ap.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.check:
        problems = {n: p for n in names if (p := problem_of(n))}
        for p in problems.values():
            print(p, file=sys.stderr)
        if problems:
            print(f"rebuild with: python notebooks/build.py {' '.join(problems)}", file=sys.stderr)
            return 1
        print(f"up to date: {', '.join(names)}")
        return 0
    failed = []
    for name in names:
        nb = make_notebook(name)
        if not args.no_execute:
            print(f"executing {name} ...", flush=True)
            try:
                secs = execute(nb, args.timeout)
            except Exception as e:  # keep the partial outputs for inspection, report, go on
                nbformat.write(nb, notebook_path(name))
                print(f"  FAILED: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr)
                failed.append(name)
                continue
            nb.metadata[STAMP].update(executed=True, seconds=round(secs, 1))
            print(f"  {name}: executed in {secs:.1f} s", flush=True)
        nbformat.validate(nb)
        nbformat.write(nb, notebook_path(name))
        print(f"  wrote {os.path.relpath(notebook_path(name))}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
