"""``python -m stepstream.cli``: the ``stepstream`` command, where the entry point is not installed."""

from stepstream.cli import main

main()
