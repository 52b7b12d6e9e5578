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
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device_sdk.protocol import cose
from device_sdk.protocol.manifest import Manifest, sign_manifest
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device
from ota.models import Package, SigningKey
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
from tests.firmware import mcu_lab as lab
from tests.firmware.firmware_kit import free_port, require
from tests.firmware.mcu_lab import Processes

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]


def kids(device: Device) -> list[str] | None:
    """The key ids the device's last status named (None: it named none)."""
    value: list[str] | None = Device.objects.get(pk=device.pk).trusted_kids
    return value


def test_mcu_learns_a_rotated_key_counts_for_activation_and_refuses_the_retired_one(
    fleet: str, broker: MosquittoInstance, worker_factory: WorkerFactory,
    processes: Processes, user_factory: Any,
    enrollment_token_factory: Callable[..., str], tmp_path: Path,
) -> None:
    """Rotate → the MCU acknowledges → activate unforced → confirmed → retire → refused."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    started = time.monotonic()
    made, logs = processes
    mcu_uid = f"mcu-trust-{secrets.token_hex(3)}"
    old = ensure_signing_key()  # the image trusts this key and nothing else
    client = lab.operator_client(user_factory)
    profile = lab.board_profile()
    v1_bytes = lab.firmware_model("build/demo_model.tflite")
    v2_bytes = lab.firmware_model("build/demo_model_seed1.tflite")
    _, p1 = lab.factory_package(client, profile, v1_bytes)
    elf = lab.build_image(tmp_path / "fw", old.public_key, mcu_uid, p1.pk)
    print(f"\nimage built after {time.monotonic() - started:.1f} s")
    lab.start_worker_with_rollouts(worker_factory(broker, start=False))

    _, config = lab.register_gateway(client, tmp_path, fleet, profile,
                                     enrollment_token_factory, "gw-trust")
    uart = free_port()
    lab.start_qemu(elf, uart, made, logs, tmp_path)
    lab.start_gateway(uart, config, made, logs, tmp_path)

    # 1. Enrolled through the gateway; its status names the key it was built with.
    device = lab.wait_until(lambda: Device.objects.filter(uid=mcu_uid, state="online").first(),
                            60, "MCU enrolled and online", logs)
    lab.wait_until(lambda: kids(device) == [old.kid], 30, "the MCU reports its key", logs)
    print(f"enrolled, trusting {old.kid}, after {time.monotonic() - started:.1f} s")

    # 2. Rotation: the record reaches the MCU as a ROTATION frame; its status names both keys.
    new = do_rotate_signing_key(actor=None)
    assert new.state == "pending"
    lab.wait_until(lambda: set(kids(device) or ()) == {old.kid, new.kid}, 60,
                   "the MCU trusts the new key", logs)  # (the server keeps them sorted)
    share = trust_share(new).share
    new = do_activate_signing_key(new, actor=None)  # no force: the MCU's status counts
    print(f"rotated to {new.kid}, share {share:.2f}, activated unforced after "
          f"{time.monotonic() - started:.1f} s")

    # 3. A rollout signed by the new key is confirmed by the MCU.
    v2 = lab.upload(client, "demo-cnn", "2.0.0", v2_bytes)
    p2, deployment = lab.run_rollout(v2, device, logs)
    assert deployment.state == DeploymentState.CONFIRMED, (
        f"{DeploymentState(deployment.state).name} {Reason(deployment.reason).name}")
    assert cose.parse_sign1(bytes(p2.manifest)).kid.hex() == new.kid
    assert hashlib.sha256(v2_bytes).digest() == Manifest.decode(
        cose.parse_sign1(bytes(p2.manifest)).payload).model_sha256

    # 4. Retire the old key: a signed policy record; the MCU's status drops it.
    do_retire_signing_key(SigningKey.objects.get(pk=old.pk), actor=None)
    lab.wait_until(lambda: kids(device) == [new.kid], 60, "the MCU drops the retired key", logs)

    # 5. A fresh package whose manifest the old key signed: the MCU refuses it.
    v3 = lab.upload(client, "demo-cnn", "3.0.0", tweak_weight(v1_bytes))
    forged = rollouts.do_create_rollout(actor=None, name="old key", model_version=v3,
                                        waves=[100], devices=[device])
    package = Package.objects.get(rollouts=forged)
    manifest = Manifest.decode(cose.parse_sign1(bytes(package.manifest)).payload)
    Package.objects.filter(pk=package.pk).update(
        manifest=sign_manifest(manifest, load_private_key(SigningKey.objects.get(pk=old.pk))))
    rollouts.do_start_rollout(forged, actor=None)
    # The MCU reports the refusal under package 0 (the id was never authenticated); the
    # server takes it as the answer to the offer it sent.
    lab.wait_until(lambda: Deployment.objects.filter(
        rollout=forged, state=DeploymentState.FAILED, reason=Reason.MANIFEST_UNKNOWN_KEY
    ).exists(), 60, "the MCU's refusal (package 0, MANIFEST_UNKNOWN_KEY)", logs)
    assert not Deployment.objects.filter(
        rollout=forged, state__in=(DeploymentState.DOWNLOADING, DeploymentState.CONFIRMED)
    ).exists()
    assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
    print(f"old-key package {package.pk} refused by the MCU; total "
          f"{time.monotonic() - started:.1f} s")
