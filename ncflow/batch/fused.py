"""A fused multi-step kernel (Pallas): many lanes of the default collapsed GD step advanced by a chunk
of steps with their state loaded once and stored once.

What it runs: :func:`ncflow.maths.collapsed.gd_step` of the balanced one-hot MSE problem (any bias
mode: unregularized, regularized or none) under plain GD, the default problem's engine. Anything else
(class sizes, targets, rescaled MSE, depth > 1, momentum, the escape recorder) is refused by
:func:`supports`.

Layout: structure of arrays. The state of L lanes is one array ``rows (P, L)``, lanes on the minor
(contiguous) axis; row r holds one scalar of every lane. Rows in order: W row-major (K·d, entry (k, j)
at k·d + j), M row-major (d·K, entry (p, l) at K·d + p·K + l), the UPPER TRIANGLE of G row-major
(d(d+1)/2 rows, entries p <= j; G is symmetric, so storing it once saves d(d−1)/2 rows and keeps it
exactly symmetric), then b (K rows): ``P = 2Kd + d(d+1)/2 + K`` (46 at K=d=4, 265 at K=d=10).
:func:`pack`/:func:`unpack` convert from/to a lanes-major :class:`~ncflow.maths.collapsed.Collapsed`.

The step, unrolled at trace time into multiply-adds of whole lane vectors (no dot, no reduction,
no padding of K or d): with X = W G, R = W M + b 1ᵀ − I, S = X Wᵀ (its upper triangle),
Z = −a s X + ½ s² S W, a = 1 − ηλ_H, s = η/N::

    W' = (1 − ηλ_W) W − s (n R Mᵀ + X)      M' = a M − s Wᵀ R
    G' = a² G + Wᵀ Z + Zᵀ W (upper)         b' = (1 − ηλ_b) b − s n R 1   (b' = b without a bias)

the same equations as ncflow's step with the divisions by N folded into s. Every sum runs over its
index in increasing order (K or d terms); the rounding therefore differs from ncflow's dot products
in the last bits only (float64: 1e-15 relative per step), not in the maths.

The kernel (:func:`fused_chunk`): one program per block of ``block_lanes`` lanes loads its state in
a few large blocks (the rows split into power-of-two groups: 32 + 8 + 4 + 2 at P = 46), runs
``steps`` steps in a loop with the state as loop-carried values, masks each lane past its own budget
(a lane takes step t only while t < budget, exactly as the wide plan's masked chunk: its state is
kept bit for bit), and stores the state in as few blocks. Few memory operations matter on a GPU:
Triton's coalescing pass takes time quadratic in their number. On a CPU the kernel runs in Pallas's
interpret mode (XLA), which serves the tests; XLA would recompute shared intermediates of the
unrolled step inside every output fusion, so there the stages are separated by
``lax.optimization_barrier``. On a GPU it runs through Triton (``CompilerParams``); that path lowers
without a GPU (``lower(lowering_platforms=("cuda",))``) but its speed is UNMEASURED (the device
benchmark: benchmarks/fused.py). Compiled offline for sm_90a (Triton 3.9 from PyPI, ptxas -v; no
GPU; 128 lanes, 4 warps, one lane per thread): K=d=4 167 registers, no spills, 17 s; K=d=6 255
registers, 52 B spilled, 48 s; K=d=10 32 registers with a 9.4 KB stack (~40 KB of spill traffic per
step's code), 319 s — on a loaded 2-core CPU. A lane of K=d=10 (265 state values) does not fit the
255 registers of a thread: this kernel is for K·d <= ~36; K=d=10 needs fewer live values per thread
(intermediates staged through memory, or several threads per lane), which is not built.

Products are always full precision (float32 FMAs or float64); no reduced-precision path exists here.

The certificate: :func:`ncflow.maths.certificate.rounding_bound` bounds the rounding of the
EVALUATION of f (the check after each chunk, ``value_and_grad_norm`` of the state), for any
summation order of that evaluation; it assumes nothing about how the state was reached (the
certificate's theorem holds at any state θ_T whatever rounding produced it). The kernel changes only
the summation order of the steps, not the check, so the bound is unchanged and still covers the
certified runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from ncflow.maths.collapsed import Collapsed
from ncflow.problem import Problem

__all__ = ["COEFFICIENTS", "coefficients", "fused_chunk", "n_rows", "pack", "row_blocks", "supports", "unpack"]

#: the per-lane coefficient rows of :func:`fused_chunk`'s ``coefs`` (4, lanes), in this order
COEFFICIENTS = ("lr", "lambda_w", "lambda_h", "lambda_b")


def n_rows(K: int, d: int) -> int:
    """P, the state rows of one lane: W (K·d), M (d·K), G's upper triangle (d(d+1)/2), b (K)."""
    return 2 * K * d + d * (d + 1) // 2 + K


