"""Which dynamics a batch runs: a state space and a stepper, chosen from a problem and a Config.

:class:`Dynamics` pairs a :class:`~ncflow.dynamics.spaces.StateSpace` with a
:class:`~ncflow.dynamics.steppers.Stepper` and gives the engine one object, for ONE run, with
everything it reads: ``from_params``, ``step``, ``to_params``, ``value_and_grad_norm``, ``stats``,
``extras``, ``done``, ``failed``, ``flops_per_step`` and a ``name`` for results. It is a frozen,
hashable value: it keys the process-wide cache of compiled programs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ncflow.config import effective
from ncflow.dynamics.flow import Flow
from ncflow.dynamics.spaces import FULL, StateSpace, choose
from ncflow.dynamics.starts import SMALL_FACTOR
from ncflow.dynamics.steppers import (
    ADAM_DEFAULT_LR,
    COLLAPSIBLE,
    DEFAULT_MOMENTUM,
    GD,
    Escape,
    Optax,
    Stepper,
    predicted_escape_steps,
)
from ncflow.errors import ConfigError, ProblemError
from ncflow.maths import theory
from ncflow.problem import Problem
from ncflow.settings import FLOAT32_TINY, SETTINGS

__all__ = ["ADAM_DEFAULT_LR", "DEFAULT_MOMENTUM", "FLOW_TOLERANCES", "Dynamics", "default_lr", "dynamics_for",
           "momentum_of", "predicted_escape_steps", "validate_for_problem"]

#: default (rtol, atol) of the gradient flow by dtype: with looser ones the flow's gradient
#: stalls above the float64 stopping tolerance (seen: 2.3e-7 against gtol 3.3e-8 at rtol 1e-7)
FLOW_TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-6, 1e-8)}


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """A state space and a stepper: how ONE run is stored and moved.

    Attributes:
        space: where the run's point lives (full or collapsed).
        stepper: how it moves (GD, an optax optimizer, gradient flow, optionally with the escape
            recorder).
    """

    space: StateSpace
    stepper: Stepper

    def __post_init__(self):
        if not self.stepper.supports(self.space):
            raise ConfigError(f"engine: {self.space.name} supports optimizers gd, {' and '.join(COLLAPSIBLE)} only, "
                              f"got optimizer {self.stepper.name!r}; use full or auto", field="engine")

    @property
    def name(self) -> str:
        """"full", "collapsed", "full+momentum", ..., with "+escape" for a saddle start."""
        base = self.space.name if isinstance(self._inner, GD) else f"{self.space.name}+{self.stepper.name}"
        return base + ("+escape" if isinstance(self.stepper, Escape) else "")

    @property
    def _inner(self) -> Stepper:
        return self.stepper.inner if isinstance(self.stepper, Escape) else self.stepper

    def from_params(self, problem: Problem, params):
        """The carried state of a run starting at full ``params``."""
        return self.stepper.init(self.space, problem, self.space.from_params(problem, params))

    def step(self, problem: Problem, x, lr):
        """One step of size ``lr``."""
        return self.stepper.step(self.space, problem, x, lr)

    def point(self, x):
        """The space's point inside the carried state."""
        return self.stepper.point(x)

    def to_params(self, problem: Problem, x):
        """Full ``Params`` of the carried state (collapsed: up to a within-class mixing)."""
        return self.space.to_params(problem, self.stepper.point(x))

    def value_and_grad_norm(self, problem: Problem, x):
        """``(f, ||∇f||)`` of the full objective, both shape ()."""
        return self.space.value_and_grad_norm(problem, self.stepper.point(x))

    def sq_norm(self, problem: Problem, x):
        """||W||² + ||H||² + ||b||² of the point, shape ()."""
        return self.space.sq_norm(problem, self.stepper.point(x))

    def stats(self, problem: Problem, x):
        """Class statistics of the point (``ncflow.maths.metrics.ClassStats``)."""
        return self.space.stats(problem, self.stepper.point(x))

    def distance(self, problem: Problem, prediction, x, value):
        """The space's distance of the point to the prediction (``OptimumDistance``)."""
        return self.space.distance(problem, prediction, self.stepper.point(x), value)

    def columns(self, problem: Problem, prediction, x) -> dict:
        """The model's per-run columns of the point (the deep UFM's ``rank``, ...; {} at depth 1)."""
        return self.space.columns(problem, prediction, self.stepper.point(x))

    def hvp(self, problem: Problem, params, tangent):
        """Hessian-vector product of the full objective at full ``params`` (:meth:`to_params`)."""
        return self.space.hvp(problem, params, tangent)

    def extras(self, problem: Problem, x) -> dict:
        """The stepper's per-run columns (``flow_time``, ``escape_step``)."""
        return self.stepper.extras(problem, x)

    def done(self, problem: Problem, x):
        """The stepper's own stop, shape () bool."""
        return self.stepper.done(problem, x)

    def failed(self, problem: Problem, x):
        """Whether the stepper failed to step, shape () bool."""
        return self.stepper.failed(problem, x)

    def flops_per_step(self, problem: Problem) -> int:
        """Estimated flops of one step."""
        return self.space.flops_per_step(problem) + self.stepper.extra_flops(self.space, problem)


