"""Solver settings of a batch of runs (:class:`Config`) and their validation.

Below the maths and the engine: it knows the accepted values of every setting (from the one
table, :mod:`ncflow.settings`), not how a run is stepped. Every rejection raises
:class:`~ncflow.errors.ConfigError` whose message starts with the field name (``.field``).
"""

from __future__ import annotations

import dataclasses

from ncflow.errors import ConfigError
from ncflow.settings import ENGINES, OPTIMIZERS, SETTINGS, STARTS, check_applies, check_required

__all__ = ["Config", "ConfigError", "ENGINES", "OPTIMIZERS", "STARTS", "cap_chunk", "effective",
           "validate_solver_settings"]


def _default(name: str):
    return SETTINGS[name].field_default


@dataclasses.dataclass(frozen=True)
class Config:
    """Solver settings of one batch of runs. Defaults, ranges and help: :mod:`ncflow.settings`.

    Settings that apply only to some optimizers or starts default to None ("not given"; the
    table's default is used where they apply, see :meth:`effective`); one given where it does not
    apply is refused (``Config(beta1=0.95)`` with optimizer gd raises ConfigError naming beta1).

    Attributes:
        runs: number of runs R, in [1, 2^31).
        seed: master seed in [0, 2^32); run i starts from ``fold_in(key(seed), i)``.
        lr: step size > 0; None = the optimizer's default (1/L = ``theory.default_step_size``).
        max_steps: step budget per run, in [1, 2^31) (default 30,000).
        init_scale: Gaussian init scale >= 0 (entries N(0, scale²/d)); 0 = the origin.
        engine: "auto", "full" or "collapsed" (see :mod:`ncflow.dynamics.spaces`).
        early_stop: stop each run when it converges or diverges; False = every run takes
            exactly ``max_steps`` steps (throughput benchmarks).
        stop: the stop rule, "certified" (default: a GD run stops at the chunk end where the
            early certificate of THEORY §8 guarantees that it converges to a global minimizer;
            runs without a certificate stop as with "converged") or "converged" (every run until
            it is stationary, diverges or runs out of budget).
        chunk: GD steps between two stopping checks, in [1, 2^31).
        group: runs per cache group (None: chosen so a group's state is ~256 KiB); plan "cpu" only.
        plan: execution plan, "auto" (cpu on CPUs, wide on accelerators), "cpu" (cache-sized groups,
            the stop rule on the host every chunk) or "wide" (every lane of a device in one vmapped
            step, the stop rule evaluated on the device; see :mod:`ncflow.batch.plan`).
        matmul_precision: "float32" (full precision, default), or the opt-in "tf32" / "bf16" for
            the steps' float32 matrix products (emulated by operand rounding on a CPU).
        step_layout: how the wide plan steps a device's lanes: "vmap" (default: the one-run step
            vmapped) or the opt-in "lanes" (run axis last, small products as multiply-adds across
            lanes: :mod:`ncflow.dynamics.lanes`; plan wide and collapsed GD on mse only).
        gtol: stationarity tolerance on ||∇f||; None = dtype default (see outcomes).
        history: record scalar diagnostics at log-spaced steps.
        progress: progress bar on stderr; None = only when stderr is a terminal.
        lanczos_iters: Lanczos steps used to look for negative curvature, in [2, 4096].
        memory_limit_bytes: refuse batches estimated above this; None = 80% of free memory.
        optimizer: "gd" (default), "momentum", "nesterov", "adam" (optax) or "flow"
            (gradient flow with an adaptive ODE solver); see :mod:`ncflow.dynamics.steppers`.
        momentum: momentum coefficient in [0, 1), optimizer momentum/nesterov only (None: 0.9).
        beta1, beta2, adam_eps: Adam's hyperparameters, optimizer adam only (None: 0.9, 0.999, 1e-8).
        flow_time: time horizon of "flow" (None: until stationary or max_steps solver steps).
        rtol, atol: error tolerances of the flow's adaptive solver (None: 1e-10 / 1e-12 in
            float64, 1e-6 / 1e-8 in float32 — tight enough for the flow to meet the stopping
            tolerance of its dtype).
        init: "gaussian", "orthogonal", "small" or "saddle" (see :mod:`ncflow.dynamics.starts`).
        active: init "saddle" only (and required by it): the number s of active directions.
        perturb: init "saddle" only: the size of the Gaussian perturbation (None: 1e-3).
    """

    runs: int = _default("runs")
    seed: int = _default("seed")
    lr: float | None = _default("lr")
    max_steps: int = _default("max_steps")
    init_scale: float = _default("init_scale")
    engine: str = _default("engine")
    early_stop: bool = _default("early_stop")
    stop: str = _default("stop")
    chunk: int = _default("chunk")
    group: int | None = _default("group")
    plan: str = _default("plan")
    matmul_precision: str = _default("matmul_precision")
    step_layout: str = _default("step_layout")
    gtol: float | None = _default("gtol")
    history: bool = _default("history")
    progress: bool | None = _default("progress")
    lanczos_iters: int = _default("lanczos_iters")
    memory_limit_bytes: int | None = _default("memory_limit_bytes")
    optimizer: str = _default("optimizer")
    momentum: float | None = _default("momentum")
    beta1: float | None = _default("beta1")
    beta2: float | None = _default("beta2")
    adam_eps: float | None = _default("adam_eps")
    flow_time: float | None = _default("flow_time")
    rtol: float | None = _default("rtol")
    atol: float | None = _default("atol")
    init: str = _default("init")
    active: int | None = _default("active")
    perturb: float | None = _default("perturb")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # each value by the table; numpy scalars become Python scalars
            object.__setattr__(self, f.name, SETTINGS[f.name].check(getattr(self, f.name)))
        validate_solver_settings(self)

    def effective(self, name: str):
        """The value in use of setting ``name``: the field, or the table's default where it is
        None (e.g. ``beta1`` -> 0.9). "auto" settings (lr, gtol, rtol, ...) stay None."""
        return effective(self, name)


def cap_chunk(config: "Config") -> "Config":
    """``config`` with ``chunk`` capped at ``max_steps``: a chunk longer than the budget would
    only add masked steps (``--chunk 100000 --max-steps 5000`` ran 20× the work). Results are the
    same either way (the one check falls at the budget). Applied by ``ncflow.simulate``,
    ``ncflow.simulate_points``, ``ncflow run`` and sweeps; kept out of ``__post_init__`` so that
    ``dataclasses.replace(config, max_steps=...)`` keeps the chunk the user chose."""
    if config.chunk > config.max_steps:
        return dataclasses.replace(config, chunk=config.max_steps)
    return config


def effective(config, name: str):
    """``config.<name>``, or the table's default of ``name`` where that is None (works for any
    object with the attribute, e.g. the engine's start spec)."""
    value = getattr(config, name)
    return SETTINGS[name].default if value is None else value


def validate_solver_settings(config) -> None:
    """The checks of a Config that involve several settings (each value is already in range):
    a setting given where it does not apply, ``active`` missing for init saddle, adam or flow
    on the collapsed engine. Raises ConfigError with ``.field`` set."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    check_applies(values, [k for k, v in values.items() if v is not None])
    check_required(values)
    if config.optimizer not in ("gd", "momentum", "nesterov") and config.engine == "collapsed":
        raise ConfigError(f"engine: collapsed supports optimizers gd, momentum and nesterov only, got optimizer "
                          f"{config.optimizer!r}; use full or auto", field="engine")
