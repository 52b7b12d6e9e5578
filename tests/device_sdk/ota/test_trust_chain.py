"""The device side of the trust chain and the SDK's hardening: trust bundles (rotation,
retirement, minimum sequence, revocation), withdrawals, bounded decoders, hash before decode,
fsync before acting, and the active slot's digest at boot."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.ota import updater as updater_module
from device_sdk.ota.agent import OtaAgent
from device_sdk.ota.updater import OtaUpdater
from device_sdk.protocol.cose import key_id
from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.ota_messages import DeploymentState, decode_report
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder, compress
from device_sdk.protocol.transfer.decoder import max_instruction_bytes
from device_sdk.protocol.transfer.delta import HEADER as DELTA_HEADER
from device_sdk.protocol.trust import (
    TrustPolicy,
    encode_trust_bundle,
    rotation_for,
    sign_policy,
    sign_rotation,
)
from tests.device_sdk.ota.test_updater import KEY, device, feed_all, model_bytes, package

NEW = Ed25519PrivateKey.generate()
THIRD = Ed25519PrivateKey.generate()
KID, NEW_KID = key_id(KEY.public_key()), key_id(NEW.public_key())


def rotated(tmp: Path) -> OtaUpdater:
    """A device that learned NEW from the fleet's trust bundle."""
    updater = device(tmp, model_bytes(1))
    bundle = encode_trust_bundle([sign_rotation(rotation_for(NEW.public_key(), sequence=1), KEY)])
    assert updater.apply_trust_bundle(bundle) == []
    return updater


# -- the trust chain ------------------------------------------------------------------------------


def test_a_bundle_teaches_the_new_key_and_is_idempotent(tmp_path: Path) -> None:
    updater = rotated(tmp_path)
    assert updater.trusted_kids() == [KID, NEW_KID]
    bundle = encode_trust_bundle([sign_rotation(rotation_for(NEW.public_key(), sequence=1), KEY)])
    assert updater.apply_trust_bundle(bundle) == []  # the retained bundle again: nothing new
    cose, _ = package(model_bytes(2), 5, key=NEW)
    updater.offer(cose)  # signed by the new key: accepted


def test_retired_key_is_refused_and_never_returns(tmp_path: Path) -> None:
    updater = rotated(tmp_path)
    records = [sign_rotation(rotation_for(NEW.public_key(), sequence=1), KEY),
               sign_policy(TrustPolicy(2, retire_kids=(KID,)), NEW)]
    assert updater.apply_trust_bundle(encode_trust_bundle(records)) == []
    assert updater.trusted_kids() == [NEW_KID]
    cose, _ = package(model_bytes(2), 5, key=KEY)
    with pytest.raises(ProtocolError) as exc:
        updater.offer(cose)
    assert exc.value.reason == Reason.MANIFEST_UNKNOWN_KEY
    # A later rotation (signed by a trusted key) cannot bring the retired key back.
    back = sign_rotation(rotation_for(KEY.public_key(), sequence=3), NEW)
    [refusal] = updater.apply_trust_bundle(encode_trust_bundle([*records, back]))
    assert refusal.reason == Reason.MANIFEST_BAD_ROTATION
    assert updater.trusted_kids() == [NEW_KID]


def test_an_old_key_cannot_retire_its_successor(tmp_path: Path) -> None:
    updater = rotated(tmp_path)
    hostile = sign_policy(TrustPolicy(2, retire_kids=(NEW_KID,)), KEY)
    [refusal] = updater.apply_trust_bundle(encode_trust_bundle([hostile]))
    assert refusal.reason == Reason.MANIFEST_BAD_ROTATION
    assert updater.trusted_kids() == [KID, NEW_KID]
    # Nor by the retire field of a rotation record.
    sneaky = sign_rotation(rotation_for(THIRD.public_key(), sequence=2, retire_kid=NEW_KID), KEY)
    [refusal] = updater.apply_trust_bundle(encode_trust_bundle([sneaky]))
    assert refusal.reason == Reason.MANIFEST_BAD_ROTATION


