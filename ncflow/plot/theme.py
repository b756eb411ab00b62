"""The house style of ncflow's figures, in one place; ncflow.plot's figures and the notebooks use it.

* :data:`STYLE`, :func:`style` (a context), :func:`use_style` (process-wide) — fonts and sizes for
  one column of a two-column paper (:data:`COLUMN_WIDTH`; :data:`PAGE_WIDTH` for both columns), the
  Okabe–Ito colour-blind-safe palette (:data:`PALETTE`; outcomes in :data:`COLORS`, :data:`MARKERS`;
  the ranks of a deep linear sweep in :func:`rank_style`),
  constrained layout, 300 dpi PNG and TrueType fonts in PDF;
* :func:`log_axis` — a log axis (a symlog one with ``linthresh``, for values that include 0) whose
  ticks stay readable on any range: :class:`ReadableLogLocator` keeps >= 2 labelled ticks in view
  (:func:`log_ticks`: decades; 1-2-5 or 1…9 within one decade; evenly spaced values on a shorter
  range) and :class:`ReadableLogFormatter` labels each of them;
* :func:`describe` (:func:`describe_table`, :func:`describe_summary`) — the line every title
  carries: problem, dtype, c, runs, stop rule; :func:`wrap_about` fits it to one column;
* :func:`fraction_errorbars` — fractions k/n with their 95% Wilson intervals;
* :func:`save_figure` — a figure as PNG and PDF side by side.

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ncflow import io as _io
from ncflow.stats import wilson_interval

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0  # inches: both columns
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
             "grey": "#999999"}
PALETTE = tuple(OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black", "yellow"))
#: a colour per outcome label (every label of ``ncflow.ALL_LABELS``; no two alike, so a table that
#: mixes models stays readable): the deep ReLU UFM's dnc / low_rank / other take the palette's blue,
#: sky and black
COLORS = {"global": OKABE_ITO["green"], "saddle": OKABE_ITO["orange"], "local_min": OKABE_ITO["vermillion"],
          "not_converged": OKABE_ITO["grey"], "diverged": OKABE_ITO["purple"], "dnc": OKABE_ITO["blue"],
          "low_rank": OKABE_ITO["sky"], "other": OKABE_ITO["black"]}
#: a marker per outcome label (no two alike)
MARKERS = {"global": "o", "saddle": "s", "local_min": "D", "not_converged": "v", "diverged": "X", "dnc": "P",
           "low_rank": "^", "other": "p"}
#: markers of the rank series (rank r takes ``RANK_MARKERS[r % 8]``), see :func:`rank_style`
RANK_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 8, "legend.frameon": False,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "errorbar.capsize": 2, "axes.linewidth": 0.6,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4, "ytick.minor.width": 0.4,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.axisbelow": True,
    "figure.figsize": (COLUMN_WIDTH, 2.6), "figure.dpi": 150, "savefig.dpi": 300,
    "figure.constrained_layout.use": True, "pdf.fonttype": 42, "ps.fonttype": 42,
}


def rank_style(r: int, top: int) -> tuple[str, str]:
    """(colour, marker) of the series of rank ``r`` among ranks 0..``top``: ranks are ordered, so
    their colours run along the colour-blind-safe sequential map viridis (dark for rank 0, stopping
    short of its pale yellow end), each with its own marker (:data:`RANK_MARKERS`)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    t = 0.0 if top <= 0 else r / top
    return to_hex(colormaps["viridis"](0.88 * t)), RANK_MARKERS[r % len(RANK_MARKERS)]


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here, when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _rc() -> dict:
    from cycler import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=list(PALETTE))}


def style():
    """A context in which new figures take the house style (``with style(): fig = ...``)."""
    import matplotlib

    return matplotlib.rc_context(_rc())


def use_style() -> None:
    """Make the house style matplotlib's default for this process (the notebooks call it once)."""
    import matplotlib

    matplotlib.rcParams.update(_rc())


