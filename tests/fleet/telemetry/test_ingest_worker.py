"""Ingest end to end: devices publish through the real broker, the real worker stores exactly once.

Each test sends known traffic (testkit/traffic.py), disturbs the pipeline (worker killed
with SIGKILL, broker restarted, a second worker, malformed input), waits until every batch is
stored, then compares the database with what was sent: raw events as a multiset, the dedupe
keys, and every rollup cell; the query layer and the API against figures computed from the
sent events.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
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
from fleet.telemetry.models import DeadLetter, IngestedBatch, WorkerStats
from testkit.stored import Fleet, assert_stored_exactly, wait_ingested
from testkit.traffic import FleetPublisher, Ledger, make_stream, payload_of
from testkit.worker import WorkerFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

START_MS = int(time.time() * 1000) - 3 * 3600 * 1000  # inside the API's default 24 h range


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


@pytest.mark.slow
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
    # Only this test's devices: the session broker may still carry other tests' devices.
    assert not DeadLetter.objects.filter(device_uid__in=uids).exists()


def test_broker_restart_keeps_the_worker_queue_and_loses_nothing(
    fresh_broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """Restart the broker under load, then again while the worker is dead: all arrives once.

    What the dead worker's session had queued survives the restart (persistence). Its shared
    subscription does not (Mosquitto 2.0 never saves shared subscriptions): until the worker
    is back, devices get PUBACK reason 16 and must send those batches again.
    """
    fresh_broker.start()
    fleet = fleet_factory(fresh_broker)
    uids = fleet.add(16)
    ledger = Ledger(fleet.ids)
    publisher = stream(fleet, uids, ledger, events=16 * 24 * 32, rate=120)
    worker = worker_factory(fresh_broker)
    publisher.start()
    try:
        publisher.wait_progress(0.25)
        fresh_broker.restart()  # devices and the worker reconnect; devices resend
        publisher.wait_progress(0.45)
        worker.kill()
        publisher.wait_progress(0.6)  # these queue in the dead worker's session...
        fresh_broker.restart()  # ...which survives the restart
        deadline = time.monotonic() + 20
        while publisher.unrouted == 0:  # devices are back, the worker is not
            assert time.monotonic() < deadline, "no publish after the restart"
            time.sleep(0.05)
        worker.start()
        publisher.wait()
        wait_ingested(ledger, publisher=publisher)
    finally:
        publisher.close()
    assert publisher.refused == []
    assert_stored_exactly(ledger)


def test_mosquitto_forgets_shared_subscriptions_across_a_restart(
    fresh_broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
) -> None:
    """Pin the broker behaviour devices must cope with: after a restart, and until a worker
    subscribes again, an event batch is answered with reason 16 (no matching subscribers) and
    reaches nobody; one queued for the worker before the restart is still delivered."""
    fresh_broker.start()
    fleet = fleet_factory(fresh_broker)
    (uid,) = fleet.add(1)
    worker = worker_factory(fresh_broker)
    worker.stop()  # its session and shared subscription stay with the broker
    ledger = Ledger(fleet.ids)
    queued, unrouted, later = make_stream(uid, batches=3, per_batch=4, package=0,
                                          start_ms=START_MS, seed=1)
    device = fleet.probe(uid)
    assert device.publish(f"fleet/v1/{uid}/events", payload_of(queued)).value == 0
    device.close()
    fresh_broker.restart()
    device = fleet.probe(uid)
    assert device.publish(f"fleet/v1/{uid}/events", payload_of(unrouted)).value == 16
    worker.start()
    assert device.publish(f"fleet/v1/{uid}/events", payload_of(later)).value == 0
    device.close()
    ledger.add(uid, [queued, later])
    wait_ingested(ledger, timeout=30)
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
    deadline = time.monotonic() + 8  # workers save their counters every 5 s
    while True:  # both took a share of the stream (the restarted one: since its restart)
        stored = dict(WorkerStats.objects.values_list("worker", "counters"))
        shares = [stored.get(w.name, {}).get("batches_stored", 0) for w in (first, second)]
        if all(shares) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(shares), shares


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
    short_column = list(cbor2.loads(payload_of(EventBatch.of(3, 0, [
        Event(t0 + 1000 * i, i, 100 + i, 30 + 7 * i) for i in range(4)]))))
    short_column[4] = 5  # n says 5 events, the packed columns hold 4
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
    # Only this test's devices: the session broker may still carry other tests' devices,
    # which the worker rightly refuses as unknown here.
    ours = DeadLetter.objects.filter(device_uid__in=[good, ghost])
    deadline = time.monotonic() + 10
    while ours.count() < len(bad) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = Counter(ours.values_list("device_uid", "reason"))
    assert got == Counter({(good, r): n for r, n in Counter(bad.values()).items()}
                          | {(ghost, "UNKNOWN_DEVICE"): 1})
    oversize = ours.get(reason="PAYLOAD_TOO_LARGE")
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


def _expected_cells(ledger: Ledger) -> list[tuple[int, int, int, int, int, int, int]]:
    """Return (device, version, t_ms, label, count, score sum, latency sum) per sent event,
    and per label of each summary (counted at its window's start, at its means)."""
    cells = []
    for (uid, _), m in ledger.sent.items():
        d, mv = ledger.device_ids[uid], ledger.model_versions.get(m.model, 0)
        if isinstance(m, EventBatch):
            cells += [(d, mv, e.t_ms, e.label, 1, e.score, e.latency_100us) for e in m.events]
        else:
            cells += [(d, mv, m.t0_ms, label, n, n * m.mean_scores[label],
                       n * m.mean_latency_100us) for label, n in enumerate(m.counts) if n]
    return cells


def _labels(cells: list[tuple[int, ...]]) -> dict[int, tuple[int, float]]:
    """Return label -> (count, mean score) over the cells."""
    n: Counter[int] = Counter()
    score: Counter[int] = Counter()
    for _, _, _, label, count, s, _ in cells:
        n[label] += count
        score[label] += s
    return {label: (n[label], score[label] / n[label]) for label in sorted(n)}


def test_queries_and_api_match_figures_computed_from_the_sent_events(
    broker: MosquittoInstance, fleet_factory: FleetFactory, worker_factory: WorkerFactory,
    hardware_profile: HardwareProfile, api_client_for: Callable[[str], Any],
) -> None:
    """Label counts, mean scores, totals, hourly series and the version comparison, from the
    query layer and from /api/v1/telemetry/, equal what the devices sent."""
    fleet = fleet_factory(broker)
    north = DeviceGroup.objects.create(name=f"north-{secrets.token_hex(2)}")
    uids = fleet.add(6, group=north) + fleet.add(6)
    versions = _versions(hardware_profile)
    (p1, mv1), (p2, mv2) = sorted(versions.items())
    ledger = Ledger(fleet.ids, versions)
    links = []
    for i, uid in enumerate(uids):
        package = (p1, p2)[i % 2]
        batches = make_stream(uid, batches=10, per_batch=16, package=package,
                              start_ms=START_MS, seed=100 + i, labels=5 + i % 2)
        end = batches[-1].events[-1].t_ms + 1000
        window = [Event(end + 997 * k, (k * 7 + i) % 4, 120 + k % 100, 25 + k % 40)
                  for k in range(300)]
        summary = summarize(window, seq=11, t0_ms=end, model=package, window_s=300)
        ledger.add(uid, [*batches, summary])
        links.append(fleet.link(uid))
        links[-1].queue([*batches, summary])
    worker_factory(broker)
    publisher = FleetPublisher(links, rate=500)
    publisher.start()
    try:
        publisher.wait()
        wait_ingested(ledger, publisher=publisher)
    finally:
        publisher.close()
    assert_stored_exactly(ledger)

    cells = _expected_cells(ledger)
    since = datetime.fromtimestamp(START_MS // 3_600_000 * 3600 - 3600, tz=UTC)
    until = datetime.now(UTC) + timedelta(hours=2)
    flt = queries.TelemetryFilter(since=since, until=until)
    north_ids = {fleet.ids[u] for u in uids[:6]}
    by_version = {mv: [c for c in cells if c[1] == mv] for mv in (mv1, mv2)}

    def check_labels(rows: list[dict[str, Any]], want: list[tuple[int, ...]]) -> None:
        expected = _labels(want)
        assert {r["label"]: r["count"] for r in rows} == {k: v[0] for k, v in expected.items()}
        for r in rows:
            assert r["mean_score"] == pytest.approx(expected[r["label"]][1])

    check_labels(queries.label_distribution(flt), cells)
    north_flt = queries.TelemetryFilter(since=since, until=until, group=north.name)
    check_labels(queries.label_distribution(north_flt), [c for c in cells if c[0] in north_ids])
    total = queries.summary(flt)
    assert total["events"] == sum(c[4] for c in cells) == ledger.total_events
    assert total["devices"] == len(uids)
    assert total["mean_score"] == pytest.approx(sum(c[5] for c in cells) / total["events"])
    assert total["mean_latency_ms"] == pytest.approx(sum(c[6] for c in cells) / total["events"]
                                                     / 10)
    hourly: Counter[str] = Counter()
    for c in cells:
        hourly[datetime.fromtimestamp(c[2] // 3_600_000 * 3600, tz=UTC).isoformat()] += c[4]
    points = queries.series(flt, 3600)
    assert {p["t"]: p["events"] for p in points} == hourly
    compared = queries.compare_versions(flt, mv1, mv2)
    for side, mv in (("a", mv1), ("b", mv2)):
        assert compared[side]["events"] == sum(c[4] for c in by_version[mv])
        check_labels(compared[side]["labels"], by_version[mv])
    shares = [{k: n / sum(v[0] for v in _labels(by_version[mv]).values())
               for k, (n, _) in _labels(by_version[mv]).items()} for mv in (mv1, mv2)]
    tvd = sum(abs(shares[0].get(k, 0) - shares[1].get(k, 0))
              for k in set(shares[0]) | set(shares[1])) / 2
    assert compared["drift"]["total_variation"] == pytest.approx(tvd)

    client = api_client_for("viewer")
    params = {"since": since.isoformat(), "until": until.isoformat()}
    response = client.get("/api/v1/telemetry/labels/", {**params, "model_version": [mv1]})
    assert response.status_code == 200, response.content
    check_labels(response.json()["labels"], by_version[mv1])
    response = client.get("/api/v1/telemetry/summary/", {**params, "group": north.name})
    assert response.json()["events"] == sum(c[4] for c in cells if c[0] in north_ids)
    response = client.get("/api/v1/telemetry/series/", {**params, "bucket": 3600})
    assert {p["t"]: p["events"] for p in response.json()["points"]} == hourly
    response = client.get("/api/v1/telemetry/compare/", {**params, "a": mv1, "b": mv2})
    body = response.json()
    assert (body["a"]["events"], body["b"]["events"]) == (
        compared["a"]["events"], compared["b"]["events"])
    assert body["drift"]["total_variation"] == pytest.approx(tvd)
