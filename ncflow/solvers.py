"""Optimizers of the engine: which one-run step it uses and how its settings are checked.

Plain gradient descent is the default and uses the exact representations of
:mod:`ncflow.representations` (full or collapsed).
"""

from __future__ import annotations

from .problem import Problem
from .representations import Representation, choose
from . import theory

OPTIMIZERS = ("gd",)


def validate_config(config) -> None:
    """Check optimizer-related settings of an engine Config; raise ConfigError naming the field."""
    from .engine import ConfigError

    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.init != "gaussian":
        raise ConfigError(f"init must be one of gaussian, got {config.init!r}")


def representation(problem: Problem, config) -> Representation:
    """The representation (state + step) the engine runs for ``config``."""
    return choose(problem, config.engine)


def default_lr(problem: Problem, config) -> float:
    """Default step size for ``config.optimizer`` (GD: ``theory.default_step_size``)."""
    return theory.default_step_size(problem, config.init_scale or 1.0)
