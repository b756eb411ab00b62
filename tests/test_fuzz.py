"""Fuzz (hypothesis) over every entry point: CLI flags, API arguments, sweep TOML files and
features ``.npz`` files. Every input either runs (tiny sizes, nothing compiled: ``--dry-run``,
``theory``, the config and file loaders) or is refused with ONE line (exit 2 on the command line,
one ``NcflowError``/``SweepError``/``FeaturesError`` line in the API), never a traceback, a hang or
an unbounded allocation. Bounded: a fixed number of examples per test, no deadline, derandomized
so the suite is reproducible: 5 × 60 generated examples plus 3 fixed ones, ~10 s."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncflow.errors import NcflowError
from ncflow.settings import SETTINGS

from helpers import run_cli

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: hostile values: huge, tiny, negative, non-finite, wrong kinds, text
NUMBERS = st.one_of(
    st.integers(-10**30, 10**30), st.sampled_from([0, 1, 2, 2**31, 2**63, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-300, 1e308, 5e-324, -0.0, 1e-45]),
)
TEXT = st.one_of(NUMBERS.map(str), st.sampled_from(["", "auto", "nan", "-inf", "1e999", "0x10", "true", "é"]),
                 st.text(string.printable, max_size=8))

FLAGS = sorted({s.flag for s in SETTINGS.values() if s.flag and "run" in s.commands and s.kind != "bool"})
BOOL_FLAGS = sorted({s.flag for s in SETTINGS.values() if s.flag and "run" in s.commands and s.kind == "bool"})
SMALL = ["-K", "3", "-d", "3", "-n", "2", "--runs", "4", "--max-steps", "20"]


def _one_line_or_ok(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 1, err


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FLAGS), TEXT), max_size=3), st.lists(st.sampled_from(BOOL_FLAGS),
                                                                                 max_size=2))
def test_run_flags_dry_run(capsys, pairs, bools):
    argv = ["run", *SMALL]
    for flag, value in pairs:
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    code, _, err = run_cli([*argv, *bools, "--dry-run"], capsys)
    _one_line_or_ok(code, err)


THEORY_FLAGS = sorted({s.flag for s in SETTINGS.values() if s.flag and "theory" in s.commands and s.kind != "bool"})


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(THEORY_FLAGS), TEXT), max_size=4))
def test_theory_flags(capsys, pairs):
    argv = ["theory", "--json"]
    for flag, value in pairs:
        argv += [f"{flag}={value}"]
    code, _, err = run_cli(argv, capsys)
    _one_line_or_ok(code, err)


VALUES = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=5), st.sampled_from(["auto", "float64"]),
                   st.just(np.uint8(200)), st.just(np.float32(1e-3)), st.lists(st.integers(0, 3), max_size=2))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(SETTINGS)), VALUES, max_size=4))
def test_problem_and_config_arguments(values):
    from ncflow.config import Config
    from ncflow.problem import Problem
    from ncflow.settings import PROBLEM

    prob = {k: v for k, v in values.items() if k in PROBLEM}
    conf = {k: v for k, v in values.items() if k not in PROBLEM}
    for cls, kw in ((Problem, prob), (Config, conf)):
        try:
            obj = cls(**kw)
        except NcflowError as e:
            assert "\n" not in str(e) and e.field is None or e.field in SETTINGS
            continue
        if cls is Problem:  # an accepted problem has a sound theory value or a one-line refusal
            assert 0 <= obj.c < math.inf
            from ncflow.maths import theory

            try:
                f = theory.predict(obj, dense=False).objective
                assert f <= 0.5 + 1e-12 or obj.loss == "rescaled-mse"
            except NcflowError as e:
                assert "\n" not in str(e)


TOML_VALUE = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=False, allow_infinity=False),
                       st.booleans(), st.text(string.ascii_letters, max_size=6),
                       st.lists(st.integers(-3, 40), max_size=4, unique=True))
KEYS = st.sampled_from(["K", "d", "n", "lambda_w", "lambda_h", "bias", "dtype", "loss", "runs", "max_steps", "lr",
                        "chunk", "seed", "bogus", "momentum", "init"])


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return repr(v)


@FUZZ
@given(st.dictionaries(st.sampled_from(["problem", "solver", "grid", "other"]),
                       st.dictionaries(KEYS, TOML_VALUE, max_size=3), max_size=3),
       st.sampled_from(["", "garbage = [", "\x00", "[grid]\nlambda_w = { geomspace = [1e-3, 1, 99999999999] }\n"]))
def test_sweep_toml_files(tmp_path_factory, capsys, tables, tail):
    path = tmp_path_factory.mktemp("toml") / "s.toml"
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n" + (tail if "grid" not in tables else ""))
    code, _, err = run_cli(["sweep", str(path), "--dry-run", "--runs", "2", "--max-steps", "10"], capsys)
    _one_line_or_ok(code, err)


ARRAYS = st.one_of(
    st.none(),
    st.builds(lambda shape, dt: np.ones(shape, dt), st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple),
              st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64"])),
    st.just(np.array([np.nan, 1.0])), st.just(np.array(["a", "b"])), st.just(np.array([0, 1, 2, 10**12])),
    st.just(np.array([-1, 0, 1])),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["H", "features", "labels", "W", "b", "junk"]), ARRAYS, max_size=4))
def test_features_files(tmp_path_factory, capsys, arrays):
    path = tmp_path_factory.mktemp("npz") / "f.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    code, _, err = run_cli(["metrics", str(path)], capsys)
    _one_line_or_ok(code, err)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x93NUMPY" + b"\x00" * 20])
def test_damaged_features_files(tmp_path, capsys, content):
    path = tmp_path / "f.npz"
    path.write_bytes(content)
    code, _, err = run_cli(["metrics", str(path)], capsys)
    _one_line_or_ok(code, err)
    assert code == 2
