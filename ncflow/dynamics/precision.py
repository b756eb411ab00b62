"""Matrix-product precision of ONE run's step: explicit everywhere, reduced only on request.

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
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

__all__ = ["PRECISIONS", "Precision", "emulated", "full_context", "round_mantissa", "step_context", "step_fn"]


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


def _eval(jaxpr, consts, args, bits: int):
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
            outs = eqn.primitive.bind(*[round_mantissa(a, bits) for a in ins], **eqn.params)
        elif name in ("jit", "pjit"):
            inner = eqn.params["jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, ins, bits)
        elif any(isinstance(p, (jex.Jaxpr, jex.ClosedJaxpr)) for p in eqn.params.values()):
            raise NotImplementedError(f"matmul-precision emulation does not handle {name!r} in a step")
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def emulated(fn: Callable, bits: int) -> Callable:
    """``fn`` with the float32 inputs of every matrix product rounded to ``bits`` mantissa bits
    (see the module doc). ``fn`` takes and returns pytrees of arrays; it may contain nested ``jit``
    calls but no control flow (a step does not). Traceable (use it inside vmap/jit)."""
    def wrapped(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree_util.tree_leaves(args)
        out = _eval(closed.jaxpr, closed.consts, flat, bits)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out)
    return wrapped


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
    """The one-run ``step`` as the programs call it: emulated on a CPU when ``precision`` is
    reduced, else ``step`` itself (the accelerators' precision comes from :func:`step_context`)."""
    if platform == "cpu" and precision.reduced:
        return emulated(step, precision.mantissa_bits)
    return step

