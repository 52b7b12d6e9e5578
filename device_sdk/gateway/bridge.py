"""Swap framing and topic: link frames of the MCUs wired to the gateway <-> MQTT messages.

A frame's payload is the MQTT payload of the topic its kind maps to, unchanged
(``link.CHANNEL_OF_KIND``, firmware/LINK.md), so the gateway forwards bytes it does not need to
trust: every manifest is signed and every transferred byte digested, and the MCU checks them.

    STATUS, EVENTS, REPORT        -> fleet/v1/{child}/status (retained) | events | ota/report
    CHUNK_REQUEST                 -> answered from the chunk cache, else fleet/v1/{child}/ota/get
    fleet/v1/{child}/ota/offer    -> OFFER
    fleet/v1/{child}/ota/chunk    -> CHUNK (the answer to the pending request)
    fleet/v1/{child}/ota/key      -> the key of a package's fan-out (kept; decrypts it)
    fleet/v1/{child}/ota/withdraw -> WITHDRAW, unchanged (the MCU stops that download)
    fleet/v1/pkg/{pkg}/chunk      -> decrypted, cached; answers pending requests, clipped
    fleet/v1/keys (retained)      -> ROTATION per record, to every child (again at its HELLO)

Until a child is admitted (enrolled and added to the gateway's children) what it sends is held, the
newest status and up to ``HELD_MAX`` other messages, and sent once it is. An MCU whose HELLO
announces its own Ed25519 key proves it at enrollment: the admission sends it an ENROLL_CHALLENGE
through :meth:`Bridge.challenge` and gets its ENROLL_PROOF back (``Admission.proof``); the MCU
signs, the gateway relays.

Threading: serial threads call :meth:`Bridge.attach`, :meth:`Bridge.on_frame` and friends for their
own child; the MQTT thread calls :meth:`Bridge.on_message`; the enrollment thread calls
:meth:`Bridge.admitted`. Frames to a child go into its ``outbox``, which only its serial thread
drains. Uplink calls are made outside the lock, so the MQTT thread never waits on a serial one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from device_sdk.gateway.chunk_cache import ChunkCache
from device_sdk.protocol import link
from device_sdk.protocol.cose import parse_sign1
from device_sdk.protocol.fanout import crypt
from device_sdk.protocol.limits import MAX_OFFER_BYTES
from device_sdk.protocol.manifest import Manifest
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    decode_chunk,
    decode_chunk_request,
    decode_fanout_key,
    decode_report,
    decode_withdrawal,
    encode_chunk,
    encode_chunk_request,
)
from device_sdk.protocol.reasons import ProtocolError
from device_sdk.protocol.status import OFFLINE_PAYLOAD, Capabilities, decode_status
from device_sdk.protocol.topics import (
    Channel,
    DeviceTopic,
    FleetChannel,
    FleetTopic,
    PackageChannel,
    device_topic,
    fleet_topic,
    package_topic,
    parse_topic,
    validate_uid,
)
from device_sdk.protocol.trust import decode_trust_bundle

__all__ = ["CHUNK_OVERHEAD", "Admission", "Bridge", "Child", "Outbox", "UplinkLike"]

log = logging.getLogger(__name__)

# CBOR around a chunk's data ([pkg, offset, bstr]): what an MTU must leave room for (LINK.md).
CHUNK_OVERHEAD: Final = 16
HELD_MAX: Final = 64
_CHILD_CHANNELS: Final = (Channel.OTA_OFFER, Channel.OTA_CHUNK, Channel.OTA_KEY, Channel.OTA_WITHDRAW)
# Reports after which a child no longer downloads the package.
_DOWNLOAD_OVER: Final = frozenset(DeploymentState) - {
    DeploymentState.PENDING, DeploymentState.OFFERED, DeploymentState.DOWNLOADING}

Outbox = queue.SimpleQueue[tuple[link.Kind, bytes]]


class UplinkLike(Protocol):
    """What the bridge needs from the MQTT side (:class:`~device_sdk.gateway.uplink.Uplink`)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...
    def subscribe(self, topic_filter: str) -> None: ...
    def unsubscribe(self, topic_filter: str) -> None: ...


