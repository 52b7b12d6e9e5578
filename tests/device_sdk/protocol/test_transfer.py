"""Transfer encodings: streaming round trips, bounded decoder RAM, and every refusal."""

from __future__ import annotations

import hashlib
import random
import struct
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import (
    RAM_BUDGET,
    TransferDecoder,
    choose_encoding,
    compress,
    decompress,
    encode_delta,
    encode_transfer,
)
from device_sdk.protocol.transfer.delta import BASE_PIECE, DeltaApplier
from device_sdk.protocol.transfer.lz import TOKEN_LOOKAHEAD, LzParams
from device_sdk.protocol.transfer.lz_decoder import LzDecoder


def synthetic_model(size: int, seed: int = 0) -> bytes:
    """Make bytes shaped like an int8 .tflite: tables, int8 weights, int32 biases, padding."""
    rng = np.random.default_rng(seed)
    out = bytearray(b"\x1c\x00\x00\x00TFL3\x14\x00\x20\x00")
    layer = 0
    while len(out) < size:
        name = f"sequential/conv2d_{layer}/Conv2D;".encode()
        out += struct.pack("<IIhh", 0x10, layer, 4, 1) + name + bytes(-len(name) % 4)
        weights = np.clip(
            np.round(rng.laplace(0, 18, size=int(rng.integers(256, 6000)))), -127, 127
        )
        out += weights.astype(np.int8).tobytes()
        out += rng.integers(-3000, 3000, size=int(rng.integers(8, 64))).astype("<i4").tobytes()
        out += bytes(int(rng.integers(0, 48)))
        layer += 1
    return bytes(out[:size])


def fine_tuned(model: bytes, seed: int = 1) -> bytes:
    """Return ``model`` with its last 3% nudged by +-1 and a few bytes inserted mid-way."""
    rng = np.random.default_rng(seed)
    a = np.frombuffer(model, dtype=np.uint8).copy()
    head = len(a) - len(a) // 33
    nudge = rng.choice([-1, 0, 0, 0, 1], size=len(a) - head).astype(np.uint8)
    a[head:] += nudge
    mid = len(a) // 2
    return a[:mid].tobytes() + b"\x00\x01\x02\x03" + a[mid:].tobytes()


