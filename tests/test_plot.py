"""ncflow.plot and `ncflow plot`: figures of sweeps and results are written as real images that a
reader can use.

An image passes when it is a PNG (signature), larger than a few KB, and not a single colour. A
figure passes when, after a draw: every log or symlog axis shows at least two labelled ticks in view
(or hides its labels because it shares them with an axis that shows them), every fraction is drawn
with its 95% interval, the number of runs is in its text, legends lie outside every axes, and it is
one column wide; the default formats write a PDF beside each PNG.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ncflow import io as nio
from ncflow.cli.app import main
from ncflow.outcomes import LABELS
from ncflow.sweep.run import run_sweep

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_bytes=5_000):
    import matplotlib.image

    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    flat = img.reshape(-1, img.shape[2])
    assert len(np.unique(flat[:: max(1, len(flat) // 20000)], axis=0)) > 10, f"{path} is (nearly) one colour"


def _table(param, values, runs=20, seed=0):
    """A synthetic summary.csv table: global fraction rising with the parameter."""
    rng = np.random.default_rng(seed)
    m = len(values)
    glob = np.linspace(0, runs, m).round().astype(int)
    sad = rng.integers(0, runs - glob + 1)
    nc = runs - glob - sad
    t = {"point": np.arange(m), param: np.asarray(values), "runs": np.full(m, runs), "K": np.full(m, 4),
         "n": np.full(m, 5), "d": np.full(m, 4), "c": np.full(m, 0.5), "dtype": np.full(m, "float32"),
         "stop": np.full(m, "converged")}
    from ncflow.stats import wilson_interval

    for label, c in zip(LABELS, (glob, sad, np.zeros(m, int), nc, np.zeros(m, int))):
        lo, hi = wilson_interval(c, runs)
        t.update({f"{label}_count": c, f"{label}_fraction": c / runs, f"{label}_ci_low": lo,
                  f"{label}_ci_high": hi})
    return t


def test_figures_from_synthetic_tables(tmp_path):
    from ncflow import plot

    t = _table("lambda_w", [1e-4, 1e-3, 1e-2, 1e-1])
    files = plot.save_figure(plot.fractions_figure(t, "lambda_w"), str(tmp_path / "frac"), ("png", "pdf"))
    assert [os.path.basename(f) for f in files] == ["frac.png", "frac.pdf"]
    assert_real_png(files[0])
    assert open(files[1], "rb").read(5) == b"%PDF-"
    lw, lh = np.meshgrid([1e-3, 1e-2, 1e-1], [1e-3, 1e-2, 1e-1])
    t2 = _table("lambda_w", lw.ravel())
    t2["lambda_h"] = lh.ravel()
    files = plot.save_figure(plot.phase_figure(t2, "lambda_w", "lambda_h", K=4, n=5), str(tmp_path / "ph"), ("png",))
    assert_real_png(files[0])
    steps = np.array([0, 100, 200, 400, 800, 1600])
    R = 12
    decay = np.exp(-steps / 300.0)[:, None] * np.linspace(0.5, 2, R)[None, :]
    hist = {"step": steps, "gap": decay, "nc1": decay**2, "nc2": decay, "nc3": 0.5 * decay}
    files = plot.save_figure(plot.convergence_figure(hist), str(tmp_path / "conv"), ("png",))
    assert_real_png(files[0])


def test_one_swept_parameter_gives_the_fractions_plot(tmp_path):
    from ncflow.plot import plot_directory

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    t = _table("init_scale", [0.25, 0.5, 1.0, 2.0])
    nio.write_table_csv(sweep / "summary.csv", t)
    nio.write_json(sweep / "manifest.json", {"format": "ncflow-sweep/1", "swept": ["init_scale"]})
    files = plot_directory(sweep, formats=("png",))
    assert files == [str(sweep / "fractions_init_scale.png")]
    assert_real_png(files[0])


def test_small_sweep_plots_phase_diagram_and_convergence(tmp_path, capsys):
    raw = {"problem": {"K": 3, "d": 3, "n": 2, "dtype": "float64"},
           "solver": {"runs": 4, "max_steps": 3000, "engine": "full", "history": True},
           "grid": {"lambda_w": [2e-2, 0.4], "lambda_h": [2e-2, 0.4]}}
    out = tmp_path / "sweep"
    run_sweep(raw, out)
    assert main(["plot", str(out), "--json", "--format", "png"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    names = sorted(os.path.relpath(f, out) for f in files)
    assert names == sorted(["phase_lambda_w_lambda_h.png"]
                           + [f"points/000{i}/convergence.png" for i in range(4)])
    for f in files:
        if f.endswith(".png"):
            assert_real_png(f)
        else:
            assert open(f, "rb").read(5) == b"%PDF-" and os.path.getsize(f) > 5_000
    # a single result with history (ncflow run --out DIR --history) gets its convergence plot
    assert main(["plot", str(out / "points/0000"), "--format", "png"]) == 0
    assert capsys.readouterr().out.strip().endswith("convergence.png")


def test_plot_errors_exit_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "neither a sweep" in capsys.readouterr().err


def test_import_ncflow_does_not_import_matplotlib():
    code = ("import sys, ncflow, ncflow.sweep, ncflow.plot, ncflow.cli.sweep, ncflow.features, ncflow.cli.app; "
            "ncflow.cli.app.build_parser(); assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- what a reader needs


def _tick_labels(axis):
    """The non-empty, visible major tick labels of ``axis`` inside its view (after a draw)."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    return [t.label1.get_text() for t in axis.get_major_ticks()
            if t.get_loc() is not None and lo - tol <= t.get_loc() <= hi + tol
            and t.label1.get_visible() and t.label1.get_text().strip()]


