"""Ingest without MQTT: decoding into accepted or refused messages, and exactly-once storage.

``decode_event_message`` and ``store_batches`` are called directly (the worker's consumers do
the same with what the broker delivers), so each rule is pinned on its own: the dedupe key,
summaries in rollups, the unknown-package version, refusal reasons, last seen.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from django.db import connection

from device_sdk.protocol.events import Event, EventBatch, encode_batch, encode_summary, summarize
from device_sdk.protocol.limits import MAX_EVENTS_BYTES
from device_sdk.protocol.reasons import Reason
from fleet.devices.models import Device, HardwareProfile
from fleet.intake.consumers import Consumers
from fleet.intake.directory import DeviceDirectory
from fleet.intake.messages import Rejected, decode_event_message, record_rejections
from fleet.intake.worker import Received
from fleet.telemetry.ingest import Accepted, store_batches
from fleet.telemetry.models import DeadLetter, IngestedBatch, Rollup
from fleet.telemetry.models import Event as EventRow

pytestmark = pytest.mark.django_db

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a minute boundary
NOW = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture
def device(hardware_profile: HardwareProfile) -> Device:
    """A device known to the server."""
    uid = f"unit-{secrets.token_hex(4)}"
    return Device.objects.create(uid=uid, hardware_profile=hardware_profile, public_key_pem="-",
                                 public_key_fingerprint=uid, key_algorithm="ed25519")


def batch(seq: int, *events: tuple[int, int, int, int], model: int = 0) -> EventBatch:
    """Return a batch of (t_ms offset from T0, label, score, latency) events."""
    return EventBatch.of(seq, model, [Event(T0 + dt, lab, s, lat) for dt, lab, s, lat in events])


def accept(device: Device, message: Any, model_version: int = 0) -> Accepted:
    """Return ``message`` as the decoder would accept it from ``device``."""
    return Accepted(device.id, model_version, message)


def rollups(device: Device) -> dict[tuple[int, int, int], tuple[int, ...]]:
    """Return (version, minute offset, label) -> (count, score sum, latency sum, histogram)."""
    rows = Rollup.objects.filter(device_id=device.id).values_list(
        "model_version_id", "bucket", "label", "count", "score_sum", "latency_sum",
        "lat_le_1ms", "lat_le_5ms", "lat_le_20ms", "lat_le_100ms", "lat_gt_100ms")
    base = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    return {(mv, int((b - base).total_seconds()) // 60, label): tuple(sums)
            for mv, b, label, *sums in rows}


def test_a_batch_is_stored_with_its_events_rollups_and_last_seen(device: Device) -> None:
    """Every event becomes a row; rollups sum per minute and label; last_seen is the last event."""
    b = batch(7, (0, 1, 200, 5), (1500, 1, 100, 50), (61_000, 2, 10, 1500))
    result = store_batches([accept(device, b, model_version=3)], NOW)
    assert (result.batches, result.events, result.duplicates) == (1, 3, 0)
    rows = sorted(EventRow.objects.filter(device_id=device.id).values_list(
        "model_version_id", "seq", "ts", "label", "score", "latency_100us"))
    assert rows == [(3, 7, datetime.fromtimestamp((T0 + dt) / 1000, tz=UTC), lab, s, lat)
                    for dt, lab, s, lat in ((0, 1, 200, 5), (1500, 1, 100, 50),
                                            (61_000, 2, 10, 1500))]
    # Latency buckets: <= 1 ms, <= 5 ms (50 is exactly 5 ms), <= 20, <= 100, > 100 ms.
    assert rollups(device) == {(3, 0, 1): (2, 300, 55, 1, 1, 0, 0, 0),
                               (3, 1, 2): (1, 10, 1500, 0, 0, 0, 0, 1)}
    key = IngestedBatch.objects.get(device_id=device.id)
    assert (key.seq, key.kind, key.event_count, key.model_version_id) == (7, 0, 3, 3)
    device.refresh_from_db()
    assert device.last_seen == datetime.fromtimestamp((T0 + 61_000) / 1000, tz=UTC)
    assert device.first_seen == device.last_seen


def test_the_same_seq_twice_in_one_call_is_stored_once(device: Device) -> None:
    """Two copies in one worker batch (a resend next to the original) count once."""
    b = batch(1, (0, 0, 100, 20), (10, 0, 50, 20))
    result = store_batches([accept(device, b), accept(device, b)], NOW)
    assert (result.batches, result.events, result.duplicates) == (1, 2, 1)
    assert EventRow.objects.filter(device_id=device.id).count() == 2
    assert rollups(device)[(0, 0, 0)][:3] == (2, 150, 40)


def test_a_redelivered_seq_changes_nothing(device: Device) -> None:
    """A copy arriving in a later call (worker killed before its ack) is a duplicate."""
    first = batch(1, (0, 0, 100, 20))
    store_batches([accept(device, first)], NOW)
    before = rollups(device)
    result = store_batches([accept(device, first), accept(device, batch(2, (5, 0, 80, 20)))],
                           NOW)
    assert (result.batches, result.events, result.duplicates) == (1, 1, 1)
    assert EventRow.objects.filter(device_id=device.id).count() == 2
    assert rollups(device)[(0, 0, 0)][:3] == (before[(0, 0, 0)][0] + 1, 180, 40)
    assert sorted(IngestedBatch.objects.values_list("seq", flat=True)) == [1, 2]


def test_the_dedupe_key_is_per_device(device: Device, hardware_profile: HardwareProfile) -> None:
    """Another device may use the same seq."""
    other = Device.objects.create(uid="unit-other", hardware_profile=hardware_profile,
                                  public_key_pem="-", public_key_fingerprint="unit-other",
                                  key_algorithm="ed25519")
    b = batch(1, (0, 0, 100, 20))
    result = store_batches([accept(device, b), accept(other, b)], NOW)
    assert (result.batches, result.duplicates) == (2, 0)


def test_a_summary_folds_into_the_rollup_of_its_first_minute(device: Device) -> None:
    """Counts and means of a summary become rollup sums; no raw events are written."""
    events = [Event(T0 + 1000 * k, k % 3, 100 + k, 40) for k in range(90)]
    summary = summarize(events, seq=9, t0_ms=T0, model=0, window_s=120)
    result = store_batches([accept(device, summary, model_version=4)], NOW)
    assert (result.batches, result.events) == (1, 90)
    assert not EventRow.objects.filter(device_id=device.id).exists()
    cells = rollups(device)
    assert set(cells) == {(4, 0, 0), (4, 0, 1), (4, 0, 2)}  # all at the window's start
    for label in range(3):
        n = summary.counts[label]
        assert cells[(4, 0, label)] == (n, n * summary.mean_scores[label], n * 40, 0, n, 0, 0, 0)
    key = IngestedBatch.objects.get(device_id=device.id)
    assert (key.kind, key.event_count) == (1, 90)
    device.refresh_from_db()
    assert device.last_seen == datetime.fromtimestamp(T0 / 1000 + 120, tz=UTC)


def test_last_seen_never_moves_back(device: Device) -> None:
    """An old batch delivered late leaves last_seen at the newest event seen."""
    store_batches([accept(device, batch(2, (60_000, 0, 1, 1)))], NOW)
    store_batches([accept(device, batch(1, (0, 0, 1, 1)))], NOW)
    device.refresh_from_db()
    assert device.last_seen == datetime.fromtimestamp(T0 / 1000 + 60, tz=UTC)


def test_last_seen_of_several_devices_in_one_call(hardware_profile: HardwareProfile) -> None:
    """One call with many devices (one statement on PostgreSQL): each gets its own newest
    event, first_seen is set once, and a device seen later before keeps its last_seen."""
    devices = [Device.objects.create(uid=f"many-{i}-{secrets.token_hex(3)}",
                                     hardware_profile=hardware_profile, public_key_pem="-",
                                     public_key_fingerprint=f"many-{i}-{secrets.token_hex(3)}",
                                     key_algorithm="ed25519") for i in range(5)]
    ahead = datetime.fromtimestamp(T0 / 1000 + 3600, tz=UTC)
    Device.objects.filter(id=devices[4].id).update(last_seen=ahead, first_seen=ahead)
    store_batches([accept(d, batch(seq, (i * 1000 + seq * 10, 0, 1, 1)))
                   for seq in (1, 2) for i, d in enumerate(devices)], NOW)
    for i, d in enumerate(devices):
        d.refresh_from_db()
        want = ahead if i == 4 else datetime.fromtimestamp((T0 + i * 1000 + 20) / 1000, tz=UTC)
        assert (d.last_seen, d.first_seen) == (want, want)


def test_an_unknown_package_maps_to_model_version_0(device: Device) -> None:
    """A package id the server never built decodes as version 0 (unknown), not a refusal."""
    directory = DeviceDirectory()
    payload = encode_batch(batch(1, (0, 1, 1, 1), model=424_242))
    outcome = decode_event_message("fleet/v1/x/events", device.uid, payload, directory)
    assert isinstance(outcome, Accepted)
    assert (outcome.device_id, outcome.model_version_id) == (device.id, 0)
    assert directory.model_version_of(0) == 0


def test_a_known_package_maps_to_its_model_version(device: Device,
                                                   hardware_profile: HardwareProfile) -> None:
    """The batch's model field is the package id; rows carry that package's model version."""
    from ota.models import Model, ModelVersion, Package, SigningKey

    mv = ModelVersion.objects.create(model=Model.objects.create(name="kws"), version="1.0.0",
                                     source="uploaded", status="ready")
    key = SigningKey.objects.create(kid="00" * 8, public_key="00" * 32,
                                    encrypted_private_key=b"-")
    pkg = Package.objects.create(model_version=mv, hardware_profile=hardware_profile,
                                 encoding=0, manifest=b"-", transfer_sha256="0" * 64,
                                 transfer_size=1, installed_size=1, signing_key=key,
                                 expires_at=NOW + timedelta(days=1))
    payload = encode_batch(batch(1, (0, 1, 1, 1), model=pkg.id))
    outcome = decode_event_message("t", device.uid, payload, DeviceDirectory())
    assert isinstance(outcome, Accepted) and outcome.model_version_id == mv.id


def _items(seq: int) -> list[Any]:
    return list(cbor2.loads(encode_batch(batch(seq, (0, 1, 2, 3), (10, 2, 3, 4)))))


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\x00", Reason.CBOR_MALFORMED),
    (encode_batch(batch(1, (0, 1, 1, 1))) + b"\x00", Reason.CBOR_MALFORMED),  # trailing byte
    (bytes(MAX_EVENTS_BYTES + 1), Reason.PAYLOAD_TOO_LARGE),
    (cbor2.dumps({"seq": 1}), Reason.SCHEMA_MISMATCH),
    (cbor2.dumps([9, *_items(1)[1:]]), Reason.SCHEMA_MISMATCH),  # unknown message kind
    (cbor2.dumps(_items(1)[:5]), Reason.SCHEMA_MISMATCH),  # too few items
    (cbor2.dumps([*_items(1)[:2], 1_000, *_items(1)[3:]]), Reason.VALUE_OUT_OF_RANGE),  # 1970
    (cbor2.dumps([*_items(1)[:4], 20, *_items(1)[5:]]), Reason.VALUE_OUT_OF_RANGE),  # n: 20
    (cbor2.dumps(cbor2.CBORTag(1, 0)), Reason.SCHEMA_MISMATCH),  # tags are refused
])
def test_bad_payloads_are_refused_with_their_reason(device: Device, payload: bytes,
                                                    reason: Reason) -> None:
    """Each malformed payload yields a Rejected with the wire reason, never an exception."""
    outcome = decode_event_message("fleet/v1/d/events", device.uid, payload, DeviceDirectory())
    assert isinstance(outcome, Rejected)
    assert outcome.reason == reason, outcome.detail
    assert outcome.payload == payload


def test_unknown_and_revoked_devices_are_refused(device: Device) -> None:
    """A valid batch for a uid the server does not know, or has revoked, is UNKNOWN_DEVICE."""
    payload = encode_batch(batch(1, (0, 1, 1, 1)))
    unknown = decode_event_message("t", "nobody-here", payload, DeviceDirectory())
    assert isinstance(unknown, Rejected) and unknown.reason == Reason.UNKNOWN_DEVICE
    Device.objects.filter(pk=device.pk).update(revoked_at=NOW)
    revoked = decode_event_message("t", device.uid, payload, DeviceDirectory())
    assert isinstance(revoked, Rejected) and revoked.reason == Reason.UNKNOWN_DEVICE
    assert "revoked" in revoked.detail


def test_rejections_are_dead_lettered_truncated() -> None:
    """Dead letters keep the reason, the full size and the first 1 KiB of the payload."""
    record_rejections([Rejected("fleet/v1/d/events", "d", Reason.PAYLOAD_TOO_LARGE, "big",
                                bytes(range(256)) * 80)])
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.device_uid, letter.size) == ("PAYLOAD_TOO_LARGE", "d", 20_480)
    assert bytes(letter.payload) == (bytes(range(256)) * 4)


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_consumers_store_good_messages_and_dead_letter_the_rest(device: Device) -> None:
    """One worker batch mixing good, duplicate, malformed and misrouted messages."""
    topic = f"fleet/v1/{device.uid}/events"
    good = encode_batch(batch(1, (0, 1, 1, 1)))
    summary = encode_summary(summarize([Event(T0, 0, 9, 9)], seq=2, t0_ms=T0, model=0,
                                       window_s=60))
    received = [Received(t, p, mid, 1, NOW) for mid, (t, p) in enumerate([
        (topic, good), (topic, good), (topic, summary), (topic, b"\x00\xff"),
        ("fleet/v1/not a uid/events", good), (f"fleet/v1/{device.uid}/nonsense", good)])]
    consumers = Consumers()
    consumers(received)
    assert sorted(IngestedBatch.objects.values_list("seq", flat=True)) == [1, 2]
    assert sorted(DeadLetter.objects.values_list("reason", flat=True)) == [
        "CBOR_MALFORMED", "SCHEMA_MISMATCH", "SCHEMA_MISMATCH"]
    assert consumers.counters["batches_stored"] == 2
    assert consumers.counters["batches_duplicate"] == 1
    consumers(received[:1])  # redelivered later: nothing new
    assert IngestedBatch.objects.count() == 2
    assert consumers.counters["batches_duplicate"] == 2


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_prepare_writes_nothing_and_a_prepared_batch_is_stored_once(device: Device) -> None:
    """The worker decodes the next batch while the last one is stored: ``prepare`` must not
    write, and committing a prepared batch again (a retried commit) adds nothing."""
    topic = f"fleet/v1/{device.uid}/events"
    received = [Received(topic, encode_batch(batch(seq, (seq * 1000, 1, 7, 3))), seq, 1, NOW)
                for seq in (1, 2, 3)]
    received.append(Received(topic, b"\xff", 4, 1, NOW))
    consumers = Consumers()
    prepared = consumers.prepare(received)
    assert prepared.staged is not None and len(prepared.staged.events) == 3
    assert [r.reason for r in prepared.rejected] == [Reason.CBOR_MALFORMED]
    assert (IngestedBatch.objects.count(), EventRow.objects.count(),
            DeadLetter.objects.count()) == (0, 0, 0)
    consumers.commit(prepared)
    consumers.commit(prepared)
    assert sorted(EventRow.objects.values_list("seq", flat=True)) == [1, 2, 3]
    assert sum(Rollup.objects.values_list("count", flat=True)) == 3
    assert consumers.counters["batches_stored"] == 3
    assert consumers.counters["batches_duplicate"] == 3


def test_rows_and_rollups_of_a_mixed_call_match_a_reference(
        device: Device, hardware_profile: HardwareProfile) -> None:
    """Many batches and summaries in one call (as the worker stores them): every event row and
    every rollup cell equals what a plain per-event computation gives, latency bounds included.
    """
    other = Device.objects.create(uid="unit-second", hardware_profile=hardware_profile,
                                  public_key_pem="-", public_key_fingerprint="unit-second",
                                  key_algorithm="ed25519")
    rng = random.Random(4)
    bounds = [0, 9, 10, 11, 49, 50, 51, 199, 200, 201, 999, 1000, 1001, 600_000]
    accepted, rows, cells = [], Counter(), defaultdict(lambda: [0] * 8)
    for seq in range(1, 41):
        for dev, mv in ((device, seq % 3), (other, 7)):
            if seq % 10 == 0:  # a summary now and then
                events = [Event(T0 + seq * 50_000 + k * 900, rng.randrange(4), rng.randrange(256),
                                rng.choice(bounds)) for k in range(rng.randrange(1, 30))]
                s = summarize(events, seq=seq, t0_ms=T0 + seq * 50_000, model=0, window_s=60)
                accepted.append(accept(dev, s, model_version=mv))
                for label, n in enumerate(s.counts):
                    if n:
                        cell = cells[(dev.id, mv, (s.t0_ms // 60_000) * 60, label)]
                        _add(cell, n, s.mean_scores[label] * n, s.mean_latency_100us)
                continue
            t, events = T0 + seq * 50_000 + rng.randrange(1000), []
            for _ in range(rng.randrange(1, 70)):
                events.append(Event(t, rng.randrange(6), rng.randrange(256), rng.choice(bounds)))
                t += rng.randrange(0, 3000)
            b = EventBatch.of(seq, 0, events)
            accepted.append(accept(dev, b, model_version=mv))
            for e in events:
                rows[(dev.id, mv, seq, e.t_ms, e.label, e.score, e.latency_100us)] += 1
                _add(cells[(dev.id, mv, (e.t_ms // 60_000) * 60, e.label)], 1, e.score,
                     e.latency_100us)
    accepted.append(accepted[3])  # a copy in the same call
    result = store_batches(accepted, NOW)
    assert result.duplicates == 1
    stored = Counter(
        (d, mv, s, int(ts.timestamp() * 1000), lab, sc, lat)
        for d, mv, s, ts, lab, sc, lat in EventRow.objects.values_list(
            "device_id", "model_version_id", "seq", "ts", "label", "score", "latency_100us"))
    assert stored == rows
    got = {(d, mv, int(b.timestamp()), lab): list(sums) for d, mv, b, lab, *sums in
           Rollup.objects.values_list("device_id", "model_version_id", "bucket", "label",
                                      "count", "score_sum", "latency_sum", "lat_le_1ms",
                                      "lat_le_5ms", "lat_le_20ms", "lat_le_100ms",
                                      "lat_gt_100ms")}
    assert got == dict(cells)


def _add(cell: list[int], count: int, score_sum: int, latency: int) -> None:
    """Add ``count`` events of one latency to a reference rollup cell."""
    cell[0] += count
    cell[1] += score_sum
    cell[2] += latency * count
    bucket = next((i for i, bound in enumerate((10, 50, 200, 1000)) if latency <= bound), 4)
    cell[3 + bucket] += count


def test_raw_events_have_a_time_index_only() -> None:
    """The raw event table is indexed by time alone: BRIN on PostgreSQL, where a btree would
    halve COPY throughput at ingest; nothing reads raw events by device."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "telemetry_event")
    indexes = {name: c for name, c in constraints.items() if c["index"] and not c["primary_key"]}
    assert [c["columns"] for c in indexes.values()] == [["ts"]]
    if connection.vendor == "postgresql":
        assert [c["type"] for c in indexes.values()] == ["brin"]


