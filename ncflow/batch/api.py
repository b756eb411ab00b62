"""The public entry points ``ncflow.simulate`` and ``ncflow.simulate_points``: the engine's
functions (:mod:`ncflow.batch.loop`) behind a check of the arguments' types, so a wrong argument
is one clear exception naming it (``simulate(None)``, ``devices=[]``, an unknown setting) instead
of an error from deep inside the engine."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ncflow.batch import loop
from ncflow.batch.loop import Point
from ncflow.config import Config, cap_chunk
from ncflow.problem import Problem
from ncflow.result import Result

__all__ = ["simulate", "simulate_points"]


def _check_devices(devices) -> None:
    if devices is None:
        return
    from jax.sharding import Mesh

    if isinstance(devices, Mesh):
        if devices.devices.ndim != 1 or devices.devices.size == 0:
            raise ValueError(f"devices: a Mesh must be 1-D and non-empty, got shape {devices.devices.shape}")
        return
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence) or len(devices) == 0:
        raise ValueError(f"devices must be None (every device), a non-empty list of JAX devices or a 1-D Mesh, "
                         f"got {devices!r}")
    for d in devices:
        if not hasattr(d, "platform") or not hasattr(d, "id"):
            raise TypeError(f"devices must hold JAX devices (jax.devices()), got {type(d).__name__}")


def _check_config(config) -> None:
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an ncflow.Config or None, got {type(config).__name__}")


def simulate(problem: Problem, config: Config | None = None, **overrides) -> Result:
    """Run ``config.runs`` random starts of ``problem`` and classify them against the theory
    (:func:`ncflow.batch.loop.simulate`); ``overrides`` replace fields of ``config``
    (``simulate(p, runs=100)``), ``devices`` picks the devices. Raises TypeError / ValueError /
    ConfigError naming the argument for a wrong one, before anything is compiled."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an ncflow.Problem, got {type(problem).__name__}")
    _check_config(config)
    _check_devices(overrides.get("devices"))
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(k for k in overrides if k not in fields and k != "devices")
    if unknown:
        raise TypeError(f"simulate() got an unknown setting {unknown[0]!r}; the settings are the fields of "
                        f"ncflow.Config ({', '.join(sorted(fields))}) and devices")
    devices = overrides.pop("devices", None)
    config = cap_chunk(dataclasses.replace(config or Config(), **overrides))
    return loop.simulate(problem, config, devices=devices)


def simulate_points(points: Sequence[Point], config: Config, devices=None) -> list[Result]:
    """:func:`ncflow.batch.loop.simulate_points` after a check of the arguments' types."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or len(points) == 0:
        raise ValueError(f"points must be a non-empty list of ncflow.Point, got {points!r}")
    for p in points:
        if not isinstance(p, Point):
            raise TypeError(f"points must hold ncflow.Point values, got {type(p).__name__}")
    if not isinstance(config, Config):
        raise TypeError(f"config must be an ncflow.Config, got {type(config).__name__}")
    _check_devices(devices)
    return loop.simulate_points(points, cap_chunk(config), devices=devices)
