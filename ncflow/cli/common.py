"""What the sub-commands share: the parser class, flag types, the problem/solver flags (generated
from the one table of settings, :mod:`ncflow.settings`), output flags, JAX set-up and the naming of
API errors by their flag. Imports nothing of the other CLI modules."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from ncflow.errors import NcflowError
from ncflow.problem import two_level_sizes
from ncflow.settings import MAX_CPU_DEVICES, PROBLEM, SETTINGS, SOLVER, Setting, check_applies

#: {API field: flag} of every setting that has one (generated from the table)
PROBLEM_FLAGS = {k: SETTINGS[k].flag for k in PROBLEM if SETTINGS[k].flag}
CONFIG_FLAGS = {k: SETTINGS[k].flag for k in SOLVER if SETTINGS[k].flag}
#: the attribute of a parsed namespace holding the names of the settings given on the command line
GIVEN = "_given_settings"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message):  # noqa: D102 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class UsageError(Exception):
    """A flag value rejected after parsing; the message names the flag."""


def int_at_least(low: int, high: int | None = None):
    """argparse type: an integer >= low (and <= high, if given); for flags that are not settings,
    e.g. --devices."""
    rng = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {text!r}")
        return value
    return parse


def float_in(low: float = 0.0, high: float = math.inf, low_open: bool = False):
    """argparse type: a finite float in [low, high] (or (low, high] when low_open); for flags that
    are not settings of the table (``ncflow metrics``)."""
    bracket = "(" if low_open else "["
    rng = f"{bracket}{low:g}, {'inf' if high == math.inf else f'{high:g}'}"
    rng += ")" if high == math.inf else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number in {rng}, got {text!r}") from None
        bad_low = value <= low if low_open else value < low
        if not math.isfinite(value) or bad_low or value > high:
            raise argparse.ArgumentTypeError(f"must be a finite number in {rng}, got {text!r}")
        return value
    return parse


# --------------------------------------------------------------------------- settings as flags


def flag_of(field: str | None) -> str | None:
    """The command-line flag of setting ``field`` (None if it has none)."""
    s = SETTINGS.get(field) if field else None
    return s.flag if s is not None else None


#: flags of the API fields outside the table of settings
DATA_FLAGS = {"targets": "--targets", "labels": "--labels", "ratio": "--ratio", "majority": "--majority",
              "devices": "--devices"}


def flag_message(err, extra: dict | None = None) -> str:
    """The message of an API error with the setting called by its flag (``--max-steps must be
    ...``), from the error's ``.field`` (:data:`DATA_FLAGS` and ``extra``: flags of fields outside
    the table); other errors and plain strings are returned unchanged."""
    if isinstance(err, NcflowError):
        return err.named(flag_of(err.field) or {**DATA_FLAGS, **(extra or {})}.get(err.field))
    return str(err)


def _parse_text(setting: Setting):
    """argparse type of a setting: the text as the setting's kind ("auto" -> None where the
    setting takes it; comma-separated text -> a tuple for "ints" and ``per_layer`` settings). Text
    that does not parse is kept and refused, naming the flag, when the table checks the value
    (:func:`setting_values`)."""
    def parse(text: str):
        if setting.auto and text == "auto":
            return None
        if setting.kind == "ints" or (setting.per_layer and "," in text):  # one value or a comma-separated list
            kind = int if setting.kind == "ints" else float
            try:
                items = tuple(kind(t) for t in text.split(","))
            except ValueError:
                return text
            return items[0] if len(items) == 1 and "," not in text else items
        if setting.kind in ("int", "float"):
            try:
                return int(text) if setting.kind == "int" else float(text)
            except ValueError:
                return text
        return text
    return parse


class _SettingAction(argparse.Action):
    """Store a setting's value and remember that it was given (``args._given_settings``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, frozenset()) | {self.dest})


def _add_setting(group, s: Setting) -> None:
    names = [s.flag] + ([s.short] if s.short else [])
    text = s.help.replace("%", "%%")
    if s.kind == "bool":
        text = f"set {s.name} = {not s.negate}: {text[0].lower()}{text[1:]}" if s.negate else text
        group.add_argument(*names, dest=s.name, action=_SettingAction, nargs=0, const=not s.negate,
                           default=s.field_default, help=f"{text} (default: {s.default_text()})")
        return
    metavar = "{" + ",".join(s.choices) + "}" if s.kind == "choice" else s.name.upper()
    rng = "" if s.kind == "choice" else f"; {s.range_text}"
    group.add_argument(*names, dest=s.name, action=_SettingAction, type=_parse_text(s), default=s.field_default,
                       metavar=metavar, help=f"{text} (default: {s.default_text()}{rng})")