def _labels_off(axis):
    return not any(t.label1.get_visible() for t in axis.get_major_ticks())


def assert_readable_log_axes(fig):
    """Every log/symlog axis of ``fig`` shows >= 2 labelled ticks, or hides its labels and shares
    them with an axis that does. Returns how many log axes were checked."""
    fig.canvas.draw()
    checked = 0
    for ax in fig.axes:
        for which in ("x", "y"):
            axis = getattr(ax, f"{which}axis")
            if axis.get_scale() not in ("log", "symlog"):
                continue
            checked += 1
            if _labels_off(axis):
                shared = getattr(ax, f"get_shared_{which}_axes")().get_siblings(ax)
                assert any(len(_tick_labels(getattr(o, f"{which}axis"))) >= 2 for o in shared if o is not ax), \
                    f"{which} axis of {ax.get_title()!r}: labels off and no sibling shows them"
            else:
                labels = _tick_labels(axis)
                assert len(labels) >= 2, f"{which} axis of {ax.get_title()!r} ({axis.get_view_interval()}): {labels}"
                assert len(set(labels)) == len(labels), labels
    return checked


def assert_legends_off_the_data(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "no legend"
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend {leg.get_title().get_text()!r} on axes"


def _all_text(fig):
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and callable(a.get_text)))


@pytest.mark.parametrize("lo, hi", [(0.42, 0.45), (0.4, 0.8), (0.65, 3.0), (50, 3000), (1e-34, 1e3), (0.7, 0.75),
                                    (1, 10), (2e-7, 9e-7)])
def test_log_ticks_label_at_least_two_values_on_any_range(lo, hi):
    from ncflow import plot

    ticks = plot.log_ticks(lo, hi)
    inside = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
    assert 2 <= inside.size <= 9, (lo, hi, ticks)
    labels = plot.ReadableLogFormatter().format_ticks(list(inside))
    assert all(lb.strip() for lb in labels) and len(set(labels)) == len(labels), labels


