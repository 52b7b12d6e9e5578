"""The gateway's enrollment of its MCUs, with the server's HTTP calls recorded.

An MCU that announces its own Ed25519 key signs its enroll-message itself (ENROLL_CHALLENGE ->
ENROLL_PROOF over the link) and the gateway relays the MCU's key and signature; an MCU without
a key is enrolled with a key the gateway keeps for it. A proof that does not verify with the key
the MCU announced is never relayed. The bridge routes challenges and proofs.
"""

from __future__ import annotations

import hashlib
import queue
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device_sdk.gateway.bridge import Bridge, Outbox
from device_sdk.gateway.config import GatewayConfig
from device_sdk.gateway.enroll import CHALLENGE_PATH, ENROLL_PATH, ChildEnroller, EnrollmentRefused
from device_sdk.protocol import link
from device_sdk.protocol.cose import raw_public_key
from device_sdk.protocol.enrollment import ENROLL_CONTEXT, capabilities_digest, enrollment_message
from tests.device_sdk.gateway.fake_mcu import CAPS, online_status
from tests.device_sdk.gateway.test_bridge import RecordingUplink

NONCE = bytes(range(40))
HARDWARE = "qemu-mps2-an386"  # the MCU's own profile, not the gateway config's


class RecordingEnroller(ChildEnroller):
    """ChildEnroller whose HTTP calls are answered here and recorded."""

    def __init__(self, config: GatewayConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.posts: list[tuple[str, dict[str, Any] | None, str | None]] = []

    def _post(self, path: str, body: dict[str, Any] | None, *,
              gateway_token: str | None = None) -> dict[str, Any]:
        self.posts.append((path, body, gateway_token))
        if path == CHALLENGE_PATH:
            return {"nonce": NONCE.hex()}
        return {"device_id": body["uid"] if body else "", "created": True}


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(uid="gw-0001", mqtt_url="mqtt://127.0.0.1:1", mqtt_username="gw-0001",
                         mqtt_credential="x", ca_cert="", state_dir=tmp_path / "state",
                         server="http://127.0.0.1:1", claim_token="claim-1",
                         hardware="qemu-mps2-an385", gateway_token="fgt_x")


def firmware_answer(mcu: Ed25519PrivateKey, uid: str, hardware: str, payload: bytes) -> bytes:
    """What enroll.c does with a challenge: its own uid and hardware, signed."""
    c = link.decode_enroll_challenge(payload)
    return mcu.sign(cbor2.dumps([ENROLL_CONTEXT, c.nonce, c.token_sha256, uid, hardware,
                                 c.capabilities_sha256, c.via], canonical=True))


def relay_to(enroller: ChildEnroller, mcu: Ed25519PrivateKey, hardware: str, *,
             forge: bool = False, sent: list[bytes] | None = None) -> None:
    def send(uid: str, payload: bytes) -> bool:
        if sent is not None:
            sent.append(payload)
        signature = firmware_answer(mcu, uid, hardware, payload)
        enroller.proof(uid, signature[:32] + bytes(32) if forge else signature)
        return True
    enroller.send_challenge = send


def test_an_mcu_with_its_own_key_signs_and_the_gateway_relays_its_key(
        config: GatewayConfig) -> None:
    """The body carries the MCU's public key (PEM of its 32 raw bytes), its hardware profile and
    its signature, which the server's check accepts; no gateway-held key is made."""
    from fleet.devices.proof import verify_signature

    mcu = Ed25519PrivateKey.generate()
    key = raw_public_key(mcu.public_key())
    enroller = RecordingEnroller(config)
    sent: list[bytes] = []
    relay_to(enroller, mcu, HARDWARE, sent=sent)
    enroller.admit("mcu-7", CAPS, key=key, hardware=HARDWARE)

    challenge = link.decode_enroll_challenge(sent[0])
    assert challenge.nonce == NONCE and challenge.via == "gw-0001"
    assert challenge.token_sha256 == hashlib.sha256(b"claim-1").digest()
    (_, _, _), (path, body, token) = enroller.posts
    assert (path, token) == (ENROLL_PATH, "fgt_x")
    assert body is not None and body["hardware"] == HARDWARE and body["uid"] == "mcu-7"
    assert challenge.capabilities_sha256 == capabilities_digest(body["capabilities"])
    announced = serialization.load_pem_public_key(body["public_key"].encode())
    assert isinstance(announced, Ed25519PublicKey)
    assert raw_public_key(announced) == key
    message = enrollment_message(nonce=NONCE, token="claim-1", uid="mcu-7", hardware=HARDWARE,
                                 capabilities=body["capabilities"], via="gw-0001")
    verify_signature(body["public_key"], message, bytes.fromhex(body["signature"]))
    assert not (config.state_dir / "children" / "mcu-7" / "device.key").exists()
    assert enroller.is_admitted("mcu-7", key=key)
    assert not enroller.is_admitted("mcu-7")  # not as an MCU without a key
    assert not enroller.is_admitted("mcu-7", key=bytes(32))  # nor with another key


def test_an_mcu_without_a_key_keeps_the_gateway_held_key(config: GatewayConfig) -> None:
    """No challenge goes to the MCU; the gateway's key for it signs (made once, 0600)."""
    enroller = RecordingEnroller(config)
    sent: list[bytes] = []
    relay_to(enroller, Ed25519PrivateKey.generate(), HARDWARE, sent=sent)
    enroller.admit("mcu-8", CAPS)
    assert sent == []
    body = enroller.posts[-1][1]
    assert body is not None and body["hardware"] == "qemu-mps2-an385"
    held = config.state_dir / "children" / "mcu-8" / "device.key"
    assert held.exists() and held.stat().st_mode & 0o777 == 0o600
    assert enroller.is_admitted("mcu-8")
    assert not enroller.is_admitted("mcu-8", key=bytes(32))


def test_a_forged_proof_is_refused_and_never_relayed(config: GatewayConfig) -> None:
    """A signature that does not verify with the announced key: no POST /enroll/, a transient
    refusal (retried with a fresh nonce), nothing admitted."""
    mcu = Ed25519PrivateKey.generate()
    enroller = RecordingEnroller(config, proof_timeout=0.3)
    relay_to(enroller, mcu, HARDWARE, forge=True)
    with pytest.raises(EnrollmentRefused) as refused:
        enroller.admit("mcu-9", CAPS, key=raw_public_key(mcu.public_key()), hardware=HARDWARE)
    assert refused.value.reason == "no_proof" and refused.value.transient
    assert [p for p, _, _ in enroller.posts] == [CHALLENGE_PATH]
    assert enroller.counters["proofs_refused"] == 1
    assert not enroller.is_admitted("mcu-9", key=raw_public_key(mcu.public_key()))


def test_a_proof_for_another_uid_or_hardware_is_refused(config: GatewayConfig) -> None:
    """The MCU signs for itself: a proof made for another hardware profile than its HELLO named
    does not verify, so the gateway cannot enroll it as something else."""
    mcu = Ed25519PrivateKey.generate()
    enroller = RecordingEnroller(config, proof_timeout=0.3)
    relay_to(enroller, mcu, "qemu-mps2-an385")  # signs its real profile
    with pytest.raises(EnrollmentRefused):
        enroller.admit("mcu-10", CAPS, key=raw_public_key(mcu.public_key()), hardware=HARDWARE)
    assert enroller.counters["proofs_refused"] == 1


def test_a_silent_mcu_times_out_as_a_transient_refusal(config: GatewayConfig) -> None:
    enroller = RecordingEnroller(config, proof_timeout=0.2)
    enroller.send_challenge = lambda uid, payload: True
    with pytest.raises(EnrollmentRefused) as refused:
        enroller.admit("mcu-11", CAPS, key=bytes(range(32)), hardware=HARDWARE)
    assert refused.value.transient and enroller.counters["proofs_missing"] == 1


class KeyedAdmissions:
    """Records what the bridge asks of an admission that knows MCU keys."""

    def __init__(self) -> None:
        self.requested: list[tuple[str, bytes | None, str | None]] = []
        self.proofs: list[tuple[str, bytes]] = []
        self.asked: list[tuple[str, bytes | None]] = []

    def is_admitted(self, uid: str, *, key: bytes | None = None) -> bool:
        self.asked.append((uid, key))
        return False

    def request(self, uid: str, capabilities: Any, *, key: bytes | None = None,
                hardware: str | None = None) -> None:
        self.requested.append((uid, key, hardware))

    def proof(self, uid: str, signature: bytes) -> None:
        self.proofs.append((uid, signature))


def test_the_bridge_routes_key_challenge_and_proof() -> None:
    """HELLO's key reaches the admission; challenges go to the child's outbox; proofs back."""
    admissions = KeyedAdmissions()
    bridge = Bridge(RecordingUplink(), admission=admissions)
    outbox: Outbox = queue.SimpleQueue()
    key = bytes(range(32))
    child = bridge.attach("mcu-12", 544, "socket://x", outbox, key=key, hardware=HARDWARE)
    bare: Outbox = queue.SimpleQueue()
    plain = bridge.attach("mcu-13", 544, "socket://y", bare)
    assert admissions.asked == [("mcu-12", key), ("mcu-13", None)]
    bridge.on_frame(child, link.Frame(int(link.Kind.STATUS), 0, 0, online_status()))
    assert admissions.requested == [("mcu-12", key, HARDWARE)]
    challenge = link.encode_enroll_challenge(link.EnrollChallenge(NONCE, bytes(32), bytes(32),
                                                                  "gw-0001"))
    assert bridge.challenge("mcu-12", challenge)
    assert not bridge.challenge("mcu-13", challenge)  # no key: nothing to prove
    assert not bridge.challenge("mcu-absent", challenge)
    items = []
    while not outbox.empty():
        items.append(outbox.get_nowait())
    assert (link.Kind.ENROLL_CHALLENGE, challenge) in items
    assert all(kind != link.Kind.ENROLL_CHALLENGE for kind, _ in
               iter(lambda: bare.get_nowait() if not bare.empty() else (None, None),
                    (None, None)))
    signature = bytes(range(64))
    bridge.on_frame(child, link.Frame(int(link.Kind.ENROLL_PROOF), 1, 0,
                                      link.encode_enroll_proof(signature)))
    bridge.on_frame(child, link.Frame(int(link.Kind.ENROLL_PROOF), 2, 0, b"\x41\x00"))
    bridge.on_frame(plain, link.Frame(int(link.Kind.ENROLL_PROOF), 1, 0,
                                      link.encode_enroll_proof(signature)))
    assert admissions.proofs == [("mcu-12", signature)]
    assert bridge.counters["enroll_proofs_undecodable"] == 1
    assert bridge.counters["enroll_proofs_unasked"] == 1
