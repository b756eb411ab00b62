"""The figures of sweeps and results (see :mod:`ncflow.plot`), drawn in the house style of
:mod:`ncflow.plot.theme`.

* :func:`fractions_figure` — outcome fractions against one parameter, 95% Wilson error bars
  (log, symlog or linear axis after the values), one series per outcome label of the table's model(s);
* :func:`ranks_figure` — a deep linear sweep's fraction of runs per rank reached (alive directions,
  THEORY §9.2) against one parameter, 95% Wilson error bars, the optimum's rank marked;
* :func:`phase_figure` — a 2-D phase diagram coloured by the geometry the runs reached (the
  predicted optimum's where most runs reach it: simplex ETF for c < 1, the zero solution past
  c = 1; else their most frequent outcome), every cell labelled k/n with its interval, the c = 1
  curve λ_H = 1/(K² n λ_W) when the axes are λ_W, λ_H; with the runs' ‖W‖² of converged states a
  second panel compares ‖W‖_F² √(λ_W/λ_H), a function of c alone, with the theory's;
* :func:`convergence_figure` — objective gap |f − f*| and NC1–NC3 against steps from a result's
  history: median (a marker at every recorded step) and 10–90% band over runs, log axes; a
  history that ends where the runs were certified says so.
"""

from __future__ import annotations

import math

import numpy as np

from ncflow.codes import ALL_LABELS
from ncflow.plot.theme import (
    COLORS,
    COLUMN_WIDTH,
    MARKERS,
    OKABE_ITO,
    describe_summary,
    describe_table,
    interval_errorbars,
    log_axis,
    pyplot,
    rank_style,
    style,
    suptitle,
    table_const,
)

AXIS_LABELS = {"lambda_w": r"$\lambda_W$ (weight decay on $W$)", "lambda_h": r"$\lambda_H$ (weight decay on $H$)",
               "lambda_b": r"$\lambda_b$ (weight decay on $b$)", "lr": r"step size $\eta$", "init_scale": "init scale",
               "d": "feature dimension $d$", "K": "classes $K$", "n": "samples per class $n$",
               "runs": "runs", "seed": "seed", "max_steps": "step budget", "point": "sweep point"}
GEOMETRY_NAMES = {"simplex_etf": "simplex ETF", "zero": "zero solution", "orthogonal_frame": "orthogonal frame",
                  "rank_limited": "rank-limited ETF", "etf_with_mean": "ETF with mean",
                  "global": "the predicted optimum", "dnc": "deep neural collapse"}
GEOMETRY_COLORS = {"simplex_etf": OKABE_ITO["sky"], "zero": OKABE_ITO["yellow"],
                   "orthogonal_frame": OKABE_ITO["blue"], "rank_limited": OKABE_ITO["green"],
                   "etf_with_mean": OKABE_ITO["blue"], "dnc": OKABE_ITO["blue"]}


def _label(key: str) -> str:
    return AXIS_LABELS.get(key, key)


def _numeric(values) -> bool:
    arr = np.asarray(values)
    return arr.dtype.kind in "iuf"


def _use_log(values) -> bool:
    v = np.asarray(values, np.float64)
    return bool(v.size > 1 and np.all(v > 0) and v.max() / v.min() >= 10)


def _symlog_threshold(values) -> float | None:
    """The smallest positive value when ``values`` are >= 0, include 0 and their positive part spans
    at least two decades (e.g. init scales 0, 1e-4, ..., 3): a symlog axis' linear threshold."""
    v = np.asarray(values, np.float64)
    pos = v[v > 0]
    if v.size > 2 and np.all(v >= 0) and np.any(v == 0) and pos.size >= 2 and pos.max() / pos.min() >= 100:
        return float(pos.min())
    return None


LINEAR_KEYS = ("point", "seed")  # indices: never a log axis


