# ruff: noqa: F811  (pytest fixtures imported from the module that defines them)
"""The trust chain end to end on an emulated MCU (issue 15): the real server, broker, worker,
serial gateway and the C firmware on QEMU's mps2-an385 with TFLM, as in ``test_qemu_e2e.py``.

rotate the signing key through the API's action → the gateway forwards the rotation record as a
ROTATION frame → the MCU applies it and names the new key in its status → the activation share
counts the MCU, so the key activates WITHOUT force → a rollout signed with the new key is
confirmed → retire the old key (a signed policy record) → the MCU drops it from its status → a
package whose manifest the old key signed is refused by the MCU (MANIFEST_UNKNOWN_KEY, reported
under package 0: the firmware names no package it could not authenticate; the server takes it
as the refusal of the offer it sent, and the deployment fails with that reason).

CI=true turns a missing toolchain, QEMU or Mosquitto into a failure instead of a skip.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.protocol import cose
from device_sdk.protocol.manifest import Encoding, Manifest, sign_manifest
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.broker.mosquitto import MosquittoInstance
from fleet.core.roles import Role
from fleet.devices.models import Device
from ota.models import Package, SigningKey
from ota.packaging.actions import do_build_package
from ota.rollouts import actions as rollouts
from ota.rollouts.models import Deployment
from ota.signing.actions import (
    do_activate_signing_key,
    do_retire_signing_key,
    do_rotate_signing_key,
    ensure_signing_key,
    trust_share,
)
from ota.signing.keys import load_private_key
from testkit.model_factory import tweak_weight
from testkit.worker import WorkerFactory
from tests.firmware.test_firmware_build import free_port, require
from tests.firmware.test_qemu_e2e import (  # noqa: F401  (fixtures)
    PROFILE,
    Logs,
    board_profile,
    build_image,
    firmware_model,
    fleet,
    processes,
    run_rollout,
    start_worker_with_rollouts,
    upload,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def kids(device: Device) -> list[str] | None:
    """The key ids the device's last status named (None: it named none)."""
    value: list[str] | None = Device.objects.get(pk=device.pk).trusted_kids
    return value


