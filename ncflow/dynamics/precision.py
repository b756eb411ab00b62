"""Matrix products of ONE run's step: precision explicit everywhere, reduced only on request.

JAX's default precision for float32 matrix products is platform-dependent: TF32 (10 mantissa bits
in the products' inputs) on NVIDIA GPUs since Ampere, one bfloat16 pass (7 bits) on TPUs, full
float32 on CPUs. ncflow never relies on that default: every program is traced under an explicit
precision — full float32 ("float32", the default) unless the user opts in to "tf32" or "bf16" for
the steps (``Config.matmul_precision``).

On a CPU, which has no reduced-precision products, the opt-in is *emulated*: :func:`emulated`
re-evaluates a function's jaxpr with the float32 operands of every ``dot_general`` rounded to the
precision's mantissa width (round to nearest even), which is what TF32/bf16 products do to their
inputs (the products and sums then run in float32, as they do on the accelerators). This lets a
CPU test show what the stop rule does with reduced-precision steps.

The same jaxpr interpreter serves :func:`elementwise_products`: at full precision on a CPU, a step
whose matrix products are all small computes them as broadcast multiplies and sums, which XLA's CPU
backend fuses into vectorized loops instead of batched dots with a per-matrix overhead
(:func:`step_fn` decides, per platform and precision).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

__all__ = ["ELEMENTWISE_LIMIT", "PRECISIONS", "Precision", "elementwise_products", "emulated", "full_context",
           "round_mantissa", "step_context", "step_fn"]


class Precision(NamedTuple):
    """One matrix-product precision.

    Attributes:
        name: "float32", "tf32" or "bf16" (the values of ``Config.matmul_precision``).
        jax_name: what ``jax.default_matmul_precision`` is given on an accelerator: "highest", or the
            dot-algorithm preset whose inputs have the precision's width.
        mantissa_bits: explicit mantissa bits of the products' inputs (float32: 23).
    """

    name: str
    jax_name: str
    mantissa_bits: int

    @property
    def reduced(self) -> bool:
        """Whether the products' inputs are rounded below float32."""
        return self.mantissa_bits < 23


PRECISIONS = {
    "float32": Precision("float32", "highest", 23),
    "tf32": Precision("tf32", "TF32_TF32_F32", 10),
    "bf16": Precision("bf16", "BF16_BF16_F32", 7),
}


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
    """``x`` (float32, any shape) rounded to ``bits`` explicit mantissa bits, to nearest even.
    Other dtypes are returned unchanged. Infinities stay infinite."""
    if x.dtype != jnp.float32 or bits >= 23:
        return x
    shift = 23 - bits
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    lsb = (u >> shift) & 1
    half = np.uint32((1 << (shift - 1)) - 1)
    u = (u + half + lsb) & np.uint32(~((1 << shift) - 1) & 0xFFFFFFFF)
    r = jax.lax.bitcast_convert_type(u, jnp.float32)
    return jnp.where(jnp.isfinite(x), r, x)


