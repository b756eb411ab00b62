"""Sweep configs: the TOML settings, their validation and the expanded points.

The file format is documented in :mod:`ncflow.sweep`. The keys of [problem] and [solver], their
defaults and accepted ranges are those of the one table of settings (:mod:`ncflow.settings`),
shared with the Python API and the command line. Every check raises :class:`SweepError` with the
TOML key (``problem.K``, ``solver.lr``, ``grid.lambda_w[2]``) and the accepted range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from ncflow.errors import NcflowError
from ncflow.settings import LANE_KEYS, SETTINGS, Setting, check_applies

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["LANE_KEYS", "PROBLEM_SPECS", "SOLVER_SPECS", "SweepConfig", "SweepError", "SweepPoint", "apply_overrides",
           "extra_solver_keys", "load_config", "parse_config", "point_config", "point_dir", "read_toml"]


class SweepError(ValueError):
    """A sweep config or output directory is unusable; the message names the key or the path."""


# --------------------------------------------------------------------------- the settings (from the table)

#: [problem] keys: {key: Setting}; each enters the normalized config with its default when not given
PROBLEM_SPECS = {k: s for k, s in SETTINGS.items() if s.section == "problem" and s.toml and s.hashed}
#: [problem] keys added after the format (the deep UFM's depth, widths, activation): in the normalized
#: config only where given, so the hash of a sweep written before they existed does not change
DEEP_SPECS = {k: s for k, s in SETTINGS.items() if s.section == "problem" and s.toml and not s.hashed}
#: [problem] keys of THEORY §7 (class sizes and the two-level shorthand ``majority``/``ratio``: R
#: classes of round(ratio n), the other K − R of n): in the normalized config only where given, so the
#: hash of a sweep written before they existed does not change; grid keys too
SIZE_SPECS = {
    "class_sizes": dataclasses.replace(SETTINGS["class_sizes"], toml=True),
    "majority": Setting("majority", "problem", "int", None, "two-level class sizes: the first R classes have "
                        "round(ratio n) samples", low=1, high=2**16, unset=True, flag="--majority"),
    "ratio": Setting("ratio", "problem", "float", None, "two-level class sizes: majority/minority size ratio",
                     low=1.0, unset=True, flag="--ratio"),
}
#: [solver] keys whose default enters the normalized config (and hash) when not given
SOLVER_SPECS = {k: s for k, s in SETTINGS.items() if s.section == "solver" and s.toml and s.hashed}
#: the other [solver] keys (optimizer, momentum, init, ...): in the normalized config only where given,
#: so that the hash of a sweep written before they existed does not change
_EXTRA_SPECS = {k: s for k, s in SETTINGS.items() if s.section == "solver" and s.toml and not s.hashed}
SPECS = {**PROBLEM_SPECS, **SIZE_SPECS, **DEEP_SPECS, **SOLVER_SPECS, **_EXTRA_SPECS}


def extra_solver_keys() -> dict:
    """The [solver] keys beyond SOLVER_SPECS (e.g. ``optimizer``) with their API defaults; they
    are accepted in [solver] and [grid] and enter the normalized config only where given."""
    return {k: s.field_default for k, s in _EXTRA_SPECS.items()}


def _section(key: str) -> str:
    return SPECS[key].section


def _check_value(key: str, value, where: str):
    """The normalized value of ``key`` (None for "auto"), or SweepError naming ``where``."""
    try:
        return SPECS[key].check(value)
    except NcflowError as e:
        raise SweepError(e.named(where)) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
        # the full engine's H has N columns: points of one batch share their class sizes there
        full = self.settings.get("engine") == "full"
        lanes = tuple(k for k in LANE_KEYS if not (full and k == "class_sizes"))
        return tuple(sorted((k, v) for k, v in self.settings.items() if k not in lanes))


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
        return point_dir(out_dir, len(self.points), index)


def point_dir(out_dir: str, points: int, index: int) -> str:
    """The directory of point ``index`` of a sweep of ``points`` points: ``out_dir/points/<index>``,
    zero-padded to at least 4 digits (and to the width of the last index)."""
    width = max(4, len(str(points - 1)))
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
        if args[2] > MAX_POINTS:
            raise SweepError(f"{where}.{kind} asks for {args[2]} values; a sweep holds at most {MAX_POINTS} points")
        fn = np.geomspace if kind == "geomspace" else np.linspace
        values = [float(v) for v in fn(args[0], args[1], args[2])]
    elif isinstance(spec, list):
        values = spec
    else:
        raise SweepError(f"{where} must be a non-empty list of values, got {_show(spec)}")
    if not values:
        raise SweepError(f"{where} must be a non-empty list of values, got []")
    if len(values) > MAX_POINTS:
        raise SweepError(f"{where} has {len(values)} values; a sweep holds at most {MAX_POINTS} points")
    out = [_check_value(key, v, f"{where}[{i}]") for i, v in enumerate(values)]
    seen = set()  # == semantics as before (1 == 1.0 == True), in O(values)
    for i, v in enumerate(out):
        if v in seen:
            raise SweepError(f"{where}[{i}] repeats the value {_show(values[i])}; grid values must be distinct")
        seen.add(v)
    return out


#: the most points a sweep may hold (grid sizes are checked before the grid is expanded)
MAX_POINTS = 100_000


def _check_keys(raw: Mapping, extras: Mapping) -> None:
    allowed = {"description", "problem", "solver", "grid"}
    for k in raw:
        if k not in allowed:
            raise SweepError(f"unknown top-level key {k!r}; allowed: description, [problem], [solver], [grid]")
    if "description" in raw and not isinstance(raw["description"], str):
        raise SweepError("description must be a string")
    known = {"problem": list(PROBLEM_SPECS) + list(SIZE_SPECS) + list(DEEP_SPECS),
             "solver": list(SOLVER_SPECS) + list(extras)}
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
    """Validate a sweep config given as a dict (the parsed TOML) and expand its points.

    A setting given (in [problem], [solver] or [grid]) where it does not apply (``momentum`` with
    optimizer gd, ``alpha`` with loss mse, ...) is refused, naming its key."""
    from ncflow.problem import Problem

    if not isinstance(raw, Mapping):
        raise SweepError(f"a sweep config must be a table/dict, got {type(raw).__name__}")
    extras = extra_solver_keys()
    _check_keys(raw, extras)
    base = {}
    for section, specs in (("problem", PROBLEM_SPECS), ("solver", SOLVER_SPECS)):
        table = raw.get(section, {})
        base[section] = {k: (_check_value(k, table[k], f"{section}.{k}") if k in table else s.field_default)
                         for k, s in specs.items()}
    for k, v in raw.get("solver", {}).items():
        if k in extras:
            base["solver"][k] = _check_value(k, v, f"solver.{k}")
    for k, v in raw.get("problem", {}).items():
        if k in SIZE_SPECS or k in DEEP_SPECS:
            base["problem"][k] = _check_value(k, v, f"problem.{k}")
    grid = {k: _grid_values(k, v) for k, v in raw.get("grid", {}).items()}
    for sec in ("problem", "solver"):
        for k in grid:
            base[sec].pop(k, None)
    normalized = {"description": raw.get("description", ""), "problem": base["problem"],
                  "solver": base["solver"], "grid": grid}
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    given = set(raw.get("problem", {})) | set(raw.get("solver", {})) | set(grid)

    keys = list(grid)
    size = math.prod(len(v) for v in grid.values())
    if size > MAX_POINTS:  # known before anything is expanded
        raise SweepError(f"grid: {size} points ({' x '.join(f'{len(v)} {k}' for k, v in grid.items())}), more than "
                         f"the {MAX_POINTS} a sweep may hold (each point is validated and planned up front, "
                         "~0.5 ms each); split it into several sweeps")
    points = []
    for index, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        swept = dict(zip(keys, combo))
        s = {**base["problem"], **base["solver"], **swept}
        label = f"point {index} ({_describe(swept)})" if swept else "the sweep"

        def name(field):
            return f"grid.{field}" if field in grid else f"{_section(field)}.{field}"

        try:
            check_applies(s, given)
            if not s["bias"] and s["lambda_b"] != 0.0:
                raise SweepError(f"{name('lambda_b')} must be 0 when bias = false (there is no bias to regularize)")
            s = _class_sizes(s, name, "K" in given)
            problem = Problem(**{k: s[k] for k in PROBLEM_SPECS}, **{k: s[k] for k in DEEP_SPECS if k in s},
                              class_sizes=s.get("class_sizes"))
            config = point_config(s)
            _representation(problem, config)
            lr = s["lr"] if s["lr"] is not None else float(_default_lr(problem, config))
        except SweepError as e:
            raise SweepError(f"{label}: {e}") from None
        except NcflowError as e:
            raise SweepError(f"{label}: {e.named(name(e.field) if e.field in SETTINGS else None)}") from None
        except ValueError as e:
            raise SweepError(f"{label}: {e}") from None
        points.append(SweepPoint(index=index, swept=swept, settings=s, problem=problem, lr=float(lr)))
    return SweepConfig(normalized=normalized, hash=digest, points=tuple(points), swept=tuple(keys))


def _class_sizes(s: dict, name, k_given: bool) -> dict:
    """The point's settings with the two-level shorthand (majority, ratio) turned into class_sizes;
    K is the number of sizes (a K given that disagrees is refused)."""
    s = dict(s)
    majority, ratio = s.pop("majority", None), s.pop("ratio", None)
    if (majority is None) != (ratio is None):
        raise SweepError(f"{name('majority' if majority is None else 'ratio')} must be given with "
                         f"{name('ratio' if majority is None else 'majority')} (the two-level class sizes)")
    if majority is not None:
        if s.get("class_sizes") is not None:
            raise SweepError(f"{name('majority')} cannot be combined with {name('class_sizes')}")
        if majority >= s["K"]:
            raise SweepError(f"{name('majority')} must be an integer in [1, {s['K'] - 1}] (K = {s['K']}), "
                             f"got {majority}")
        from ncflow.problem import two_level_sizes  # local, like parse_config's Problem import

        s["class_sizes"] = two_level_sizes(s["K"], s["n"], majority, ratio)
    if s.get("class_sizes") is not None:
        if k_given and s["K"] != len(s["class_sizes"]):
            raise SweepError(f"{name('class_sizes')} gives K = {len(s['class_sizes'])} classes but "
                             f"{name('K')} = {s['K']}")
        s["K"] = len(s["class_sizes"])
    else:
        s.pop("class_sizes", None)
    return s


def point_config(s: Mapping, progress: bool | None = False):
    """The engine :class:`~ncflow.Config` of a point's settings (``ncflow run`` with the same
    settings uses exactly this config)."""
    from ncflow.config import Config, cap_chunk

    solver = {k: v for k, v in s.items() if k not in PROBLEM_SPECS and k not in SIZE_SPECS and k not in DEEP_SPECS}
    return cap_chunk(Config(progress=progress, **solver))


def _representation(problem, config):
    """The dynamics the engine will run for this point (raises ConfigError where they do not fit)."""
    from ncflow.dynamics.build import dynamics_for

    return dynamics_for(problem, config)


def _default_lr(problem, config) -> float:
    """The engine's default step size for this point (as ``ncflow run``)."""
    from ncflow.dynamics.build import default_lr

    return default_lr(problem, config)


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
