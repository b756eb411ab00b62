"""The ``ncflow`` command line: a thin shell over the Python API.

:mod:`.app` builds the parser and runs ``ncflow theory``; :mod:`.common` holds what the sub-commands
share; :mod:`.run` and :mod:`.sweep` are sub-commands."""


import os
import signal
import sys


def _interrupt_anywhere(previous):
    """An unraisable-exception hook that ends the command on a Ctrl-C which arrived inside a
    callback (e.g. JAX's garbage-collection hook during start-up), where Python would only print
    "Exception ignored ... KeyboardInterrupt" and carry on. Ending at once is safe: a claim or a
    staging directory of a dead process is taken over or removed by the next run."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            sys.stderr.write("ncflow: interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        previous(unraisable)
    return hook


def _exit_now(signum, frame):
    """Ctrl-C: one line and status 130 at once, wherever the command is (imports and JAX's
    start-up included, where a KeyboardInterrupt raised inside native code could crash the
    interpreter). Safe: files are written atomically, a claim or staging directory of a dead
    process is taken over or removed by the next run."""
    sys.stderr.write("ncflow: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main(argv=None) -> int:
    """Entry point of the ``ncflow`` command (see :func:`ncflow.cli.app.main`).

    Ctrl-C at any moment, the start-up's imports included, ends with one line and status 130; a
    closed stdout (``ncflow theory | head -1``) ends quietly with status 141, like other tools."""
    sys.unraisablehook = _interrupt_anywhere(sys.unraisablehook)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell ignores it
        signal.signal(signal.SIGINT, _exit_now)
    try:
        from ncflow.cli.app import main as _main

        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("ncflow: interrupted\n")
        return 130
    except BrokenPipeError:
        try:  # stdout is gone: send what is still buffered nowhere, so exiting prints no second error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
