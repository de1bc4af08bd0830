"""``python -m rtcxfer.cli``: the ``rtcxfer`` command."""

from rtcxfer.cli.main import main

main()
