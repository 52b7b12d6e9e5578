"""OTA delivery in the worker: chunk requests, device reports, and the package carousel.

Fan-out keeps server egress flat as the fleet grows: while devices of a package are
downloading, the server publishes the package's chunks once per pass on
``fleet/v1/pkg/{pkg}/chunk`` and the broker copies them to every subscribed device. A device
takes the chunks in order and asks ``ota/get`` only for what it missed (a repair). The path is
safe to share because every byte is checked against the signed manifest's digests.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from collections import Counter, OrderedDict
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from device_sdk.protocol.limits import MAX_CHUNK_BYTES
from device_sdk.protocol.ota_messages import (
    Chunk,
    DeploymentState,
    decode_chunk_request,
    decode_report,
    encode_chunk,
)
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.topics import Channel, PackageChannel, device_topic, package_topic
from fleet.broker.worker import Received
from fleet.devices.models import Device
from fleet.telemetry.directory import DeviceDirectory
from fleet.telemetry.ingest import Rejected, decode_from_device
from ota.models import Package
from ota.registry.storage import artifact_storage
from ota.rollouts.controller import Publisher
from ota.rollouts.models import ACTIVE_STATES, Deployment, RolloutState

log = logging.getLogger(__name__)

# States a device may report, in order; a report never moves a deployment backwards.
_PROGRESS = [DeploymentState.OFFERED, DeploymentState.DOWNLOADING, DeploymentState.VERIFIED,
             DeploymentState.INSTALLED, DeploymentState.TRIAL, DeploymentState.CONFIRMED]
_LIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


class TransferCache:
    """Package transfer bytes kept in memory, least recently used dropped first."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, bytes] = OrderedDict()

    def get(self, package_id: int) -> bytes | None:
        """Return a package's transfer bytes, loading them from storage on a miss."""
        if package_id in self._items:
            self._items.move_to_end(package_id)
            return self._items[package_id]
        digest = Package.objects.filter(pk=package_id).values_list("transfer_sha256", flat=True)
        key = digest.first()
        if key is None:
            return None
        data = artifact_storage().get(key)
        self._items[package_id] = data
        while sum(len(v) for v in self._items.values()) > self.max_bytes and len(self._items) > 1:
            self._items.popitem(last=False)
        return data


@dataclass
class _Pass:
    """Where the carousel is in a package, and when its current pass began and last ended."""

    started_at: object = None  # server time the pass began (compared with offered_at)
    offset: int = 0
    passes: int = 0
    ended_at: float = 0.0