def supports(problem: Problem, dyn=None) -> bool:
    """Whether :func:`fused_chunk` runs this problem's step exactly: depth 1, one-hot balanced classes
    (no class sizes, no targets), loss "mse", any bias mode, and (if given) dynamics named
    "collapsed" (plain GD on the collapsed state: no momentum, no escape recorder)."""
    if dyn is not None and dyn.name != "collapsed":
        return False
    return (problem.depth == 1 and problem.loss == "mse" and problem.class_sizes is None
            and problem.targets is None and problem.row_basis is None and problem.dtype in ("float32", "float64"))


def _upper(d: int) -> list[tuple[int, int]]:
    """(p, j) with p <= j, row-major: the order of G's rows."""
    return [(p, j) for p in range(d) for j in range(p, d)]


def pack(x: Collapsed) -> Float[Array, "P lanes"]:
    """A lanes-major batched state (W (lanes, K, d), M (lanes, d, K), G (lanes, d, d), b (lanes, K))
    as the kernel's rows (P, lanes); G contributes its upper triangle."""
    L, K, d = x.W.shape
    p, j = np.triu_indices(d)
    return jnp.concatenate([x.W.reshape(L, K * d), x.M.reshape(L, d * K), x.G[:, p, j], x.b], axis=1).T


def unpack(rows: Float[Array, "P lanes"], K: int, d: int) -> Collapsed:
    """The kernel's rows (P, lanes) as a lanes-major batched :class:`Collapsed`, G mirrored from its
    upper triangle (exactly symmetric)."""
    a = rows.T
    L = a.shape[0]
    kd, ng = K * d, d * (d + 1) // 2
    p, j = np.triu_indices(d)
    g = a[:, 2 * kd:2 * kd + ng]
    G = jnp.zeros((L, d, d), a.dtype).at[:, p, j].set(g).at[:, j, p].set(g)
    return Collapsed(a[:, :kd].reshape(L, K, d), a[:, kd:2 * kd].reshape(L, d, K), G, a[:, 2 * kd + ng:])


def coefficients(problem: Problem, lr, lanes: int) -> Float[Array, "4 lanes"]:
    """The per-lane coefficient rows (4, lanes) (:data:`COEFFICIENTS`) of a problem whose λ's are
    scalars or (lanes,) arrays (a batch's problem) and a step size ``lr`` (scalar or (lanes,))."""
    vals = [lr, problem.lambda_w, problem.lambda_h, problem.lambda_b if problem.bias else 0.0]
    return jnp.stack([jnp.broadcast_to(jnp.asarray(v, problem.dtype), (lanes,)) for v in vals])


def row_blocks(P: int) -> list[tuple[int, int]]:
    """The (start, size) row blocks of a P-row state, sizes the powers of two of P's binary form,
    largest first (46 → (0, 32), (32, 8), (40, 4), (44, 2)): Triton's tensors have power-of-two
    sizes, and one load/store per block keeps the memory operations few."""
    out, start = [], 0
    for bit in reversed(range(P.bit_length())):
        size = 1 << bit
        if P & size:
            out.append((start, size))
            start += size
    return out


def _load_rows(ref, P: int) -> list:
    """Every row of a (P, BL) block ref as a (BL,) value, read in :func:`row_blocks` blocks."""
    rows = []
    for start, size in row_blocks(P):
        block = ref[start:start + size, :]
        rows += [r[0] for r in lax.split(block, (1,) * size, axis=0)] if size > 1 else [block[0]]
    return rows


