"""ncflow.plot and `ncflow plot`: figures of sweeps and results are written as real images.

An image passes when it is a PNG (signature), larger than a few KB, and not a single colour.
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
         "n": np.full(m, 5)}
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
