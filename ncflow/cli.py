"""The ``ncflow`` command line: a thin shell over the Python API.

Every flag is validated before anything is compiled; a bad value exits with status 2 and one
line on stderr that names the flag and the accepted range.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from . import theory
from .problem import Problem, ProblemError


class _Parser(argparse.ArgumentParser):
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


def format_prediction(problem: Problem, pred: theory.Prediction) -> str:
    """A readable table of the theory's prediction."""
    def fmt(v):
        return "—" if v is None else (f"{v:.10g}" if isinstance(v, float) else str(v))
    rows = [
        ("problem", f"K={problem.K} d={problem.d} n={problem.n} λ_W={float(problem.lambda_w):g} "
                    f"λ_H={float(problem.lambda_h):g} bias={problem.bias_mode}"
                    + (f" λ_b={float(problem.lambda_b):g}" if problem.bias_mode == "regularized" else "")),
        ("c = K√(nλ_Wλ_H)", fmt(pred.c)),
        ("geometry", pred.geometry),
        ("active directions s", str(pred.rank)),
        ("f*", fmt(pred.objective)),
        ("‖w_k‖ (rms)", fmt(pred.w_norm)),
        ("‖h_k‖ (rms)", fmt(pred.h_norm)),
        ("b* (each entry)", fmt(pred.bias)),
    ]
    if problem.loss == "mse" and pred.rank > 0 and pred.c < 1:
        try:
            rows.append(("saddle λ_min (Hessian)", fmt(theory.saddle_min_eigenvalue(problem))))
        except ProblemError:
            pass
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def cmd_theory(args) -> int:
    """``ncflow theory``: print the closed-form prediction."""
    problem = problem_from_args(args)
    try:
        pred = theory.predict(problem)
    except ProblemError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({**pred.to_json(), "problem": problem.describe()}))
    else:
        print("Theory prediction (Zhou et al. 2022, closed form)")
        print(format_prediction(problem, pred))
    return 0


THEORY_DEFAULTS = {"K": 10, "d": 16, "n": 100, "lambda_w": 5e-4, "lambda_h": 5e-4}


def build_parser() -> argparse.ArgumentParser:
    """The full ``ncflow`` argument parser."""
    parser = _Parser(prog="ncflow", description="Batched simulator of the unconstrained features model.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    pt = sub.add_parser("theory", help="closed-form prediction for a problem")
    add_problem_flags(pt, THEORY_DEFAULTS)
    pt.add_argument("--json", action="store_true", help="print one JSON object")
    pt.set_defaults(func=cmd_theory)
    from . import cli_run  # local import keeps `ncflow theory` free of engine start-up
    cli_run.register(sub)
    from . import cli_sweep
    cli_sweep.register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``ncflow`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        sys.stderr.write(f"ncflow {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ncflow: interrupted\n")
        return 130


if __name__ == "__main__":
    # run through the package module so that the error classes are the ones cli_run imports
    from ncflow.cli import main as _main

    raise SystemExit(_main())
