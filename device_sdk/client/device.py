"""The device client: one enrolled device's status, telemetry and OTA messages over MQTT.

A :class:`DeviceClient` ties together a :class:`~device_sdk.mqtt.link.Link` (the MQTT 5 connection,
TLS, reconnect with back-off, last will), an :class:`~device_sdk.client.batching.EventBatcher` (events
into batches or summaries, with persisted sequence numbers) and an
:class:`~device_sdk.client.outbox.Outbox` (every message on disk until the broker's PUBACK).

Threading model
---------------
Each client runs on a :class:`~device_sdk.mqtt.reactor.Reactor`: its own (one thread, started by
:meth:`DeviceClient.start`) or one shared with other clients (the simulator runs hundreds of
clients per reactor). On that *network thread* run all socket I/O, all paho calls, the batch
age timer, and every callback below. The application calls :meth:`record`, :meth:`flush`,
:meth:`set_model`, :meth:`update_status` and the ``wait_*`` methods from any thread;
:meth:`start` and :meth:`stop` from an application thread (not from a callback).

Callbacks (attributes, set before :meth:`start`; each runs on the network thread, must return
quickly, and any exception it raises is logged and swallowed)::

    on_connect(client, session_present)   the broker accepted the connection; status is out
    on_disconnect(client, reason)          the connection dropped or an attempt failed
    on_message(client, topic, payload)     an OTA offer or chunk arrived (size-checked)
    on_acked(client, seq)                  the broker acknowledged the message with this seq
    on_refused(client, reason_code)        the broker refused the credential (CONNACK 0x86/0x87):
                                           re-enroll (elsewhere: it blocks) and call
                                           :meth:`DeviceClient.use_identity`

Delivery: a message is in the outbox before it is published and leaves it on PUBACK; after a
reconnect, or a restart, the outbox is sent again in order from its oldest entry. A message may
thus reach the server twice with the same ``seq``, which the server dedupes, but never out of
order within one connection and never lost while the outbox has room.

Topics: batches and OTA requests use MQTT 5 topic aliases when the broker offers them, so after
the first of a connection their topic costs 5 bytes instead of ~38; the resend after a
reconnect names the topic again, because aliases die with their connection
(:mod:`device_sdk.mqtt.link`). The retained status keeps its full topic, as the will must.

Status: the first status of each connection carries the capabilities; later ones on the same
connection (:meth:`DeviceClient.set_model` after an OTA update, :meth:`update_status`) leave
them out, which the protocol reads as "unchanged" (``device_sdk/protocol/CDDL.md``): they change
only with the firmware, so never within one connection, and the server already has them.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device_sdk.client.batching import EventBatcher, Message, SequenceCounter
from device_sdk.client.identity import DeviceIdentity
from device_sdk.client.outbox import Outbox, OutboxEntry
from device_sdk.mqtt.backoff import Backoff
from device_sdk.mqtt.config import (
    BrokerEndpoint,
    LinkConfig,
    Will,
    shared_tls_context,
    tls_context,
)
from device_sdk.mqtt.link import Link, WireTally
from device_sdk.mqtt.reactor import Reactor, Timer
from device_sdk.protocol.events import Event, EventBatch
from device_sdk.protocol.reasons import ProtocolError
from device_sdk.protocol.status import (
    OFFLINE_PAYLOAD,
    Capabilities,
    LinkState,
    Status,
    encode_status,
)
from device_sdk.protocol.topics import (
    DEVICE_SUBSCRIBES,
    PAYLOAD_CAPS,
    Channel,
    PackageChannel,
    device_topic,
    parse_topic,
)

__all__ = ["ClientStats", "DeviceClient"]

log = logging.getLogger(__name__)
# PUBACK reason 16: accepted, but no subscriber matched (the server's workers are away).
NO_MATCHING_SUBSCRIBERS = 0x10
RETRY_UNCONSUMED_S = 5.0

OUTBOX_FILE = "outbox.sqlite3"
SEQUENCE_FILE = "sequence"
_TICK_S = 1.0  # batch age resolution
@dataclass
class ClientStats:
    """Counters of one client since it was created (``pending``/``dropped``: the outbox's)."""

    events: int = 0  # events put in the outbox (in batches or summaries)
    messages: int = 0  # batches or summaries put in the outbox
    published: int = 0  # publishes sent, retransmissions included
    acked: int = 0  # messages the broker acknowledged
    rejected: int = 0  # messages the broker refused (PUBACK >= 0x80): removed, logged
    connects: int = 0
    pending: int = 0
    dropped: int = 0


class DeviceClient:
    """Connect one enrolled device to the fleet and deliver its telemetry reliably."""

    on_connect: Callable[[DeviceClient, bool], None] | None = None
    on_disconnect: Callable[[DeviceClient, str], None] | None = None
    on_message: Callable[[DeviceClient, str, bytes], None] | None = None
    on_acked: Callable[[DeviceClient, int], None] | None = None
    on_refused: Callable[[DeviceClient, int], None] | None = None

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        state_dir: str | Path,
        capabilities: Capabilities,
        model: int = 0,
        manifest_seq: int = 0,
        reactor: Reactor | None = None,
        ssl_context: ssl.SSLContext | None = None,
        broker_url: str | None = None,
        batch_events: int = 32,
        batch_age_s: float = 30.0,
        summary_window_s: int | None = None,
        num_labels: int | None = None,
        outbox_entries: int = 10_000,
        outbox_bytes: int = 16 * 1024 * 1024,
        durable: bool = True,
        backoff: Backoff | None = None,
        keepalive: int = 60,
        session_expiry_s: int = 7 * 86_400,
        inflight: int = 8,
        tally: WireTally | None = None,
    ) -> None:
        """Prepare the client; nothing touches the network before :meth:`start`.

        ``model`` is the package id of the installed OTA package (manifest key 14), 0 for a
        factory model; ``manifest_seq`` the installed manifest's sequence. ``broker_url``
        overrides the enrolled URL; ``reactor`` shares a network thread with other clients;
        ``tally`` counts the MQTT bytes of this client's packets by kind (benches).
        """
        self.identity = identity
        self.uid = identity.device_id
        self.capabilities = capabilities
        self.state_dir = Path(state_dir)
        self.manifest_seq = manifest_seq
        # Ids of the OTA signing keys the device trusts, for its status (None: not reported);
        # the OTA agent keeps it current.
        self.trusted_kids: tuple[bytes, ...] | None = None
        self.stats = ClientStats()
        self._started_at = time.monotonic()
        self._owns_reactor = reactor is None
        # One device's connects are news; a simulated fleet's thousand are noise.
        self._chatter = logging.INFO if self._owns_reactor else logging.DEBUG
        self.reactor = reactor or Reactor(f"device-{self.uid}")
        self.outbox = Outbox(
            self.state_dir / OUTBOX_FILE, max_entries=outbox_entries, max_bytes=outbox_bytes,
            durable=durable,
        )
        self.batcher = EventBatcher(
            self._enqueue,
            SequenceCounter(self.state_dir / SEQUENCE_FILE, durable=durable,
                            floor=self.outbox.seq_floor),
            model=model, max_events=batch_events, max_age_s=batch_age_s,
            summary_window_s=summary_window_s, num_labels=num_labels,
        )
        self.events_topic = device_topic(self.uid, Channel.EVENTS)
        self.status_topic = device_topic(self.uid, Channel.STATUS)
        endpoint = BrokerEndpoint.parse(broker_url or identity.mqtt.url)
        certified = bool(identity.mqtt.cert_file)  # X.509 broker access: no password
        if endpoint.tls and ssl_context is None:
            ssl_context = (tls_context(identity.mqtt.ca_file, identity.mqtt.cert_file,
                                       identity.mqtt.key_file) if certified
                           else shared_tls_context(identity.mqtt.ca_file))
        config = LinkConfig(
            endpoint=endpoint,
            client_id=self.uid,  # the broker binds the client id to the username
            username=identity.mqtt.username,
            password=None if certified else identity.mqtt.credential,
            ssl_context=ssl_context,
            will=Will(self.status_topic, OFFLINE_PAYLOAD),
            subscriptions=tuple(sorted(device_topic(self.uid, c) for c in DEVICE_SUBSCRIBES)),
            keepalive=keepalive,
            session_expiry_s=session_expiry_s,
            max_inflight=max(inflight, 1) + 2,  # room for the status and a subscribe
            log_transitions=self._owns_reactor,
        )
        self.link = Link(config, self.reactor, self, backoff=backoff, tally=tally)
        self._window = max(inflight, 1)
        self._inflight: dict[int, OutboxEntry] = {}  # message id -> entry (network thread)
        self._cursor = 0  # highest outbox id sent on this connection (network thread)
        self._capabilities_sent = False  # on this connection's status (network thread)
        self._up = threading.Event()
        self._drained = threading.Condition()
        self._tick: Timer | None = None
        self._ticking = False  # an age check is scheduled (none while no batch is open)
        self._channels: dict[str, Channel | PackageChannel] = {}  # topics heard, parsed

    # -- lifecycle (application thread) ---------------------------------------------------

    def start(self) -> None:
        """Start connecting (and the network thread, if this client owns its reactor)."""
        if self._owns_reactor:
            self.reactor.start()
        self._ticking = True
        self.reactor.call_soon(self._schedule_tick)
        self.link.start()

    def stop(self, timeout: float = 10.0, *, drain: bool = True) -> None:
        """Flush the open batch, wait up to ``timeout`` for the outbox to drain, disconnect.

        The broker then publishes the offline status (the will). Messages not yet
        acknowledged stay in the outbox for the next start.
        """
        deadline = time.monotonic() + timeout
        self.flush()
        if drain and self.connected:
            self.wait_drained(max(0.0, deadline - time.monotonic()))
        self.close(max(0.5, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect without flushing or draining, and release the outbox."""
        if self._tick is not None:
            self._tick.cancel()
        self.link.stop()
        self.link.stopped.wait(timeout)
        if self._owns_reactor:
            self.reactor.stop()
            self.reactor.close()
        self.outbox.close()

    # -- telemetry (any thread) -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Say whether the broker currently accepts this device's connection."""
        return self._up.is_set()

    @property
    def model(self) -> int:
        """Return the package id stamped on events and status (0: factory model)."""
        return self.batcher.model

    def record(self, event: Event) -> None:
        """Add one inference event; it is sent once its batch closes. Raises ProtocolError
        for an event the wire format cannot carry (a clock before 2020, a label >= 1024)."""
        self.batcher.add(event)
        if not self._ticking:
            # A batch is open now: wake the age check, which sleeps while there is none.
            self._ticking = True
            self.reactor.call_soon(self._schedule_tick)

    def flush(self) -> None:
        """Close the open batch (or summary window) now, so it is queued for sending."""
        self.batcher.flush()

    def set_model(self, package_id: int, *, manifest_seq: int | None = None) -> None:
        """Switch to a newly installed package: flush, stamp it from now on, update status."""
        self.batcher.set_model(package_id)
        if manifest_seq is not None:
            self.manifest_seq = manifest_seq
        self.update_status()

    def update_status(self) -> None:
        """Publish the retained status again (after a model change, say) if connected."""
        self.reactor.call_soon(self._publish_status)

    def publish(self, channel: Channel, payload: bytes) -> None:
        """Publish an OTA chunk request or report (QoS 1) if connected, else drop it.

        Not telemetry: these skip the outbox, because the OTA state machine asks again for
        what it still needs after a reconnect, and a stale request is worse than none.
        """
        topic = device_topic(self.uid, channel)
        # Chunk requests come one per chunk: the alias saves more than the request weighs.
        self.reactor.call_soon(lambda: self.link.publish(topic, payload, qos=1, alias=True))

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Also receive ``topic_filter`` (a package's fan-out, say) on :attr:`on_message`."""
        self.link.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving a filter added with :meth:`subscribe`."""
        self.link.unsubscribe(topic_filter)

    def use_identity(self, identity: DeviceIdentity) -> None:
        """Take a re-enrolled identity's credential for the next connection attempt."""
        if identity.device_id != self.uid:
            raise ValueError(f"identity of {identity.device_id}, not {self.uid}")
        self.identity = identity
        self.link.set_credentials(identity.mqtt.username,
                                  None if identity.mqtt.cert_file else identity.mqtt.credential)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the broker accepted the connection; return whether it did in time."""
        return self._up.wait(timeout)

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is acknowledged; return whether it was in time."""
        with self._drained:
            return self._drained.wait_for(lambda: len(self.outbox) == 0, timeout)

    def snapshot(self) -> ClientStats:
        """Return a copy of the counters with the outbox figures filled in."""
        s = self.stats
        return ClientStats(s.events, s.messages, s.published, s.acked, s.rejected,
                           self.link.connects, len(self.outbox), self.outbox.dropped)

    def status(self, state: LinkState = LinkState.ONLINE, *,
               with_capabilities: bool = True) -> Status:
        """Return the status this device publishes, with or without its capabilities."""
        return Status(
            state=state,
            model=self.model,
            slot=0,
            uptime_s=int(time.monotonic() - self._started_at),
            free_ram=_free_ram(),
            seq=self.manifest_seq,
            capabilities=self.capabilities if with_capabilities else None,
            keys=self.trusted_kids,
        )

    # -- internals ------------------------------------------------------------------------

    def _enqueue(self, message: Message, payload: bytes) -> None:
        """Batcher sink: persist first, then ask the network thread to send."""
        self.outbox.put(message.seq, payload)
        # The batcher calls its sink under its lock: these counters have one writer at a time.
        self.stats.messages += 1
        self.stats.events += len(message.events) if isinstance(message, EventBatch) else message.total
        if self.reactor.in_reactor_thread():
            self._pump()
        else:
            self.reactor.call_soon(self._pump)

    def _schedule_tick(self) -> None:
        # One chain of age checks only: record() before start(), or a record() racing
        # _on_tick's two checks, may ask for a second one; stop() cancels just self._tick.
        if self._tick is not None:
            self._tick.cancel()
        self._tick = self.reactor.call_later(_TICK_S, self._on_tick)

    def _on_tick(self) -> None:
        if self.link.stopped.is_set():
            return
        try:
            self.batcher.poll()
        finally:  # a sink that raised must not end the checks
            if not self.batcher.pending_events:
                # Nothing to age: stop ticking (a fleet of idle devices would otherwise wake
                # each one every second) until record() opens a batch. Checked again after
                # clearing the flag: an event recorded in between saw it set and scheduled none.
                self._ticking = False
            if self.batcher.pending_events:
                self._ticking = True
                self._schedule_tick()

    def _pump(self) -> None:
        """Send outbox entries in order while the in-flight window has room."""
        room = self._window - len(self._inflight)
        if room <= 0 or not self.link.connected:
            return
        for entry in self.outbox.pending(after_id=self._cursor, limit=room):
            mid = self.link.publish(self.events_topic, entry.payload, qos=1, alias=True)
            if mid is None:
                return
            self._inflight[mid] = entry
            self._cursor = entry.id
            self.stats.published += 1

    def _publish_status(self) -> None:
        # Full topic, no alias: retained and sent about once per connection, like the will.
        if not self.link.connected:
            return
        status = self.status(with_capabilities=not self._capabilities_sent)
        if self.link.publish(self.status_topic, encode_status(status), retain=True) is not None:
            # Once paho took it, QoS 1 delivers it on this connection or the next one starts
            # over with the capabilities (link_up).
            self._capabilities_sent = True

    # -- LinkListener (network thread) ----------------------------------------------------

    def link_up(self, session_present: bool) -> None:
        self._inflight.clear()
        self._cursor = 0
        self._capabilities_sent = False  # every connection's first status carries them
        self._publish_status()
        self._up.set()
        log.log(self._chatter, "%s: online (%d queued messages)", self.uid, len(self.outbox))
        self._callback(self.on_connect, session_present)
        self._pump()

    def link_down(self, reason: str) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._inflight.clear()  # unacknowledged entries are still in the outbox
        self._cursor = 0
        if was_up:
            log.log(self._chatter, "%s: offline (%s); %d messages queued",
                    self.uid, reason, len(self.outbox))
        self._callback(self.on_disconnect, reason)

    def link_message(self, topic: str, payload: bytes) -> None:
        channel = self._channels.get(topic)
        if channel is None:
            try:
                channel = parse_topic(topic).channel
            except ProtocolError as exc:
                log.warning("%s: message on an unexpected topic %r: %s", self.uid, topic, exc)
                return
            if len(self._channels) >= 16:  # a device hears a handful of topics at a time
                self._channels.clear()
            self._channels[topic] = channel
        if len(payload) > PAYLOAD_CAPS[channel]:
            log.warning("%s: %d-byte message on %s exceeds the cap: dropped",
                        self.uid, len(payload), topic)
            return
        self._callback(self.on_message, topic, payload)

    def link_published(self, mid: int, reason_code: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            if reason_code >= 0x80:
                log.warning("%s: broker refused a status publish (reason %d)", self.uid, reason_code)
            return
        if reason_code == NO_MATCHING_SUBSCRIBERS:
            # Nobody consumes events right now (a restarted broker that has not seen the
            # workers' shared subscriptions yet): keep the batch and send it again later.
            self._cursor = min(self._cursor, entry.id - 1)
            self.reactor.call_later(RETRY_UNCONSUMED_S, self._pump)
            return
        if reason_code >= 0x80:
            # Not authorized, bad payload, quota: sending it again cannot help; keep going.
            self.stats.rejected += 1
            log.error("%s: broker refused message seq %d (PUBACK reason %d): removed",
                      self.uid, entry.seq, reason_code)
        else:
            self.stats.acked += 1
        self.outbox.ack(entry.id)
        if len(self.outbox) == 0:
            with self._drained:
                self._drained.notify_all()
        self._callback(self.on_acked, entry.seq)
        self._pump()

    def link_refused(self, reason_code: int) -> None:
        if self.on_refused is None:
            log.error("%s: the broker refuses this device's credential (reason %d): enroll it "
                      "again (python -m device_sdk enroll) or check it was not revoked",
                      self.uid, reason_code)
        self._callback(self.on_refused, reason_code)

    def _callback(self, fn: Callable[..., None] | None, *args: object) -> None:
        if fn is None:
            return
        try:
            fn(self, *args)
        except Exception:  # an application bug must not break the connection
            log.exception("%s: error in application callback %r", self.uid, fn)


def _free_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
