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
from ncflow.maths import deep_collapsed as _dc
from ncflow.maths import deep_objective as _do
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

    def abstract_params(self, problem: Problem):
        """The full point's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves): what a start draws
        and ``from_params`` takes — here ``Params(W (K, d), H (d, N), b (K,))``."""
        dt = problem.dtype
        K, d, N = problem.K, problem.d, problem.N
        return _o.Params(jax.ShapeDtypeStruct((K, d), dt), jax.ShapeDtypeStruct((d, N), dt),
                         jax.ShapeDtypeStruct((K,), dt))

    def hvp(self, problem: Problem, params, tangent):
        """Hessian-vector product of the full objective at the full point ``params`` (a pytree like
        ``tangent``)."""
        return _o.hvp(problem, params, tangent)

    def distance(self, problem: Problem, prediction, x, value) -> _m.OptimumDistance:
        """Distance of the state to the predicted optimum (``prediction``: the Prediction's arrays)."""
        return _m.optimum_distance(problem, prediction, self.stats(problem, x), value)

    def columns(self, problem: Problem, prediction, x) -> dict:
        """The model's own per-run columns, {name: shape ()} (none for the one-layer UFM)."""
        return {}


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


@dataclasses.dataclass(frozen=True)
class DeepFullSpace(StateSpace):
    """The deep UFM's full parameters ``DeepParams(Ws, H, b)`` (THEORY §9; linear: GD only here).

    ``spec`` is the batch's static shape (:func:`ncflow.maths.deep_objective.spec_of` of the base
    problem); each method reads its coefficients (λ_1..λ_L, λ_H, λ_b) from the run's problem."""

    spec: _do.DeepSpec = None
    name = "deep_full"

    def _co(self, problem):
        return _do.coeffs_of(self.spec, problem)

    def from_params(self, problem, params):
        return params

    def to_params(self, problem, x):
        return x

    def value_and_grad_norm(self, problem, x):
        return _do.value_and_grad_norm(self.spec, self._co(problem), x)

    def objective(self, problem, x):
        return _do.objective(self.spec, self._co(problem), x)

    def sq_norm(self, problem, x):
        return _do.sq_norm(x)

    def deep_stats(self, problem, x) -> _do.DeepStats:
        """Per-layer class statistics (:class:`~ncflow.maths.deep_objective.DeepStats`)."""
        return _do.class_stats(self.spec, x)

    def stats(self, problem, x):
        return _do.last_layer(self.deep_stats(problem, x))  # the NC metrics score the last layer

    def gd_step(self, problem, x, lr):
        return _do.gd_step(self.spec, self._co(problem), x, lr)

    def flops_per_step(self, problem):
        return _do.flops_per_step(self.spec)

    def abstract_params(self, problem):
        dt, d = self.spec.dtype, self.spec.dims
        Ws = tuple(jax.ShapeDtypeStruct((d[i], d[i - 1]), dt) for i in range(1, self.spec.L + 1))
        return _do.DeepParams(Ws, jax.ShapeDtypeStruct((d[0], self.spec.N), dt),
                              jax.ShapeDtypeStruct((self.spec.K,), dt))

    def hvp(self, problem, params, tangent):
        return _do.hvp(self.spec, self._co(problem), params, tangent)

    def distance(self, problem, prediction, x, value):
        """:func:`~ncflow.maths.metrics.optimum_distance` of the last layer (W_L W_Lᵀ against the
        optimum's), with ``gram_error`` also covering the singular values of P M J against the optimum's
        (relative to max(1, their largest)), ``gram_h_error`` MᵀM of H's class means against the
        optimum's where unique, and ``cross_error`` 0 (not compared at depth > 1)."""
        st = self.deep_stats(problem, x)
        base = _m.optimum_distance(problem, prediction, _do.last_layer(st), value)
        sv = _do.pmj_singular(self.spec, st.Ws, st.means[0])
        want = prediction.singular_values
        sv_err = jnp.max(jnp.abs(sv - want)) / jnp.maximum(jnp.max(want), 1.0)
        M0 = st.means[0]
        gh = prediction.gram_h
        gh_err = jnp.sqrt(jnp.sum((M0.T @ M0 - gh) ** 2)) / jnp.maximum(jnp.sqrt(jnp.sum(gh**2)), 1.0)
        zero = jnp.zeros((), value.dtype)
        return base._replace(gram_error=jnp.maximum(base.gram_error, sv_err),
                             gram_h_error=jnp.where(prediction.gram_unique, gh_err, zero), cross_error=zero)

    def columns(self, problem, prediction, x):
        """``rank``: r = #{x_i > (L − 1)/(2L)} of the singular values x_i of P M J (THEORY §9.2);
        ``critical_error``: max_i |x_i − x_i(r)| / max(1, max_i x_i(r)) against the rank-r local
        minimum's predicted singular values (NaN where no local minimum has rank r); ``rank_gap``:
        f − f_r (NaN likewise); then the per-layer NC metrics ``nc1_l{l}``, ``nc2_l{l}``, ``nc3_l{l}``,
        ``rank_l{l}`` of the features of layer l = 0..L−1 (:func:`~ncflow.maths.deep_objective.layer_metrics`).
        All shape ()."""
        st = self.deep_stats(problem, x)
        sv = _do.pmj_singular(self.spec, st.Ws, st.means[0])
        r = jnp.sum(sv > prediction.threshold)
        want = prediction.minima_singular[r]
        err = jnp.max(jnp.abs(sv - want)) / jnp.maximum(jnp.max(want), 1.0)
        f = self.objective(problem, x)
        return {"rank": r.astype(sv.dtype), "critical_error": err, "rank_gap": f - prediction.minima_values[r],
                **_do.layer_metrics(self.spec, st)}


