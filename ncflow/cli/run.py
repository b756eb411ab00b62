"""``ncflow run``: batched gradient descent from random starts, classified against the theory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

from ncflow.cli.common import (
    UsageError,
    add_output_flags,
    add_problem_flags,
    add_solver_flags,
    check_distributed,
    check_out,
    claim_out,
    config_from_args,
    configure_jax,
    flag_message,
    problem_from_args,
    select_devices,
)


def cmd_run(args) -> int:
    """``ncflow run``."""
    problem = problem_from_args(args)
    if args.engine == "collapsed" and problem.loss != "mse":
        raise UsageError("--engine collapsed supports the MSE loss only")
    config = config_from_args(args)
    check_distributed(args)
    check_out(args)
    if args.format != "csv":
        from ncflow.result import require_table_format

        try:
            require_table_format(args.format)
        except ImportError:
            raise UsageError("--format parquet needs pyarrow, which is not installed: "
                             "pip install ncflow[parquet]") from None
    with stdout_to_stderr():  # C++ libraries (e.g. gloo) print to fd 1; keep stdout for results
        result, claim = _compute(args, problem, config)
    if result is None:  # not process 0
        return 0
    try:
        if args.out:
            result.save(args.out, overwrite=args.overwrite, table_format=args.format)
    finally:
        if claim is not None:
            from ncflow.result import release_output_dir

            release_output_dir(claim)
    if args.json:
        print(json.dumps(_jsonable(result.summary())))
    else:
        print(result.report())
        if args.out:
            print(f"Results written to {args.out}/ (runs.{args.format}, summary.json, config.json)")
    return 0


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


def _compute(args, problem, config):
    """Set up JAX, claim --out (process 0), run the simulation: ``(Result, claim)`` on process 0,
    ``(None, None)`` elsewhere. The output directory is created, proven writable and claimed
    before anything is compiled, so a bad --out never costs the computation."""
    configure_jax(args)
    import jax

    from ncflow.batch.loop import simulate
    from ncflow.errors import ConfigError
    from ncflow.result import release_output_dir

    main = jax.process_index() == 0
    if not main:  # only process 0 prints and writes files
        config = dataclasses.replace(config, progress=False)
    devices = select_devices(args)
    claim = claim_out(args) if main else None
    try:
        result = simulate(problem, config, devices=devices)
    except BaseException as e:  # the claim is released on every failure (the caller releases it after saving)
        if claim is not None:
            release_output_dir(claim)
        if isinstance(e, ConfigError):
            raise UsageError(flag_message(e)) from None
        raise
    return (result, claim) if main else (None, None)


def _jsonable(obj):
    from ncflow.io import to_jsonable

    return to_jsonable(obj)


def register(sub) -> None:
    """Add the ``run`` sub-command to the ``ncflow`` parser."""
    p = sub.add_parser("run", help="batched GD from random starts, classified against the theory",
                       description="Run R random initializations under full-batch gradient descent and "
                                   "classify each against the closed-form theory. With no arguments: "
                                   "K=10, d=10, n=100, λ_W=λ_H=5e-4, unregularized bias, 1000 runs.")
    add_problem_flags(p, "run")
    add_solver_flags(p, "run")
    add_output_flags(p, table_format=True)
    p.set_defaults(func=cmd_run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `ncflow` command")
