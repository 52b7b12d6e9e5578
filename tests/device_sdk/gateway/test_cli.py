"""The gateway program (``python -m device_sdk.gateway``) against the live server and broker.

An operator provisions the gateway over the API and writes its answer (with the gateway's own
token) into the config file, with a claim token; the program meets an MCU it never saw, enrolls
it (an MCU with its own key signs its enrollment itself over the link; for one without, the
gateway makes and keeps a key) with a signed request relayed with its gateway token (which
makes it its child), and bridges it. A forged proof is never relayed; an MCU announcing a uid
enrolled with another key is not adopted.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.gateway.cli import main
from device_sdk.protocol import link
from device_sdk.protocol.cose import raw_public_key
from device_sdk.protocol.events import Event, EventBatch, encode_batch
from device_sdk.protocol.status import OFFLINE_PAYLOAD, LinkState, decode_status
from fleet.audit.models import AuditLog
from fleet.core.roles import Role
from fleet.devices.models import Device, Gateway
from tests.device_sdk.gateway.fake_mcu import CAPS, FakeMcu

T0 = 1_767_225_600_000


def test_an_incomplete_config_is_refused_with_status_1(tmp_path: Path) -> None:
    """Enrollment needs all four keys: a config naming only some fails fast, saying which."""
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"uid": "gw-x", "server": "http://127.0.0.1:1",
                                  "mqtt": {"url": "mqtt://127.0.0.1:1", "credential": "x"}}))
    assert main(["--port", "loop://", "--config", str(config)]) == 1
    assert main(["--port", "loop://", "--config", str(tmp_path / "missing.json")]) == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_gateway_enrolls_a_new_mcu_and_bridges_it(
    fleet_server: str, enrollment_token_factory: Callable[..., str], user_factory: Any,
    gateway_process: Callable[..., subprocess.Popen[str]], monitor: Callable[..., Any],
    uid: Callable[[str], str], tmp_path: Path,
) -> None:
    """HELLO + STATUS of an unknown MCU -> enrolled, our child, online; SIGTERM -> offline."""
    operator = user_factory(Role.OPERATOR)
    api_token = Token.objects.create(user=operator).key
    gw, child = uid("gw"), uid("mcu")
    answer = APIClient(HTTP_AUTHORIZATION=f"Token {api_token}").post(
        "/api/v1/gateways/", {"uid": gw, "children": []}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet_server,
        "claim_token": enrollment_token_factory(max_uses=3), "hardware": "qemu-mps2-an385",
    }))
    config.chmod(0o600)
    watch = monitor(f"fleet/v1/{child}/status", f"fleet/v1/{child}/events")
    mcu = FakeMcu()
    process = gateway_process("--port", mcu.url, "--config", str(config))
    mcu.wait_connected()
    mcu.boot(child)

    watch.collect(lambda got: bool(watch.on(f"fleet/v1/{child}/status")), timeout=20)
    status = decode_status(watch.on(f"fleet/v1/{child}/status")[0])
    assert status.state is LinkState.ONLINE and status.capabilities == CAPS
    device = Device.objects.get(uid=child)
    assert device.hardware_profile.name == "qemu-mps2-an385"
    assert device.capabilities["ops"] == CAPS.ops
    assert list(Gateway.objects.get(uid=gw).children.values_list("uid", flat=True)) == [child]
    # It relayed the child's signed enrollment with its own gateway token, not an operator's.
    assert device.enrolled_via is not None and device.enrolled_via.uid == gw
    enrolled = AuditLog.objects.get(action="device.enroll", object_repr=child)
    assert enrolled.after["via"] == gw
    assert api_token not in config.read_text()

    batch = encode_batch(EventBatch(1, T0, 0, [Event(T0, 2, 180, 4)]))
    mcu.send(link.Kind.EVENTS, batch)
    watch.collect(lambda got: watch.on(f"fleet/v1/{child}/events") == [batch])

    # The MCU signed with its own key: the device is enrolled with it, the gateway holds none.
    assert mcu.public_key is not None
    assert raw_public_key(serialization.load_pem_public_key(
        device.public_key_pem.encode())) == mcu.public_key  # type: ignore[arg-type]
    assert len(mcu.challenges) == 1 and mcu.challenges[0].via == gw
    state = config.parent / "gateway.json.state" / "children" / child
    assert not (state / "device.key").exists()
    kept = json.loads((state / "child.json").read_text())
    assert kept["gateway_child"] is True and "credential" not in json.dumps(kept)
    assert kept["mcu_key"] == mcu.public_key.hex()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    watch.collect(lambda got: watch.on(f"fleet/v1/{child}/status")[-1:] == [OFFLINE_PAYLOAD])
    mcu.close()



@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_gateway_does_not_adopt_an_mcu_announcing_a_foreign_uid(
    fleet_server: str, enrollment_token_factory: Callable[..., str], user_factory: Any,
    gateway_process: Callable[..., subprocess.Popen[str]], uid: Callable[[str], str],
    tmp_path: Path, hardware_profile: Any,
) -> None:
    """The takeover: a serial MCU said HELLO with an enrolled device's uid, the enrollment
    answered uid_key_conflict, and the gateway made itself that device's gateway. Now the
    enrollment is refused and the gateway never speaks for a device whose key it lacks."""
    import time

    from tests.conftest import CAPABILITIES, make_public_key_pem, post_enroll

    operator = user_factory(Role.OPERATOR)
    gw, victim = uid("gw"), uid("victim")
    victim_key = make_public_key_pem()
    assert post_enroll({"token": enrollment_token_factory(), "public_key": victim_key,
                        "hardware": "qemu-mps2-an385", "capabilities": dict(CAPABILITIES),
                        "uid": victim}).status_code == 201
    answer = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}") \
        .post("/api/v1/gateways/", {"uid": gw, "children": []}, format="json")
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet_server,
        "claim_token": enrollment_token_factory(max_uses=3), "hardware": "qemu-mps2-an385",
    }))
    config.chmod(0o600)
    mcu = FakeMcu()
    gateway_process("--port", mcu.url, "--config", str(config))
    mcu.wait_connected()
    mcu.boot(victim)
    log = tmp_path / "gateway-0.log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "cannot admit child" not in log.read_text():
        time.sleep(0.2)
    assert "uid_not_allowed" in log.read_text()
    assert not Gateway.objects.get(uid=gw).children.exists()
    assert Device.objects.get(uid=victim).public_key_pem == victim_key
    assert Device.objects.get(uid=victim).enrolled_via is None
    mcu.close()


def _provision(gw: str, fleet_server: str, token: str, user: Any, tmp_path: Path) -> Path:
    answer = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}") \
        .post("/api/v1/gateways/", {"uid": gw, "children": []}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({**answer.json(), "server": fleet_server, "claim_token": token,
                                  "hardware": "qemu-mps2-an385"}))
    config.chmod(0o600)
    return config


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_gateway_enrolls_an_mcu_without_a_key_with_a_key_it_keeps(
    fleet_server: str, enrollment_token_factory: Callable[..., str], user_factory: Any,
    gateway_process: Callable[..., subprocess.Popen[str]], uid: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """An MCU whose HELLO has no key gets no challenge; the gateway's key for it (0600) signs."""
    import time

    gw, child = uid("gw"), uid("mcu")
    config = _provision(gw, fleet_server, enrollment_token_factory(max_uses=3),
                        user_factory(Role.OPERATOR), tmp_path)
    mcu = FakeMcu(seed=None)
    gateway_process("--port", mcu.url, "--config", str(config))
    mcu.wait_connected()
    mcu.boot(child)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not Gateway.objects.get(uid=gw).children.exists():
        time.sleep(0.2)
    assert list(Gateway.objects.get(uid=gw).children.values_list("uid", flat=True)) == [child]
    state = config.parent / "gateway.json.state" / "children" / child
    assert stat.S_IMODE(os.stat(state / "device.key").st_mode) == 0o600
    held = serialization.load_pem_private_key((state / "device.key").read_bytes(), None)
    assert Device.objects.get(uid=child).public_key_pem == held.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert mcu.challenges == []
    mcu.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_gateway_refuses_a_forged_proof_and_enrolls_nothing(
    fleet_server: str, enrollment_token_factory: Callable[..., str], user_factory: Any,
    gateway_process: Callable[..., subprocess.Popen[str]], uid: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """An MCU announcing a key but answering with a signature that does not verify: the
    gateway refuses the proof itself (never relays it), retries with fresh nonces, and nothing
    is enrolled, neither with the MCU's key nor with one of the gateway's."""
    import time

    gw, child = uid("gw"), uid("mcu")
    config = _provision(gw, fleet_server, enrollment_token_factory(max_uses=3),
                        user_factory(Role.OPERATOR), tmp_path)
    mcu = FakeMcu(forge=True)
    gateway_process("--port", mcu.url, "--config", str(config))
    mcu.wait_connected()
    mcu.boot(child)
    log = tmp_path / "gateway-0.log"
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and log.read_text().count("refused") < 2:
        time.sleep(0.2)
    assert "does not verify with the key it announced" in log.read_text()
    assert len(mcu.challenges) >= 2 and len({c.nonce for c in mcu.challenges}) >= 2
    assert not Device.objects.filter(uid=child).exists()
    assert not (config.parent / "gateway.json.state" / "children" / child / "device.key").exists()
    mcu.close()
