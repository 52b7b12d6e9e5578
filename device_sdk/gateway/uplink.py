"""The gateway's one MQTT 5 connection, under its own identity, over TLS with the fleet's CA.

The session is persistent (``clean_start=False`` and a session expiry), so offers and chunks
published for the children while the gateway is away wait at the broker. paho reconnects by
itself; every subscription the bridge asked for is made again on each connect, since the
broker drops the session's grants when an operator adds a child (a new session is checked
against the new roles).

With a :class:`~device_sdk.gateway.presence.GatewayPresence` the connection carries the gateway's
own last will (its offline status, retained, on ``fleet/v1/{gateway}/status``) and publishes its
online status, retained, on every connect; :meth:`Uplink.stop` publishes the offline status
itself, since a clean DISCONNECT discards the will.

Threading: paho's network thread runs the callbacks; :meth:`Uplink.publish`,
:meth:`Uplink.subscribe` and :meth:`Uplink.unsubscribe` are safe from any thread. The message
handler must not raise (an exception inside a paho callback kills its thread), so it is
wrapped here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.gateway.presence import GatewayPresence
from device_sdk.mqtt import BrokerEndpoint, Will, connect, new_client

__all__ = ["CREDENTIAL_REFUSED", "Uplink"]

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
# CONNACK reasons that mean the credential itself is wrong: retrying cannot help.
CREDENTIAL_REFUSED = frozenset({134, 135})

MessageHandler = Callable[[str, bytes], None]


class Uplink:
    """One paho client: QoS 1 publishes with their PUBACKs counted, subscriptions kept."""

    def __init__(self, url: str, username: str, password: str, *, ca_pem: str = "",
                 client_id: str | None = None, keepalive: int = 30,
                 presence: GatewayPresence | None = None) -> None:
        self.endpoint = BrokerEndpoint.parse(url)  # ValueError naming what is wrong
        self.host, self.port = self.endpoint.host, self.endpoint.port
        self.keepalive = keepalive
        self.presence = presence
        self.on_message: MessageHandler = lambda topic, payload: None
        self.connected = threading.Event()
        self.credential_refused = threading.Event()
        self.counters: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # topic -> publishes the broker refused
        self._filters: set[str] = set()
        self._in_flight: dict[int, str] = {}
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() returning
        self._lock = threading.Lock()
        # The client id is the username: dynsec binds it, so nobody else can take the session.
        # The will: published by the broker when the connection ends without a DISCONNECT
        # (crash, power cut, lost network): the server then marks the children offline.
        will = (Will(presence.topic, presence.offline, qos=1, retain=True)
                if presence is not None else None)
        self.client = new_client(self.endpoint, client_id=client_id or username,
                                 username=username, password=password, ca_pem=ca_pem or None,
                                 reconnect_delay=(0.2, 10), will=will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until :meth:`stop`."""
        connect(self.client, self.endpoint, keepalive=self.keepalive, clean_start=False,
                session_expiry_s=SESSION_EXPIRY_S, background=True)

    def stop(self, timeout: float = 3.0) -> None:
        """Publish the offline status (when connected), disconnect cleanly, stop the thread.

        A clean DISCONNECT makes the broker drop the will, so the offline status is sent
        explicitly, waiting up to ``timeout`` seconds for its PUBACK.
        """
        if self.presence is not None and self.connected.is_set():
            self.publish(self.presence.topic, self.presence.offline, retain=True)
            self.flush(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected; return False on timeout or a refused credential."""
        return self.connected.wait(timeout) and not self.credential_refused.is_set()

    def flush(self, timeout: float) -> bool:
        """Wait until every publish so far is acknowledged; return False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return True
            time.sleep(0.02)
        return False

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1; paho holds it while disconnected and sends it on reconnect."""
        # Not under our lock: paho calls on_publish holding its own message lock, which
        # publish() takes too. The PUBACK may thus come first; it then waits in _early.
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._in_flight[info.mid] = topic
        self.counters["published"] += 1
        if early is not None:
            self._acknowledged(topic, early)

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe now (if connected) and on every later connect."""
        with self._lock:
            if topic_filter in self._filters:
                return
            self._filters.add(topic_filter)
        if self.connected.is_set():
            self.client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving ``topic_filter``."""
        with self._lock:
            if topic_filter not in self._filters:
                return
            self._filters.discard(topic_filter)
        if self.connected.is_set():
            self.client.unsubscribe(topic_filter)

    @property
    def filters(self) -> set[str]:
        """Return the filters subscribed (or to subscribe at the next connect)."""
        with self._lock:
            return set(self._filters)

    # paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    properties: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the gateway's login: %s", rc)
            if rc.value in CREDENTIAL_REFUSED:
                self.credential_refused.set()
            return
        with self._lock:
            filters = sorted(self._filters)
        if filters:
            client.subscribe([(f, 1) for f in filters])
        if self.presence is not None:
            # Before the children's statuses that paho resends: the gateway is back first.
            self.publish(self.presence.topic, self.presence.online(), retain=True)
        self.counters["connects"] += 1
        log.info("gateway connected to %s:%d (%d subscriptions)", self.host, self.port,
                 len(filters))
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       properties: Any) -> None:
        self.connected.clear()
        if rc.value != 0:
            # 0x98 after an operator added a child: the new session gets the new grants.
            log.info("gateway disconnected (%s); reconnecting", rc)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    properties: Any) -> None:
        with self._lock:
            topic = self._in_flight.pop(mid, None)
            if topic is None:
                self._early[mid] = rc
                return
        self._acknowledged(topic, rc)

    def _acknowledged(self, topic: str, rc: ReasonCode) -> None:
        if rc.is_failure and self.presence is not None and topic == self.presence.topic:
            self.refused[topic] += 1
            self.counters["status_refused"] += 1
            # The broker would drop the will on that topic just as silently.
            log.error("broker refused the gateway's own status on %s (%s): its role lacks the "
                      "grant, so the fleet is not told when this gateway dies; re-provision it "
                      "(POST /api/v1/gateways/)", topic, rc)
        elif rc.is_failure:
            self.refused[topic] += 1
            self.counters["refused"] += 1
            log.warning("broker refused the publish on %s: %s (is that MCU our child?)", topic,
                        rc)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Any) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                self.counters["subscribe_refused"] += 1
                log.warning("broker refused a subscription of the gateway: %s", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.on_message(message.topic, bytes(message.payload))
        except Exception:  # never let it kill paho's network thread
            log.exception("could not handle a message on %s", message.topic)
