"""Device status: the retained map, its last-will form, capabilities (all or none) and every
refusal."""

from __future__ import annotations

from dataclasses import replace

import cbor2
import pytest

from device_sdk.protocol.limits import MAX_MEMORY_BYTES, MAX_OPS, MAX_STATUS_BYTES
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import (
    CAPABILITY_KEYS,
    OFFLINE_PAYLOAD,
    Capabilities,
    LinkState,
    Status,
    decode_status,
    encode_status,
    parse_capabilities,
)

CAPS = Capabilities("1.2.0", "2.16", ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX"], 20480, 262144, 32)
ONLINE = Status(
    LinkState.ONLINE, model=12, slot=1, uptime_s=3600, free_ram=51200, seq=5, capabilities=CAPS
)
# Canonical CBOR: keys sorted shortest first, then bytewise.
ONLINE_HEX = (
    "ac"
    "636f7073 83 67434f4e565f3244 6f46554c4c595f434f4e4e45435445 44 67534f46544d4158"  # ops
    "63736571 05"  # seq: 5
    "64736c6f74 01"  # slot: 1
    "656d6f64656c 0c"  # model: 12
    "657374617465 01"  # state: 1 (online)
    "68667265655f72616d 19c800"  # free_ram: 51200
    "6875707469 6d655f73 190e10"  # uptime_s: 3600
    "6a736c6f745f6279746573 1a00040000"  # slot_bytes: 262144
    "6b6172656e615f6279746573 195000"  # arena_bytes: 20480
    "6c706f696e7465725f62697473 1820"  # pointer_bits: 32
    "6c74666c6d5f76657273696f6e 64322e3136"  # tflm_version: "2.16"
    "706669726d776172655f76657273696f6e 65312e322e30"  # firmware_version: "1.2.0"
)
# The same status without the capabilities: six keys.
LEAN_HEX = (
    "a6"
    "63736571 05"  # seq: 5
    "64736c6f74 01"  # slot: 1
    "656d6f64656c 0c"  # model: 12
    "657374617465 01"  # state: 1 (online)
    "68667265655f72616d 19c800"  # free_ram: 51200
    "6875707469 6d655f73 190e10"  # uptime_s: 3600
)


def _fields(**changes: object) -> dict[str, object]:
    fields = dict(cbor2.loads(encode_status(ONLINE)))
    for key, value in changes.items():
        if value is _DROP:
            del fields[key]
        else:
            fields[key] = value
    return fields


_DROP = object()


def _reason(payload: bytes) -> Reason:
    with pytest.raises(ProtocolError) as caught:
        decode_status(payload)
    return caught.value.reason


def test_last_will_is_eight_bytes() -> None:
    """The offline last will is {"state": 0}: small enough for any broker's will slot."""
    assert OFFLINE_PAYLOAD == bytes.fromhex("a1 65 7374617465 00".replace(" ", ""))
    assert decode_status(OFFLINE_PAYLOAD) == Status(LinkState.OFFLINE)


def test_online_status_encodes_to_the_golden_bytes() -> None:
    """Key names and canonical key order are pinned byte for byte."""
    assert encode_status(ONLINE) == bytes.fromhex(ONLINE_HEX.replace(" ", ""))
    assert decode_status(bytes.fromhex(ONLINE_HEX.replace(" ", ""))) == ONLINE


def test_wire_values_of_link_state() -> None:
    """Wire values: never renumber."""
    assert (LinkState.OFFLINE, LinkState.ONLINE) == (0, 1)


@pytest.mark.parametrize(
    "status",
    [
        ONLINE,
        replace(ONLINE, model=None),
        replace(ONLINE, capabilities=replace(CAPS, ops=[], tflm_version="", pointer_bits=64)),
        Status(LinkState.OFFLINE, uptime_s=10),
        Status(LinkState.OFFLINE, capabilities=CAPS),
        replace(ONLINE, capabilities=None),
        replace(ONLINE, model=None, capabilities=None),
    ],
)
def test_status_round_trips(status: Status) -> None:
    """What the encoder writes decodes to an equal status."""
    assert decode_status(encode_status(status)) == status


def test_unknown_text_keys_are_ignored() -> None:
    """Newer firmware may add keys within v1; this reader skips them."""
    payload = cbor2.dumps(_fields(battery_mv=3300, extra={"nested": [1, 2]}))
    assert decode_status(payload) == ONLINE


def test_model_may_be_null() -> None:
    """A device running no model says so with null (or by leaving the key out)."""
    assert decode_status(cbor2.dumps(_fields(model=None))).model is None
    assert decode_status(cbor2.dumps(_fields(model=_DROP))).model is None


def test_an_online_status_may_leave_out_all_the_capabilities() -> None:
    """Later statuses of a connection omit the capabilities as a group: None, "unchanged".
    Those bytes are the status with the six capability keys removed, nothing else."""
    lean = replace(ONLINE, capabilities=None)
    payload = encode_status(lean)
    assert cbor2.loads(payload) == {
        k: v for k, v in cbor2.loads(encode_status(ONLINE)).items() if k not in CAPABILITY_KEYS
    }
    assert payload == bytes.fromhex(LEAN_HEX.replace(" ", ""))  # 50 bytes instead of 174
    assert decode_status(payload) == lean
    assert decode_status(payload).capabilities is None


@pytest.mark.parametrize("kept", [(key,) for key in CAPABILITY_KEYS] + [CAPABILITY_KEYS[:5]])
def test_a_partial_set_of_capabilities_is_refused(kept: tuple[str, ...]) -> None:
    """All six keys or none: one to five of them is SCHEMA_MISMATCH, naming what is missing,
    online and offline alike."""
    fields = {k: v for k, v in _fields().items() if k not in CAPABILITY_KEYS or k in kept}
    for state in (1, 0):
        with pytest.raises(ProtocolError) as caught:
            decode_status(cbor2.dumps({**fields, "state": state}))
        assert caught.value.reason is Reason.SCHEMA_MISMATCH
        assert "all six keys or none" in caught.value.detail
        assert all(key in caught.value.detail for key in CAPABILITY_KEYS if key not in kept)


def test_capabilities_parse_from_enrollment_json() -> None:
    """The same checks serve the enrollment JSON, whose field names are the same."""
    json_like = {
        "firmware_version": "1.2.0",
        "tflm_version": "2.16",
        "ops": CAPS.ops,
        "arena_bytes": 20480,
        "slot_bytes": 262144,
        "pointer_bits": 32,
        "other": 1,
    }
    assert parse_capabilities(json_like) == CAPS
    assert set(CAPABILITY_KEYS) <= set(json_like)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xa1" + b"\x00" * MAX_STATUS_BYTES, Reason.PAYLOAD_TOO_LARGE),
        (b"\xa1\x65state", Reason.CBOR_MALFORMED),
        (OFFLINE_PAYLOAD + b"\x00", Reason.CBOR_MALFORMED),
        (b"\xa2\x65state\x00\x65state\x01", Reason.CBOR_MALFORMED),  # duplicate key
        (b"\xa2\x61a" + b"\x81" * 8 + b"\x00\x65state\x00", Reason.CBOR_MALFORMED),  # deep
        (cbor2.dumps([0]), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({1: 0}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({"state": 0, b"state": 0}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({"state": "offline"}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({"state": cbor2.CBORTag(1, 0)}), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps({"state": 2}), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps({"state": -1}), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps({f"k{i}": 0 for i in range(40)} | {"state": 0}), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(slot=_DROP)), Reason.SCHEMA_MISMATCH),  # online needs all
        (cbor2.dumps(_fields(ops=_DROP)), Reason.SCHEMA_MISMATCH),  # capabilities: all or none
        (cbor2.dumps(_fields(pointer_bits=_DROP)), Reason.SCHEMA_MISMATCH),
        (
            cbor2.dumps({k: v for k, v in _fields(seq=_DROP).items() if k not in CAPABILITY_KEYS}),
            Reason.SCHEMA_MISMATCH,  # without capabilities, the presence fields still needed
        ),
        (cbor2.dumps(_fields(slot=None)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(uptime_s=1.5)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(free_ram=True)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(ops="CONV_2D")), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(ops=[b"CONV_2D"])), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(firmware_version=1)), Reason.SCHEMA_MISMATCH),
        (cbor2.dumps(_fields(slot=2)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(model=-1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(seq=2**64 - 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(pointer_bits=16)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(arena_bytes=MAX_MEMORY_BYTES + 1)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(ops=["conv_2d"])), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(ops=[""])), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(ops=["A" * 65])), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(ops=["ADD"] * (MAX_OPS + 1))), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(firmware_version="")), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(firmware_version="v" * 65)), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(tflm_version="2.16\n")), Reason.VALUE_OUT_OF_RANGE),
        (cbor2.dumps(_fields(tflm_version="é" * 33)), Reason.VALUE_OUT_OF_RANGE),  # 66 bytes
    ],
)
def test_decoder_refuses_with_a_reason(payload: bytes, reason: Reason) -> None:
    """Each way a status can be wrong maps to one reason code, never to another exception."""
    assert _reason(payload) is reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (replace(ONLINE, free_ram=None), Reason.SCHEMA_MISMATCH),
        (replace(ONLINE, capabilities=None, slot=None), Reason.SCHEMA_MISMATCH),
        (replace(ONLINE, slot=3), Reason.VALUE_OUT_OF_RANGE),
        (replace(ONLINE, uptime_s=-5), Reason.VALUE_OUT_OF_RANGE),
        (replace(ONLINE, capabilities=replace(CAPS, ops=["Conv"])), Reason.VALUE_OUT_OF_RANGE),
        (replace(ONLINE, capabilities=replace(CAPS, ops=[1])), Reason.SCHEMA_MISMATCH),
        (replace(ONLINE, capabilities=replace(CAPS, pointer_bits=48)), Reason.VALUE_OUT_OF_RANGE),
        (replace(ONLINE, state=7), Reason.VALUE_OUT_OF_RANGE),  # type: ignore[arg-type]
        (
            replace(ONLINE, capabilities=replace(CAPS, firmware_version="\ud800")),
            Reason.VALUE_OUT_OF_RANGE,
        ),
    ],
)
def test_encoder_refuses_what_the_decoder_refuses(status: Status, reason: Reason) -> None:
    """Encoding runs the decoder's checks, so a device never publishes a status we refuse."""
    with pytest.raises(ProtocolError) as caught:
        encode_status(status)
    assert caught.value.reason is reason