def _add_section(p: argparse.ArgumentParser, section: str, command: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group(section)
    for name in (PROBLEM if section == "problem" else SOLVER):
        s = SETTINGS[name]
        if s.flag and command in s.commands:
            _add_setting(g, s)
    p.set_defaults(**{GIVEN: frozenset()})
    return g


def add_problem_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The problem flags of ``command`` ("theory", "run" or "sweep"), generated from the table, and
    the shorthands that build class sizes or targets (THEORY §7): ``--majority R --ratio ρ`` (R
    classes of round(ρ n) samples, the other K − R of n = ``--per-class``), and on theory and run
    ``--targets FILE.npy`` (a K × N array) with optional ``--labels FILE.npy`` (N class indices)."""
    g = _add_section(p, "problem", command)
    g.add_argument("--majority", type=int_at_least(1), default=None, metavar="R",
                   help="two-level class sizes: the first R classes have round(ratio × n) samples, the other "
                        "K − R have n (--per-class); needs --ratio")
    g.add_argument("--ratio", type=float_in(1.0), default=None, metavar="RHO",
                   help="two-level class sizes: majority/minority size ratio ρ >= 1 (with --majority)")
    if command in ("theory", "run"):
        g.add_argument("--targets", default=None, metavar="FILE.npy",
                       help="an arbitrary real target matrix T (K × N, .npy): soft labels, label smoothing, regression")
        g.add_argument("--labels", default=None, metavar="FILE.npy",
                       help="per-sample class labels (N integers in [0, K), .npy) of --targets, for the NC metrics")


def _load_array(path: str, flag: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line naming the flag
        raise UsageError(f"{flag}: cannot read {path!r} as a .npy array ({type(e).__name__}: {e})") from None


def _data_values(args, values: dict) -> dict:
    """Class sizes, targets and labels from the shorthand flags, checked; ``values`` updated."""
    given = getattr(args, GIVEN, frozenset())
    majority, ratio = getattr(args, "majority", None), getattr(args, "ratio", None)
    targets, labels = getattr(args, "targets", None), getattr(args, "labels", None)
    if (majority is None) != (ratio is None):
        raise UsageError("--majority and --ratio must be given together (the two-level class sizes)")
    if majority is not None:
        if values.get("class_sizes") is not None:
            raise UsageError("--majority/--ratio cannot be combined with --class-sizes")
        K = values["K"]
        if majority >= K:
            raise UsageError(f"--majority must be an integer in [1, {K - 1}] (K = {K} classes), got {majority}")
        try:
            values["class_sizes"] = two_level_sizes(K, values["n"], majority, ratio)
        except NcflowError as e:
            raise UsageError(flag_message(e)) from None
    elif values.get("class_sizes") is not None and "n" in given:
        raise UsageError("--per-class cannot be combined with --class-sizes (the sizes give every class's n_k)")
    if labels is not None and targets is None:
        raise UsageError("--labels needs --targets (one-hot problems take their labels from the class sizes)")
    if targets is not None:
        values["targets"] = _load_array(targets, "--targets")
        if labels is not None:
            values["labels"] = _load_array(labels, "--labels")
    return values


def add_solver_flags(p: argparse.ArgumentParser, command: str = "run") -> None:
    """The solver flags of ``command`` ("run" or "sweep"), generated from the table, and --devices."""
    g = _add_section(p, "solver", command)
    g.add_argument("--devices", type=int_at_least(1), default=None,
                   help="use the first N devices (default: all; on CPU one device per core)")


def _flag_names(args, section: str) -> list[str]:
    return [k for k in (PROBLEM if section == "problem" else SOLVER) if SETTINGS[k].flag and hasattr(args, k)]


def setting_values(args, section: str) -> dict:
    """``{name: value}`` of the section's settings that have a flag in this command, each checked
    by the table (a rejected value raises UsageError naming the flag)."""
    out = {}
    for k in _flag_names(args, section):
        try:
            out[k] = SETTINGS[k].check(getattr(args, k))
        except NcflowError as e:
            raise UsageError(flag_message(e)) from None
    return out


def given_settings(args) -> dict:
    """``{name: value}`` of the settings given on the command line, each checked by the table."""
    given = getattr(args, GIVEN, frozenset())
    values = {**setting_values(args, "problem"), **setting_values(args, "solver")}
    return {k: v for k, v in values.items() if k in given}


def _refuse_inapplicable(args, values: dict) -> None:
    try:
        check_applies(values, getattr(args, GIVEN, frozenset()) & set(values))
    except NcflowError as e:
        raise UsageError(flag_message(e)) from None


def problem_from_args(args):
    """Build the Problem from parsed flags; a rejected field is reported by its flag name.
    Settings without a flag in this command (``theory`` has no --dtype) take the table's default."""
    from ncflow.problem import Problem

    values = setting_values(args, "problem")
    if not values["bias"] and values["lambda_b"] != 0.0:
        raise UsageError("--lambda-b cannot be combined with --no-bias (there is no bias to regularize)")
    _refuse_inapplicable(args, values)
    values = _data_values(args, values)
    try:
        return Problem(**values)
    except NcflowError as e:
        raise UsageError(flag_message(e)) from None


def add_output_flags(p: argparse.ArgumentParser, table_format: bool = False) -> None:
    """Output flags shared by ``run`` and ``sweep`` (``table_format``: also --format csv|parquet)."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("--out", metavar="DIR", default=None, help="write runs.csv, summary.json, config.json here")
    if table_format:
        g.add_argument("--format", choices=("csv", "parquet"), default="csv",
                       help="file format of the per-run tables under --out: runs.csv (default) or runs.parquet "
                            "(needs pyarrow: pip install ncflow[parquet])")
    g.add_argument("--overwrite", action="store_true", help="allow --out to replace an earlier result")
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="force the progress bar on (default: only on a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    d = p.add_argument_group("multi-process (jax.distributed)")
    d.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="coordinator address of a multi-process job (process 0 listens there)")
    d.add_argument("--num-processes", type=int_at_least(1), default=None, help="number of processes P")
    d.add_argument("--process-id", type=int_at_least(0), default=None, help="this process's id in [0, P)")
    d.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with automatic detection (Slurm, TPU, MPI, ...)")
    d.add_argument("--cpu-devices", type=int_at_least(1, MAX_CPU_DEVICES), default=None,
                   help=f"XLA CPU devices per process, at most {MAX_CPU_DEVICES} (default: cores, divided by the "
                        "local process count)")
    g.add_argument("--compile-cache", metavar="DIR|off", default=None,
                   help="persistent XLA compilation cache, so a second run of a shape starts fast (default: "
                        "NCFLOW_COMPILE_CACHE, else ~/.cache/ncflow/xla; 'off' disables it)")


def configure_jax(args) -> None:
    """Process-wide JAX settings, applied once before anything is compiled.

    On CPU the run axis is sharded over one XLA device per core (``jax_num_cpu_devices``), so
    a CPU run uses every core; it must be set before the backend starts.
    """
    import jax

    multi = args.coordinator is not None or args.distributed
    cpu_devices = args.cpu_devices
    if cpu_devices is None:
        local_procs = args.num_processes if args.coordinator and _is_local(args.coordinator) else 1
        cpu_devices = min(MAX_CPU_DEVICES, max(1, (os.cpu_count() or 1) // (local_procs or 1)))
    try:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
        if multi:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except RuntimeError:  # backend already started (e.g. called twice in one process)
        pass
    if args.coordinator is not None:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    cache = compile_cache_dir(args.compile_cache)
    if cache is not None:
        _one_line_cache_warnings(cache)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _one_line_cache_warnings(cache: str) -> None:
    """JAX warns once per unreadable cache entry (a corrupt or foreign file) and then compiles the
    program again; say it once, in one line, and drop the rest."""
    import warnings

    shown = []
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "persistent compilation cache" not in str(message):
            return previous(message, category, filename, lineno, file, line)
        if not shown:
            shown.append(True)
            sys.stderr.write(f"ncflow: warning: the compilation cache {cache} has unusable entries; compiling "
                             "those programs again (delete the directory to clear it)\n")

    warnings.showwarning = show


def compile_cache_dir(flag: str | None) -> str | None:
    """The persistent compilation cache to use: ``--compile-cache``, else ``NCFLOW_COMPILE_CACHE``,
    else ``$XDG_CACHE_HOME/ncflow/xla`` (``~/.cache/ncflow/xla``); None when it is "off" or cannot be
    created and written (then one warning line on stderr: the run compiles without a cache)."""
    choice = flag if flag is not None else os.environ.get("NCFLOW_COMPILE_CACHE")
    if choice is not None and choice.strip().lower() in ("off", "0", "none", "no", "false", ""):
        return None
    if choice is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        choice = os.path.join(base, "ncflow", "xla")
    try:
        os.makedirs(choice, exist_ok=True)
        probe = os.path.join(choice, f".write-probe-{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as e:
        sys.stderr.write(f"ncflow: warning: compilation cache {choice} is unusable ({e.strerror or e}); "
                         "compiling without it\n")
        return None
    return choice


def _is_local(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1")


def check_distributed(args) -> None:
    """--coordinator, --num-processes and --process-id go together, with 0 <= id < P."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if any(given) and not all(given):
        raise UsageError("--coordinator, --num-processes and --process-id must be given together")
    if all(given):
        if args.process_id >= args.num_processes:
            raise UsageError(f"--process-id must be in [0, {args.num_processes - 1}], got {args.process_id}")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--coordinator must be HOST:PORT with a port in [1, 65535], got {args.coordinator!r}")
        if args.distributed:
            raise UsageError("--distributed (automatic detection) cannot be combined with --coordinator")


def config_from_args(args):
    """The engine Config from parsed flags (and --progress); a rejected setting is reported by its flag."""
    from ncflow.config import Config, cap_chunk

    values = setting_values(args, "solver")
    _refuse_inapplicable(args, values)
    try:
        return cap_chunk(Config(progress=args.progress, **values))
    except NcflowError as e:
        raise UsageError(flag_message(e)) from None


def select_devices(args):
    """The first ``--devices`` devices, or None for all of them."""
    import jax

    if args.devices is None:
        return None
    avail = jax.devices()
    if args.devices > len(avail):
        raise UsageError(f"--devices must be in [1, {len(avail)}] on this machine, got {args.devices}")
    return avail[: args.devices]


def check_out(args) -> None:
    """Refuse an --out that would overwrite a result or is not a directory (before compiling)."""
    from ncflow.result import ResultExistsError, check_output_dir

    if args.out is None:
        return
    if not args.out.strip():
        raise UsageError("--out must name a directory, got an empty string")
    try:
        check_output_dir(args.out, args.overwrite)
    except ResultExistsError:
        raise UsageError(f"--out {args.out} already holds a result; choose another directory or pass "
                         "--overwrite") from None
    except NotADirectoryError:
        raise UsageError(f"--out {args.out} exists and is not a directory") from None


def claim_out(args) -> str | None:
    """Create, prove writable and claim --out before anything is compiled (process 0 only; the
    caller releases the claim after saving); None without --out. Errors name --out."""
    from ncflow.result import OutputDirError, ResultExistsError, claim_output_dir

    if args.out is None:
        return None
    try:
        return claim_output_dir(args.out, args.overwrite)
    except ResultExistsError:
        raise UsageError(f"--out {args.out} already holds a result; choose another directory or pass "
                         "--overwrite") from None
    except NotADirectoryError:
        raise UsageError(f"--out {args.out} exists and is not a directory") from None
    except OutputDirError as e:
        raise UsageError(f"--out {e}") from None


def dir_text(path: str) -> str:
    """A directory as printed: ``path`` with one trailing separator (``results/`` for ``results``,
    ``results/`` or ``results//``)."""
    return path.rstrip(os.sep) + os.sep


def save_failed(command: str, out: str, err: OSError, what: str = "the result") -> int:
    """One line on stderr for an --out that could not be written after the computation (a full
    disk, a vanished directory); returns the exit status 1. The caller has printed the report."""
    reason = err.strerror or str(err) or type(err).__name__  # not err.filename: a staging file's name
    sys.stderr.write(f"ncflow {command}: error: --out {dir_text(out)}: {what} could not be written: {reason}\n")
    sys.stderr.flush()
    return 1


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for the duration (restored afterwards)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