def test_mcu_learns_a_rotated_key_counts_for_activation_and_refuses_the_retired_one(
    fleet: str, broker: MosquittoInstance, worker_factory: WorkerFactory,
    processes: tuple[list[subprocess.Popen[bytes]], Logs], user_factory: Any,
    enrollment_token_factory: Callable[..., str], tmp_path: Path,
) -> None:
    """Rotate → the MCU acknowledges → activate unforced → confirmed → retire → refused."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    started = time.monotonic()
    made, logs = processes
    mcu_uid = f"mcu-trust-{secrets.token_hex(3)}"
    old = ensure_signing_key()  # the image trusts this key and nothing else
    token = Token.objects.create(user=user_factory(Role.OPERATOR)).key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    profile = board_profile()
    v1_bytes = firmware_model("build/demo_model.tflite")
    v2_bytes = firmware_model("build/demo_model_seed1.tflite")
    assert client.post("/api/v1/models/", {"name": "demo-cnn"}, format="json").status_code == 201
    v1 = upload(client, "demo-cnn", "1.0.0", v1_bytes)
    p1 = do_build_package(v1, profile, actor=None, encoding=Encoding.RAW)
    elf = build_image(tmp_path / "fw", old.public_key, mcu_uid, p1.pk)
    print(f"\nimage built after {time.monotonic() - started:.1f} s")
    start_worker_with_rollouts(worker_factory(broker, start=False))

    gateway_uid = f"gw-trust-{secrets.token_hex(3)}"
    answer = client.post("/api/v1/gateways/", {"uid": gateway_uid}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet, "hardware": PROFILE,
        "claim_token": enrollment_token_factory(max_uses=1, hardware_profile=profile),
    }))
    config.chmod(0o600)
    uart = free_port()
    logs.files["qemu"] = tmp_path / "qemu.log"
    made.append(subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an385", "-nographic", "-monitor", "none",
         "-kernel", str(elf), "-serial", f"tcp:127.0.0.1:{uart},server=on,wait=on,nodelay=on",
         "-semihosting-config", "enable=on,target=native"],
        stdout=logs.files["qemu"].open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    logs.files["gateway"] = tmp_path / "gateway.log"
    made.append(subprocess.Popen(
        [sys.executable, "-m", "device_sdk.gateway", "--port", f"socket://127.0.0.1:{uart}",
         "--config", str(config)],
        cwd=ROOT, stdout=logs.files["gateway"].open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL))

    # 1. Enrolled through the gateway; its status names the key it was built with.
    device = wait_until(lambda: Device.objects.filter(uid=mcu_uid, state="online").first(),
                        60, "MCU enrolled and online", logs)
    wait_until(lambda: kids(device) == [old.kid], 30, "the MCU reports its key", logs)
    print(f"enrolled, trusting {old.kid}, after {time.monotonic() - started:.1f} s")

    # 2. Rotation: the record reaches the MCU as a ROTATION frame; its status names both keys.
    new = do_rotate_signing_key(actor=None)
    assert new.state == "pending"
    wait_until(lambda: set(kids(device) or ()) == {old.kid, new.kid}, 60,
               "the MCU trusts the new key", logs)  # (the server keeps them sorted)
    share = trust_share(new).share
    new = do_activate_signing_key(new, actor=None)  # no force: the MCU's status counts
    print(f"rotated to {new.kid}, share {share:.2f}, activated unforced after "
          f"{time.monotonic() - started:.1f} s")

    # 3. A rollout signed by the new key is confirmed by the MCU.
    v2 = upload(client, "demo-cnn", "2.0.0", v2_bytes)
    p2, deployment = run_rollout(v2, device, logs)
    assert deployment.state == DeploymentState.CONFIRMED, (
        f"{DeploymentState(deployment.state).name} {Reason(deployment.reason).name}")
    assert cose.parse_sign1(bytes(p2.manifest)).kid.hex() == new.kid
    assert hashlib.sha256(v2_bytes).digest() == Manifest.decode(
        cose.parse_sign1(bytes(p2.manifest)).payload).model_sha256

    # 4. Retire the old key: a signed policy record; the MCU's status drops it.
    do_retire_signing_key(SigningKey.objects.get(pk=old.pk), actor=None)
    wait_until(lambda: kids(device) == [new.kid], 60, "the MCU drops the retired key", logs)

    # 5. A fresh package whose manifest the old key signed: the MCU refuses it.
    v3 = upload(client, "demo-cnn", "3.0.0", tweak_weight(v1_bytes))
    forged = rollouts.do_create_rollout(actor=None, name="old key", model_version=v3,
                                        waves=[100], devices=[device])
    package = Package.objects.get(rollouts=forged)
    manifest = Manifest.decode(cose.parse_sign1(bytes(package.manifest)).payload)
    Package.objects.filter(pk=package.pk).update(
        manifest=sign_manifest(manifest, load_private_key(SigningKey.objects.get(pk=old.pk))))
    rollouts.do_start_rollout(forged, actor=None)
    # The MCU reports the refusal under package 0 (the id was never authenticated); the
    # server takes it as the answer to the offer it sent.
    wait_until(lambda: Deployment.objects.filter(
        rollout=forged, state=DeploymentState.FAILED, reason=Reason.MANIFEST_UNKNOWN_KEY
    ).exists(), 60, "the MCU's refusal (package 0, MANIFEST_UNKNOWN_KEY)", logs)
    assert not Deployment.objects.filter(
        rollout=forged, state__in=(DeploymentState.DOWNLOADING, DeploymentState.CONFIRMED)
    ).exists()
    assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
    print(f"old-key package {package.pk} refused by the MCU; total "
          f"{time.monotonic() - started:.1f} s")
