"""Solver settings of a batch of runs (:class:`Config`) and their validation.

Below the maths and the engine: it knows the accepted values of every setting, not how a run is
stepped. Every rejection raises :class:`~ncflow.errors.ConfigError` whose message starts with the
field name.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ncflow.errors import ConfigError

#: state representations of GD ("auto" picks the cheaper exact one; see ncflow.dynamics.spaces)
ENGINES = ("auto", "full", "collapsed")
#: optimizers (see ncflow.dynamics.steppers)
OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "flow")
#: kinds of start (see ncflow.dynamics.starts)
STARTS = ("gaussian", "orthogonal", "small", "saddle")

__all__ = ["Config", "ConfigError", "ENGINES", "OPTIMIZERS", "STARTS"]


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Config:
    """Solver settings of one batch of runs.

    Attributes:
        runs: number of runs R >= 1.
        seed: master seed (int >= 0); run i starts from ``fold_in(key(seed), i)``.
        lr: GD step size > 0; None = ``theory.default_step_size(problem, init_scale)``.
        max_steps: step budget per run, >= 1.
        init_scale: Gaussian init scale >= 0 (entries N(0, scale²/d)); 0 = the origin.
        engine: "auto", "full" or "collapsed" (see :mod:`ncflow.representations`).
        early_stop: stop each run when it converges or diverges; False = every run takes
            exactly ``max_steps`` steps (throughput benchmarks).
        chunk: GD steps between two stopping checks (>= 1).
        group: runs per cache group (None: chosen so a group's state is ~256 KiB).
        gtol: stationarity tolerance on ||∇f||; None = dtype default (see outcomes).
        history: record scalar diagnostics at log-spaced steps.
        progress: progress bar on stderr; None = only when stderr is a terminal.
        lanczos_iters: Lanczos steps used to look for negative curvature.
        memory_limit_bytes: refuse batches estimated above this; None = 80% of free memory.
        optimizer: "gd" (default), "momentum", "nesterov", "adam" (optax) or "flow"
            (gradient flow with an adaptive ODE solver); see :mod:`ncflow.solvers`.
        momentum: momentum coefficient in [0, 1) for "momentum"/"nesterov" (default 0.9).
        beta1, beta2, adam_eps: Adam's hyperparameters.
        flow_time: time horizon of "flow" (None: until stationary or max_steps solver steps).
        rtol, atol: error tolerances of the flow's adaptive solver (None: 1e-10 / 1e-12 in
            float64, 1e-6 / 1e-8 in float32 — tight enough for the flow to meet the stopping
            tolerance of its dtype).
        init: "gaussian", "orthogonal", "small" or "saddle" (see :mod:`ncflow.init`).
        active: for init "saddle", the number s of active directions of the critical point.
        perturb: for init "saddle", the size of the Gaussian perturbation.
    """

    runs: int = 1000
    seed: int = 0
    lr: float | None = None
    max_steps: int = 20_000
    init_scale: float = 1.0
    engine: str = "auto"
    early_stop: bool = True
    chunk: int = 100
    group: int | None = None
    gtol: float | None = None
    history: bool = False
    progress: bool | None = None
    lanczos_iters: int = 32
    memory_limit_bytes: int | None = None
    optimizer: str = "gd"
    momentum: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    flow_time: float | None = None
    rtol: float | None = None
    atol: float | None = None
    init: str = "gaussian"
    active: int | None = None
    perturb: float = 1e-3

    def __post_init__(self):
        def need(ok, field, rng, value):
            if not ok:
                raise ConfigError(f"{field} must be {rng}, got {value!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.runs) and self.runs >= 1, "runs", "an integer >= 1", self.runs)
        need(is_int(self.seed) and 0 <= self.seed < 2**32, "seed", "an integer in [0, 2^32)", self.seed)
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a finite number > 0", self.lr)
        need(is_int(self.max_steps) and self.max_steps >= 1, "max_steps", "an integer >= 1", self.max_steps)
        need(is_num(self.init_scale) and self.init_scale >= 0, "init_scale", "a finite number >= 0", self.init_scale)
        need(self.engine in ENGINES, "engine", "one of " + ", ".join(ENGINES), self.engine)
        need(is_int(self.chunk) and self.chunk >= 1, "chunk", "an integer >= 1", self.chunk)
        need(self.group is None or (is_int(self.group) and self.group >= 1), "group", "an integer >= 1", self.group)
        need(self.gtol is None or (is_num(self.gtol) and self.gtol > 0), "gtol", "a finite number > 0", self.gtol)
        need(is_int(self.lanczos_iters) and self.lanczos_iters >= 2, "lanczos_iters", "an integer >= 2",
             self.lanczos_iters)
        validate_solver_settings(self)


def validate_solver_settings(config) -> None:
    """Check optimizer- and init-related settings of an engine Config (no problem needed);
    raise ConfigError whose message starts with the field name."""
    opt = config.optimizer
    if opt not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {opt!r}")
    if config.momentum is not None:
        if opt not in ("momentum", "nesterov"):
            raise ConfigError(f"momentum: only used by optimizer momentum or nesterov, got optimizer {opt!r}")
        if not (_is_num(config.momentum) and 0 <= config.momentum < 1):
            raise ConfigError(f"momentum must be a number in [0, 1), got {config.momentum!r}")
    for field in ("beta1", "beta2"):
        v = getattr(config, field)
        if not (_is_num(v) and 0 <= v < 1):
            raise ConfigError(f"{field} must be a number in [0, 1), got {v!r}")
    if not (_is_num(config.adam_eps) and config.adam_eps > 0):
        raise ConfigError(f"adam_eps must be a finite number > 0, got {config.adam_eps!r}")
    if config.flow_time is not None:
        if opt != "flow":
            raise ConfigError(f"flow_time: only used by optimizer flow, got optimizer {opt!r}")
        if not (_is_num(config.flow_time) and config.flow_time > 0):
            raise ConfigError(f"flow_time must be a finite number > 0, got {config.flow_time!r}")
    for field in ("rtol", "atol"):
        v = getattr(config, field)
        if v is not None and not (_is_num(v) and v > 0):
            raise ConfigError(f"{field} must be a finite number > 0, got {v!r}")
    if opt != "gd" and config.engine == "collapsed":
        raise ConfigError(f"engine: collapsed supports optimizer gd only, got optimizer {opt!r}; use full or auto")
    if config.init not in STARTS:
        raise ConfigError(f"init must be one of {', '.join(STARTS)}, got {config.init!r}")
    if config.init == "saddle":
        if config.active is None:
            raise ConfigError("active: required by init saddle (the number s of active directions)")
        if not (_is_int(config.active) and config.active >= 0):
            raise ConfigError(f"active must be an integer >= 0, got {config.active!r}")
    elif config.active is not None:
        raise ConfigError(f"active: only used by init saddle, got init {config.init!r}")
    if not (_is_num(config.perturb) and config.perturb >= 0):
        raise ConfigError(f"perturb must be a finite number >= 0, got {config.perturb!r}")
