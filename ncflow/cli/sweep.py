"""``ncflow sweep``, ``ncflow plot`` and ``ncflow metrics``: experiments at scale.

* ``ncflow sweep CONFIG.toml --out DIR`` runs (or resumes) a parameter sweep (:mod:`ncflow.sweep`);
  problem and solver flags (``--runs 10``, ``--dim 8``, ...) override the TOML's [problem] /
  [solver] values.
* ``ncflow plot DIR`` draws a sweep's or a single result's figures (:mod:`ncflow.plot`).
* ``ncflow metrics FEATURES.npz`` measures neural collapse of a real network's features
  (:mod:`ncflow.features`).

Every error in a flag, a config file or an input file exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from ncflow.cli.common import (
    UsageError,
    add_output_flags,
    add_problem_flags,
    add_solver_flags,
    check_distributed,
    configure_jax,
    dir_text,
    float_in,
    given_settings,
    save_failed,
    select_devices,
    stdout_to_stderr,
)


def _overrides(args) -> dict:
    """{TOML key: value} of every problem/solver flag given on the command line ("auto" for None)."""
    out = {k: "auto" if v is None else v for k, v in given_settings(args).items()}
    for k in ("majority", "ratio"):  # the two-level class sizes (THEORY §7)
        if getattr(args, k, None) is not None:
            out[k] = getattr(args, k)
    return out


def _stderr(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def cmd_sweep(args) -> int:
    """``ncflow sweep``."""
    from ncflow.sweep import run as _sw

    if args.overwrite:
        raise UsageError("--overwrite is not supported: a sweep resumes in its directory; use a new --out")
    check_distributed(args)
    worker = bool(args.process_id)  # a multi-process sweep's process other than 0: it never touches --out
    if args.out is None and not args.dry_run:
        raise UsageError("--out DIR is required (the sweep's files go there)")
    try:
        cfg = _sw.load_config(args.config, _overrides(args))
        if args.out is not None and not worker:
            _sw.check_out_dir(cfg, args.out)
    except _sw.SweepError as e:
        raise UsageError(str(e)) from None
    if args.dry_run:
        _print_plan(cfg, args.json)
        return 0
    made = None if worker else _make_out(args.out)
    jargs = argparse.Namespace(**vars(args))
    jargs.dtype = "float64" if any(p.problem.dtype == "float64" for p in cfg.points) else "float32"
    configure_jax(jargs)
    devices = None
    if args.devices is not None:
        devices = select_devices(args)
    try:
        with stdout_to_stderr():  # C++ libraries (e.g. gloo) print to fd 1; keep stdout for results
            report = _sw.run_sweep(cfg, args.out, resume=args.resume, progress=args.progress, log=_stderr,
                                   devices=devices)
    except _sw.SweepError as e:
        if made is not None:
            _unmake_out(args.out, made)
        raise UsageError(str(e)) from None
    except OSError as e:  # e.g. a full disk: the complete points stay; show them, then one line
        if worker:
            raise
        _print_complete(cfg, args.out, args.json)
        return save_failed("sweep", args.out, e, "a point's files")
    if report.status == "worker":  # only process 0 prints
        return 0
    if args.json:
        from ncflow.io import to_jsonable

        rows = [dict(zip(report.summary, vals)) for vals in zip(*report.summary.values())]
        print(json.dumps(to_jsonable({"out": report.out_dir, "status": report.status, "config_hash": cfg.hash,
                                      "points": report.points, "ran": report.ran, "skipped": report.skipped,
                                      "recomputed": report.recomputed,
                                      "wall_s": report.wall_s, "summary": rows})))
    else:
        print(format_summary(report.summary, cfg.swept))
        print(f"\n{report.points} points ({len(report.ran)} run now, {len(report.skipped)} already complete), "
              f"status {report.status}; files in {dir_text(report.out_dir)} (summary.csv, manifest.json, points/)")
    return 0


def _make_out(out: str) -> tuple[list, bool]:
    """Create --out (and its missing parents) and prove it writable, before anything is compiled;
    one line naming --out if it cannot be. Returns what a refused sweep takes back
    (:func:`_unmake_out`): the directories created here (deepest first) and whether ``.lock``
    existed."""
    made, path = [], os.path.abspath(out)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        made.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UsageError(f"--out {out} cannot be created: {path} is not a directory")
    locked = os.path.exists(os.path.join(out, ".lock"))
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ncflow-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        _unmake_out(out, (made, True))
        raise UsageError(f"--out {out} cannot be {'created' if made else 'written'} ({e.strerror or e})") from None
    return made, locked


def _unmake_out(out: str, made: tuple[list, bool]) -> None:
    """Take back what a sweep refused before its first file left in --out: the ``.lock`` it
    created (only when nothing else is there and no other sweep holds it) and the directories
    :func:`_make_out` created. Anything else is left alone."""
    dirs, locked = made
    lock = os.path.join(out, ".lock")
    try:
        if not locked and os.listdir(out) == [".lock"]:
            import fcntl

            with open(lock, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not while another sweep holds it
                os.remove(lock)
        for d in dirs:
            os.rmdir(d)  # only empty ones: stops at the first that is not
    except (OSError, ImportError):
        pass


def _print_complete(cfg, out: str, as_json: bool) -> None:
    """The summary of the points complete in ``out`` (read from their files), after a failed write."""
    from ncflow.sweep import run as _sw

    try:
        rows = [_sw.summary_row(cfg, p, out) for p in cfg.points if _sw.is_complete(cfg.point_dir(out, p.index))]
    except (OSError, ValueError, KeyError):
        rows = None
    cols = {k: [r[k] for r in rows] for k in rows[0]} if rows else {"point": []}
    if as_json:
        from ncflow.io import to_jsonable

        print(json.dumps(to_jsonable({"out": out, "status": "partial", "config_hash": cfg.hash,
                                      "points": len(cfg.points), "complete": None if rows is None else len(rows),
                                      "summary": [dict(zip(cols, v)) for v in zip(*cols.values())]})))
        return
    if rows is not None:
        print(format_summary(cols, cfg.swept))
    done = "an unknown number of" if rows is None else f"{len(rows)} of {len(cfg.points)}"
    print(f"\n{done} points complete in {dir_text(out)}; the same command resumes the others")


#: a dry run lists every point up to this many (then the first and last few)
_LIST_POINTS = 200


def _estimates(cfg) -> list:
    """Each point's :class:`~ncflow.batch.estimate.Estimate` on the CLI's default CPU devices (one
    per core); points of one shape share the state size, so this is cheap."""
    import os

    from ncflow.batch.estimate import estimate
    from ncflow.sweep.config import _representation, point_config

    devices = max(1, os.cpu_count() or 1)
    cache, out = {}, []
    for p in cfg.points:
        s = p.settings
        key = tuple(sorted((k, repr(v)) for k, v in s.items() if k not in ("lambda_w", "lambda_h", "lambda_b",
                                                                              "lr", "init_scale", "seed")))
        if key not in cache:
            config = point_config(s)
            cache[key] = estimate(p.problem, _representation(p.problem, config), config, s["runs"], devices=devices,
                                  saved=True)
        out.append(cache[key])
    return out


def _fits(peak: int) -> str:
    from ncflow.batch.estimate import fmt_bytes
    from ncflow.batch.memory import host_memory_bytes

    limit = int(0.8 * host_memory_bytes())
    return "" if peak <= limit else f", more than the {fmt_bytes(limit)} available here: it would be refused"


def _print_plan(cfg, as_json: bool) -> None:
    from ncflow.batch.estimate import fmt_bytes, fmt_seconds
    from ncflow.sweep import run as _sw

    groups = cfg.shape_groups()
    ests = _estimates(cfg)
    total = ests[0]
    for e in ests[1:]:
        total = total + e
    peak = max(e.device_bytes + e.host_bytes for e in ests)  # points run batch by batch, a batch split to fit
    if as_json:
        from ncflow.io import to_jsonable

        print(json.dumps(to_jsonable({"config_hash": cfg.hash, "points": [
            {"point": p.index, "swept": p.swept, "lr_used": p.lr, "memory_bytes": e.device_bytes + e.host_bytes,
             "run_steps_at_most": e.run_steps, "seconds_at_most": e.seconds} for p, e in zip(cfg.points, ests)],
            "shape_groups": [[p.index for p in g] for g in groups],
            "total": {"run_steps_at_most": total.run_steps, "seconds_at_most": total.seconds,
                      "largest_point_memory_bytes": peak}})))
        return
    print(f"{len(cfg.points)} points in {len(groups)} shape group(s); config hash {cfg.hash}")
    print(f"estimate (CPU, every run using its budget; early stopping usually ends far sooner): at most "
          f"{total.run_steps:.3g} run-steps, {fmt_seconds(total.seconds)} in total; the largest point needs about "
          f"{fmt_bytes(peak)}" + _fits(peak))
    for gi, g in enumerate(groups[:_LIST_POINTS]):
        s = g[0].settings
        extra = "".join(f" {k}={_fmt(v)}" for k, v in g[0].swept.items() if k not in _sw.LANE_KEYS + ("K", "d", "n"))
        idx = [p.index for p in g]
        shown = ", ".join(map(str, idx)) if len(idx) <= 20 else f"{idx[0]}..{idx[-1]} ({len(idx)} points)"
        print(f"  group {gi + 1}: K={s['K']} d={s['d']} n={s['n']} {s['dtype']}{extra}, points {shown}")
    if len(groups) > _LIST_POINTS:
        print(f"  ... {len(groups) - _LIST_POINTS} more group(s)")
    n = len(cfg.points)
    listed = range(n) if n <= _LIST_POINTS else [*range(10), *range(n - 10, n)]
    for i in listed:
        p, e = cfg.points[i], ests[i]
        if n > _LIST_POINTS and i == n - 10:
            print(f"  ... {n - 20} more points (--json lists every one)")
        swept = ", ".join(f"{k}={_fmt(v)}" for k, v in p.swept.items())
        print(f"  point {p.index}: {swept or '(no grid)'}  lr={p.lr:.4g}  runs={p.settings['runs']}  memory "
              f"{fmt_bytes(e.device_bytes + e.host_bytes)}  time <= {fmt_seconds(e.seconds)}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def format_summary(summary: dict, swept) -> str:
    """The sweep's summary as a text table (point, swept values, c, global fraction, median f)."""
    if summary.get("point") is None or len(summary["point"]) == 0:
        return "(no completed points)"
    head = ["point"] + list(swept) + ["c", "global", "95% interval", "saddle", "not_conv", "median f", "f*"]
    rows = []
    for i in range(len(summary["point"])):
        r = [str(summary["point"][i])] + [_fmt(_item(summary[k][i])) for k in swept]
        r += [f"{summary['c'][i]:.3g}", f"{summary['global_fraction'][i]:.3f}",
              f"[{summary['global_ci_low'][i]:.3f}, {summary['global_ci_high'][i]:.3f}]",
              str(summary["saddle_count"][i]), str(summary["not_converged_count"][i]),
              "—" if summary["objective_median"][i] is None else f"{summary['objective_median'][i]:.6g}",
              f"{summary['f_star'][i]:.6g}"]
        rows.append(r)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _item(v):
    return v.item() if hasattr(v, "item") else v


