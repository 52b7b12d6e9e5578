"""One MQTT 5 connection driven by a :class:`~device_sdk.mqtt.reactor.Reactor`, reconnecting forever.

A :class:`Link` owns the paho client of one identity. It connects over TLS with
``clean_start=False`` and a session expiry, so the broker keeps the device's subscriptions
and queued QoS 1 messages (OTA offers) while it is away; it registers a last will; and after
any drop it reconnects after a :class:`~device_sdk.mqtt.backoff.Backoff` delay.

Each attempt uses a fresh paho client. paho keeps unacknowledged publishes in memory and would
resend them itself on reconnect; the device's outbox already does that, durably, so a fresh
client leaves exactly one owner of retransmission (and one code path, the same after a
process restart as after a network drop).

Topic aliases: a publish made with ``alias=True`` names its topic once per connection and then
sends only the alias (``device_sdk.mqtt.topic_aliases`` says why the map lives and dies with
one connection, and why that needs a fresh paho client per attempt).

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
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.config import (
    CREDENTIAL_REFUSED,
    BrokerEndpoint,
    LinkConfig,
    LinkListener,
    LinkState,
    Will,
)
from device_sdk.mqtt.endpoint import new_client
from device_sdk.mqtt.lean_client import LeanClient, WireTally
from device_sdk.mqtt.reactor import Reactor, Timer
from device_sdk.mqtt.topic_aliases import TopicAliases, alias_properties, topic_alias_maximum

__all__ = [
    "CREDENTIAL_REFUSED", "BrokerEndpoint", "Link", "LinkConfig", "LinkListener", "LinkState",
    "TopicAliases", "Will", "WireTally",
]

log = logging.getLogger(__name__)
_paho_log = logging.getLogger("device_sdk.paho")
# Keepalive (PINGREQ due, PINGRESP overdue) is checked every tenth of the keepalive, at
# least every second: on time within 10 %, and a fleet of 10,000 simulated links does not
# spend a tenth of a core on timers that find nothing to do.
_MISC_FRACTION = 0.1
_MISC_MIN_S = 1.0
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
        self._flush_pending = False  # a _flush is queued on the reactor (see _write_later)
        self._connected_at = 0.0
        self._attempt_timer: Timer | None = None
        self._misc_timer: Timer | None = None
        self._misc_interval_s = max(_MISC_MIN_S, config.keepalive * _MISC_FRACTION)
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

        The packet goes out with the others of this reactor turn (see :meth:`_write_later`); a
        write that fails then drops the connection, as any broken write does.

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
        properties = alias_properties(number) if number else None
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
        self._misc_timer = self.reactor.call_later(self._misc_interval_s, self._misc)
        self._attempt()

    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        assert cfg.ssl_context is not None or not cfg.endpoint.tls
        client: Any = new_client(
            cfg.endpoint, client_id=cfg.client_id, username=cfg.username, password=cfg.password,
            ssl_context=cfg.ssl_context, reconnect_on_failure=False,
            max_inflight=cfg.max_inflight, will=cfg.will, client_class=LeanClient)
        client.tally = self.tally
        client.write_later = self._write_later
        client.suppress_exceptions = True  # our callbacks catch everything; this is a backstop
        client.enable_logger(_paho_log)
        client.connect_timeout = cfg.connect_timeout
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
        self._misc_timer = self.reactor.call_later(self._misc_interval_s, self._misc)
        client = self._client
        if client is not None and self._sock is not None:
            client.loop_misc()  # keepalive PINGREQ, and a drop when PINGRESP is overdue
            self._sync_write_interest()

    def _write_later(self) -> bool:
        """``LeanClient.write_later``: once connected, the packets of one reactor turn wait
        for :meth:`_flush` and go out in one write (one TLS record, one TCP segment)."""
        if self._sock is None or not self.reactor.in_reactor_thread():
            return False  # connecting (paho writes CONNECT from the connector pool) or stopping
        if not self._flush_pending:
            self._flush_pending = True
            self.reactor.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        self._writable()

    def _sync_write_interest(self) -> None:
        if self._flush_pending:
            return  # the flush writes, then asks for what is left
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
            self._aliases = TopicAliases(topic_alias_maximum(props))
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
        self._on_plain_message(client, message.topic, bytes(message.payload), message.mid,
                               message.qos)

    def _on_plain_message(self, client: mqtt.Client, topic: str, payload: bytes, mid: int,
                          qos: int) -> None:
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
            self._flush()  # now, not after this turn: a caller may stop the reactor next
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

