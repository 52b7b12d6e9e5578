"""The types around a :class:`~device_sdk.mqtt.link.Link`: what one MQTT connection needs (the
broker's address, the identity, the will, the limits), its states, and its listener interface.

The configuration is plain immutable data, shared freely between threads (the simulator shares
one TLS context between thousands of links). :class:`BrokerEndpoint` and :class:`Will` live
in :mod:`device_sdk.mqtt.endpoint`, shared with every other MQTT client of the fleet.
"""

from __future__ import annotations

import enum
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from device_sdk.mqtt.endpoint import BrokerEndpoint, Will

__all__ = [
    "CREDENTIAL_REFUSED",
    "BrokerEndpoint",
    "LinkConfig",
    "LinkListener",
    "LinkState",
    "Will",
    "shared_tls_context",
    "tls_context",
]


@dataclass(frozen=True)
class LinkConfig:
    """Everything one connection needs; immutable, shared freely between threads."""

    endpoint: BrokerEndpoint
    client_id: str  # the broker binds it to the username: it must be the device id
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None  # required when the endpoint uses TLS
    will: Will | None = None
    subscriptions: tuple[str, ...] = ()  # QoS 1 filters, (re)made when the session is new
    keepalive: int = 60
    session_expiry_s: int = 7 * 86_400  # the broker keeps queued offers this long
    connect_timeout: float = 10.0  # TCP + TLS handshake, and then again for the CONNACK
    max_inflight: int = 20
    # Log drops and retries at INFO/WARNING (one device) or DEBUG (one of a simulated thousand).
    log_transitions: bool = True


class LinkState(enum.Enum):
    """Where the link is in its life."""

    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # handshake or CONNACK pending
    CONNECTED = "connected"
    WAITING = "waiting"  # back-off delay before the next attempt
    STOPPED = "stopped"


class LinkListener(Protocol):
    """What a link tells its owner; every method runs on the reactor thread and must not block."""

    def link_up(self, session_present: bool) -> None:
        """The broker accepted the connection."""

    def link_down(self, reason: str) -> None:
        """The connection ended (or an attempt failed); the link retries unless stopped."""

    def link_message(self, topic: str, payload: bytes) -> None:
        """A message arrived on a subscribed topic."""

    def link_published(self, mid: int, reason_code: int) -> None:
        """The broker acknowledged publish ``mid`` (PUBACK ``reason_code``; >= 0x80 refused)."""

    def link_refused(self, reason_code: int) -> None:
        """The broker refused the credential (CONNACK 0x86 or 0x87); the link keeps retrying."""


# CONNACK reasons that mean the credential itself is wrong (or revoked), not the broker busy.
CREDENTIAL_REFUSED = frozenset({0x86, 0x87})  # bad user name or password, not authorized


def tls_context(ca_file: str | None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """Return a client TLS context that trusts ``ca_file`` (or the system store) and checks
    names; with ``cert_file`` and ``key_file``, it presents that client certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


_tls_cache: dict[bytes | None, ssl.SSLContext] = {}
_tls_lock = threading.Lock()


def shared_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Return one TLS context per CA certificate: thousands of simulated devices share it.

    Keyed by the file's content, not its path: each simulated device keeps its own copy.
    """
    key = Path(ca_file).read_bytes() if ca_file else None
    with _tls_lock:
        if key not in _tls_cache:
            _tls_cache[key] = tls_context(ca_file)
        return _tls_cache[key]
