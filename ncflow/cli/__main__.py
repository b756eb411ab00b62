"""``python -m ncflow.cli``: the same as the ``ncflow`` command."""

from ncflow.cli.app import main

raise SystemExit(main())