def test_convergence_figure_reads_within_one_decade_and_marks_the_certificate():
    """NC2 that stays inside one decade (the panel that had no tick labels) gets labelled ticks; the
    median carries a marker per record; a certified history says where it ends; runs in the title."""
    from ncflow import plot

    steps = np.array([0, 100, 200, 300])
    R = 7
    spread = np.linspace(0.9, 1.1, R)[None, :]
    hist = {"step": steps, "gap": np.exp(-steps / 30.0)[:, None] * spread,
            "nc1": np.exp(-steps / 5.0)[:, None] * spread, "nc2": (0.7 - steps / 3000)[:, None] * spread,
            "nc3": (0.9 - steps / 2000)[:, None] * spread}
    summary = {"problem": {"K": 4, "d": 4, "n": 5, "lambda_w": 0.1, "lambda_h": 0.1, "dtype": "float64"},
               "theory": {"c": 0.894}, "runs": R, "stop_rule": "certified",
               "certified": {"count": R, "stopped_there": R, "step": {"median": 300.0}}}
    fig = plot.convergence_figure(hist, summary=summary)
    assert assert_readable_log_axes(fig) == 8
    assert_legends_off_the_data(fig)
    text = _all_text(fig)
    assert f"{R} runs" in text and "stop: certified" in text and "float64" in text and "c = 0.894" in text
    assert "certified" in text and "end there" in text
    for ax in fig.axes:
        medians = [ln for ln in ax.get_lines() if ln.get_label().startswith("median")]
        assert len(medians) == 1 and medians[0].get_marker() not in (None, "None", "", " ")
        assert any(ln.get_marker() == "*" for ln in ax.get_lines())  # the certified end
    assert fig.get_figwidth() == pytest.approx(plot.COLUMN_WIDTH)
    # without a certificate the note and the star are absent
    fig2 = plot.convergence_figure(hist, summary={**summary, "stop_rule": "converged"})
    assert "end there" not in _all_text(fig2)
    assert not any(ln.get_marker() == "*" for ax in fig2.axes for ln in ax.get_lines())


def _errorbar_series(ax):
    from matplotlib.container import ErrorbarContainer

    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


@pytest.mark.parametrize("param, values, scale", [("lambda_w", [1e-4, 1e-3, 1e-2, 1e-1], "log"),
                                                  ("init_scale", [0.0, 1e-4, 1e-2, 0.3, 1.0, 3.0], "symlog"),
                                                  ("lr", [0.5, 1.0, 1.5, 2.0], "linear"),
                                                  ("point", list(range(120)), "linear")])
def test_fractions_figure_every_fraction_has_its_interval(param, values, scale):
    from ncflow import plot

    t = _table(param, values, runs=30)
    fig = plot.fractions_figure(t, param)
    ax = fig.axes[0]
    assert ax.xaxis.get_scale() == scale
    shown = [lb for lb in LABELS if lb == "global" or np.any(t[f"{lb}_count"] > 0)]
    series = _errorbar_series(ax)
    assert len(series) == len(shown)
    for s in series:
        assert s.has_yerr
        data_line, _caps, (bars,) = s.lines
        assert len(bars.get_segments()) == len(values)
    # the bars span the Wilson intervals: the longest bar of `global` is its widest interval
    glob = series[0]
    seg = glob.lines[2][0].get_segments()
    lengths = sorted(abs(s_[1][1] - s_[0][1]) for s_ in seg)
    widths = sorted(t["global_ci_high"] - t["global_ci_low"])
    np.testing.assert_allclose(lengths, widths, atol=1e-12)
    assert_readable_log_axes(fig)
    assert_legends_off_the_data(fig)
    text = _all_text(fig)
    assert "30 runs per point" in text and "stop: converged" in text and "float32" in text and "c = 0.5" in text
    assert "95%" in text


def _lambda_table(K=4, n=5, runs=20, w=False):
    lw, lh = np.meshgrid(np.geomspace(1e-2, 0.5, 4), np.geomspace(1e-2, 0.5, 4))
    t = _table("lambda_w", lw.ravel(), runs=runs)
    t["lambda_h"] = lh.ravel()
    c = K * np.sqrt(n * t["lambda_w"] * t["lambda_h"])
    t["c"] = c
    t["geometry"] = np.where(c < 1, "simplex_etf", "zero")
    if w:
        pred = np.clip(1 - c, 0, None) * (K - 1) * np.sqrt(n) / np.sqrt(t["lambda_w"] / t["lambda_h"])
        t["w_sq_median"], t["w_sq_p10"], t["w_sq_p90"] = pred, 0.9 * pred, 1.1 * pred
    return t


