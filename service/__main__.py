"""``python -m service``: the same command as ``parley``."""

from service.cli.commands import main

main()
