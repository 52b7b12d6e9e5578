"""One MQTT 5 connection driven by a :class:`~device_sdk.reactor.Reactor`, reconnecting forever.

A :class:`Link` owns the paho client of one identity. It connects over TLS with
``clean_start=False`` and a session expiry, so the broker keeps the device's subscriptions
and queued QoS 1 messages (OTA offers) while it is away; it registers a last will; and after
any drop it reconnects after a :class:`~device_sdk.backoff.Backoff` delay.

Each attempt uses a fresh paho client. paho keeps unacknowledged publishes in memory and would
resend them itself on reconnect; the device's outbox already does that, durably, so a fresh
client leaves exactly one owner of retransmission (and one code path, the same after a
process restart as after a network drop).

Topic aliases (MQTT 5.0 section 3.3.2.3.4): a publish made with ``alias=True`` names its topic
once per connection, with a Topic Alias property, and from then on sends an empty topic plus
the alias, which saves the whole topic string (~36 bytes of ``fleet/v1/{uid}/events``) in every
later packet. An alias is a property of one network connection, not of the session, so the map
starts empty at every CONNACK and is only used up to the Topic Alias Maximum that CONNACK
announced (absent or 0: no aliases, full topics). A fresh paho client per attempt is what makes
this safe: a reused client would resend its unacknowledged publishes after a reconnect exactly
as they were (empty topic, an alias the new connection never heard of), and the broker would
close the connection for a protocol error, again at every reconnect (see paho's
``Client.drop_out_messages``). Here those publishes die with their client; the owner's outbox
sends them again through :meth:`Link.publish`, which names the topic afresh on the new
connection. Retained messages and the last will are not aliased by the client (it never asks).

Threading: the connect (TCP and TLS handshake, blocking) runs in the reactor's connector pool;
everything else, including every paho call and every :class:`LinkListener` method, runs on the
reactor thread. :meth:`Link.start`, :meth:`Link.stop` and :meth:`Link.abort` are safe from any
thread; :meth:`Link.publish` must be called on the reactor thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sdk import paho_speedup
from device_sdk.backoff import Backoff
from device_sdk.link_config import (
    CREDENTIAL_REFUSED,
    BrokerEndpoint,
    LinkConfig,
    LinkListener,
    LinkState,
    Will,
)
from device_sdk.reactor import Reactor, Timer

__all__ = [
    "CREDENTIAL_REFUSED", "BrokerEndpoint", "Link", "LinkConfig", "LinkListener", "LinkState",
    "TopicAliases", "Will", "WireTally",
]

log = logging.getLogger(__name__)
paho_speedup.install()  # received OTA chunks: paho rebuilt tables per packet
_paho_log = logging.getLogger("device_sdk.paho")
_MISC_INTERVAL_S = 1.0  # how often keepalive and timeouts are checked
_STOP_GRACE_S = 2.0  # how long a graceful DISCONNECT may take before the socket is closed
# MQTT 5 DISCONNECT reason 4: "Disconnect with Will Message" - a clean stop still announces
# "offline" through the will, so an operator sees the same status for both ways to go away.
_DISCONNECT_WITH_WILL = 4


class Link:
    """Keep one MQTT 5 connection up on a reactor, reconnecting with back-off until stopped."""

    def __init__(
        self,
        config: LinkConfig,
        reactor: Reactor,
        listener: LinkListener,
        *,
        backoff: Backoff | None = None,
        tally: WireTally | None = None,
    ) -> None:
        """``tally``, if given, counts the bytes of every packet by kind (for benches)."""
        if config.endpoint.tls and config.ssl_context is None:
            raise ValueError("a TLS endpoint needs an ssl_context")
        self.config = config
        self.reactor = reactor
        self.listener = listener
        self.backoff = backoff or Backoff()
        self.tally = tally
        self.state = LinkState.IDLE
        self.connects = 0  # successful CONNACKs, for statistics
        self.last_error = ""
        self.stopped = threading.Event()
        self._client: mqtt.Client | None = None
        self._sock: Any = None  # the socket the reactor watches, None when detached
        self._connected_at = 0.0
        self._attempt_timer: Timer | None = None
        self._misc_timer: Timer | None = None
        self._stopping = False
        # Filters added by subscribe(), on top of the config's, with their QoS.
        self._extra: dict[str, int] = {}
        # Topic aliases of the current connection: reset at every CONNACK (see the module doc).
        self._aliases = TopicAliases(0)
        self._info = logging.INFO if config.log_transitions else logging.DEBUG
        self._warning = logging.WARNING if config.log_transitions else logging.DEBUG

    # -- public API ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Say whether the broker has accepted the current connection."""
        return self.state is LinkState.CONNECTED

    def start(self) -> None:
        """Begin connecting (from any thread)."""
        self.reactor.call_soon(self._start)

    def stop(self) -> None:
        """Disconnect (the broker publishes the will) and stop retrying; see :attr:`stopped`."""
        self.reactor.call_soon(self._stop)

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would; the link retries."""
        self.reactor.call_soon(self._abort, "aborted by the application")

    def set_credentials(self, username: str | None, password: str | None) -> None:
        """Use a new credential from the next connection attempt on (from any thread)."""

        def apply() -> None:
            self.config = replace(self.config, username=username, password=password)

        self.reactor.call_soon(apply)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected and after every new session (from any thread).

        QoS 0 suits the package fan-out: the broker queues nothing for an offline device, so a
        reconnect brings no stale chunks (the device repairs gaps by request).
        """

        def apply() -> None:
            if topic_filter not in self._extra:
                self._extra[topic_filter] = qos
                if self.connected and self._client is not None:
                    self._client.subscribe(topic_filter, qos=qos)
                    self._sync_write_interest()

        self.reactor.call_soon(apply)

    def unsubscribe(self, topic_filter: str) -> None:
        """Undo :meth:`subscribe` (from any thread)."""

        def apply() -> None:
            if topic_filter in self._extra:
                del self._extra[topic_filter]
                if self.connected and self._client is not None:
                    self._client.unsubscribe(topic_filter)
                    self._sync_write_interest()

        self.reactor.call_soon(apply)

    @property
    def topic_alias_maximum(self) -> int:
        """Return how many topic aliases the current connection may use (0: none, or down)."""
        return self._aliases.maximum

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
        alias: bool = False,
    ) -> int | None:
        """Publish on the reactor thread; return the message id, or None when not connected.

        With ``alias``, use a topic alias when the broker allows one (see the module doc): the
        first such publish on a connection carries the topic and the alias, later ones an
        empty topic and the alias. Subscribers always receive the full topic.
        """
        client = self._client
        if client is None or self.state is not LinkState.CONNECTED:
            return None
        wire_topic, number, known = topic, 0, False
        if alias:
            number, known = self._aliases.lookup(topic)
            if known:
                wire_topic = ""
        properties = None
        if number:
            properties = Properties(PacketTypes.PUBLISH)
            properties.TopicAlias = number
        info = client.publish(wire_topic, payload, qos=qos, retain=retain, properties=properties)
        self._sync_write_interest()
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("%s: publish to %s failed: %s", self.config.client_id, topic, info.rc)
            return None
        if number and not known:
            # Only now: a publish paho did not take never told the broker about the alias.
            # One it took (sent, or queued behind the in-flight window) precedes, in paho's
            # send order, every later publish that relies on the alias.
            self._aliases.bind(topic, number)
        return info.mid

    # -- connecting -----------------------------------------------------------------------

    def _start(self) -> None:
        if self.state is not LinkState.IDLE:
            return
        self._stopping = False
        self._misc_timer = self.reactor.call_later(_MISC_INTERVAL_S, self._misc)
        self._attempt()

    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        client = _LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
            tally=self.tally,
        )
        client.suppress_exceptions = True  # our callbacks catch everything; this is a backstop
        client.enable_logger(_paho_log)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.connect_timeout = cfg.connect_timeout
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.endpoint.tls:
            assert cfg.ssl_context is not None
            client.tls_set_context(cfg.ssl_context)
        if cfg.will is not None:
            w = cfg.will
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_plain_message = self._on_plain_message
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        return client

    def _attempt(self) -> None:
        self._attempt_timer = None
        if self._stopping:
            return
        self.state = LinkState.CONNECTING
        client = self._new_client()
        self._client = client
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        endpoint = self.config.endpoint

        def connect() -> mqtt.Client:
            client.connect(
                endpoint.host, endpoint.port, self.config.keepalive,
                clean_start=False, properties=props,
            )
            return client

        self.reactor.run_blocking(connect, self._connect_done)

    def _connect_done(self, client: mqtt.Client | None, error: BaseException | None) -> None:
        if error is not None or client is None:
            # A certificate the CA does not vouch for will not fix itself: say so loudly.
            loud = isinstance(error, ssl.SSLCertVerificationError)
            self._attempt_failed(f"connect failed: {error}", loud=loud)
            return
        sock = client.socket()
        if self._stopping or client is not self._client or sock is None:
            self._close_socket(sock)
            if self._stopping:
                self._finish_stop()
            return
        self._sock = sock
        self.reactor.watch(sock, self._readable, self._writable, writable=client.want_write())
        # The CONNACK must come within the connect timeout too, or the attempt is abandoned.
        self._attempt_timer = self.reactor.call_later(
            self.config.connect_timeout, self._connack_timeout, client
        )

    def _connack_timeout(self, client: mqtt.Client) -> None:
        if client is self._client and self.state is LinkState.CONNECTING:
            self._abort("no CONNACK within the connect timeout")

    def _attempt_failed(self, reason: str, *, loud: bool = False) -> None:
        self._detach()
        self.last_error = reason
        self._safe_listener("link_down", reason)
        if self._stopping:
            self._finish_stop()
            return
        delay = self.backoff.next_delay()
        self.state = LinkState.WAITING
        level = logging.ERROR if loud else self._info
        log.log(level, "%s: %s; retrying in %.1f s", self.config.client_id, reason, delay)
        self._attempt_timer = self.reactor.call_later(delay, self._attempt)

    # -- I/O (reactor thread) -------------------------------------------------------------

    def _readable(self) -> None:
        client = self._client
        if client is None or self._sock is None:
            return
        client.read_available()
        if self._client is client and client.more_to_read():
            # Decrypted bytes wait inside the SSL object, where the selector cannot see them:
            # come back for them after the other sockets that are ready have had their turn.
            self.reactor.call_soon(self._readable)
        self._sync_write_interest()

    def _writable(self) -> None:
        client = self._client
        if client is not None and self._sock is not None:
            client.loop_write()
            self._sync_write_interest()

    def _misc(self) -> None:
        if self.state is LinkState.STOPPED:
            return
        self._misc_timer = self.reactor.call_later(_MISC_INTERVAL_S, self._misc)
        client = self._client
        if client is not None and self._sock is not None:
            client.loop_misc()  # keepalive PINGREQ, and a drop when PINGRESP is overdue
            self._sync_write_interest()

    def _sync_write_interest(self) -> None:
        client, sock = self._client, self._sock
        if client is not None and sock is not None:
            self.reactor.set_writable(sock, client.want_write())

    # -- paho callbacks: never raise (an exception would kill the connection's processing) --

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        try:
            if client is not self._client:
                return
            if rc.is_failure:
                # The broker closes the socket next; _on_disconnect schedules the retry.
                self.last_error = f"broker refused the connection: {rc}"
                refused = rc.value in CREDENTIAL_REFUSED
                log.log(logging.ERROR if refused else logging.WARNING, "%s: %s",
                        self.config.client_id, self.last_error)
                if refused:
                    self.listener.link_refused(rc.value)
                return
            if self._attempt_timer is not None:
                self._attempt_timer.cancel()
                self._attempt_timer = None
            self._aliases = TopicAliases(_topic_alias_maximum(props))
            self.state = LinkState.CONNECTED
            self.connects += 1
            self._connected_at = time.monotonic()
            session_present = bool(flags.session_present)
            filters = [(f, 1) for f in self.config.subscriptions] + list(self._extra.items())
            if filters and not session_present:
                client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
            log.debug("%s: connected (session present: %s)", self.config.client_id, session_present)
            self.listener.link_up(session_present)
        except Exception:  # never let an exception into paho's loop
            log.exception("%s: error handling CONNACK", self.config.client_id)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        try:
            if client is not self._client:
                return
            was_up = self.state is LinkState.CONNECTED
            if was_up:
                self.backoff.connection_ended(time.monotonic() - self._connected_at)
            if self._attempt_timer is not None:
                self._attempt_timer.cancel()
                self._attempt_timer = None
            if self._stopping:
                reason = "stopped by the application"
            elif self.last_error:
                reason = self.last_error
            elif getattr(flags, "is_disconnect_packet_from_server", False):
                reason = f"the broker disconnected the device: {rc}"
            else:
                reason = "connection closed without DISCONNECT (network or broker gone)"
            if was_up and not self._stopping:
                log.log(self._warning, "%s: connection lost: %s", self.config.client_id, reason)
            self.last_error = ""
            self._attempt_failed(reason)
        except Exception:
            log.exception("%s: error handling a disconnect", self.config.client_id)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if client is self._client:
                self.listener.link_message(message.topic, bytes(message.payload))
        except Exception:
            log.exception("%s: error handling a message on %s", self.config.client_id, message.topic)

    def _on_plain_message(self, client: mqtt.Client, topic: str, payload: bytes) -> None:
        try:
            if client is self._client:
                self.listener.link_message(topic, payload)
        except Exception:
            log.exception("%s: error handling a message on %s", self.config.client_id, topic)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        try:
            if client is self._client:
                self.listener.link_published(mid, rc.value)
        except Exception:
            log.exception("%s: error handling PUBACK %d", self.config.client_id, mid)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            if sock is self._sock:
                # Unwatch before paho closes it: a new connection may get the same descriptor.
                self.reactor.unwatch(sock)
                self._sock = None
        except Exception:
            log.exception("%s: error closing the socket", self.config.client_id)

    # -- stopping and aborting ------------------------------------------------------------

    def _stop(self) -> None:
        if self.state in (LinkState.STOPPED, LinkState.IDLE):
            self.state = LinkState.STOPPED
            self.stopped.set()
            return
        self._stopping = True
        if self._attempt_timer is not None and self.state is LinkState.WAITING:
            self._attempt_timer.cancel()
            self._finish_stop()
            return
        client = self._client
        if client is not None and self.state is LinkState.CONNECTED:
            code = _DISCONNECT_WITH_WILL if self.config.will else 0
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=code))
            self._sync_write_interest()
        elif self._sock is not None:  # still waiting for the CONNACK: nothing to say goodbye to
            self._finish_stop()
            return
        # Whatever happens to the DISCONNECT (or a connect still in the pool), stop in time.
        self.reactor.call_later(_STOP_GRACE_S, self._force_stop)

    def _force_stop(self) -> None:
        if self.state is not LinkState.STOPPED:
            self._detach()
            self._finish_stop()

    def _finish_stop(self) -> None:
        if self.state is LinkState.STOPPED:
            return
        self._detach()
        self.state = LinkState.STOPPED
        if self._misc_timer is not None:
            self._misc_timer.cancel()
        self.stopped.set()
        log.debug("%s: stopped", self.config.client_id)

    def _abort(self, reason: str) -> None:
        if self._sock is None:
            return
        self.last_error = reason
        try:
            # shutdown, not close: paho still owns the socket and notices EOF on its next read,
            # which runs its normal disconnect path. No DISCONNECT is sent: the will fires.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        self._close_socket(sock)
        self._client = None
        self._aliases = TopicAliases(0)

    def _close_socket(self, sock: Any) -> None:
        if sock is None:
            return
        self.reactor.unwatch(sock)
        try:
            sock.close()
        except OSError:
            pass

    def _safe_listener(self, method: str, *args: Any) -> None:
        try:
            getattr(self.listener, method)(*args)
        except Exception:
            log.exception("%s: error in listener.%s", self.config.client_id, method)