def test_phase_figure_shows_the_transition_with_intervals():
    """Cells are coloured by the geometry reached, so c < 1 and c >= 1 differ even where every run
    reached its own optimum; each cell says k/n and its interval; the c = 1 curve is drawn."""
    from ncflow import plot

    t = _lambda_table()
    for k in ("global", "saddle", "not_converged"):
        t[f"{k}_count"] = np.where(k == "global", 20, 0) * np.ones(16, int)
    t["global_fraction"] = np.ones(16)
    t["global_ci_low"], t["global_ci_high"] = (np.full(16, v) for v in wilson_bounds(20, 20))
    fig = plot.phase_figure(t, "lambda_w", "lambda_h", K=4, n=5)
    ax = fig.axes[0]
    mesh = [c for c in ax.collections if hasattr(c, "get_array") and c.get_array() is not None][0]
    cells = np.asarray(mesh.get_array()).reshape(4, 4)  # rows: λ_H, columns: λ_W
    c_grid = 4 * np.sqrt(5 * np.outer(np.geomspace(1e-2, 0.5, 4), np.geomspace(1e-2, 0.5, 4)))
    assert len(np.unique(cells[c_grid < 1])) == 1 and len(np.unique(cells[c_grid >= 1])) == 1
    assert np.unique(cells[c_grid < 1])[0] != np.unique(cells[c_grid >= 1])[0]
    labels = [tx.get_text() for tx in ax.texts]
    assert len(labels) == 16 and all(lb.startswith("20/20\n[.84, 1]") for lb in labels), labels
    assert any(ln.get_label() == "c = 1" for ln in ax.get_lines())
    text = _all_text(fig)
    assert "simplex ETF" in text and "zero solution" in text and "20 runs per point" in text
    assert_readable_log_axes(fig)
    assert_legends_off_the_data(fig)
    assert len(fig.axes) == 1  # no ‖W‖² columns: one panel


def wilson_bounds(k, n):
    from ncflow.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return float(lo), float(hi)


def test_phase_figure_compares_the_weights_with_the_theory_when_runs_converged():
    from ncflow import plot

    t = _lambda_table(w=True)
    fig = plot.phase_figure(t, "lambda_w", "lambda_h", K=4, n=5)
    assert len(fig.axes) == 2
    ax2 = fig.axes[1]
    theory = [ln for ln in ax2.get_lines() if ln.get_label() == "theory"]
    assert len(theory) == 1
    cs, ys = theory[0].get_data()
    np.testing.assert_allclose(ys, np.clip(1 - cs, 0, None) * 3 * np.sqrt(5), rtol=1e-9, atol=1e-12)
    assert any(ln.get_label() == "c = 1" for ln in ax2.get_lines())
    assert len(_errorbar_series(ax2)) == 1
    assert_readable_log_axes(fig)
    assert_legends_off_the_data(fig)
    # a certified stop leaves the runs short of their limit: no comparison panel
    t["stop"] = np.full(16, "certified")
    assert len(plot.phase_figure(t, "lambda_w", "lambda_h", K=4, n=5).axes) == 1


def test_default_formats_write_a_pdf_beside_every_png(tmp_path):
    from ncflow.plot import plot_directory

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    nio.write_table_csv(sweep / "summary.csv", _table("init_scale", [0.0, 1e-3, 0.1, 1.0]))
    nio.write_json(sweep / "manifest.json", {"format": "ncflow-sweep/1", "swept": ["init_scale"]})
    files = plot_directory(sweep)
    pngs = [f for f in files if f.endswith(".png")]
    assert pngs and sorted(files) == sorted(pngs + [f[:-4] + ".pdf" for f in pngs])
    for f in files:
        assert os.path.exists(f)
        assert open(f, "rb").read(5) == b"%PDF-" if f.endswith(".pdf") else assert_real_png(f) is None


# --------------------------------------------------------------------------- other models' tables


