"""Frame the serial link between an MCU and its gateway: COBS, CRC-32, sequence numbers, ACKs.

The firmware side is ``firmware/src/link.c``; the design is ``firmware/LINK.md``. Plain codecs
over bytes, no I/O, so a gateway, the tests and the vector generator share them::

    wire  = 0x00 COBS(body) 0x00          ; the leading delimiter flushes line noise
    body  = kind u8 | seq u8 | flags u8 | payload | crc32 u32le (zlib CRC over kind..payload)

Each direction is stop-and-wait: a sender keeps one unacknowledged data frame and sends it
again, unchanged, until an ACK (kind 0) names its seq; a receiver acknowledges every frame that
passes its CRC and delivers it unless it is identical (seq and CRC) to the last one delivered.
A corrupted or lost byte therefore costs exactly the frame it was in. Message payloads are the
MQTT payloads of the topic each kind maps to (``CHANNEL_OF_KIND``), unchanged.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

import cbor2

from device_sdk.protocol.limits import loads_bounded
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.topics import Channel

__all__ = [
    "CHANNEL_OF_KIND",
    "ENROLL_SIGNATURE_BYTES",
    "FLAG_RST",
    "LINK_VERSION",
    "Endpoint",
    "EnrollChallenge",
    "Frame",
    "FrameDecoder",
    "Hello",
    "Kind",
    "cobs_decode",
    "cobs_encode",
    "decode_body",
    "decode_enroll_challenge",
    "decode_enroll_proof",
    "decode_hello",
    "encode_body",
    "encode_enroll_challenge",
    "encode_enroll_proof",
    "encode_frame",
    "encode_hello",
    "encode_time",
]

LINK_VERSION: Final = 1
FLAG_RST: Final = 0x01  # first frame of the sender's session (it restarted)
HEADER: Final = struct.Struct("<BBB")  # kind, seq, flags
CRC_BYTES: Final = 4
MAX_PAYLOAD: Final = 32_800 + 64  # the largest MQTT payload a frame carries (a chunk) and room
MAX_HELLO_BYTES: Final = 256
KEY_BYTES: Final = 32  # an Ed25519 public key (RFC 8032)
ENROLL_SIGNATURE_BYTES: Final = 64  # an Ed25519 signature
MAX_ENROLL_BYTES: Final = 256


class Kind(IntEnum):
    """Message kinds on the link. Wire values: never renumber (firmware/include/tml/link.h)."""

    ACK = 0  # both: acknowledges seq; no payload
    HELLO = 1  # dev -> gw: {"uid", "link", "mtu"[, "key", "hardware"]}
    STATUS = 2  # dev -> gw: status map -> fleet/v1/{uid}/status
    EVENTS = 3  # dev -> gw: batch / summary -> fleet/v1/{uid}/events
    OFFER = 4  # gw -> dev: COSE_Sign1 manifest <- fleet/v1/{uid}/ota/offer
    CHUNK_REQUEST = 5  # dev -> gw: [pkg, offset, length] -> fleet/v1/{uid}/ota/get
    CHUNK = 6  # gw -> dev: [pkg, offset, data] <- fleet/v1/{uid}/ota/chunk
    REPORT = 7  # dev -> gw: [pkg, state, detail] -> fleet/v1/{uid}/ota/report
    TIME = 8  # gw -> dev: uint, unix milliseconds
    STATUS_REQUEST = 9  # gw -> dev: empty; the device answers STATUS
    ROTATION = 10  # gw -> dev: COSE_Sign1 trust record (rotation or policy)
    ENROLL_CHALLENGE = 11  # gw -> dev: [nonce, token_sha256, capabilities_sha256, via]
    ENROLL_PROOF = 12  # dev -> gw: bstr .size 64, the MCU's signature of its enroll-message
    WITHDRAW = 13  # gw -> dev: [pkg, reason] <- fleet/v1/{uid}/ota/withdraw, unchanged


# What a gateway does with each kind: the MQTT channel of the device's topic it maps to.
CHANNEL_OF_KIND: Final[dict[Kind, Channel]] = {
    Kind.STATUS: Channel.STATUS,
    Kind.EVENTS: Channel.EVENTS,
    Kind.OFFER: Channel.OTA_OFFER,
    Kind.CHUNK_REQUEST: Channel.OTA_GET,
    Kind.CHUNK: Channel.OTA_CHUNK,
    Kind.REPORT: Channel.OTA_REPORT,
    Kind.WITHDRAW: Channel.OTA_WITHDRAW,
}


def cobs_encode(data: bytes) -> bytes:
    """Return ``data`` COBS-encoded (Cheshire and Baker): no zero bytes, no delimiter."""
    out = bytearray()
    i, n = 0, len(data)
    while True:
        end = i
        while end < n and data[end] != 0 and end - i < 254:
            end += 1
        out.append(end - i + 1)
        out += data[i:end]
        full = end - i == 254
        i = end
        if i == n:
            return bytes(out)
        if not full:
            i += 1  # the zero the block's code stands for
            if i == n:
                out.append(1)  # a trailing zero needs an empty last block
                return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence; raise ``ValueError`` on a zero or a short block."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            raise ValueError("COBS block runs past the end")
        block = data[i + 1 : i + code]
        if 0 in block:
            raise ValueError("zero byte inside a COBS frame")
        out += block
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: ``payload`` is empty for an ACK."""

    kind: int
    seq: int
    flags: int = 0
    payload: bytes = b""

    @property
    def rst(self) -> bool:
        """Return whether the sender marked this as the first frame of its session."""
        return bool(self.flags & FLAG_RST)