def _eval(jaxpr, consts, args, dot: Callable):
    """Evaluate ``jaxpr`` with every ``dot_general`` computed by ``dot(eqn, ins)`` (nested ``jit``
    calls are entered). Other primitives with sub-jaxprs (control flow, custom derivatives) raise
    NotImplementedError."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "dot_general":
            outs = dot(eqn, ins)
        elif name in ("jit", "pjit"):
            inner = eqn.params["jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, ins, dot)
        elif _has_subjaxpr(eqn):
            raise NotImplementedError(f"the matrix-product rewrite of a step does not handle {name!r}")
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _has_subjaxpr(eqn) -> bool:
    return any(isinstance(p, (jex.Jaxpr, jex.ClosedJaxpr)) for p in eqn.params.values())


def _run(closed, shape, args, dot: Callable):
    """Evaluate the traced ``closed`` jaxpr of a function (output pytree ``shape``) on ``args``
    with :func:`_eval`."""
    out = _eval(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), dot)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out)


def emulated(fn: Callable, bits: int) -> Callable:
    """``fn`` with the float32 inputs of every matrix product rounded to ``bits`` mantissa bits
    (see the module doc). ``fn`` takes and returns pytrees of arrays; it may contain nested ``jit``
    calls but no control flow (a step does not). Traceable (use it inside vmap/jit)."""
    def dot(eqn, ins):
        return eqn.primitive.bind(*[round_mantissa(a, bits) for a in ins], **eqn.params)

    def wrapped(*args):
        return _run(*jax.make_jaxpr(fn, return_shape=True)(*args), args, dot)
    return wrapped


#: :func:`elementwise_products` rewrites a step's products only if each of them takes at most this
#: many multiplications (free lhs size x contracted size x free rhs size, for ONE run)
ELEMENTWISE_LIMIT = 6000


def elementwise_products(fn: Callable, limit: int | None = None) -> Callable:
    """``fn`` with its matrix products computed as a broadcast multiply and a sum over the
    contracted axis instead of ``dot_general`` — all of them or none: only if every product of
    ``fn`` is small (floating point, one contracted axis, no batch axes, operands of rank ≤ 2, at
    most ``limit`` multiplications; None: :data:`ELEMENTWISE_LIMIT` when ``fn`` is traced) and ``fn``
    has no control flow; otherwise ``fn`` is unchanged.

    The same numbers to rounding (the sum's order may differ). Why: vmapped over lanes on a CPU,
    XLA turns a tiny product (e.g. 10×10 by 10×20) into a batched dot whose per-matrix overhead
    dominates, while the broadcast form fuses into vectorized loops with the step's elementwise
    work. Measured on a 2-core CPU (collapsed GD steps, 512 lanes; benchmarks/README): 1.1–1.3×
    faster up to K=10, d=16 and 4.6× at K=d=4; slower (0.85–0.92×) for products of 8,000+, and
    slower when only some products are rewritten — hence all or none. Traceable, like
    :func:`emulated`.
    """
    def dot(eqn, ins):
        lhs, rhs = ins
        (lc, rc), _ = eqn.params["dimension_numbers"]
        out = eqn.outvars[0].aval.dtype  # operands of mixed widths are multiplied in the result's
        a = jnp.moveaxis(lhs.astype(out), lc[0], -1)  # (free lhs..., c)
        b = jnp.moveaxis(rhs.astype(out), rc[0], 0)  # (c, free rhs...)
        a = a.reshape(a.shape + (1,) * (b.ndim - 1))  # (free lhs..., c, 1...)
        return jnp.sum(a * b, axis=a.ndim - b.ndim)  # (free lhs..., free rhs...): dot_general's order

    def wrapped(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        most = ELEMENTWISE_LIMIT if limit is None else limit
        eqns = list(_eqns(closed.jaxpr))
        if any(_has_subjaxpr(e) for e in eqns) or not all(_small(e, most) for e in eqns
                                                         if e.primitive.name == "dot_general"):
            return fn(*args)
        return _run(closed, shape, args, dot)
    return wrapped


def _eqns(jaxpr):
    """The equations of ``jaxpr``, those of nested ``jit`` calls in their place (not the calls)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("jit", "pjit"):
            yield from _eqns(eqn.params["jaxpr"].jaxpr)
        else:
            yield eqn


def _small(eqn, limit: int) -> bool:
    """Whether :func:`elementwise_products` may rewrite this ``dot_general``: floating operands of
    rank ≤ 2 no wider than the result, one contracted axis, no batch axes, at most ``limit``
    multiplications."""
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval.dtype
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    return (len(lc) == 1 and not lb and not rb and lhs.ndim <= 2 and rhs.ndim <= 2
            and all(jnp.issubdtype(t, jnp.floating) and t.itemsize <= out.itemsize
                    for t in (lhs.dtype, rhs.dtype, out))
            and lhs.size * rhs.size // max(lhs.shape[lc[0]], 1) <= limit)


def step_context(precision: Precision, platform: str):
    """The context to trace a program's STEPS in: ``jax.default_matmul_precision`` of
    ``precision`` on an accelerator; on a CPU full precision ("highest": CPUs have no other, and
    reduced precision is emulated by :func:`emulated` instead)."""
    if platform == "cpu" or not precision.reduced:
        return jax.default_matmul_precision("highest")
    return jax.default_matmul_precision(precision.jax_name)


def full_context():
    """The context to trace everything that is not a step in (checks, metrics, Hessian probes):
    full float32 precision on every platform."""
    return jax.default_matmul_precision("highest")


def step_fn(step: Callable, precision: Precision, platform: str) -> Callable:
    """The one-run ``step`` as the programs call it: on a CPU emulated when ``precision`` is
    reduced, else with its small products elementwise (:func:`elementwise_products`); ``step``
    itself on an accelerator (its precision comes from :func:`step_context`)."""
    if platform == "cpu":
        return emulated(step, precision.mantissa_bits) if precision.reduced else elementwise_products(step)
    return step
