"""``python -m reconciler.cli`` runs the ``modelfleet`` command line."""

from reconciler.cli.main import main

main()