def encode_body(frame: Frame) -> bytes:
    """Return the frame's body: header, payload and CRC-32 (before COBS)."""
    if not 0 <= frame.seq <= 0xFF or not 0 <= frame.kind <= 0xFF or frame.flags & ~FLAG_RST:
        raise ValueError("kind, seq and flags are bytes; only the RST flag is defined")
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes > {MAX_PAYLOAD}")
    body = HEADER.pack(frame.kind, frame.seq, frame.flags) + bytes(frame.payload)
    return body + struct.pack("<I", zlib.crc32(body))


def encode_frame(frame: Frame) -> bytes:
    """Return the bytes to write to the UART for ``frame``, delimiters included."""
    return b"\x00" + cobs_encode(encode_body(frame)) + b"\x00"


def decode_body(body: bytes) -> Frame:
    """Check a frame body's CRC and reserved bits and return the frame.

    Raises ProtocolError: CBOR_MALFORMED for a short body, a bad CRC or reserved flag bits.
    """
    if len(body) < HEADER.size + CRC_BYTES:
        raise ProtocolError(Reason.CBOR_MALFORMED, f"frame of {len(body)} bytes")
    (crc,) = struct.unpack_from("<I", body, len(body) - CRC_BYTES)
    if crc != zlib.crc32(body[:-CRC_BYTES]):
        raise ProtocolError(Reason.CBOR_MALFORMED, "frame CRC mismatch")
    kind, seq, flags = HEADER.unpack_from(body)
    if flags & ~FLAG_RST:
        raise ProtocolError(Reason.CBOR_MALFORMED, f"reserved flag bits 0x{flags:02x}")
    return Frame(kind, seq, flags, bytes(body[HEADER.size : -CRC_BYTES]))


