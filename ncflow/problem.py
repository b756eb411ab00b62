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

BIAS_MODES = ("unregularized", "regularized", "none")
LOSSES = ("mse", "rescaled-mse")
DTYPES = ("float32", "float64")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProblemError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ProblemError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_nonneg(name: str, value, positive: bool = False) -> None:
    msg = f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProblemError(msg) from None
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0 if positive else arr < 0):
        raise ProblemError(msg)


class Problem(eqx.Module):
    """One UFM problem (THEORY.md §1).

    Attributes:
        K: number of classes, >= 2.
        d: feature dimension, >= 1.
        n: samples per class, >= 1 (N = n K columns of H, class-major).
        lambda_w, lambda_h: weight decay on W and H, finite and >= 0.
        lambda_b: weight decay on the bias, finite and >= 0 (0 = unregularized bias).
        bias: whether the model has a bias b (False = bias-free, case B).
        loss: "mse" or "rescaled-mse" (per-sample α(z_y − M)² + Σ_{j≠y} z_j²).
        alpha, target_scale: α > 0 and M > 0 of the rescaled MSE (ignored for "mse").
        dtype: "float32" or "float64".

    Coefficient fields may also hold arrays of shape (runs,) when a batch of problems is
    vmapped; sizes, flags and dtype are static and shared by the whole batch.
    """

    K: int = eqx.field(static=True)
    d: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    lambda_w: float = 5e-4
    lambda_h: float = 5e-4
    lambda_b: float = 0.0
    bias: bool = eqx.field(static=True, default=True)
    loss: str = eqx.field(static=True, default="mse")
    alpha: float = 1.0
    target_scale: float = 1.0
    dtype: str = eqx.field(static=True, default="float64")

    def __check_init__(self):
        _check_int("K", self.K, 2)
        _check_int("d", self.d, 1)
        _check_int("n", self.n, 1)
        _check_nonneg("lambda_w", self.lambda_w)
        _check_nonneg("lambda_h", self.lambda_h)
        _check_nonneg("lambda_b", self.lambda_b)
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ProblemError(f"bias must be True or False, got {self.bias!r}")
        if not self.bias and np.any(np.asarray(self.lambda_b) != 0):
            raise ProblemError("lambda_b must be 0 when bias=False (there is no bias to regularize)")
        if self.loss not in LOSSES:
            raise ProblemError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        _check_nonneg("alpha", self.alpha, positive=True)
        _check_nonneg("target_scale", self.target_scale, positive=True)
        if self.dtype not in DTYPES:
            raise ProblemError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

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
        return self.K * math.sqrt(self.n * float(self.lambda_w) * float(self.lambda_h))

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