def _join(rows: list):
    """(m, BL) from m (power of two) rows (BL,), by pairwise joins (the ops Triton lowers: a
    concatenate of two [..., 1] operands, a transpose, a reshape)."""
    if len(rows) == 1:
        return rows[0][None, :]
    h = len(rows) // 2
    top, bot = _join(rows[:h]), _join(rows[h:])
    pair = jnp.concatenate([top[..., None], bot[..., None]], axis=-1)  # (h, BL, 2)
    return jnp.transpose(pair, (2, 0, 1)).reshape(2 * h, top.shape[1])


def _store_rows(ref, rows: list) -> None:
    for start, size in row_blocks(len(rows)):
        ref[start:start + size, :] = _join(rows[start:start + size])


def _dot(pairs):
    """Σ u·v over the pairs, in order (lane vectors)."""
    acc = pairs[0][0] * pairs[0][1]
    for u, v in pairs[1:]:
        acc = acc + u * v
    return acc


def _sum(vs):
    """Σ v over the lane vectors, in order."""
    acc = vs[0]
    for v in vs[1:]:
        acc = acc + v
    return acc


def _constants(lr, lw, lh, lb, *, K: int, n: int) -> dict:
    """Per-lane constants of the step (lane vectors), computed once per chunk."""
    a = 1.0 - lr * lh
    s = lr / float(K * n)
    return dict(a=a, a2=a * a, s=s, sn=s * float(n), cx=-a * s, csw=0.5 * s * s, cw=1.0 - lr * lw,
                cb=1.0 - lr * lb, n=float(n))


def _step(rows: list, c: dict, *, K: int, d: int, bias: bool, barrier) -> list:
    """One GD step of one block of lanes: ``rows`` a list of P lane vectors (the layout of the module
    docstring), ``c`` :func:`_constants`; ``barrier`` an identity on a list of arrays between stages
    (``lax.optimization_barrier`` for XLA, or None)."""
    def staged(mat):  # a list of lists through the barrier, shape kept
        if barrier is None:
            return mat
        flat = list(barrier([v for row in mat for v in row]))
        out, o = [], 0
        for row in mat:
            out.append(flat[o:o + len(row)])
            o += len(row)
        return out

    kd = K * d
    up = _upper(d)
    gi = {pj: 2 * kd + i for i, pj in enumerate(up)}
    W = [[rows[k * d + j] for j in range(d)] for k in range(K)]
    M = [[rows[kd + p * K + q] for q in range(K)] for p in range(d)]
    G = [[rows[gi[(min(p, j), max(p, j))]] for j in range(d)] for p in range(d)]
    b = rows[2 * kd + len(up):]

    X = [[_dot([(W[k][p], G[p][m]) for p in range(d)]) for m in range(d)] for k in range(K)]
    R = [[_dot([(W[k][p], M[p][q]) for p in range(d)]) + b[k] - (1.0 if k == q else 0.0) for q in range(K)]
         for k in range(K)]
    XR = staged(X + R)
    X, R = XR[:K], XR[K:]
    S = [[None] * K for _ in range(K)]  # S = W G Wᵀ, symmetric: its upper triangle, mirrored
    for k in range(K):
        for q in range(k, K):
            S[k][q] = S[q][k] = _dot([(X[k][m], W[q][m]) for m in range(d)])
    S = staged(S)
    Z = staged([[c["cx"] * X[k][j] + c["csw"] * _dot([(S[k][q], W[q][j]) for q in range(K)]) for j in range(d)]
                for k in range(K)])
    Wn = [c["cw"] * W[k][j] - c["s"] * (c["n"] * _dot([(R[k][q], M[j][q]) for q in range(K)]) + X[k][j])
          for k in range(K) for j in range(d)]
    Mn = [c["a"] * M[p][q] - c["s"] * _dot([(W[k][p], R[k][q]) for k in range(K)]) for p in range(d) for q in range(K)]
    Gn = [c["a2"] * G[p][j] + _dot([(W[k][p], Z[k][j]) for k in range(K)])
          + _dot([(W[k][j], Z[k][p]) for k in range(K)]) for p, j in up]
    if bias:
        bn = [c["cb"] * b[k] - c["sn"] * _sum(R[k]) for k in range(K)]
    else:
        bn = list(b)
    return Wn + Mn + Gn + bn


