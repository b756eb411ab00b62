"""Figures of sweeps and results (matplotlib, Agg backend, imported only when a figure is drawn).

* :mod:`ncflow.plot.theme` — the house style (one column of a paper, a colour-blind-safe
  palette, log axes with readable ticks on any range, titles that carry the problem, dtype, c,
  runs and stop rule, PDF beside PNG), used by these figures and by the notebooks;
* :mod:`ncflow.plot.figures` — :func:`fractions_figure`, :func:`ranks_figure`, :func:`phase_figure`,
  :func:`convergence_figure`;
* here: the files. :func:`plot_directory` picks the figures from what a directory holds: a sweep
  with one swept parameter gets the fractions plot (one series per outcome label of its model), with
  two a phase diagram, with more a fractions plot against the point index; a deep linear sweep (its
  summary has ``rank<r>_*`` columns) also gets the fraction per rank reached against its one swept
  parameter (against the point index with more); every result with ``history.csv`` gets convergence
  curves. Files go next to the results (``DIR/fractions_<param>.png``, ``DIR/ranks_<param>.png``,
  ``DIR/phase_<x>_<y>.png``, ``DIR/points/<i>/convergence.png``, and the same names in every
  requested format: PNG and PDF
  by default). :func:`sweep_columns` reads a sweep's summary with what its points add (stop rule,
  dtype, the runs' ‖W‖²).

Reads only ncflow's plain files (summary.csv, manifest.json, history.csv, runs.csv, summary.json).
"""

from __future__ import annotations

import os

import numpy as np

from ncflow import io as _io
from ncflow.plot.figures import (
    AXIS_LABELS,
    GEOMETRY_COLORS,
    GEOMETRY_NAMES,
    convergence_figure,
    fractions_figure,
    phase_figure,
    ranks_figure,
    table_labels,
    table_ranks,
)
from ncflow.plot.theme import (
    COLORS,
    COLUMN_WIDTH,
    MARKERS,
    OKABE_ITO,
    PAGE_WIDTH,
    PALETTE,
    RANK_MARKERS,
    STYLE,
    describe,
    describe_summary,
    describe_table,
    fraction_errorbars,
    interval_errorbars,
    log_axis,
    log_ticks,
    rank_style,
    save_figure,
    style,
    suptitle,
    table_const,
    use_style,
    wrap_about,
)

__all__ = ["AXIS_LABELS", "COLORS", "COLUMN_WIDTH", "GEOMETRY_COLORS", "GEOMETRY_NAMES", "MARKERS", "OKABE_ITO",
           "PAGE_WIDTH", "PALETTE", "RANK_MARKERS", "STYLE", "PlotError", "convergence_figure", "describe",
           "describe_summary", "describe_table", "fraction_errorbars", "fractions_figure", "interval_errorbars",
           "load_history", "log_axis", "log_ticks", "phase_figure", "plot_directory", "plot_result", "plot_sweep",
           "rank_style", "ranks_figure", "save_figure", "style", "suptitle", "sweep_progress", "sweep_columns",
           "table_const", "table_labels", "table_ranks", "use_style", "wrap_about"]


class PlotError(ValueError):
    """A directory holds nothing ncflow can plot; the message names the path."""


def load_history(result_dir: str) -> dict | None:
    """A result's ``history.csv`` as ``step (records,)`` plus (records, runs) arrays, or None."""
    path = os.path.join(result_dir, "history.csv")
    if not os.path.exists(path):
        return None
    t = _io.read_table_csv(path)
    steps, runs = np.asarray(t["step"]), np.asarray(t["run"])
    us, ur = np.unique(steps), np.unique(runs)
    si, ri = np.searchsorted(us, steps), np.searchsorted(ur, runs)
    out = {"step": us}
    for k, v in t.items():
        if k in ("step", "run"):
            continue
        a = np.full((us.size, ur.size), np.nan)
        a[si, ri] = np.asarray(v, np.float64)
        out[k] = a
    if "gap" not in out and "objective" in out:
        fstar = _io.read_json(os.path.join(result_dir, "summary.json"))["theory"]["objective"]
        out["gap"] = out["objective"] - fstar
    return out


def _result_title(summary: dict) -> str:
    p = summary.get("problem", {})
    if not p:
        return "Convergence"
    lam = (f"$\\lambda_W$={p['lambda_w']:g} $\\lambda_H$={p['lambda_h']:g}"
           + (f" $\\lambda_b$={p['lambda_b']:g}" if p.get("lambda_b") else ""))
    return f"Convergence at {lam}"


def _readable(what: str, path: str, read):
    """``read()``, or PlotError naming ``path`` when the file is damaged (one line)."""
    try:
        return read()
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PlotError(f"{path}: unreadable {what} ({detail[:200]})") from None


def plot_result(result_dir: str, formats=("png", "pdf")) -> list[str]:
    """Convergence curves of one saved result (needs ``history.csv``); the files written. Refuses
    (PlotError) an incomplete or damaged result."""
    from ncflow.result import ResultIncompleteError, require_complete

    try:
        summary = require_complete(result_dir)
    except (ResultIncompleteError, FileNotFoundError) as e:
        raise PlotError(str(e)) from None
    h = _readable("history", os.path.join(result_dir, "history.csv"), lambda: load_history(result_dir))
    if h is None or h["step"].size == 0:
        return []
    summary = summary if isinstance(summary, dict) else None
    fig = convergence_figure(h, title=_result_title(summary or {}), summary=summary)
    return save_figure(fig, os.path.join(result_dir, "convergence"), formats)


