"""The ``ncflow`` command line: a thin shell over the Python API.

:mod:`.app` builds the parser and runs ``ncflow theory``; :mod:`.common` holds what the sub-commands
share; :mod:`.run` and :mod:`.sweep` are sub-commands."""


def main(argv=None) -> int:
    """Entry point of the ``ncflow`` command (see :func:`ncflow.cli.app.main`)."""
    from ncflow.cli.app import main as _main

    return _main(argv)
