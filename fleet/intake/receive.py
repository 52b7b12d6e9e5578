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
  subscription identifiers) goes to ``on_plain_message(client, topic, payload, mid, qos)``
  (``LeanClient``'s delivery; the worker acknowledges the packet id after its commit);
  anything else takes paho's own path to ``on_message``;
* ``ack_many`` queues the PUBACKs of a whole committed batch as one write: the same packets
  on the wire, back to back.
"""

from __future__ import annotations

from collections.abc import Iterable

from paho.mqtt.enums import MQTTErrorCode

from device_sdk.mqtt.lean_client import LeanClient

_PUBACK = 0x40


class WorkerClient(LeanClient):
    """paho's client for the fleet worker; see the module's docstring."""

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every whole packet one socket read brings (paho: one packet per call)."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        return self.read_available(reads=1)

    def ack_many(self, mids: Iterable[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (``manual_ack``): their PUBACKs as one queued write."""
        data = b"".join(bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)
        if not data:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(_PUBACK, data, 0, 1)