class Admission(Protocol):
    """Enrolls MCUs and makes them the gateway's children (:mod:`device_sdk.gateway.enroll`)."""

    def is_admitted(self, uid: str) -> bool:
        """Return whether ``uid`` is known to be enrolled and our child."""
        ...

    def request(self, uid: str, capabilities: Capabilities) -> None:
        """Start admitting ``uid`` in the background; call ``Bridge.admitted`` when done. For an
        MCU with its own key the bridge passes ``key=`` (32 raw bytes) and ``hardware=`` too,
        and calls ``is_admitted(uid, key=...)``; it hands its ENROLL_PROOF payloads to
        ``proof(uid, signature)`` when the admission has that method."""
        ...


@dataclass(eq=False)
class Child:
    """One MCU on one port, as the bridge knows it."""

    uid: str
    mtu: int  # largest link payload the MCU accepts (its HELLO)
    port: str
    outbox: Outbox
    key: bytes | None = None  # the MCU's own Ed25519 public key (its HELLO), if it has one
    hardware: str | None = None  # the hardware profile its HELLO names (what it signs)
    admitted: bool = False
    admission_requested: bool = False
    offline: bool = False
    capabilities: Capabilities | None = None
    pending: ChunkRequest | None = None  # the chunk the MCU waits for, clipped to its MTU
    downloading: set[int] = field(default_factory=set)
    held_status: bytes | None = None
    held: deque[tuple[Channel, bytes]] = field(default_factory=lambda: deque(maxlen=HELD_MAX))


