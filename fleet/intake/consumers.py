"""What the worker does with each kind of device message: one ``consume`` per channel.

Two stages, so the worker can overlap them (``MqttWorker``): ``prepare`` routes a batch and
decodes its event messages (CPU only, no writes); ``commit`` stores them and runs the other
channels' consumers. Every consumer is idempotent: a redelivered message changes nothing the
first copy did not.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import close_old_connections

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import Status, decode_status
from device_sdk.protocol.topics import Channel, parse_device_topic
from fleet.devices.presence import apply_gateway_status, apply_statuses
from fleet.intake.directory import DeviceDirectory
from fleet.intake.messages import (
    Rejected,
    decode_event_message,
    decode_from_device,
    record_rejections,
)
from fleet.intake.worker import Received
from fleet.telemetry.ingest import Accepted, StagedBatches, stage_batches, store_staged

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A batch routed and decoded by ``Consumers.prepare``, waiting for ``Consumers.commit``."""

    events: list[Accepted] = field(default_factory=list)
    staged: StagedBatches | None = None  # the events' rows, rollups and COPY payloads
    events_received_at: datetime | None = None  # the last event message's arrival
    grouped: dict[Channel, list[tuple[str, Received]]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


class Consumers:
    """Route a batch of received messages to the consumer of their channel; count outcomes."""

    def __init__(self) -> None:
        self.directory = DeviceDirectory()
        self.counters: Counter[str] = Counter()
        self._by_channel: dict[Channel, Callable[[list[tuple[str, Received]]], list[Rejected]]] = {
            Channel.STATUS: self.consume_status,
        }

    def register(self, channel: Channel,
                 consumer: Callable[[list[tuple[str, Received]]], list[Rejected]]) -> None:
        """Add the consumer of another channel (the OTA service registers its own)."""
        self._by_channel[channel] = consumer

    def __call__(self, batch: list[Received]) -> None:
        """Handle a batch in one go: ``commit(prepare(batch))``."""
        self.commit(self.prepare(batch))

    def prepare(self, batch: list[Received]) -> Prepared:
        """Route and decode a batch without writing anything (the worker's main thread).

        Event batches, the bulk of the stream, are checked and decoded here so that the worker
        can decode the next batch while ``commit`` of this one waits for the database.
        """
        prepared = Prepared()
        routed = []
        for msg in batch:
            try:
                routed.append((parse_device_topic(msg.topic), msg))
            except ProtocolError as exc:
                prepared.rejected.append(Rejected(msg.topic, "", exc.reason, exc.detail,
                                                  msg.payload))
        self.directory.prefetch({topic.uid for topic, _ in routed})
        for topic, msg in routed:
            if topic.channel is Channel.EVENTS:
                outcome = decode_event_message(msg.topic, topic.uid, msg.payload, self.directory)
                if isinstance(outcome, Accepted):
                    prepared.events.append(outcome)
                else:
                    prepared.rejected.append(outcome)
                prepared.events_received_at = msg.received_at
            else:
                prepared.grouped.setdefault(topic.channel, []).append((topic.uid, msg))
        if prepared.events:
            prepared.staged = stage_batches(prepared.events)
        return prepared

    def commit(self, prepared: Prepared) -> None:
        """Store what ``prepare`` decoded, one transaction per kind; safe to call again."""
        close_old_connections()  # a long-running process must not keep a dead connection
        rejected = list(prepared.rejected)
        if prepared.staged is not None:
            assert prepared.events_received_at is not None
            result = store_staged(prepared.staged, prepared.events_received_at)
            self.counters["batches_stored"] += result.batches
            self.counters["events_stored"] += result.events
            self.counters["batches_duplicate"] += result.duplicates
            rejected += [Rejected(a.topic, a.uid, Reason.SEQUENCE_REUSED,
                                  f"seq {a.message.seq} was stored before with other content",
                                  a.payload) for a in result.reused]
        for channel, items in prepared.grouped.items():
            consumer = self._by_channel.get(channel)
            if consumer is None:
                rejected += [Rejected(m.topic, uid, Reason.SCHEMA_MISMATCH,
                                      f"no consumer for {channel}", m.payload) for uid, m in items]
                continue
            rejected += consumer(items)
        if rejected:
            record_rejections(rejected)
            for r in rejected:
                self.counters[f"rejected_{r.reason.name.lower()}"] += 1
            log.warning("refused %d messages (first: %s from %r: %s)", len(rejected),
                        rejected[0].reason.name, rejected[0].uid, rejected[0].detail)

    def consume_status(self, items: list[tuple[str, Received]]) -> list[Rejected]:
        """Apply presence and capabilities, in arrival order.

        Devices' statuses are applied together (``apply_statuses``: a fleet connecting or a
        wave activating its model sends thousands at once). A serial gateway's own status
        (its uid is a gateway's, not a device's) sets its presence; offline, its children's
        too (``apply_gateway_status``): the device statuses before it are applied first, so
        the order of a child's status and its gateway's will stays as it arrived.
        """
        rejected: list[Rejected] = []
        pending: list[tuple[int, Status, datetime]] = []
        for uid, msg in items:
            outcome = decode_from_device(msg.topic, uid, msg.payload, decode_status,
                                         self.directory)
            if isinstance(outcome, Rejected) and outcome.reason is Reason.UNKNOWN_DEVICE:
                self._apply_devices(pending)
                try:  # the status decoded: is it a gateway's?
                    gateway = apply_gateway_status(uid, decode_status(msg.payload),
                                                   msg.received_at)
                except ProtocolError as exc:  # a revoked gateway
                    outcome = Rejected(msg.topic, uid, exc.reason, exc.detail, msg.payload)
                else:
                    if gateway is not None:
                        self.counters["gateway_status_applied"] += 1
                        continue
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
                continue
            status, device = outcome
            pending.append((device.id, status, msg.received_at))
        self._apply_devices(pending)
        return rejected

    def _apply_devices(self, pending: list[tuple[int, Status, datetime]]) -> None:
        """Apply and count the device statuses collected so far; empty ``pending``."""
        if pending:
            apply_statuses(pending)
            self.counters["status_applied"] += len(pending)
            pending.clear()