def _x_axis(values, param: str = ""):
    """(positions, kind, linthresh) of a parameter's values: "log" when they are positive and span
    a decade, "symlog" when they include 0 and their positive part spans two, else (and always for
    the indices of :data:`LINEAR_KEYS`) "linear"; non-numeric values are evenly spaced
    categories ("category")."""
    if not _numeric(values):
        return np.arange(len(values), dtype=np.float64), "category", None
    x = np.asarray(values, np.float64)
    if param in LINEAR_KEYS:
        return x, "linear", None
    if _use_log(x):
        return x, "log", None
    th = _symlog_threshold(x)
    return x, ("symlog" if th else "linear"), th


def table_labels(table: dict) -> list[str]:
    """The outcome labels (of ``ncflow.ALL_LABELS``) whose ``<label>_count`` column ``table`` has, in
    the table's column order (summary.csv's: the model's report order)."""
    return [name[:-len("_count")] for name in table if name.endswith("_count")
            and name[:-len("_count")] in ALL_LABELS]


def table_ranks(table: dict) -> list[int]:
    """The ranks r whose ``rank<r>_count`` column ``table`` has (a deep linear sweep's), ascending."""
    ranks = [name[len("rank"):-len("_count")] for name in table if name.startswith("rank") and name.endswith("_count")]
    return sorted(int(r) for r in ranks if r.isdigit())


def _reference_label(labels: list[str]) -> str | None:
    """The label a model's runs aim at: ``global`` (the UFM, deep linear) or ``dnc`` (deep ReLU)."""
    return next((lb for lb in ("global", "dnc") if lb in labels), labels[0] if labels else None)


def _series_axes(table: dict, param: str):
    """(order, x, kind, linthresh) of a figure against ``table[param]``: the points in ascending
    order of a numeric parameter (else as given) and :func:`_x_axis` of the ordered values."""
    x_raw = np.asarray(table[param])
    order = np.argsort(x_raw, kind="stable") if _numeric(x_raw) else np.arange(len(x_raw))
    x, kind, th = _x_axis(x_raw[order], param)
    return order, x, kind, th


def _finish_axes(ax, table, param, order, x, kind, th) -> None:
    if kind in ("log", "symlog"):
        log_axis(ax, "x", linthresh=th)
    if kind == "category":
        ax.set_xticks(x, [str(v) for v in np.asarray(table[param])[order]])
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel(_label(param))
    ax.set_ylabel("fraction of runs")


def fractions_figure(table: dict, param: str, title: str | None = None):
    """Outcome fractions (one series per label of the table seen — every label whose
    ``<label>_count`` column it has, :func:`table_labels`, in its order — always ``global``, or
    ``dnc`` for a deep ReLU sweep) against ``table[param]`` with 95% Wilson intervals, the runs per
    point and the rest of :func:`describe_table` in the title, the legend below the axes. ``table``
    has summary.csv's columns (points,). Non-numeric parameters are placed at evenly spaced
    categories; log-spaced ones get a log axis, or a symlog one when they include 0."""
    plt = pyplot()
    order, x, kind, th = _series_axes(table, param)
    labels = table_labels(table)
    ref = _reference_label(labels)
    shown = [lb for lb in labels if lb == ref or np.nansum(np.asarray(table[f"{lb}_count"], np.float64)) > 0]
    with style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.7))
        for j, label in enumerate(shown):
            col = lambda k, label=label: np.asarray(table[f"{label}_{k}"], np.float64)[order]  # noqa: E731
            interval_errorbars(ax, x, col("fraction"), col("ci_low"), col("ci_high"),
                       offset_points=2.5 * (j - (len(shown) - 1) / 2), color=COLORS.get(label),
                       marker=MARKERS.get(label, "o"), ms=3.5, lw=1.0, label=label.replace("_", " "))
        _finish_axes(ax, table, param, order, x, kind, th)
        fig.legend(loc="outside lower center", ncols=min(len(shown), 5), handlelength=1.6, columnspacing=1.0,
                   title="outcome (bars: 95% Wilson interval)")
        suptitle(fig, title or f"Outcomes against {_label(param).split(' (')[0]}", describe_table(table))
    return fig


