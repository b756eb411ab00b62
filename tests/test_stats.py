"""Wilson score interval: hard literals and an independent quadratic-root form."""

import math

import numpy as np
import pytest

from ncflow.stats import wilson_interval

Z = 1.959963984540054


def _wilson_by_quadratic(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Roots p of (p̂ − p)² = z² p(1 − p)/n, i.e. (1 + z²/n) p² − (2p̂ + z²/n) p + p̂² = 0."""
    ph = k / n
    a = 1.0 + z * z / n
    b = -(2.0 * ph + z * z / n)
    c = ph * ph
    disc = math.sqrt(max(b * b - 4.0 * a * c, 0.0))
    return (-b - disc) / (2.0 * a), (-b + disc) / (2.0 * a)


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        # 0/10: high = z²/(n+z²) = 3.8414588/13.8414588.
        (0, 10, 0.0, 0.2775327998628892),
        (10, 10, 0.7224672001371109, 1.0),
        # 5/10: 0.5 ± z·sqrt(2.5 + z²/4)/(10 + z²) = 0.5 ± 0.2634069...
        (5, 10, 0.2365930905125640, 0.7634069094874361),
    ],
)
def test_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo == pytest.approx(low, abs=1e-12)
    assert hi == pytest.approx(high, abs=1e-12)


def test_matches_quadratic_form():
    for n in [1, 2, 7, 10, 33, 100, 1000]:
        for k in range(0, n + 1, max(1, n // 9)):
            lo, hi = wilson_interval(k, n)
            rlo, rhi = _wilson_by_quadratic(k, n)
            assert lo == pytest.approx(rlo, abs=1e-12)
            assert hi == pytest.approx(rhi, abs=1e-12)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_empty_and_vectorized():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(np.array([0, 5, 10, 0]), np.array([10, 10, 10, 0]))
    assert lo.shape == (4,) and hi.shape == (4,)
    np.testing.assert_allclose(lo, [0.0, 0.2365930905125640, 0.7224672001371109, 0.0], atol=1e-12)
    np.testing.assert_allclose(hi, [0.2775327998628892, 0.7634069094874361, 1.0, 1.0], atol=1e-12)
    # z changes the width monotonically.
    assert wilson_interval(3, 10, z=1.0)[1] < wilson_interval(3, 10)[1]


def test_invalid():
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)