def _label_table(param, values, counts: dict, runs=20):
    """A synthetic summary table with the given {label: counts (points,)} columns, in that order."""
    from ncflow.stats import wilson_interval

    m = len(values)
    t = {"point": np.arange(m), param: np.asarray(values), "runs": np.full(m, runs), "K": np.full(m, 4),
         "n": np.full(m, 5), "d": np.full(m, 4), "c": np.full(m, 0.5), "dtype": np.full(m, "float64"),
         "stop": np.full(m, "converged")}
    for name, c in counts.items():
        c = np.asarray(c)
        lo, hi = wilson_interval(c, runs)
        t.update({f"{name}_count": c, f"{name}_fraction": c / runs, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    return t


def _legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_a_relu_table_draws_its_own_labels(tmp_path):
    """A deep ReLU sweep's table (dnc, low_rank, other, ...) draws those series in their colours, and
    `ncflow plot` of such a sweep writes its fractions (no rank figure: ReLU runs have no rank)."""
    from ncflow import plot
    from ncflow.codes import RELU_LABELS

    counts = {"dnc": [2, 10, 18], "low_rank": [15, 8, 1], "other": [3, 0, 0], "not_converged": [0, 2, 1],
              "diverged": [0, 0, 0]}
    t = _label_table("init_scale", [0.1, 1.0, 10.0], counts)
    fig = plot.fractions_figure(t, "init_scale")
    ax = fig.axes[0]
    series = _errorbar_series(ax)
    drawn = [lb for lb in RELU_LABELS if lb == "dnc" or sum(counts[lb]) > 0]
    assert _legend_texts(fig) == [lb.replace("_", " ") for lb in drawn]
    from matplotlib.colors import to_hex

    assert [to_hex(s.lines[0].get_color()) for s in series] == [plot.COLORS[lb].lower() for lb in drawn]
    assert len({plot.COLORS[lb] for lb in plot.COLORS}) == len(plot.COLORS)  # every label its own colour
    assert len(set(plot.MARKERS.values())) == len(plot.MARKERS)
    lows = series[0].lines[2][0].get_segments()
    np.testing.assert_allclose([b[0][1] for b in lows], t["dnc_ci_low"], atol=1e-12)
    assert_legends_off_the_data(fig)
    sweep = tmp_path / "relu"
    sweep.mkdir()
    nio.write_table_csv(sweep / "summary.csv", t)
    nio.write_json(sweep / "manifest.json", {"format": "ncflow-sweep/1", "swept": ["init_scale"]})
    files = plot.plot_directory(sweep, formats=("png",))
    assert files == [str(sweep / "fractions_init_scale.png")]
    assert_real_png(files[0])
    # a 2-D ReLU sweep's phase diagram colours the cells by DNC
    lw, lh = np.meshgrid([1e-3, 1e-2], [1e-3, 1e-2])
    t2 = _label_table("lambda_w", lw.ravel(), {k: v + [v[-1]] for k, v in counts.items()})
    t2["lambda_h"] = lh.ravel()
    fig = plot.phase_figure(t2, "lambda_w", "lambda_h")
    assert "18/20" in _all_text(fig)


def _rank_table(values, counts, star, runs=20):
    t = _label_table("lambda_w", values, {f"rank{r}": c for r, c in enumerate(counts)}, runs)
    t["rank_star"] = np.asarray(star)
    return t


def test_ranks_figure_marks_the_global_rank():
    from ncflow import plot

    values = [1e-3, 1e-2, 1e-1, 1.0]
    counts = [[0, 1, 5, 20], [2, 4, 8, 0], [0, 0, 0, 0], [18, 15, 7, 0]]
    fig = plot.ranks_figure(_rank_table(values, counts, [3] * 4), "lambda_w")
    assert _legend_texts(fig) == ["rank 0", "rank 1", "rank 3 (global)"]  # rank 2: never reached, not global
    series = _errorbar_series(fig.axes[0])
    for s, r in zip(series, (0, 1, 3)):
        from ncflow.stats import wilson_interval

        lo, hi = wilson_interval(np.asarray(counts[r]), 20)
        seg = s.lines[2][0].get_segments()
        np.testing.assert_allclose([b[0][1] for b in seg], lo, atol=1e-12)
        np.testing.assert_allclose([b[1][1] for b in seg], hi, atol=1e-12)
    assert fig.axes[0].xaxis.get_scale() == "log"
    assert_readable_log_axes(fig)
    assert_legends_off_the_data(fig)
    colors = [s.lines[0].get_color() for s in series]
    assert len(set(colors)) == 3
    # the optimum's rank changes with λ_W (3 below c_glob, 0 past it): filled where global, open elsewhere
    fig = plot.ranks_figure(_rank_table(values, counts, [3, 3, 0, 0]), "lambda_w")
    assert "(global)" not in " ".join(_legend_texts(fig))
    assert "filled: the optimum's rank" in _all_text(fig)
    ax = fig.axes[0]
    filled = [ln for ln in ax.lines if ln.get_linestyle() == "None" and ln.get_marker() not in ("_", "|", "")]
    assert sorted(len(ln.get_xdata()) for ln in filled) == [2, 2]  # rank 0 at 0.1, 1; rank 3 at 1e-3, 1e-2
    with pytest.raises(ValueError, match="no rank"):
        plot.ranks_figure(_table("lambda_w", values), "lambda_w")

