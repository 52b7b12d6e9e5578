"""Ingest end to end: devices publish through the real broker, the real worker stores exactly once.

Each test sends known traffic (tests/support/traffic.py), disturbs the pipeline (worker killed
with SIGKILL, broker restarted, a second worker, malformed input), waits until every batch is
stored, then compares the database with what was sent: raw events as a multiset, the dedupe
keys, and every rollup cell; the query layer and the API against figures computed from the
sent events.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest

from device_sdk.protocol.events import Event, EventBatch, summarize
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from fleet.telemetry import queries
from fleet.telemetry.models import DeadLetter, Event as EventRow, IngestedBatch, Rollup
from tests.support.broker import Probe
from tests.support.traffic import DeviceLink, FleetPublisher, Ledger, make_stream, payload_of
from tests.support.worker import WorkerFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
START_MS = int(time.time() * 1000) - 3 * 3600 * 1000  # inside the API's default 24 h range
INGEST_TIMEOUT_S = 90.0


class Fleet:
    """Devices known to the server (rows) and to the broker (credentials), and their links."""

    def __init__(self, broker: MosquittoInstance, access: DynsecAccess,
                 profile: HardwareProfile) -> None:
        self.broker, self.access, self.profile = broker, access, profile
        self.passwords: dict[str, str] = {}
        self.ids: dict[str, int] = {}

    def add(self, count: int, prefix: str = "tinyml", group: DeviceGroup | None = None,
            ) -> list[str]:
        """Create ``count`` devices with 16-20 character uids; return their uids."""
        tag = secrets.token_hex(3)
        uids = [f"{prefix}-{tag}-{i:04d}" for i in range(count)]
        Device.objects.bulk_create([
            Device(uid=u, hardware_profile=self.profile, group=group, public_key_pem="-",
                   public_key_fingerprint=u, key_algorithm="ed25519") for u in uids])
        self.ids.update(Device.objects.filter(uid__in=uids).values_list("uid", "id"))
        for u in uids:
            self.passwords[u] = secrets.token_urlsafe(12)
            self.access.provision_device(u, self.passwords[u])
        return uids

    def link(self, uid: str, **kwargs: Any) -> DeviceLink:
        """Return an unconnected MQTT link for device ``uid``."""
        return DeviceLink(uid, self.passwords[uid], self.broker.host, self.broker.port, **kwargs)

    def probe(self, uid: str) -> Probe:
        """Return a connected synchronous client for device ``uid``."""
        p = Probe(self.broker.host, self.broker.port, uid, self.passwords[uid], uid)
        assert p.connect().value == 0
        return p


FleetFactory = Callable[[MosquittoInstance], Fleet]


@pytest.fixture
def fleet_factory(hardware_profile: HardwareProfile) -> Any:
    """Return a maker of ``Fleet``s on a broker; closes the admin connections afterwards."""
    made: list[DynsecAccess] = []

    def make(broker: MosquittoInstance) -> Fleet:
        made.append(DynsecAccess(broker.host, broker.port, broker.admin_username,
                                 broker.admin_password))
        return Fleet(broker, made[-1], hardware_profile)

    yield make
    for access in made:
        access.close()


def stream(fleet: Fleet, uids: list[str], ledger: Ledger, *, events: int, per_batch: int = 32,
           package: int = 0, rate: float = 400, send_twice: int = 0) -> FleetPublisher:
    """Queue ``events`` events spread over the devices in batches; return the publisher."""
    batches = events // per_batch
    assert batches * per_batch == events
    links = []
    for i, uid in enumerate(uids):
        mine = batches // len(uids) + (i < batches % len(uids))
        messages = make_stream(uid, batches=mine, per_batch=per_batch, package=package,
                               start_ms=START_MS, seed=i)
        ledger.add(uid, messages)
        links.append(fleet.link(uid))
        links[-1].queue(messages)
    return FleetPublisher(links, rate=rate, send_twice=send_twice)


def wait_ingested(ledger: Ledger, timeout: float = INGEST_TIMEOUT_S) -> None:
    """Wait until the server holds as many batches of these devices as were sent."""
    want = len(ledger.batch_keys())
    deadline = time.monotonic() + timeout
    while True:
        have = IngestedBatch.objects.filter(device_id__in=ledger.device_ids.values()).count()
        if have >= want:
            return
        assert time.monotonic() < deadline, f"only {have} of {want} batches stored"
        time.sleep(0.2)


def assert_stored_exactly(ledger: Ledger) -> None:
    """Compare events, dedupe keys and rollups in the database with what was sent."""
    ids = list(ledger.device_ids.values())
    keys = dict(((d, s), n) for d, s, n in IngestedBatch.objects.filter(device_id__in=ids)
                .values_list("device_id", "seq", "event_count"))
    assert keys == ledger.batch_keys()
    stored = Counter((d, s, (ts - EPOCH) // MS, label, score, lat)
                     for d, s, ts, label, score, lat in EventRow.objects.filter(device_id__in=ids)
                     .values_list("device_id", "seq", "ts", "label", "score", "latency_100us"))
    expected = ledger.event_rows()
    missing, extra = expected - stored, stored - expected
    assert not missing and not extra, f"{sum(missing.values())} events lost, " \
        f"{sum(extra.values())} stored twice or wrong (e.g. {list((missing or extra))[:3]})"
    rollups = {(d, mv, int(b.timestamp()), label): (n, s, lat)
               for d, mv, b, label, n, s, lat in Rollup.objects.filter(device_id__in=ids)
               .values_list("device_id", "model_version_id", "bucket", "label", "count",
                            "score_sum", "latency_sum")}
    assert rollups == ledger.rollups()


def test_100k_events_stored_exactly_once_across_two_worker_kills(
    broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """SIGKILL twice mid-stream: every event is stored, none twice, rollups add up."""
    fleet = fleet_factory(broker)
    uids = fleet.add(50)
    ledger = Ledger(fleet.ids)
    publisher = stream(fleet, uids, ledger, events=100_000, rate=450, send_twice=25)
    worker = worker_factory(broker)
    publisher.start()
    try:
        publisher.wait_progress(0.3)
        worker.kill()
        time.sleep(0.5)  # the broker queues for the dead worker's session meanwhile
        worker.start()
        publisher.wait_progress(0.65)
        worker.restart()
        publisher.wait()
        wait_ingested(ledger)
    finally:
        publisher.close()
    assert publisher.refused == []
    assert publisher.resends > 0  # the dedupe key had work to do
    assert ledger.total_events == 100_000
    assert_stored_exactly(ledger)
    assert not DeadLetter.objects.exists()


def test_broker_restart_keeps_the_worker_queue_and_loses_nothing(
    fresh_broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """Restart the broker under load, then again while the worker is dead: all arrives once."""
    fresh_broker.start()
    fleet = fleet_factory(fresh_broker)
    uids = fleet.add(16)
    ledger = Ledger(fleet.ids)
    publisher = stream(fleet, uids, ledger, events=16 * 24 * 32, rate=300)
    worker = worker_factory(fresh_broker)
    publisher.start()
    try:
        publisher.wait_progress(0.3)
        fresh_broker.restart()  # devices and the worker reconnect; devices resend
        publisher.wait_progress(0.55)
        worker.kill()
        publisher.wait_progress(0.75)  # these queue in the dead worker's session...
        fresh_broker.restart()  # ...which must survive the restart (persistence)
        worker.start()
        publisher.wait()
        wait_ingested(ledger)
    finally:
        publisher.close()
    assert publisher.refused == []
    assert_stored_exactly(ledger)


def test_two_workers_share_the_stream_and_a_killed_one_resumes(
    broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """Two workers on one shared subscription; one is killed mid-stream: still exactly once."""
    fleet = fleet_factory(broker)
    uids = fleet.add(20)
    ledger = Ledger(fleet.ids)
    publisher = stream(fleet, uids, ledger, events=20 * 30 * 32, rate=400, send_twice=20)
    first, second = worker_factory(broker), worker_factory(broker)
    publisher.start()
    try:
        publisher.wait_progress(0.4)
        second.kill()
        publisher.wait_progress(0.7)
        second.start()
        publisher.wait()
        wait_ingested(ledger)
    finally:
        publisher.close()
    assert_stored_exactly(ledger)
    for worker in (first, second):  # both did their share
        assert "subscriptions granted" in worker.log()
    from fleet.telemetry.models import WorkerStats

    time.sleep(5.5)  # one stats period: both report what they stored
    stored = dict(WorkerStats.objects.values_list("worker", "counters"))
    assert stored.get(first.name, {}).get("batches_stored", 0) > 0


def _batch_items(seq: int, t0: int) -> list[Any]:
    """Return a valid single-event batch as CBOR items, to be spoiled by the caller."""
    return list(cbor2.loads(payload_of(EventBatch.of(seq, 0, [Event(t0, 1, 200, 30)]))))


def test_malformed_and_spoofed_input_is_dead_lettered_and_ingest_goes_on(
    broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """Garbage, wrong schema, oversize, out of range, unknown device: each refused with its
    reason, kept in DeadLetter, and good batches sent afterwards are stored."""
    fleet = fleet_factory(broker)
    good, ghost, other = fleet.add(3, prefix="edge")
    Device.objects.filter(uid=ghost).delete()  # still holds a broker credential
    worker = worker_factory(broker)
    t0 = START_MS
    wrong_kind = _batch_items(1, t0)
    wrong_kind[0] = 7
    too_old = _batch_items(2, t0)
    too_old[2] = 1_000  # 1970: the device's clock was never set
    short_column = _batch_items(3, t0)
    short_column[4] = 3  # n says 3 events, the columns hold one
    bad = {
        b"\xff\xfe garbage": "CBOR_MALFORMED",
        cbor2.dumps({"seq": 1}): "SCHEMA_MISMATCH",
        cbor2.dumps(wrong_kind): "SCHEMA_MISMATCH",
        bytes(20_000): "PAYLOAD_TOO_LARGE",
        cbor2.dumps(too_old): "VALUE_OUT_OF_RANGE",
        cbor2.dumps(short_column): "VALUE_OUT_OF_RANGE",
    }
    device, stranger = fleet.probe(good), fleet.probe(ghost)
    for payload in bad:
        assert device.publish(f"fleet/v1/{good}/events", payload).value in (0, 16)
    ghost_batch = EventBatch.of(5, 0, [Event(t0, 2, 100, 40)])
    assert stranger.publish(f"fleet/v1/{ghost}/events", payload_of(ghost_batch)).value == 0
    # A device cannot speak for another: the broker refuses (135), nothing reaches the worker.
    spoof = EventBatch.of(99, 0, [Event(t0, 3, 100, 40)])
    assert device.publish(f"fleet/v1/{other}/events", payload_of(spoof)).value == 135
    ledger = Ledger({good: fleet.ids[good]})
    after = make_stream(good, batches=5, per_batch=8, package=0, start_ms=START_MS, seed=7,
                        first_seq=10)
    ledger.add(good, after)
    for message in after:
        assert device.publish(f"fleet/v1/{good}/events", payload_of(message)).value == 0
    device.close()
    stranger.close()
    wait_ingested(ledger, timeout=30)
    deadline = time.monotonic() + 10
    while DeadLetter.objects.count() < len(bad) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = Counter(DeadLetter.objects.values_list("device_uid", "reason"))
    assert got == Counter({(good, r): n for r, n in Counter(bad.values()).items()}
                          | {(ghost, "UNKNOWN_DEVICE"): 1})
    oversize = DeadLetter.objects.get(reason="PAYLOAD_TOO_LARGE")
    assert (oversize.size, len(oversize.payload)) == (20_000, 1024)
    assert_stored_exactly(ledger)
    assert not IngestedBatch.objects.filter(device_id=fleet.ids[other]).exists()
    assert worker.running


def _versions(profile: HardwareProfile) -> dict[int, int]:
    """Create two model versions with a package each; return package id -> version id."""
    from ota.models import Model, ModelVersion, Package, SigningKey

    model = Model.objects.create(name=f"kws-{secrets.token_hex(3)}")
    key = SigningKey.objects.create(kid=secrets.token_hex(8), public_key="00" * 32,
                                    encrypted_private_key=b"-")
    out = {}
    for version in ("1.0.0", "1.1.0"):
        mv = ModelVersion.objects.create(model=model, version=version, source="uploaded",
                                         status="ready")
        pkg = Package.objects.create(
            model_version=mv, hardware_profile=profile, encoding=0, manifest=b"-",
            transfer_sha256="0" * 64, transfer_size=1, installed_size=1, signing_key=key,
            expires_at=datetime.now(UTC) + timedelta(days=1))
        out[pkg.id] = mv.id
    return out