def log_ticks(lo: float, hi: float, max_labels: int = 7) -> np.ndarray:
    """Tick positions in [lo, hi] (0 < lo < hi) for a log axis: at least two whenever the range
    is not degenerate: decades when three fit (thinned to at most ``max_labels``), else 1-2-5 or
    1…9 times a power of ten, else evenly spaced round values."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= 0:
        return np.zeros(0)
    lo = max(lo, hi * 1e-300)
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    eps = 1e-9

    def within(subs):
        t = np.array([m * 10.0**e for e in range(e0, e1 + 1) for m in subs])
        return t[(t >= lo * (1 - eps)) & (t <= hi * (1 + eps))]

    decades, fine = within((1.0,)), within((1.0, 2.0, 5.0))
    if decades.size >= 3 or (decades.size == 2 and fine.size > max_labels):
        if decades.size > max_labels:  # every k-th decade, at exponents divisible by k
            step = math.ceil(decades.size / max_labels)
            ex = np.round(np.log10(decades)).astype(int)
            decades = decades[ex % step == 0] if np.sum(ex % step == 0) >= 2 else decades[::step]
        return decades
    if fine.size >= 2:
        return fine
    ones = within(tuple(range(1, 10)))
    if ones.size >= 2:
        return ones if ones.size <= max_labels else ones[::2]
    from matplotlib.ticker import MaxNLocator

    t = MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    t = t[(t >= lo * (1 - eps)) & (t <= hi * (1 + eps)) & (t > 0)]
    return t if t.size >= 2 else np.array([lo, hi])


@functools.lru_cache(maxsize=None)
def _make_classes():
    """The two readable-log classes, made once (subclasses of matplotlib's Locator and Formatter,
    so matplotlib is imported only when a figure is drawn)."""
    from matplotlib.ticker import Formatter, Locator

    class ReadableLogLocator(Locator):
        """Major ticks of a log (or symlog: 0 plus the log part above ``linthresh``) axis with at
        least two ticks in view on any range (see :func:`log_ticks`); ``minor=True``: unlabelled
        2…9 ticks between decades when the majors are decades spanning at most 8 of them."""

        def __init__(self, linthresh: float | None = None, minor: bool = False):
            self.linthresh, self.minor = linthresh, minor

        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            lo, hi = min(vmin, vmax), max(vmin, vmax)
            zero = self.linthresh is not None and lo <= 0 <= hi
            if self.linthresh is not None:
                lo = max(lo, self.linthresh)
            major = log_ticks(lo, hi)
            if self.minor:
                ex = np.log10(major) if major.size else np.zeros(0)
                if major.size < 2 or not np.allclose(ex, np.round(ex)) or ex[-1] - ex[0] > 8 \
                        or np.any(np.diff(np.round(ex)) > 1):
                    return np.zeros(0)
                e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
                t = np.array([m * 10.0**e for e in range(e0, e1 + 1) for m in range(2, 10)])
                return t[(t >= lo) & (t <= hi)]
            return np.concatenate([[0.0], major]) if zero else major

    class ReadableLogFormatter(Formatter):
        """Labels every tick a :class:`ReadableLogLocator` gives: plain numbers (0.02, 5, 300) when
        every tick lies in [1e-3, 1e4), else powers of ten (10⁻³, 2×10⁻³); 0 as "0"."""

        def __init__(self):
            self.plain = True

        def set_locs(self, locs):
            super().set_locs(locs)
            nz = np.abs(np.asarray([v for v in locs if v != 0], np.float64))
            self.plain = bool(nz.size == 0 or (nz.min() >= 1e-3 and nz.max() < 1e4))

        def __call__(self, x, pos=None):
            if x == 0:
                return "0"
            if self.plain:
                return np.format_float_positional(x, precision=3, unique=True, fractional=False, trim="-")
            sign = "-" if x < 0 else ""
            e = math.floor(math.log10(abs(x)) + 1e-9)
            m = abs(x) / 10.0**e
            if abs(m - round(m)) < 1e-6:
                m = round(m)
            mant = "" if m == 1 else f"{m:.3g}\\times"
            return f"${sign}{mant}10^{{{e}}}$"

    return ReadableLogLocator, ReadableLogFormatter


def log_axis(ax, which: str = "y", linthresh: float | None = None) -> None:
    """Put ``ax``'s ``which`` ("x", "y" or "both") axis on a log scale — symlog with linear part
    [0, ``linthresh``] when ``linthresh`` is given (values that include 0) — with readable ticks
    (:class:`ReadableLogLocator`, :class:`ReadableLogFormatter`): at least two labelled ticks in
    view whatever the range, unlabelled minor ticks between decades."""
    from matplotlib.ticker import NullFormatter

    locator, formatter = _make_classes()
    for w in ("x", "y") if which == "both" else (which,):
        axis = ax.xaxis if w == "x" else ax.yaxis
        setter = ax.set_xscale if w == "x" else ax.set_yscale
        if linthresh is None:
            setter("log")
        else:
            setter("symlog", linthresh=linthresh, linscale=1.0)
        axis.set_major_locator(locator(linthresh))
        axis.set_major_formatter(formatter())
        axis.set_minor_locator(locator(linthresh, minor=True))
        axis.set_minor_formatter(NullFormatter())


def _span(values) -> str | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=1e-6) else f"{lo:.3g}–{hi:.3g}"


def describe(*, K=None, d=None, n=None, dtype=None, c=None, runs=None, stop=None, per_point: bool = False,
             extra: str | None = None) -> str:
    """The line a title carries: ``"K=10 d=10 n=20 · float32 · c = 0.45 · 50 runs per point · stop:
    converged"``; a part whose value is None is left out. ``c``: a number or values (shown as their
    range); ``runs``: an int or values (their range)."""
    parts = []
    shape = " ".join(f"{k}={v}" for k, v in (("K", K), ("d", d), ("n", n)) if v is not None)
    if shape:
        parts.append(shape)
    if dtype:
        parts.append(str(dtype))
    if c is not None:
        cs = _span(np.atleast_1d(c))
        if cs:
            parts.append(f"c = {cs}")
    if runs is not None:
        r = np.atleast_1d(np.asarray(runs))
        rs = str(int(r[0])) if np.all(r == r[0]) else f"{int(r.min())}–{int(r.max())}"
        parts.append(f"{rs} {'run' if rs == '1' else 'runs'}" + (" per point" if per_point else ""))
    if stop:
        parts.append(f"stop: {stop}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def table_const(table: dict, key: str):
    """The one value column ``key`` of ``table`` holds at every point (int, str or float), or None
    when the column is missing or its values differ."""
    if key not in table:
        return None
    v = np.unique(np.asarray(table[key]))
    if v.size != 1:
        return None
    x = v[0]
    return int(x) if isinstance(x, (np.integer, int)) else (str(x) if isinstance(x, (str, np.str_)) else x)


def describe_table(table: dict) -> str:
    """:func:`describe` of a sweep table (summary.csv's columns; ``stop`` and ``dtype`` when
    :func:`sweep_columns` added them): the values shared by every point, c's range, runs per point."""
    return describe(K=table_const(table, "K"), d=table_const(table, "d"), n=table_const(table, "n"),
                    dtype=table_const(table, "dtype"), c=table.get("c"), runs=table.get("runs"),
                    stop=table_const(table, "stop"), per_point=True)


