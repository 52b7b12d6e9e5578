"""OTA delivery: chunk requests, device reports applied to deployments, the package carousel.

Intake (``fleet.intake.deployments``) decodes the devices' messages and calls in here.

Fan-out keeps server egress flat as the fleet grows: while devices of a package are
downloading, the server publishes the package's chunks on ``fleet/v1/pkg/{pkg}/c`` (the
carousel, scheduled by ``ota.rollouts.carousel``) and the broker copies them to every
subscribed device. A device keeps chunks at their offsets and asks ``ota/get`` only for what
it missed (a repair). The path is safe to share because every byte is checked against the
signed manifest's digests. Only offered devices can read it: with ``FANOUT_ACCESS=encrypt``
(the default) the chunks are encrypted with the package's fan-out key (:func:`fanout_key`,
``device_sdk.protocol.fanout``), which the controller sends to each device it offers the
package; with ``grant`` the broker lets only them subscribe.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import F, Model, Q, QuerySet
from django.utils import timezone

from device_sdk.protocol.fanout import crypt
from device_sdk.protocol.limits import MAX_CHUNK_BYTES
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    encode_chunk,
    encode_fanout_chunk,
)
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.topics import Channel, PackageChannel, device_topic, package_topic
from fleet.core.rows import lock_in_order
from fleet.devices.models import Device
from ota.models import Package
from ota.registry.storage import artifact_storage
from ota.rollouts.carousel import PackageCarousel
from ota.rollouts.controller import Publisher
from ota.rollouts.delivery_keys import fanout_key
from ota.rollouts.models import ACTIVE_STATES, Deployment, Rollout, RolloutState

log = logging.getLogger(__name__)

# States a device may report, in order; a report never moves a deployment backwards.
_PROGRESS = [DeploymentState.OFFERED, DeploymentState.DOWNLOADING, DeploymentState.VERIFIED,
             DeploymentState.INSTALLED, DeploymentState.TRIAL, DeploymentState.CONFIRMED]
_LIVE = (RolloutState.RUNNING, RolloutState.PAUSED)
JOIN_SLACK = timedelta(seconds=10)
# Every this often a package's joins are read whole, not from the slack window: a report
# committed later than JOIN_SLACK after its stamp (a worker stalled on locks, another host's
# clock behind this one's) is then still served by the carousel, at most this late.
JOIN_FULL_READ = timedelta(seconds=30)


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


class OtaDelivery:
    """Serve chunk requests (unicast repairs) and run the package carousel (fan-out)."""

    def __init__(self, publisher: Publisher, counters: Counter[str] | None = None, *,
                 owner: str | None = None,
                 carousel_bytes_per_s: int = 2_000_000, carousel_chunk: int | None = None,
                 max_wait_s: float = 30.0, quiet_s: float | None = None,
                 offer_grace_s: float = 15.0, join_gap_s: float = 10.0,
                 join_poll_s: float = 1.0) -> None:
        self.publisher = publisher
        self.cache = TransferCache()
        self.counters = counters if counters is not None else Counter()
        self.owner = owner  # serve only rollouts this worker holds the lease of (None: all)
        self.carousel_bytes_per_s = carousel_bytes_per_s
        self.carousel_chunk = carousel_chunk  # None: the package's profile suggests it
        # A turn waits for joiners at most ``max_wait`` (and, if set, until none came for
        # ``quiet``): under the 45 s a device waits for the fan-out before it repairs by
        # request (device_sdk.ota.agent). (A 1 s ``quiet`` started the first turn of a
        # 10,000-device wave with 15 % of it joined: joins arrive in bursts, as the worker
        # commits batches of reports.) Offered devices count as still coming for
        # ``offer_grace`` after their offer, and after that for as long as joins keep coming
        # (one within ``join_gap``): on a busy server the reports of a big wave are applied
        # well after the offers went out (17-27 s for 3,000 devices on a loaded 2-core box),
        # and a turn started at the grace's end served a few dozen of them. They are applied
        # in bursts, as the worker commits batches: 3 s between two bursts was not unusual
        # at 10,000 devices on that box, hence the 10 s gap.
        self.max_wait = timedelta(seconds=max_wait_s)
        self.quiet = None if quiet_s is None else timedelta(seconds=quiet_s)
        self.offer_grace = timedelta(seconds=offer_grace_s)
        self.join_gap = timedelta(seconds=join_gap_s)
        # The database is read every ``join_poll_s``, not at every tick: a join is counted
        # up to that much later, well inside the seconds a turn waits for its joiners.
        self.join_poll_s = join_poll_s
        self._carousels: dict[int, PackageCarousel] = {}
        self._coming: dict[int, tuple[float, bool]] = {}  # package -> (asked at, more may join)
        self._last_tick = time.monotonic()
        self._last_poll = float("-inf")
        self._polled_at: dict[int, datetime] = {}  # package -> ``now`` of its last join read
        self._read_whole_at: dict[int, datetime] = {}  # package -> last read of all its joins

    # -- chunk requests ----------------------------------------------------------------------

    def serve_chunk(self, uid: str, device_id: int, request: ChunkRequest) -> bool:
        """Send ``request``'s piece of a package to the device, if it was offered that package.

        Return False (nothing sent) when no live deployment of ``request.pkg`` holds the
        device. A served request moves an OFFERED deployment to DOWNLOADING.
        """
        return self.serve_chunks([(uid, device_id, request)])[0]

    def serve_chunks(self, requests: list[tuple[str, int, ChunkRequest]]) -> list[bool]:
        """:meth:`serve_chunk` for a batch of ``(uid, device id, request)``: one read of the
        deployments concerned, one write for those still OFFERED (repairs come in bursts,
        thousands when a big wave's devices lag behind the fan-out)."""
        if not requests:
            return []
        pairs = {(device_id, request.pkg) for _, device_id, request in requests}
        live: dict[tuple[int, int], tuple[int, int]] = {}  # (device, package) -> (id, state)
        for dep_id, device_id, package_id, state in (
                Deployment.objects.filter(device_id__in={d for d, _ in pairs},
                                          package_id__in={p for _, p in pairs},
                                          state__in=ACTIVE_STATES, rollout__state__in=_LIVE)
                .order_by("id").values_list("id", "device_id", "package_id", "state")):
            if (device_id, package_id) in pairs:
                live[(device_id, package_id)] = (dep_id, state)  # ascending: the newest kept
        out: list[bool] = []
        for uid, device_id, request in requests:
            if (device_id, request.pkg) not in live:
                out.append(False)
                continue
            data = self.cache.get(request.pkg) or b""
            piece = data[request.offset:request.offset + min(request.length, MAX_CHUNK_BYTES)]
            self.publisher.publish(device_topic(uid, Channel.OTA_CHUNK),
                                   encode_chunk(Chunk(request.pkg, request.offset, piece)), 1)
            self.counters["ota_unicast_bytes"] += len(piece)
            self.counters["ota_chunks_served"] += 1
            out.append(True)
        offered = sorted({dep_id for dep_id, state in live.values()
                          if state == DeploymentState.OFFERED})
        for start in range(0, len(offered), 5000):  # bounded statement parameters
            Deployment.objects.filter(id__in=offered[start:start + 5000],
                                      state=DeploymentState.OFFERED).update(
                state=DeploymentState.DOWNLOADING, state_changed_at=timezone.now())
        return out

    # -- carousel ------------------------------------------------------------------------------

    def carousel_tick(self) -> int:
        """Publish the next chunks of every package a joined device still lacks; return bytes.

        Joins come from the database (DOWNLOADING reports, applied by whichever worker took
        them), read every ``join_poll_s`` (the worker ticks several times a second: reading
        the joins at each tick cost a read of every deployment of a wave still downloading,
        five times a second); the schedule is :class:`~ota.rollouts.carousel.PackageCarousel`'s.
        """
        now_s = time.monotonic()
        budget = int(self.carousel_bytes_per_s * min(now_s - self._last_tick, 1.0))
        self._last_tick = now_s
        now = timezone.now()
        if now_s - self._last_poll >= self.join_poll_s:
            self._last_poll = now_s
            self._poll_joins(self._live(), now)
        running: list[tuple[PackageCarousel, int, bytes]] = []
        for package_id in sorted(self._carousels):
            carousel = self._carousels[package_id]
            data = self.cache.get(package_id)
            if not data:
                continue
            between_turns = not carousel.running or carousel.sent >= carousel.turn_end
            more_coming = carousel.pending > 0 and between_turns and \
                self._still_coming(package_id, carousel, now, now_s)
            was_running = carousel.running
            if carousel.should_run(now, more_coming, self.max_wait, self.quiet):
                if not was_running:
                    log.info("carousel: package %d turns for %d joined devices (%d bytes to send%s)",
                             package_id, len(carousel.joined), carousel.pending,
                             ", more devices still to join" if more_coming else "")
                running.append((carousel, package_id, data))
            elif was_running:
                log.info("carousel: package %d stops after %d bytes in all", package_id,
                         carousel.sent)
        sent = 0
        share = budget // max(len(running), 1)
        for carousel, package_id, data in running:
            spent = 0
            key = fanout_key(package_id)
            while spent < share and carousel.pending > 0:
                offset, length = carousel.next_chunk(carousel.chunk, timezone.now())
                piece = data[offset:offset + length]
                if key is not None:
                    piece = crypt(key, package_id, offset, piece)
                # QoS 1 to the broker (docs/ARCHITECTURE.md, Topics); devices subscribe at QoS 0, so nothing is
                # queued for offline ones and a chunk lost on the way is repaired by request.
                self.publisher.publish(package_topic(package_id, PackageChannel.CHUNK),
                                       encode_fanout_chunk(Chunk(package_id, offset, piece)), 1)
                spent += length
            sent += spent
        self.counters["ota_fanout_bytes"] += sent
        return sent

    def _live(self) -> QuerySet[Deployment]:
        """The deployments of the running rollouts this worker holds (built, not run)."""
        live = Deployment.objects.filter(rollout__state=RolloutState.RUNNING)
        if self.owner is not None:
            live = live.filter(rollout__lease_owner=self.owner)
        return live

    def _poll_joins(self, live: QuerySet[Deployment], now: datetime) -> None:
        """Follow the database: a carousel per package some device is offered or downloading,
        and the joins (DOWNLOADING deployments) each has not counted yet."""
        rollouts = Rollout.objects.filter(state=RolloutState.RUNNING)
        if self.owner is not None:
            rollouts = rollouts.filter(lease_owner=self.owner)
        packages = set(Rollout.packages.through.objects.filter(rollout__in=rollouts)
                       .values_list("package_id", flat=True))
        # EXISTS per package, not a DISTINCT over every offered or downloading deployment.
        wanted = {package_id for package_id in packages
                  if live.filter(package_id=package_id, state__in=(
                      DeploymentState.OFFERED, DeploymentState.DOWNLOADING)).exists()}
        for gone in set(self._carousels) - wanted:
            del self._carousels[gone]
            self._coming.pop(gone, None)
            self._polled_at.pop(gone, None)
            self._read_whole_at.pop(gone, None)
        downloading = live.filter(state=DeploymentState.DOWNLOADING)
        for package_id in sorted(wanted):
            data = self.cache.get(package_id)
            if not data:
                continue
            carousel = self._carousels.get(package_id)
            if carousel is None or carousel.size != len(data):
                carousel = self._carousels[package_id] = PackageCarousel(
                    len(data), chunk=self._chunk_bytes(package_id))
            joins = downloading.filter(package_id=package_id)
            whole_at = self._read_whole_at.get(package_id)
            if whole_at is None or now - whole_at >= JOIN_FULL_READ:
                self._read_whole_at[package_id] = now
            elif carousel.newest_join is not None:
                # A little before the newest join seen, or before this package's last poll
                # (whichever is later): another worker may commit reports late, by JOIN_SLACK
                # at most, so a join older than that was visible to the last poll, whose
                # window reached back as far. (The newest join alone left every join of a
                # wave's last burst in the window at each poll once joins stopped coming.)
                since = carousel.newest_join
                if (polled := self._polled_at.get(package_id)) is not None:
                    since = max(since, polled)
                joins = joins.filter(state_changed_at__gte=since - JOIN_SLACK)
            self._polled_at[package_id] = now
            # Ids first, times only for the new ones: the slack window holds every join of a
            # big wave's last seconds, and reading all their times at every tick made this
            # query the worker's largest cost at 10,000 devices.
            new = sorted(set(joins.values_list("id", flat=True)) - carousel.joined)
            for start in range(0, len(new), 5000):  # bounded statement parameters
                for key, at in (Deployment.objects.filter(id__in=new[start:start + 5000])
                                .values_list("id", "state_changed_at")):
                    carousel.join(key, at or now, now)

    def _still_coming(self, package_id: int, carousel: PackageCarousel, now: datetime,
                      now_s: float) -> bool:
        """Whether more devices may still join ``package_id``'s next turn (``_more_coming``,
        ``_served_still_downloading``), asked of the database at most every ``join_poll_s``."""
        asked_s, coming = self._coming.get(package_id, (float("-inf"), False))
        if now_s - asked_s >= self.join_poll_s:
            live = self._live()
            coming = (self._more_coming(live.filter(package_id=package_id), now,
                                        carousel.last_join_seen)
                      or self._served_still_downloading(
                          live.filter(package_id=package_id, state=DeploymentState.DOWNLOADING),
                          carousel.served_until))
            self._coming[package_id] = (now_s, coming)
        return coming

    def _more_coming(self, deployments: QuerySet[Deployment], now: datetime,
                     last_join: datetime | None = None) -> bool:
        """Whether more devices may join soon: offered and still checking the offer (offered
        a moment ago, or joins of their wave still arriving: ``last_join``, when the newest
        was counted, within ``join_gap``), or due an offer in the current wave (a
        rate-limited rollout offers a few at a time; their joins are batched into turns
        ``max_wait`` apart rather than one each)."""
        offered = Q(state=DeploymentState.OFFERED)
        if last_join is None or now - last_join >= self.join_gap:
            offered &= Q(offered_at__gt=now - self.offer_grace)
        return deployments.filter(
            offered | Q(state=DeploymentState.PENDING, wave__lte=F("rollout__current_wave"))
        ).exists()

    @staticmethod
    def _served_still_downloading(downloading: QuerySet[Deployment],
                                  served_until: datetime | None) -> bool:
        """Whether devices an earlier turn served are still taking it in (DOWNLOADING, joined
        no later than that turn's newest join). The broker copies a turn to every device still
        subscribed, served or not: the late joiners' turn waits for them (``max_wait`` at
        most) instead of sending them the package a second time. (At 10,000 devices on a
        busy box, each late turn went to ~9,800 devices that already had every byte queued.)"""
        if served_until is None:
            return False
        return downloading.filter(state_changed_at__lte=served_until).exists()

    def _chunk_bytes(self, package_id: int) -> int:
        """Fan-out chunk size: what the package's hardware profile says its devices hold."""
        if self.carousel_chunk is not None:
            return self.carousel_chunk
        suggested = (Package.objects.filter(pk=package_id)
                     .values_list("hardware_profile__ota_chunk_bytes", flat=True).first())
        return max(256, min(MAX_CHUNK_BYTES, suggested or 4096))


ReportRow = tuple[int, int, DeploymentState, int]  # device id, package id, state, detail
_REPORT_FIELDS = ("state", "state_changed_at", "reason", "confirmed_at")


def apply_report(device_id: int, package_id: int, state: DeploymentState, detail: int) -> bool:
    """Move a deployment forward (or to failed/rolled back); False when none matches."""
    return apply_reports([(device_id, package_id, state, detail)])[0]


def _open_offers(reports: list[ReportRow]) -> dict[int, int]:
    """Device -> package of its newest deployment still OFFERED, for the devices that report a
    refusal under package 0 (a device names no package it could not authenticate: CDDL.md,
    report)."""
    unnamed = {d for d, p, state, _ in reports if p == 0 and state == DeploymentState.FAILED}
    offered: dict[int, int] = {}
    if unnamed:
        for device_id, package_id in (Deployment.objects
                                      .filter(device_id__in=unnamed,
                                              state=DeploymentState.OFFERED)
                                      .order_by("id").values_list("device_id", "package_id")):
            offered[device_id] = package_id  # ascending ids: the newest offer wins
    return offered


@transaction.atomic
def apply_reports(reports: list[ReportRow]) -> list[bool]:
    """Apply reports in order, each to the newest deployment of its device and package; for
    each, False when no deployment matches.

    Reads every deployment concerned in one locked query, runs the state rules on the rows in
    memory (several reports of one device in a batch see each other), then writes each changed
    deployment once (grouped by what changed) and the devices' running packages per package.
    """
    if not reports:
        return []
    open_offers = _open_offers(reports)
    pairs = {(device_id, package_id) for device_id, package_id, _, _ in reports}
    pairs |= set(open_offers.items())
    newest: dict[tuple[int, int], Deployment] = {}
    rows = (Deployment.objects.select_for_update()
            .filter(device_id__in={d for d, _ in pairs}, package_id__in={p for _, p in pairs})
            .only("id", "device_id", "package_id", "state", "reason", "previous_package_id",
                  "state_changed_at", "confirmed_at")
            .order_by("id"))
    for dep in rows:
        key = (dep.device_id, dep.package_id)
        if key in pairs:
            newest[key] = dep  # ascending ids: the last one kept is the newest
    now = timezone.now()
    changed: dict[int, Deployment] = {}
    running: dict[int, int] = {}  # device id -> package it now runs
    out: list[bool] = []
    for device_id, package_id, state, detail in reports:
        if package_id == 0 and state == DeploymentState.FAILED:
            # A refusal of the offer the server sent last: still OFFERED after the reports
            # before it in this batch (one that moved on is not what the device refused).
            package_id = open_offers.get(device_id, 0)
            dep = newest.get((device_id, package_id))
            if dep is not None and dep.state != DeploymentState.OFFERED:
                dep = None
        else:
            dep = newest.get((device_id, package_id))
        if dep is None:
            out.append(False)
            continue
        out.append(True)
        current = DeploymentState(dep.state)
        if current in (DeploymentState.CONFIRMED, DeploymentState.ROLLED_BACK) and \
                state != DeploymentState.ROLLED_BACK:
            continue  # a late or repeated report: already final
        if state in _PROGRESS and current in _PROGRESS and \
                _PROGRESS.index(state) <= _PROGRESS.index(current):
            continue  # duplicate or out-of-order progress: keep the furthest state
        dep.state = int(state)
        dep.state_changed_at = now
        if state == DeploymentState.FAILED:
            dep.reason = detail or int(Reason.TRIAL_FAILED)
        if state == DeploymentState.ROLLED_BACK and detail:
            dep.reason = detail  # why the trial reverted (MODEL_LOAD_FAILED, TRIAL_OUTPUT_...)
        if state == DeploymentState.CONFIRMED:
            dep.confirmed_at = now
            running[device_id] = package_id
        if state == DeploymentState.ROLLED_BACK and dep.previous_package_id is not None:
            running[device_id] = dep.previous_package_id
        changed[dep.pk] = dep
    # One UPDATE per distinct set of new values (a wave's reports share a handful).
    groups: dict[tuple[object, ...], list[int]] = {}
    for dep in changed.values():
        values = tuple(getattr(dep, f) for f in _REPORT_FIELDS)
        groups.setdefault(values, []).append(dep.pk)
    for values, ids in groups.items():
        set_by_ids(Deployment, ids, dict(zip(_REPORT_FIELDS, values, strict=True)))
    by_package: dict[int, list[int]] = {}
    for device_id, package_id in running.items():
        by_package.setdefault(package_id, []).append(device_id)
    # One UPDATE per package locks its devices in the plan's order: take them all first, in
    # id order, as status batches and ingest do, so those writers cannot deadlock with this.
    lock_in_order(Device, set(running))
    for package_id, device_ids in by_package.items():
        set_by_ids(Device, device_ids, {"running_package_id": package_id})
    return out


def set_by_ids(model: type[Model], ids: list[int], values: dict[str, object]) -> None:
    """``UPDATE model SET values WHERE pk IN ids``: on PostgreSQL one statement with the ids
    as one array parameter (``= ANY(%s)``: Django's ``pk__in`` prepares every id, a cost a
    wave's report batches paid for thousands of them); elsewhere 500 ids per statement."""
    if not ids:
        return
    if connection.vendor != "postgresql":
        for start in range(0, len(ids), 500):  # keep each statement's parameters bounded
            model._default_manager.filter(pk__in=ids[start:start + 500]).update(**values)
        return
    meta = model._meta
    qn = connection.ops.quote_name
    fields = [meta.get_field(name) for name in values]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET "
            + ", ".join(f"{qn(f.column)} = %s" for f in fields)
            + f" WHERE {qn(meta.pk.column)} = ANY(%s)",
            [f.get_db_prep_save(values[f.name], connection) for f in fields] + [list(ids)])
