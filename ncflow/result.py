"""The one object a simulation returns, its summary, its files and its printed report."""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import numpy as np

from . import io as _io
from .outcomes import LABELS, Tolerances
from .problem import Problem
from .stats import wilson_interval
from .theory import Prediction

RESULT_FILES = ("summary.json", "config.json", "runs.csv")


class ResultExistsError(FileExistsError):
    """The output directory already holds a result that would be overwritten."""


def versions() -> dict:
    """Versions of ncflow, JAX, jaxlib, Python and the device kind, for manifests."""
    import jax
    import jaxlib

    from . import __version__

    return {"ncflow": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "device_count": jax.device_count()}


@dataclasses.dataclass
class Result:
    """Everything one batch of runs produced for one problem.

    Attributes:
        problem, prediction, tolerances: the problem, the theory's prediction and the
            tolerances used to stop and classify.
        config: the solver settings (JSON-ready dict).
        per_run: columns of shape (runs,): ``run``, ``outcome`` (str), ``steps``,
            ``objective``, ``gap``, ``grad_norm``, ``nc1``–``nc4``, ``nc2_uncentered``,
            ``within_between``, ``gram_error``, ``self_duality``, ``w_norm``, ``h_norm``,
            ``bias_error``, ``min_hessian_eig`` / ``max_hessian_eig`` (NaN where not computed).
        history: None, or ``step (records,)`` and ``objective``, ``gap``, ``grad_norm``, ``nc1``,
            ``nc2``, ``nc3`` of shape (records, runs), at log-spaced steps.
        timing: ``compile_s``, ``run_s``, ``classify_s``, ``wall_s``, ``run_steps``,
            ``run_steps_per_s``.
        final_state: the runs' final states, leading axis runs (Params or Collapsed of numpy arrays).
        representation: "full" or "collapsed".
        device: the device kind the runs used.
        to_params: the representation's state -> Params map (None after loading from files).
    """

    problem: Problem
    prediction: Prediction
    tolerances: Tolerances
    config: dict
    per_run: dict
    history: dict | None
    timing: dict
    final_state: Any
    representation: str
    device: str
    to_params: Any = None

    @property
    def runs(self) -> int:
        """Number of runs."""
        return len(self.per_run["outcome"])

    @property
    def outcome(self) -> np.ndarray:
        """Outcome label of every run, shape (runs,)."""
        return self.per_run["outcome"]

    def outcomes(self) -> dict:
        """For each label: ``count``, ``fraction`` and the 95% Wilson interval ``ci95``."""
        out = {}
        for label in LABELS:
            k = int(np.sum(self.outcome == label))
            lo, hi = wilson_interval(k, self.runs)
            out[label] = {"count": k, "fraction": k / self.runs, "ci95": [float(lo), float(hi)]}
        return out

    def final_objective(self) -> dict:
        """``min``, ``median``, ``max`` of the final objective over finite runs (None if none)."""
        f = self.per_run["objective"]
        f = f[np.isfinite(f)]
        if f.size == 0:
            return {"min": None, "median": None, "max": None}
        return {"min": float(f.min()), "median": float(np.median(f)), "max": float(f.max())}

    def final_params(self, i: int, exact: bool = False):
        """Run ``i``'s final ``Params(W (K, d), H (d, N), b (K,))``.

        A collapsed run keeps only class means and within-class scatter; by default its H is
        rebuilt up to a within-class orthogonal mixing of samples (``collapsed.expand``: every
        objective value, gradient norm, Hessian eigenvalue and NC metric is exact). With
        ``exact=True`` the run is replayed on the full representation from its own key for its
        recorded number of steps, which rebuilds its exact H (GD only).
        """
        import jax

        from .representations import COLLAPSED

        if exact and self.representation == "collapsed":
            from .engine import replay

            from .engine import Config

            fields = {k: v for k, v in self.config.items() if k in Config.__dataclass_fields__}
            return replay(self.problem, int(self.per_run["run"][i]), int(self.per_run["steps"][i]),
                          seed=int(self.config["seed"]), lr=float(self.config["lr"]),
                          init_scale=float(self.config["init_scale"]), config=Config(**fields))
        x = jax.tree_util.tree_map(lambda a: a[i], self.final_state)
        if self.to_params is not None:
            return self.to_params(self.problem, x)
        return COLLAPSED.to_params(self.problem, x) if self.representation == "collapsed" else x

    def summary(self) -> dict:
        """The JSON summary (the object ``ncflow run --json`` prints)."""
        med = {k: _median(self.per_run[k]) for k in ("nc1", "nc2", "nc3", "nc4", "gram_error", "grad_norm")}
        return {
            "theory": self.prediction.to_json(),
            "problem": self.problem.describe(),
            "runs": self.runs,
            "outcomes": self.outcomes(),
            "final_objective": self.final_objective(),
            "median_metrics": med,
            "timing": dict(self.timing),
            "engine": self.representation,
            "tolerances": self.tolerances.to_json(),
            "config": dict(self.config),
            "device": self.device,
        }

    def table(self) -> dict:
        """The per-run table as columns (a copy)."""
        return {k: np.asarray(v) for k, v in self.per_run.items()}

    def save(self, directory: str, overwrite: bool = False) -> None:
        """Write ``runs.csv`` (per run), ``summary.json``, ``config.json`` (full configuration and
        versions) and, with history, ``history.csv`` (long format), each atomically.

        Refuses (``ResultExistsError``) to replace an existing result unless ``overwrite``.
        """
        check_output_dir(directory, overwrite)
        os.makedirs(directory, exist_ok=True)
        _io.write_table_csv(os.path.join(directory, "runs.csv"), self.table())
        if self.history is not None:
            h = self.history
            R, S = self.runs, len(h["step"])
            cols = {"step": np.repeat(h["step"], R), "run": np.tile(np.arange(R), S)}
            cols.update({k: np.asarray(v).reshape(-1) for k, v in h.items() if k != "step"})
            _io.write_table_csv(os.path.join(directory, "history.csv"), cols)
        _io.write_json(os.path.join(directory, "config.json"),
                       {"problem": self.problem.describe(), "solver": self.config,
                        "tolerances": self.tolerances.to_json(), "versions": versions()})
        _io.write_json(os.path.join(directory, "summary.json"), self.summary())  # last: marks completion

    def report(self) -> str:
        """Human-readable report: prediction, outcome table with intervals, metrics, timing."""
        from .cli import format_prediction

        lines = ["Theory prediction", format_prediction(self.problem, self.prediction), ""]
        lines.append(f"Outcomes of {self.runs} runs ({self.representation} engine, {self.problem.dtype}, "
                     f"lr={self.config['lr']:.4g}, init scale {self.config['init_scale']:g}, "
                     f"budget {self.config['max_steps']} steps)")
        lines.append(f"  {'outcome':<14}{'count':>7}{'fraction':>10}   95% interval")
        for label, o in self.outcomes().items():
            lo, hi = o["ci95"]
            lines.append(f"  {label:<14}{o['count']:>7}{o['fraction']:>10.3f}   [{lo:.3f}, {hi:.3f}]")
        fo = self.final_objective()
        if fo["median"] is not None:
            lines.append("")
            lines.append(f"Final objective  min {fo['min']:.10g}  median {fo['median']:.10g}  max {fo['max']:.10g}"
                         f"   (f* = {self.prediction.objective:.10g})")
        m = {k: _median(self.per_run[k]) for k in ("nc1", "nc2", "nc3", "gram_error")}
        if all(v is not None for v in m.values()):
            lines.append(f"Median NC1 {m['nc1']:.2e}  NC2 {m['nc2']:.2e}  NC3 {m['nc3']:.2e}  "
                         f"Gram error {m['gram_error']:.2e}")
        st = self.per_run["steps"]
        lines.append(f"Steps per run  min {int(st.min())}  median {int(np.median(st))}  max {int(st.max())}")
        t = self.timing
        lines.append(f"Timing  compile {t['compile_s']:.2f} s  run {t['run_s']:.2f} s  classify "
                     f"{t['classify_s']:.2f} s  wall {t['wall_s']:.2f} s  "
                     f"{t['run_steps_per_s']:.3g} run-steps/s  ({self.device})")
        return "\n".join(lines)


def _median(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def check_output_dir(directory: str, overwrite: bool = False) -> None:
    """Raise ``ResultExistsError`` if ``directory`` holds a result and ``overwrite`` is False,
    or ``NotADirectoryError`` if it is a file."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    if not overwrite and any(os.path.exists(os.path.join(directory, f)) for f in RESULT_FILES):
        raise ResultExistsError(f"{directory} already holds a result; choose another directory or overwrite")


def load_summary(directory: str) -> dict:
    """The summary JSON of a saved result (no pickle)."""
    return _io.read_json(os.path.join(directory, "summary.json"))


def load_table(directory: str) -> dict:
    """The per-run table of a saved result as numpy columns."""
    return _io.read_table_csv(os.path.join(directory, "runs.csv"))