def cmd_plot(args) -> int:
    """``ncflow plot``."""
    from ncflow import plot as _plot

    try:
        written = _plot.plot_directory(args.directory, formats=tuple(args.format))
    except _plot.PlotError as e:
        raise UsageError(str(e)) from None
    progress = _plot.sweep_progress(args.directory)
    if progress is not None and progress[0] < progress[1]:
        _stderr(f"ncflow plot: note: {args.directory} is a partial sweep ({progress[0]} of {progress[1]} points "
                "complete); the figures show the complete points only (resume it with ncflow sweep)")
    if args.json:
        print(json.dumps({"files": written}))
    else:
        for path in written:
            print(path)
        if not written:
            print("nothing to plot (no swept parameter and no history)")
    return 0


def cmd_metrics(args) -> int:
    """``ncflow metrics``."""
    from ncflow import features as _f

    if args.no_bias and args.lambda_b != 0.0:
        raise UsageError("--lambda-b cannot be combined with --no-bias (there is no bias to regularize)")
    try:
        feats = _f.load_features(args.file)
        report = _f.compare(feats, lambda_w=args.lambda_w, lambda_h=args.lambda_h, lambda_b=args.lambda_b,
                            bias=not args.no_bias)
    except _f.FeaturesError as e:
        raise UsageError(str(e)) from None
    if args.json:
        from ncflow.io import to_jsonable

        print(json.dumps(to_jsonable({"file": args.file, **report})))
    else:
        print(_f.format_report(report, args.file))
    return 0


