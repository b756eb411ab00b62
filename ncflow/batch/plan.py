"""The execution plan of a batch: how its lanes are stepped and stopped on the platform at hand.

Two plans run the SAME one-run step and the SAME stop rule (:mod:`ncflow.batch.stop`, with the
certificate of :mod:`ncflow.batch.certify`); they differ in how the work is laid out:

* ``cpu`` — the lanes of a device are split into cache-sized *groups* (``auto_group``: ~256 KiB of
  state) stepped one after another inside the chunk program (a ``fori_loop`` over the active
  groups), the stop rule runs on the host after every chunk, and finished runs are compacted away
  between chunks. A group's state stays in cache and a run's arithmetic has the same vector width
  alone or in any batch: run i is bitwise the same alone or in a batch of 1000, on any device count.
* ``wide`` — every lane of a device is stepped in ONE vmapped step (no loop over groups, no
  dynamic-bound loop inside the step program), and the stop rule is evaluated per lane ON THE
  DEVICE inside a ``while_loop`` over chunks; the host is visited about once a second
  (:data:`VISIT_SECONDS`) for progress and history. Per-run stop steps and outcomes are those of
  the host rule (with ``jax_enable_x64`` on, the device evaluates the rule in float64 like the host;
  without it, in float32, which can differ only when a value ties a tolerance to float32 rounding).
  A run is the same run (same key, same steps) in any batch, and equal to rounding across batch
  sizes, but not promised bitwise: the vector width is the number of lanes per device.

``auto`` picks ``cpu`` on CPUs and ``wide`` on GPUs and TPUs, where one wide vmapped step keeps
the device busy and the host round trips disappear.

The wide plan has two step layouts (``Config.step_layout``): ``vmap`` (the default) vmaps the one-run
step over the lanes; ``lanes`` (opt-in) transposes the state once per chunk call to put the run axis
last and steps it with :mod:`ncflow.dynamics.lanes` (each small product a multiply-add across lanes),
for collapsed GD on the MSE loss only. Same per-run stop steps and outcomes, states equal to rounding.
No measurement on a GPU says yet which layout is faster there (``benchmarks/layouts.py``), so
``auto`` never picks ``lanes``.
"""

from __future__ import annotations

import dataclasses

from ncflow.dynamics import lanes as _lanes
from ncflow.dynamics.precision import PRECISIONS, Precision
from ncflow.errors import ConfigError

__all__ = ["VISIT_SECONDS", "WIDE_ALIGN", "Plan", "choose"]

#: wide plan: lanes per device are rounded up to a multiple of this (padding lanes are masked)
WIDE_ALIGN = 32
#: wide plan: the host visits the devices about this often (seconds of device work per visit)
VISIT_SECONDS = 1.0
#: wide plan: at most this many chunks between two host visits (a bound on one device loop)
MAX_CHUNKS_PER_VISIT = 100_000


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a batch is executed (a frozen, hashable value: it keys the compiled programs).

    Attributes:
        name: "cpu" or "wide" (see the module doc).
        platform: the devices' platform ("cpu", "gpu", "tpu", ...).
        precision: the steps' matrix-product :class:`~ncflow.dynamics.precision.Precision`.
        early_stop, certified_rule, space: the stop rule the wide plan's device loop evaluates
            (``Config.early_stop``, ``Config.stop == "certified"``, and the state space whose
            objective formula the certificate's rounding bound covers).
        step_layout: "vmap" or "lanes" (``Config.step_layout``; see the module doc).
    """

    name: str
    platform: str
    precision: Precision
    early_stop: bool = True
    certified_rule: bool = True
    space: str = "collapsed"
    step_layout: str = "vmap"

    @property
    def wide(self) -> bool:
        return self.name == "wide"

    @property
    def batched_lapack(self) -> bool:
        """Whether metrics and Hessian probes may run vmapped over lanes on the devices. Not on a
        CPU: batched LAPACK kernels split their batch over XLA's intra-op thread pool and wait for
        it, and two at once (one per device) deadlocked a 2-thread pool; there they run lane by lane."""
        return self.platform != "cpu"


def choose(config, platform: str, space: str, dtype: str = "float32", problem=None, dynamics=None) -> Plan:
    """The plan of ``config`` (``config.plan``: "auto" = cpu on a CPU, wide elsewhere) on
    ``platform`` for a batch stepping in state space ``space`` with state ``dtype``. A reduced
    ``config.matmul_precision`` applies to float32 steps only: float64 steps are always full
    precision (the plan's precision is then "float32").

    ``config.step_layout`` "lanes" is refused (ConfigError naming step_layout, before anything is
    compiled) unless the plan is wide, the precision full, and — given the batch's base ``problem``
    and its ``dynamics`` — :func:`ncflow.dynamics.lanes.supports` them."""
    name = config.plan if config.plan != "auto" else ("cpu" if platform == "cpu" else "wide")
    precision = PRECISIONS[config.matmul_precision if dtype == "float32" else "float32"]
    layout = getattr(config, "step_layout", "vmap")
    if layout == "lanes":
        _check_lanes(name, precision, problem, dynamics)
    return Plan(name=name, platform=platform, precision=precision, early_stop=bool(config.early_stop),
                certified_rule=config.stop == "certified", space=space, step_layout=layout)


def _check_lanes(name: str, precision: Precision, problem, dynamics) -> None:
    """Refuse step_layout lanes where it cannot run (one line, naming the option)."""
    why = None
    if name != "wide":
        why = f"plan wide (got plan {name}; auto is cpu on a CPU)"
    elif precision.reduced:
        why = f"matmul_precision float32 (it has no matrix products to reduce; got {precision.name})"
    elif problem is not None and dynamics is not None and _lanes.why_not(problem, dynamics) is not None:
        why = f"collapsed gd on mse with one-hot labels at depth 1, got {_lanes.why_not(problem, dynamics)}"
    if why is not None:
        raise ConfigError(f"step_layout lanes needs {why}; the default vmap runs every batch", field="step_layout")
