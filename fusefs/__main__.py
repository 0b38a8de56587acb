"""``python -m fusefs``: the same as the ``artifactfs`` command."""

from fusefs.cli import main

main()