class Bridge:
    """Route frames of attached children to MQTT and MQTT messages to their outboxes."""

    def __init__(self, uplink: UplinkLike, *, admission: Admission | None = None,
                 cache: ChunkCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.uplink = uplink
        self.admission = admission
        self.cache = cache or ChunkCache()
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._children: dict[str, Child] = {}
        self._parked_offers: dict[str, bytes] = {}  # offers for a child whose port is down
        self._fanout: set[int] = set()
        self._trust_records: list[bytes] = []  # the latest trust bundle, for new children
        self._fanout_keys: dict[int, bytes] = {}  # package -> key of its encrypted fan-out
        self._trust_subscribed = False
        self._lock = threading.Lock()

    # -- children ----------------------------------------------------------------------------

    def attach(self, uid: str, mtu: int, port: str, outbox: Outbox, *, key: bytes | None = None,
               hardware: str | None = None) -> Child:
        """Register the MCU that said HELLO on ``port`` (with its own public ``key`` if it
        announced one); send it the time. Raise ProtocolError for an id that cannot name
        topics."""
        child = Child(validate_uid(uid), mtu, port, outbox, key, hardware)
        child.admitted = self.admission is None or (
            self.admission.is_admitted(uid, key=key) if key is not None  # type: ignore[call-arg]
            else self.admission.is_admitted(uid))
        with self._lock:
            replaced = self._children.get(uid)
            self._children[uid] = child
            offer = self._parked_offers.pop(uid, None)
        if replaced is not None and replaced.port != port:
            log.error("%s said HELLO on %s but is also on %s: two MCUs with one id?", uid, port,
                      replaced.port)
        outbox.put((link.Kind.TIME, self.time_payload()))
        self._send_trust(child)
        if offer is not None:
            self._offer(uid, offer)
        if child.admitted:
            self._subscribe(uid)
        log.info("child %s on %s (mtu %d, %s)%s", uid, port, mtu,
                 "its own key" if key is not None else "no key of its own",
                 "" if child.admitted else ": not yet our child, holding its messages")
        return child

    def restarted(self, child: Child, mtu: int) -> None:
        """Take note that a child said HELLO again (it rebooted): resend the time."""
        with self._lock:
            child.mtu = mtu
            child.pending = None
            child.admission_requested = False  # a refused admission is tried again
        child.outbox.put((link.Kind.TIME, self.time_payload()))
        self._send_trust(child)
        log.info("child %s restarted", child.uid)

    def detach(self, child: Child) -> None:
        """Forget a child whose port closed; tell the fleet it is offline."""
        with self._lock:
            if self._children.get(child.uid) is child:
                del self._children[child.uid]
            current = child.uid in self._children
        if current:
            return  # the MCU came back on another port meanwhile
        self.mark_offline(child)
        if child.admitted:
            for channel in _CHILD_CHANNELS:
                self.uplink.unsubscribe(device_topic(child.uid, channel))
        for pkg in list(child.downloading):
            self._download_over(child, pkg)

    def mark_offline(self, child: Child) -> None:
        """Publish a child's offline status (retained), once, when its link goes quiet."""
        if child.offline:
            return
        child.offline = True
        if child.admitted:
            self.uplink.publish(device_topic(child.uid, Channel.STATUS), OFFLINE_PAYLOAD,
                                retain=True)
            self.counters["offline_published"] += 1
            log.info("child %s offline", child.uid)

    def admitted(self, uid: str) -> None:
        """Start bridging a child that is now enrolled and ours: send what it held."""
        with self._lock:
            child = self._children.get(uid)
            if child is None or child.admitted:
                return
            child.admitted = True
            held, child.held = list(child.held), deque(maxlen=HELD_MAX)
            status, child.held_status = child.held_status, None
        self._subscribe(uid)
        if status is not None:
            self._publish(uid, Channel.STATUS, status)
        for channel, payload in held:
            self._publish(uid, channel, payload)
        log.info("child %s admitted; %d held messages sent", uid, len(held) + bool(status))

    def challenge(self, uid: str, payload: bytes) -> bool:
        """Send an ENROLL_CHALLENGE to ``uid``'s MCU (the admission thread calls this); return
        False when it is not attached or announced no key."""
        with self._lock:
            child = self._children.get(uid)
        if child is None or child.key is None:
            return False
        child.outbox.put((link.Kind.ENROLL_CHALLENGE, payload))
        self.counters["enroll_challenges_sent"] += 1
        return True

    def children(self) -> list[Child]:
        """Return the attached children."""
        with self._lock:
            return list(self._children.values())

    def time_payload(self) -> bytes:
        """Return a TIME payload: the gateway's clock, unix milliseconds."""
        return link.encode_time(int(self.clock() * 1000))

    # -- frames from a child -----------------------------------------------------------------

    def on_frame(self, child: Child, frame: link.Frame) -> None:
        """Handle one delivered frame from ``child`` (called on its serial thread)."""
        try:
            kind = link.Kind(frame.kind)
        except ValueError:
            self.counters["frames_unknown_kind"] += 1
            return
        self.counters[f"frames_{kind.name.lower()}"] += 1
        if kind is link.Kind.STATUS:
            self._status(child, frame.payload)
        elif kind is link.Kind.EVENTS:
            self._send_or_hold(child, Channel.EVENTS, frame.payload)
        elif kind is link.Kind.CHUNK_REQUEST:
            self._chunk_request(child, frame.payload)
        elif kind is link.Kind.REPORT:
            self._report(child, frame.payload)
        elif kind is link.Kind.ENROLL_PROOF:
            self._proof(child, frame.payload)
        else:
            self.counters["frames_ignored"] += 1  # kinds the gateway sends, or HELLO again

    def _status(self, child: Child, payload: bytes) -> None:
        child.offline = False
        try:
            caps = decode_status(payload).capabilities
        except ProtocolError as exc:
            caps = None
            log.warning("status of %s does not decode (%s); forwarded as is", child.uid, exc)
        if caps is not None:
            child.capabilities = caps
        with self._lock:
            hold = not child.admitted
            if hold:
                child.held_status = payload  # only the newest status matters
        if not hold:
            self._publish(child.uid, Channel.STATUS, payload)
            return
        if caps is not None and self.admission is not None and not child.admission_requested:
            child.admission_requested = True
            if child.key is not None:
                self.admission.request(child.uid, caps, key=child.key,  # type: ignore[call-arg]
                                       hardware=child.hardware)
            else:
                self.admission.request(child.uid, caps)

    def _proof(self, child: Child, payload: bytes) -> None:
        try:
            signature = link.decode_enroll_proof(payload)
        except ProtocolError as exc:
            self.counters["enroll_proofs_undecodable"] += 1
            log.warning("enroll proof of %s refused: %s", child.uid, exc)
            return
        deliver = getattr(self.admission, "proof", None)
        if deliver is None or child.key is None:
            self.counters["enroll_proofs_unasked"] += 1
            return
        deliver(child.uid, signature)

    def _send_or_hold(self, child: Child, channel: Channel, payload: bytes) -> None:
        with self._lock:
            if not child.admitted:
                if len(child.held) == HELD_MAX:
                    self.counters["held_dropped"] += 1
                child.held.append((channel, payload))
                return
        self._publish(child.uid, channel, payload)

    def _report(self, child: Child, payload: bytes) -> None:
        try:
            report = decode_report(payload)
        except ProtocolError:
            self.counters["reports_undecodable"] += 1
        else:
            if report.state in _DOWNLOAD_OVER:
                self._download_over(child, report.pkg)
            log.info("child %s: package %d %s (detail %d)", child.uid, report.pkg,
                     report.state.name, report.detail)
        self._send_or_hold(child, Channel.OTA_REPORT, payload)

    def _chunk_request(self, child: Child, payload: bytes) -> None:
        try:
            asked = decode_chunk_request(payload)
        except ProtocolError as exc:
            self.counters["chunk_requests_undecodable"] += 1
            log.warning("chunk request of %s refused: %s", child.uid, exc)
            return
        length = min(asked.length, child.mtu - CHUNK_OVERHEAD)
        if length < 1 or not child.admitted:
            self.counters["chunk_requests_dropped"] += 1
            return
        request = ChunkRequest(asked.pkg, asked.offset, length)
        with self._lock:
            child.pending = request
        self._follow(child, request.pkg)
        if self._serve_pending(child, request.pkg):
            self.counters["chunks_from_cache"] += 1
            return
        self.counters["chunk_requests_forwarded"] += 1
        self.uplink.publish(device_topic(child.uid, Channel.OTA_GET),
                            encode_chunk_request(request))

    def _follow(self, child: Child, pkg: int) -> None:
        """Note that ``child`` downloads ``pkg``; subscribe to its fan-out if nobody did."""
        with self._lock:
            child.downloading.add(pkg)
            new_package = pkg not in self._fanout
            self._fanout.add(pkg)
        if new_package:
            self.uplink.subscribe(package_topic(pkg, PackageChannel.CHUNK))

    def _download_over(self, child: Child, pkg: int) -> None:
        with self._lock:
            child.downloading.discard(pkg)
            if child.pending is not None and child.pending.pkg == pkg:
                child.pending = None
            still = any(pkg in c.downloading for c in self._children.values())
            gone = not still and pkg in self._fanout
            if gone:
                self._fanout.discard(pkg)
        if gone:
            self.uplink.unsubscribe(package_topic(pkg, PackageChannel.CHUNK))
            self.cache.drop(pkg)

    # -- messages from the broker ------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one MQTT message (called on the MQTT thread)."""
        try:
            parsed = parse_topic(topic)
            if isinstance(parsed, FleetTopic):
                if parsed.channel is FleetChannel.KEYS:
                    self._trust_bundle(payload)
            elif isinstance(parsed, DeviceTopic):
                if parsed.channel is Channel.OTA_OFFER:
                    self._offer(parsed.uid, payload)
                elif parsed.channel is Channel.OTA_CHUNK:
                    self._chunk(decode_chunk(payload), parsed.uid)
                elif parsed.channel is Channel.OTA_WITHDRAW:  # unchanged; the MCU stops it
                    decode_withdrawal(payload)  # refuses what the MCU would drop anyway
                    with self._lock:
                        child = self._children.get(parsed.uid)
                    if child is not None:
                        child.outbox.put((link.Kind.WITHDRAW, payload))
                elif parsed.channel is Channel.OTA_KEY:
                    message = decode_fanout_key(payload)
                    with self._lock:
                        self._fanout_keys[message.pkg] = message.key
                        while len(self._fanout_keys) > 64:  # the oldest packages are done
                            del self._fanout_keys[next(iter(self._fanout_keys))]
                else:
                    self.counters["messages_ignored"] += 1
            else:
                chunk = decode_chunk(payload)
                with self._lock:
                    key = self._fanout_keys.get(chunk.pkg)
                if key is not None:  # the fan-out is encrypted; a child was offered it
                    chunk = Chunk(chunk.pkg, chunk.offset, crypt(key, chunk.pkg, chunk.offset,
                                                                 chunk.data))
                self._chunk(chunk, None)
        except ProtocolError as exc:
            self.counters["messages_refused"] += 1
            log.warning("message on %s refused: %s", topic, exc)

    def _offer(self, uid: str, manifest: bytes) -> None:
        if len(manifest) > MAX_OFFER_BYTES:
            self.counters["offers_too_large"] += 1
            return
        with self._lock:
            child = self._children.get(uid)
            if child is None:
                self._parked_offers[uid] = manifest  # sent when its port comes back
                return
        if len(manifest) > child.mtu:
            self.counters["offers_too_large"] += 1
            log.error("offer for %s is %d bytes, its link takes %d", uid, len(manifest), child.mtu)
            return
        child.outbox.put((link.Kind.OFFER, manifest))
        self.counters["offers_forwarded"] += 1
        pkg = _peek_package(manifest)
        if pkg is not None:
            # The carousel sends a package's pass right after the offers: follow it now, not at
            # the MCU's first request. (Unverified, it only picks a subscription.)
            self._follow(child, pkg)

    def _trust_bundle(self, payload: bytes) -> None:
        """Keep the fleet's trust records and send each to every child as a ROTATION frame."""
        records = decode_trust_bundle(payload)
        with self._lock:
            self._trust_records = records
            children = list(self._children.values())
        for child in children:
            self._send_trust(child)

    def _send_trust(self, child: Child) -> None:
        """Send a child every trust record that fits its link (the MCU skips old ones)."""
        with self._lock:
            records = list(self._trust_records)
        for record in records:
            if len(record) > child.mtu:
                self.counters["rotations_too_large"] += 1
                continue
            child.outbox.put((link.Kind.ROTATION, record))
            self.counters["rotations_forwarded"] += 1

    def _chunk(self, chunk: Chunk, uid: str | None) -> None:
        self.cache.put(chunk.pkg, chunk.offset, chunk.data)
        with self._lock:
            waiting = [c for c in self._children.values()
                       if (uid is None or c.uid == uid) and c.pending is not None
                       and c.pending.pkg == chunk.pkg]
        for child in waiting:
            if self._serve_pending(child, chunk.pkg):
                self.counters["chunks_from_fanout" if uid is None else "chunks_unicast"] += 1

    def _serve_pending(self, child: Child, pkg: int) -> bool:
        """Send the child its pending chunk if the cache holds it; return whether it did."""
        with self._lock:
            request = child.pending
            if request is None or request.pkg != pkg:
                return False
            data = self.cache.get(pkg, request.offset, request.length)
            if data is None:
                return False
            child.pending = None
        child.outbox.put((link.Kind.CHUNK, encode_chunk(Chunk(pkg, request.offset, data))))
        return True

    # -- uplink --------------------------------------------------------------------------------

    def _subscribe(self, uid: str) -> None:
        for channel in _CHILD_CHANNELS:
            self.uplink.subscribe(device_topic(uid, channel))
        if not self._trust_subscribed:
            # Every child's role may read it; one subscription serves them all.
            self._trust_subscribed = True
            self.uplink.subscribe(fleet_topic(FleetChannel.KEYS))

    def _publish(self, uid: str, channel: Channel, payload: bytes) -> None:
        self.uplink.publish(device_topic(uid, channel), payload, retain=channel is Channel.STATUS)
        self.counters[f"published_{channel.value.replace('/', '_')}"] += 1


def _peek_package(manifest: bytes) -> int | None:
    """Return the package id an offer names, without verifying it (None if unreadable)."""
    try:
        return Manifest.decode(parse_sign1(manifest).payload).package_id
    except ProtocolError:
        return None
