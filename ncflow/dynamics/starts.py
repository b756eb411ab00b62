"""Initializations of one run from its key. Vmap outside; keys come from ``run_key``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ncflow.config import effective
from ncflow.maths.objective import Params
from ncflow.problem import Problem


def run_key(master_seed: int, run_index):
    """The key of run ``run_index``: ``fold_in(key(master_seed), run_index)``.

    Run i is the same run whatever the number of runs, the chunking or the device count.
    """
    return jax.random.fold_in(jax.random.key(master_seed), run_index)


def gaussian(problem: Problem, key, scale) -> Params:
    """Gaussian start: entries of ``W (K, d)`` and ``H (d, N)`` are N(0, scale²/d), ``b = 0``.

    ``scale = 0`` gives the exact origin (a strict saddle when c < 1). With class sizes or targets
    (THEORY §7) H is filled column by column, so its first N columns do not depend on how many
    columns a batch draws (``columns``: the largest N of a batch whose lanes differ in size).
    """
    K, d, N = problem.K, problem.d, problem.N
    dt = problem.dtype
    std = jnp.asarray(scale, dt) / jnp.sqrt(jnp.asarray(d, dt))
    z = std * jax.random.normal(key, (K * d + d * N,), dt)  # one draw: W's entries, then H's
    H = z[K * d:].reshape(N, d).T if problem.general else z[K * d:].reshape(d, N)
    return Params(z[: K * d].reshape(K, d), H, jnp.zeros((K,), dt))


def initializer(problem: Problem, config):
    """The one-run start ``fn(problem, key, scale) -> Params`` selected by ``config.init``.

    The kinds are those of :data:`INITIALIZERS` (the names of ``ncflow.config.STARTS``).
    """
    if problem.depth > 1:
        return _deep_initializer(problem, config.init)
    try:
        make = INITIALIZERS[config.init]
    except KeyError:
        raise ValueError(f"init must be one of {', '.join(INITIALIZERS)}, got {config.init!r}") from None
    return make(problem, config)


#: the "small" start is a Gaussian start scaled down by this factor
SMALL_FACTOR = 1e-3


def _orthonormal_columns(a):
    """The Q factor of ``a (rows, cols)``, rows >= cols, with R's diagonal positive: classical
    Gram–Schmidt run twice per column ("twice is enough"), in plain XLA operations.

    No LAPACK on purpose: XLA's CPU runtime runs independent batched LAPACK kernels of one program
    (here W's and H's QR) at the same time, each splits its batch over the intra-op thread pool and
    waits for it, and with one program per device a 2-thread pool deadlocked
    (``ncflow run -K 10 -d 10 -n 2 --init orthogonal`` on 2 CPU devices never finished).
    """
    hi = jax.lax.Precision.HIGHEST

    def body(j, q):
        v = jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
        for _ in range(2):  # columns not yet set are zero and drop out of the projection
            v = v - jnp.matmul(q, jnp.matmul(q.T, v, precision=hi), precision=hi)
        return jax.lax.dynamic_update_index_in_dim(q, v / jnp.linalg.norm(v), j, axis=1)

    return jax.lax.fori_loop(0, a.shape[1], body, jnp.zeros_like(a))


def _semi_orthogonal(key, rows: int, cols: int, dtype):
    """A random ``(rows, cols)`` matrix with orthonormal rows (rows <= cols) or orthonormal
    columns (rows > cols): the Q factor of a Gaussian matrix with R's diagonal positive, so the
    law is Haar (the same law as QR with its signs fixed)."""
    tall = rows >= cols
    a = jax.random.normal(key, (rows, cols) if tall else (cols, rows), dtype)
    q = _orthonormal_columns(a)
    return q if tall else q.T


def orthogonal(problem: Problem, key, scale) -> Params:
    """Orthogonal start: ``W`` and ``H`` are random semi-orthogonal frames (all singular values
    equal), ``b = 0``.

    ``W = scale·sqrt(K/min(K, d))·Q_W`` with ``Q_W (K, d)`` having orthonormal rows (K <= d) or
    columns (K > d), and ``H = scale·sqrt(N/min(d, N))·Q_H`` likewise for ``(d, N)``. The
    factors make ``||W||_F² = K scale²`` and ``||H||_F² = N scale²``, the expected norms of the
    Gaussian start of the same scale (when K <= d every ``w_k`` has norm ``scale``), so
    ``init_scale`` means the same for both kinds and the default step size bound still holds.
    """
    K, d, N = problem.K, problem.d, problem.N
    dt = problem.dtype
    kw, kh = jax.random.split(key)
    s = jnp.asarray(scale, dt)
    W = s * jnp.sqrt(jnp.asarray(K / min(K, d), dt)) * _semi_orthogonal(kw, K, d, dt)
    H = s * jnp.sqrt(jnp.asarray(N / min(d, N), dt)) * _semi_orthogonal(kh, d, N, dt)
    return Params(W, H, jnp.zeros((K,), dt))


def small(problem: Problem, key, scale) -> Params:
    """Small start near the origin: the Gaussian start of scale ``SMALL_FACTOR·scale``
    (``1e-3·scale``; entries N(0, (1e-3·scale)²/d), ``b = 0``) — the escape-from-origin regime,
    where every mode grows at ``theory.origin_growth_rate`` before the objective moves."""
    return gaussian(problem, key, jnp.asarray(scale, problem.dtype) * SMALL_FACTOR)


def critical_point_jnp(problem: Problem, s: int) -> Params:
    """The critical point of ``theory.critical_point(problem, s)`` (fixed directions, no key),
    built with jnp ops from the problem's coefficients so they may be traced (per-lane
    batched problems inside jit). MSE loss, ``s <= theory.max_active(problem)``, c < 1 when
    s > 0 (not checked here: a batched problem has no concrete c; see ``solvers``).

    Directions: ``U`` = first s columns of the centered Helmert basis (with a bias) or of I_K
    (bias-free), ``R`` = the first s coordinate axes of R^d, ``V = Yᵀ U/√n``; singular values
    ``z = √n (1 − c)``; ``b = 1/(K(1 + λ_b))`` (with a bias).
    """
    from ncflow.maths.theory import _centered_basis  # host constant, no coefficients involved

    K, d, n = problem.K, problem.d, problem.n
    dt = problem.dtype
    lw = jnp.asarray(problem.lambda_w, dt)
    lh = jnp.asarray(problem.lambda_h, dt)
    lb = jnp.asarray(problem.lambda_b, dt)
    basis = _centered_basis(K) if problem.bias else np.eye(K)
    U = jnp.asarray(basis[:, :s], dt)
    Y = np.repeat(np.eye(K), n, axis=1)
    V = jnp.asarray(Y.T @ basis[:, :s] / np.sqrt(n), dt)
    Rd = jnp.asarray(np.eye(d)[:, :s], dt)
    c = K * jnp.sqrt(n * lw * lh)
    z = jnp.sqrt(jnp.asarray(n, dt)) * (1 - c)
    ratio = jnp.where(lw > 0, lh / jnp.where(lw > 0, lw, 1.0), 1.0)
    a = jnp.sqrt(jnp.maximum(z, 0.0)) * ratio**0.25  # W's singular values; H's are z / a
    h = jnp.where(a > 0, z / jnp.where(a > 0, a, 1.0), 0.0)
    W = a * U @ Rd.T
    H = h * Rd @ V.T
    b = jnp.full((K,), 1.0, dt) / (K * (1 + lb)) if problem.bias else jnp.zeros((K,), dt)
    return Params(W, H, b)


def saddle_factory(problem: Problem, config):
    """Factory of init "saddle": the critical point with ``config.active`` = s active
    directions (:func:`critical_point_jnp`) plus a Gaussian perturbation of W and H with entries
    N(0, perturb²/d) from the run's key (b is not perturbed). The per-lane ``scale`` (init_scale)
    is ignored: ``config.perturb`` sets the perturbation size."""
    from ncflow.maths.theory import max_active

    s = config.active
    if s is None or not 0 <= s < max_active(problem):
        raise ValueError(f"active must be an integer in [0, {max_active(problem) - 1}] for init saddle, got {s!r}")
    perturb = float(effective(config, "perturb"))  # the table's default where None

    def fn(problem: Problem, key, scale) -> Params:
        del scale
        x = critical_point_jnp(problem, s)
        e = gaussian(problem, key, perturb)
        return Params(x.W + e.W, x.H + e.H, x.b)

    return fn


#: init kind -> factory(problem, config) -> fn(problem, key, scale) -> Params
INITIALIZERS = {
    "gaussian": lambda problem, config: gaussian,
    "orthogonal": lambda problem, config: orthogonal,
    "small": lambda problem, config: small,
    "saddle": saddle_factory,
}


def _deep_initializer(problem: Problem, init: str):
    """The deep UFM's start ``fn(problem, key, scale) -> DeepParams`` (THEORY §9): the fan-in Gaussian of
    :func:`ncflow.maths.deep_objective.gaussian_start` (W_l ~ N(0, s²/d_{l−1}), H ~ N(0, s²/d_0), b = 0)
    with the batch's static shape (``problem``: the base problem), scale ``s`` (``small``: × SMALL_FACTOR)."""
    from ncflow.maths import deep_objective as _do

    if init not in ("gaussian", "small"):
        raise ValueError(f"init must be gaussian or small at depth {problem.depth}, got {init!r}")
    spec = _do.spec_of(problem)
    factor = SMALL_FACTOR if init == "small" else 1.0

    def fn(p, key, scale):
        return _do.gaussian_start(spec, key, jnp.asarray(scale, spec.dtype) * factor)
    return fn
