"""The fleet worker's MQTT side: shared subscriptions in, batched handling, ack after commit.

Threading: paho's network thread only appends received messages to a queue (an exception
inside a paho callback would kill that thread). The main thread drains the queue in batches
and has the handler ``prepare`` each one (decode, no writes); a store thread ``commit``s
them in order (one transaction per kind) and only then acknowledges the messages
(``manual_ack``). The two overlap: the next batch is decoded while the database takes this
one, and at most one prepared batch waits for the store thread. A crash before the ack makes
the broker redeliver; the consumers are idempotent, so nothing is stored twice.

Several workers may run: they share ``$share/<group>/...`` subscriptions and each keeps a
persistent session under its own stable client id, so a restarted worker gets back what it
had not acknowledged.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from device_sdk.protocol.topics import Channel, shared_filter
from fleet.intake.receive import WorkerClient

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
T = TypeVar("T")


class RetireInterrupted(RuntimeError):
    """The connection of a retiring worker dropped (taken over by a worker of that name)."""


@dataclass
class Received:
    """A message waiting to be handled and acknowledged."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime
    connection: int = 0  # which connection of the worker delivered it (MqttWorker.connection)


@dataclass
class WorkerConfig:
    """Where and who the worker is."""

    mqtt_url: str
    username: str
    password: str
    name: str = field(default_factory=lambda: f"worker-{socket.gethostname()}")
    group: str = "fleet"
    channels: tuple[Channel, ...] = (Channel.EVENTS, Channel.STATUS, Channel.OTA_GET,
                                     Channel.OTA_REPORT)
    batch_max: int = 2000
    batch_wait_s: float = 0.05
    ca_certs: str | None = None


class Handler(Protocol):
    """What the worker hands batches to: two stages, so that they can overlap."""

    def prepare(self, batch: list[Received]) -> Any:
        """Route and decode a batch; write nothing (runs on the worker's main thread)."""

    def commit(self, prepared: Any) -> None:
        """Store a prepared batch; idempotent, retried until it succeeds (store thread)."""


