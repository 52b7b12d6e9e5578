"""paho's MQTT client with a shorter receive path, and a tally of MQTT bytes by kind.

:class:`LeanClient` is what :class:`~device_sdk.mqtt.link.Link` connects with: a simulated fleet of
thousands shares one core, and paho's own receive path cost ~60 µs of Python per message.
:class:`WireTally` counts the bytes of every packet the clients send and receive by what they
carry (benches use it to say where the bytes through the broker go).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["LeanClient", "WireTally", "publish_size"]

# paho's own decoding of what still takes its path is cheaper with device_sdk.mqtt.paho_speedup,
# which the process's entry point installs (opt-in, never at import).


def _no_completion(packet: dict[str, Any]) -> bool:
    """Whether paho does nothing once ``packet`` is written: not a QoS 0 PUBLISH (its
    ``on_publish`` fires then) nor a DISCONNECT (the socket closes then)."""
    kind = packet["command"] & 0xF0
    return not ((kind == _PUBLISH and packet["qos"] == 0) or kind == _DISCONNECT)


def _joined(run: list[bytes | bytearray]) -> dict[str, Any]:
    """One ``_out_packet`` entry for packets with no completion work (see _no_completion)."""
    data = run[0] if len(run) == 1 else b"".join(run)
    return {"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data),
            "packet": data, "info": None}


class LeanClient(mqtt.Client):
    """paho's client with a shorter receive path, for fleets of thousands on one core.

    Measured on a simulated fleet taking OTA chunks (bench/rollout.py), paho 2.2 spent ~60 µs
    of Python per received message before the application saw it, and asked TLS for bytes
    four times per message. Two changes, both to paho internals (the version is pinned):

    * Reads: paho asks the socket for the packet type byte, then each length byte, then the
      rest. :meth:`_sock_recv` takes up to ``_READ_BYTES`` from the socket at once and serves
      the following small reads from that buffer, so one TLS read covers several packets.
      :meth:`read_available` then handles every whole packet buffered.
    * PUBLISH without properties (all that Mosquitto sends this SDK: it assigns no topic
      aliases, and the SDK asks for no subscription identifiers) goes straight to
      ``on_plain_message(client, topic, payload, mid, qos)``, without the ``Properties`` and
      ``MQTTMessage`` objects paho builds for each (two thirds of its time per message); the
      packet id is for a client that acknowledges by hand (``manual_ack``: the fleet worker,
      ``fleet.intake.receive``), otherwise a QoS 1 message is acknowledged after the callback.
      Anything else (properties, QoS 2, a topic that is not UTF-8) takes paho's own path.
    * Writes: paho sends each queued packet with its own TLS record and system call.
      :meth:`_packet_write` joins a run of queued packets whose sending has no completion
      work (QoS 1 publishes, whose completion is their PUBACK; acknowledgements; subscribes)
      into one send: a device's acknowledgements and reports of one callback go out together.
      With ``write_later`` set, packets queued outside paho's callbacks wait too, for the
      owner to call :meth:`loop_write` (see :attr:`write_later`).
    """

    _READ_BYTES = 65536
    _WRITE_JOIN_BYTES = 16384  # one TLS record at most
    on_plain_message: Callable[[mqtt.Client, str, bytes, int, int], None] | None = None
    # Asked before each packet is queued: True when the owner will call loop_write() soon
    # (Link: after the reactor's callbacks of this turn), so the packet waits and goes out
    # with the others queued meanwhile; False (or unset): paho writes it at once, as usual.
    write_later: Callable[[], bool] | None = None

    def __init__(self, *args: Any, tally: WireTally | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._reads_left = 1 << 30  # socket reads :meth:`read_available` may still make
        self.tally = tally
        self._alias_topics: dict[int, str] = {}  # for the tally: what each alias stands for

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        tally = self.tally
        if tally is not None:
            if command & 0xF0 == _PUBLISH:
                topic, payload = self._sent_publish(packet)
                kind = _kind(command, topic)
                tally.add(kind, "up", len(packet))
                if topic is not None:
                    # The copy the broker hands a server subscriber: the whole topic, no
                    # properties (an estimate: that leg is not seen from here), and its PUBACK.
                    tally.add(kind, "server", publish_size(topic, payload, qos=1))
                    tally.add("acks", "server", 4)
            else:
                tally.add(_kind(command, None), "up", len(packet))
        later = self.write_later
        if later is None or not later():
            return super()._packet_queue(command, packet, mid, qos, info)
        # paho writes at once unless a callback holds this mutex; held, it only queues. (Not
        # acquired: this thread is in one of this client's callbacks, so it queues anyway.)
        held = self._in_callback_mutex.acquire(False)
        try:
            return super()._packet_queue(command, packet, mid, qos, info)
        finally:
            if held:
                self._in_callback_mutex.release()

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1:
            joined: list[dict[str, Any]] = []
            run: list[bytes | bytearray] = []
            size = 0
            for packet in out:
                data = packet["packet"]
                if packet["pos"] == 0 and _no_completion(packet) \
                        and size + len(data) <= self._WRITE_JOIN_BYTES:
                    run.append(data)
                    size += len(data)
                    continue
                if run:
                    joined.append(_joined(run))
                if packet["pos"] == 0 and _no_completion(packet):  # a new run: the bound
                    run, size = [data], len(data)
                else:  # as paho queued it (a QoS 0 publish, a DISCONNECT, a partial write)
                    joined.append(packet)
                    run, size = [], 0
            if run:
                joined.append(_joined(run))
            if len(joined) < len(out):
                out.clear()
                out.extend(joined)
        return super()._packet_write()

    def _sent_publish(self, packet: bytes | bytearray) -> tuple[str | None, int]:
        """Return (topic, payload bytes) of an outgoing PUBLISH; the topic also when the packet
        names it by alias."""
        at = 1
        while packet[at] & 0x80:  # remaining length
            at += 1
        size = int.from_bytes(packet[at + 1:at + 3], "big")
        topic = bytes(packet[at + 3:at + 3 + size]).decode("utf-8", "replace")
        at += 3 + size + (2 if packet[0] & 0x06 else 0)
        props = packet[at]  # this SDK sends at most a Topic Alias (0x23): three bytes
        payload = len(packet) - at - 1 - props
        if props == 3 and packet[at + 1] == 0x23:
            number = int.from_bytes(packet[at + 2:at + 4], "big")
            if topic:
                self._alias_topics[number] = topic
            else:
                return self._alias_topics.get(number), payload
        return topic or None, payload

    def _packet_handle(self) -> MQTTErrorCode:
        if self.tally is not None:
            packet = self._in_packet
            command: int = packet["command"]
            topic = None
            if command & 0xF0 == _PUBLISH:
                body = packet["packet"]
                size = int.from_bytes(body[:2], "big")
                topic = body[2:2 + size].decode("utf-8", "replace")
            nbytes = 1 + len(packet["remaining_count"]) + packet["remaining_length"]
            kind = _kind(command, topic)
            self.tally.add(kind, "down", nbytes)
            if command & 0x06 and kind != "fanout_chunks":
                # A QoS 1 message from a server (offer, unicast chunk): the same packet went
                # from that server to the broker, and the broker acknowledged it.
                self.tally.add(kind, "server", nbytes)
                self.tally.add("acks", "server", 4)
        return super()._packet_handle()

    def _sock_recv(self, bufsize: int) -> bytes:
        buffered = self._rbuf
        if not buffered:
            if self._reads_left <= 0:
                raise BlockingIOError  # this turn's share is used up: others go first
            self._reads_left -= 1
            data = super()._sock_recv(max(bufsize, self._READ_BYTES))
            if len(data) <= bufsize:
                return data
            self._rbuf = data[bufsize:]
            return data[:bufsize]
        if len(buffered) <= bufsize:
            self._rbuf = b""
            return buffered
        self._rbuf = buffered[bufsize:]
        return buffered[:bufsize]

    def read_available(self, reads: int = 1) -> MQTTErrorCode:
        """Handle every whole packet that ``reads`` socket reads bring (``loop_read`` handles
        one packet per call); see :meth:`more_to_read` for what may be left.

        One read per turn keeps a device's share of a reactor's time to about one TLS record
        (16 KB): a device whose broker queue is deep must not hold up the hundreds that share
        its thread (their repair timers would fire while their bytes wait unread).
        """
        self._reads_left = reads
        try:
            while self._sock is not None:
                rc = self._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    if self._rbuf:
                        continue  # whole packets still buffered (a huge one's pieces)
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                if rc > 0:
                    return self._loop_rc_handle(rc)
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        finally:
            self._reads_left = 1 << 30

    def more_to_read(self) -> bool:
        """Whether bytes wait where the selector cannot see them: decrypted in the SSL object
        (this client's own buffer is always drained by :meth:`read_available`)."""
        sock = self._sock
        return sock is not None and getattr(sock, "pending", lambda: 0)() > 0

    def _plain_publish(self) -> tuple[str, bytes, int, int] | None:
        """Return (topic, payload, mid, qos) of the PUBLISH just read if it is plain (QoS 0
        or 1, no properties, a UTF-8 topic); None: paho's own path decides."""
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if qos == 2 or len(packet) < 3:
            return None
        at = 2 + int.from_bytes(packet[:2], "big")
        topic_bytes = packet[2:at]
        mid = 0
        if qos:
            mid = int.from_bytes(packet[at:at + 2], "big")
            at += 2
        if packet[at:at + 1] != b"\x00" or not topic_bytes:
            return None  # properties, an alias, or malformed
        try:
            return topic_bytes.decode("utf-8"), bytes(packet[at + 1:]), mid, qos
        except UnicodeDecodeError:
            return None

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.on_plain_message
        plain = None if deliver is None else self._plain_publish()
        if deliver is None or plain is None:
            return super()._handle_publish()
        topic, payload, mid, qos = plain
        with self._in_callback_mutex:
            try:
                deliver(self, topic, payload, mid, qos)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


_PUBLISH = 0x30
_PUBACK = 0x40
_DISCONNECT = 0xE0
_CONTROL_KINDS = {0x10: "connect", 0x20: "connect", 0x40: "acks", 0x50: "acks", 0x60: "acks",
                  0x70: "acks", 0x80: "subscribe", 0x90: "subscribe", 0xA0: "subscribe",
                  0xB0: "subscribe", 0xC0: "pings", 0xD0: "pings", 0xE0: "connect",
                  0xF0: "connect"}
_CHANNEL_KINDS = {"events": "events", "status": "status", "ota/offer": "offers",
                  "ota/get": "requests", "ota/chunk": "unicast_chunks", "ota/report": "reports"}


def _kind(command: int, topic: str | None) -> str:
    """Name what an MQTT packet carries, for :class:`WireTally`."""
    if command & 0xF0 != _PUBLISH:
        return _CONTROL_KINDS.get(command & 0xF0, "other")
    if topic is None:
        return "other"
    if topic.startswith(_FANOUT_PREFIX):
        return "fanout_chunks"
    return _CHANNEL_KINDS.get(topic.split("/", 3)[-1], "other")


_FANOUT_PREFIX = "fleet/v1/pkg/"


def publish_size(topic: str, payload: int, *, qos: int) -> int:
    """Bytes of an MQTT 5 PUBLISH of ``payload`` bytes on ``topic`` without properties."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + payload
    return 1 + (1 if remaining < 128 else 2 if remaining < 16_384 else 3) + remaining


class WireTally:
    """MQTT packet bytes a set of links sent and received, by what they carry: for benches that
    want to know where the bytes through the broker go (bench/rollout.py). Thread-safe.

    Kinds: ``fanout_chunks``, ``unicast_chunks``, ``offers``, ``requests``, ``reports``,
    ``status``, ``events`` (PUBLISH packets by topic), ``acks`` (PUBACK and friends),
    ``subscribe`` (SUBSCRIBE, UNSUBSCRIBE and their answers), ``pings``, ``connect``
    (CONNECT, CONNACK, DISCONNECT), ``other``. Directions: ``up`` (device to broker),
    ``down``, both counted from whole packets (fixed header, variable header, properties,
    payload), and ``server``: an estimate of the other leg between the broker and a server
    subscriber or publisher of the same messages (a fan-out chunk has no per-device one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes: dict[tuple[str, str], int] = {}
        self.packets: dict[tuple[str, str], int] = {}

    def add(self, kind: str, direction: str, nbytes: int) -> None:
        """Count one packet of ``nbytes``."""
        key = (kind, direction)
        with self._lock:
            self.bytes[key] = self.bytes.get(key, 0) + nbytes
            self.packets[key] = self.packets.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Return {(kind, direction): (packets, bytes)} so far."""
        with self._lock:
            return {key: (self.packets[key], self.bytes[key]) for key in self.bytes}
