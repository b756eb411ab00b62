"""Figures of sweeps and results (matplotlib, Agg backend, imported only when a figure is drawn).

* :func:`fractions_figure` — outcome fractions against one parameter, 95% Wilson error bars;
* :func:`phase_figure` — a 2-D phase diagram coloured by the fraction of runs that reach the
  global optimum, with the theory's c = 1 boundary λ_H = 1/(K² n λ_W) when the axes are λ_W, λ_H;
* :func:`convergence_figure` — objective gap |f − f*| and NC1–NC3 against steps from a result's
  history: median and 10–90% band over runs, log axes;
* :func:`plot_directory` — picks the figures from what a directory holds: a sweep with one swept
  parameter gets the fractions plot, with two a phase diagram, with more a fractions plot against
  the point index; every result with ``history.csv`` gets convergence curves. Files go next to the
  results (``DIR/fractions_<param>.png``, ``DIR/phase_<x>_<y>.png``, ``DIR/points/<i>/convergence.png``,
  and the same names in every requested format).

Reads only ncflow's plain files (summary.csv, manifest.json, history.csv, summary.json).
"""

from __future__ import annotations

import os

import numpy as np

from ncflow import io as _io
from ncflow.outcomes import LABELS

COLORS = {"global": "tab:green", "saddle": "tab:orange", "local_min": "tab:red",
          "not_converged": "tab:gray", "diverged": "tab:purple"}
AXIS_LABELS = {"lambda_w": "λ_W (weight decay on W)", "lambda_h": "λ_H (weight decay on H)",
               "lambda_b": "λ_b (weight decay on b)", "lr": "step size η", "init_scale": "init scale",
               "d": "feature dimension d", "K": "classes K", "n": "samples per class n",
               "runs": "runs", "seed": "seed", "max_steps": "step budget"}


class PlotError(ValueError):
    """A directory holds nothing ncflow can plot; the message names the path."""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _log(ax, which: str) -> None:
    """Log scale on ``ax``'s x or y axis with at most ~6 labelled decades and no minor ticks
    (many tick labels make matplotlib slow and the figure unreadable)."""
    from matplotlib.ticker import LogLocator, NullLocator

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, numticks=6))
    axis.set_minor_locator(NullLocator())


def _label(key: str) -> str:
    return AXIS_LABELS.get(key, key)


def _numeric(values) -> bool:
    arr = np.asarray(values)
    return arr.dtype.kind in "iuf"


def _use_log(values) -> bool:
    v = np.asarray(values, np.float64)
    return bool(v.size > 1 and np.all(v > 0) and v.max() / v.min() >= 10)


def save_figure(fig, base: str, formats=("png", "pdf")) -> list[str]:
    """Save ``fig`` as ``base.<fmt>`` for each format (atomically) and close it."""
    import io as _bio

    out = []
    for fmt in formats:
        buf = _bio.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        path = f"{base}.{fmt}"
        _io.atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    _plt().close(fig)
    return out


# --------------------------------------------------------------------------- figures


