"""``python -m fusefs``: the same as the ``artifactfs`` command."""

from .cli import main

main()
