"""The one object a simulation returns, its summary, its files and its printed report."""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import numpy as np

from ncflow import io as _io
from ncflow.outcomes import LABELS, Tolerances
from ncflow.config import Config
from ncflow.dynamics.replay import replay
from ncflow.problem import Problem
from ncflow.report import format_result, median
from ncflow.stats import wilson_interval
from ncflow.maths.theory import Prediction

RESULT_FILES = ("summary.json", "config.json", "runs.csv")


class ResultExistsError(FileExistsError):
    """The output directory already holds a result that would be overwritten."""


def versions() -> dict:
    """Versions of ncflow, JAX, jaxlib, Python and the device kind, for manifests."""
    import jax
    import jaxlib

    from ncflow import __version__

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

        from ncflow.dynamics.spaces import COLLAPSED

        if exact and self.representation == "collapsed":
            from ncflow.batch.loop import replay

            from ncflow.batch.loop import Config

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
        med = {k: median(self.per_run[k]) for k in ("nc1", "nc2", "nc3", "nc4", "gram_error", "grad_norm")}
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
        return format_result(self)


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