@dataclass
class FrameDecoder:
    """Split a byte stream into frames; count what had to be dropped and why."""

    max_body: int = HEADER.size + MAX_PAYLOAD + CRC_BYTES
    bad: int = 0  # frames dropped: bad COBS, bad CRC, oversize, reserved bits
    _buf: bytearray = field(default_factory=bytearray)
    _discard: bool = False

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Consume received bytes and yield each good frame they complete."""
        for byte in data:
            if byte:
                if not self._discard:
                    self._buf.append(byte)
                    if len(self._buf) > self.max_body + self.max_body // 254 + 2:
                        self._discard = True
                        self.bad += 1
                continue
            raw, discard = bytes(self._buf), self._discard
            self._buf.clear()
            self._discard = False
            if discard or not raw:
                continue
            try:
                yield decode_body(cobs_decode(raw))
            except (ValueError, ProtocolError):
                self.bad += 1


@dataclass
class Endpoint:
    """One end of the link as a state machine without I/O (a gateway runs one per device).

    ``send`` queues a message; ``receive`` takes bytes from the wire; both, and ``poll``,
    return the bytes to write. Delivered messages come out of ``receive`` as frames.
    """

    rto: float = 0.25  # seconds before an unacknowledged frame goes out again
    max_rto: float = 2.0
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    retransmits: int = 0
    duplicates: int = 0
    _queue: list[tuple[int, bytes]] = field(default_factory=list)
    _pending: bytes | None = None  # the encoded frame awaiting its ACK
    _pending_seq: int = 0
    _sent_at: float = 0.0
    _timeout: float = 0.0
    _tx_seq: int = 0
    _rst: bool = True
    _last: tuple[int, int] | None = None  # (seq, crc) of the last delivered frame

    @property
    def idle(self) -> bool:
        """Return whether nothing waits for an ACK or in the queue."""
        return self._pending is None and not self._queue

    def send(self, kind: Kind | int, payload: bytes, now: float) -> bytes:
        """Queue a message; return bytes to write now (empty while another frame is pending)."""
        if kind == Kind.ACK:
            raise ValueError("ACKs are sent by the endpoint itself")
        self._queue.append((int(kind), bytes(payload)))
        return self._next(now)

    def _next(self, now: float) -> bytes:
        if self._pending is not None or not self._queue:
            return b""
        kind, payload = self._queue.pop(0)
        flags = FLAG_RST if self._rst else 0
        self._pending = encode_frame(Frame(kind, self._tx_seq, flags, payload))
        self._pending_seq = self._tx_seq
        self._sent_at, self._timeout = now, self.rto
        return self._pending

    def poll(self, now: float) -> bytes:
        """Return the pending frame again if its timeout passed, else nothing."""
        if self._pending is None or now - self._sent_at < self._timeout:
            return b""
        self.retransmits += 1
        self._sent_at = now
        self._timeout = min(self._timeout * 2, self.max_rto)
        return self._pending

    def receive(self, data: bytes, now: float) -> tuple[list[Frame], bytes]:
        """Take bytes from the wire; return the newly delivered frames and bytes to write."""
        delivered: list[Frame] = []
        out = bytearray()
        for frame in self.decoder.feed(data):
            if frame.kind == Kind.ACK:
                if self._pending is not None and frame.seq == self._pending_seq:
                    self._pending = None
                    self._rst = False
                    self._tx_seq = (self._tx_seq + 1) & 0xFF
                    out += self._next(now)
                continue
            out += encode_frame(Frame(Kind.ACK, frame.seq))
            key = (frame.seq, zlib.crc32(encode_body(frame)[:-CRC_BYTES]))
            if key == self._last:
                self.duplicates += 1
                continue
            self._last = key
            delivered.append(frame)
        return delivered, bytes(out)


@dataclass(frozen=True, slots=True)
class Hello:
    """Who is on this UART: the device id, the link version, its largest payload and, for an MCU
    with its own Ed25519 key, the public key and its hardware profile (what it signs)."""

    uid: str
    mtu: int
    link: int = LINK_VERSION
    key: bytes | None = None  # 32 bytes, raw Ed25519 public key
    hardware: str | None = None


def encode_hello(hello: Hello) -> bytes:
    """Encode a HELLO payload as the firmware does (canonical CBOR map)."""
    value: dict[str, object] = {"uid": hello.uid, "link": hello.link, "mtu": hello.mtu}
    if hello.key is not None:
        value["key"] = bytes(hello.key)
    if hello.hardware is not None:
        value["hardware"] = hello.hardware
    return cbor2.dumps(value, canonical=True)


def decode_hello(payload: bytes) -> Hello:
    """Decode a HELLO payload; raise ProtocolError on anything else. ``key`` and ``hardware``
    are optional (a v1 HELLO has neither)."""
    value = loads_bounded(payload, cap=MAX_HELLO_BYTES)
    if not isinstance(value, dict) or not {"uid", "link", "mtu"} <= set(value):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "hello: expected uid, link, mtu")
    uid, link, mtu = value["uid"], value["link"], value["mtu"]
    key, hardware = value.get("key"), value.get("hardware")
    if not isinstance(uid, str) or type(link) is not int or type(mtu) is not int:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "hello: wrong types")
    if key is not None and not (isinstance(key, bytes) and len(key) == KEY_BYTES):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "hello: key is not 32 bytes")
    if hardware is not None and not isinstance(hardware, str):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "hello: hardware is not text")
    return Hello(uid, mtu, link, key, hardware)


@dataclass(frozen=True, slots=True)
class EnrollChallenge:
    """What the gateway asks its MCU to sign: the server's nonce, SHA-256 of the claim token,
    SHA-256 of the capabilities (``enrollment.capabilities_digest``) and the gateway's uid. The
    MCU adds its own uid and hardware profile to make the enroll-message (enrollment.py)."""

    nonce: bytes
    token_sha256: bytes
    capabilities_sha256: bytes
    via: str


def encode_enroll_challenge(challenge: EnrollChallenge) -> bytes:
    """Encode an ENROLL_CHALLENGE payload: [nonce, token_sha256, capabilities_sha256, via]."""
    return cbor2.dumps([bytes(challenge.nonce), bytes(challenge.token_sha256),
                        bytes(challenge.capabilities_sha256), challenge.via], canonical=True)


def decode_enroll_challenge(payload: bytes) -> EnrollChallenge:
    """Decode an ENROLL_CHALLENGE payload with the firmware's limits; raise ProtocolError."""
    value = loads_bounded(payload, cap=MAX_ENROLL_BYTES)
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, bytes) for v in value[:3]) and isinstance(value[3], str)):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "enroll challenge: expected 3 bstr, 1 tstr")
    nonce, token, caps, via = value
    if not (1 <= len(nonce) <= 64 and len(token) == 32 and len(caps) == 32
            and 1 <= len(via.encode()) <= 64):
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "enroll challenge: wrong sizes")
    return EnrollChallenge(nonce, token, caps, via)


def encode_enroll_proof(signature: bytes) -> bytes:
    """Encode an ENROLL_PROOF payload: the 64-byte signature as a CBOR byte string."""
    return cbor2.dumps(bytes(signature))


def decode_enroll_proof(payload: bytes) -> bytes:
    """Decode an ENROLL_PROOF payload; raise ProtocolError unless it is bstr .size 64."""
    value = loads_bounded(payload, cap=MAX_ENROLL_BYTES)
    if not isinstance(value, bytes) or len(value) != ENROLL_SIGNATURE_BYTES:
        raise ProtocolError(Reason.SCHEMA_MISMATCH, "enroll proof: expected bstr .size 64")
    return value


def encode_time(unix_ms: int) -> bytes:
    """Encode a TIME payload: the gateway's clock, unix milliseconds."""
    return cbor2.dumps(int(unix_ms))
