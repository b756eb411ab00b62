"""The one table of settings (ncflow.settings): the API (Problem, Config), the CLI (``ncflow
theory|run|sweep``) and the sweep TOML share one default per setting; every bad value gives one
line naming the field / flag / key and the accepted range; a setting given where it does not apply
is refused in all three; numpy scalars never wrap around. Also the parquet output of ``ncflow run``.

Nothing here compiles a program except the one parquet round trip through ``ncflow run``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

import ncflow.cli.run
from ncflow.cli.app import build_parser
from ncflow.cli.common import given_settings
from ncflow.config import Config
from ncflow.errors import ConfigError, NcflowError, ProblemError
from ncflow.problem import Problem
from ncflow.settings import INT32_MAX, LANE_KEYS, PROBLEM, SETTINGS, SOLVER
from ncflow.sweep.config import PROBLEM_SPECS, SOLVER_SPECS, SweepError, extra_solver_keys, parse_config

from helpers import run_cli

TINY = ["-K", "3", "-d", "4", "-n", "2", "--lambda-w", "1e-2", "--lambda-h", "1e-2"]


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if ``ncflow run`` gets past validation (i.e. would compile something)."""
    def boom(*a, **k):
        raise AssertionError("the run reached the engine: the value must be refused before compiling")
    monkeypatch.setattr(ncflow.cli.run, "_compute", boom)


def _context(name: str) -> dict:
    """Settings under which ``name`` applies (API names and values), e.g. beta1 -> optimizer adam."""
    s = SETTINGS[name]
    ctx = {}
    if s.applies is not None:
        cond, allowed = s.applies
        ctx[cond] = allowed[0]
    if ctx.get("init") == "saddle" and name != "active":
        ctx["active"] = 0
    return ctx


def _build(name: str, value, **ctx):
    """Problem or Config with ``name = value`` (plus the context)."""
    kw = {name: value, **ctx}
    return Problem(**kw) if SETTINGS[name].section == "problem" else Config(**kw)


def _cli_args(values: dict) -> list[str]:
    """The ``ncflow run`` flags that give ``values`` ({name: value})."""
    argv = []
    for k, v in values.items():
        s = SETTINGS[k]
        if s.kind == "bool":
            if v != s.default:
                argv.append(s.flag)
        else:
            argv += [s.flag, str(v)]
    return argv


def _bad_values(s) -> list:
    """Values outside the setting's accepted range, of several wrong types."""
    if s.kind == "bool":
        return [1, "yes"] + ([] if s.auto else [None])
    if s.kind == "choice":
        return ["bogus", s.choices[0].upper(), 3]
    bad = [True, "3"]
    if s.kind == "int":
        bad += [s.low - 1, 2.5]
        if s.high is not None:
            bad.append(s.high + 1)
    else:
        bad += [float("nan"), float("inf"), s.low - 1.0, 1e39]
        if s.low_open:
            bad.append(s.low)
        if s.high is not None and s.high_open:
            bad.append(s.high)
    return bad


BAD = [(name, v) for name, s in SETTINGS.items() for v in _bad_values(s)]
CONDITIONAL = [name for name, s in SETTINGS.items() if s.applies is not None]
#: a value in range and different from the default, per conditional setting
GOOD = {"alpha": 2.0, "target_scale": 3.0, "momentum": 0.5, "beta1": 0.8, "beta2": 0.99, "adam_eps": 1e-6,
        "flow_time": 2.0, "rtol": 1e-5, "atol": 1e-7, "active": 0, "perturb": 0.01}


# --------------------------------------------------------------------------- the table itself
def test_every_api_field_is_in_the_table_and_vice_versa():
    arrays = ("targets", "labels", "columns", "row_basis")  # data, not settings: given as arrays or files, no defaults
    assert [f.name for f in dataclasses.fields(Problem) if f.name not in arrays] == list(PROBLEM)
    assert [f.name for f in dataclasses.fields(Config)] == list(SOLVER)
    assert set(CONDITIONAL) == set(GOOD)
    assert LANE_KEYS == ("lambda_w", "lambda_h", "lambda_b", "alpha", "target_scale", "class_sizes", "runs", "seed",
                         "lr", "init_scale")
    for s in SETTINGS.values():
        if s.flag:
            assert s.flag.startswith("--") and s.check(s.field_default) == s.field_default
        assert s.section in ("problem", "solver") and s.help


def test_the_stated_defaults():
    """The two defaults the README explains: ONE value everywhere (checked below)."""
    assert SETTINGS["max_steps"].default == 30_000
    assert SETTINGS["dtype"].default == "float32"


