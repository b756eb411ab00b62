"""A sweep's results as a pandas DataFrame (pandas is an optional extra: ``pip install ncflow[pandas]``).

:func:`sweep_table` reads only the sweep's plain files (summary.csv, manifest.json and, per run,
each point's runs.csv); pandas is imported on the first call, never by ``import ncflow``.
"""

from __future__ import annotations

import os

import numpy as np

from ncflow import io as _io
from ncflow.codes import ALL_LABELS, LABELS, RELU_LABELS
from ncflow.sweep.config import point_dir
from ncflow.sweep.run import load_sweep

__all__ = ["sweep_outcome_labels", "sweep_table"]


def sweep_table(out_dir: str | os.PathLike, per_run: bool = False):
    """A sweep directory's results as a ``pandas.DataFrame``, with the grid keys as columns.

    ``per_run=False`` (default): one row per complete point, (points, columns): the columns of
    summary.csv (module doc of :mod:`ncflow.sweep`): ``point``, every swept key, the other problem
    parameters, ``lr_used``, ``c``, ``geometry``, ``f_star``, ``runs``, for each outcome label
    ``<label>_count`` / ``_fraction`` / ``_ci_low`` / ``_ci_high`` (95% Wilson; the labels of the
    sweep's model), deep linear sweeps' ``rank_star`` and ``rank<r>_count`` / ``_fraction`` /
    ``_ci_low`` / ``_ci_high``, the objective and NC medians, ``steps_median``. E.g.
    ``df.pivot(index="lambda_h", columns="lambda_w", values="global_fraction")`` is a phase diagram.

    ``per_run=True``: one row per run of every complete point, (points × runs, columns):
    ``point``, the swept keys of that point, then the per-run columns of its runs.csv (``run``,
    ``outcome``, ``steps``, ``objective``, ...; see :class:`ncflow.Result`), e.g. for
    ``df.groupby("lambda_w").steps.describe()``. Each runs.csv is read with
    :func:`ncflow.load_table`, so a damaged one is refused (``ResultIncompleteError``, one line).

    Dtypes: int64 / float64 / bool as in the files, text as pandas' default string dtype,
    ``outcome`` a ``category`` of every label the sweep's model(s) can report
    (:func:`sweep_outcome_labels`, :func:`ncflow.io.to_dataframe`). The points are
    those of summary.csv, which the sweep rewrites after every batch and at the end of every
    session: rerun the sweep (complete points are skipped) to bring it up to date after a crash.

    Raises ImportError (one line, naming ``pip install ncflow[pandas]``) without pandas, and
    :class:`~ncflow.sweep.config.SweepError` when ``out_dir`` holds no readable sweep.
    """
    _io.pandas_module()  # refuse a missing pandas before reading anything
    out_dir = os.fspath(out_dir)
    manifest, summary = load_sweep(out_dir)
    if not per_run:
        return _io.to_dataframe(summary)
    from ncflow.result import load_table

    swept = [k for k in manifest.get("swept", []) if k in summary]
    points = np.asarray(summary["point"]).astype(np.int64)
    parts: dict[str, list] = {"point": [], **{k: [] for k in swept}}
    sizes = []
    for i, index in enumerate(points.tolist()):
        table = load_table(point_dir(out_dir, manifest["points"], index))
        n = len(next(iter(table.values()))) if table else 0
        sizes.append(n)
        parts["point"].append(np.full(n, index, np.int64))
        for k in swept:
            parts[k].append(np.repeat(np.asarray(summary[k])[i:i + 1], n))
        for name, col in table.items():
            if name not in parts:  # a column the earlier points lack (e.g. a §7 problem's): missing there
                parts[name] = [np.full(m, np.nan) for m in sizes[:-1]]
            parts[name].append(np.asarray(col))
        for got in parts.values():
            if len(got) < len(sizes):  # a column this point lacks
                got.append(np.full(n, np.nan))
    if not sizes:  # no complete point yet
        columns = {"point": np.zeros(0, np.int64), **{k: np.asarray(summary[k])[:0] for k in swept}}
    else:
        columns = {name: _concatenate(got) for name, got in parts.items()}
    return _io.to_dataframe(columns, categories={"outcome": sweep_outcome_labels(manifest, summary)})


def sweep_outcome_labels(manifest: dict, summary: dict) -> tuple:
    """The outcome labels of a sweep, in the order of its summary.csv's ``<label>_count`` columns
    (:func:`ncflow.sweep.run.sweep_labels`); before any point is complete, from the manifest's
    config (``ncflow.RELU_LABELS`` where every point is a deep ReLU UFM, ``ncflow.LABELS`` where
    none is, else ``ncflow.ALL_LABELS``)."""
    seen = tuple(name[:-len("_count")] for name in summary if name.endswith("_count")
                 and name[:-len("_count")] in ALL_LABELS)
    if seen:
        return seen
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    problem, grid = config.get("problem") or {}, config.get("grid") or {}

    def values(key, default):
        got = grid.get(key, [problem.get(key, default)])
        return got if isinstance(got, list) else [got]

    relu = {d > 1 and a == "relu" for d in values("depth", 1) for a in values("activation", "linear")
            if isinstance(d, int)}
    return RELU_LABELS if relu == {True} else LABELS if relu == {False} else ALL_LABELS


def _concatenate(parts: list) -> np.ndarray:
    """One column (rows,) from its per-point pieces; pieces of different kinds (text and numbers)
    are joined as an object column."""
    filled = [p for p in parts if p.size] or parts[:1]
    if len({p.dtype.kind for p in filled}) > 1 and not {p.dtype.kind for p in filled} <= {"i", "u", "f", "b"}:
        filled = [p.astype(object) for p in filled]
    return np.concatenate(filled)
