"""``python -m ncflow.cli``: the same as the ``ncflow`` command."""

from ncflow.cli import main

raise SystemExit(main())
