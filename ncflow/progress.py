"""A dependency-free single-line terminal progress bar.

    with Progress(total=len(chunks), desc="sweep") as bar:
        for i, chunk in enumerate(chunks):
            ...
            bar.update(i + 1, extra=f"loss {loss:.3g}")

Draws ``desc:  42.0% |########            | 42/100 [00:12<00:16, 3.50 it/s] extra`` with a
carriage return (counts of a million or more compact: ``1.2M/30M``; the unit ``it`` is
``unit``), redrawing at most every 0.1 s (the final state is always drawn). Enabled by
default only when the stream is a TTY; when disabled nothing at all is written.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

MIN_INTERVAL_S = 0.1
_BAR_WIDTH = 20


def _fmt_time(seconds: float) -> str:
    """``MM:SS`` or ``H:MM:SS``; ``--:--`` if unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_count(n: int) -> str:
    """``42``, ``999999``, ``1.2M``, ``3G``: exact below a million, 2 significant digits above."""
    if n < 1_000_000:
        return str(n)
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.2g}{unit}"
    return str(n)  # pragma: no cover


def _fmt_rate(rate: float) -> str:
    return f"{rate:.2f}" if rate < 1e5 else f"{rate:.3g}"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Single-line progress bar on ``stream``; a context manager (``close`` on exit).

    Args:
        total: number of work units (``>= 0``).
        desc: label printed before the bar.
        enabled: ``None`` (default) enables it only if ``stream.isatty()``.
        stream: text stream; ``None`` (default) means ``sys.stderr`` at construction time.
        clock: monotonic time source in seconds (for tests).
        unit: the name of a work unit in the rate (``it/s``, ``run-steps/s``).
        eta_bound: the ETA is an upper bound (shown as ``<=MM:SS``), e.g. when finished runs
            count as their whole step budget.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        enabled: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "it",
        eta_bound: bool = False,
    ) -> None:
        self.unit = unit
        self.eta_bound = eta_bound
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _isatty(self.stream) if enabled is None else bool(enabled)
        self._clock = clock
        self._start = clock()
        self._last_draw = -math.inf
        self._last_len = 0
        self._closed = False
        self.done = 0
        self.extra = ""

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, extra: str = "") -> None:
        """Set the absolute progress to ``done`` units (clipped to ``[0, total]``) and the trailing
        text ``extra``; redraws if 0.1 s passed since the last draw or the work is complete."""
        self.done = min(max(int(done), 0), self.total) if self.total else max(int(done), 0)
        self.extra = extra
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if now - self._last_draw >= MIN_INTERVAL_S or self.done >= self.total:
            self._draw(now)

    def advance(self, n: int = 1, extra: str = "") -> None:
        """``update(done + n, extra)``."""
        self.update(self.done + n, extra)

    def line(self, now: float | None = None) -> str:
        """The bar text (without carriage return) for the current state at time ``now``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 0.0)
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * _BAR_WIDTH))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else (0.0 if frac >= 1 else math.inf)
        head = f"{self.desc}: " if self.desc else ""
        bound = "<=" if self.eta_bound and frac < 1 else ""
        text = (
            f"{head}{100.0 * frac:5.1f}% |{'#' * filled}{' ' * (_BAR_WIDTH - filled)}| "
            f"{_fmt_count(self.done)}/{_fmt_count(self.total)} [{_fmt_time(elapsed)}<{bound}{_fmt_time(eta)}, "
            f"{_fmt_rate(rate)} {self.unit}/s]"
        )
        return f"{text} {self.extra}" if self.extra else text

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = " " * max(self._last_len - len(text), 0)  # erase leftovers of a longer line
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._last_len = len(text)
        self._last_draw = now

    def close(self) -> None:
        """Draw the final state and end the line (only if enabled). Idempotent."""
        if self._closed:
            return
        if self.enabled:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True