# --------------------------------------------------------------------------- one default everywhere
def test_api_defaults_are_the_table_defaults():
    p, c = Problem(), Config()
    for name in PROBLEM:
        assert getattr(p, name) == SETTINGS[name].field_default, name
    for name in SOLVER:
        assert getattr(c, name) == SETTINGS[name].field_default, name
    assert (p.K, p.d, p.n, p.dtype, c.max_steps) == (10, 10, 100, "float32", 30_000)


@pytest.mark.parametrize("command", ["theory", "run"])
def test_cli_defaults_are_the_table_defaults(command):
    args = build_parser().parse_args([command])
    names = [k for k, s in SETTINGS.items() if s.flag and command in s.commands]
    assert {"K", "d", "n", "lambda_w"} <= set(names)
    if command == "run":
        assert set(names) == {k for k, s in SETTINGS.items() if s.flag}
    for name in names:
        assert getattr(args, name) == SETTINGS[name].field_default, name
    assert given_settings(args) == {}


def test_theory_and_run_default_to_the_same_problem():
    t, r = build_parser().parse_args(["theory"]), build_parser().parse_args(["run"])
    assert (t.K, t.d, t.n) == (r.K, r.d, r.n) == (10, 10, 100)


def test_toml_and_sweep_cli_defaults_are_the_table_defaults():
    settings = parse_config({}).points[0].settings
    for name, s in {**PROBLEM_SPECS, **SOLVER_SPECS}.items():
        assert settings[name] == s.field_default, name
    for name, default in extra_solver_keys().items():  # in the normalized config only where given
        assert name not in settings and default == SETTINGS[name].field_default
    assert Config(**{k: v for k, v in settings.items() if k in SOLVER}) == Config(progress=Config().progress)
    args = build_parser().parse_args(["sweep", "x.toml"])  # flags given override the TOML; none here
    assert given_settings(args) == {}
    for name, s in SETTINGS.items():
        if s.flag and "sweep" in s.commands:
            assert getattr(args, name) == s.field_default, name


def test_help_states_the_table_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "step budget per run (default: 30000; an integer in [1, 2147483647])" in out
    assert "(default: float32)" in out


# --------------------------------------------------------------------------- bad values: API, CLI, TOML
@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_value_api_names_the_field(name, value):
    s = SETTINGS[name]
    with pytest.raises(ProblemError if s.section == "problem" else ConfigError) as e:
        _build(name, value, **_context(name))
    msg = str(e.value)
    assert e.value.field == name and msg.startswith(f"{name} must be {s.range_text}"), msg
    assert "\n" not in msg


#: bad values as command-line text (every value is text there: "3" is a fine --runs)
BAD_CLI = [(n, v) for n, v in BAD if SETTINGS[n].flag and SETTINGS[n].kind != "bool" and v is not None
           and not isinstance(v, str)]


