"""The device client core: one enrolled device's identity, events, outbox and MQTT messages.

* :mod:`~device_sdk.client.device`: :class:`DeviceClient` (status, telemetry, OTA messages)
* :mod:`~device_sdk.client.identity`: key pair, enrollment, state directory
* :mod:`~device_sdk.client.batching`: events into batches or summaries, sequence numbers
* :mod:`~device_sdk.client.outbox`: messages on disk until the broker's PUBACK

``from device_sdk.client import DeviceClient`` is the public entry point.
"""

from device_sdk.client.device import ClientStats, DeviceClient

__all__ = ["ClientStats", "DeviceClient"]
