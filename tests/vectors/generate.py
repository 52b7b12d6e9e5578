"""Write the test vectors the C firmware tests read, using the Python codecs as the reference.

Run ``python tests/vectors/generate.py [OUT_DIR]`` (default: this folder) after changing a
codec, and commit the result; ``test_vectors_fresh.py`` fails while the committed files differ
from a fresh run. Everything is deterministic: fixed keys, seeded data, Ed25519 (deterministic
signatures).

Format of the ``*.vec`` files (read by ``firmware/tests/vectors.c``): records separated by a
blank line, one ``key: value`` per line; values are decimal integers, lowercase hex for bytes,
comma-separated lists, or plain text. ``#`` starts a comment line.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.protocol import link
from device_sdk.protocol.cose import PROTECTED_EDDSA, key_id, raw_public_key, sign1
from device_sdk.protocol.enrollment import capabilities_digest, enrollment_message
from device_sdk.protocol.events import Event, EventBatch, encode_batch, encode_summary, summarize
from device_sdk.protocol.fanout import crypt as fanout_crypt
from device_sdk.protocol.golden import OutputType, golden_input, outputs_digest, top1_label
from device_sdk.protocol.manifest import (
    Encoding,
    Manifest,
    TrialSpec,
    sign_manifest,
    verify_manifest,
)
from device_sdk.protocol.ota_messages import (
    Chunk,
    ChunkRequest,
    DeploymentState,
    FanoutKey,
    Report,
    Withdrawal,
    encode_chunk,
    encode_chunk_request,
    encode_fanout_key,
    encode_report,
    encode_withdrawal,
)
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.status import Capabilities, LinkState, Status, encode_status
from device_sdk.protocol.transfer import TransferDecoder, compress, encode_transfer
from device_sdk.protocol.trust import (
    TrustPolicy,
    TrustState,
    encode_trust_bundle,
    rotation_for,
    sign_policy,
    sign_rotation,
    trusted_key_set,
    verify_rotation,
)

HERE = Path(__file__).resolve().parent
T0 = 1_717_000_000_000
NOW = 1_800_000_000  # unix seconds the manifest vectors are checked at
PROFILE = "mps2-an385"
SLOT_BYTES = 128 * 1024
ARENA_BYTES = 16_384
OPS = ["ADD", "CONV_2D", "FULLY_CONNECTED", "SOFTMAX"]


def private_key(label: str) -> Ed25519PrivateKey:
    """Return a fixed Ed25519 key derived from ``label`` (test keys only, never a fleet's)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


SIGNER = private_key("tml test signing key 1")
OTHER = private_key("tml test signing key 2")
STRANGER = private_key("tml untrusted key")
MCU_SEED = hashlib.sha256(b"tml test mcu identity seed").digest()  # an MCU's own key (enroll.vec)
MCU = Ed25519PrivateKey.from_private_bytes(MCU_SEED)


def sha(data: bytes) -> bytes:
    """Return SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def record(fields: Mapping[str, Any]) -> str:
    """Return one record: ``key: value`` lines (bytes as hex, lists comma-separated)."""
    lines = []
    for key, value in fields.items():
        if isinstance(value, bytes | bytearray):
            text = bytes(value).hex()
        elif isinstance(value, list | tuple):
            text = ",".join(str(int(v)) if not isinstance(v, str) else v for v in value)
        elif isinstance(value, bool):
            text = str(int(value))
        else:
            text = str(value)
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def write_vec(out: Path, name: str, header: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Write a ``.vec`` file with a comment header."""
    body = "\n".join(record(r) for r in records)
    comment = "".join(f"# {line}\n" for line in header.strip().splitlines())
    (out / name).write_text(comment + "\n" + body)


def synthetic_model(size: int, seed: int, tag: bytes = b"\x14\x00\x20\x00") -> bytes:
    """Make bytes shaped like an int8 .tflite: header, tables, int8 weights, int32 biases."""
    rng = random.Random(seed)
    out = bytearray(b"\x1c\x00\x00\x00TFL3" + tag)
    layer = 0
    while len(out) < size:
        name = f"sequential/dense_{layer}/MatMul;".encode()
        out += layer.to_bytes(4, "little") + name + bytes(-len(name) % 4)
        out += bytes(max(-128, min(127, int(rng.gauss(0, 30)))) & 0xFF for _ in range(700))
        out += b"".join(rng.randrange(-5000, 5000).to_bytes(4, "little", signed=True)
                        for _ in range(16))
        layer += 1
    return bytes(out[:size])


def fine_tune(model: bytes, seed: int) -> bytes:
    """Return ``model`` with a few weights nudged, as a head-only fine-tune would."""
    rng = random.Random(seed)
    out = bytearray(model)
    start = len(out) * 3 // 4
    for i in range(start, start + 400):
        if rng.random() < 0.3:
            out[i] = (out[i] + rng.choice((-2, -1, 1, 2))) & 0xFF
    return bytes(out)


# -- events -------------------------------------------------------------------------------------


def event_vectors() -> list[dict[str, Any]]:
    """Return batches (kind 2) and summaries (kind 3), what the firmware sends, with encodings.

    No kind-0 batches or kind-1 summaries: the firmware has no decoder, and the server's
    decoding of the kinds older devices send is pinned in tests/device_sdk/protocol/.
    """
    rng = random.Random(1)
    golden = [Event(T0, 2, 200, 120), Event(T0 + 1000, 5, 180, 130), Event(T0 + 2010, 2, 255, 115)]
    batches: list[tuple[str, int, int, list[Event]]] = [
        ("golden", T0, 3, golden),  # CDDL.md's worked example: seq numbered from t0
        ("single", 7, 0, [Event(T0, 0, 0, 0)]),  # seq far below t0: a 9-byte negative offset
        ("seq_zero", 0, 0, [Event(T0, 0, 0, 0)]),
        ("equal_values", 2**40, 2**31 - 1, [Event(T0 + 5 * i, 9, 77, 400) for i in range(5)]),
        ("extremes", 2**63 - 1, 42, [Event(T0, 1023, 255, 600_000),
                                      Event(T0 + 86_400_000, 0, 0, 0),
                                      Event(T0 + 86_400_000, 512, 128, 1)]),
    ]
    # seq - t0 at each boundary of a CBOR head, both signs (a seq after a restart runs ahead of
    # t0; one numbered otherwise, or by older firmware, may lie below it).
    edges = (1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32)
    # Once each: -24 is both -23 - 1 and -24.
    offsets = list(dict.fromkeys(o for edge in edges for o in (edge, -edge, -edge - 1)))
    for offset in offsets:
        batches.append((f"seq_minus_t0_{offset}", T0 + offset, 1, golden[:2]))
    for n in (2, 8, 32, 100, 1024):
        t, events = T0 + rng.randrange(10**9), []
        classes = rng.randrange(4, 11)
        for _ in range(n):
            events.append(Event(t, rng.randrange(classes), rng.randrange(256 // classes, 256),
                                rng.randrange(50, 500)))
            t += max(0, int(rng.gauss(1000, 100)))
        # Numbered as a device numbers them: from the first event's time.
        batches.append((f"realistic_{n}", events[0].t_ms, rng.randrange(1, 1000), events))
    out: list[dict[str, Any]] = []
    for name, seq, model, events in batches:
        payload = encode_batch(EventBatch.of(seq, model, events))
        out.append({"name": name, "kind": "batch", "seq": seq, "model": model,
                    "t_ms": [e.t_ms for e in events], "labels": [e.label for e in events],
                    "scores": [e.score for e in events],
                    "latencies": [e.latency_100us for e in events], "expect": payload})
    # Summaries numbered as a device numbers them, from the window's start (seq - t0 = 0), then
    # the ends of seq's range and the offsets of the batches above.
    summaries: list[tuple[str, int | None, int, int]] = [
        ("summary_fixed", 6, 50, T0), ("summary_grow", None, 40, T0),
        ("summary_empty", 4, 0, T0), ("summary_one", None, 1, T0),
        ("summary_seq_zero", 3, 5, 0), ("summary_seq_max", 3, 5, 2**63 - 1),
    ]
    summaries += [(f"summary_seq_minus_t0_{offset}", 3, 5, T0 + offset) for offset in offsets]
    for name, num_labels, n, seq in summaries:
        events = [Event(T0 + rng.randrange(60_000), rng.randrange(6 if num_labels else 9),
                        rng.randrange(256), rng.randrange(600_001)) for _ in range(n)]
        if num_labels is not None:
            events = [replace(e, label=e.label % num_labels) for e in events]
        summary = summarize(events, seq=seq, t0_ms=T0, model=5, window_s=60,
                            num_labels=num_labels)
        out.append({"name": name, "kind": "summary", "seq": summary.seq, "model": 5,
                    "t0": T0, "window_s": 60, "num_labels": num_labels or 0,
                    "t_ms": [e.t_ms for e in events], "labels": [e.label for e in events],
                    "scores": [e.score for e in events],
                    "latencies": [e.latency_100us for e in events],
                    "expect": encode_summary(summary)})
    return out


# -- status and OTA messages --------------------------------------------------------------------


def message_vectors() -> list[dict[str, Any]]:
    """Return status, hello, chunk request, report and chunk encodings."""
    out: list[dict[str, Any]] = []
    caps = Capabilities("tml-fw 0.1.0", "test-source", OPS, ARENA_BYTES, SLOT_BYTES, 32)
    for name, model, slot, uptime, free, seq in (("status_model", 77, 1, 3600, 20_000, 12),
                                                 ("status_no_model", None, 0, 0, 0, 0),
                                                 ("status_big", 2**31 - 1, 0, 2**40, 2**33,
                                                  2**62)):
        status = Status(LinkState.ONLINE, model, slot, uptime, free, seq, caps)
        out.append({"name": name, "kind": "status", "model": -1 if model is None else model,
                    "slot": slot, "uptime_s": uptime, "free_ram": free, "seq": seq,
                    "firmware_version": caps.firmware_version, "tflm_version": caps.tflm_version,
                    "ops": OPS, "arena_bytes": ARENA_BYTES, "slot_bytes": SLOT_BYTES,
                    "pointer_bits": 32, "expect": encode_status(status)})
    for uid, mtu in (("mcu-0001", 544), ("dev-0123456789abcdef", 33_000)):
        out.append({"name": f"hello_{uid}", "kind": "hello", "uid": uid, "mtu": mtu,
                    "expect": link.encode_hello(link.Hello(uid, mtu))})
    key = raw_public_key(MCU.public_key())
    for uid, hardware in (("mcu-0001", "qemu-mps2-an385"), ("m" * 64, "h" * 64)):
        out.append({"name": f"hello_key_{uid[:8]}", "kind": "hello", "uid": uid, "mtu": 544,
                    "key": key, "hardware": hardware,
                    "expect": link.encode_hello(link.Hello(uid, 544, key=key, hardware=hardware))})
    for pkg, offset, length in ((1, 0, 512), (2**31 - 1, 67_108_864 - 1, 1), (300, 70_000, 24)):
        out.append({"name": f"request_{pkg}_{offset}", "kind": "chunk_request", "pkg": pkg,
                    "offset": offset, "length": length,
                    "expect": encode_chunk_request(ChunkRequest(pkg, offset, length))})
    for state in DeploymentState:
        for detail in (0, int(Reason.TRIAL_INTERRUPTED), 65_535):
            out.append({"name": f"report_{state.name.lower()}_{detail}", "kind": "report",
                        "pkg": 77, "state": int(state), "detail": detail,
                        "expect": encode_report(Report(77, state, detail))})
    rng = random.Random(2)
    for pkg, offset, size in ((5, 0, 0), (5, 512, 512), (2**31 - 1, 1_000_000, 23)):
        data = bytes(rng.randrange(256) for _ in range(size))
        out.append({"name": f"chunk_{offset}_{size}", "kind": "chunk", "pkg": pkg,
                    "offset": offset, "data": data,
                    "expect": encode_chunk(Chunk(pkg, offset, data))})
    return out


# -- manifests and rotations ---------------------------------------------------------------------

RUNNING = synthetic_model(6000, seed=3)  # the model the checked device runs


def base_manifest(**changes: Any) -> Manifest:
    """Return a valid raw manifest for the vectors' device, with ``changes`` applied."""
    model = synthetic_model(5000, seed=4)
    fields: dict[str, Any] = {
        "sequence": 10, "model_name": "kws", "model_version": "1.2.0",
        "hardware_profile": PROFILE, "model_sha256": sha(model), "model_size": len(model),
        "encoding": Encoding.RAW, "transfer_sha256": sha(model), "transfer_size": len(model),
        "arena_bytes": 12_000, "expires_at": NOW + 3600, "package_id": 77,
    }
    fields.update(changes)
    return Manifest(**fields)


def canonical(item: Any) -> bytes:
    """Return ``item`` as deterministic CBOR."""
    return cbor2.dumps(item, canonical=True)


def raw_payload(m: Manifest) -> dict[int, Any]:
    """Return the manifest's payload as a mutable dict."""
    return dict(cbor2.loads(m.encode()))


def cose_with(protected: bytes = PROTECTED_EDDSA, unprotected: Any = None, payload: bytes = b"",
              signature: bytes | None = None, *, tag: int | None = 18) -> bytes:
    """Assemble a COSE_Sign1 by hand (for envelopes the signer would never make)."""
    kid = key_id(SIGNER.public_key())
    unprotected = {4: kid} if unprotected is None else unprotected
    if signature is None:
        signature = SIGNER.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    item: Any = [protected, unprotected, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, item) if tag is not None else item)


def manifest_cases() -> list[tuple[str, bytes, dict[str, Any]]]:
    """Return (name, COSE bytes, policy overrides) for every manifest vector."""
    good = base_manifest()
    signed = sign_manifest(good, SIGNER)
    model = synthetic_model(5000, seed=4)
    compressed = compress(model)
    delta = encode_transfer(model, Encoding.DELTA, RUNNING)
    bad_payload = raw_payload(good)
    cases: list[tuple[str, bytes, dict[str, Any]]] = [
        ("valid_raw", signed, {}),
        ("valid_untagged", cose_with(payload=good.encode(), tag=None), {}),
        ("valid_compressed", sign_manifest(base_manifest(
            encoding=Encoding.COMPRESSED, transfer_sha256=sha(compressed),
            transfer_size=len(compressed), package_id=78, sequence=11), SIGNER), {}),
        ("valid_delta", sign_manifest(base_manifest(
            encoding=Encoding.DELTA, transfer_sha256=sha(delta), transfer_size=len(delta),
            base_sha256=sha(RUNNING), package_id=79, sequence=12), SIGNER), {}),
        ("valid_second_key", sign_manifest(base_manifest(package_id=80), OTHER), {}),
        ("valid_limits_unchecked", sign_manifest(base_manifest(
            model_size=1 << 30, transfer_size=1 << 30, arena_bytes=1 << 30), SIGNER),
         {"slot_bytes": 0,
                                                                "arena_bytes": 0}),
        ("malformed_not_cbor", b"\xff\x00garbage", {}),
        ("malformed_empty", b"", {}),
        ("malformed_truncated", signed[:-10], {}),
        ("malformed_trailing", signed + b"\x00", {}),
        ("malformed_other_tag", cose_with(payload=good.encode(), tag=98), {}),
        ("malformed_three_items", cbor2.dumps([PROTECTED_EDDSA, {}, good.encode()]), {}),
        ("malformed_kid_missing", cose_with(unprotected={}, payload=good.encode()), {}),
        ("malformed_kid_too_long", cose_with(unprotected={4: bytes(33)}, payload=good.encode()),
         {}),
        ("malformed_extra_header", cose_with(unprotected={4: key_id(SIGNER.public_key()),
                                                          5: b"x"}, payload=good.encode()), {}),
        ("malformed_payload_not_bstr", cbor2.dumps(cbor2.CBORTag(18, [
            PROTECTED_EDDSA, {4: key_id(SIGNER.public_key())}, "text", bytes(64)])), {}),
        ("malformed_empty_protected", cose_with(protected=b"", payload=good.encode()), {}),
        ("malformed_indefinite", b"\xd2\x9f" + signed[2:] + b"\xff", {}),
        ("bad_algorithm_es256", cose_with(protected=canonical({1: -7}),
                                          payload=good.encode()), {}),
        ("bad_algorithm_extra_param", cose_with(protected=canonical({1: -8, 3: 0}),
                                                payload=good.encode()), {}),
        ("malformed_protected_not_map", cose_with(protected=cbor2.dumps([1, -8]),
                                                  payload=good.encode()), {}),
        ("unknown_key", sign_manifest(good, STRANGER), {}),
        ("bad_signature_flipped_payload", cose_with(
            payload=good.encode()[:-1] + bytes([good.encode()[-1] ^ 1]),
            signature=SIGNER.sign(cbor2.dumps(["Signature1", PROTECTED_EDDSA, b"",
                                               good.encode()]))), {}),
        ("bad_signature_short", cose_with(payload=good.encode(), signature=bytes(63)), {}),
        ("bad_signature_zero", cose_with(payload=good.encode(), signature=bytes(64)), {}),
        ("unsupported_version", cose_with(payload=canonical({**bad_payload, 1: 2})), {}),
        ("unsupported_version_negative", cose_with(payload=canonical({**bad_payload, 1: -1})),
         {}),
        ("malformed_version_missing", cose_with(payload=canonical(
            {k: v for k, v in bad_payload.items() if k != 1})), {}),
        ("malformed_not_deterministic", cose_with(payload=cbor2.dumps(
            dict(reversed(list(bad_payload.items()))))), {}),
        ("malformed_unknown_key", cose_with(payload=canonical({**bad_payload, 16: 0})), {}),
        ("malformed_missing_key", cose_with(payload=canonical(
            {k: v for k, v in bad_payload.items() if k != 12})), {}),
        ("malformed_text_too_long", cose_with(payload=canonical({**bad_payload, 3: "x" * 65})),
         {}),
        ("malformed_digest_short", cose_with(payload=canonical({**bad_payload, 6: bytes(31)})),
         {}),
        ("malformed_size_not_u32", cose_with(payload=canonical({**bad_payload, 12: 2**32})), {}),
        ("malformed_encoding_unknown", cose_with(payload=canonical({**bad_payload, 8: 3})), {}),
        ("malformed_raw_sizes_differ", cose_with(payload=canonical(
            {**bad_payload, 10: bad_payload[10] + 1})), {}),
        ("malformed_base_without_delta", cose_with(payload=canonical(
            {**bad_payload, 11: bytes(32)})), {}),
        ("malformed_bool_sequence", cose_with(payload=canonical({**bad_payload, 2: True})), {}),
        ("malformed_payload_not_map", cose_with(payload=canonical([1, 2])), {}),
        ("malformed_payload_text_keys", cose_with(payload=canonical({"1": 1})), {}),
        ("sequence_replay_equal", signed, {"current_sequence": 10}),
        ("sequence_replay_lower", signed, {"current_sequence": 2**40}),
        ("expired", signed, {"now": NOW + 3600}),
        ("expired_later", signed, {"now": NOW + 10**6}),
        ("wrong_hardware", sign_manifest(base_manifest(hardware_profile="cortex-m4"), SIGNER),
         {}),
        ("too_large", sign_manifest(base_manifest(), SIGNER), {"slot_bytes": 4999}),
        ("arena_too_small", sign_manifest(base_manifest(arena_bytes=16_385), SIGNER), {}),
        *trial_manifest_cases(bad_payload),
        ("delta_base_mismatch", sign_manifest(base_manifest(
            encoding=Encoding.DELTA, transfer_sha256=sha(delta), transfer_size=len(delta),
            base_sha256=sha(b"another model"), sequence=13), SIGNER), {}),
    ]
    return cases


TRIAL = TrialSpec((3, 0, 9, 1023, 2, 2, 7, 0), max_label_mismatches=1,
                  outputs_sha256=sha(b"outputs"), output_type=OutputType.UINT8)


def trial_manifest_cases(payload: dict[int, Any]) -> list[tuple[str, bytes, dict[str, Any]]]:
    """Return manifests with key 15 (the golden-input trial): valid ones and refused ones."""
    wire = TRIAL.to_wire()

    def with_trial(value: Any) -> bytes:
        return cose_with(payload=canonical({**payload, 15: value}))

    def changed(index: int, value: Any) -> bytes:
        item = list(wire)
        item[index] = value
        return with_trial(item)

    # [n, labels, digest, max, type] with one inner uint in a longer head than needed.
    long_head = canonical({**payload, 15: [1, [5], None, 0, 0]}).replace(
        bytes([0x85, 0x01, 0x81, 0x05]), bytes([0x85, 0x01, 0x81, 0x18, 0x05]))
    assert long_head != canonical({**payload, 15: [1, [5], None, 0, 0]})
    return [
        ("valid_trial", sign_manifest(base_manifest(trial=TRIAL, package_id=81), SIGNER), {}),
        ("valid_trial_null_digest", sign_manifest(base_manifest(trial=TrialSpec(
            (5,), max_label_mismatches=0), package_id=82), SIGNER), {}),
        ("malformed_trial_not_array", with_trial(0), {}),
        ("malformed_trial_four_items", with_trial(wire[:4]), {}),
        ("malformed_trial_six_items", with_trial([*wire, 0]), {}),
        ("malformed_trial_n_zero", with_trial([0, [], None, 0, 0]), {}),
        ("malformed_trial_n_too_large", with_trial([9, list(range(9)), None, 0, 0]), {}),
        ("malformed_trial_n_not_label_count", changed(0, 7), {}),
        ("malformed_trial_label_too_large", changed(1, [3, 0, 9, 1024, 2, 2, 7, 0]), {}),
        ("malformed_trial_label_negative", changed(1, [3, 0, 9, -1, 2, 2, 7, 0]), {}),
        ("malformed_trial_digest_short", changed(2, bytes(31)), {}),
        ("malformed_trial_digest_text", changed(2, "x" * 32), {}),
        ("malformed_trial_digest_false", changed(2, False), {}),
        ("malformed_trial_max_above_n", changed(3, 9), {}),
        ("malformed_trial_output_type_unknown", changed(4, 2), {}),
        ("malformed_trial_n_bool", with_trial([True, [5], None, 0, 0]), {}),
        ("malformed_trial_not_deterministic", cose_with(payload=long_head), {}),
    ]


def manifest_vectors() -> list[dict[str, Any]]:
    """Run every manifest case through verify_manifest and record what it says."""
    keys = trusted_key_set(SIGNER.public_key(), OTHER.public_key())
    out = []
    for name, cose, overrides in manifest_cases():
        policy = {"current_sequence": 5, "hardware_profile": PROFILE, "now": NOW,
                  "slot_bytes": SLOT_BYTES, "arena_bytes": ARENA_BYTES,
                  "running_sha256": sha(RUNNING)}
        policy.update(overrides)
        fields: dict[str, Any] = {"name": name, "cose": cose, **policy}
        try:
            m = verify_manifest(
                cose, trusted_keys=keys, current_sequence=policy["current_sequence"],
                hardware_profile=policy["hardware_profile"], now=policy["now"],
                slot_bytes=policy["slot_bytes"] or None,
                arena_bytes=policy["arena_bytes"] or None,
                running_model_sha256=policy["running_sha256"])
        except ProtocolError as exc:
            fields["reason"] = int(exc.reason)
            fields["reason_name"] = exc.reason.name
        else:
            fields.update(reason=0, reason_name="OK", sequence=m.sequence,
                          package_id=m.package_id, model_size=m.model_size,
                          encoding=int(m.encoding), transfer_size=m.transfer_size,
                          arena=m.arena_bytes, expires_at=m.expires_at,
                          model_sha256=m.model_sha256, transfer_sha256=m.transfer_sha256,
                          trial_n=m.trial.n if m.trial else 0)
            if m.trial:
                fields.update(trial_labels=list(m.trial.labels),
                              trial_max=m.trial.max_label_mismatches,
                              trial_output_type=int(m.trial.output_type),
                              trial_digest=m.trial.outputs_sha256 or b"")
        expected_valid = name.startswith("valid")
        assert (fields["reason"] == 0) == expected_valid, (name, fields["reason_name"])
        out.append(fields)
    return out


def rotation_vectors() -> list[dict[str, Any]]:
    """Return rotation records with what verify_rotation says about each."""
    keys = trusted_key_set(SIGNER.public_key(), OTHER.public_key())
    new = private_key("tml test signing key 3").public_key()
    good = rotation_for(new, sequence=1)
    retire = rotation_for(new, sequence=2, retire_kid=key_id(SIGNER.public_key()))
    payload = dict(cbor2.loads(good.encode()))
    cases: list[tuple[str, bytes, int]] = [
        ("valid", sign_rotation(good, SIGNER), 0),
        ("valid_retire_signer", sign_rotation(retire, SIGNER), 0),
        ("replay", sign_rotation(good, SIGNER), 1),
        ("signed_by_stranger", sign_rotation(good, STRANGER), 0),
        ("signed_by_new_key", sign_rotation(good, private_key("tml test signing key 3")), 0),
        ("already_trusted", sign_rotation(rotation_for(OTHER.public_key(), sequence=1),
                                          SIGNER), 0),
        ("retire_unknown", sign_rotation(rotation_for(new, sequence=1, retire_kid=bytes(8)),
                                         SIGNER), 0),
        ("kid_mismatch", sign1(canonical({**payload, 20: bytes(8)}), SIGNER,
                               key_id(SIGNER.public_key())), 0),
        ("malformed_key_short", sign1(canonical({**payload, 21: bytes(31)}), SIGNER,
                                      key_id(SIGNER.public_key())), 0),
        ("malformed_missing_sequence", sign1(canonical(
            {k: v for k, v in payload.items() if k != 2}), SIGNER, key_id(SIGNER.public_key())),
         0),
        ("bad_signature", cose_with(payload=good.encode(), signature=bytes(64)), 0),
    ]
    out = []
    for name, cose, current in cases:
        fields: dict[str, Any] = {"name": name, "cose": cose, "current_sequence": current}
        try:
            r = verify_rotation(cose, trusted_keys=keys, current_sequence=current)
        except ProtocolError as exc:
            fields.update(reason=int(exc.reason), reason_name=exc.reason.name)
        else:
            fields.update(reason=0, reason_name="OK", sequence=r.sequence, new_kid=r.new_kid,
                          new_public_key=r.new_public_key)
        out.append(fields)
    return out


def trust_vectors() -> list[dict[str, Any]]:
    """Return the trust chain as a device walks it: records applied in order to one state.

    Every ``record`` step starts from the state the previous step left (a refused record
    changes nothing) and lists the state after it. ``offer`` steps check a manifest against
    that state (its minimum sequence and revoked packages); ``bundle`` is every record in one
    ``fleet/v1/keys`` payload, applied to the initial state; ``withdraw`` and ``status`` are
    the new messages' bytes.
    """
    third = private_key("tml test signing key 3")
    fourth = private_key("tml test signing key 4")
    r = {n: private_key(f"tml test signing key {n}") for n in range(5, 11)}
    kid = lambda k: key_id(k.public_key())
    steps: list[tuple[str, bytes]] = [
        ("rotate_in_key3", sign_rotation(rotation_for(third.public_key(), sequence=1), SIGNER)),
        ("replay", sign_rotation(rotation_for(third.public_key(), sequence=1), SIGNER)),
        ("old_key_retires_newer", sign_policy(TrustPolicy(2, retire_kids=(kid(third),)), SIGNER)),
        ("rotation_retires_newer", sign_rotation(
            rotation_for(fourth.public_key(), sequence=2, retire_kid=kid(third)), OTHER)),
        ("newer_key_retires_signer1", sign_policy(TrustPolicy(2, retire_kids=(kid(SIGNER),)),
                                                  third)),
        ("signed_by_retired", sign_policy(TrustPolicy(3, min_sequence=5), SIGNER)),
        ("retired_key_never_returns", sign_rotation(
            rotation_for(SIGNER.public_key(), sequence=3), third)),
        ("revoke_and_raise_floor", sign_policy(TrustPolicy(3, min_sequence=12,
                                                           revoke_packages=(77, 78)), third)),
        ("floor_never_lowers", sign_policy(TrustPolicy(4, min_sequence=2), third)),
        ("retire_every_key", sign_policy(TrustPolicy(5, retire_kids=(kid(OTHER), kid(third))),
                                         third)),
        ("malformed_empty_policy", sign1(canonical({1: 1, 2: 5}), third, kid(third))),
        ("policy_unknown_key", sign1(canonical({1: 1, 2: 5, 33: 1}), third, kid(third))),
        ("self_retirement", sign_policy(TrustPolicy(5, retire_kids=(kid(OTHER),)), OTHER)),
        # Bounded memory (MCU and SDK): 2 rotated keys, the 4 newest retired rotated ids.
        ("rotate_in_key5", sign_rotation(rotation_for(r[5].public_key(), sequence=6), third)),
        ("full_rotated_list_refuses_key6", sign_rotation(
            rotation_for(r[6].public_key(), sequence=7), third)),
        ("key6_replaces_key3", sign_rotation(
            rotation_for(r[6].public_key(), sequence=7, retire_kid=kid(third)), third)),
        *((f"key{n}_replaces_key{n - 2}", sign_rotation(
            rotation_for(r[n].public_key(), sequence=n + 1, retire_kid=kid(r[n - 2])),
            r[n - 2])) for n in (7, 8, 9, 10)),  # the 5th retired rotated id pushes out key3's
        ("remembered_key5_never_returns", sign_rotation(
            rotation_for(r[5].public_key(), sequence=12, retire_kid=kid(r[9])), r[9])),
        ("forgotten_key3_returns_by_a_new_record", sign_rotation(
            rotation_for(third.public_key(), sequence=12, retire_kid=kid(r[9])), r[9])),
        # Back, key3 is the newest key: it may retire key10 (the chain ends trusting key3 only).
        ("returned_key3_retires_the_older_key10", sign_policy(
            TrustPolicy(13, retire_kids=(kid(r[10]),)), third)),
    ]
    initial = TrustState(trusted_key_set(SIGNER.public_key(), OTHER.public_key()))
    state = initial
    out: list[dict[str, Any]] = []

    def describe(st: TrustState) -> dict[str, Any]:
        return {"trusted": ",".join(k.hex() for k in st.keys) or "-",
                "retired": ",".join(k.hex() for k in st.retired) or "-",
                "record_sequence": st.sequence, "min_sequence": st.min_sequence,
                "revoked": list(st.revoked) or "-"}

    valid = []
    for name, cose in steps:
        fields: dict[str, Any] = {"step": "record", "name": name, "cose": cose}
        try:
            state = state.apply(cose)
        except ProtocolError as exc:
            fields.update(reason=int(exc.reason), reason_name=exc.reason.name)
        else:
            fields.update(reason=0, reason_name="OK")
            valid.append(cose)
        out.append({**fields, **describe(state)})
    # Offers checked against the final state (device sequence 10; floor 12; 77, 78 revoked).
    for name, changes in (("offer_revoked_package", {"sequence": 20, "package_id": 78}),
                          ("offer_at_the_floor", {"sequence": 12, "package_id": 90}),
                          ("offer_above_the_floor", {"sequence": 13, "package_id": 91})):
        cose = sign_manifest(base_manifest(**changes), third)
        fields = {"step": "offer", "name": name, "cose": cose, "current_sequence": 10,
                  "hardware_profile": PROFILE, "now": NOW}
        try:
            verify_manifest(cose, trusted_keys=state.keys,
                            current_sequence=max(10, state.min_sequence),
                            hardware_profile=PROFILE, now=NOW,
                            revoked_packages=state.revoked)
        except ProtocolError as exc:
            fields.update(reason=int(exc.reason), reason_name=exc.reason.name)
        else:
            fields.update(reason=0, reason_name="OK")
        out.append(fields)
    bundle = encode_trust_bundle(steps_all := [cose for _, cose in steps])
    final, errors = initial.apply_bundle(bundle)
    assert final == state, "a bundle ends where the records applied one by one end"
    out.append({"step": "bundle", "name": "every_record_in_one_bundle", "payload": bundle,
                "records": len(steps_all), "refused": len(errors), **describe(final)})
    out.append({"step": "withdraw", "name": "withdraw_aborted",
                "payload": encode_withdrawal(Withdrawal(77, int(Reason.ABORTED))), "pkg": 77,
                "reason": int(Reason.ABORTED)})
    status = Status(LinkState.ONLINE, model=3, slot=1, uptime_s=60, free_ram=2048, seq=10,
                    keys=(kid(OTHER), kid(third)))
    out.append({"step": "status", "name": "status_with_keys", "payload": encode_status(status),
                "keys": ",".join(k.hex() for k in status.keys or ())})
    del valid
    key = sha(b"tml test fan-out key")[:16]
    plain = bytes(range(256)) * 3
    out.append({"step": "fanout_key", "name": "fanout_key_message",
                "payload": encode_fanout_key(FanoutKey(77, key)), "pkg": 77, "key": key})
    for offset in (0, 2048, 4101):  # the keystream position is the byte offset in the stream
        out.append({"step": "fanout_crypt", "name": f"fanout_chunk_at_{offset}", "pkg": 77,
                    "key": key, "offset": offset, "plain": plain,
                    "cipher": fanout_crypt(key, 77, offset, plain)})
    return out


# -- transfers ----------------------------------------------------------------------------------


def run_decoder(m: Manifest, transfer: bytes, base: bytes | None, chunk: int) -> tuple[int, bytes]:
    """Feed ``transfer`` in chunks as the device does; return (reason, model bytes)."""
    out = bytearray()
    try:
        decoder = TransferDecoder(m, base)
        for i in range(0, len(transfer), chunk):
            out += decoder.feed(transfer[i : i + chunk])
        out += decoder.finish()
    except ProtocolError as exc:
        return int(exc.reason), bytes(out)
    return 0, bytes(out)


def transfer_vectors(out_dir: Path) -> list[dict[str, Any]]:
    """Write transfer streams and bases as .bin files; return their records."""
    bins = out_dir / "transfers"
    bins.mkdir(exist_ok=True)
    base = synthetic_model(9000, seed=5)
    target = fine_tune(base, seed=6)
    other = synthetic_model(7000, seed=7)
    small = synthetic_model(300, seed=8)
    cases: list[tuple[str, bytes, Encoding, bytes | None, Callable[[bytes], bytes] | None,
                      dict[str, Any]]] = [
        ("raw", other, Encoding.RAW, None, None, {}),
        ("compressed", other, Encoding.COMPRESSED, None, None, {}),
        ("compressed_small", small, Encoding.COMPRESSED, None, None, {}),
        ("compressed_empty", b"", Encoding.COMPRESSED, None, None, {}),
        ("delta", target, Encoding.DELTA, base, None, {}),
        ("delta_unrelated", other, Encoding.DELTA, base, None, {}),
        ("raw_truncated", other, Encoding.RAW, None, lambda t: t[:-100], {"claim_full": 1}),
        ("raw_overflow", other, Encoding.RAW, None, lambda t: t + b"\x00", {"claim_full": 1}),
        ("raw_digest_mismatch", other, Encoding.RAW, None,
         lambda t: t[:50] + bytes([t[50] ^ 1]) + t[51:], {"claim_full": 1}),
        ("compressed_corrupt", other, Encoding.COMPRESSED, None,
         lambda t: t[:400] + bytes([t[400] ^ 0x40]) + t[401:], {}),
        ("compressed_bad_magic", other, Encoding.COMPRESSED, None, lambda t: b"TX" + t[2:], {}),
        ("compressed_size_larger", other, Encoding.COMPRESSED, None,
         lambda t: t[:4] + (len(other) + 1).to_bytes(4, "little") + t[8:], {}),
        ("compressed_size_smaller", other, Encoding.COMPRESSED, None,
         lambda t: t[:4] + (len(other) - 1).to_bytes(4, "little") + t[8:], {}),
        ("compressed_trailing", other, Encoding.COMPRESSED, None, lambda t: t + b"\x00", {}),
        ("compressed_params", other, Encoding.COMPRESSED, None,
         lambda t: t[:3] + b"\x07" + t[4:], {}),
        ("delta_wrong_base", target, Encoding.DELTA, base, None, {"use_base": "other"}),
    ]
    out = []
    for name, model, encoding, base_model, mutate, extra in cases:
        transfer = encode_transfer(model, encoding, base_model)
        claimed = transfer
        if mutate is not None:
            transfer = mutate(transfer)
            if not extra.get("claim_full"):
                claimed = transfer  # the manifest describes the corrupted stream exactly
        device_base = other if extra.get("use_base") == "other" else base_model
        manifest = Manifest(
            sequence=1, model_name="m", model_version="1", hardware_profile=PROFILE,
            model_sha256=sha(model), model_size=len(model), encoding=encoding,
            transfer_sha256=sha(claimed), transfer_size=len(claimed), arena_bytes=0,
            expires_at=NOW, package_id=1,
            base_sha256=sha(base_model) if encoding == Encoding.DELTA and base_model else None)
        if encoding == Encoding.RAW and claimed != model:
            manifest = replace(manifest, transfer_sha256=sha(model), transfer_size=len(model))
        for chunk in (1, 97, 512):
            reason, produced = run_decoder(manifest, transfer, device_base, chunk)
            if chunk == 512:
                assert reason != 0 or produced == model, name
            fields: dict[str, Any] = {
                "name": f"{name}_chunk{chunk}", "encoding": int(encoding),
                "model_size": manifest.model_size, "model_sha256": manifest.model_sha256,
                "transfer_size": manifest.transfer_size,
                "transfer_sha256": manifest.transfer_sha256,
                "base_sha256": manifest.base_sha256 or b"", "chunk": chunk,
                "transfer_file": f"transfers/{name}.bin",
                "base_file": f"transfers/{name}.base.bin" if device_base is not None else "",
                "reason": reason, "reason_name": Reason(reason).name,
            }
            out.append(fields)
        (bins / f"{name}.bin").write_bytes(transfer)
        if device_base is not None:
            (bins / f"{name}.base.bin").write_bytes(device_base)
    return out


def ota_vectors(out_dir: Path) -> list[dict[str, Any]]:
    """Return a chain of signed updates for one device: raw, compressed, delta, a failing trial.

    Each record has the offer (COSE), the transfer stream file and what the device must end
    in (CONFIRMED or ROLLED_BACK with a reason). The device trusts keys/trusted_public.hex and
    has profile mps2-an385.
    """
    bins = out_dir / "ota"
    bins.mkdir(exist_ok=True)
    a = synthetic_model(7000, seed=10)
    b = synthetic_model(7500, seed=11)
    c = fine_tune(b, seed=12)
    failing = synthetic_model(3000, seed=13, tag=b"FAIL")
    steps = [("a_raw", a, Encoding.RAW, None, "CONFIRMED", 0),
             ("b_compressed", b, Encoding.COMPRESSED, None, "CONFIRMED", 0),
             ("c_delta", c, Encoding.DELTA, b, "CONFIRMED", 0),
             ("d_failing_trial", failing, Encoding.COMPRESSED, None, "ROLLED_BACK",
              int(Reason.TRIAL_FAILED))]
    out = []
    for number, (name, model, encoding, base, state, reason) in enumerate(steps, start=1):
        transfer = encode_transfer(model, encoding, base)
        manifest = Manifest(
            sequence=100 + number, model_name="kws", model_version=f"1.{number}",
            hardware_profile=PROFILE, model_sha256=sha(model), model_size=len(model),
            encoding=encoding, transfer_sha256=sha(transfer), transfer_size=len(transfer),
            arena_bytes=8000, expires_at=4_000_000_000, package_id=number,
            base_sha256=sha(base) if base is not None else None)
        (bins / f"{name}.bin").write_bytes(transfer)
        out.append({"name": name, "cose": sign_manifest(manifest, SIGNER),
                    "transfer_file": f"ota/{name}.bin", "package_id": number,
                    "sequence": manifest.sequence, "model_size": len(model),
                    "model_sha256": sha(model), "state": state,
                    "state_value": int(DeploymentState[state]), "reason": reason})
    return out


# -- golden inputs and the golden-input trial -----------------------------------------------------


def fnv1a(data: bytes) -> int:
    """Return 32-bit FNV-1a of ``data``."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def test_source_invoke(model: bytes, inputs: Iterable[bytes]) -> list[bytes]:
    """Return what firmware/src/runner_test_source.c's invoke_raw gives for ``inputs``."""
    seed = fnv1a(model[:64])
    outs = []
    for x in inputs:
        assert len(x) == test_source_input_bytes(model)
        acc = seed
        for b in x:
            acc = ((acc ^ b) * 16777619) & 0xFFFFFFFF
        out = bytearray()
        for j in range(4 + seed % 7):
            acc = ((acc ^ j) * 16777619) & 0xFFFFFFFF
            out.append(acc >> 24)
        outs.append(bytes(out))
    return outs


def test_source_input_bytes(model: bytes) -> int:
    """Return the test source's input tensor size for ``model``."""
    return 24 + fnv1a(model[:64]) % 72


def golden_vectors() -> list[dict[str, Any]]:
    """Return golden inputs (digest, index, length), labels of outputs, and outputs digests."""
    out: list[dict[str, Any]] = []
    digests = [sha(b"model a"), sha(b"model b"), bytes(32)]
    for digest, index, length in [(digests[0], 0, 1), (digests[0], 0, 32), (digests[0], 1, 33),
                                  (digests[0], 7, 100), (digests[1], 3, 64),
                                  (digests[1], 0xFFFFFFFF, 5), (digests[2], 2, 1000)]:
        out.append({"name": f"input_{digest[:2].hex()}_{index}_{length}", "kind": "input",
                    "model_sha256": digest, "index": index, "length": length,
                    "bytes": golden_input(digest, index, length)})
    outputs = [("int8_negative", bytes([0x80, 0xFF, 0x01, 0x00])),  # -128, -1, 1, 0
               ("int8_tie_first_wins", bytes([0x05, 0x7F, 0x7F, 0x80])),
               ("int8_all_negative", bytes([0xF0, 0xFE, 0xFF, 0xFE])),
               ("single", bytes([0x42])),
               ("max_last", bytes(range(16)))]
    for name, data in outputs:
        for kind in OutputType:
            out.append({"name": f"label_{name}_{kind.name.lower()}", "kind": "label",
                        "output": data, "output_type": int(kind),
                        "label": top1_label(data, kind)})
    chunks = [golden_input(digests[0], i, 10 + i) for i in range(3)]
    out.append({"name": "digest_three_outputs", "kind": "digest", "outputs": b"".join(chunks),
                "digest": outputs_digest(chunks)})
    return out


def trial_vectors(out_dir: Path) -> list[dict[str, Any]]:
    """Return an update chain judged by golden-input trials on the test source runner.

    Same record format as ota.vec. Expectations are computed with test_source_invoke, the
    mirror of the firmware's test runner: right ones confirm; another model's labels (the same
    "architecture" with other weights), a wrong outputs digest, or more label mismatches than
    allowed revert with TRIAL_OUTPUT_MISMATCH; a tolerated mismatch confirms.
    """
    bins = out_dir / "ota"
    bins.mkdir(exist_ok=True)
    models = [synthetic_model(3000 + 100 * k, seed=20 + k) for k in range(5)]

    def expected(model: bytes, n: int = 8) -> tuple[list[int], bytes, int]:
        ins = [golden_input(sha(model), i, test_source_input_bytes(model)) for i in range(n)]
        outs = test_source_invoke(model, ins)
        return [top1_label(o, OutputType.INT8) for o in outs], outputs_digest(outs), len(outs[0])

    steps = []
    labels, digest, _ = expected(models[0])
    steps.append(("t1_golden_matches", models[0], TrialSpec(labels, 0, digest), "CONFIRMED", 0))
    # models[1] ships with models[0]'s expectations: it loads and runs, but computes otherwise.
    other_labels, other_digest, _ = expected(models[0])
    assert expected(models[1])[0] != other_labels
    steps.append(("t2_other_weights", models[1], TrialSpec(other_labels, 0, other_digest),
                  "ROLLED_BACK", int(Reason.TRIAL_OUTPUT_MISMATCH)))
    labels, digest, classes = expected(models[2])
    wrong_one = [labels[0] ^ 1 if labels[0] ^ 1 < classes else labels[0] - 1, *labels[1:]]
    steps.append(("t3_one_mismatch_tolerated", models[2], TrialSpec(wrong_one, 1, None),
                  "CONFIRMED", 0))
    labels, digest, _ = expected(models[3])
    steps.append(("t4_outputs_digest_differs", models[3],
                  TrialSpec(labels, 0, sha(digest)), "ROLLED_BACK",
                  int(Reason.TRIAL_OUTPUT_MISMATCH)))
    labels, _, classes = expected(models[4], n=4)
    wrong_two = [(v + 1) % classes for v in labels[:2]] + labels[2:]
    steps.append(("t5_two_mismatches_one_allowed", models[4], TrialSpec(wrong_two, 1, None),
                  "ROLLED_BACK", int(Reason.TRIAL_OUTPUT_MISMATCH)))
    out = []
    for number, (name, model, trial, state, reason) in enumerate(steps, start=1):
        manifest = Manifest(
            sequence=200 + number, model_name="kws", model_version=f"2.{number}",
            hardware_profile=PROFILE, model_sha256=sha(model), model_size=len(model),
            encoding=Encoding.RAW, transfer_sha256=sha(model), transfer_size=len(model),
            arena_bytes=8000, expires_at=4_000_000_000, package_id=10 + number, trial=trial)
        (bins / f"{name}.bin").write_bytes(model)
        out.append({"name": name, "cose": sign_manifest(manifest, SIGNER),
                    "transfer_file": f"ota/{name}.bin", "package_id": 10 + number,
                    "sequence": manifest.sequence, "model_size": len(model),
                    "model_sha256": sha(model), "state": state,
                    "state_value": int(DeploymentState[state]), "reason": reason})
    return out


# -- link frames --------------------------------------------------------------------------------


def link_vectors() -> list[dict[str, Any]]:
    """Return frames and their wire bytes."""
    rng = random.Random(9)
    frames = [
        ("ack", link.Frame(link.Kind.ACK, 0)),
        ("ack_255", link.Frame(link.Kind.ACK, 255)),
        ("hello_rst", link.Frame(link.Kind.HELLO, 0, link.FLAG_RST,
                                 link.encode_hello(link.Hello("mcu-0001", 544)))),
        ("report", link.Frame(link.Kind.REPORT, 17, 0,
                              encode_report(Report(77, DeploymentState.CONFIRMED, 0)))),
        ("zeros", link.Frame(link.Kind.EVENTS, 3, 0, bytes(10))),
        ("trailing_zero", link.Frame(link.Kind.TIME, 4, 0, b"\x01\x00")),
    ]
    for size in (253, 254, 255, 508, 530):
        payload = bytes(rng.randrange(1, 256) for _ in range(size))
        frames.append((f"nonzero_{size}", link.Frame(link.Kind.CHUNK, size & 0xFF, 0, payload)))
    frames.append(("hello_key", link.Frame(link.Kind.HELLO, 0, link.FLAG_RST, link.encode_hello(
        link.Hello("mcu-0001", 544, key=raw_public_key(MCU.public_key()),
                   hardware="qemu-mps2-an385")))))
    frames.append(("enroll_challenge", link.Frame(link.Kind.ENROLL_CHALLENGE, 2, 0,
                                                  link.encode_enroll_challenge(ENROLL_CHALLENGE))))
    frames.append(("enroll_proof", link.Frame(link.Kind.ENROLL_PROOF, 5, 0,
                                              link.encode_enroll_proof(bytes(range(64))))))
    frames.append(("chunk_mixed", link.Frame(link.Kind.CHUNK, 9, 0, encode_chunk(
        Chunk(5, 1024, bytes(rng.randrange(256) for _ in range(512)))))))
    return [{"name": name, "kind": int(f.kind), "seq": f.seq, "flags": f.flags,
             "payload": f.payload, "wire": link.encode_frame(f)} for name, f in frames]


# -- enrollment: the MCU signs for itself ------------------------------------------------------

ENROLL_CAPS = {"firmware_version": "tml-fw 0.1.0", "tflm_version": "test-source", "ops": OPS,
               "arena_bytes": ARENA_BYTES, "slot_bytes": SLOT_BYTES, "pointer_bits": 32}
ENROLL_CHALLENGE = link.EnrollChallenge(bytes(range(40)), sha(b"claim-token-1"),
                                        capabilities_digest(ENROLL_CAPS), "gw-0001")


def enroll_vectors() -> list[dict[str, Any]]:
    """Return the MCU's HELLO for a fixed seed, challenges with the enroll-message the MCU must
    build and its (deterministic) Ed25519 signature, and challenges it must refuse."""
    key = raw_public_key(MCU.public_key())
    out: list[dict[str, Any]] = [
        {"name": "hello_with_key", "kind": "hello", "seed": MCU_SEED, "uid": "mcu-0001",
         "hardware": "qemu-mps2-an385", "mtu": 544, "public_key": key,
         "expect": link.encode_hello(link.Hello("mcu-0001", 544, key=key,
                                                hardware="qemu-mps2-an385"))}]
    cases = [
        ("challenge_gateway", "mcu-0001", "qemu-mps2-an385", ENROLL_CHALLENGE, "claim-token-1",
         ENROLL_CAPS),
        ("challenge_long", "d" * 64, "h" * 64, link.EnrollChallenge(
            bytes(range(200, 256)) + bytes(8), sha(b"t"), capabilities_digest({}), "g" * 64),
         "t", {}),
        ("challenge_short_nonce", "mcu-0002", "qemu-mps2-an386", link.EnrollChallenge(
            b"\x00", sha(b"tok"), capabilities_digest(ENROLL_CAPS), "gw-\u00e9"), "tok",
         ENROLL_CAPS),
    ]
    for name, uid, hardware, challenge, token, caps in cases:
        assert challenge.token_sha256 == sha(token.encode())
        assert challenge.capabilities_sha256 == capabilities_digest(caps)
        message = enrollment_message(nonce=challenge.nonce, token=token, uid=uid,
                                     hardware=hardware, capabilities=caps, via=challenge.via)
        signature = MCU.sign(message)
        out.append({"name": name, "kind": "challenge", "seed": MCU_SEED, "uid": uid,
                    "hardware": hardware, "challenge": link.encode_enroll_challenge(challenge),
                    "message": message, "public_key": key, "signature": signature,
                    "proof": link.encode_enroll_proof(signature)})
    c = ENROLL_CHALLENGE
    bad = [
        ("bad_empty", b""),
        ("bad_map", canonical({"nonce": c.nonce})),
        ("bad_three_items", canonical([c.nonce, c.token_sha256, c.capabilities_sha256])),
        ("bad_five_items", canonical([c.nonce, c.token_sha256, c.capabilities_sha256, c.via, 1])),
        ("bad_empty_nonce", canonical([b"", c.token_sha256, c.capabilities_sha256, c.via])),
        ("bad_long_nonce", canonical([bytes(65), c.token_sha256, c.capabilities_sha256, c.via])),
        ("bad_token_31", canonical([c.nonce, c.token_sha256[:31], c.capabilities_sha256, c.via])),
        ("bad_caps_33", canonical([c.nonce, c.token_sha256, c.capabilities_sha256 + b"x", c.via])),
        ("bad_via_bytes", canonical([c.nonce, c.token_sha256, c.capabilities_sha256, b"gw"])),
        ("bad_via_empty", canonical([c.nonce, c.token_sha256, c.capabilities_sha256, ""])),
        ("bad_via_long", canonical([c.nonce, c.token_sha256, c.capabilities_sha256, "g" * 65])),
        ("bad_via_utf8", b"\x84" + canonical(c.nonce) + canonical(c.token_sha256)
         + canonical(c.capabilities_sha256) + b"\x62\xc3\x28"),
        ("bad_nonce_not_shortest", b"\x84\x58\x05" + bytes(5) + canonical(c.token_sha256)
         + canonical(c.capabilities_sha256) + canonical(c.via)),
        ("bad_trailing", link.encode_enroll_challenge(c) + b"\x00"),
        ("bad_truncated", link.encode_enroll_challenge(c)[:-1]),
    ]
    out += [{"name": name, "kind": "bad_challenge", "challenge": payload} for name, payload in bad]
    return out


# -- everything ----------------------------------------------------------------------------------


# Anti-rollback scenarios: operations on one device's slots, the floor after each, and whether
# an offer of that sequence passes the floor. The reference is the SDK's SlotStore; the C
# firmware (tml_slots) must give the same floors (firmware/tests/test_rollback.c).
ROLLBACK_SCENARIOS: dict[str, list[str]] = {
    "confirm_raises_the_floor": ["offer 5", "install 5", "offer 5", "confirm", "offer 5",
                                 "offer 6", "install 6", "confirm", "offer 4", "offer 7"],
    "install_alone_does_not": ["install 9", "offer 9", "offer 3", "confirm", "offer 9"],
    "failed_trial_keeps_the_floor": ["install 2", "confirm", "install 5", "fail", "offer 5",
                                     "offer 3", "install 5", "confirm", "offer 5", "offer 6"],
    "reboot_in_trial_reverts_and_keeps_the_floor": ["install 4", "confirm", "install 8",
                                                    "reboot", "offer 8", "install 8", "reboot",
                                                    "offer 8", "install 8", "confirm",
                                                    "reboot", "offer 8", "offer 9"],
    "a_lower_confirmed_sequence_never_lowers_it": ["install 10", "confirm", "install 7",
                                                   "confirm", "offer 8", "offer 11"],
}
NOT_AN_OFFER = 2


def rollback_vectors() -> list[dict[str, Any]]:
    """Run each scenario on the SDK's A/B slot store; record the floor after every step."""
    import tempfile

    from device_sdk.ota.slots import SlotStore

    out: list[dict[str, Any]] = []
    for name, ops in ROLLBACK_SCENARIOS.items():
        with tempfile.TemporaryDirectory() as tmp:
            store = SlotStore(Path(tmp), durable=False)
            store.install_factory(b"factory", package=0)
            floors, accepts = [], []
            for op in ops:
                verb, _, arg = op.partition(" ")
                accept = NOT_AN_OFFER
                if verb == "offer":
                    accept = int(int(arg) > store.meta.sequence)  # verify_manifest's rule
                elif verb == "install":
                    model = b"model %d" % int(arg)
                    store.slot_path(store.inactive).write_bytes(model)
                    store.activate_for_trial(int(arg), int(arg), sha(model).hex(), len(model))
                elif verb == "confirm":
                    store.confirm()
                elif verb == "fail":
                    store.revert()
                elif verb == "reboot":
                    store = SlotStore(Path(tmp), durable=False)
                    store.boot()
                else:
                    raise ValueError(op)
                floors.append(store.meta.sequence)
                accepts.append(accept)
        out.append({"name": name, "ops": ",".join(ops), "floors": floors, "accepts": accepts})
    return out


def generate(out_dir: Path) -> None:
    """Write every vector file into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "keys").mkdir(exist_ok=True)
    trusted = [raw_public_key(k.public_key()) for k in (SIGNER, OTHER)]
    (out_dir / "keys" / "trusted_public.hex").write_text("".join(k.hex() + "\n" for k in trusted))
    write_vec(out_dir, "events.vec", "Event batches (kind 2) and summaries (kind 3) (events.py).",
              event_vectors())
    write_vec(out_dir, "messages.vec", "Status, hello, chunk request/chunk, report.",
              message_vectors())
    write_vec(out_dir, "manifests.vec",
              "COSE_Sign1 manifests, the device policy, and verify_manifest's verdict.\n"
              "Trusted keys: keys/trusted_public.hex.", manifest_vectors())
    write_vec(out_dir, "rotations.vec", "Key rotation records and verify_rotation's verdict.",
              rotation_vectors())
    write_vec(out_dir, "trust.vec",
              "The trust chain (trust.py, trust rules): rotation and policy records applied\n"
              "in order to one device state (initial: keys/trusted_public.hex, sequence 0),\n"
              "offers checked against it, the fleet/v1/keys bundle, ota/withdraw, the status\n"
              "field keys, ota/key and the fan-out's AES-128-CTR (fanout.py; only a gateway\n"
              "written in C would need it). Lists: comma-separated; '-': empty.",
              trust_vectors())
    write_vec(out_dir, "transfers.vec",
              "Transfer streams (transfers/*.bin), fed in chunks, and TransferDecoder's verdict.",
              transfer_vectors(out_dir))
    write_vec(out_dir, "ota.vec",
              "An update chain for one device (profile mps2-an385): offers, streams, outcomes.",
              ota_vectors(out_dir))
    write_vec(out_dir, "enroll.vec",
              "The MCU's identity (enroll.h): its HELLO for a fixed seed, ENROLL_CHALLENGE\n"
              "payloads with the enroll-message it builds (enrollment.py) and its Ed25519\n"
              "signature (deterministic, RFC 8032), and challenges it must refuse.",
              enroll_vectors())
    write_vec(out_dir, "link.vec", "Link frames (link.py) and their wire bytes.", link_vectors())
    write_vec(out_dir, "golden.vec",
              "Golden inputs, top-1 labels and outputs digests (golden.py): the trial's rule.",
              golden_vectors())
    write_vec(out_dir, "trial.vec",
              "Updates judged by golden-input trials (manifest key 15) on the test source\n"
              "runner (firmware/src/runner_test_source.c); same format as ota.vec.",
              trial_vectors(out_dir))
    write_vec(out_dir, "rollback.vec",
              "Anti-rollback: the floor rises at confirm, never at install; a failed or\n"
              "interrupted trial keeps it (device_sdk/protocol/ANTI_ROLLBACK.md). ops: install N\n"
              "(model of sequence N on trial), confirm, fail (trial failed: revert), reboot,\n"
              "offer N; floors: the floor after each op; accepts: 1/0 for an offer (N > floor),\n"
              f"{NOT_AN_OFFER} for other ops.", rollback_vectors())


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
