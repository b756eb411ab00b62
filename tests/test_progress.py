"""Progress bar: output when enabled, silence on a non-TTY by default, redraw throttling."""

import io

from ncflow.progress import Progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_enabled_writes_counts():
    out = io.StringIO()
    clock = _Clock()
    with Progress(10, desc="runs", enabled=True, stream=out, clock=clock) as bar:
        clock.t = 1.0
        bar.update(3, extra="loss 0.5")
        clock.t = 2.0
        bar.update(10)
    text = out.getvalue()
    assert text.startswith("\r")
    assert "runs:" in text and "3/10" in text and "loss 0.5" in text
    assert "10/10" in text and "100.0%" in text and " 30.0%" in text
    assert "3.00 it/s" in text  # 3 units in 1 s
    assert text.endswith("\n") and text.count("\n") == 1


def test_throttled_redraw():
    out = io.StringIO()
    clock = _Clock()
    bar = Progress(100, enabled=True, stream=out, clock=clock)
    bar.update(1)
    clock.t = 0.05
    bar.update(2)  # within 0.1 s: not drawn
    assert "2/100" not in out.getvalue() and "1/100" in out.getvalue()
    clock.t = 0.2
    bar.update(3)
    assert "3/100" in out.getvalue()
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().count("\n") == 1


def test_disabled_on_non_tty_writes_nothing():
    out = io.StringIO()  # isatty() is False
    with Progress(5, desc="x", stream=out) as bar:
        assert not bar.enabled
        for i in range(5):
            bar.update(i + 1)
    assert out.getvalue() == ""
    out2 = io.StringIO()
    with Progress(5, enabled=False, stream=out2) as bar:
        bar.update(5)
    assert out2.getvalue() == ""


def test_enabled_on_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Progress(2, stream=out) as bar:
        bar.update(2)
    assert "2/2" in out.getvalue()


def test_zero_total():
    out = io.StringIO()
    with Progress(0, enabled=True, stream=out):
        pass
    assert "0/0" in out.getvalue() and "100.0%" in out.getvalue()