def sweep_columns(sweep_dir: str) -> dict:
    """summary.csv of a sweep as columns (points,), plus, from each complete point's files:
    ``stop`` (its stop rule) and ``dtype`` (str), and ``w_sq_median``, ``w_sq_p10``, ``w_sq_p90``:
    quantiles over its runs of ‖W‖_F² = K·(rms ‖w_k‖)² of the state each run stopped in (NaN where
    a point's runs.csv is missing). Raises PlotError when summary.csv is missing or damaged."""
    spath = os.path.join(sweep_dir, "summary.csv")
    if not os.path.exists(spath):
        raise PlotError(f"{spath}: no such file")
    table = _readable("sweep summary", spath, lambda: _io.read_table_csv(spath))
    points = np.asarray(table.get("point", []))
    m = points.size
    stop, dtype = np.full(m, "", dtype=object), np.full(m, "", dtype=object)
    w = np.full((m, 3), np.nan)
    for i, p in enumerate(points):
        pdir = os.path.join(sweep_dir, "points", f"{int(p):04d}")
        try:
            s = _io.read_json(os.path.join(pdir, "summary.json"))
            stop[i], dtype[i] = s.get("stop_rule", ""), s.get("problem", {}).get("dtype", "")
            runs = _io.read_table_csv(os.path.join(pdir, "runs.csv"))
            wsq = int(s["problem"]["K"]) * np.asarray(runs["w_norm"], np.float64) ** 2
            wsq = wsq[np.isfinite(wsq)]
            if wsq.size:
                w[i] = np.median(wsq), np.percentile(wsq, 10), np.percentile(wsq, 90)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a point without its files keeps NaN / ""
    if m and np.all(stop != ""):
        table["stop"] = stop.astype(str)
    if m and np.all(dtype != ""):
        table["dtype"] = dtype.astype(str)
    if m and np.all(np.isfinite(w[:, 0])):
        table["w_sq_median"], table["w_sq_p10"], table["w_sq_p90"] = w.T
    return table


def plot_sweep(sweep_dir: str, formats=("png", "pdf")) -> list[str]:
    """Every figure of a sweep directory (see the module docstring); the files written. Only
    complete points are drawn (see :func:`sweep_progress` for how many that is)."""
    mpath = os.path.join(sweep_dir, "manifest.json")
    manifest = _readable("sweep manifest", mpath, lambda: _io.read_json(mpath))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("swept", []), list):
        raise PlotError(f"{mpath}: not an ncflow sweep manifest")
    table = sweep_columns(sweep_dir) if os.path.exists(os.path.join(sweep_dir, "summary.csv")) else {}
    written = []
    n_rows = len(table.get("point", []))
    swept = [k for k in manifest.get("swept", []) if k in table and len(np.unique(table[k])) > 1]
    if n_rows:
        if len(swept) == 1:
            fig = fractions_figure(table, swept[0])
            written += save_figure(fig, os.path.join(sweep_dir, f"fractions_{swept[0]}"), formats)
        elif len(swept) == 2 and all(np.asarray(table[k]).dtype.kind in "iuf" for k in swept):
            x, y = swept
            if y == "lambda_w" and x == "lambda_h":
                x, y = y, x
            fig = phase_figure(table, x, y, K=table_const(table, "K"), n=table_const(table, "n"))
            written += save_figure(fig, os.path.join(sweep_dir, f"phase_{x}_{y}"), formats)
        elif len(swept) >= 2:
            written += save_figure(fractions_figure(table, "point", title="Outcomes of every point"),
                                   os.path.join(sweep_dir, "fractions_point"), formats)
        if table_ranks(table) and swept:  # a deep linear sweep: the rank each run reached
            param = swept[0] if len(swept) == 1 else "point"
            title = None if len(swept) == 1 else "Rank reached at every point"
            written += save_figure(ranks_figure(table, param, title=title),
                                   os.path.join(sweep_dir, f"ranks_{param}"), formats)
    points_dir = os.path.join(sweep_dir, "points")
    if os.path.isdir(points_dir):
        for name in sorted(os.listdir(points_dir)):
            pdir = os.path.join(points_dir, name)
            if os.path.exists(os.path.join(pdir, "summary.json")):
                written += plot_result(pdir, formats)
    return written


def sweep_progress(sweep_dir: str) -> tuple[int, int] | None:
    """``(complete points, points)`` of a sweep directory from its manifest and its points'
    completion marks, or None when it is not a sweep or its manifest is unreadable."""
    try:
        manifest = _io.read_json(os.path.join(sweep_dir, "manifest.json"))
        total = int(manifest["points"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    points_dir = os.path.join(sweep_dir, "points")
    done = 0
    if os.path.isdir(points_dir):
        done = sum(os.path.exists(os.path.join(points_dir, name, "summary.json")) for name in os.listdir(points_dir))
    return done, total


def plot_directory(directory: str, formats=("png", "pdf")) -> list[str]:
    """Plot a sweep directory (manifest.json) or a single result directory (summary.json)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise PlotError(f"{directory}: no such directory")
    if os.path.exists(os.path.join(directory, "manifest.json")):
        return plot_sweep(directory, formats)
    from ncflow.result import OWNED_FILES

    if any(os.path.exists(os.path.join(directory, f)) for f in OWNED_FILES):
        return plot_result(directory, formats)  # refuses an incomplete result in one line
    raise PlotError(f"{directory} holds neither a sweep (manifest.json) nor a result (summary.json)")


def __getattr__(name: str):
    """``ReadableLogLocator`` and ``ReadableLogFormatter`` of :mod:`ncflow.plot.theme`, made on
    first use."""
    if name in ("ReadableLogLocator", "ReadableLogFormatter"):
        from ncflow.plot import theme as _theme

        return getattr(_theme, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