def test_a_record_from_an_unknown_key_changes_nothing(tmp_path: Path) -> None:
    updater = device(tmp_path, model_bytes(1))
    forged = sign_rotation(rotation_for(THIRD.public_key(), sequence=1), THIRD)
    [refusal] = updater.apply_trust_bundle(encode_trust_bundle([forged]))
    assert refusal.reason == Reason.MANIFEST_BAD_ROTATION
    assert updater.trusted_kids() == [KID]


def test_the_bound_on_rotated_keys_survives_a_restart(tmp_path: Path) -> None:
    """The keys enrollment gave are persisted as such: after a restart the device still knows
    two rotated keys fill its list (protocol/test_trust_limits.py has the rules)."""
    updater = device(tmp_path, model_bytes(1))
    assert updater.store.meta.enrolled_keys == [KID.hex()]
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    records = [sign_rotation(rotation_for(k.public_key(), sequence=n), KEY)
               for n, k in enumerate(keys, start=1)]
    assert updater.apply_trust_bundle(encode_trust_bundle(records[:2])) == []
    again = device(tmp_path, model_bytes(1))  # the process restarts
    [refusal] = again.apply_trust_bundle(encode_trust_bundle(records))
    assert refusal.reason == Reason.MANIFEST_BAD_ROTATION
    assert again.trusted_kids() == [KID, *(key_id(k.public_key()) for k in keys[:2])]


def test_metadata_written_before_enrolled_keys_were_kept_counts_its_keys_as_enrolled(
        tmp_path: Path) -> None:
    rotated(tmp_path)  # KEY enrolled, NEW rotated
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["enrolled_keys"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    upgraded = device(tmp_path, model_bytes(1))
    assert upgraded.store.meta.enrolled_keys is None
    record = sign_rotation(rotation_for(THIRD.public_key(), sequence=2), NEW)
    assert upgraded.apply_trust_bundle(encode_trust_bundle([record])) == []
    assert upgraded.store.meta.enrolled_keys == [KID.hex(), NEW_KID.hex()]
    assert upgraded.trust_state().rotated() == [key_id(THIRD.public_key())]


def test_revocation_refuses_an_unexpired_pulled_package_and_stops_its_download(
        tmp_path: Path) -> None:
    updater = device(tmp_path, model_bytes(1))
    cose, transfer = package(model_bytes(2), 7)
    updater.offer(cose)
    updater.on_chunk(7, 0, transfer[:1000])
    policy = sign_policy(TrustPolicy(1, revoke_packages=(7,)), KEY)
    assert updater.apply_trust_bundle(encode_trust_bundle([policy])) == []
    assert updater.stop_revoked() == [(7, DeploymentState.FAILED)]
    assert updater.download is None
    with pytest.raises(ProtocolError) as exc:
        updater.offer(cose)  # a device that never heard of the abort
    assert exc.value.reason == Reason.ABORTED


def test_minimum_sequence_refuses_every_package_at_or_below_it(tmp_path: Path) -> None:
    updater = device(tmp_path, model_bytes(1))
    policy = sign_policy(TrustPolicy(1, min_sequence=9), KEY)
    updater.apply_trust_bundle(encode_trust_bundle([policy]))
    for seq, ok in ((9, False), (10, True)):
        cose, _ = package(model_bytes(seq), seq)
        if ok:
            updater.offer(cose)
        else:
            with pytest.raises(ProtocolError) as exc:
                updater.offer(cose)
            assert exc.value.reason == Reason.MANIFEST_SEQUENCE_REPLAY


def test_withdrawal_stops_a_download_and_reverts_a_trial(tmp_path: Path) -> None:
    updater = device(tmp_path, model_bytes(1))
    cose, transfer = package(model_bytes(2), 3)
    updater.offer(cose)
    updater.on_chunk(3, 0, transfer[:500])
    assert updater.withdraw(3) == DeploymentState.FAILED
    assert updater.wanted() is None
    updater.offer(cose)
    feed_all(updater, transfer)
    updater.install()
    assert updater.store.meta.trial
    assert updater.withdraw(3) == DeploymentState.ROLLED_BACK
    assert updater.store.read_active() == model_bytes(1)
    assert updater.withdraw(99) is None


# -- hardening ------------------------------------------------------------------------------------


def bomb_manifest(transfer: bytes, model_size: int = 1000) -> Manifest:
    return Manifest(
        sequence=5, model_name="m", model_version="1", hardware_profile="esp32-s3",
        model_sha256=bytes(32), model_size=model_size, encoding=Encoding.DELTA,
        transfer_sha256=hashlib.sha256(transfer).digest(), transfer_size=len(transfer),
        arena_bytes=1, expires_at=int(time.time()) + 3600, package_id=5, base_sha256=bytes(32))


def test_a_delta_bomb_is_refused_before_it_expands() -> None:
    """A small compressed delta stream declaring megabytes of instructions for a 1 KB model:
    refused at its header, before one instruction byte is decoded."""
    stream = DELTA_HEADER.pack(b"TD", 1, 0, 1000, 1000) + bytes(4_000_000)
    transfer = compress(stream)
    assert len(transfer) < 2000
    decoder = TransferDecoder(bomb_manifest(transfer), bytes(1000))
    with pytest.raises(ProtocolError) as exc:
        decoder.feed(transfer)
    assert exc.value.reason == Reason.TRANSFER_OVERFLOW
    assert decoder._lz is not None and decoder._lz.produced <= max_instruction_bytes(1000)


def test_the_whole_transfer_is_hashed_before_any_byte_is_decoded(tmp_path: Path) -> None:
    points: list[str] = []
    updater = device(tmp_path, model_bytes(1), hook=points.append)
    cose, transfer = package(model_bytes(2, size=60_000), 4)
    updater.offer(cose)
    corrupt = bytearray(transfer)
    corrupt[-1] ^= 0xFF  # only the last byte differs: a streaming check would decode first
    points.clear()
    with pytest.raises(ProtocolError) as exc:
        feed_all(updater, bytes(corrupt), chunk=4000)
    assert exc.value.reason == Reason.TRANSFER_DIGEST_MISMATCH
    assert "slot-open" not in points  # the inactive slot was never touched


def test_the_download_and_its_journal_reach_the_flash_before_they_are_acted_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    updater = device(tmp_path, model_bytes(1))
    cose, transfer = package(model_bytes(2), 4)
    updater.offer(cose)
    real = updater_module.os.fsync
    monkeypatch.setattr(updater_module.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    updater.on_chunk(4, 0, transfer[:1000])
    part, journal = updater.download.files  # type: ignore[union-attr,misc]
    assert synced == [part.fileno(), journal.fileno()]  # data first, then the journal


def test_boot_refuses_an_active_slot_whose_digest_differs(tmp_path: Path) -> None:
    updater = device(tmp_path, model_bytes(1))
    cose, transfer = package(model_bytes(2), 4)
    updater.offer(cose)
    feed_all(updater, transfer)
    updater.install()
    updater.finish_trial(True)
    store = updater.store
    path = store.slot_path(store.meta.active)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))  # a flipped bit in the running model
    assert store.check_active() is False
    assert store.verify_active() and store.read_active() == model_bytes(1)