def sha(data: bytes) -> bytes:
    """Return SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def manifest_for(
    model: bytes, transfer: bytes, encoding: Encoding, base: bytes | None = None, **changes: Any
) -> Manifest:
    """Make the manifest a server would sign for ``transfer``."""
    fields: dict[str, Any] = {
        "sequence": 2,
        "model_name": "m",
        "model_version": "2",
        "hardware_profile": "hw",
        "model_sha256": sha(model),
        "model_size": len(model),
        "encoding": encoding,
        "transfer_sha256": sha(transfer),
        "transfer_size": len(transfer),
        "arena_bytes": 1000,
        "expires_at": 2**40,
        "package_id": 9,
        "base_sha256": sha(base) if base is not None else None,
    }
    fields.update(changes)
    return Manifest(**fields)


def stream(
    decoder: TransferDecoder, transfer: bytes, rng: random.Random, max_chunk: int = 4096
) -> tuple[bytes, int]:
    """Feed ``transfer`` in random chunks; return the output and the peak decoder state."""
    out = bytearray()
    peak = decoder.state_bytes()
    i = 0
    while i < len(transfer):
        n = rng.randint(1, max_chunk)
        out += decoder.feed(transfer[i : i + n])
        peak = max(peak, decoder.state_bytes())
        i += n
    out += decoder.finish()
    return bytes(out), peak


def refusal(
    manifest: Manifest, transfer: bytes, base: bytes | None = None, extra: bytes = b""
) -> Reason:
    """Return the reason streaming ``transfer + extra`` is refused with."""
    decoder = TransferDecoder(manifest, base)
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(transfer + extra), 1000):
            decoder.feed((transfer + extra)[i : i + 1000])
        decoder.finish()
    return info.value.reason


@pytest.fixture(scope="module")
def base_model() -> bytes:
    """Make the model a device runs."""
    return synthetic_model(40_000, seed=0)


@pytest.fixture(scope="module")
def new_model(base_model: bytes) -> bytes:
    """Make its head-fine-tuned successor."""
    return fine_tuned(base_model)


@pytest.fixture(scope="module")
def packages(base_model: bytes, new_model: bytes) -> dict[Encoding, bytes]:
    """Make the transfer bytes of ``new_model`` in every encoding."""
    return {e: encode_transfer(new_model, e, base_model) for e in Encoding}


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_round_trip_in_random_chunks(packages, base_model, new_model, encoding, seed):
    """Encode, then decode in random chunks of 1 B..4 KB: identical bytes, equal SHA-256."""
    transfer = packages[encoding]
    manifest = manifest_for(new_model, transfer, encoding, base_model if encoding == 2 else None)
    out, _ = stream(TransferDecoder(manifest, base_model), transfer, random.Random(seed))
    assert out == new_model and sha(out) == manifest.model_sha256


@pytest.mark.parametrize("encoding", [Encoding.COMPRESSED, Encoding.DELTA])
def test_byte_at_a_time(packages, base_model, new_model, encoding) -> None:
    """One-byte chunks (a UART gateway's worst case) decode the same bytes."""
    transfer = packages[encoding]
    manifest = manifest_for(new_model, transfer, encoding, base_model if encoding == 2 else None)
    out, _ = stream(TransferDecoder(manifest, base_model), transfer, random.Random(0), 1)
    assert out == new_model


def test_encodings_are_smaller_where_they_should_be(packages, new_model) -> None:
    """Compression gains on int8-like data; a head fine-tune's delta is a few percent."""
    assert len(packages[Encoding.COMPRESSED]) < 0.95 * len(new_model)
    assert len(packages[Encoding.DELTA]) < 0.05 * len(new_model)


@pytest.mark.parametrize("size", [10_000, 200_000])
def test_decoder_ram_is_bounded_independent_of_model_size(size: int) -> None:
    """Peak decoder state stays within 4 KB for any model size, and the base is read in
    small pieces."""
    base = synthetic_model(size, seed=5)
    model = fine_tuned(base, seed=6)
    reads: list[int] = []

    def reader(offset: int, length: int) -> bytes:
        reads.append(length)
        return base[offset : offset + length]

    peaks = []
    for encoding in (Encoding.COMPRESSED, Encoding.DELTA):
        transfer = encode_transfer(model, encoding, base)
        manifest = manifest_for(model, transfer, encoding, base if encoding == 2 else None)
        decoder = TransferDecoder(manifest, reader)
        out, peak = stream(decoder, transfer, random.Random(size))
        assert out == model
        peaks.append(peak)
        lz = decoder._lz
        assert lz is not None and len(lz._window) == 2048
        assert len(lz._pending) < TOKEN_LOOKAHEAD
    assert max(peaks) <= RAM_BUDGET
    assert max(reads) <= BASE_PIECE


def test_lz_decoder_keeps_only_a_lookahead_between_chunks() -> None:
    """However large a chunk, fewer than TOKEN_LOOKAHEAD input bytes stay buffered."""
    data = synthetic_model(30_000, seed=7)
    packed = compress(data)
    decoder = LzDecoder()
    out = bytearray()
    for i in range(0, len(packed), 4096):
        out += decoder.feed(packed[i : i + 4096], final=i + 4096 >= len(packed))
        assert len(decoder._pending) < TOKEN_LOOKAHEAD
        assert decoder.state_bytes() <= 3584
    assert out == data and decoder.finished


@pytest.mark.parametrize("encoding", list(Encoding))
def test_endless_data_overflows_at_the_first_extra_byte(packages, base_model, new_model, encoding):
    """Bytes beyond the declared transfer size are TRANSFER_OVERFLOW, however they arrive."""
    transfer = packages[encoding]
    manifest = manifest_for(new_model, transfer, encoding, base_model if encoding == 2 else None)
    decoder = TransferDecoder(manifest, base_model)
    decoder.feed(transfer)
    with pytest.raises(ProtocolError) as info:
        for _ in range(1000):
            decoder.feed(b"\x00" * 4096)
    assert info.value.reason == Reason.TRANSFER_OVERFLOW
    assert decoder.received == len(transfer)
    # A chunk that straddles the end is refused too, and the decoder stays refused.
    straddle = TransferDecoder(manifest, base_model)
    with pytest.raises(ProtocolError) as info:
        straddle.feed(transfer + b"\x00")
    assert info.value.reason == Reason.TRANSFER_OVERFLOW
    with pytest.raises(ProtocolError):
        straddle.finish()


@pytest.mark.parametrize("encoding", list(Encoding))
def test_truncated_transfer_is_refused(packages, base_model, new_model, encoding) -> None:
    """finish() before the declared size has arrived is TRANSFER_TRUNCATED."""
    transfer = packages[encoding]
    manifest = manifest_for(new_model, transfer, encoding, base_model if encoding == 2 else None)
    decoder = TransferDecoder(manifest, base_model)
    decoder.feed(transfer[: len(transfer) // 2])
    with pytest.raises(ProtocolError) as info:
        decoder.finish()
    assert info.value.reason == Reason.TRANSFER_TRUNCATED


@pytest.mark.parametrize("encoding", list(Encoding))
def test_corrupted_transfer_is_refused(packages, base_model, new_model, encoding) -> None:
    """A changed byte in transit is TRANSFER_DIGEST_MISMATCH, or DECODE_ERROR if seen first."""
    transfer = packages[encoding]
    manifest = manifest_for(new_model, transfer, encoding, base_model if encoding == 2 else None)
    corrupted = bytearray(transfer)
    corrupted[-1] ^= 0x40
    assert refusal(manifest, bytes(corrupted), base_model) == Reason.TRANSFER_DIGEST_MISMATCH
    corrupted = bytearray(transfer)
    corrupted[len(corrupted) // 2] ^= 0x40
    assert refusal(manifest, bytes(corrupted), base_model) in (
        Reason.TRANSFER_DIGEST_MISMATCH,
        Reason.DECODE_ERROR,
    )


def test_wrong_model_digest_is_refused(packages, new_model) -> None:
    """Transfer bytes that decode to another model are MODEL_DIGEST_MISMATCH."""
    transfer = packages[Encoding.COMPRESSED]
    manifest = manifest_for(new_model, transfer, Encoding.COMPRESSED, model_sha256=sha(b"x"))
    assert refusal(manifest, transfer) == Reason.MODEL_DIGEST_MISMATCH


def test_delta_against_the_wrong_base_is_refused(packages, base_model, new_model) -> None:
    """A delta applied to another base, a shorter one or none is DELTA_BASE_MISMATCH."""
    transfer = packages[Encoding.DELTA]
    manifest = manifest_for(new_model, transfer, Encoding.DELTA, base_model)
    other = synthetic_model(len(base_model), seed=99)
    assert refusal(manifest, transfer, other) == Reason.DELTA_BASE_MISMATCH
    assert refusal(manifest, transfer, base_model[:-1]) == Reason.DELTA_BASE_MISMATCH
    with pytest.raises(ProtocolError) as info:
        TransferDecoder(manifest, None)
    assert info.value.reason == Reason.DELTA_BASE_MISMATCH


def test_delta_base_is_checked_before_any_output(packages, base_model, new_model) -> None:
    """Nothing is produced from a wrong base: the check runs at the delta header."""
    transfer = packages[Encoding.DELTA]
    manifest = manifest_for(new_model, transfer, Encoding.DELTA, base_model)
    decoder = TransferDecoder(manifest, synthetic_model(len(base_model), seed=98))
    with pytest.raises(ProtocolError) as info:
        for i in range(len(transfer)):
            assert decoder.feed(transfer[i : i + 1]) == b""
    assert info.value.reason == Reason.DELTA_BASE_MISMATCH


def test_declared_size_larger_than_manifest_overflows(new_model: bytes) -> None:
    """A compressed stream declaring more bytes than the manifest is TRANSFER_OVERFLOW."""
    transfer = compress(new_model + b"\x00")
    manifest = manifest_for(new_model, transfer, Encoding.COMPRESSED)
    assert refusal(manifest, transfer) == Reason.TRANSFER_OVERFLOW


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-3],  # the signer signed a cut stream
        lambda t: t + b"\x00",  # trailing byte after the range coder's flush
        lambda t: b"TZ\x02" + t[3:],  # unknown version
        lambda t: t[:3] + b"\x07" + t[4:],  # 32 KB window: beyond this decoder's RAM
        lambda t: t[:8] + b"\x01" + t[9:],  # range coder must start with 0
        lambda t: t[:4] + struct.pack("<I", 1) + t[8:],  # decoded size smaller than the model
    ],
)
def test_corrupt_signed_compressed_streams_are_decode_errors(new_model, mangle) -> None:
    """A stream whose digest matches but which is not a valid stream is DECODE_ERROR."""
    transfer = mangle(compress(new_model))
    manifest = manifest_for(new_model, transfer, Encoding.COMPRESSED)
    assert refusal(manifest, transfer) == Reason.DECODE_ERROR


def test_choose_encoding_prefers_the_smallest(base_model, new_model) -> None:
    """Delta for a fine-tune, compressed without a base, raw for incompressible bytes."""
    encoding, transfer = choose_encoding(new_model, base_model)
    assert encoding == Encoding.DELTA and transfer == encode_transfer(new_model, 2, base_model)
    assert choose_encoding(new_model)[0] == Encoding.COMPRESSED
    noise = random.Random(4).randbytes(5000)
    assert choose_encoding(noise) == (Encoding.RAW, noise)
    assert choose_encoding(noise, base_model)[0] == Encoding.RAW


def test_choose_encoding_never_picks_a_larger_delta() -> None:
    """An unrelated base gives a delta no smaller than compression: compressed wins."""
    model = synthetic_model(20_000, seed=11)
    unrelated = random.Random(12).randbytes(20_000)
    encoding, transfer = choose_encoding(model, unrelated)
    delta = encode_transfer(model, Encoding.DELTA, unrelated)
    assert encoding != Encoding.DELTA or len(delta) < len(compress(model))
    assert len(transfer) <= min(len(delta), len(model))


def test_delta_encoder_is_fast_enough_for_300_kb() -> None:
    """Encoding a 300 KB fine-tune takes a few seconds at most in Python."""
    base = synthetic_model(300_000, seed=21)
    model = fine_tuned(base, seed=22)
    start = time.perf_counter()
    transfer = encode_transfer(model, Encoding.DELTA, base)
    assert time.perf_counter() - start < 10
    assert len(transfer) < 0.05 * len(model)


def test_empty_model_round_trips() -> None:
    """Zero bytes survive every encoding."""
    for encoding in Encoding:
        transfer = encode_transfer(b"", encoding, b"base")
        manifest = manifest_for(b"", transfer, encoding, b"base" if encoding == 2 else None)
        decoder = TransferDecoder(manifest, b"base")
        assert decoder.feed(transfer) + decoder.finish() == b""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=3000),
    params=st.sampled_from([LzParams(), LzParams(8, 0, 0), LzParams(10, 0, 1), LzParams(9, 1, 0)]),
)
def test_compression_round_trips_any_bytes(data: bytes, params: LzParams) -> None:
    """decompress(compress(x)) == x for any bytes and any supported parameters."""
    assert decompress(compress(data, params)) == data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.binary(max_size=2000),
    edits=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 40), st.binary(max_size=20)), max_size=6
    ),
)
def test_delta_round_trips_any_edit(base: bytes, edits: list) -> None:
    """Applying encode_delta(base, target) to base gives target back, for arbitrary edits."""
    target = bytearray(base)
    for at, cut, insert in edits:
        at = min(at, len(target))
        target[at : at + cut] = insert
    applier = DeltaApplier(lambda o, n: base[o : o + n], sha(base))
    assert applier.feed(encode_delta(base, bytes(target))) == bytes(target) and applier.done


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    encoding=st.sampled_from([Encoding.COMPRESSED, Encoding.DELTA]),
    junk=st.binary(max_size=600),
    keep_header=st.booleans(),
    chunk=st.integers(1, 700),
)
def test_random_transfer_streams_only_raise_protocol_errors(encoding, junk, keep_header, chunk):
    """Garbage signed as a transfer yields ProtocolError, nothing else.

    (A raw manifest cannot even be signed unless its transfer is the model itself.)
    """
    base = synthetic_model(3000, seed=31)
    model = fine_tuned(base, seed=32)
    transfer = (encode_transfer(model, encoding, base)[:12] if keep_header else b"") + junk
    manifest = manifest_for(model, transfer, encoding, base if encoding == 2 else None)
    decoder = TransferDecoder(manifest, base)
    with pytest.raises(ProtocolError):
        for i in range(0, len(transfer), chunk):
            decoder.feed(transfer[i : i + chunk])
        decoder.finish()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    encoding=st.sampled_from([Encoding.COMPRESSED, Encoding.DELTA]),
    flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 50),
    chunk=st.integers(1, 700),
)
def test_corrupted_valid_streams_never_install_wrong_bytes(encoding, flips, cut, chunk) -> None:
    """A damaged real stream, even one whose digest was re-signed, is refused or exact."""
    base = synthetic_model(3000, seed=41)
    model = fine_tuned(base, seed=42)
    transfer = bytearray(encode_transfer(model, encoding, base))
    for at, mask in flips:
        transfer[at % len(transfer)] ^= mask
    transfer = bytes(transfer[: len(transfer) - cut])
    manifest = manifest_for(model, transfer, encoding, base if encoding == 2 else None)
    decoder = TransferDecoder(manifest, base)
    out = bytearray()
    try:
        for i in range(0, len(transfer), chunk):
            out += decoder.feed(transfer[i : i + chunk])
        out += decoder.finish()
    except ProtocolError:
        return
    assert bytes(out) == model


