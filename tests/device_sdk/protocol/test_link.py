"""Serial link framing: COBS, CRC-32, ACKs and stop-and-wait retransmission (link.py)."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk.protocol import link
from device_sdk.protocol.link import Endpoint, Frame, FrameDecoder, Kind
from device_sdk.protocol.reasons import ProtocolError


@given(st.binary(max_size=1200))
def test_cobs_round_trips_and_never_emits_a_zero(data: bytes) -> None:
    """COBS output has no zero byte and decodes back to the input."""
    encoded = link.cobs_encode(data)
    assert 0 not in encoded
    assert link.cobs_decode(encoded) == data


@pytest.mark.parametrize(("data", "encoded"), [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x00", b"\x02\x11\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
])
def test_cobs_matches_the_published_examples(data: bytes, encoded: bytes) -> None:
    """The encoding is the standard one (Cheshire and Baker), block boundaries included."""
    assert link.cobs_encode(data) == encoded


def test_frame_layout_is_header_payload_crc_between_delimiters() -> None:
    """A frame is 00 COBS(kind seq flags payload crc32le) 00, the CRC being zlib's."""
    wire = link.encode_frame(Frame(Kind.REPORT, 7, link.FLAG_RST, b"\x83\x01\x06\x00"))
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    body = link.cobs_decode(wire[1:-1])
    assert body[:3] == bytes([Kind.REPORT, 7, link.FLAG_RST])
    assert int.from_bytes(body[-4:], "little") == zlib.crc32(body[:-4])
    assert link.decode_body(body) == Frame(Kind.REPORT, 7, link.FLAG_RST, b"\x83\x01\x06\x00")


def test_decoder_drops_a_corrupted_frame_and_keeps_the_next() -> None:
    """A flipped bit costs its frame only; the decoder resynchronises at the next delimiter."""
    first = bytearray(link.encode_frame(Frame(Kind.EVENTS, 1, 0, b"abc")))
    first[3] ^= 0x01
    second = link.encode_frame(Frame(Kind.EVENTS, 2, 0, b"def"))
    decoder = FrameDecoder()
    frames = list(decoder.feed(bytes(first) + second))
    assert frames == [Frame(Kind.EVENTS, 2, 0, b"def")]
    assert decoder.bad >= 1


@pytest.mark.parametrize("body", [b"", b"\x01\x02", b"\x02\x00\x80" + b"\x00" * 4])
def test_short_bad_crc_or_reserved_flags_are_refused(body: bytes) -> None:
    """Bodies too short, with a wrong CRC, or with reserved flag bits are refused."""
    with pytest.raises(ProtocolError):
        link.decode_body(body)
    flagged = bytes([2, 0, 0x80])
    with pytest.raises(ProtocolError):
        link.decode_body(flagged + zlib.crc32(flagged).to_bytes(4, "little"))


def test_hello_and_time_payloads() -> None:
    """HELLO is a canonical map the firmware writes byte for byte; TIME is one uint."""
    payload = link.encode_hello(link.Hello("mcu-0001", 544))
    assert payload.startswith(bytes.fromhex("a3636d7475190220"))  # {"mtu": 544, ... canonical
    assert link.decode_hello(payload) == link.Hello("mcu-0001", 544)
    assert link.encode_time(1_717_000_000_000) == bytes.fromhex("1b0000018fc52cd200")


def run_pair(loss: float, count: int, seed: int) -> tuple[list[bytes], list[bytes], int]:
    """Exchange ``count`` messages each way over lines losing or flipping bytes at ``loss``."""
    rng = random.Random(seed)
    a, b = Endpoint(), Endpoint()
    now = 0.0
    to_a: bytearray = bytearray()
    to_b: bytearray = bytearray()
    got_a: list[bytes] = []
    got_b: list[bytes] = []

    def line(data: bytes, into: bytearray) -> None:
        for byte in data:
            r = rng.random()
            if r < loss / 2:
                continue
            into.append(byte ^ (1 << rng.randrange(8)) if r < loss else byte)

    for i in range(count):
        line(a.send(Kind.EVENTS, f"a{i}".encode(), now), to_b)
        line(b.send(Kind.CHUNK, f"b{i}".encode() * 50, now), to_a)
    for _ in range(20_000):
        if len(got_a) == count and len(got_b) == count and a.idle and b.idle:
            break
        delivered, out = b.receive(bytes(to_b), now)
        to_b.clear()
        got_b += [f.payload for f in delivered]
        line(out, to_a)
        delivered, out = a.receive(bytes(to_a), now)
        to_a.clear()
        got_a += [f.payload for f in delivered]
        line(out, to_b)
        now += 0.05
        line(a.poll(now), to_b)
        line(b.poll(now), to_a)
    return got_a, got_b, a.retransmits + b.retransmits


def test_clean_line_delivers_in_order_without_retransmission() -> None:
    """Without loss every message arrives once, in order, with no retransmission."""
    got_a, got_b, retransmits = run_pair(0.0, 30, seed=1)
    assert got_b == [f"a{i}".encode() for i in range(30)]
    assert got_a == [f"b{i}".encode() * 50 for i in range(30)]
    assert retransmits == 0


@pytest.mark.parametrize("seed", range(5))
def test_lossy_line_delivers_each_message_exactly_once_in_order(seed: int) -> None:
    """With 1 % of bytes lost or flipped, ARQ still delivers everything once, in order."""
    got_a, got_b, retransmits = run_pair(0.01, 40, seed=seed)
    assert got_b == [f"a{i}".encode() for i in range(40)]
    assert got_a == [f"b{i}".encode() * 50 for i in range(40)]
    assert retransmits > 0


def test_retransmission_is_acknowledged_but_not_delivered_twice() -> None:
    """A frame seen again (its ACK was lost) is acknowledged again and not delivered."""
    sender, receiver = Endpoint(), Endpoint()
    wire = sender.send(Kind.REPORT, b"\x83\x01\x02\x00", 0.0)
    first, ack1 = receiver.receive(wire, 0.0)
    again, ack2 = receiver.receive(sender.poll(1.0), 1.0)
    assert len(first) == 1 and again == [] and ack1 == ack2
    assert receiver.duplicates == 1 and sender.retransmits == 1
    sender.receive(ack2, 1.0)
    assert sender.idle


def test_kinds_map_to_the_device_topics() -> None:
    """Every kind the gateway bridges has a topic channel; link-local kinds have none."""
    assert set(link.CHANNEL_OF_KIND) == {Kind.STATUS, Kind.EVENTS, Kind.OFFER,
                                         Kind.CHUNK_REQUEST, Kind.CHUNK, Kind.REPORT,
                                         Kind.WITHDRAW}