def ranks_figure(table: dict, param: str, title: str | None = None):
    """A deep linear sweep's fraction of runs per rank reached (``rank<r>_fraction``: runs ending
    with r alive directions, THEORY §9.2; :func:`table_ranks`) against ``table[param]`` with 95%
    Wilson intervals: one series per rank some run reached or the optimum has, colours along a
    sequential map (:func:`~ncflow.plot.theme.rank_style`). The optimum's rank (``rank_star``) is
    named "rank r (global)" in the legend where it is the same at every point; where it changes with
    the parameter, a rank's markers are filled at the points where it is the optimum's and open
    elsewhere. Points without ranks (of another model, in a mixed sweep) are left out. Axes as
    :func:`fractions_figure`. Raises ValueError when the table has no rank columns."""
    ranks = table_ranks(table)
    if not ranks:
        raise ValueError("the table has no rank<r>_count columns (not a deep linear sweep)")
    plt = pyplot()
    order, x, kind, th = _series_axes(table, param)
    m = len(order)
    star = np.asarray(table.get("rank_star", np.full(m, np.nan)), np.float64)[order]
    stars = np.unique(star[np.isfinite(star)]).astype(int).tolist()
    fixed = stars[0] if len(stars) == 1 else None
    col = lambda r, k: np.asarray(table[f"rank{r}_{k}"], np.float64)[order]  # noqa: E731
    shown = [r for r in ranks if r in stars or np.nansum(col(r, "count")) > 0] or ranks[:1]
    with style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9))
        for j, r in enumerate(shown):
            color, marker = rank_style(r, ranks[-1])
            off = 2.5 * (j - (len(shown) - 1) / 2)
            name = f"rank {r}" + (" (global)" if r == fixed else "")
            opened = {} if fixed is not None or not stars else {"mfc": "white"}
            interval_errorbars(ax, x, col(r, "fraction"), col(r, "ci_low"), col(r, "ci_high"), offset_points=off,
                               color=color, marker=marker, ms=3.5, lw=1.0, label=name, **opened)
            at_star = star == r
            if opened and np.any(at_star):  # filled where r is the optimum's rank
                from matplotlib.transforms import offset_copy

                tr = offset_copy(ax.transData, fig=fig, x=off, y=0, units="points") if off else ax.transData
                ax.plot(x[at_star], col(r, "fraction")[at_star], ls="none", marker=marker, ms=3.5, color=color,
                        transform=tr, zorder=3)
        _finish_axes(ax, table, param, order, x, kind, th)
        legend_title = "alive directions where each run stopped (bars: 95% Wilson interval)"
        if fixed is None and stars:
            legend_title += "\nfilled: the optimum's rank at that value"
        fig.legend(loc="outside lower center", ncols=min(len(shown), 4), handlelength=1.6, columnspacing=1.0,
                   title=legend_title)
        suptitle(fig, title or f"Rank reached against {_label(param).split(' (')[0]}", describe_table(table))
    return fig


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    if v.size == 1:
        return np.array([v[0] / 2, v[0] * 2]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    t = np.log(v) if log else v
    mid = (t[1:] + t[:-1]) / 2
    e = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    return np.exp(e) if log else e


def _reached(table: dict) -> tuple[np.ndarray, dict]:
    """Per point (points,): the category a phase diagram colours it by — the predicted geometry
    (``geometry`` column) where at least half the runs reached the predicted optimum, else the most
    frequent other outcome — and {category: (colour, legend name)}."""
    labels = table_labels(table)
    ref = _reference_label(labels)
    m = len(table[f"{ref}_fraction"])
    frac = np.asarray(table[f"{ref}_fraction"], np.float64)
    geo = np.asarray(table["geometry"], dtype=object) if "geometry" in table else np.full(m, None, dtype=object)
    geo = np.asarray([ref if g is None or g == "" else str(g) for g in geo.tolist()], dtype=str)
    others = [lb for lb in labels if lb != ref]
    counts = np.stack([np.asarray(table.get(f"{lb}_count", np.zeros(m)), np.float64) for lb in others], axis=1)
    cat = np.where(frac >= 0.5, np.char.add("geometry:", geo), np.asarray(others)[np.argmax(counts, axis=1)])
    legend = {}
    for c in dict.fromkeys(cat.tolist()):
        if c.startswith("geometry:"):
            g = c.split(":", 1)[1]
            name = "reached: " + GEOMETRY_NAMES.get(g, g)
            legend[c] = (GEOMETRY_COLORS.get(g, OKABE_ITO["sky"]), name)
        else:
            legend[c] = (COLORS[c], f"most runs: {c.replace('_', ' ')}")
    return cat, legend


def _short(v: float) -> str:
    return "1" if v >= 1 else "0" if v <= 0 else f"{v:.2f}".lstrip("0")


def _phase_cells(ax, table, x, y, xs, ys, xlog, ylog):
    """Colour the (x, y) cells by what the runs reached and label each k/n with its interval."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cat, legend = _reached(table)
    keys = list(legend)
    idx = np.full((ys.size, xs.size), np.nan)
    cells = {}
    xv, yv = np.asarray(table[x], np.float64), np.asarray(table[y], np.float64)
    for p, (xi, yi) in enumerate(zip(xv, yv)):
        i, j = np.searchsorted(ys, yi), np.searchsorted(xs, xi)
        idx[i, j] = keys.index(cat[p])
        cells[i, j] = p
    cmap = ListedColormap([legend[k][0] for k in keys])
    ax.pcolormesh(_edges(xs, xlog), _edges(ys, ylog), np.ma.masked_invalid(idx), cmap=cmap, vmin=-0.5,
                  vmax=len(keys) - 0.5, shading="flat", edgecolors="white", linewidth=0.5)
    ax.grid(False)
    if idx.size <= 64:
        runs = np.asarray(table["runs"])
        ref = _reference_label(table_labels(table))
        count = np.asarray(table[f"{ref}_count"])
        lo, hi = np.asarray(table[f"{ref}_ci_low"], np.float64), np.asarray(table[f"{ref}_ci_high"], np.float64)
        small = 6 if max(xs.size, ys.size) <= 5 else 5
        for (i, j), p in cells.items():
            dark = legend[cat[p]][0] in (OKABE_ITO["blue"], OKABE_ITO["purple"], OKABE_ITO["vermillion"],
                                         OKABE_ITO["black"])
            colour = legend[cat[p]][0]
            ax.text(xs[j], ys[i], f"{int(count[p])}/{int(runs[p])}\n[{_short(lo[p])}, {_short(hi[p])}]",
                    ha="center", va="center", fontsize=small, linespacing=1.1, zorder=5,
                    color="white" if dark else "black",
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.6, "alpha": 0.9})
    return [Patch(facecolor=legend[k][0], edgecolor="none", label=legend[k][1]) for k in keys]


def _boundary(ax, K, n, ex, xlog):
    """The c = 1 curve λ_W λ_H = 1/(K² n) over the x range ``ex`` (symmetric in λ_W, λ_H)."""
    grid = np.geomspace(ex[0], ex[-1], 200) if xlog else np.linspace(ex[0], ex[-1], 200)
    grid = grid[grid > 0]
    curve = 1.0 / (K * K * n * grid)
    ax.plot(grid, curve, color="white", lw=3.0, zorder=3)
    (line,) = ax.plot(grid, curve, color="black", ls="--", lw=1.2, zorder=4, label="c = 1")
    return line


def _w_panel(ax, table: dict) -> None:
    """‖W‖_F² √(λ_W/λ_H) of the runs' states (median, 10–90% bars) against c, with the theory's."""
    c = np.asarray(table["c"], np.float64)
    scale = np.sqrt(np.asarray(table["lambda_w"], np.float64) / np.asarray(table["lambda_h"], np.float64))
    med, p10, p90 = (np.asarray(table[k], np.float64) * scale for k in ("w_sq_median", "w_sq_p10", "w_sq_p90"))
    ax.errorbar(c, med, yerr=[np.clip(med - p10, 0, None), np.clip(p90 - med, 0, None)], fmt="o", ms=3,
                color=OKABE_ITO["blue"], elinewidth=0.8, capsize=1.5, zorder=3,
                label="runs: median, 10–90%")
    curve = _theory_w_curve(table, np.geomspace(c.min() / 1.3, c.max() * 1.3, 300))
    if curve is not None:
        ax.plot(*curve, color="black", lw=1.0, zorder=2, label="theory")
    ax.axvline(1.0, color="black", ls="--", lw=1.0, label="c = 1")
    log_axis(ax, "x")
    ax.set_xlabel(r"$c = K\sqrt{n\lambda_W\lambda_H}$")
    ax.set_ylabel(r"$\|W\|_F^2\,\sqrt{\lambda_W/\lambda_H}$")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=3, handlelength=1.6, borderaxespad=0.0,
              columnspacing=1.0)


def _theory_w_curve(table: dict, cs: np.ndarray):
    """(c, ‖W‖_F² √(λ_W/λ_H)) of the predicted optimum on the diagonal λ_W = λ_H (the quantity
    depends on c alone), or None when the table's problem cannot be rebuilt."""
    try:
        from ncflow.maths.theory import predict
        from ncflow.problem import Problem

        K, d, n = (table_const(table, k) for k in ("K", "d", "n"))
        extra = {k: table_const(table, k) for k in ("lambda_b", "bias") if table_const(table, k) is not None}
        ys = []
        for c in cs:
            lam = float(c) / (K * math.sqrt(n))
            p = Problem(K=K, d=d, n=n, lambda_w=lam, lambda_h=lam, dtype="float64", **extra)
            ys.append(K * predict(p, dense=False).w_norm ** 2)
        return cs, np.asarray(ys)
    except (TypeError, ValueError, ImportError):
        return None


def phase_figure(table: dict, x: str, y: str, K: int | None = None, n: int | None = None,
                 title: str | None = None):
    """A phase diagram on the (x, y) grid of a sweep table (summary.csv's columns, (points,)).

    Cells are coloured by the geometry the runs reached (the predicted optimum's — simplex ETF below
    c = 1, the zero solution past it — where at least half of them reach it, else their most frequent
    outcome) and labelled ``k/n [low, high]``: runs reaching the predicted optimum and its 95% Wilson
    interval. With x, y = λ_W, λ_H (either order) and K, n given, the theory's c = 1 curve
    λ_W λ_H = 1/(K² n) is drawn. When the table holds the runs' ‖W‖_F² (``w_sq_*``, from
    :func:`sweep_columns`) and the runs ran to convergence (``stop`` = "converged"), a second panel
    shows ‖W‖_F² √(λ_W/λ_H) — a function of c alone — against c with the theory's curve."""
    plt = pyplot()
    xv, yv = np.asarray(table[x], np.float64), np.asarray(table[y], np.float64)
    xs, ys = np.unique(xv), np.unique(yv)
    xlog, ylog = _use_log(xs), _use_log(ys)
    lam = {x, y} == {"lambda_w", "lambda_h"}
    w_panel = (lam and all(k in table for k in ("w_sq_median", "w_sq_p10", "w_sq_p90", "c"))
               and table_const(table, "stop") == "converged")
    with style():
        if w_panel:
            fig, (ax, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH, 5.6), height_ratios=(1.35, 1))
        else:
            fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.4))
        handles = _phase_cells(ax, table, x, y, xs, ys, xlog, ylog)
        if xlog:
            log_axis(ax, "x")
        if ylog:
            log_axis(ax, "y")
        ex, ey = _edges(xs, xlog), _edges(ys, ylog)
        if lam and K and n:
            handles.append(_boundary(ax, K, n, ex, xlog))
        ax.set_xlim(ex[0], ex[-1])
        ax.set_ylim(ey[0], ey[-1])
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2, handlelength=1.4,
                  columnspacing=1.0, borderaxespad=0.0, title="cells: k/n runs reached the predicted optimum\n"
                  "[its 95% Wilson interval]", alignment="left")
        if w_panel:
            _w_panel(ax2, table)
        suptitle(fig, title or "Phase diagram: the geometry gradient descent reaches", describe_table(table))
    return fig


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _certificate_note(summary: dict | None) -> str | None:
    """A line saying that the history ends where runs were certified, or None."""
    if not summary or summary.get("stop_rule") != "certified":
        return None
    cert = summary.get("certified") or {}
    stopped = int(cert.get("stopped_there") or 0)
    if stopped == 0:
        return None
    runs = summary.get("runs")
    return (f"{stopped}{f' of {runs}' if runs else ''} runs stopped when certified to converge to the "
            "optimum (★): their curves end there, not at the limit")


