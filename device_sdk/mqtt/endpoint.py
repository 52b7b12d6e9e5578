"""The one way every process of the fleet reads a broker URL and sets up a paho MQTT 5 client.

The server's control channel, the ingest worker, the serial gateway, the test fixtures and the
benches all connect the same way: :meth:`BrokerEndpoint.parse` reads ``mqtt://host:port`` or
``mqtts://host:port``, :func:`new_client` builds a paho client (MQTT 5, callback API 2,
credentials, TLS, will, in-flight limits) for the caller to attach its callbacks to, and
:func:`connect` opens the connection (clean start or a persistent session), starts paho's
network thread and, when asked, waits for the CONNACK. What differs between callers (manual
acknowledgement, session expiry, receive maximum, reconnect delays) is a parameter.

The device :class:`~device_sdk.mqtt.link.Link` drives its sockets from a
:class:`~device_sdk.mqtt.reactor.Reactor` instead of paho's thread, but reads the same
:class:`BrokerEndpoint`. This module imports nothing from the server.

Example::

    endpoint = BrokerEndpoint.parse("mqtts://broker.example:8883")
    client = new_client(endpoint, client_id="worker-1", username="w", password="s",
                        ca_certs="/etc/fleet/ca.pem", manual_ack=True)
    client.on_message = handle
    connect(client, endpoint, clean_start=False, session_expiry_s=86_400, background=True)
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["PLAIN_SCHEMES", "TLS_SCHEMES", "BrokerEndpoint", "Will", "connect", "new_client"]

PLAIN_SCHEMES = frozenset({"mqtt", "tcp"})
TLS_SCHEMES = frozenset({"mqtts", "ssl"})
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the broker listens: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerEndpoint:
        """Parse a broker URL; the port defaults to 1883, or 8883 for ``mqtts``.

        Accepted schemes: ``mqtt`` and ``tcp`` (plain), ``mqtts`` and ``ssl`` (TLS). IPv6
        hosts go in brackets (``mqtt://[::1]:1883``); a trailing ``/`` is tolerated.

        Raises:
            ValueError: naming the URL and what is wrong with it (no scheme or an unknown one,
                no host, a port that is not a number in 1..65535, credentials, a path, a query
                or a fragment). Credentials go to :func:`new_client`, never in the URL, so that
                they do not end up in logs.
        """
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"empty broker URL (expected mqtt://host:port or mqtts://host:port): "
                             f"{url!r}")
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in PLAIN_SCHEMES | TLS_SCHEMES:
            raise ValueError(f"broker URL must start with mqtt:// or mqtts:// (or tcp://, ssl://), "
                             f"got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"broker URL must not carry credentials (pass username and password "
                             f"separately): {_redacted(url)!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"broker URL must be only scheme://host:port, got {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"broker URL has a bad port (a number in 1..65535): {url!r}") from None
        if port == 0:
            raise ValueError(f"broker URL has a bad port (a number in 1..65535): {url!r}")
        tls = scheme in TLS_SCHEMES
        return cls(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls)

    @property
    def url(self) -> str:
        """Return the canonical URL (``mqtts://`` when TLS), e.g. for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for a client when its connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _redacted(url: str) -> str:
    """Return ``url`` with any user-info replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def new_client(
    endpoint: BrokerEndpoint,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    ca_certs: str | None = None,
    ca_pem: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    manual_ack: bool = False,
    reconnect_on_failure: bool = True,
    reconnect_delay: tuple[float, float] | None = None,
    max_inflight: int | None = None,
    max_queued: int | None = None,
    will: Will | None = None,
    client_class: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """Return a paho MQTT 5 client for ``endpoint``, configured but not yet connected.

    Attach callbacks to the result, then call :func:`connect`.

    Args:
        endpoint: the broker; TLS is used exactly when ``endpoint.tls``.
        client_id: the MQTT client id (devices and gateways: their uid, which dynsec binds).
        username, password: the credential; none when ``username`` is None.
        ca_certs: path of the CA file the broker's certificate must chain to (TLS only).
        ca_pem: the same CA as PEM text, for callers that hold it in memory (TLS only).
        ssl_context: a ready TLS context instead of ``ca_certs``/``ca_pem`` (TLS only).
            With none of the three, TLS trusts the system store. Host names are always checked.
        manual_ack: acknowledge QoS 1 messages only when the caller says so (the worker acks
            after its database commit).
        reconnect_on_failure: let paho's network thread reconnect after a drop.
        reconnect_delay: ``(min_s, max_s)`` of paho's reconnect back-off; None: paho's 1..120 s.
        max_inflight: QoS 1 publishes in flight at once; None: paho's 20.
        max_queued: publishes paho queues while offline (0: unlimited); None: paho's default.
        will: what the broker publishes if the connection dies without a DISCONNECT.
        client_class: paho's ``Client`` or a subclass of it (the worker's receive path).

    Raises:
        ValueError: more than one of ``ca_certs``, ``ca_pem`` and ``ssl_context``.
    """
    if sum(x is not None and x != "" for x in (ca_certs, ca_pem, ssl_context)) > 1:
        raise ValueError("give at most one of ca_certs, ca_pem and ssl_context")
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=manual_ack,
                         reconnect_on_failure=reconnect_on_failure)
    if username is not None:
        client.username_pw_set(username, password)
    if endpoint.tls:
        if ssl_context is not None:
            client.tls_set_context(ssl_context)
        elif ca_pem:
            client.tls_set_context(ssl.create_default_context(cadata=ca_pem))
        else:
            # paho's default: CERT_REQUIRED, the system store when ca_certs is None.
            client.tls_set(ca_certs=ca_certs or None)
    if reconnect_delay is not None:
        client.reconnect_delay_set(min_delay=reconnect_delay[0], max_delay=reconnect_delay[1])
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    if max_queued is not None:
        client.max_queued_messages_set(max_queued)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


def connect(
    client: mqtt.Client,
    endpoint: BrokerEndpoint,
    *,
    keepalive: int = 60,
    clean_start: bool | int = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    background: bool = False,
    wait_s: float | None = None,
) -> ReasonCode | None:
    """Connect ``client`` to ``endpoint`` and start paho's network thread.

    Args:
        client: from :func:`new_client`, callbacks attached.
        endpoint: the same endpoint the client was built for.
        keepalive: seconds between PINGREQs when idle.
        clean_start: ``True`` for a fresh session, ``False`` to resume a persistent one;
            paho's default starts clean on the first connection only.
        session_expiry_s: how long the broker keeps the session after a drop (MQTT 5
            Session Expiry Interval); None: the session ends with the connection.
        receive_maximum: QoS 1 deliveries the broker may have unacknowledged to this client;
            None: the broker's default.
        background: connect from the network thread (paho's ``connect_async``), retrying until
            the broker answers; otherwise the TCP (and TLS) connection is made here and an
            unreachable broker raises ``OSError`` at once.
        wait_s: wait up to this long for the CONNACK; None: do not wait.

    Returns:
        The CONNACK reason code when ``wait_s`` is given and one came in time, else None
        (check ``reason.is_failure``: a refused credential also answers).

    Raises:
        OSError: ``background=False`` and the broker cannot be reached.
    """
    properties: Properties | None = None
    if session_expiry_s is not None or receive_maximum is not None:
        properties = Properties(PacketTypes.CONNECT)
        if session_expiry_s is not None:
            properties.SessionExpiryInterval = session_expiry_s
        if receive_maximum is not None:
            properties.ReceiveMaximum = receive_maximum
    answered = threading.Event()
    reason: list[ReasonCode] = []
    callback = client.on_connect
    if wait_s is not None:
        def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any) -> None:
            reason.append(rc)
            answered.set()
            if callback is not None:
                callback(c, userdata, flags, rc, props)

        client.on_connect = on_connect
    opener = client.connect_async if background else client.connect
    try:
        opener(endpoint.host, endpoint.port, keepalive=keepalive, clean_start=clean_start,
               properties=properties)
    except BaseException:
        client.on_connect = callback
        raise
    client.loop_start()
    if wait_s is None:
        return None
    answered.wait(wait_s)
    client.on_connect = callback
    return reason[0] if reason else None