def test_compressed_header_bytes_follow_the_spec() -> None:
    """'TZ', version 1, parameters 0x03 (2 KB window), u32 size, then the range coder."""
    assert compress(b"") == b"TZ\x01\x03" + bytes(4) + bytes(5)
    assert compress(b"abc")[:8] == b"TZ\x01\x03\x03\x00\x00\x00"
    assert compress(b"abc", LzParams(window_log=9, lc=1, lp=1))[3] == 0b0010_1001


def test_delta_instruction_bytes_follow_the_spec() -> None:
    """A hand-assembled instruction stream decodes as TRANSFER.md describes."""
    base = bytes(range(100, 120))
    stream = (
        b"TD\x01\x00"
        + struct.pack("<II", len(base), 9)
        + bytes([(4 - 1) << 2 | 0, 2 * 2])  # COPY 4 from cursor + 2: base[2:6]
        + bytes([(2 - 1) << 2 | 2])
        + b"xy"  # INSERT "xy"
        + bytes([(3 - 1) << 2 | 1, 2 * 3 - 1])
        + bytes([1, 0, 255])  # ADD 3 from cursor - 3
    )
    applier = DeltaApplier(lambda o, n: base[o : o + n], sha(base))
    expected = base[2:6] + b"xy" + bytes([base[3] + 1, base[4], base[5] - 1])
    assert applier.feed(stream) == expected and applier.done
    manifest = manifest_for(expected, compress(stream), Encoding.DELTA, base)
    decoder = TransferDecoder(manifest, base)
    assert decoder.feed(compress(stream)) + decoder.finish() == expected


