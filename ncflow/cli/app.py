"""The ``ncflow`` command line: a thin shell over the Python API.

Every flag is validated before anything is compiled; a bad value exits with status 2 and one
line on stderr that names the flag and the accepted range.
"""

from __future__ import annotations

import argparse
import json
import sys

from ncflow.cli.common import Parser, UsageError, add_problem_flags, problem_from_args
from ncflow.errors import ProblemError
from ncflow.maths import theory
from ncflow.report import format_prediction


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


def build_parser() -> argparse.ArgumentParser:
    """The full ``ncflow`` argument parser."""
    parser = Parser(prog="ncflow", description="Batched simulator of the unconstrained features model.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    pt = sub.add_parser("theory", help="closed-form prediction for a problem")
    add_problem_flags(pt, "theory")  # the defaults of `ncflow run` (ncflow.settings)
    pt.add_argument("--json", action="store_true", help="print one JSON object")
    pt.set_defaults(func=cmd_theory)
    from ncflow.cli import run as cli_run  # local import keeps `ncflow theory` free of engine start-up
    cli_run.register(sub)
    from ncflow.cli import sweep as cli_sweep
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
