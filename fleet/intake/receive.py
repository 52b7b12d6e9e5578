"""The worker's MQTT client: paho with a shorter receive path and acknowledgements in bulk.

Measured in ``bench/soak.py`` (150k events/s offered, ~4,700 messages/s of 32 events), paho's
network thread was a third of the worker's CPU: its threaded loop reads one packet per
``select`` (``loop_read`` takes as many packets as messages are in flight *out*, and the
worker publishes nothing), asks the socket for each packet's type byte, length bytes and body
separately, builds a ``Properties`` and an ``MQTTMessage`` per PUBLISH, and each manual
acknowledgement is its own queued packet, wake-up byte and ``send``.

``WorkerClient`` keeps paho's session, reconnect and keep-alive handling and changes three
things, all on paho internals of the pinned version (as ``LeanClient``, whose buffered reads
and plain-PUBLISH parsing it reuses):

* a readable socket is read in 64 KB pieces and every whole packet in them is handled before
  the next ``select``;
* a plain QoS 0/1 PUBLISH (no properties: what Mosquitto sends a subscriber that asked for no
  subscription identifiers) goes to ``on_plain_publish(topic, payload, mid, qos)``; anything
  else takes paho's own path to ``on_message``;
* ``ack_many`` queues the PUBACKs of a whole committed batch as one write: the same packets
  on the wire, back to back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from device_sdk.mqtt.lean_client import LeanClient

_PUBACK = 0x40


class WorkerClient(LeanClient):
    """paho's client for the fleet worker; see the module's docstring."""

    on_plain_publish: Callable[[str, bytes, int, int], None] | None = None

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every whole packet one socket read brings (paho: one packet per call)."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        return self.read_available(reads=1)

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.on_plain_publish
        plain = None if deliver is None else self._plain_publish()
        if deliver is None or plain is None:
            return mqtt.Client._handle_publish(self)  # paho's own path, to on_message
        topic, payload, mid, qos = plain
        with self._in_callback_mutex:
            try:
                deliver(topic, payload, mid, qos)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (``manual_ack``): their PUBACKs as one queued write."""
        data = b"".join(bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)
        if not data:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(_PUBACK, data, 0, 1)
