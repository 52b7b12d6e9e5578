"""The golden-input rule and manifest key 15 (the trial): codec, strictness, old manifests."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from device_sdk.protocol.golden import (
    OutputType,
    golden_input,
    label_mismatches,
    outputs_digest,
    top1_label,
)
from device_sdk.protocol.manifest import K_TRIAL, Encoding, Manifest, TrialSpec
from device_sdk.protocol.reasons import ProtocolError, Reason

DIGEST = hashlib.sha256(b"model").digest()


def manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "sequence": 3, "model_name": "kws", "model_version": "1.0.0", "hardware_profile": "p",
        "model_sha256": DIGEST, "model_size": 10, "encoding": Encoding.RAW,
        "transfer_sha256": DIGEST, "transfer_size": 10, "arena_bytes": 100,
        "expires_at": 2_000_000_000, "package_id": 3}
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_golden_input_is_sha256_blocks_truncated() -> None:
    """Input i is SHA-256(digest || "golden" || u32le(i) || u32le(block)) blocks, truncated."""
    def block(i: int, b: int) -> bytes:
        return hashlib.sha256(DIGEST + b"golden" + i.to_bytes(4, "little")
                              + b.to_bytes(4, "little")).digest()

    assert golden_input(DIGEST, 5, 70) == (block(5, 0) + block(5, 1) + block(5, 2))[:70]
    assert golden_input(DIGEST, 0, 0) == b""
    assert golden_input(DIGEST, 1, 32) != golden_input(DIGEST, 2, 32)
    with pytest.raises(ValueError):
        golden_input(DIGEST[:31], 0, 1)


def test_top1_label_reads_int8_signed_and_uint8_unsigned_first_max_wins() -> None:
    """The same bytes give different labels as int8 and uint8; ties go to the first index."""
    data = bytes([0x7F, 0x80, 0x7F, 0x00])
    assert top1_label(data, OutputType.INT8) == 0
    assert top1_label(data, OutputType.UINT8) == 1
    assert top1_label(bytes([0xFF, 0xFE]), OutputType.INT8) == 0  # -1 > -2
    assert label_mismatches([1, 2, 3], [1, 0, 3]) == 1
    assert outputs_digest([b"ab", b"c"]) == hashlib.sha256(b"abc").digest()


def test_key_15_round_trips_and_old_manifests_have_none() -> None:
    """A trial survives encode/decode; a manifest without key 15 decodes with trial None."""
    spec = TrialSpec((1, 0, 1023), 1, bytes(range(32)), OutputType.UINT8)
    m = manifest(trial=spec)
    payload = m.encode()
    assert cbor2.loads(payload)[K_TRIAL] == [3, [1, 0, 1023], bytes(range(32)), 1, 1]
    assert Manifest.decode(payload) == m
    assert Manifest.decode(manifest().encode()).trial is None
    assert K_TRIAL not in cbor2.loads(manifest().encode())


@pytest.mark.parametrize("value", [
    0, [], [1, [5], None, 0], [1, [5], None, 0, 0, 0], [0, [], None, 0, 0],
    [9, list(range(9)), None, 0, 0], [2, [5], None, 0, 0], [1, [1024], None, 0, 0],
    [1, [-1], None, 0, 0], [1, [5], bytes(31), 0, 0], [1, [5], "x" * 32, 0, 0],
    [1, [5], False, 0, 0], [1, [5], None, 2, 0], [1, [5], None, 0, 2], [True, [5], None, 0, 0],
    [1, [True], None, 0, 0], [1, [5], None, 0, False],
])  # fmt: skip
def test_malformed_key_15_is_refused(value: object) -> None:
    """Every deviation from the trial's CDDL is MANIFEST_MALFORMED."""
    item = cbor2.loads(manifest().encode())
    item[K_TRIAL] = value
    with pytest.raises(ProtocolError) as info:
        Manifest.decode(cbor2.dumps(item, canonical=True))
    assert info.value.reason == Reason.MANIFEST_MALFORMED


def test_trial_spec_refuses_what_the_wire_cannot_carry() -> None:
    """A TrialSpec is checked when built, as the codec checks it when read."""
    with pytest.raises(ValueError):
        TrialSpec(tuple(range(9)))
    with pytest.raises(ValueError):
        TrialSpec((1,), max_label_mismatches=2)
    assert TrialSpec([1, 2]).n == 2