def test_directory_looks_up_a_batch_of_devices_in_one_query(
        device: Device, hardware_profile: HardwareProfile,
        django_assert_num_queries: Any) -> None:
    """A cold worker meeting many devices at once asks the database once per batch."""
    revoked = Device.objects.create(uid="unit-revoked", hardware_profile=hardware_profile,
                                    public_key_pem="-", public_key_fingerprint="unit-revoked",
                                    key_algorithm="ed25519", revoked_at=NOW)
    directory = DeviceDirectory(ttl_s=60)
    with django_assert_num_queries(1):
        directory.prefetch([device.uid, revoked.uid, "nobody-here"])
        assert directory.device(device.uid).id == device.id
        assert directory.device(revoked.uid).revoked
        assert directory.device("nobody-here") is None
    with django_assert_num_queries(0):
        directory.prefetch([device.uid, "nobody-here"])  # all cached: no query


@pytest.mark.django_db(transaction=True)  # the consumers close stale connections first
def test_another_batch_reusing_a_seq_is_dead_lettered_not_dropped(device: Device) -> None:
    """A device that reuses a sequence number (say, after losing its counter) sends *other*
    events under a stored (device, seq): that is not a redelivery to absorb silently but a
    refusal with its reason, kept and counted; a true redelivery still counts as a duplicate."""
    topic = f"fleet/v1/{device.uid}/events"
    first = encode_batch(batch(5, (0, 1, 1, 1)))
    other = encode_batch(batch(5, (0, 2, 200, 9)))  # same seq, other content
    consumers = Consumers()
    consumers([Received(topic, first, 1, 1, NOW)])
    consumers([Received(topic, first, 2, 1, NOW), Received(topic, other, 3, 1, NOW)])
    assert list(EventRow.objects.values_list("label", flat=True)) == [1]
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.device_uid, bytes(letter.payload)) == (
        "SEQUENCE_REUSED", device.uid, other)
    assert consumers.counters["batches_duplicate"] == 1
    assert consumers.counters["rejected_sequence_reused"] == 1


@pytest.mark.django_db(transaction=True)
def test_reuse_inside_one_worker_batch_is_caught_too(device: Device) -> None:
    """Two different batches with one seq in the same worker batch: the first is stored."""
    topic = f"fleet/v1/{device.uid}/events"
    consumers = Consumers()
    consumers([Received(topic, encode_batch(batch(7, (0, 1, 1, 1))), 1, 1, NOW),
               Received(topic, encode_batch(batch(7, (0, 3, 3, 3))), 2, 1, NOW)])
    assert list(EventRow.objects.values_list("label", flat=True)) == [1]
    assert list(DeadLetter.objects.values_list("reason", flat=True)) == ["SEQUENCE_REUSED"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL storage parameter")
def test_rollup_pages_leave_room_for_heap_only_updates() -> None:
    """Ingest adds to the same rollup rows at every commit: half of each new page stays free
    for their new versions (migration 0012)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'telemetry_rollup'")
        assert "fillfactor=50" in (cursor.fetchone()[0] or [])