def momentum_of(config) -> float:
    """The momentum coefficient in use (``DEFAULT_MOMENTUM`` when not given)."""
    return float(effective(config, "momentum"))  # the table's default (0.9) where None


def stepper_for(problem: Problem, config) -> Stepper:
    """The stepper of ``config.optimizer`` (and ``config.init == "saddle"``: the escape recorder)."""
    opt = config.optimizer
    if opt == "gd":
        stepper = GD()
    elif opt == "flow":
        rtol, atol = FLOW_TOLERANCES[problem.dtype]
        stepper = Flow(rtol=float(config.rtol if config.rtol is not None else rtol),
                       atol=float(config.atol if config.atol is not None else atol),
                       flow_time=None if config.flow_time is None else float(config.flow_time))
    else:
        stepper = Optax(kind=opt, momentum=momentum_of(config), beta1=float(effective(config, "beta1")),
                        beta2=float(effective(config, "beta2")), eps=float(effective(config, "adam_eps")))
    if config.init == "saddle":
        stepper = Escape(stepper, int(config.active))
    return stepper


def dynamics_for(problem: Problem, config) -> Dynamics:
    """The dynamics the engine runs for ``config`` on ``problem``.

    GD, heavy ball and Nesterov keep the exact full/collapsed choice of ``config.engine`` ("auto"
    compares the flops of each optimizer's own step on either space); adam and flow run on full
    (W, H, b). Raises ConfigError for settings that need the problem to be checked
    (``validate_for_problem``) or that do not fit together (adam or flow on the collapsed space).
    """
    validate_for_problem(problem, config)
    stepper = stepper_for(problem, config)
    if config.optimizer == "gd" or config.engine == "collapsed":
        space = choose(problem, config.engine)
    elif config.optimizer in COLLAPSIBLE:
        inner = stepper.inner if isinstance(stepper, Escape) else stepper
        space = choose(problem, config.engine, extra=lambda sp: inner.extra_flops(sp, problem))
    else:
        space = FULL
    return Dynamics(space, stepper)


def refuse_missing_engine(problem: Problem, config=None) -> None:
    """THE one refusal of what the engine cannot run yet, before anything is compiled (called by
    :func:`validate_for_problem` and :func:`default_lr`): at depth > 1 (THEORY §9) a batch whose lanes
    differ in class sizes, and with a ``config``, optimizers other than plain GD and starts other than
    gaussian/small."""
    if problem.depth == 1:
        return
    L = problem.depth
    if problem.class_sizes is not None and problem.columns is not None:
        raise ProblemError(f"class_sizes must be the same for every point of a batch at depth {L} (the deep engine's "
                           "shape is static)", field="class_sizes")
    if config is None:
        return
    if config.optimizer != "gd":
        raise ConfigError(f"optimizer must be gd at depth {L} (the deep engine runs plain gradient descent), got "
                          f"{config.optimizer!r}", field="optimizer")
    if config.init not in ("gaussian", "small"):
        raise ConfigError(f"init must be gaussian or small at depth {L}, got {config.init!r}", field="init")


