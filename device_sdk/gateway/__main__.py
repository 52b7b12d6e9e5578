"""Run the serial gateway: ``python -m device_sdk.gateway --port URL --config FILE``."""

from device_sdk.gateway.cli import main

raise SystemExit(main())
