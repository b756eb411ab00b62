"""What the sub-commands share: the parser class, flag types, problem/solver/output flags, JAX set-up
and the translation of API errors into flag-named messages. Imports nothing of the other CLI modules."""

from __future__ import annotations

import argparse
import math
import os
import sys

from ncflow.errors import ProblemError
from ncflow.problem import Problem


CONFIG_FLAGS = {"runs": "--runs", "seed": "--seed", "lr": "--lr", "max_steps": "--max-steps",
                "init_scale": "--init-scale", "engine": "--engine", "chunk": "--chunk",
                "gtol": "--gtol", "group": "--group", "optimizer": "--optimizer",
                "momentum": "--momentum", "beta1": "--beta1", "beta2": "--beta2",
                "flow_time": "--flow-time", "rtol": "--rtol", "atol": "--atol", "init": "--init",
                "active": "--active", "perturb": "--perturb", "adam_eps": "--adam-eps"}


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message):  # noqa: D102 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class UsageError(Exception):
    """A flag value rejected after parsing; the message names the flag."""


def int_at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


def float_in(low: float = 0.0, high: float = math.inf, low_open: bool = False):
    """argparse type: a finite float in [low, high] (or (low, high] when low_open)."""
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


PROBLEM_FLAGS = {"K": "--classes", "d": "--dim", "n": "--per-class", "lambda_w": "--lambda-w",
                 "lambda_h": "--lambda-h", "lambda_b": "--lambda-b", "bias": "--no-bias",
                 "dtype": "--dtype", "loss": "--loss", "alpha": "--alpha",
                 "target_scale": "--target-scale"}


def add_problem_flags(p: argparse.ArgumentParser, defaults: dict) -> None:
    """The problem flags shared by ``theory``, ``run`` and ``sweep``."""
    g = p.add_argument_group("problem")
    g.add_argument("--classes", "-K", type=int_at_least(2), default=defaults["K"], help="number of classes K >= 2")
    g.add_argument("--dim", "-d", type=int_at_least(1), default=defaults["d"], help="feature dimension d >= 1")
    g.add_argument("--per-class", "-n", type=int_at_least(1), default=defaults["n"], help="samples per class n >= 1")
    g.add_argument("--lambda-w", type=float_in(0.0), default=defaults["lambda_w"], help="weight decay on W, >= 0")
    g.add_argument("--lambda-h", type=float_in(0.0), default=defaults["lambda_h"], help="weight decay on H, >= 0")
    g.add_argument("--lambda-b", type=float_in(0.0), default=0.0, help="weight decay on b, >= 0 (0: unregularized bias)")
    g.add_argument("--no-bias", action="store_true", help="bias-free model (b = 0)")
    g.add_argument("--loss", choices=("mse", "rescaled-mse"), default="mse",
                   help="loss: mse, or rescaled-mse (per sample α(z_y − M)² + Σ_{j≠y} z_j²)")
    g.add_argument("--alpha", type=float_in(0.0, low_open=True), default=1.0, help="α > 0 of rescaled-mse")
    g.add_argument("--target-scale", type=float_in(0.0, low_open=True), default=1.0,
                   help="M > 0 of rescaled-mse")


def problem_from_args(args, dtype: str = "float64") -> Problem:
    """Build the Problem from parsed flags; a rejected field is reported by its flag name."""
    if args.no_bias and args.lambda_b != 0.0:
        raise UsageError("--lambda-b cannot be combined with --no-bias (there is no bias to regularize)")
    try:
        return Problem(K=args.classes, d=args.dim, n=args.per_class, lambda_w=args.lambda_w,
                       lambda_h=args.lambda_h, lambda_b=args.lambda_b, bias=not args.no_bias,
                       loss=args.loss, alpha=args.alpha, target_scale=args.target_scale, dtype=dtype)
    except ProblemError as e:
        msg = str(e)
        for field, flag in PROBLEM_FLAGS.items():
            if msg.startswith(field + " "):
                msg = flag + msg[len(field):]
                break
        raise UsageError(msg) from None


