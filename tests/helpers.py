"""Helpers shared by the test files: ONE tree comparison, a relative difference, a compile
counter, the deep UFM's objective written out plainly, and the in-process / subprocess ways of
running the ``ncflow`` command.

Test files import them as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``:
the directory has no ``__init__.py``). This module imports nothing of ncflow at import time, so
``conftest.py`` can use it before any test decides what to load.

Tolerances of :func:`assert_trees_close` (``|actual - expected| <= atol + rtol * |expected|``
elementwise, leaf by leaf):

=========  ==========  ==========  ==========================================================
dtype      rtol        atol        why
=========  ==========  ==========  ==========================================================
float64    ``1e-12``   ``1e-14``   exactness tests: a few thousand ulps (2.2e-16) of O(1) values
float32    ``1e-5``    ``1e-6``    ~100 ulps (1.2e-7): float32 is tested for agreement, not bits
exact      ``0``       ``0``       bitwise equal (``EXACT``), e.g. a step with lr = 0
=========  ==========  ==========  ==========================================================

The default is float32's when any floating leaf of either tree is float32 (or narrower), else
float64's; a test that needs another tolerance passes ``rtol``/``atol`` and says why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import chex
import jax
import numpy as np

#: the repository root (the folder holding ``pyproject.toml``, ``ncflow/`` and ``tests/``)
REPO = Path(__file__).resolve().parents[1]

F64_TOL = {"rtol": 1e-12, "atol": 1e-14}
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}
EXACT = {"rtol": 0.0, "atol": 0.0}


# ----------------------------------------------------------------------------- comparisons
def _narrowest_float_bits(*trees) -> int:
    bits = [np.finfo(np.asarray(leaf).dtype).bits for tree in trees for leaf in jax.tree_util.tree_leaves(tree)
            if np.issubdtype(np.asarray(leaf).dtype, np.floating)]
    return min(bits, default=64)


def assert_trees_close(actual, expected, *, rtol: float | None = None, atol: float | None = None) -> None:
    """Assert that two pytrees have the same structure and elementwise-close leaves.

    ``actual`` and ``expected`` are pytrees (``Params``, a state, a tuple of arrays, one array)
    with leaves of any broadcast-compatible shapes; every leaf must satisfy
    ``|actual - expected| <= atol + rtol * |expected|`` (``chex.assert_trees_all_close``, so a
    NaN matches only a NaN in the same place). ``rtol``/``atol`` default to the module table:
    float32's if any floating leaf is float32 or narrower, else float64's. ``**EXACT`` asks for
    bitwise equality.
    """
    default = F32_TOL if _narrowest_float_bits(actual, expected) <= 32 else F64_TOL
    rtol = default["rtol"] if rtol is None else rtol
    atol = default["atol"] if atol is None else atol
    chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


def rel_diff(a, b) -> np.ndarray:
    """Elementwise ``|a - b| / |b|`` in float64 (``b`` floored at 1e-300); same shape as the
    broadcast of ``a`` and ``b`` (a 0-d array for scalars)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


# ----------------------------------------------------------------------------- the deep UFM, plainly
def plain_deep_objective(spec, co, p):
    """The deep UFM objective (THEORY §9.1 linear, §9.6 ReLU with ReLU'(0) = 0) written out layer by
    layer, independently of ``ncflow.maths.deep_objective`` (for ``jax.grad`` and as a reference value).

    ``spec`` a ``DeepSpec`` (K, sizes, activation, bias), ``co`` its ``DeepCoeffs`` (lambdas (L,),
    lambda_h, lambda_b), ``p`` a ``DeepParams`` (Ws: W_l (d_l, d_{l−1}), H (d_0, N), b (K,));
    labels class-major. Returns f, shape ()."""
    import jax.numpy as jnp

    Ws, H, b = p
    A = H
    for W in Ws[:-1]:
        A = W @ A
        if spec.activation == "relu":
            A = jnp.where(A > 0, A, 0.0)
    out = Ws[-1] @ A
    if spec.bias != "none":
        out = out + b[:, None]
    Y = np.eye(spec.K)[:, np.repeat(np.arange(spec.K), spec.sizes)]
    f = jnp.sum((out - Y) ** 2) / (2 * sum(spec.sizes)) + co.lambda_h / 2 * jnp.sum(H**2)
    f = f + sum(co.lambdas[i] / 2 * jnp.sum(W**2) for i, W in enumerate(Ws))
    if spec.bias != "none":
        f = f + co.lambda_b / 2 * jnp.sum(b**2)
    return f


# ----------------------------------------------------------------------------- compilations
#: the jax.monitoring event recorded once per XLA backend compilation (jax/_src/dispatch.py,
#: recorded around ``compiler.compile_or_get_cached`` in jax/_src/interpreters/pxla.py)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compilations (programs built for a backend) inside ``with`` blocks.

    ::

        with CompileCounter() as c:      # or the ``compile_counter`` fixture of conftest.py
            f(x)
        assert c.count == 0, c.names     # nothing was compiled

    Every ``with`` starts again from zero. ``names`` lists the compiled functions in order
    (``jit(f)``...); ``count == len(names)``. An eager jnp operation on a new shape or dtype
    compiles too, and so does a program found in JAX's persistent compilation cache (it still
    goes through the backend-compile step), so ``count == 0`` means no program was built at all.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    @property
    def count(self) -> int:
        """How many programs were compiled inside the last (or current) ``with`` block."""
        return len(self.names)

    def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> CompileCounter:
        self.names = []
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


# ----------------------------------------------------------------------------- the command line
def cli_exit_code(argv) -> int:
    """``ncflow.cli.app.main(argv)``'s exit status, whether it returns or raises SystemExit
    (argparse errors), in this process."""
    from ncflow.cli.app import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``ncflow`` with ``argv``, in this process
    (``capsys`` is pytest's fixture: what the test printed before the call is included)."""
    code = cli_exit_code(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_json_object(text: str) -> dict:
    """The single JSON object that is all of ``text`` (surrounding whitespace allowed)."""
    obj, end = json.JSONDecoder().raw_decode(text.strip())
    assert text.strip()[end:].strip() == "", "more than one JSON object / extra output on stdout"
    assert isinstance(obj, dict)
    return obj


def ncflow_command(*argv: str) -> list[str]:
    """The argv that runs ``ncflow ARGV...`` in a fresh interpreter: ``python -m ncflow.cli ...``."""
    return [sys.executable, "-m", "ncflow.cli", *map(str, argv)]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH`` (so a child
    interpreter imports this checkout's ncflow), plus ``extra``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
