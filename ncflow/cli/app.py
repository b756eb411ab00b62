"""The ``ncflow`` command line: a thin shell over the Python API.

Every flag is validated before anything is compiled; a bad value exits with status 2 and one
line on stderr that names the flag and the accepted range. A failure after the computation (a
result that cannot be written, a lost process of a multi-process job) is one line too, status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ncflow.cli.common import Parser, UsageError, add_problem_flags, problem_from_args
from ncflow.errors import ProblemError
from ncflow.maths import theory
from ncflow.report import format_prediction, prediction_json


def cmd_theory(args) -> int:
    """``ncflow theory``: print the closed-form prediction."""
    problem = problem_from_args(args)
    try:
        pred = theory.predict(problem)
    except ProblemError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({**prediction_json(problem, pred), "problem": problem.describe()}))
    else:
        if problem.depth == 1:
            print("Theory prediction (Zhou et al. 2022, closed form)")
        elif problem.activation == "linear":
            print(f"Theory prediction (deep linear UFM, depth {problem.depth}: THEORY §9, closed form)")
        else:
            print(f"Theory prediction (deep ReLU UFM, depth {problem.depth}: THEORY §9.6, closed forms of its "
                  "known critical points)")
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
    except Exception as e:
        line = lost_peer(e)
        if line is None:
            raise
        # One line, then exit at once: a normal exit would wait at jax.distributed's shutdown
        # barrier for the dead process until the heartbeat timeout (~100 s), and then JAX's
        # coordination client ends the process from C++ (LOG(FATAL): an abort and a ~60-line
        # stack dump that Python cannot catch). An --out claim is already released by then.
        sys.stderr.write(f"ncflow {args.command}: error: {line}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


#: words of the errors a collective of a multi-process job raises when another process is gone
_PEER_GONE = ("Gloo", "gloo", "Connection reset", "Connection refused", "Broken pipe", "heartbeat", "UNAVAILABLE",
              "coordination service", "DEADLINE_EXCEEDED")


def lost_peer(err: BaseException) -> str | None:
    """The one-line message for ``err`` when it is a multi-process job's collective failing because
    another process stopped (killed, crashed), else None. With 2 processes it names the other."""
    jax = sys.modules.get("jax")
    if jax is None or not any(w in str(err) for w in _PEER_GONE):
        return None
    try:
        count, me = jax.process_count(), jax.process_index()
    except Exception:  # noqa: BLE001 - no backend: not a multi-process job
        return None
    if count < 2:
        return None
    who = f"process {1 - me}" if count == 2 else "another process"
    text = str(err)
    reason = next((r for w, r in _PEER_REASONS if w in text), "a collective failed")
    return (f"lost {who} of this {count}-process job ({reason}): it stopped or became unreachable, so process {me} "
            "stops too")


#: what the lost-peer line says for the words of the collective's error
_PEER_REASONS = (("Connection reset", "connection reset by peer"), ("Connection refused", "connection refused"),
                 ("Broken pipe", "broken pipe"), ("heartbeat", "no heartbeat"),
                 ("timed out", "no answer within the time limit"),
                 ("DEADLINE_EXCEEDED", "no answer within the time limit"))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
