"""``python -m fleetctl``: the same as the ``fleetctl`` console script."""

from fleetctl.cli import main

main()