def seed_type(text: str) -> int:
    """argparse type: an integer seed in [0, 2^32)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 4294967295], got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 4294967295], got {text!r}")
    return v


def add_solver_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the GD solver shared by ``run`` and ``sweep``."""
    g = p.add_argument_group("solver")
    g.add_argument("--runs", "-R", type=int_at_least(1), default=1000, help="number of random starts (default 1000)")
    g.add_argument("--seed", type=seed_type, default=0, help="master seed; run i uses fold_in(key(seed), i)")
    g.add_argument("--lr", type=float_in(0.0, low_open=True), default=None,
                   help="GD step size (default: 1/L, theory.default_step_size)")
    g.add_argument("--max-steps", type=int_at_least(1), default=30_000, help="step budget per run")
    g.add_argument("--init-scale", type=float_in(0.0), default=1.0,
                   help="Gaussian init scale: entries N(0, scale²/d); 0 = start at the origin")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--engine", choices=("auto", "full", "collapsed"), default="auto",
                   help="state representation (auto: the cheaper exact one)")
    g.add_argument("--no-early-stop", action="store_true",
                   help="every run takes exactly --max-steps steps (throughput benchmarks)")
    g.add_argument("--chunk", type=int_at_least(1), default=100, help="steps between stopping checks")
    g.add_argument("--group", type=int_at_least(1), default=None, help="runs per cache group (default: auto)")
    g.add_argument("--gtol", type=float_in(0.0, low_open=True), default=None,
                   help="stationarity tolerance on the gradient norm (default: from dtype and problem)")
    g.add_argument("--history", action="store_true", help="record diagnostics at log-spaced steps")
    g.add_argument("--optimizer", default="gd",
                   help="gd (default), momentum, nesterov, adam, or flow (adaptive ODE gradient flow)")
    g.add_argument("--momentum", type=float_in(0.0, 1.0), default=None, help="momentum in [0, 1) (momentum/nesterov)")
    g.add_argument("--beta1", type=float_in(0.0, 1.0), default=0.9, help="Adam β1")
    g.add_argument("--beta2", type=float_in(0.0, 1.0), default=0.999, help="Adam β2")
    g.add_argument("--adam-eps", type=float_in(0.0, low_open=True), default=1e-8, help="Adam ε")
    g.add_argument("--flow-time", type=float_in(0.0, low_open=True), default=None,
                   help="gradient-flow time horizon (default: until stationary)")
    g.add_argument("--rtol", type=float_in(0.0, low_open=True), default=None,
                   help="flow solver relative tolerance (default 1e-10 float64, 1e-6 float32)")
    g.add_argument("--atol", type=float_in(0.0, low_open=True), default=None,
                   help="flow solver absolute tolerance (default 1e-12 float64, 1e-8 float32)")
    g.add_argument("--init", default="gaussian", help="gaussian (default), orthogonal, small, or saddle")
    g.add_argument("--active", type=int_at_least(0), default=None,
                   help="for --init saddle: active directions s of the critical point")
    g.add_argument("--perturb", type=float_in(0.0), default=1e-3, help="for --init saddle: perturbation size")
    g.add_argument("--devices", type=int_at_least(1), default=None,
                   help="use the first N devices (default: all; on CPU one device per core)")


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """Output flags shared by ``run`` and ``sweep``."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("--out", metavar="DIR", default=None, help="write runs.csv, summary.json, config.json here")
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
    d.add_argument("--cpu-devices", type=int_at_least(1), default=None,
                   help="XLA CPU devices per process (default: cores, divided by the local process count)")
    g.add_argument("--compile-cache", metavar="DIR", default=os.environ.get("NCFLOW_COMPILE_CACHE"),
                   help="persistent XLA compilation cache (also NCFLOW_COMPILE_CACHE); speeds up later runs")


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
        cpu_devices = max(1, (os.cpu_count() or 1) // (local_procs or 1))
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
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
    """The engine Config from parsed flags; a rejected setting is reported by its flag."""
    from ncflow.config import Config, ConfigError

    try:
        return Config(runs=args.runs, seed=args.seed, lr=args.lr, max_steps=args.max_steps,
                      init_scale=args.init_scale, engine=args.engine, early_stop=not args.no_early_stop,
                      chunk=args.chunk, group=args.group, gtol=args.gtol, history=args.history,
                      progress=args.progress, optimizer=args.optimizer, momentum=args.momentum,
                      beta1=args.beta1, beta2=args.beta2, adam_eps=args.adam_eps, flow_time=args.flow_time,
                      rtol=args.rtol, atol=args.atol, init=args.init, active=args.active, perturb=args.perturb)
    except ConfigError as e:
        raise UsageError(flag_message(str(e))) from None


def flag_message(msg: str) -> str:
    """Replace a leading Config field name by its command-line flag."""
    for field, flag in CONFIG_FLAGS.items():
        if msg.startswith(field + " ") or msg.startswith(field + ":"):
            return flag + msg[len(field):]
    return msg


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
    try:
        check_output_dir(args.out, args.overwrite)
    except ResultExistsError:
        raise UsageError(f"--out {args.out} already holds a result; choose another directory or pass --overwrite") from None
    except NotADirectoryError:
        raise UsageError(f"--out {args.out} exists and is not a directory") from None