def validate_for_problem(problem: Problem, config) -> None:
    """The checks that need the (base) problem: init saddle's ``active`` must name a saddle,
    ``0 <= active <= max_active − 1``, of a family with closed-form critical points. Class sizes or
    targets (THEORY §7) take the gaussian and small starts only."""
    refuse_missing_engine(problem, config)
    if problem.general and config.init in ("orthogonal", "saddle"):
        raise ConfigError(f"init: {config.init} is not available with class sizes or targets; use gaussian or small",
                          field="init")
    if config.init != "saddle":
        return
    top = theory.max_active(problem)
    s = config.active
    if not 0 <= s < top:
        raise ConfigError(
            f"active must be in [0, {top - 1}] for init saddle (a saddle keeps fewer than "
            f"max_active = min(d, {'K-1' if problem.bias else 'K'}) = {top} directions; "
            f"K={problem.K}, d={problem.d}), got {s}", field="active")
    if problem.loss != "mse":
        raise ConfigError("init: saddle needs loss mse (critical points are closed-form for MSE only)", field="init")
    c = problem.c
    if c >= 1:
        raise ConfigError(f"init: saddle needs c < 1 (for c >= 1 the origin is the minimum), got c = {c:.4g}",
                          field="init")
    lb = float(problem.lambda_b)
    if problem.bias and lb > c / (1 - c):
        raise ConfigError("init: saddle needs lambda_b <= c/(1-c) (closed-form critical points)", field="init")


def default_lr(problem: Problem, config) -> float:
    """Default step size of ``config.optimizer``.

    * gd, flow (its initial dt): ``theory.default_step_size(problem, init_scale)`` (1/L);
    * momentum, nesterov: that × (1 − μ) (the heavy-ball effective step is lr/(1 − μ));
    * adam: :data:`ADAM_DEFAULT_LR` = 1e-3.

    A float32 problem whose default step is below the smallest normal float32 is refused, naming
    the setting that made it so small (:func:`_tiny_step`), not ``lr``, which was not given.
    """
    refuse_missing_engine(problem, config)
    lr = _default_lr(problem, config)
    if problem.dtype == "float32" and lr < FLOAT32_TINY:
        raise _tiny_step(problem, config, lr)
    return lr


def _tiny_step(problem: Problem, config, lr: float) -> ConfigError | ProblemError:
    """The error for a default step ``lr`` too small for float32: it blames the setting whose
    return to its default (the targets: scaled to entries of at most 1) raises the step the most,
    provided that makes it representable; otherwise no setting (the combination)."""
    tried = {}
    if config.init_scale not in (None, 1.0):
        tried["init_scale"] = (config.init_scale, problem, dataclasses.replace(config, init_scale=1.0))
    for k in ("lambda_w", "lambda_h", "lambda_b", "alpha"):
        if float(getattr(problem, k)) != SETTINGS[k].default:
            tried[k] = (float(getattr(problem, k)), dataclasses.replace(problem, **{k: SETTINGS[k].default}), config)
    if problem.targets is not None:
        big = float(np.max(np.abs(problem.targets)))
        if big > 1.0:
            tried["targets"] = (big, dataclasses.replace(problem, targets=problem.targets / big), config)
    if config.momentum is not None:
        tried["momentum"] = (config.momentum, problem, dataclasses.replace(config, momentum=None))
    steps = {k: _default_lr(p, c) for k, (_, p, c) in tried.items()}
    fixes = [k for k in steps if steps[k] >= FLOAT32_TINY]
    tail = (f"the default step size 1/L (theory.default_step_size) {lr:.3g}, below the smallest normal float32 "
            f"({FLOAT32_TINY:.4g}), which a float32 run cannot hold; give a step size (lr)")
    if not fixes:
        return ConfigError(f"this problem has {tail} or use dtype float64")
    k = max(fixes, key=steps.get)
    value = tried[k][0]
    what = f"targets with entries up to {value:.4g} give" if k == "targets" else f"{k} = {value:g} gives"
    cls = ConfigError if k in ("init_scale", "momentum") else ProblemError
    return cls(f"{what} {tail}, a smaller value or dtype float64", field=k)


def _default_lr(problem: Problem, config) -> float:
    scale = config.init_scale if config.init_scale is not None else 1.0
    if config.init == "small":
        scale = scale * SMALL_FACTOR
    base = theory.default_step_size(problem, scale or 1.0)
    opt = config.optimizer
    if opt in ("momentum", "nesterov"):
        return base * (1.0 - momentum_of(config))
    if opt == "adam":
        return ADAM_DEFAULT_LR
    return base