class MqttWorker:
    """Consume device messages from shared subscriptions and ack them after ``handle`` returns."""

    def __init__(self, config: WorkerConfig, handle: Handler, *, reconnect: bool = True) -> None:
        """``reconnect=False``: after a lost connection, stay away (a drainer, see retire)."""
        self.config = config
        self.handle = handle
        self.inbox: queue.Queue[Received] = queue.Queue()
        # Prepared batches for the store thread; one waits while another is being stored.
        self.prepared: queue.Queue[tuple[list[Received], Any] | None] = queue.Queue(maxsize=1)
        self.store_thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connection = 0  # counts connections; see _on_connect
        self.retiring = False  # see retire(): unsubscribe on connect instead of subscribing
        self.unsubscribed = threading.Event()
        self.stopping = threading.Event()
        self.lost = threading.Event()  # the connection dropped (e.g. taken over) after connecting
        self.endpoint = BrokerEndpoint.parse(config.mqtt_url)
        self.host, self.port = self.endpoint.host, self.endpoint.port
        # Many messages in flight (max_inflight): the consumer batches, and acks arrive after
        # the commit (manual_ack).
        self.client = cast(WorkerClient, new_client(
            self.endpoint, client_id=config.name, username=config.username,
            password=config.password, ca_certs=config.ca_certs, manual_ack=True,
            max_inflight=1000, reconnect_delay=(1, 30), reconnect_on_failure=reconnect,
            client_class=WorkerClient,
        ))
        self.client.on_plain_message = self._on_plain_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = lambda *args: self.unsubscribed.set()

    # paho callbacks: never raise ---------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: object, properties: object) -> None:
        try:
            if getattr(reason, "is_failure", False):
                log.error("broker refused the worker %s: %s", self.config.name, reason)
                return
            # Packet ids belong to one connection: an ack for a message of an earlier one could
            # hit a new, not yet stored message that happens to reuse its id (after a broker
            # restart without the session). Those are left unacked; the broker sends them again
            # if it still has them, and the dedupe key absorbs the copy.
            self.connection += 1
            subs = [(shared_filter(self.config.group, ch), 1) for ch in self.config.channels]
            if self.retiring:
                # The session keeps its subscriptions; drop them so that no new share comes,
                # while the broker still delivers what it queued for this session.
                client.unsubscribe([s for s, _ in subs])
                self.connected.set()
                log.info("worker %s retiring: leaving %s", self.config.name,
                         ", ".join(s for s, _ in subs))
                return
            client.subscribe(subs)
            self.connected.set()
            log.info("worker %s connected to %s:%s, subscribed to %s", self.config.name,
                     self.host, self.port, ", ".join(s for s, _ in subs))
        except Exception:
            log.exception("on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: list[Any], properties: object) -> None:
        try:
            refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
            if refused:
                # An ACL without the full $share/<group>/<filter> refuses it: nothing arrives.
                log.error("broker refused subscriptions of worker %s: %s", self.config.name,
                          ", ".join(refused))
            else:
                log.info("worker %s: subscriptions granted", self.config.name)
        except Exception:
            log.exception("on_subscribe failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason: object, properties: object) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            self.lost.set()
            log.warning("worker %s lost the broker (%s); reconnecting", self.config.name, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:  # a PUBLISH with properties (WorkerClient hands plain ones to the method below)
            self.inbox.put(Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                                    datetime.now(UTC), self.connection))
        except Exception:
            log.exception("could not queue a message on %s", getattr(msg, "topic", "?"))

    def _on_plain_publish(self, client: mqtt.Client, topic: str, payload: bytes, mid: int,
                          qos: int) -> None:
        try:
            self.inbox.put(Received(topic, payload, mid, qos, datetime.now(UTC),
                                    self.connection))
        except Exception:
            log.exception("could not queue a message on %s", topic)

    # main thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (persistent session) and start paho's network thread."""
        # receive_maximum: unacknowledged deliveries the broker may have out to us. Acks wait
        # for the commit, so the broker's default (Mosquitto's max_inflight_messages, 100) would
        # stall the stream at every batch; three batches' worth covers one being stored, one
        # prepared and waiting, and the next arriving.
        connect(self.client, self.endpoint, keepalive=30, clean_start=False,
                session_expiry_s=SESSION_EXPIRY_S,
                receive_maximum=min(3 * self.config.batch_max, 65_535), background=True)
        if self.store_thread is None:
            self.store_thread = threading.Thread(target=self._store_loop, daemon=True,
                                                 name="store")
            self.store_thread.start()

    def run_once(self, timeout_s: float = 1.0) -> int:
        """Handle one batch (waiting up to ``timeout_s`` for the first message); return its size."""
        try:
            first = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return 0
        batch = [first]
        deadline = time.monotonic() + self.config.batch_wait_s
        get_nowait = self.inbox.get_nowait
        while len(batch) < self.config.batch_max:
            try:  # what is already queued, without a timed wait per message
                batch.append(get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.inbox.get(timeout=remaining))
            except queue.Empty:
                break
        prepared = self._until_done(lambda: self.handle.prepare(batch), len(batch))
        self.prepared.put((batch, prepared))  # waits while the store thread is a batch behind
        return len(batch)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every prepared batch is stored and acknowledged; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.prepared.all_tasks_done:
            while self.prepared.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.prepared.all_tasks_done.wait(remaining)
        return True

    def _store_loop(self) -> None:
        """Commit prepared batches in arrival order, acknowledging each after its commit."""
        from django.db import connection

        try:
            while (item := self.prepared.get()) is not None:
                batch, prepared = item
                try:
                    self._until_done(lambda p=prepared: self.handle.commit(p), len(batch))
                    current = self.connection
                    self.client.ack_many(msg.mid for msg in batch
                                         if msg.qos == 1 and msg.connection == current)
                    for msg in batch:  # QoS 2 (no device sends it): paho's own
                        if msg.qos == 2 and msg.connection == current:
                            self.client.ack(msg.mid, msg.qos)
                finally:
                    self.prepared.task_done()
        except Exception:
            log.exception("store thread of worker %s stopped", self.config.name)
        finally:
            connection.close()  # this thread's own database connection

    def _until_done(self, step: Callable[[], T], size: int) -> T:
        """Retry a failing step (database down or locked) rather than ack what is not stored."""
        delay = 0.5
        while True:
            try:
                return step()
            except Exception:
                if self.stopping.is_set():
                    raise
                log.exception("handling %d messages failed; retrying in %.1f s", size, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish to devices (thread-safe; paho queues while the broker is away)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def retire(self, quiet_s: float = 2.0, timeout_s: float = 600.0) -> int:
        """Leave the group for good; return the number of messages handled meanwhile.

        A stopped worker's session outlives it (SESSION_EXPIRY_S) and Mosquitto goes on
        queueing a share of the stream for it. Retiring resumes the session, unsubscribes (no
        new share), stores what the session still held until nothing came for ``quiet_s``,
        then disconnects with a session expiry of 0 so the broker forgets the session.

        Raises RetireInterrupted if the connection drops meanwhile: with ``reconnect=False``
        (the automatic drain) that is how a worker coming back under the name ends the retire
        (its connection takes the session over); what was stored stays stored, what was not
        acknowledged the broker hands to the returning worker (the dedupe keys absorb copies).
        """
        self.retiring = True
        self.start()
        deadline = time.monotonic() + timeout_s
        while not self.unsubscribed.wait(0.2):
            self._check_retire(deadline)
        handled, last = 0, time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            if self.lost.is_set():
                self._abandon()
                raise RetireInterrupted(f"worker {self.config.name}: connection lost while "
                                        f"retiring ({handled} messages stored)")
            got = self.run_once(timeout_s=min(quiet_s, 0.5))
            if got:
                handled, last = handled + got, time.monotonic()
        self.flush()
        self._stop_store_thread()
        self.stopping.set()
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
        log.info("worker %s retired: %d queued messages stored, session ended",
                 self.config.name, handled)
        return handled

    def _check_retire(self, deadline: float) -> None:
        """Give up retiring once the connection was lost or the time ran out."""
        if self.lost.is_set():
            self._abandon()
            raise RetireInterrupted(f"worker {self.config.name}: connection lost while retiring")
        if time.monotonic() > deadline:
            self._abandon()
            raise TimeoutError(f"worker {self.config.name}: no UNSUBACK from the broker")

    def _abandon(self) -> None:
        """Stop without ending the session: store what was prepared, drop the connection."""
        self.flush(15.0)
        self.stopping.set()
        self._stop_store_thread()
        self.client.disconnect()
        self.client.loop_stop()

    def stop(self, flush_timeout_s: float = 30.0) -> None:
        """Store what was prepared, then disconnect (unacked messages stay with the broker)."""
        if not self.flush(flush_timeout_s):
            log.warning("worker %s: stopping with batches not stored (the broker keeps them)",
                        self.config.name)
        self.stopping.set()
        self._stop_store_thread()
        self.client.disconnect()
        self.client.loop_stop()

    def _stop_store_thread(self) -> None:
        if self.store_thread is None:
            return
        try:  # the stop marker; a store thread stuck retrying ends once ``stopping`` is set
            self.prepared.put(None, timeout=1.0)
        except queue.Full:
            pass
        self.store_thread.join(timeout=15.0)
        self.store_thread = None
