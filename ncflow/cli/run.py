"""``ncflow run``: batched gradient descent from random starts, classified against the theory."""

from __future__ import annotations

import dataclasses
import json
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
    dir_text,
    flag_message,
    problem_from_args,
    save_failed,
    select_devices,
    stdout_to_stderr,
)


def cmd_run(args) -> int:
    """``ncflow run``."""
    problem = problem_from_args(args)
    if args.engine == "collapsed" and problem.loss != "mse":
        raise UsageError("--engine collapsed supports the MSE loss only")
    config = config_from_args(args)
    _check_theory(problem)
    check_distributed(args)
    if not args.dry_run:
        check_out(args)
    if args.format != "csv":
        from ncflow.result import require_table_format

        try:
            require_table_format(args.format)
        except ImportError:
            raise UsageError("--format parquet needs pyarrow, which is not installed: "
                             "pip install ncflow[parquet]") from None
    if args.dry_run:
        return _dry_run(args, problem, config)
    with stdout_to_stderr():  # C++ libraries (e.g. gloo) print to fd 1; keep stdout for results
        result, claim = _compute(args, problem, config)
    if result is None:  # not process 0
        return 0
    unsaved = None
    try:
        if args.out:
            result.save(args.out, overwrite=args.overwrite, table_format=args.format)
    except OSError as e:  # e.g. a full disk: the report still prints, then one line (an earlier result stays)
        unsaved = e
    finally:
        if claim is not None:
            from ncflow.result import release_output_dir

            release_output_dir(claim)
    if args.json:
        print(json.dumps(_jsonable(result.summary())))
    else:
        print(result.report())
        if args.out and unsaved is None:
            print(f"Results written to {dir_text(args.out)} (runs.{args.format}, summary.json, config.json)")
    return 0 if unsaved is None else save_failed("run", args.out, unsaved)


def _check_theory(problem) -> None:
    """The theory must cover the problem (every run is classified against it): one line if not."""
    from ncflow.errors import ProblemError
    from ncflow.maths import theory

    try:
        theory.predict(problem, dense=False)
    except ProblemError as e:
        raise UsageError(flag_message(e)) from None


def _estimate(args, problem, config, devices):
    """The job's :class:`~ncflow.batch.estimate.Estimate` on the selected devices."""
    import jax

    from ncflow.batch.estimate import estimate
    from ncflow.batch.plan import choose
    from ncflow.dynamics.build import dynamics_for
    from ncflow.errors import NcflowError

    devs = devices or jax.devices()
    plat = devs[0].platform
    try:
        dyn = dynamics_for(problem, config)
        wide = choose(config, plat, dyn.space.name, problem.dtype, problem, dyn).wide  # refuses a bad step_layout
    except NcflowError as e:
        raise UsageError(flag_message(e)) from None
    return estimate(problem, dyn, config, config.runs, devices=len(devs), platform=plat, saved=bool(args.out),
                    wide=wide)


def _dry_run(args, problem, config) -> int:
    """``ncflow run --dry-run``: the estimated memory and time (and whether it fits); runs nothing."""
    configure_jax(args)
    import jax

    from ncflow.batch.estimate import fmt_bytes, fmt_seconds, refusal
    from ncflow.batch.memory import available_memory_bytes

    devices = select_devices(args)
    est = _estimate(args, problem, config, devices)
    platform = (devices or jax.devices())[0].platform
    limit = config.memory_limit_bytes or int(0.8 * available_memory_bytes(devices))
    bad = refusal(est, limit, f"{config.runs} runs", platform)
    info = {"runs": config.runs, "device_bytes": est.device_bytes, "host_bytes": est.host_bytes,
            "run_steps_at_most": est.run_steps, "seconds_at_most": est.seconds, "memory_limit_bytes": limit,
            "fits": bad is None, "platform": platform}
    if args.json:
        print(json.dumps(info))
    else:
        n_dev = len(devices or jax.devices())
        print(f"{config.runs} runs of K={problem.K} d={problem.d} n={problem.n} ({problem.dtype}) on "
              f"{n_dev} {platform} device(s): memory about {fmt_bytes(est.device_bytes)} on the "
              f"devices + {fmt_bytes(est.host_bytes)} host (limit {fmt_bytes(limit)}); at most {est.run_steps:.3g} "
              f"run-steps, time at most {fmt_seconds(est.seconds)} (every run using its budget; early stopping "
              "usually ends far sooner)")
        if bad is not None:
            print(f"would be refused: {flag_message_for(bad)}")
    return 0 if bad is None else 2


def flag_message_for(bad) -> str:
    """A refusal ``(field, message)`` with the setting called by its flag."""
    from ncflow.errors import ConfigError

    return flag_message(ConfigError(bad[1], field=bad[0]))


def _warn_if_long(est) -> None:
    from ncflow.batch.estimate import LONG_JOB_S, fmt_seconds

    if est.seconds is not None and est.seconds > LONG_JOB_S:
        sys.stderr.write(f"ncflow run: note: this job may take up to {fmt_seconds(est.seconds)} here "
                         f"({est.run_steps:.3g} run-steps if every run used its budget; early stopping usually "
                         "ends sooner); --dry-run shows the estimate, fewer --runs or --max-steps shorten it\n")
        sys.stderr.flush()


def _compute(args, problem, config):
    """Set up JAX, claim --out (process 0), run the simulation: ``(Result, claim)`` on process 0,
    ``(None, None)`` elsewhere. The output directory is created, proven writable and claimed
    before anything is compiled, so a bad --out never costs the computation."""
    configure_jax(args)
    import jax

    from ncflow.batch.loop import simulate
    from ncflow.errors import NcflowError
    from ncflow.result import release_output_dir

    main = jax.process_index() == 0
    if not main:  # only process 0 prints and writes files
        config = dataclasses.replace(config, progress=False)
    devices = select_devices(args)
    if main:
        _warn_if_long(_estimate(args, problem, config, devices))
    claim = claim_out(args) if main else None
    try:
        result = simulate(problem, config, devices=devices)
    except BaseException as e:  # the claim is released on every failure (the caller releases it after saving)
        if claim is not None:
            release_output_dir(claim)
        if isinstance(e, NcflowError):
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
    p.add_argument("--dry-run", action="store_true",
                   help="print the estimated memory and time (and whether the job fits) and run nothing")
    p.set_defaults(func=cmd_run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `ncflow` command")