class OtaDelivery:
    """Serve chunk requests and reports (worker consumers) and run the package carousel."""

    def __init__(self, publisher: Publisher, directory: DeviceDirectory | None = None,
                 counters: Counter[str] | None = None, carousel_bytes_per_s: int = 4_000_000,
                 carousel_chunk: int = 4096, pass_gap_s: float = 1.0,
                 join_delay_s: float = 0.5) -> None:
        self.publisher = publisher
        self.directory = directory or DeviceDirectory()
        self.cache = TransferCache()
        self.counters = counters if counters is not None else Counter()
        self.carousel_bytes_per_s = carousel_bytes_per_s
        self.carousel_chunk = carousel_chunk
        self.pass_gap_s = pass_gap_s
        self.join_delay = timedelta(seconds=join_delay_s)
        self._passes: dict[int, _Pass] = {}
        self._last_pass_tick = time.monotonic()

    # -- consumers ---------------------------------------------------------------------------

    def consume_chunk_requests(self, items: list[tuple[str, Received]]) -> list[Rejected]:
        """Answer ``[pkg, offset, length]`` from a device that was offered ``pkg``."""
        rejected: list[Rejected] = []
        for uid, msg in items:
            try:
                request = decode_chunk_request(msg.payload)
            except ProtocolError as exc:
                rejected.append(Rejected(msg.topic, uid, exc.reason, exc.detail, msg.payload))
                continue
            device = self.directory.device(uid)
            deployment = None if device is None or device.revoked else (
                Deployment.objects.filter(device_id=device.id, package_id=request.pkg,
                                          state__in=ACTIVE_STATES, rollout__state__in=_LIVE)
                .only("id", "state").first())
            if deployment is None:
                rejected.append(Rejected(msg.topic, uid, Reason.PACKAGE_NOT_OFFERED,
                                         f"package {request.pkg} not offered to {uid}",
                                         msg.payload))
                continue
            data = self.cache.get(request.pkg) or b""
            piece = data[request.offset:request.offset + min(request.length, MAX_CHUNK_BYTES)]
            self.publisher.publish(device_topic(uid, Channel.OTA_CHUNK),
                                   encode_chunk(Chunk(request.pkg, request.offset, piece)), 1)
            self.counters["ota_unicast_bytes"] += len(piece)
            self.counters["ota_chunks_served"] += 1
            Deployment.objects.filter(id=deployment.id, state=DeploymentState.OFFERED).update(
                state=DeploymentState.DOWNLOADING, state_changed_at=timezone.now())
        return rejected

    def consume_reports(self, items: list[tuple[str, Received]]) -> list[Rejected]:
        """Apply ``[pkg, state, detail]`` reports to the device's deployment of ``pkg``."""
        rejected: list[Rejected] = []
        for uid, msg in items:
            outcome = decode_from_device(msg.topic, uid, msg.payload, decode_report,
                                         self.directory)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
                continue
            report, device = outcome
            if not apply_report(device.id, report.pkg, DeploymentState(report.state),
                                report.detail):
                rejected.append(Rejected(msg.topic, uid, Reason.PACKAGE_NOT_OFFERED,
                                         f"report for package {report.pkg} not offered to {uid}",
                                         msg.payload))
            else:
                self.counters[f"ota_report_{DeploymentState(report.state).name.lower()}"] += 1
        return rejected

    # -- carousel ------------------------------------------------------------------------------

    def carousel_tick(self) -> int:
        """Publish the next chunks of the packages devices are downloading; return bytes sent.

        A pass over a package starts only when some device was offered it after the previous
        pass began (it missed that pass's start) and ``pass_gap_s`` has gone by: a wave costs a
        few passes however many devices it has; stragglers repair by request.
        """
        now = time.monotonic()
        budget = int(self.carousel_bytes_per_s * min(now - self._last_pass_tick, 1.0))
        self._last_pass_tick = now
        downloading = Deployment.objects.filter(
            state__in=(DeploymentState.OFFERED, DeploymentState.DOWNLOADING),
            rollout__state=RolloutState.RUNNING,
        )
        wanted = set(downloading.values_list("package_id", flat=True).distinct())
        for gone in set(self._passes) - wanted:
            del self._passes[gone]
        active = []
        for package_id in wanted:
            state = self._passes.get(package_id)
            if state is None or state.offset == 0:
                started = state.started_at if state else None
                if state is not None and now - state.ended_at < self.pass_gap_s:
                    continue
                # Only devices offered a moment ago: they have had time to subscribe.
                late = downloading.filter(package_id=package_id,
                                          offered_at__lte=timezone.now() - self.join_delay)
                if started is not None:
                    late = late.filter(offered_at__gt=started)
                if not late.exists():
                    continue
                state = self._passes[package_id] = _Pass(started_at=timezone.now())
            active.append(package_id)
        sent = 0
        share = budget // max(len(active), 1)
        for package_id in active:
            data = self.cache.get(package_id)
            if not data:
                continue
            state = self._passes[package_id]
            spent = 0
            while spent < share and state.offset < len(data):
                piece = data[state.offset:state.offset + self.carousel_chunk]
                # QoS 0: nothing is queued for offline devices; a lost chunk is repaired.
                self.publisher.publish(package_topic(package_id, PackageChannel.CHUNK),
                                       encode_chunk(Chunk(package_id, state.offset, piece)), 0)
                spent += len(piece)
                state.offset += len(piece)
            if state.offset >= len(data):
                state.offset = 0
                state.passes += 1
                state.ended_at = now
            sent += spent
        self.counters["ota_fanout_bytes"] += sent
        return sent


@transaction.atomic
def apply_report(device_id: int, package_id: int, state: DeploymentState, detail: int) -> bool:
    """Move a deployment forward (or to failed/rolled back); False when none matches."""
    dep = (Deployment.objects.select_for_update()
           .filter(device_id=device_id, package_id=package_id)
           .order_by("-id").first())
    if dep is None:
        return False
    now = timezone.now()
    current = DeploymentState(dep.state)
    if current in (DeploymentState.CONFIRMED, DeploymentState.ROLLED_BACK) and \
            state != DeploymentState.ROLLED_BACK:
        return True  # a late or repeated report: already final
    if state in _PROGRESS and current in _PROGRESS and \
            _PROGRESS.index(state) <= _PROGRESS.index(current):
        return True  # duplicate or out-of-order progress: keep the furthest state
    dep.state = int(state)
    dep.state_changed_at = now
    fields = ["state", "state_changed_at"]
    if state == DeploymentState.FAILED:
        dep.reason = detail or int(Reason.TRIAL_FAILED)
        fields.append("reason")
    if state == DeploymentState.CONFIRMED:
        dep.confirmed_at = now
        fields.append("confirmed_at")
        Device.objects.filter(pk=device_id).update(running_package_id=package_id)
    if state == DeploymentState.ROLLED_BACK and dep.previous_package_id is not None:
        Device.objects.filter(pk=device_id).update(running_package_id=dep.previous_package_id)
    dep.save(update_fields=fields)
    return True