def fractions_figure(table: dict, param: str, title: str | None = None):
    """Outcome fractions (one series per label seen, always ``global``) against ``table[param]``
    with 95% Wilson intervals. ``table`` has summary.csv's columns. Non-numeric parameters are
    placed at evenly spaced categories."""
    plt = _plt()
    x_raw = np.asarray(table[param])
    numeric = _numeric(x_raw)
    order = np.argsort(x_raw, kind="stable") if numeric else np.arange(len(x_raw))
    x = x_raw[order].astype(np.float64) if numeric else np.arange(len(x_raw), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown = [lb for lb in LABELS if lb == "global" or np.any(np.asarray(table[f"{lb}_count"]) > 0)]
    log = numeric and _use_log(x)
    span = float(x.max() - x.min()) if x.size > 1 else 1.0
    for j, label in enumerate(shown):
        f = np.asarray(table[f"{label}_fraction"], np.float64)[order]
        lo = np.asarray(table[f"{label}_ci_low"], np.float64)[order]
        hi = np.asarray(table[f"{label}_ci_high"], np.float64)[order]
        off = j - (len(shown) - 1) / 2  # dodge the error bars of different labels
        xj = x * 10 ** (0.012 * off) if log else x + 0.008 * span * off
        ax.errorbar(xj, f, yerr=[np.clip(f - lo, 0, None), np.clip(hi - f, 0, None)], marker="o", capsize=3,
                    color=COLORS.get(label), label=label)
    if log:
        _log(ax, "x")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in x_raw[order]])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(_label(param))
    ax.set_ylabel("fraction of runs (95% Wilson interval)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="outcome", fontsize="small")
    runs = np.unique(np.asarray(table.get("runs", [])))
    ax.set_title(title or f"Outcomes against {param}" + (f" ({int(runs[0])} runs per point)" if runs.size == 1 else ""))
    fig.tight_layout()
    return fig


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    if v.size == 1:
        return np.array([v[0] / 2, v[0] * 2]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    t = np.log(v) if log else v
    mid = (t[1:] + t[:-1]) / 2
    e = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    return np.exp(e) if log else e


def phase_figure(table: dict, x: str, y: str, K: int | None = None, n: int | None = None,
                 title: str | None = None):
    """Fraction of runs reaching the global optimum on the (x, y) grid. With x, y = λ_W, λ_H (either
    order) and K, n given, the theory's c = 1 curve λ_W λ_H = 1/(K² n) is drawn: for c >= 1 the
    optimum is the zero solution."""
    plt = _plt()
    xv, yv = np.asarray(table[x], np.float64), np.asarray(table[y], np.float64)
    xs, ys = np.unique(xv), np.unique(yv)
    F = np.full((ys.size, xs.size), np.nan)
    for xi, yi, f in zip(xv, yv, np.asarray(table["global_fraction"], np.float64)):
        F[np.searchsorted(ys, yi), np.searchsorted(xs, xi)] = f
    xlog, ylog = _use_log(xs), _use_log(ys)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    mesh = ax.pcolormesh(_edges(xs, xlog), _edges(ys, ylog), np.ma.masked_invalid(F), cmap="viridis",
                         vmin=0.0, vmax=1.0, shading="flat")
    fig.colorbar(mesh, ax=ax, label="fraction of runs reaching the global optimum")
    if xlog:
        _log(ax, "x")
    if ylog:
        _log(ax, "y")
    if F.size <= 144:
        for i in range(ys.size):
            for j in range(xs.size):
                if np.isfinite(F[i, j]):
                    ax.text(xs[j], ys[i], f"{F[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if F[i, j] < 0.6 else "black")
    if {x, y} == {"lambda_w", "lambda_h"} and K and n:
        ex, ey = _edges(xs, xlog), _edges(ys, ylog)
        grid = np.geomspace(ex[0], ex[-1], 200) if xlog else np.linspace(ex[0], ex[-1], 200)
        grid = grid[grid > 0]
        curve = 1.0 / (K * K * n * grid)
        ax.plot(grid, curve, color="white", lw=3.5)
        ax.plot(grid, curve, "k--", lw=1.5)
        ax.set_xlim(ex[0], ex[-1])
        ax.set_ylim(ey[0], ey[-1])
        boundary = f"\ndashed: c = 1, i.e. λ_W λ_H = 1/(K² n) with K={K}, n={n} (above it the optimum is 0)"
    else:
        boundary = ""
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title or "Fraction of runs reaching the global optimum" + boundary, fontsize="medium")
    fig.tight_layout()
    return fig


def convergence_figure(history: dict, title: str | None = None):
    """Median and 10–90% band over runs of |f − f*|, NC1, NC2, NC3 against steps (log axes).
    ``history``: ``step (records,)`` and arrays (records, runs) ``gap``, ``nc1``, ``nc2``, ``nc3``."""
    plt = _plt()
    steps = np.asarray(history["step"], np.float64)
    panels = (("gap", "objective gap |f − f*|"), ("nc1", "NC1"), ("nc2", "NC2"), ("nc3", "NC3"))
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.4), sharex=True)
    x = np.maximum(steps, 1.0)  # the start (step 0) is drawn at step 1 on the log axis
    for ax, (key, name) in zip(axes.flat, panels):
        v = np.abs(np.asarray(history[key], np.float64))
        v = np.where(np.isfinite(v), v, np.nan)
        with np.errstate(all="ignore"), _quiet():
            med = np.nanmedian(v, axis=1)
            lo, hi = np.nanpercentile(v, 10, axis=1), np.nanpercentile(v, 90, axis=1)
        floor = np.nanmin(v[v > 0]) if np.any(v > 0) else 1e-30
        clip = lambda a, floor=floor: np.maximum(a, floor)  # noqa: E731 - log axes cannot show 0
        ax.fill_between(x, clip(lo), clip(hi), alpha=0.3, color="tab:blue", label="10–90% of runs")
        ax.plot(x, clip(med), color="tab:blue", lw=2, label="median")
        _log(ax, "x")
        _log(ax, "y")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("gradient steps (start shown at 1)")
    axes[0, 0].legend(fontsize="small")
    runs = np.asarray(history["gap"]).shape[1] if np.asarray(history["gap"]).ndim == 2 else 1
    fig.suptitle(title or f"Convergence of {runs} runs")
    fig.tight_layout()
    return fig


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# --------------------------------------------------------------------------- files


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