@pytest.mark.parametrize(
    ("tail", "target", "reason"),
    [
        (bytes([3]), 1, Reason.DECODE_ERROR),  # reserved operation kind 3
        (bytes([0, 2 * 20]), 1, Reason.DECODE_ERROR),  # COPY starting past the base
        (bytes([(2 - 1) << 2 | 0, 1]), 1, Reason.DECODE_ERROR),  # longer than the target
        (bytes([2]) + b"x" + bytes([2]) + b"y", 1, Reason.DECODE_ERROR),  # after the end
        (bytes([2]) + b"x", 2, Reason.DECODE_ERROR),  # ends before the target is complete
        (bytes([0x80] * 6), 1, Reason.DECODE_ERROR),  # LEB128 longer than 5 bytes
        (bytes([2]) + b"x", 1_000, Reason.TRANSFER_OVERFLOW),  # header says more than manifest
    ],
)
def test_corrupt_signed_delta_streams_are_refused(tail: bytes, target: int, reason) -> None:
    """A signed but invalid instruction stream is refused with its reason."""
    base = bytes(range(20))
    stream = b"TD\x01\x00" + struct.pack("<II", len(base), target) + tail
    transfer = compress(stream)
    manifest = manifest_for(b"x" if target != 2 else b"xx", transfer, Encoding.DELTA, base)
    assert refusal(manifest, transfer, base) == reason
