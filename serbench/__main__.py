"""``python -m serbench`` is the ``serbench`` command."""

from serbench.cli import main

main()