def register(sub) -> None:
    """Add the ``sweep``, ``plot`` and ``metrics`` sub-commands to the ``ncflow`` parser."""
    p = sub.add_parser("sweep", help="run or resume a parameter sweep from a TOML config",
                       description="Run every point of a TOML sweep config (see ncflow.sweep for the format), "
                                   "one compiled batch per shape group, and write per-point results plus "
                                   "summary.csv and manifest.json to --out. Re-running the same command "
                                   "resumes: complete points are skipped. Problem/solver flags override the "
                                   "config's [problem]/[solver] values.")
    p.add_argument("config", metavar="CONFIG.toml", help="sweep config (TOML)")
    p.add_argument("--dry-run", action="store_true", help="validate the config and list the points; run nothing")
    p.add_argument("--resume", choices=("missing", "exact"), default="missing",
                   help="for a partially complete batch: run only its missing points (default; run i is "
                        "bitwise the same in any batch), or re-run the whole batch and write only the "
                        "missing points (exact)")
    add_problem_flags(p, "sweep")  # a flag given overrides the TOML; defaults are the TOML's (ncflow.settings)
    add_solver_flags(p, "sweep")
    add_output_flags(p)
    p.set_defaults(func=cmd_sweep)

    q = sub.add_parser("plot", help="figures of a sweep (or of one result with history)",
                       description="Write PNG and PDF figures next to the results: outcome fractions against "
                                   "one swept parameter, a phase diagram for two, and convergence curves "
                                   "for every result with history.")
    q.add_argument("directory", metavar="DIR", help="a sweep directory (manifest.json) or a result directory")
    q.add_argument("--format", nargs="+", choices=("png", "pdf", "svg"), default=["png", "pdf"],
                   help="file formats (default: png pdf)")
    q.add_argument("--json", action="store_true", help="print the written files as JSON")
    q.set_defaults(func=cmd_plot)

    m = sub.add_parser("metrics", help="neural-collapse metrics of a real network's features (.npz)",
                       description="NC1–NC4 of features saved as .npz (H (d, N) or features (N, d), labels (N,), "
                                   "optional W (K, d), b (K,); see ncflow.features), side by side with the "
                                   "UFM optimum for the same K, d and n = mean class size.")
    m.add_argument("file", metavar="FEATURES.npz")
    m.add_argument("--lambda-w", type=float_in(0.0), default=5e-4, help="λ_W of the UFM comparison (default 5e-4)")
    m.add_argument("--lambda-h", type=float_in(0.0), default=5e-4, help="λ_H of the UFM comparison (default 5e-4)")
    m.add_argument("--lambda-b", type=float_in(0.0), default=0.0, help="λ_b of the UFM comparison (default 0)")
    m.add_argument("--no-bias", action="store_true", help="compare with the bias-free UFM")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_metrics)
