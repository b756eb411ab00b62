"""Small statistics helpers for reporting success rates over runs (plain numpy, not jitted)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile


def wilson_interval(
    count: ArrayLike, total: ArrayLike, z: float = Z95
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion ``count / total``.

    With ``n = total``: ``low, high = center ∓ half`` where
    ``center = (count + z²/2) / (n + z²)`` and ``half = z·sqrt(count·(n−count)/n + z²/4) / (n + z²)``
    (the usual ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`` multiplied through by n),
    clipped to ``[0, 1]``; exactly ``low = 0`` when ``count == 0`` and ``high = 1`` when
    ``count == total``. ``total == 0`` gives the uninformative ``(0.0, 1.0)``.

    Args:
        count: successes, scalar or array ``(...)`` (broadcast against ``total``).
        total: trials, scalar or array ``(...)``; ``0 <= count <= total`` required.
        z: standard normal quantile (default: 95% two-sided).

    Returns:
        ``(low, high)`` as Python floats for scalar inputs, else float64 arrays of the broadcast
        shape.

    Raises:
        ValueError: if ``count < 0``, ``count > total`` or ``z < 0`` anywhere.
    """
    c = np.asarray(count, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    scalar = c.ndim == 0 and n.ndim == 0
    c, n = np.broadcast_arrays(c, n)
    if np.any(c < 0) or np.any(c > n) or z < 0:
        raise ValueError(
            f"need 0 <= count <= total and z >= 0 (count={count}, total={total}, z={z})"
        )
    z2 = z * z
    empty = n == 0
    n_safe = np.where(empty, 1.0, n)
    denom = n_safe + z2
    center = (c + 0.5 * z2) / denom
    half = z * np.sqrt(c * (n_safe - c) / n_safe + 0.25 * z2) / denom
    low = np.clip(center - half, 0.0, 1.0)
    high = np.clip(center + half, 0.0, 1.0)
    low = np.where((c == 0) | empty, 0.0, low)
    high = np.where((c == n) | empty, 1.0, high)
    if scalar:
        return float(low), float(high)
    return low, high