class ReportingClient:
    """What OtaAgent._offer touches of a DeviceClient when it refuses: reports collected."""

    uid = "dev-1"
    on_message: Any = None
    on_connect: Any = None

    def __init__(self) -> None:
        self.reports: list[tuple[int, int, int]] = []

    def publish(self, channel: object, payload: bytes) -> None:
        r = decode_report(payload)
        self.reports.append((r.pkg, int(r.state), int(r.detail)))


def test_a_refused_offer_names_its_package_only_once_the_signature_verified(
        tmp_path: Path) -> None:
    """An unknown key's (or a forger's) offer may carry any package id: the refusal is
    reported under 0; a verified offer refused later names its own package."""
    updater = device(tmp_path, model_bytes(1))
    client = ReportingClient()
    agent = OtaAgent(client, updater, lambda m, spec: None)  # type: ignore[arg-type]
    forged, _ = package(model_bytes(2), 77, key=Ed25519PrivateKey.generate())
    agent._offer(forged)
    expired, _ = package(model_bytes(3), 78, expires=int(time.time()) - 10)
    agent._offer(expired)
    assert client.reports == [
        (0, int(DeploymentState.FAILED), int(Reason.MANIFEST_UNKNOWN_KEY)),
        (78, int(DeploymentState.FAILED), int(Reason.MANIFEST_EXPIRED)),
    ]