def describe_summary(summary: dict) -> str:
    """:func:`describe` of a result's summary (``Result.summary()`` or summary.json)."""
    p = summary.get("problem", {})
    return describe(K=p.get("K"), d=p.get("d"), n=p.get("n"), dtype=p.get("dtype"),
                    c=summary.get("theory", {}).get("c"), runs=summary.get("runs"), stop=summary.get("stop_rule"))


def fraction_errorbars(ax, x, counts, total, *, offset_points: float = 0.0, **kw):
    """Fractions ``counts / total`` at ``x`` with their 95% Wilson intervals as error bars (all
    arrays of shape (points,), ``total`` may be a scalar). ``offset_points`` shifts the points
    sideways by that many typographic points (to dodge overlapping series on any axis scale);
    ``kw`` goes to ``ax.errorbar``. Returns the ErrorbarContainer."""
    counts = np.asarray(counts, np.float64)
    total = np.broadcast_to(np.asarray(total, np.float64), counts.shape)
    f = np.where(total > 0, counts / np.where(total > 0, total, 1), np.nan)
    lo, hi = wilson_interval(counts, total)
    return interval_errorbars(ax, x, f, lo, hi, offset_points, **kw)


def interval_errorbars(ax, x, f, lo, hi, offset_points: float = 0.0, **kw):
    """Values ``f`` at ``x`` with error bars from ``lo`` to ``hi`` (all (points,)), shifted sideways by
    ``offset_points`` typographic points; the points still enter the data limits. ``kw`` goes to
    ``ax.errorbar``. Returns the ErrorbarContainer."""
    from matplotlib.transforms import offset_copy

    f, lo, hi = (np.asarray(a, np.float64) for a in (f, lo, hi))
    tr = offset_copy(ax.transData, fig=ax.figure, x=offset_points, y=0, units="points") if offset_points else None
    kw.setdefault("capsize", 2)
    kw.setdefault("elinewidth", 0.8)
    if tr is not None:  # an offset transform does not enter the data limits: enter the points
        x_ = np.asarray(x, np.float64)
        ax.update_datalim(np.column_stack([np.concatenate([x_, x_]), np.concatenate([lo, hi])]))
    return ax.errorbar(x, f, yerr=[np.clip(f - lo, 0, None), np.clip(hi - f, 0, None)],
                       **({"transform": tr} if tr is not None else {}), **kw)