def convergence_figure(history: dict, title: str | None = None, summary: dict | None = None):
    """Median (a marker at every recorded step) and 10–90% band over runs of |f − f*|, NC1, NC2,
    NC3 against steps (log axes, the start drawn at step 1). ``history``: ``step (records,)`` and
    arrays (records, runs) ``gap``, ``nc1``, ``nc2``, ``nc3``. ``summary`` (``Result.summary()`` or
    summary.json) adds the problem, dtype, c, runs and stop rule to the title and, when runs stopped
    at their certificate, marks the last record and says that the curves end there."""
    plt = pyplot()
    steps = np.asarray(history["step"], np.float64)
    gap = np.asarray(history["gap"])
    runs = gap.shape[1] if gap.ndim == 2 else 1
    note = _certificate_note(summary)
    panels = (("gap", "objective gap $|f - f^*|$"), ("nc1", "NC1"), ("nc2", "NC2"), ("nc3", "NC3"))
    x = np.maximum(steps, 1.0)  # the start (step 0) is drawn at step 1 on the log axis
    with style():
        fig, axes = plt.subplots(2, 2, figsize=(COLUMN_WIDTH, 3.5), sharex=True)
        for ax, (key, name) in zip(axes.flat, panels):
            v = np.abs(np.asarray(history[key], np.float64)).reshape(steps.size, -1)
            v = np.where(np.isfinite(v), v, np.nan)
            with np.errstate(all="ignore"), _quiet():
                med = np.nanmedian(v, axis=1)
                lo, hi = np.nanpercentile(v, 10, axis=1), np.nanpercentile(v, 90, axis=1)
            ax.set_title(name, pad=2)
            if not np.any(v > 0):  # nothing a log axis can show: say that every record is 0
                ax.plot(x, np.zeros_like(x), color=OKABE_ITO["blue"], lw=1.0, marker="o", ms=2.2)
                ax.text(0.5, 0.6, "0 at every record", transform=ax.transAxes, ha="center")
                ax.set_ylim(-1.0, 1.0)
                ax.set_yticks([0.0])
                log_axis(ax, "x")
                continue
            floor = np.nanmin(v[v > 0])
            clip = lambda a, floor=floor: np.maximum(a, floor)  # noqa: E731 - log axes cannot show 0
            ax.fill_between(x, clip(lo), clip(hi), alpha=0.3, color=OKABE_ITO["sky"], lw=0,
                            label="10–90% of runs")
            ax.plot(x, clip(med), color=OKABE_ITO["blue"], lw=1.0, marker="o", ms=2.2,
                    label="median (● a record)")
            if note:
                ax.plot(x[-1:], clip(med[-1:]), ls="none", marker="*", ms=7, color=OKABE_ITO["vermillion"],
                        zorder=4, label="certified")
            log_axis(ax, "both")
        for ax in axes[1]:
            ax.set_xlabel("step (start at 1)")
        h, lab = max((a.get_legend_handles_labels() for a in axes.flat), key=lambda hl: len(hl[0]))
        fig.legend(h, lab, loc="outside lower center", ncols=3 if note else 2, handlelength=1.5,
                   columnspacing=0.8)
        about = describe_summary(summary) if summary else f"{runs} runs"
        if note:
            about += "\n" + note
        suptitle(fig, title or "Convergence", about)
    return fig