class _LeanClient(mqtt.Client):
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
      ``on_plain_message(client, topic, payload)``, without the ``Properties`` and
      ``MQTTMessage`` objects paho builds for each (two thirds of its time per message).
      Anything else (properties, QoS 2, a topic that is not UTF-8) takes paho's own path.
    """

    _READ_BYTES = 65536
    on_plain_message: Callable[[mqtt.Client, str, bytes], None] | None = None

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
                    tally.add(kind, "server", _publish_size(topic, payload, qos=1))
                    tally.add("acks", "server", 4)
            else:
                tally.add(_kind(command, None), "up", len(packet))
        return super()._packet_queue(command, packet, mid, qos, info)

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

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        deliver = self.on_plain_message
        if deliver is None or qos == 2 or len(packet) < 3:
            return super()._handle_publish()
        at = 2 + int.from_bytes(packet[:2], "big")
        topic_bytes = packet[2:at]
        mid = 0
        if qos:
            mid = int.from_bytes(packet[at:at + 2], "big")
            at += 2
        if packet[at:at + 1] != b"\x00" or not topic_bytes:
            return super()._handle_publish()  # properties, an alias, or malformed: paho decides
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        with self._in_callback_mutex:
            try:
                deliver(self, topic, bytes(packet[at + 1:]))
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


_PUBLISH = 0x30
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


def _publish_size(topic: str, payload: int, *, qos: int) -> int:
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


class TopicAliases:
    """The client-to-broker topic aliases of one MQTT 5 connection.

    Aliases are numbered from 1 up to ``maximum`` (the broker's Topic Alias Maximum) in the
    order topics first ask for one, and never reassigned: a device publishes on a handful of
    topics, and a topic that finds every alias taken is simply sent in full.
    """

    __slots__ = ("_bound", "maximum")

    def __init__(self, maximum: int) -> None:
        self.maximum = max(0, maximum)
        self._bound: dict[str, int] = {}  # topic -> alias the broker has been told about

    def lookup(self, topic: str) -> tuple[int, bool]:
        """Return ``(alias, known)``: a bound alias, a free one to bind, or ``(0, False)``."""
        number = self._bound.get(topic)
        if number is not None:
            return number, True
        if len(self._bound) < self.maximum:
            return len(self._bound) + 1, False
        return 0, False

    def bind(self, topic: str, number: int) -> None:
        """Note that a publish carrying ``topic`` and ``number`` is on its way to the broker."""
        self._bound[topic] = number

    def __len__(self) -> int:
        return len(self._bound)


def _topic_alias_maximum(props: Any) -> int:
    """Return the Topic Alias Maximum a CONNACK announced; absent means 0 (MQTT 5 3.2.2.3.8)."""
    value = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
    return value if isinstance(value, int) else 0