def wrap_about(about: str, width: int = 60) -> str:
    """``about`` (a :func:`describe` line) broken at its " · " separators, and longer parts at
    spaces, into lines of at most ``width`` characters (60 fit one column at the house style's 8 pt)."""
    import textwrap

    lines = []
    for para in about.split("\n"):
        cur = ""
        parts = [q for part in para.split(" · ") for q in (textwrap.wrap(part, width) or [""])]
        for part in parts:
            if cur and len(cur) + 3 + len(part) > width:
                lines.append(cur)
                cur = part
            else:
                cur = f"{cur} · {part}" if cur else part
        lines.append(cur)
    return "\n".join(lines)


def suptitle(fig, title: str, about: str | None = None, width: int = 60) -> None:
    """``fig``'s title: ``title`` on the first line, then ``about`` (a :func:`describe` line)
    wrapped by :func:`wrap_about` to ``width`` characters (60: one column; 125: both)."""
    fig.suptitle(title + (f"\n{wrap_about(about, width)}" if about else ""), fontsize=STYLE["figure.titlesize"])


def save_figure(fig, base: str, formats=("png", "pdf")) -> list[str]:
    """Save ``fig`` as ``base.<fmt>`` for each format (atomically; PNG at 300 dpi) and close it.
    The default writes a PDF beside the PNG."""
    import io as _bio

    out = []
    with style():
        for fmt in formats:
            buf = _bio.BytesIO()
            fig.savefig(buf, format=fmt)
            path = f"{base}.{fmt}"
            _io.atomic_write_bytes(path, buf.getvalue())
            out.append(path)
    pyplot().close(fig)
    return out


def __getattr__(name: str):
    """``ReadableLogLocator`` and ``ReadableLogFormatter``, made on first use (they subclass
    matplotlib's classes, and ``import ncflow.plot`` does not import matplotlib)."""
    if name in ("ReadableLogLocator", "ReadableLogFormatter"):
        return _make_classes()[name == "ReadableLogFormatter"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