def fused_chunk(rows: Float[Array, "P lanes"], coefs: Float[Array, "4 lanes"], budget: Int[Array, " lanes"], *,
                K: int, d: int, n: int, bias: bool = True, steps: int, block_lanes: int = 128,
                interpret: bool | None = None, num_warps: int = 4, num_stages: int = 1) -> Float[Array, "P lanes"]:
    """``steps`` masked GD steps of every lane in one kernel launch.

    Args:
        rows: the state (P, lanes), :func:`pack`'s layout (P = :func:`n_rows`).
        coefs: per-lane rows (4, lanes): step size, λ_W, λ_H, λ_b (:func:`coefficients`).
        budget: (lanes,) integers; lane i takes step t (0 <= t < steps) only while t < budget[i], and
            otherwise keeps its state exactly (budget 0: untouched; >= steps: every step).
        K, d, n: the problem's sizes (balanced, N = K n).
        bias: the problem has a bias (False: b is carried unchanged).
        steps: steps per call (static; the loop is not unrolled).
        block_lanes: lanes per program (a power of two: Triton's tensors); lanes are padded up to a
            multiple of it inside (a caller that keeps a multiple avoids the copy).
        interpret: Pallas's interpret mode (XLA); None = on a CPU backend. False means Triton.
        num_warps, num_stages: Triton's compiler parameters (GPU only).

    Returns:
        The state (P, lanes) after the chunk, in ``rows``' dtype.
    """
    from jax.experimental import pallas as pl

    P, L = rows.shape
    if P != n_rows(K, d):
        raise ValueError(f"rows must have n_rows(K={K}, d={d}) = {n_rows(K, d)} rows, got {P}")
    if block_lanes < 1 or block_lanes & (block_lanes - 1):
        raise ValueError(f"block_lanes must be a power of two, got {block_lanes}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    BL = block_lanes
    Lp = -(-L // BL) * BL
    budget = jnp.asarray(budget, jnp.int32).reshape(1, L)
    coefs = coefs.astype(rows.dtype)
    if Lp != L:  # padding lanes: budget 0 (never stepped), coefficients of the last lane (finite)
        rows = jnp.pad(rows, ((0, 0), (0, Lp - L)))
        coefs = jnp.pad(coefs, ((0, 0), (0, Lp - L)), mode="edge")
        budget = jnp.pad(budget, ((0, 0), (0, Lp - L)))
    # XLA (interpret mode): stage barriers keep it from recomputing shared intermediates per output
    barrier = lax.optimization_barrier if interpret else None

    def kernel(x_ref, c_ref, b_ref, o_ref):
        state = _load_rows(x_ref, P)
        c = _constants(*_load_rows(c_ref, 4), K=K, n=n)
        live_until = b_ref[0, :]

        def body(t, st):
            new = _step(st, c, K=K, d=d, bias=bias, barrier=barrier)
            live = t < live_until
            return [jnp.where(live, u, v) for u, v in zip(new, st)]

        lo, hi = jnp.int32(0), jnp.int32(steps)  # a 32-bit step counter, also under jax_enable_x64
        if interpret:  # XLA's while loop carries one (P, BL) array better than P arrays
            state = list(lax.fori_loop(lo, hi, lambda t, a: jnp.stack(body(t, list(a))), jnp.stack(state)))
        else:  # Triton: the rows are the loop-carried values (registers)
            state = lax.fori_loop(lo, hi, body, state)
        _store_rows(o_ref, state)

    spec = lambda h: pl.BlockSpec((h, BL), lambda i: (0, i))  # noqa: E731
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    out = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((P, Lp), rows.dtype), grid=(Lp // BL,),
                         in_specs=[spec(P), spec(4), spec(1)], out_specs=spec(P), compiler_params=params,
                         interpret=interpret, name=f"ncflow_fused_K{K}_d{d}")(rows, coefs, budget)
    return out[:, :L] if Lp != L else out
