"""The one object a simulation returns, its summary, its files and its printed report."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from typing import Any

import numpy as np

from ncflow import io as _io
from ncflow.config import Config
from ncflow.dynamics.replay import replay
from ncflow.maths.theory import Prediction
from ncflow.outcomes import Tolerances
from ncflow.problem import Problem
from ncflow.report import format_result, has_classes, layer_medians, median, prediction_json
from ncflow.stats import wilson_interval

RESULT_FILES = ("summary.json", "config.json", "runs.csv", "runs.parquet")
#: every file a saved result owns: an overwrite removes those the new result does not write
OWNED_FILES = RESULT_FILES + ("history.csv", "history.parquet") + tuple(
    f"convergence.{fmt}" for fmt in ("png", "pdf", "svg"))
#: file formats of the per-run tables (``runs.<format>``, ``history.<format>``)
TABLE_FORMATS = ("csv", "parquet")


def _distance_to_etf(X: np.ndarray) -> float | None:
    """||X/||X|| − (I − 11ᵀ/K)/√(K−1)||_F of a K×K matrix (NC2/NC3 of a limit, the conventions of
    ``maths.metrics``); None where X = 0."""
    K = X.shape[0]
    norm = np.linalg.norm(X)
    return float(np.linalg.norm(X / norm - (np.eye(K) - 1.0 / K) / np.sqrt(K - 1))) if norm > 0 else None


class ResultExistsError(FileExistsError):
    """The output directory already holds a result that would be overwritten."""


class ResultIncompleteError(ValueError):
    """A directory holds an incomplete or unreadable result (its writer was interrupted, or a file
    was damaged since); the message names the directory and says what to do, in one line."""


def _is_orphan_temp(name: str) -> bool:
    """A temporary file of an atomic write of one of a result's files (see :mod:`ncflow.io`)."""
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in OWNED_FILES)


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
            Deep linear runs (depth L > 1) add ``rank``, ``critical_error``, ``rank_gap`` and, per
            layer l = 0..L−1 (0 = H), ``nc1_l{l}``, ``nc2_l{l}``, ``nc3_l{l}``, ``rank_l{l}`` (docs/deep.md).
        history: None, or ``step (records,)`` and ``objective``, ``gap``, ``grad_norm``, ``nc1``,
            ``nc2``, ``nc3`` of shape (records, runs), at log-spaced steps.
        timing: ``compile_s``, ``run_s`` (device work of the stepping loop), ``loop_s`` (the whole
            stepping loop: ``loop_s − run_s`` is the host's share, stop rule and round trips),
            ``classify_s`` (summaries, Hessian probes and outcomes, including ``summaries_s``: the
            metrics of every lane and their copy to the host, and ``states_s``: putting the final
            states in run order, and in a multi-process job gathering them to the host),
            ``wall_s``, ``run_steps``, ``run_steps_per_s``, ``plan`` ("cpu"/"wide").
        final_state: the runs' final states, leading axis runs (Params or Collapsed). numpy arrays on
            a CPU and in a multi-process job; on an accelerator in one process, jax.Arrays left on
            the devices where the runs ended (``np.asarray(leaf)`` copies one to the host: for
            100,000 runs of K=10, d=64 the collapsed G alone is 1.6 GB, seconds of transfer that
            a user who only wants the outcomes does not pay).
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
        for label in self.problem.outcome_labels:
            k = int(np.sum(self.outcome == label))
            lo, hi = wilson_interval(k, self.runs)
            out[label] = {"count": k, "fraction": k / self.runs, "ci95": [float(lo), float(hi)]}
        return out

    def rank_counts(self) -> dict | None:
        """Where the model has ranks (the deep linear UFM's per-run ``rank`` column, THEORY §9.2):
        {label: {rank: count}} over the runs with a finite rank, ranks as strings ascending; None
        otherwise."""
        if "rank" not in self.per_run:
            return None
        rank = np.asarray(self.per_run["rank"], np.float64)
        out = {}
        for label in self.problem.outcome_labels:
            sel = (self.outcome == label) & np.isfinite(rank)
            if sel.any():
                values, counts = np.unique(rank[sel].astype(np.int64), return_counts=True)
                out[label] = {str(int(v)): int(c) for v, c in zip(values, counts)}
        return out

    def final_objective(self) -> dict:
        """``min``, ``median``, ``max`` of the final objective over finite runs (None if none)."""
        f = self.per_run["objective"]
        f = f[np.isfinite(f)]
        if f.size == 0:
            return {"min": None, "median": None, "max": None}
        return {"min": float(f.min()), "median": float(np.median(f)), "max": float(f.max())}

    def final_params(self, i: int, exact: bool = False):
        """Run ``i``'s final ``Params(W (K, d), H (d, N), b (K,))`` (depth > 1:
        ``DeepParams(Ws, H (d_0, N), b (K,))``).

        A collapsed run keeps only class means and within-class scatter (a ``targets`` problem: its
        row-space coordinates); by default its H is rebuilt up to a within-class orthogonal mixing of
        samples (``collapsed.expand``: every objective value, gradient norm, Hessian eigenvalue and
        NC metric is exact). With ``exact=True`` the run is replayed on the full representation from
        its own key for its recorded number of steps, which rebuilds its exact H (to rounding; GD,
        heavy ball or Nesterov, as the run took them; a ``deep_collapsed`` run: GD on ``deep_full``).
        A full run's state is its exact point either way.
        """
        import jax

        if not 0 <= i < self.runs:
            raise IndexError(f"run index must be in [0, {self.runs - 1}], got {i}")
        collapsed = self.representation.split("+")[0] == "collapsed"
        if exact and (collapsed or self.representation == "deep_collapsed"):
            # the start's settings only: config["engine"] holds the dynamics' name ("collapsed+escape")
            fields = {k: self.config[k] for k in ("init", "active", "perturb", "optimizer", "momentum")
                      if k in self.config}
            return replay(self.problem, int(self.per_run["run"][i]), int(self.per_run["steps"][i]),
                          seed=int(self.config["seed"]), lr=float(self.config["lr"]),
                          init_scale=float(self.config["init_scale"]), config=Config(**fields))
        x = jax.tree_util.tree_map(lambda a: a[i], self.final_state)
        problem = self._state_problem(x) if collapsed else self.problem
        if self.to_params is not None:
            return self.to_params(problem, x)
        from ncflow.dynamics.spaces import COLLAPSED

        return COLLAPSED.to_params(problem, x) if collapsed else x

    def _state_problem(self, x) -> Problem:
        """The problem as the collapsed engine carried run state ``x``: a ``targets`` problem in
        its row-space coordinates (``row_basis``, padded to the batch's width, ``x.M``'s columns),
        any other problem as it is. (``x`` is a Collapsed, or a CollapsedMomentum around one.)"""
        if self.problem.targets is None:
            return self.problem
        from ncflow.maths.collapsed import pad_row_space, row_space

        M = x.params.M if hasattr(x, "params") else x.M
        return dataclasses.replace(self.problem, row_basis=pad_row_space(row_space(self.problem), M.shape[-1]))

    @property
    def stop_rule(self) -> str:
        """The stop rule that produced this result ("certified" or "converged"). At depth > 1 the
        certificate (THEORY §9.3) holds only at small steps: at practical ones no deep linear run is
        certified and "certified" runs stop by the converged rule (the deep ReLU UFM: never certified)."""
        return str(self.config.get("stop", "converged"))

    def certified(self) -> dict:
        """Runs certified global by THEORY §8: ``count`` and the ``min``/``median``/``max`` of
        ``certified_step`` over them (None if none). With stop rule "converged" the column is still
        measured (the first check at which the certificate held) but no run stops there."""
        step = np.asarray(self.per_run.get("certified_step", np.full(self.runs, np.nan)), np.float64)
        ok = step[np.isfinite(step)]
        stats = {k: (None if ok.size == 0 else float(fn(ok))) for k, fn in (("min", np.min), ("median", np.median),
                                                                              ("max", np.max))}
        stopped = int(np.sum(np.asarray(self.per_run.get("stop", [])) == "certified"))
        return {"count": int(ok.size), "stopped_there": stopped, "step": stats}

    def limit(self) -> dict:
        """What a certified run converges to, from theory (THEORY §2, in numpy): f*, NC1 = 0
        (every global minimizer collapses within classes), and NC2 = NC3 of the predicted Gram
        ``W Wᵀ`` (self-duality h_k ∝ w_k makes W̃H̄ ∝ W̃W̃ᵀ, so NC3 = NC2); NC2/NC3 are None
        where the Gram is not unique (rank-limited) or zero. Class sizes or targets (THEORY §7): NC3
        from the predicted W M with μ_G the sample-weighted mean (h_k ∝ w_k/√n_k: NC3 ≠ NC2), None
        without classes. Not the state at the stop. A deep UFM (THEORY §9.3): f* and NC1 = 0,
        NC2/NC3 None."""
        if self.problem.depth > 1:  # the deep ReLU UFM's global minimum is not known (objective None)
            known = self.prediction.objective is not None
            return {"objective": float(self.prediction.objective) if known else None, "nc1": 0.0 if known else None,
                    "nc2": None, "nc3": None}
        if self.prediction.general:
            return self._limit_general()
        nc2 = None
        gram = self.prediction.gram
        form = getattr(self.prediction, "gram_form", None)
        if gram is None and form is not None:  # large K: C G C = a C, so NC2 = 0 whenever a > 0
            nc2 = 0.0 if form[0] > 0 else None
        elif gram is not None and self.problem.K > 1:
            C = np.eye(self.problem.K) - 1.0 / self.problem.K
            nc2 = _distance_to_etf(C @ np.asarray(gram, np.float64) @ C)
        return {"objective": float(self.prediction.objective), "nc1": 0.0, "nc2": nc2, "nc3": nc2}

    def _limit_general(self) -> dict:
        """:meth:`limit` of a §7 problem: NC2 of the predicted W Wᵀ and NC3 of the predicted
        W̃H̄ = C (W M)(I − p 1ᵀ), C = I − 11ᵀ/K, p = n/N (the conventions of ``maths.metrics``); all
        None for a target matrix without classes (no labels or sizes)."""
        pr, K = self.prediction, self.problem.K
        if not has_classes(self.problem):
            return {"objective": float(pr.objective), "nc1": None, "nc2": None, "nc3": None}
        C = np.eye(K) - 1.0 / K
        nc2 = nc3 = None
        if pr.gram is not None:
            nc2 = _distance_to_etf(C @ np.asarray(pr.gram, np.float64) @ C)
        if pr.cross is not None and pr.class_sizes is not None:
            p = np.asarray(pr.class_sizes, np.float64) / np.sum(pr.class_sizes)
            nc3 = _distance_to_etf(C @ np.asarray(pr.cross, np.float64) @ (np.eye(K) - np.outer(p, np.ones(K))))
        return {"objective": float(pr.objective), "nc1": 0.0, "nc2": nc2, "nc3": nc3}

    def summary(self) -> dict:
        """The JSON summary (the object ``ncflow run --json`` prints). ``final_objective`` and
        ``median_metrics`` are of the runs' states at their stop (``state_at_stop``); with the
        "certified" stop rule a certified run's limit is ``limit`` (from theory), not its state.
        Deep runs add ``median_layer_metrics``: per layer its median NC1, NC2, NC3 and class-mean rank
        (:func:`ncflow.report.layer_medians`)."""
        med = {k: median(self.per_run[k]) for k in ("nc1", "nc2", "nc3", "nc4", "gram_error", "grad_norm")}
        return {
            "stop_rule": self.stop_rule,
            "certified": self.certified(),
            "limit": self.limit(),
            "state_at_stop": "final_objective and median_metrics are of each run's state when it stopped",
            "theory": prediction_json(self.problem, self.prediction),
            "problem": self.problem.describe(),
            "runs": self.runs,
            "outcomes": self.outcomes(),
            **({} if self.rank_counts() is None else {"rank_counts": self.rank_counts()}),
            "final_objective": self.final_objective(),
            "median_metrics": med,
            **({"median_layer_metrics": layer_medians(self.per_run)} if layer_medians(self.per_run) else {}),
            "timing": dict(self.timing),
            "engine": self.representation,
            "tolerances": self.tolerances.to_json(),
            "config": dict(self.config),
            "device": self.device,
        }

    def table(self) -> dict:
        """The per-run table as columns (a copy)."""
        return {k: np.asarray(v) for k, v in self.per_run.items()}

    def save(self, directory: str, overwrite: bool = False, table_format: str = "csv") -> None:
        """Write ``runs.csv`` (per run), ``summary.json``, ``config.json`` (full configuration and
        versions) and, with history, ``history.csv`` (long format).
        ``table_format="parquet"`` writes ``runs.parquet`` / ``history.parquet`` instead (needs
        pyarrow: ``pip install ncflow[parquet]``); :func:`load_table` reads either.

        The files are written into a staging directory beside ``directory`` and then renamed into
        it, ``summary.json`` last (the completion mark): ``directory`` holds either a complete
        result or one without ``summary.json``, which every reader refuses as incomplete. A kill
        during the writing leaves only the staging directory, removed by the next save or sweep
        in that parent (:func:`ncflow.io.remove_stale_stages`).

        Refuses (``ResultExistsError``) to replace an existing result unless ``overwrite``; an
        overwrite replaces the whole result: the earlier result's files that this one does not
        write (the other table format, a history, a convergence figure) are removed.
        """
        require_table_format(table_format)
        check_output_dir(directory, overwrite)
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        stage = _io.stage_dir(directory)
        try:
            self._write_files(stage, table_format)
            stale = [n for n in os.listdir(directory) if n in OWNED_FILES or _is_orphan_temp(n)]
            _io.commit_staged(stage, directory, last="summary.json", remove=stale)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def _write_files(self, directory: str, table_format: str) -> None:
        write = _io.write_table_parquet if table_format == "parquet" else _io.write_table_csv
        write(os.path.join(directory, f"runs.{table_format}"), self.table())
        if self.history is not None:
            h = self.history
            R, S = self.runs, len(h["step"])
            cols = {"step": np.repeat(h["step"], R), "run": np.tile(np.arange(R), S)}
            cols.update({k: np.asarray(v).reshape(-1) for k, v in h.items() if k != "step"})
            write(os.path.join(directory, f"history.{table_format}"), cols)
        _io.write_json(os.path.join(directory, "config.json"),
                       {"problem": self.problem.describe(), "solver": self.config,
                        "tolerances": self.tolerances.to_json(), "versions": versions()})
        _io.write_json(os.path.join(directory, "summary.json"), self.summary())

    def report(self) -> str:
        """Human-readable report: prediction, outcome table with intervals, metrics, timing."""
        return format_result(self)

    def to_pandas(self):
        """The per-run table as a ``pandas.DataFrame`` (runs, columns): one row per run, the columns
        of ``per_run`` (``run``, ``outcome``, ``steps``, ``objective``, ..., see the class doc).
        Integers stay int64, floats float64 (NaN where not computed); ``outcome`` is a ``category``
        whose categories are every outcome label of the model (``Problem.outcome_labels``: ``ncflow.LABELS``,
        or ``ncflow.RELU_LABELS`` for the deep ReLU UFM, in that order), so
        ``df.outcome.value_counts()`` counts those no run reached too; other text columns take
        pandas' default string dtype. Needs pandas (``pip install ncflow[pandas]``); raises a
        one-line ImportError naming that extra where it is missing."""
        return _io.to_dataframe(self.table(), categories={"outcome": self.problem.outcome_labels})


def check_output_dir(directory: str, overwrite: bool = False) -> None:
    """Raise ``ResultExistsError`` if ``directory`` holds a result and ``overwrite`` is False,
    or ``NotADirectoryError`` if it is a file."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    if not overwrite and any(os.path.exists(os.path.join(directory, f)) for f in RESULT_FILES):
        raise ResultExistsError(f"{directory} already holds a result; choose another directory or overwrite")


#: the file by which a run claims its output directory while it computes (holds its pid)
CLAIM_FILE = ".ncflow-claim"


class OutputDirError(OSError):
    """An output directory cannot take a result: it cannot be created or written, or another live
    run has claimed it. The message names the directory and the reason."""


_alive = _io.pid_alive


def claim_output_dir(directory: str, overwrite: bool = False) -> str:
    """Make sure ``directory`` can take a result BEFORE anything is computed, and claim it.

    Creates it if needed, proves it writable by creating the claim file (``CLAIM_FILE``, holding
    this process's pid) exclusively, and refuses a directory that is a file, that holds a result
    (unless ``overwrite``) or that another live run has claimed (a claim whose process is gone is
    taken over). Raises ``NotADirectoryError``, ``ResultExistsError`` or :class:`OutputDirError`.
    Returns the claim file's path; :func:`release_output_dir` removes it.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"{directory} cannot be created ({e.strerror or e})") from None
    claim = os.path.join(directory, CLAIM_FILE)
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(claim) as fh:
                    pid = int(fh.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and pid != os.getpid() and _alive(pid):
                raise OutputDirError(f"{directory} is being written by another ncflow run (pid {pid})") from None
            try:  # a stale claim: its run is gone
                os.remove(claim)
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise OutputDirError(f"{directory} is not writable ({e.strerror or e})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise OutputDirError(f"{directory} is being claimed by another ncflow run")
    try:
        check_output_dir(directory, overwrite)
    except Exception:
        release_output_dir(claim)
        raise
    return claim


def release_output_dir(claim: str) -> None:
    """Remove a claim made by :func:`claim_output_dir` (nothing if it is already gone)."""
    try:
        os.remove(claim)
    except FileNotFoundError:
        pass


def require_complete(directory: str) -> dict:
    """The summary of the complete result in ``directory``; raises :class:`ResultIncompleteError`
    (one line) when it holds a result without ``summary.json`` (its save was interrupted) or with
    an unreadable one, and ``FileNotFoundError`` when it holds no result at all."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "summary.json")
    if not os.path.exists(path):
        if os.path.isdir(directory) and any(os.path.exists(os.path.join(directory, f)) for f in OWNED_FILES):
            raise ResultIncompleteError(f"{directory} holds an incomplete result (no summary.json: its save was "
                                        "interrupted); run it again with --overwrite")
        raise FileNotFoundError(f"{directory} holds no result (no summary.json)")
    try:
        summary = _io.read_json(path)
    except (OSError, ValueError) as e:
        raise ResultIncompleteError(f"{path} is unreadable ({type(e).__name__}); the result is damaged, "
                                    "run it again with --overwrite") from None
    if not isinstance(summary, dict) or "outcomes" not in summary:
        raise ResultIncompleteError(f"{path} is not an ncflow result summary; run it again with --overwrite")
    return summary


def load_summary(directory: str) -> dict:
    """The summary JSON of a saved result (no pickle); refuses an incomplete or damaged result
    (:class:`ResultIncompleteError`)."""
    return require_complete(directory)


def require_table_format(table_format: str) -> None:
    """Raise ValueError for an unknown table format, ImportError (one line) if "parquet" is asked
    for and pyarrow is missing."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table_format must be one of {', '.join(TABLE_FORMATS)}, got {table_format!r}")
    if table_format == "parquet":
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError("table_format 'parquet' (ncflow run --format parquet) needs pyarrow: "
                              "pip install ncflow[parquet]") from None


def load_table(directory: str) -> dict:
    """The per-run table of a saved result as numpy columns (shape (runs,)), from ``runs.csv`` or
    ``runs.parquet``, whichever the result holds. Refuses an incomplete or damaged result
    (:class:`ResultIncompleteError`), one whose row count disagrees with its summary.json (a file
    emptied or cut short: :func:`runs_table_problem`) included."""
    summary = require_complete(directory)
    paths = {fmt: os.path.join(directory, f"runs.{fmt}") for fmt in TABLE_FORMATS}
    found = [fmt for fmt, path in paths.items() if os.path.exists(path)]
    if len(found) > 1:
        raise ValueError(f"{directory} holds both runs.csv and runs.parquet; remove the stale one")
    fmt = "parquet" if found == ["parquet"] else "csv"
    if fmt == "parquet":
        require_table_format("parquet")
    try:
        table = (_io.read_table_parquet if fmt == "parquet" else _io.read_table_csv)(paths[fmt])
    except (OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ResultIncompleteError(f"{paths[fmt]} is unreadable ({detail}); the result is damaged, run it again "
                                    "with --overwrite") from None
    problem = runs_table_problem(paths[fmt], table, summary)
    if problem:
        raise ResultIncompleteError(f"{problem}; the result is damaged, run it again with --overwrite")
    return table


def runs_table_problem(path: str, table: dict, summary: dict) -> str | None:
    """Why the per-run table ``table`` read from ``path`` (``runs.csv`` / ``runs.parquet``) is not the
    whole table its ``summary`` describes, or None when it is: its row count must equal the
    summary's ``runs`` (an emptied file, or one cut at a line boundary, parses as a shorter table),
    and a CSV must end with a newline (one cut inside its last cell parses with every row).
    """
    rows = len(next(iter(table.values()))) if table else 0
    expected = summary.get("runs")
    if isinstance(expected, int) and not isinstance(expected, bool) and rows != expected:
        return f"{path} holds {rows} of the {expected} runs its summary.json counts (cut or emptied)"
    if path.endswith(".csv") and rows:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                return f"{path} does not end with a newline (cut inside its last row)"
    return None
