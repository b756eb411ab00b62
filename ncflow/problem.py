"""The UFM problem definition: sizes, regularization, bias mode, loss and dtype.

A :class:`Problem` is a frozen pytree. Its sizes, bias flag, loss and dtype are static
(they fix array shapes and the compiled program); its coefficients (λ_W, λ_H, λ_b, α, M)
are leaves, so a batch of problems that differ only in coefficients can be vmapped in one
compiled program. Validation runs once, when a user builds a problem.
"""

from __future__ import annotations

import math

import equinox as eqx
import numpy as np

from ncflow.errors import ProblemError
from ncflow.settings import DTYPES, INT32_MAX, LOSSES, PROBLEM, SETTINGS, check_applies

BIAS_MODES = ("unregularized", "regularized", "none")

__all__ = ["BIAS_MODES", "DTYPES", "LOSSES", "Problem", "ProblemError"]

#: coefficients that apply only under some other setting (alpha, target_scale: rescaled-mse)
_CONDITIONAL = tuple(k for k in PROBLEM if SETTINGS[k].applies is not None)


def _default(name: str, static: bool = False):
    d = SETTINGS[name].field_default
    return eqx.field(static=True, default=d) if static else d


class Problem(eqx.Module):
    """One UFM problem (THEORY.md §1). Defaults, ranges and help: :mod:`ncflow.settings`.

    Attributes:
        K: number of classes, in [2, 2^20 = 1048576] (default 10; the engine refuses what does not fit).
        d: feature dimension, in [1, 65536] (default 10).
        n: samples per class, in [1, 2^24] with N = n K < 2^31 (default 100; N columns of H,
            class-major).
        lambda_w, lambda_h: weight decay on W and H, finite and >= 0 (default 5e-4).
        lambda_b: weight decay on the bias, finite and >= 0 (0 = unregularized bias); must be 0
            when ``bias`` is False.
        bias: whether the model has a bias b (False = bias-free, case B).
        loss: "mse" or "rescaled-mse" (per-sample α(z_y − M)² + Σ_{j≠y} z_j²).
        alpha, target_scale: α > 0 and M > 0 of the rescaled MSE; with loss "mse" they must keep
            their default 1 (a value given where it does not apply is refused).
        dtype: "float32" (default: needs no ``jax_enable_x64``) or "float64".

    Coefficient fields may also hold arrays of shape (runs,) when a batch of problems is
    vmapped; sizes, flags and dtype are static and shared by the whole batch. Python and numpy
    scalars are stored as Python ints/floats (``Problem(K=np.uint8(200))`` has K = 200).
    """

    K: int = _default("K", static=True)
    d: int = _default("d", static=True)
    n: int = _default("n", static=True)
    lambda_w: float = _default("lambda_w")
    lambda_h: float = _default("lambda_h")
    lambda_b: float = _default("lambda_b")
    bias: bool = _default("bias", static=True)
    loss: str = _default("loss", static=True)
    alpha: float = _default("alpha")
    target_scale: float = _default("target_scale")
    dtype: str = _default("dtype", static=True)

    def __post_init__(self):
        for name in PROBLEM:  # each field by the table (arrays of coefficients stay arrays)
            setattr(self, name, SETTINGS[name].check(getattr(self, name)))

    def __check_init__(self):
        if self.n * self.K > INT32_MAX:
            raise ProblemError(f"n must be at most {INT32_MAX // self.K} for K = {self.K} (N = n K must stay "
                               f"below 2^31), got {self.n}", field="n")
        if not self.bias and np.any(np.asarray(self.lambda_b) != 0):
            raise ProblemError("lambda_b must be 0 when bias=False (there is no bias to regularize)",
                               field="lambda_b")
        given = [k for k in _CONDITIONAL if np.any(np.asarray(getattr(self, k)) != SETTINGS[k].default)]
        check_applies({"loss": self.loss, "bias": self.bias}, given)

    # ----------------------------------------------------------------- derived values
    @property
    def N(self) -> int:
        """Total number of samples, n K."""
        return self.n * self.K

    @property
    def bias_mode(self) -> str:
        """"none" (case B), "unregularized" (λ_b = 0, case A) or "regularized" (case C)."""
        if not self.bias:
            return "none"
        return "unregularized" if float(np.max(np.asarray(self.lambda_b))) == 0.0 else "regularized"

    @property
    def c(self) -> float:
        """The constant c = K sqrt(n λ_W λ_H) that governs the landscape (THEORY.md §1)."""
        lw, lh = float(self.lambda_w), float(self.lambda_h)
        prod = self.n * lw * lh
        if lw > 0 and lh > 0 and prod < 2.2250738585072014e-308:  # the product underflows: factor by factor
            return self.K * math.sqrt(self.n) * math.sqrt(lw) * math.sqrt(lh)
        return self.K * math.sqrt(prod)

    @property
    def jnp_dtype(self):
        """The numpy dtype object of this problem's arrays."""
        return np.dtype(self.dtype)

    def describe(self) -> dict:
        """A JSON-ready dict of the problem's fields (scalar coefficients only)."""
        return {
            "K": self.K, "d": self.d, "n": self.n,
            "lambda_w": float(self.lambda_w), "lambda_h": float(self.lambda_h),
            "lambda_b": float(self.lambda_b), "bias": self.bias_mode, "loss": self.loss,
            "alpha": float(self.alpha), "target_scale": float(self.target_scale),
            "dtype": self.dtype,
        }