@dataclasses.dataclass(frozen=True)
class DeepCollapsedSpace(DeepFullSpace):
    """The deep LINEAR UFM's exact collapsed state ``DeepCollapsed(Ws, M, G, b)`` (THEORY §9.4): the
    same GD trajectory as :class:`DeepFullSpace` at a cost independent of N."""

    name = "deep_collapsed"

    def from_params(self, problem, params):
        return _dc.collapse(self.spec, params)

    def to_params(self, problem, x):
        return _dc.expand(self.spec, x)

    def value_and_grad_norm(self, problem, x):
        return _dc.value_and_grad_norm(self.spec, self._co(problem), x)

    def objective(self, problem, x):
        return _dc.objective(self.spec, self._co(problem), x)

    def sq_norm(self, problem, x):
        return _dc.sq_norm(self.spec, x)

    def deep_stats(self, problem, x):
        return _dc.class_stats(self.spec, x)

    def gd_step(self, problem, x, lr):
        return _dc.gd_step(self.spec, self._co(problem), x, lr)

    def flops_per_step(self, problem):
        return _dc.flops_per_step(self.spec)


@dataclasses.dataclass(frozen=True)
class DeepReluSpace(DeepFullSpace):
    """The deep ReLU UFM's full parameters (THEORY §9.6; no collapsed form: masks act per sample). Runs
    are measured against the DNC critical point (``gap`` = f − L_DNC, the Grams of W_L and of the last
    features against DNC's), and carry §9.6's per-layer ranks."""

    name = "deep_relu"

    def distance(self, problem, prediction, x, value):
        """:func:`~ncflow.maths.metrics.optimum_distance` of the last layer against DNC (``gap`` =
        f − L_DNC; Gram errors 0 where DNC does not exist), ``cross_error`` 0."""
        base = _m.optimum_distance(problem, prediction, self.stats(problem, x), value)
        return base._replace(cross_error=jnp.zeros((), value.dtype))

    def columns(self, problem, prediction, x):
        """:func:`~ncflow.maths.deep_objective.relu_metrics`: per-layer NC1–NC3 and class-mean ranks of
        the features and pre-activations, ``rank_out`` and ``rank`` (the smallest), all shape ()."""
        return _do.relu_metrics(self.spec, self.deep_stats(problem, x))


FULL = FullSpace()
COLLAPSED = CollapsedSpace()


def deep_spaces(problem: Problem) -> tuple[DeepFullSpace, DeepCollapsedSpace]:
    """(full, collapsed) spaces of a deep problem's (static) shape: the full one is a
    :class:`DeepReluSpace` for activation relu (whose collapsed space is never chosen)."""
    spec = _do.spec_of(problem)
    full = DeepReluSpace(spec) if spec.activation == "relu" else DeepFullSpace(spec)
    return full, DeepCollapsedSpace(spec)

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
    if problem.depth > 1:
        return _choose_deep(problem, engine)
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


def _choose_deep(problem: Problem, engine: str) -> StateSpace:
    """``choose`` at depth > 1: DEEP_FULL or DEEP_COLLAPSED (linear only), "auto" by the same flop rule."""
    full, collapsed = deep_spaces(problem)
    if engine == "full":
        return full
    if engine == "collapsed":
        if problem.activation != "linear":
            raise ConfigError(f"engine 'collapsed' needs activation linear at depth {problem.depth} (ReLU masks act "
                              "per sample, THEORY §9.4); use 'full' or 'auto'", field="engine")
        return collapsed
    if engine != "auto":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if problem.activation == "linear" and collapsed.flops_per_step(problem) < CROSSOVER * full.flops_per_step(problem):
        return collapsed
    return full
