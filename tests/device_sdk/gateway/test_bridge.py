"""The bridge alone: frames map to the right topics, and MQTT messages to the right frames.

A recording uplink stands in for MQTT; children's outboxes are read directly.
"""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Iterator

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.gateway.bridge import CHUNK_OVERHEAD, Bridge, Child, Outbox
from device_sdk.gateway.chunk_cache import ChunkCache
from device_sdk.protocol import link
from device_sdk.protocol.events import Event, EventBatch, encode_batch
from device_sdk.protocol.manifest import Encoding, Manifest, sign_manifest
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    Report,
    decode_chunk,
    decode_chunk_request,
    encode_chunk,
    encode_chunk_request,
    encode_fanout_chunk,
    encode_report,
)
from device_sdk.protocol.status import (
    OFFLINE_PAYLOAD,
    Capabilities,
    LinkState,
    Status,
    encode_status,
)
from device_sdk.protocol.topics import package_topic
from tests.device_sdk.gateway.fake_mcu import CAPS, online_status

T0 = 1_767_225_600_000
PACKAGE = bytes(range(256)) * 40  # a 10,240-byte transfer stream


class RecordingUplink:
    """Keeps what the bridge would send to the broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.filters: set[str] = set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))

    def subscribe(self, topic_filter: str) -> None:
        self.filters.add(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self.filters.discard(topic_filter)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.published if t == topic]


class Admissions:
    """An admission that records requests; the test decides when they are done."""

    def __init__(self, admitted: set[str] | None = None) -> None:
        self.known = admitted or set()
        self.requested: list[tuple[str, Capabilities]] = []

    def is_admitted(self, uid: str) -> bool:
        return uid in self.known

    def request(self, uid: str, capabilities: Capabilities) -> None:
        self.requested.append((uid, capabilities))


def frame(kind: link.Kind, payload: bytes = b"") -> link.Frame:
    return link.Frame(int(kind), 0, 0, payload)


def drain(outbox: Outbox) -> list[tuple[link.Kind, bytes]]:
    items = []
    while True:
        try:
            items.append(outbox.get_nowait())
        except queue.Empty:
            return items


@pytest.fixture
def uplink() -> RecordingUplink:
    return RecordingUplink()


@pytest.fixture
def bridge(uplink: RecordingUplink) -> Bridge:
    return Bridge(uplink, clock=lambda: T0 / 1000)


@pytest.fixture
def child(bridge: Bridge) -> Iterator[Child]:
    outbox: Outbox = queue.SimpleQueue()
    yield bridge.attach("mcu-1", 544, "socket://test", outbox)


def test_hello_subscribes_the_childs_downlink_and_sends_the_time(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """Attaching a child subscribes its offer and chunk topics (and, once, the fleet's trust
    records); the MCU gets the clock."""
    assert uplink.filters == {"fleet/v1/mcu-1/ota/offer", "fleet/v1/mcu-1/ota/chunk",
                              "fleet/v1/mcu-1/ota/key", "fleet/v1/mcu-1/ota/withdraw",
                              "fleet/v1/keys"}
    assert drain(child.outbox) == [(link.Kind.TIME, cbor2.dumps(T0))]


def test_upstream_frames_map_to_the_childs_topics_unchanged(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """STATUS (retained), EVENTS, REPORT and CHUNK_REQUEST keep their payload bytes."""
    status = online_status()
    batch = encode_batch(EventBatch(1, T0, 7, [Event(T0, 2, 200, 11)]))
    report = encode_report(Report(7, DeploymentState.TRIAL))
    request = encode_chunk_request(ChunkRequest(7, 0, 512))
    for kind, payload in ((link.Kind.STATUS, status), (link.Kind.EVENTS, batch),
                          (link.Kind.REPORT, report), (link.Kind.CHUNK_REQUEST, request)):
        bridge.on_frame(child, frame(kind, payload))
    assert uplink.published == [
        ("fleet/v1/mcu-1/status", status, True),
        ("fleet/v1/mcu-1/events", batch, False),
        ("fleet/v1/mcu-1/ota/report", report, False),
        ("fleet/v1/mcu-1/ota/get", request, False),
    ]
    assert package_topic(7) in uplink.filters  # the fan-out of what it downloads


def test_offer_and_unicast_chunk_reach_the_mcu(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """An offer becomes OFFER; the chunk answering the pending request becomes CHUNK."""
    drain(child.outbox)
    bridge.on_message("fleet/v1/mcu-1/ota/offer", b"\xd2signed-manifest")
    bridge.on_frame(child, frame(link.Kind.CHUNK_REQUEST,
                                 encode_chunk_request(ChunkRequest(7, 512, 512))))
    stale = encode_chunk(Chunk(7, 0, PACKAGE[:512]))  # a late answer to an earlier request
    bridge.on_message("fleet/v1/mcu-1/ota/chunk", stale)
    answer = encode_chunk(Chunk(7, 512, PACKAGE[512:1024]))
    bridge.on_message("fleet/v1/mcu-1/ota/chunk", answer)
    bridge.on_message("fleet/v1/mcu-1/ota/chunk", answer)  # a duplicate: nothing pending now
    assert drain(child.outbox) == [(link.Kind.OFFER, b"\xd2signed-manifest"),
                                   (link.Kind.CHUNK, answer)]


def test_a_signed_offer_starts_following_its_packages_fanout(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """The carousel's pass follows the offers: the gateway subscribes before any request."""
    digest = hashlib.sha256(PACKAGE).digest()
    manifest = sign_manifest(
        Manifest(sequence=12, model_name="m", model_version="1", hardware_profile="p",
                 model_sha256=digest, model_size=len(PACKAGE), encoding=Encoding.RAW,
                 transfer_sha256=digest, transfer_size=len(PACKAGE), arena_bytes=2048,
                 expires_at=T0 // 1000 + 3600, package_id=12),
        Ed25519PrivateKey.generate())
    bridge.on_message("fleet/v1/mcu-1/ota/offer", manifest)
    assert package_topic(12) in uplink.filters
    bridge.on_message(package_topic(12), encode_fanout_chunk(Chunk(12, 0, PACKAGE[:4096])))
    drain(child.outbox)
    bridge.on_frame(child, frame(link.Kind.CHUNK_REQUEST,
                                 encode_chunk_request(ChunkRequest(12, 0, 512))))
    [(_, payload)] = drain(child.outbox)
    assert decode_chunk(payload) == Chunk(12, 0, PACKAGE[:512])
    assert uplink.on("fleet/v1/mcu-1/ota/get") == []  # served by the pass it caught


def test_fanout_chunks_are_clipped_to_the_mtu_and_serve_later_requests_locally(
    bridge: Bridge, uplink: RecordingUplink
) -> None:
    """A 4 KiB carousel chunk answers a small-MTU MCU's requests one frame at a time."""
    outbox: Outbox = queue.SimpleQueue()
    small = bridge.attach("mcu-small", 256, "socket://small", outbox)
    drain(outbox)
    bridge.on_frame(small, frame(link.Kind.CHUNK_REQUEST,
                                 encode_chunk_request(ChunkRequest(9, 0, 512))))
    forwarded = [decode_chunk_request(p) for p in uplink.on("fleet/v1/mcu-small/ota/get")]
    assert forwarded == [ChunkRequest(9, 0, 256 - CHUNK_OVERHEAD)]  # clipped before it leaves
    bridge.on_message(package_topic(9), encode_fanout_chunk(Chunk(9, 0, PACKAGE[:4096])))
    offset = 0
    for _ in range(3):
        [(kind, payload)] = drain(outbox)
        chunk = decode_chunk(payload)
        assert kind is link.Kind.CHUNK and len(payload) <= small.mtu
        assert (chunk.offset, chunk.data) == (offset, PACKAGE[offset:offset + 240])
        offset += len(chunk.data)
        bridge.on_frame(small, frame(link.Kind.CHUNK_REQUEST,
                                     encode_chunk_request(ChunkRequest(9, offset, 512))))
    assert len(uplink.on("fleet/v1/mcu-small/ota/get")) == 1  # the rest came from the cache
    assert bridge.counters["chunks_from_cache"] == 3


def test_download_over_drops_the_fanout_subscription_and_cache(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """After VERIFIED (or FAILED) nobody downloads the package: unsubscribe, forget it."""
    bridge.on_frame(child, frame(link.Kind.CHUNK_REQUEST,
                                 encode_chunk_request(ChunkRequest(5, 0, 512))))
    bridge.on_message(package_topic(5), encode_fanout_chunk(Chunk(5, 0, PACKAGE[:4096])))
    assert bridge.cache.size == 4096
    bridge.on_frame(child, frame(link.Kind.REPORT,
                                 encode_report(Report(5, DeploymentState.FAILED, 22))))
    assert package_topic(5) not in uplink.filters
    assert bridge.cache.size == 0


def test_a_child_not_yet_admitted_is_held_then_flushed_in_order(uplink: RecordingUplink) -> None:
    """Nothing is published for an MCU the broker would refuse; its messages wait."""
    admissions = Admissions()
    bridge = Bridge(uplink, admission=admissions)
    outbox: Outbox = queue.SimpleQueue()
    child = bridge.attach("mcu-new", 544, "socket://new", outbox)
    assert uplink.filters == set()
    batch = encode_batch(EventBatch(1, T0, 0, [Event(T0, 1, 9, 1)]))
    bridge.on_frame(child, frame(link.Kind.STATUS, online_status()))
    bridge.on_frame(child, frame(link.Kind.EVENTS, batch))
    bridge.on_frame(child, frame(link.Kind.STATUS, online_status()))
    assert uplink.published == []
    assert admissions.requested == [("mcu-new", CAPS)]  # asked once, with its capabilities
    bridge.admitted("mcu-new")
    assert [t for t, _, _ in uplink.published] == ["fleet/v1/mcu-new/status",
                                                   "fleet/v1/mcu-new/events"]
    assert "fleet/v1/mcu-new/ota/offer" in uplink.filters


def test_a_status_without_capabilities_is_relayed_and_admission_waits_for_a_full_one(
    uplink: RecordingUplink,
) -> None:
    """Statuses may leave the capabilities out (unchanged): relayed as they are, the child's
    known capabilities kept; admission, which needs them, waits for a status that has them."""
    admissions = Admissions()
    bridge = Bridge(uplink, admission=admissions)
    child = bridge.attach("mcu-lean", 544, "socket://lean", queue.SimpleQueue())
    lean = encode_status(Status(LinkState.ONLINE, 3, 0, 9, 4096, 1))
    bridge.on_frame(child, frame(link.Kind.STATUS, lean))
    assert (admissions.requested, uplink.published) == ([], [])
    bridge.on_frame(child, frame(link.Kind.STATUS, online_status()))
    bridge.on_frame(child, frame(link.Kind.STATUS, lean))
    assert admissions.requested == [("mcu-lean", CAPS)]
    bridge.admitted("mcu-lean")
    bridge.on_frame(child, frame(link.Kind.STATUS, lean))
    assert uplink.on("fleet/v1/mcu-lean/status") == [lean, lean]  # the newest held, then live
    assert child.capabilities == CAPS


def test_port_closed_publishes_offline_and_parks_offers(
    bridge: Bridge, uplink: RecordingUplink, child: Child
) -> None:
    """The fleet sees the child offline; an offer meanwhile waits for its next HELLO."""
    bridge.detach(child)
    assert uplink.published[-1] == ("fleet/v1/mcu-1/status", OFFLINE_PAYLOAD, True)
    assert "fleet/v1/mcu-1/ota/offer" not in uplink.filters
    bridge.on_message("fleet/v1/mcu-1/ota/offer", b"\xd2later")
    again: Outbox = queue.SimpleQueue()
    bridge.attach("mcu-1", 544, "socket://test", again)
    assert [k for k, _ in drain(again)] == [link.Kind.TIME, link.Kind.OFFER]


def test_malformed_downlink_is_refused_and_oversize_offers_dropped(
    bridge: Bridge, child: Child
) -> None:
    """Garbage on a chunk topic or an offer larger than the MCU's MTU never reaches it."""
    drain(child.outbox)
    bridge.on_message("fleet/v1/mcu-1/ota/chunk", b"\xff\x00")
    bridge.on_message(package_topic(1), cbor2.dumps([1, 0]))
    bridge.on_message("fleet/v1/mcu-1/ota/offer", b"x" * 545)
    assert drain(child.outbox) == []
    assert bridge.counters["messages_refused"] == 2
    assert bridge.counters["offers_too_large"] == 1


def test_chunk_cache_serves_exact_offsets_across_segments() -> None:
    """Overlapping unicast and carousel segments: the longest run from the offset wins."""
    cache = ChunkCache(max_bytes=20_000)
    cache.put(1, 0, PACKAGE[:4096])
    cache.put(1, 3584, PACKAGE[3584:4096 + 512])
    assert cache.get(1, 3600, 1000) == PACKAGE[3600:4600]
    assert cache.get(1, 100, 10) == PACKAGE[100:110]
    assert cache.get(1, 4608, 10) is None and cache.get(2, 0, 10) is None
    cache.put(2, 0, PACKAGE)  # 10 KiB more: package 1 is the least recently used, it goes
    cache.put(3, 0, PACKAGE)
    assert cache.get(1, 0, 10) is None and cache.get(3, 0, 10) == PACKAGE[:10]


def test_trust_records_reach_every_child_as_rotation_frames(
        bridge: Bridge, uplink: RecordingUplink, child: Child) -> None:
    """The retained fleet/v1/keys bundle goes to each MCU, one ROTATION frame per record, and
    again to an MCU that attaches later or restarts."""
    from device_sdk.protocol.trust import (
        TrustPolicy,
        encode_trust_bundle,
        rotation_for,
        sign_policy,
        sign_rotation,
    )

    assert "fleet/v1/keys" in uplink.filters
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    records = [sign_rotation(rotation_for(new.public_key(), sequence=1), old),
               sign_policy(TrustPolicy(2, revoke_packages=(9,)), new)]
    drain(child.outbox)
    bridge.on_message("fleet/v1/keys", encode_trust_bundle(records))
    assert drain(child.outbox) == [(link.Kind.ROTATION, r) for r in records]
    later: Outbox = queue.SimpleQueue()
    bridge.attach("mcu-2", 544, "socket://other", later)
    assert [p for k, p in drain(later) if k == link.Kind.ROTATION] == records
    bridge.restarted(child, 544)
    assert [p for k, p in drain(child.outbox) if k == link.Kind.ROTATION] == records


def test_an_encrypted_fanout_is_decrypted_with_the_childs_key_before_caching(
        bridge: Bridge, uplink: RecordingUplink, child: Child) -> None:
    from device_sdk.protocol.fanout import crypt
    from device_sdk.protocol.ota_messages import FanoutKey, encode_fanout_chunk, encode_fanout_key

    key, data = bytes(range(16)), bytes(range(256)) * 8
    bridge.on_message("fleet/v1/mcu-1/ota/key", encode_fanout_key(FanoutKey(3, key)))
    bridge.on_message(package_topic(3), encode_fanout_chunk(Chunk(3, 16, crypt(key, 3, 16, data))))
    assert bridge.cache.get(3, 16, len(data)) == data


def test_a_withdrawal_reaches_its_child_unchanged_as_a_withdraw_frame(
        bridge: Bridge, uplink: RecordingUplink, child: Child) -> None:
    """fleet/v1/{child}/ota/withdraw is followed per child and forwarded as link kind 13,
    byte for byte; a malformed one never reaches the MCU."""
    from device_sdk.protocol.ota_messages import Withdrawal, encode_withdrawal

    assert f"fleet/v1/{child.uid}/ota/withdraw" in uplink.filters
    drain(child.outbox)
    payload = encode_withdrawal(Withdrawal(77, 35))
    bridge.on_message(f"fleet/v1/{child.uid}/ota/withdraw", payload)
    assert drain(child.outbox) == [(link.Kind.WITHDRAW, payload)]
    bridge.on_message(f"fleet/v1/{child.uid}/ota/withdraw", b"\x82\x18")
    assert drain(child.outbox) == []
    assert bridge.counters["messages_refused"] >= 1