@pytest.mark.parametrize("name, value", BAD_CLI, ids=[f"{n}={v!r}" for n, v in BAD_CLI])
def test_bad_value_cli_names_the_flag(name, value, capsys, no_engine):
    s = SETTINGS[name]
    code, out, err = run_cli(["run", *TINY, *_cli_args(_context(name)), s.flag, str(value)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert f"{s.flag} must be {s.range_text}" in lines[0], err


@pytest.mark.parametrize("name, value", [(n, v) for n, v in BAD if SETTINGS[n].toml and v is not None],
                         ids=[f"{n}={v!r}" for n, v in BAD if SETTINGS[n].toml and v is not None])
def test_bad_value_toml_names_the_key(name, value):
    s = SETTINGS[name]
    ctx = _context(name)
    raw = {"problem": {}, "solver": {}}
    for k, v in {**ctx, name: value}.items():
        raw[SETTINGS[k].section][k] = v
    with pytest.raises(SweepError) as e:
        parse_config(raw)
    assert f"{s.section}.{name} must be {s.range_text}" in str(e.value) and "\n" not in str(e.value)
    raw[s.section].pop(name)
    good = s.field_default if s.field_default is not None else s.default
    if good is None:
        good = GOOD.get(name, 1)
    with pytest.raises(SweepError) as e:
        parse_config({**raw, "grid": {name: [good, value]}})
    assert f"grid.{name}[1] must be {s.range_text}" in str(e.value)


# --------------------------------------------------------------------------- given where it does not apply
@pytest.mark.parametrize("name", CONDITIONAL)
def test_inapplicable_setting_is_refused_by_the_api(name):
    with pytest.raises(NcflowError) as e:
        _build(name, GOOD[name])  # the default context: optimizer gd, init gaussian, loss mse
    assert e.value.field == name
    assert str(e.value).startswith(f"{name} is only used with {SETTINGS[name].applies[0]} "), str(e.value)
    _build(name, GOOD[name], **_context(name))  # where it applies it is fine


@pytest.mark.parametrize("name", CONDITIONAL)
def test_inapplicable_flag_is_refused_by_the_cli(name, capsys, no_engine):
    s = SETTINGS[name]
    for value in {GOOD[name], s.default} - {None}:  # given, even at the default value
        code, out, err = run_cli(["run", *TINY, s.flag, str(value)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, err
        assert lines[0].startswith(f"ncflow run: error: {s.flag} is only used with {s.applies[0]} "), err


@pytest.mark.parametrize("name", CONDITIONAL)
def test_inapplicable_key_is_refused_by_the_toml(name):
    s = SETTINGS[name]
    for value in {GOOD[name], s.default} - {None}:
        with pytest.raises(SweepError) as e:
            parse_config({s.section: {name: value}})
        assert f"{s.section}.{name} is only used with {s.applies[0]} " in str(e.value), str(e.value)
    with pytest.raises(SweepError) as e:
        parse_config({"grid": {name: [GOOD[name]]}})
    assert f"grid.{name} is only used with" in str(e.value)
    raw = {"problem": {}, "solver": {}}
    for k, v in {**_context(name), name: GOOD[name]}.items():
        raw[SETTINGS[k].section][k] = v
    if name in ("active", "perturb"):
        raw["problem"].update(K=4, d=5, n=3, lambda_w=2e-2, lambda_h=2e-2)  # c < 1: a saddle exists
    parse_config(raw)  # where it applies it is fine


def test_inapplicable_sweep_override_flag_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[problem]\nK = 4\n")
    code, out, err = run_cli(["sweep", str(cfg), "--dry-run", "--momentum", "0.5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "momentum is only used with optimizer" in err


def test_required_setting():
    with pytest.raises(ConfigError) as e:
        Config(init="saddle")
    assert e.value.field == "active" and str(e.value).startswith("active is required by init saddle")


def test_given_and_effective_values():
    """None = not given; the table's default is used where the setting applies; replacing the
    optimizer of a config that never set momentum is fine."""
    c = Config(optimizer="momentum")
    assert c.momentum is None and c.effective("momentum") == 0.9
    assert dataclasses.replace(c, optimizer="adam").effective("beta1") == 0.9
    assert Config(optimizer="adam", beta1=0.5).effective("beta1") == 0.5
    assert Config(init="saddle", active=1).effective("perturb") == 1e-3
    assert Config().effective("lr") is None  # "auto" stays None: resolved where it is used


# --------------------------------------------------------------------------- numbers, bools, strings
def test_numpy_scalars_become_python_scalars_and_never_wrap():
    p = Problem(K=np.uint8(200), d=np.int16(3), n=np.uint64(7), lambda_w=np.float32(0.25))
    assert (p.K, p.d, p.n) == (200, 3, 7) and type(p.K) is int and type(p.n) is int
    assert p.N == 1400 and type(p.lambda_w) is float and p.lambda_w == 0.25
    c = Config(runs=np.uint16(60_000), seed=np.uint32(2**32 - 1), max_steps=np.int64(INT32_MAX), lr=np.float32(0.5))
    assert (c.runs, c.seed, c.max_steps, c.lr) == (60_000, 2**32 - 1, INT32_MAX, 0.5)
    assert all(type(v) is int for v in (c.runs, c.seed, c.max_steps)) and type(c.lr) is float
    for kw in (dict(max_steps=np.int64(2**31)), dict(seed=np.uint64(2**32)), dict(chunk=np.int64(2**40))):
        with pytest.raises(ConfigError):
            Config(**kw)


@pytest.mark.parametrize("kw, field", [
    (dict(runs=True), "runs"), (dict(lr="0.1"), "lr"), (dict(init_scale=np.bool_(True)), "init_scale"),
    (dict(history="yes"), "history"), (dict(engine=1), "engine"),
])
def test_bools_and_strings_are_not_numbers(kw, field):
    with pytest.raises(ConfigError) as e:
        Config(**kw)
    assert e.value.field == field


def test_sizes_are_bounded_so_nothing_overflows():
    with pytest.raises(ProblemError) as e:
        Problem(K=2**16, n=2**16)
    assert e.value.field == "n" and "2^31" in str(e.value)
    Problem(K=2**15, d=1, n=2**16 - 1)  # N just below 2^31: accepted (nothing is allocated)


def test_coefficient_arrays_are_validated_elementwise():
    p = Problem(lambda_w=np.array([1e-3, 2e-3]))
    assert p.lambda_w.shape == (2,)
    with pytest.raises(ProblemError, match="lambda_w"):
        Problem(lambda_w=np.array([1e-3, np.nan]))
    with pytest.raises(ProblemError, match="lambda_w"):
        Problem(lambda_w=np.array([True, False]))


def test_error_named_uses_the_field():
    e = ConfigError("max_steps must be an integer in [1, 2147483647], got 0", field="max_steps")
    assert e.named("--max-steps") == "--max-steps must be an integer in [1, 2147483647], got 0"
    assert e.named("solver.max_steps").startswith("solver.max_steps must be")
    assert ConfigError("something else").named("--x") == "something else"
    assert isinstance(e, ValueError)


# --------------------------------------------------------------------------- parquet
def _fake_result(history: bool):
    """A tiny Result built by hand (no engine), enough for save/load."""
    from ncflow.maths import theory
    from ncflow.outcomes import default_tolerances
    from ncflow.result import Result

    p = Problem(K=3, d=4, n=2, lambda_w=1e-2, lambda_h=1e-2)
    pred = theory.predict(p)
    R = 3
    per_run = {"run": np.arange(R), "outcome": np.array(["global", "saddle", "global"], dtype=object),
               "steps": np.array([10, 20, 30]), "objective": np.array([0.1, 0.2, 0.1])}
    for k in ("nc1", "nc2", "nc3", "nc4", "gram_error", "grad_norm"):
        per_run[k] = np.array([1e-3, np.nan, 2e-3])
    hist = {"step": np.array([1, 10]), "objective": np.ones((2, R))} if history else None
    return Result(problem=p, prediction=pred, tolerances=default_tolerances(p, pred), config={"runs": R},
                  per_run=per_run, history=hist, timing={}, final_state=None, representation="full", device="cpu")


def test_parquet_round_trip_and_format_switch(tmp_path):
    from ncflow.result import load_table

    r = _fake_result(history=True)
    out = tmp_path / "res"
    r.save(str(out), table_format="parquet")
    assert {"runs.parquet", "history.parquet", "summary.json", "config.json"} <= set(os.listdir(out))
    assert "runs.csv" not in os.listdir(out)
    table = load_table(str(out))
    assert list(table) == list(r.per_run)
    for k, v in r.per_run.items():
        np.testing.assert_array_equal(np.asarray(table[k]), v)
    with pytest.raises(FileExistsError):
        r.save(str(out))  # a result is there
    _fake_result(history=False).save(str(out), overwrite=True)  # csv now: the parquet tables go
    assert {"runs.csv"} <= set(os.listdir(out)) and not {"runs.parquet", "history.parquet", "history.csv"} & set(
        os.listdir(out))
    np.testing.assert_array_equal(load_table(str(out))["steps"], r.per_run["steps"])
    with pytest.raises(ValueError, match="table_format must be one of csv, parquet"):
        r.save(str(tmp_path / "x"), table_format="feather")


def test_missing_pyarrow_is_one_line_naming_the_flag_and_the_extra(tmp_path, monkeypatch, capsys, no_engine):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    code, out, err = run_cli(["run", *TINY, "--format", "parquet", "--out", str(tmp_path / "o")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "--format parquet" in lines[0] and "pip install ncflow[parquet]" in lines[0]
    with pytest.raises(ImportError) as e:
        _fake_result(history=False).save(str(tmp_path / "api"), table_format="parquet")
    assert "--format parquet" in str(e.value) and "pip install ncflow[parquet]" in str(e.value)
    assert not (tmp_path / "api").exists() and not (tmp_path / "o").exists()


def test_run_format_parquet_writes_runs_parquet(tmp_path, capsys):
    import jax

    from ncflow.result import load_table

    jax.devices()  # start the backend before main() tries to set the CPU device count
    out = tmp_path / "o"
    code, stdout, err = run_cli(["run", *TINY, "--runs", "2", "--no-early-stop", "--max-steps", "20",
                                 "--no-progress", "--format", "parquet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "runs.parquet" in os.listdir(out) and "runs.csv" not in os.listdir(out)
    assert "runs.parquet" in stdout
    assert load_table(str(out))["steps"].tolist() == [20, 20]
