"""State spaces of ONE run: where its point lives, and what can be read off that point.

Two exact spaces carry the same gradient-descent trajectory:

* :data:`FULL` carries ``Params(W (K, d), H (d, N), b (K,))`` and is the reference for every loss;
* :data:`COLLAPSED` carries ``Collapsed(W (K, d), M (d, K), G (d, d), b (K,))`` at O(K d²) per GD
  step instead of O(K d N) (MSE only; THEORY.md §4); heavy ball and Nesterov move it too, with
  their velocities (the ``momentum``/``nesterov`` steppers, :mod:`ncflow.maths.collapsed_momentum`).

A space knows how to build its state from full parameters and back, the objective and the FULL
gradient norm, the class statistics behind every NC metric, its cost per step, and its own exact
GD step. It knows nothing about optimizers (:mod:`ncflow.dynamics.steppers`) or batches.
Spaces are frozen, hashable values, so they can key a cache of compiled programs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ncflow.config import ENGINES
from ncflow.errors import ConfigError
from ncflow.maths import collapsed as _c
from ncflow.maths import metrics as _m
from ncflow.maths import objective as _o
from ncflow.problem import Problem


@dataclasses.dataclass(frozen=True)
class StateSpace:
    """Interface of a state space (subclasses implement every method for ONE run)."""

    name = "abstract"

    def from_params(self, problem: Problem, params: _o.Params):
        """The state of a full point ``params``."""
        raise NotImplementedError

    def to_params(self, problem: Problem, x) -> _o.Params:
        """A full point with this state (collapsed: rebuilt up to a within-class mixing)."""
        raise NotImplementedError

    def value_and_grad_norm(self, problem: Problem, x):
        """``(f, ||∇f||)`` of the full objective at the state, both shape ()."""
        raise NotImplementedError

    def objective(self, problem: Problem, x):
        """The objective f alone, shape ()."""
        raise NotImplementedError

    def sq_norm(self, problem: Problem, x):
        """||W||_F² + ||H||_F² + ||b||² of the point, shape () (what the certificate's rounding
        bound of f needs)."""
        raise NotImplementedError

    def stats(self, problem: Problem, x) -> _m.ClassStats:
        """The class statistics (W, class means M (d, K), within-class scatter G (d, d), b)."""
        raise NotImplementedError

    def gd_step(self, problem: Problem, x, lr):
        """One exact gradient-descent step of size ``lr`` (a scalar, possibly traced)."""
        raise NotImplementedError

    def flops_per_step(self, problem: Problem) -> int:
        """Estimated flops of one GD step (the cost model of ``choose``)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class FullSpace(StateSpace):
    """The full parameters (W, H, b): every loss, every optimizer."""

    name = "full"

    def from_params(self, problem, params):
        return params

    def to_params(self, problem, x):
        return x

    def value_and_grad_norm(self, problem, x):
        f, g = _o.value_and_gradient(problem, x)
        return f, jnp.sqrt(_o.tree_sq_norm(g))

    def objective(self, problem, x):
        return _o.objective(problem, x)

    def sq_norm(self, problem, x):
        return _o.tree_sq_norm(x)

    def stats(self, problem, x):
        return _m.class_stats(problem, x)

    def gd_step(self, problem, x, lr):
        g = _o.gradient(problem, x)
        return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, x, g)

    def flops_per_step(self, problem):
        return 6 * problem.K * problem.d * problem.N


@dataclasses.dataclass(frozen=True)
class CollapsedSpace(StateSpace):
    """Class means and within-class scatter (W, M, G, b), MSE loss only: GD here; heavy ball and
    Nesterov by their stepper (which carries the velocities around this point)."""

    name = "collapsed"

    def from_params(self, problem, params):
        return _c.collapse(problem, params)

    def to_params(self, problem, x):
        return _c.expand(problem, x)

    def value_and_grad_norm(self, problem, x):
        return _c.value_and_grad_norm(problem, x)

    def objective(self, problem, x):
        return _c.value_and_grad_norm(problem, x)[0]

    def sq_norm(self, problem, x):
        return _c.sq_norm(problem, x)  # ||H||² = Σ_k n_k ||μ_k||² + tr G

    def stats(self, problem, x):
        return _c.class_stats(problem, x)

    def gd_step(self, problem, x, lr):
        return _c.gd_step(problem, x, lr)

    def flops_per_step(self, problem):
        return 4 * problem.K * problem.d**2 + 8 * problem.K**2 * problem.d


FULL = FullSpace()
COLLAPSED = CollapsedSpace()

#: "auto" takes the collapsed step when its flop count is below this fraction of the full one's.
#: Measured (benchmarks/bench.py, crossover section, K=10, d=64, float32, 2-core CPU): the full
#: engine was faster up to N = 80 and the collapsed one from N = 160, where the flop models
#: alone would switch at N ≈ 56; the collapsed step's small products run at a lower rate. Heavy ball
#: (benchmarks/momentum_collapsed.py's engines, same machine, K=10, d=64): full faster up to N = 160
#: (flop ratio 0.73, speed ratio 0.71), collapsed from N = 320 (0.37, 1.43): the same 0.5 fits.
CROSSOVER = 0.5


def choose(problem: Problem, engine: str = "auto", extra=None) -> StateSpace:
    """The state space for ``engine`` ("auto", "full" or "collapsed").

    "auto" takes the collapsed one for the MSE loss when its flop count is below ``CROSSOVER``
    (0.5) times the full step's — the measured crossover, recorded in benchmarks/README.md — and
    always for a batch whose lanes have different class sizes. ``extra(space)``, if given, adds a
    stepper's own flops per step to each space's GD step (momentum: its velocities; None: GD).
    """
    more = extra or (lambda space: 0)
    mixed = problem.class_sizes is not None and problem.columns is not None  # lanes of different sizes
    if engine == "full":
        if mixed:
            raise ConfigError("engine 'full' needs every point of a batch to have the same class sizes (H has N "
                              "columns); use 'collapsed' or 'auto'", field="engine")
        return FULL
    if engine == "collapsed":
        if problem.loss != "mse":
            raise ConfigError("engine 'collapsed' supports loss='mse' only; use 'full'", field="engine")
        return COLLAPSED
    if engine != "auto":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if mixed:
        return COLLAPSED
    collapsed, full = (sp.flops_per_step(problem) + more(sp) for sp in (COLLAPSED, FULL))
    if problem.loss == "mse" and collapsed < CROSSOVER * full:
        return COLLAPSED
    return FULL