def _result_title(result_dir: str) -> str:
    try:
        p = _io.read_json(os.path.join(result_dir, "summary.json"))["problem"]
    except (OSError, KeyError, ValueError):
        return "Convergence"
    return (f"K={p['K']} d={p['d']} n={p['n']}  λ_W={p['lambda_w']:g}  λ_H={p['lambda_h']:g}"
            + (f"  λ_b={p['lambda_b']:g}" if p.get("lambda_b") else ""))


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
        require_complete(result_dir)
    except (ResultIncompleteError, FileNotFoundError) as e:
        raise PlotError(str(e)) from None
    h = _readable("history", os.path.join(result_dir, "history.csv"), lambda: load_history(result_dir))
    if h is None or h["step"].size == 0:
        return []
    fig = convergence_figure(h, title=_result_title(result_dir))
    return save_figure(fig, os.path.join(result_dir, "convergence"), formats)


def plot_sweep(sweep_dir: str, formats=("png", "pdf")) -> list[str]:
    """Every figure of a sweep directory (see the module docstring); the files written. Only
    complete points are drawn (see :func:`sweep_progress` for how many that is)."""
    mpath = os.path.join(sweep_dir, "manifest.json")
    manifest = _readable("sweep manifest", mpath, lambda: _io.read_json(mpath))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("swept", []), list):
        raise PlotError(f"{mpath}: not an ncflow sweep manifest")
    spath = os.path.join(sweep_dir, "summary.csv")
    table = _readable("sweep summary", spath, lambda: _io.read_table_csv(spath)) if os.path.exists(spath) else {}
    written = []
    n_rows = len(table.get("point", []))
    swept = [k for k in manifest.get("swept", []) if k in table and len(np.unique(table[k])) > 1]
    if n_rows:
        if len(swept) == 1:
            fig = fractions_figure(table, swept[0])
            written += save_figure(fig, os.path.join(sweep_dir, f"fractions_{swept[0]}"), formats)
        elif len(swept) == 2 and all(_numeric(table[k]) for k in swept):
            x, y = swept
            if y == "lambda_w" and x == "lambda_h":
                x, y = y, x
            K = _const(table, "K")
            n = _const(table, "n")
            fig = phase_figure(table, x, y, K=K, n=n)
            written += save_figure(fig, os.path.join(sweep_dir, f"phase_{x}_{y}"), formats)
        elif len(swept) >= 2:
            written += save_figure(fractions_figure(table, "point", title="Outcomes of every point"),
                                   os.path.join(sweep_dir, "fractions_point"), formats)
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


def _const(table: dict, key: str):
    v = np.unique(np.asarray(table.get(key, [])))
    return int(v[0]) if v.size == 1 else None


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
