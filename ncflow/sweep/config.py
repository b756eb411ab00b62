"""Sweep configs: the TOML settings, their validation and the expanded points.

The file format is documented in :mod:`ncflow.sweep`. Every check raises :class:`SweepError`
with the TOML key (``problem.K``, ``solver.lr``, ``grid.lambda_w[2]``) and the accepted range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from typing import Any, Callable, Mapping

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

LANE_KEYS = ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale", "lr", "init_scale", "runs", "seed")


class SweepError(ValueError):
    """A sweep config or output directory is unusable; the message names the key or the path."""


# --------------------------------------------------------------------------- setting specs


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_BAD = object()  # a check's answer for a rejected value


def _int_spec(low: int, high: int | None = None, auto: bool = False):
    rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high - 1}]"

    def check(v):
        if auto and v == "auto":
            return None
        return int(v) if _is_int(v) and v >= low and (high is None or v < high) else _BAD
    return check, rng + (' or "auto"' if auto else "")


def _float_spec(low: float, open_low: bool = False, auto: bool = False):
    rng = f"a finite number {'>' if open_low else '>='} {low:g}" + (' or "auto"' if auto else "")

    def check(v):
        if auto and v == "auto":
            return None
        return float(v) if _is_num(v) and (v > low if open_low else v >= low) else _BAD
    return check, rng


def _choice_spec(*choices):
    def check(v):
        return v if isinstance(v, str) and v in choices else _BAD
    return check, "one of " + ", ".join(json.dumps(c) for c in choices)


def _bool_spec():
    def check(v):
        return v if isinstance(v, bool) else _BAD
    return check, "true or false"


PROBLEM_SPECS = {
    "K": (_int_spec(2), 10), "d": (_int_spec(1), 10), "n": (_int_spec(1), 100),
    "lambda_w": (_float_spec(0.0), 5e-4), "lambda_h": (_float_spec(0.0), 5e-4),
    "lambda_b": (_float_spec(0.0), 0.0), "bias": (_bool_spec(), True),
    "dtype": (_choice_spec("float32", "float64"), "float32"),
    "loss": (_choice_spec("mse", "rescaled-mse"), "mse"),
    "alpha": (_float_spec(0.0, open_low=True), 1.0), "target_scale": (_float_spec(0.0, open_low=True), 1.0),
}
SOLVER_SPECS = {
    "runs": (_int_spec(1), 1000), "seed": (_int_spec(0, 2**32), 0),
    "max_steps": (_int_spec(1), 30_000), "init_scale": (_float_spec(0.0), 1.0),
    "lr": (_float_spec(0.0, open_low=True, auto=True), None),
    "engine": (_choice_spec("auto", "full", "collapsed"), "auto"),
    "chunk": (_int_spec(1), 100), "group": (_int_spec(1, auto=True), None),
    "gtol": (_float_spec(0.0, open_low=True, auto=True), None),
    "early_stop": (_bool_spec(), True), "history": (_bool_spec(), False),
    "lanczos_iters": (_int_spec(2), 32),
}
SPECS = {**PROBLEM_SPECS, **SOLVER_SPECS}
ENGINE_ONLY = ("progress", "memory_limit_bytes")  # Config fields that are not sweep settings


def extra_solver_keys() -> dict:
    """Settings of :class:`ncflow.Config` beyond SOLVER_SPECS (e.g. ``optimizer``), with their
    defaults. They are accepted in [solver] and [grid], checked by ``Config`` itself, and enter
    the normalized config only where given."""
    from ncflow.config import Config

    return {f.name: f.default for f in dataclasses.fields(Config)
            if f.name not in SPECS and f.name not in ENGINE_ONLY}


def _section(key: str) -> str:
    return "problem" if key in PROBLEM_SPECS else "solver"


def _check_value(key: str, value, where: str):
    if key not in SPECS:  # an extra Config setting: any TOML scalar, Config validates it
        if isinstance(value, (bool, int, str)) or _is_num(value):
            return value
        raise SweepError(f"{where} must be a number, a string or true/false, got {_show(value)}")
    check, rng = SPECS[key][0]
    out = check(value)
    if out is _BAD:
        raise SweepError(f"{where} must be {rng}, got {_show(value)}")
    return out


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else repr(v)


# --------------------------------------------------------------------------- the parsed config


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep.

    Attributes:
        index: position in the Cartesian product (0-based).
        swept: the grid values of this point, ``{key: value}`` in grid order.
        settings: every problem and solver setting of this point (``lr``/``gtol``/``group``
            None = "auto").
        problem: the :class:`~ncflow.problem.Problem`.
        lr: the step size actually used (resolved from "auto").
    """

    index: int
    swept: dict
    settings: dict
    problem: Any
    lr: float

    @property
    def batch_key(self) -> tuple:
        """What points of one batch must share: everything but the per-run lanes."""
        return tuple(sorted((k, v) for k, v in self.settings.items() if k not in LANE_KEYS))


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the normalized config (JSON-ready), its hash and its points."""

    normalized: dict
    hash: str
    points: tuple
    swept: tuple

    @property
    def master_seed(self):
        """The solver seed (a list if the seed itself is swept)."""
        grid = self.normalized["grid"]
        return grid["seed"] if "seed" in grid else self.normalized["solver"]["seed"]

    def shape_groups(self) -> list[list[SweepPoint]]:
        """Points grouped by batch key, in order of first appearance; each group in index order."""
        groups: dict[tuple, list] = {}
        for p in self.points:
            groups.setdefault(p.batch_key, []).append(p)
        return list(groups.values())

    def point_dir(self, out_dir: str, index: int) -> str:
        """``out_dir/points/<index>`` (zero-padded to at least 4 digits)."""
        width = max(4, len(str(len(self.points) - 1)))
        return os.path.join(out_dir, "points", f"{index:0{width}d}")


def _grid_values(key: str, spec) -> list:
    where = f"grid.{key}"
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in ("geomspace", "linspace"):
            raise SweepError(f"{where} must be a list or {{ geomspace = [start, stop, num] }} / "
                             f"{{ linspace = [start, stop, num] }}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        ok = (isinstance(args, list) and len(args) == 3 and _is_num(args[0]) and _is_num(args[1])
              and _is_int(args[2]) and args[2] >= 1)
        if not ok or (kind == "geomspace" and (args[0] <= 0 or args[1] <= 0)):
            rng = "positive numbers" if kind == "geomspace" else "finite numbers"
            raise SweepError(f"{where}.{kind} must be [start, stop, num] with {rng} and an integer num >= 1, "
                             f"got {args!r}")
        fn = np.geomspace if kind == "geomspace" else np.linspace
        values = [float(v) for v in fn(args[0], args[1], args[2])]
    elif isinstance(spec, list):
        values = spec
    else:
        raise SweepError(f"{where} must be a non-empty list of values, got {_show(spec)}")
    if not values:
        raise SweepError(f"{where} must be a non-empty list of values, got []")
    out = [_check_value(key, v, f"{where}[{i}]") for i, v in enumerate(values)]
    seen = []
    for i, v in enumerate(out):
        if v in seen:
            raise SweepError(f"{where}[{i}] repeats the value {_show(values[i])}; grid values must be distinct")
        seen.append(v)
    return out


def _check_keys(raw: Mapping, extras: Mapping) -> None:
    allowed = {"description", "problem", "solver", "grid"}
    for k in raw:
        if k not in allowed:
            raise SweepError(f"unknown top-level key {k!r}; allowed: description, [problem], [solver], [grid]")
    if "description" in raw and not isinstance(raw["description"], str):
        raise SweepError("description must be a string")
    known = {"problem": list(PROBLEM_SPECS), "solver": list(SOLVER_SPECS) + list(extras)}
    for section, keys in known.items():
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            raise SweepError(f"[{section}] must be a table")
        for k in table:
            if k not in keys:
                other = "solver" if section == "problem" else "problem"
                hint = f" (it belongs in [{other}])" if k in known[other] else ""
                raise SweepError(f"{section}.{k} is not a setting{hint}; [{section}] accepts " + ", ".join(keys))
    grid = raw.get("grid", {})
    if not isinstance(grid, Mapping):
        raise SweepError("[grid] must be a table")
    for k in grid:
        if k not in known["problem"] and k not in known["solver"]:
            raise SweepError(f"grid.{k} is not a problem or solver setting; accepted: "
                             + ", ".join(known["problem"] + known["solver"]))
        if k in raw.get(_section(k), {}):
            raise SweepError(f"{_section(k)}.{k} is also swept by grid.{k}; give it in one place")


def parse_config(raw: Mapping) -> SweepConfig:
    """Validate a sweep config given as a dict (the parsed TOML) and expand its points."""
    from ncflow.errors import ConfigError
    from ncflow.problem import Problem, ProblemError

    if not isinstance(raw, Mapping):
        raise SweepError(f"a sweep config must be a table/dict, got {type(raw).__name__}")
    extras = extra_solver_keys()
    _check_keys(raw, extras)
    base = {}
    for section, specs in (("problem", PROBLEM_SPECS), ("solver", SOLVER_SPECS)):
        table = raw.get(section, {})
        base[section] = {k: (_check_value(k, table[k], f"{section}.{k}") if k in table else default)
                         for k, (_, default) in specs.items()}
    for k, v in raw.get("solver", {}).items():
        if k in extras:
            base["solver"][k] = _check_value(k, v, f"solver.{k}")
    grid = {k: _grid_values(k, v) for k, v in raw.get("grid", {}).items()}
    for sec in ("problem", "solver"):
        for k in grid:
            base[sec].pop(k, None)
    normalized = {"description": raw.get("description", ""), "problem": base["problem"],
                  "solver": base["solver"], "grid": grid}
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    keys = list(grid)
    points = []
    for index, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        swept = dict(zip(keys, combo))
        s = {**base["problem"], **base["solver"], **swept}
        label = f"point {index} ({_describe(swept)})" if swept else "the sweep"

        def name(field):
            return f"grid.{field}" if field in grid else f"{_section(field)}.{field}"

        try:
            if not s["bias"] and s["lambda_b"] != 0.0:
                raise ProblemError("lambda_b must be 0 when bias = false (there is no bias to regularize)")
            problem = Problem(K=s["K"], d=s["d"], n=s["n"], lambda_w=s["lambda_w"], lambda_h=s["lambda_h"],
                              lambda_b=s["lambda_b"], bias=s["bias"], loss=s["loss"], alpha=s["alpha"],
                              target_scale=s["target_scale"], dtype=s["dtype"])
        except ProblemError as e:
            raise SweepError(f"{label}: {_rename(str(e), name)}") from None
        try:
            config = point_config(s)
            _representation(problem, config)
            lr = s["lr"] if s["lr"] is not None else float(_default_lr(problem, config))
        except (ConfigError, ValueError) as e:
            raise SweepError(f"{label}: {_rename(str(e), name)}") from None
        points.append(SweepPoint(index=index, swept=swept, settings=s, problem=problem, lr=float(lr)))
    return SweepConfig(normalized=normalized, hash=digest, points=tuple(points), swept=tuple(keys))


def point_config(s: Mapping, progress: bool | None = False):
    """The engine :class:`~ncflow.Config` of a point's settings (``ncflow run`` with the same
    settings uses exactly this config)."""
    from ncflow.config import Config

    return Config(progress=progress, **{k: v for k, v in s.items() if k not in PROBLEM_SPECS})


def _representation(problem, config):
    try:
        from ncflow.dynamics.steppers import representation
    except ImportError:  # pragma: no cover - older engines
        from ncflow.dynamics.spaces import choose

        return choose(problem, config.engine)
    return representation(problem, config)


def _default_lr(problem, config) -> float:
    try:
        from ncflow.dynamics.steppers import default_lr
    except ImportError:  # pragma: no cover - older engines
        from ncflow.maths.theory import default_step_size

        return default_step_size(problem, config.init_scale or 1.0)
    return default_lr(problem, config)


def _rename(msg: str, name: Callable[[str], str]) -> str:
    """Replace a leading field name of a Problem/Config message by its TOML key."""
    head = msg.split(" ", 1)[0].rstrip(":")
    if head in SPECS or head in extra_solver_keys():
        return name(head) + msg[len(head):]
    return msg


def _describe(swept: Mapping) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in swept.items())


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return "auto" if v is None else str(v)


def load_config(path: str | os.PathLike, overrides: Mapping | None = None) -> SweepConfig:
    """Read and validate a TOML sweep config. ``overrides`` ({key: value}) replace
    [problem]/[solver] values (a key that is swept by [grid] is refused)."""
    raw = read_toml(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return parse_config(raw)


def read_toml(path: str | os.PathLike) -> dict:
    """The parsed TOML file; a missing or malformed file raises :class:`SweepError`."""
    path = os.fspath(path)
    if tomllib is None:
        raise SweepError("reading TOML needs Python >= 3.11 (tomllib) or the tomli package")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SweepError(f"{path} is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a UTF-8 text (TOML) file") from None


def apply_overrides(raw: Mapping, overrides: Mapping) -> dict:
    """A copy of ``raw`` with ``overrides`` ({setting: value}) put in [problem]/[solver]."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        if key not in SPECS and key not in extra_solver_keys():
            raise SweepError(f"cannot override unknown setting {key!r}")
        if key in out.get("grid", {}):
            raise SweepError(f"{key} is swept by grid.{key}; remove it from [grid] to set one value")
        out.setdefault(_section(key), {})[key] = value
    return out
