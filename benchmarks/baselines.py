"""Reference implementations that ncflow's speed benchmark compares against.

Every baseline solves the same problem: the unconstrained features model (UFM) with the
regularized MSE objective (THEORY.md §1), trained by plain gradient descent with a fixed step
``lr`` for a fixed number of ``steps`` (no early stopping), for ``runs`` independent random
initializations.

Shapes: K classes, n samples per class, N = n K columns, feature dimension d.

* ``W``: (K, d), ``H``: (d, N) with columns class-major (class 0's n columns first, then
  class 1's, ...), ``b``: (K,).
* ``Y``: (K, N) one-hot, ``Y[k, i] = 1`` iff column ``i`` belongs to class ``k``
  (i.e. ``i // n == k``).

Objective::

    f(W, H, b) = 1/(2N) ||W H + b 1ᵀ − Y||_F² + λ_W/2 ||W||_F² + λ_H/2 ||H||_F² + λ_b/2 ||b||²

Gradients, with ``R = (W H + b 1ᵀ − Y) / N``::

    ∇W = R Hᵀ + λ_W W,   ∇H = Wᵀ R + λ_H H,   ∇b = R 1 + λ_b b.

Initialization (shared by every baseline so that they are comparable, though not bitwise
equal across frameworks, since each uses its own RNG): entries of ``W`` and ``H`` are
Gaussian with standard deviation ``init_scale / sqrt(d)``, and ``b = 0``.

The per-run baselines (:func:`numpy_loop`, :func:`torch_loop`, :func:`naive_jax`) return a
dict with keys

* ``final_objective``: ``np.ndarray`` of shape ``(runs_timed,)``, f at the last iterate
  of each run that was executed (``runs_timed == runs`` unless ``max_wall_s`` cut the loop).
  float64 for the eager loops (Python floats), the program's dtype for :func:`naive_jax`.
* ``seconds``: wall time (float) of the timed part only (initialization + ``steps`` GD steps
  + the final objective, for every timed run); compilation and warm-up are excluded.
* ``compile_s``: compilation time in seconds (``0.0`` for the eager baselines).
* ``warmup_s``: time of the untimed warm-up (eager baselines: one short throw-away run; JAX:
  the first execution of the compiled program).
* ``run_steps``: ``runs_timed * steps``, so that ``run_steps / seconds`` is an honest
  run-steps-per-second throughput even when only a subset of the runs was timed.
* ``runs_timed``: how many runs were actually executed and timed.
* ``runs_requested``: the ``runs`` argument.

This module is deliberately independent of the ``ncflow`` package.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import numpy as np

__all__ = [
    "BaselineUnavailable",
    "labels_onehot",
    "numpy_objective",
    "numpy_grads",
    "numpy_loop",
    "torch_loop",
    "naive_jax",
    "matmul_ceiling",
    "peak_rss_mb",
]

_DTYPES = ("float32", "float64")


class BaselineUnavailable(RuntimeError):
    """A baseline cannot run in this environment (e.g. its framework is not installed)."""


# --------------------------------------------------------------------------- helpers
def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return dtype


def _check_sizes(K, d, n, steps, runs) -> None:
    for name, value, low in (("K", K, 1), ("d", d, 1), ("n", n, 1), ("steps", steps, 0), ("runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def labels_onehot(K: int, n: int, dtype: str = "float32") -> np.ndarray:
    """One-hot label matrix ``Y`` of shape (K, N = n K), columns class-major."""
    return np.repeat(np.eye(K, dtype=np.dtype(dtype)), n, axis=1)


def numpy_objective(W, H, b, Y, lam_w, lam_h, lam_b) -> float:
    """f(W, H, b) for ``W (K, d)``, ``H (d, N)``, ``b (K,)``, ``Y (K, N)``; returns a float."""
    N = Y.shape[1]
    E = W @ H + b[:, None] - Y
    return float(
        0.5 / N * np.sum(E * E)
        + 0.5 * lam_w * np.sum(W * W)
        + 0.5 * lam_h * np.sum(H * H)
        + 0.5 * lam_b * np.sum(b * b)
    )


def numpy_grads(W, H, b, Y, lam_w, lam_h, lam_b):
    """Analytic gradients ``(∇W (K, d), ∇H (d, N), ∇b (K,))`` of f, same dtype as the inputs."""
    N = Y.shape[1]
    R = (W @ H + b[:, None] - Y) * (1.0 / N)
    gW = R @ H.T + lam_w * W
    gH = W.T @ R + lam_h * H
    gb = R.sum(axis=1) + lam_b * b
    return gW, gH, gb


def _numpy_init(rng: np.random.Generator, K, d, N, init_scale, dtype):
    std = init_scale / math.sqrt(d)
    W = (rng.standard_normal((K, d)) * std).astype(dtype)
    H = (rng.standard_normal((d, N)) * std).astype(dtype)
    b = np.zeros((K,), dtype=dtype)
    return W, H, b


def _numpy_run(rng, K, d, n, lam_w, lam_h, lam_b, lr, steps, init_scale, dtype) -> float:
    N = n * K
    Y = labels_onehot(K, n, dtype)
    W, H, b = _numpy_init(rng, K, d, N, init_scale, np.dtype(dtype))
    for _ in range(steps):
        gW, gH, gb = numpy_grads(W, H, b, Y, lam_w, lam_h, lam_b)
        W = W - lr * gW
        H = H - lr * gH
        b = b - lr * gb
    return numpy_objective(W, H, b, Y, lam_w, lam_h, lam_b)


def _result(objs, seconds, compile_s, warmup_s, runs_timed, runs, steps) -> dict:
    return {
        "final_objective": np.asarray(objs).reshape(-1),
        "seconds": float(seconds),
        "compile_s": float(compile_s),
        "warmup_s": float(warmup_s),
        "run_steps": int(runs_timed) * int(steps),
        "runs_timed": int(runs_timed),
        "runs_requested": int(runs),
    }


def _timed_loop(run_one, runs, max_wall_s):
    """Call ``run_one(i)`` for i = 0..runs-1; stop after the first run that pushes the
    elapsed time past ``max_wall_s`` (if given). Returns (objectives, seconds)."""
    objs = []
    t0 = time.perf_counter()
    for i in range(runs):
        objs.append(run_one(i))
        if max_wall_s is not None and time.perf_counter() - t0 > max_wall_s:
            break
    return objs, time.perf_counter() - t0


# --------------------------------------------------------------------------- NumPy
def numpy_loop(K, d, n, lam_w, lam_h, lam_b, lr, steps, runs, dtype="float32", seed=0,
               *, init_scale=1.0, max_wall_s=None) -> dict:
    """Per-seed Python loop with NumPy analytic gradients, one run after another.

    This is how public neural-collapse code typically simulates the UFM. Run ``i`` draws its
    initialization from ``np.random.default_rng(seed + i)``.

    Args:
        K, d, n: classes, feature dimension, samples per class (W (K, d), H (d, nK), b (K,)).
        lam_w, lam_h, lam_b: weight-decay coefficients λ_W, λ_H, λ_b.
        lr: fixed gradient-descent step size.
        steps: number of GD steps per run.
        runs: number of independent runs requested.
        dtype: "float32" or "float64".
        seed: base seed.
        init_scale: W and H entries have std ``init_scale / sqrt(d)``.
        max_wall_s: if given, stop after the first run that pushes the elapsed time past it;
            ``runs_timed`` and ``run_steps`` then count only the runs executed.

    Returns:
        dict (see module docstring); ``final_objective`` has shape ``(runs_timed,)``.
    """
    _check_sizes(K, d, n, steps, runs)
    dtype = _check_dtype(dtype)
    args = (K, d, n, lam_w, lam_h, lam_b, lr)

    t0 = time.perf_counter()  # warm-up: touch BLAS once so thread pools etc. are started
    _numpy_run(np.random.default_rng(seed), *args, min(steps, 2), init_scale, dtype)
    warmup_s = time.perf_counter() - t0

    def run_one(i):
        return _numpy_run(np.random.default_rng(seed + i), *args, steps, init_scale, dtype)

    objs, seconds = _timed_loop(run_one, runs, max_wall_s)
    return _result(objs, seconds, 0.0, warmup_s, len(objs), runs, steps)


# --------------------------------------------------------------------------- PyTorch
def torch_loop(K, d, n, lam_w, lam_h, lam_b, lr, steps, runs, dtype="float32", seed=0,
               *, init_scale=1.0, max_wall_s=None) -> dict:
    """Per-seed Python loop in PyTorch on CPU with autograd, one run after another.

    Each step builds the objective, calls ``loss.backward()`` and applies a manual SGD update
    ``p -= lr * p.grad`` under ``torch.no_grad()``. Run ``i`` draws its initialization from a
    ``torch.Generator`` seeded with ``seed + i``. ``torch.set_num_threads`` is left at its
    default. Arguments and return value as in :func:`numpy_loop`.

    Raises:
        BaselineUnavailable: if ``torch`` cannot be imported.
    """
    _check_sizes(K, d, n, steps, runs)
    dtype = _check_dtype(dtype)
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install
        raise BaselineUnavailable(f"torch_loop needs PyTorch, which is not importable ({exc})") from exc

    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    N = n * K
    Y = torch.from_numpy(labels_onehot(K, n, dtype))
    std = init_scale / math.sqrt(d)

    def objective(W, H, b):
        E = W @ H + b[:, None] - Y
        return (0.5 / N) * (E * E).sum() + 0.5 * lam_w * (W * W).sum() \
            + 0.5 * lam_h * (H * H).sum() + 0.5 * lam_b * (b * b).sum()

    def run(i, nsteps):
        g = torch.Generator().manual_seed(int(seed + i))
        W = (torch.randn(K, d, generator=g, dtype=tdtype) * std).requires_grad_(True)
        H = (torch.randn(d, N, generator=g, dtype=tdtype) * std).requires_grad_(True)
        b = torch.zeros(K, dtype=tdtype, requires_grad=True)
        params = (W, H, b)
        for _ in range(nsteps):
            loss = objective(W, H, b)
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p -= lr * p.grad
                    p.grad = None
        with torch.no_grad():
            return float(objective(W, H, b))

    t0 = time.perf_counter()
    run(0, min(steps, 2))
    warmup_s = time.perf_counter() - t0

    objs, seconds = _timed_loop(lambda i: run(i, steps), runs, max_wall_s)
    return _result(objs, seconds, 0.0, warmup_s, len(objs), runs, steps)


# --------------------------------------------------------------------------- naive JAX
def _x64_enabled() -> bool:
    import jax

    return bool(jax.config.read("jax_enable_x64"))


def _require_jax_dtype(dtype: str) -> None:
    if dtype == "float64" and not _x64_enabled():
        raise ValueError(
            "dtype='float64' needs JAX x64 mode; call jax.config.update('jax_enable_x64', True) "
            "before requesting float64 (this module never flips the global flag)"
        )


def naive_jax(K, d, n, lam_w, lam_h, lam_b, lr, steps, runs, dtype="float32", seed=0,
              *, init_scale=1.0, max_wall_s=None) -> dict:
    """The straightforward JAX approach: ``jit(vmap(fori_loop(GD with jax.grad)))``.

    Run ``i`` uses key ``jax.random.fold_in(jax.random.key(seed), i)``; the whole batch of
    ``runs`` runs is one compiled program that initializes, runs ``steps`` steps of
    ``params - lr * jax.grad(objective)(params)`` and evaluates the final objective, shape
    (runs,). Compilation (``lower().compile()``) is timed as ``compile_s``, one untimed
    warm-up execution follows (``warmup_s``), then a second execution is timed with
    ``block_until_ready`` (``seconds``).

    float64 requires JAX x64 mode to be enabled by the caller *before* calling this.
    ``max_wall_s`` is accepted for a uniform signature and ignored (the batch is one
    program, so every run is always timed; ``runs_timed == runs``). Other arguments and
    the return value as in :func:`numpy_loop`.

    Raises:
        ValueError: if ``dtype == "float64"`` while JAX x64 mode is off.
    """
    _check_sizes(K, d, n, steps, runs)
    dtype = _check_dtype(dtype)
    _require_jax_dtype(dtype)
    import jax
    import jax.numpy as jnp

    jdtype = jnp.dtype(dtype)
    N = n * K
    Y = jnp.asarray(labels_onehot(K, n, dtype))
    std = init_scale / math.sqrt(d)

    def plain_objective(params):
        W, H, b = params
        E = W @ H + b[:, None] - Y
        return (0.5 / N) * jnp.sum(E * E) + 0.5 * lam_w * jnp.sum(W * W) \
            + 0.5 * lam_h * jnp.sum(H * H) + 0.5 * lam_b * jnp.sum(b * b)

    def init(key):
        kw, kh = jax.random.split(key)
        W = std * jax.random.normal(kw, (K, d), jdtype)
        H = std * jax.random.normal(kh, (d, N), jdtype)
        b = jnp.zeros((K,), jdtype)
        return (W, H, b)

    grad = jax.grad(plain_objective)

    def body(_, params):
        g = grad(params)
        return jax.tree.map(lambda p, gp: p - lr * gp, params, g)

    def one_run(key):
        params = jax.lax.fori_loop(0, steps, body, init(key))
        return plain_objective(params)

    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(runs))
    keys = jax.block_until_ready(keys)

    fn = jax.jit(jax.vmap(one_run))
    t0 = time.perf_counter()
    compiled = fn.lower(keys).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    jax.block_until_ready(compiled(keys))
    warmup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys))
    seconds = time.perf_counter() - t0
    return _result(np.asarray(out), seconds, compile_s, warmup_s, runs, runs, steps)


# --------------------------------------------------------------------------- hardware ceilings
def matmul_ceiling(dtype="float32", size=2048, repeats=5) -> dict:
    """Measured GFLOP/s of a square ``(size, size) @ (size, size)`` matmul.

    JAX: a jitted ``jnp.matmul`` on the default device (one warm-up call, then ``repeats``
    timed calls with ``block_until_ready``); NumPy: ``np.matmul`` (one warm-up, then
    ``repeats`` timed calls). Each figure is ``2 size³ / median time / 1e9``.

    Returns:
        dict with ``jax_gflops``, ``numpy_gflops`` (floats), and ``jax_seconds``,
        ``numpy_seconds`` (median seconds per matmul), ``size``, ``dtype``, ``device``.

    Raises:
        ValueError: if ``dtype == "float64"`` while JAX x64 mode is off.
    """
    dtype = _check_dtype(dtype)
    _require_jax_dtype(dtype)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size)).astype(dtype)
    B = rng.standard_normal((size, size)).astype(dtype)
    flops = 2.0 * size ** 3

    mm = jax.jit(jnp.matmul)
    Aj, Bj = jax.device_put(A), jax.device_put(B)
    jax.block_until_ready(mm(Aj, Bj))
    jt = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(Aj, Bj))
        jt.append(time.perf_counter() - t0)

    np.matmul(A, B)
    nt = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(A, B)
        nt.append(time.perf_counter() - t0)

    j_med, n_med = float(np.median(jt)), float(np.median(nt))
    return {
        "jax_gflops": flops / j_med / 1e9,
        "numpy_gflops": flops / n_med / 1e9,
        "jax_seconds": j_med,
        "numpy_seconds": n_med,
        "size": int(size),
        "dtype": dtype,
        "device": str(jax.devices()[0]),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``getrusage`` ``ru_maxrss``;
    Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return rss / (1024.0 * 1024.0)
    return rss / 1024.0
