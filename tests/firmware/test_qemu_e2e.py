"""End to end on an emulated MCU: server, broker, worker, serial gateway and the C firmware.

Everything is real: Django on ``live_server``, the session Mosquitto (dynamic security, TLS),
the fleet worker as a subprocess (ingest, OTA chunks, rollout controller, package carousel),
the gateway program (``python -m device_sdk.gateway``), and the Cortex-M3 image on QEMU's
mps2-an385 running TensorFlow Lite Micro (reference kernels), built with the server's OTA
signing key as its only trusted key and the ``qemu-mps2-an385`` hardware profile, set to what
the image is: a 32 KB tensor arena, 128 KB slots, the ops of ``firmware/include/tml/ops.h``.
Between the gateway and QEMU's UART sits a middleman that can flip a byte in chunk frames.

1. Version 1 is the image's factory model (the int8 demo CNN of ``firmware/tools/demo_model.py``),
   uploaded to the registry and validated; its package is built and the image is made with
   ``FACTORY_PACKAGE`` = that package's id, as a factory programmer would write slot 0: the
   device boots running the package the server knows.
2. The MCU says HELLO; the gateway enrolls it (signed proof of possession, the capabilities of
   its STATUS) and adds it to its children; the worker marks it online, running package 1.
3. Its events are v1's real outputs: each (label, score) sequence is a contiguous run of what
   the host TFLM (the tflite-micro wheel) computes for v1 on the port's synthetic sensor.
4. Version 2 (the same network with other weights: same input and output shapes) is uploaded,
   validated, packaged with key 15 and rolled out: the MCU verifies, installs, runs the golden
   inputs through ``invoke_raw`` (bit-identical to the host's outputs digest) and confirms;
   events then name v2's package and are v2's outputs.
5. A model that needs ~200 KB of arena is refused at admission for the profile; forced through
   (an admin override of its admission row, the manifest not stating its arena), the MCU's trial
   cannot load it (MODEL_LOAD_FAILED) and reverts to v2.
6. A version whose key 15 is not its own outputs (v2's, on v2 with one weight changed) is
   reverted with TRIAL_OUTPUT_MISMATCH.
7. A package through a tampering middleman is refused (TRANSFER_DIGEST_MISMATCH); v2 keeps
   running and its events keep flowing.

CI=true turns a missing toolchain, QEMU or Mosquitto into a failure instead of a skip.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device_sdk.protocol import cose
from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, Gateway
from fleet.telemetry.models import Event, IngestedBatch
from ota.choices import VersionStatus
from ota.errors import OtaError
from ota.models import ModelVersion, ProfileCompatibility
from ota.packaging.actions import do_build_package
from ota.signing.actions import ensure_signing_key
from testkit.model_factory import big_arena_model, tweak_weight
from testkit.worker import WorkerFactory
from tests.firmware import mcu_lab as lab
from tests.firmware.firmware_kit import free_port, require
from tests.firmware.host_tflm import HostOutputs
from tests.firmware.mcu_lab import ARENA_BYTES, PROFILE, Processes

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]


def event_pairs(device: Device, mv: ModelVersion) -> list[tuple[int, int]]:
    """Return the (label, score) of the device's events for ``mv``, in the device's order."""
    return [(e.label, e.score) for e in
            Event.objects.filter(device_id=device.pk, model_version_id=mv.pk).order_by("ts", "id")]


# -- the test ------------------------------------------------------------------------------------


def test_mcu_boots_the_servers_v1_in_tflm_confirms_v2_and_reverts_what_its_trial_refuses(
    fleet: str, broker: MosquittoInstance, worker_factory: WorkerFactory,
    processes: Processes, user_factory: Any,
    enrollment_token_factory: Callable[..., str], tmp_path: Path,
) -> None:
    """Factory v1 known to the server, real outputs, v2 confirmed, three updates refused."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    started = time.monotonic()
    made, logs = processes
    mcu_uid = f"mcu-e2e-{secrets.token_hex(3)}"
    key = ensure_signing_key()  # the fleet's first key: the image trusts it and nothing else
    client = lab.operator_client(user_factory)
    profile = lab.board_profile()

    # 1. v1 = the image's factory model, known to the server with its package and manifest.
    v1_bytes = lab.firmware_model("build/demo_model.tflite")
    v2_bytes = lab.firmware_model("build/demo_model_seed1.tflite")
    v1, p1 = lab.factory_package(client, profile, v1_bytes)
    m1 = Manifest.decode(cose.parse_sign1(bytes(p1.manifest)).payload)
    assert m1.model_sha256 == hashlib.sha256(v1_bytes).digest() and m1.trial is not None
    assert m1.trial.outputs_sha256 is not None  # reference kernels: the digest is checked
    elf = lab.build_image(tmp_path / "fw", key.public_key, mcu_uid, p1.pk)
    print(f"\nv1 {len(v1_bytes)} B as package {p1.pk}; image built after "
          f"{time.monotonic() - started:.1f} s")
    lab.start_worker_with_rollouts(worker_factory(broker, start=False))

    gateway_uid, config = lab.register_gateway(client, tmp_path, fleet, profile,
                                               enrollment_token_factory, "gw-e2e")
    uart = free_port()
    lab.start_qemu(elf, uart, made, logs, tmp_path)
    middleman = lab.Middleman(uart)
    middleman.start()
    lab.start_gateway(middleman.port, config, made, logs, tmp_path)
    try:
        # 2. Enrollment through the gateway; the worker sees the MCU's status: it runs v1.
        device = lab.wait_until(lambda: Device.objects.filter(uid=mcu_uid, state="online").first(),
                                30, "MCU enrolled and online", logs)
        assert device.hardware_profile.name == PROFILE
        assert device.capabilities["pointer_bits"] == 32
        assert device.capabilities["arena_bytes"] == ARENA_BYTES
        assert device.capabilities["firmware_version"].startswith("tml-fw")
        assert device.capabilities["tflm_version"].startswith("tflite-micro@")  # not the fake
        assert list(Gateway.objects.get(uid=gateway_uid).children.all()) == [device]
        lab.wait_until(lambda: Device.objects.get(pk=device.pk).running_package_id == p1.pk, 15,
                       "device runs the factory package", logs)
        print(f"enrolled through the gateway, running package {p1.pk} (v1), after "
              f"{time.monotonic() - started:.1f} s")

        # 3. v1's events are v1's outputs on the sensor, as the host TFLM computes them.
        host_v1, host_v2 = HostOutputs(v1_bytes), HostOutputs(v2_bytes)
        lab.wait_until(lambda: len(event_pairs(device, v1)) >= 8, 40, "8 events of v1", logs)
        batch = IngestedBatch.objects.filter(device_id=device.pk, package_id=p1.pk).first()
        assert batch is not None and batch.model_version_id == v1.pk
        events = Event.objects.filter(device_id=device.pk, model_version_id=v1.pk)
        assert all(e.latency_100us > 0 for e in events)
        pairs = event_pairs(device, v1)
        at = host_v1.find_run(pairs)
        print(f"{len(pairs)} events of v1 = host TFLM outputs of inferences {at}.."
              f"{at + len(pairs) - 1}: {sorted(set(pairs))}")

        # 4. v2: validated, packaged with key 15, rolled out, trial passed, confirmed.
        v2 = lab.upload(client, "demo-cnn", "2.0.0", v2_bytes)
        assert v2.status == VersionStatus.READY, v2.validation
        assert v2.validation["trial"][PROFILE]["outputs_sha256"]  # reference: digest checked
        p2, deployment = lab.run_rollout(v2, device, logs)
        assert deployment.state == DeploymentState.CONFIRMED, (
            f"{DeploymentState(deployment.state).name} {Reason(deployment.reason).name}")
        assert Manifest.decode(cose.parse_sign1(bytes(p2.manifest)).payload).trial is not None
        lab.wait_until(lambda: Device.objects.get(pk=device.pk).running_package_id == p2.pk, 15,
                       "device.running_package_id", logs)
        lab.wait_until(lambda: len(event_pairs(device, v2)) >= 8, 40, "8 events of v2", logs)
        assert IngestedBatch.objects.filter(device_id=device.pk, package_id=p2.pk,
                                            model_version_id=v2.pk).exists()
        pairs = event_pairs(device, v2)
        # v2 runs on the sensor's later inputs: after v1's events and the trial's inferences.
        at2 = host_v2.find_run(pairs, first=at + len(event_pairs(device, v1)))
        print(f"v2 confirmed as package {p2.pk} ({Encoding(p2.encoding).name.lower()}, "
              f"{p2.transfer_size} B); {len(pairs)} events = host outputs of v2 from inference "
              f"{at2}: {sorted(set(pairs))}, after {time.monotonic() - started:.1f} s")

        # 5. Too big for the arena: refused at admission; forced through, the trial refuses it.
        big = lab.upload(client, "demo-cnn", "3.0.0-big", big_arena_model())
        row = ProfileCompatibility.objects.get(model_version=big, hardware_profile=profile)
        assert not row.compatible and "arena" in json.dumps(row.reasons), row.reasons
        with pytest.raises(OtaError, match="does not fit"):
            do_build_package(big, profile, actor=None)
        print(f"admission: {row.reasons[0]['message']}")
        status, saved = big.status, (row.reasons, row.arena_bytes_required)
        big.status = VersionStatus.READY  # an admin override: its manifest claims no arena
        big.save(update_fields=["status"])
        row.compatible, row.reasons, row.arena_bytes_required = True, [], 0
        row.save()
        try:
            forced, reverted = lab.run_rollout(big, device, logs)
        finally:
            big.status = status
            big.save(update_fields=["status"])
            row.compatible, (row.reasons, row.arena_bytes_required) = False, saved
            row.save()
        assert reverted.state == DeploymentState.ROLLED_BACK, DeploymentState(reverted.state).name
        assert Reason(reverted.reason) == Reason.MODEL_LOAD_FAILED, Reason(reverted.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
        print(f"forced package {forced.pk}: ROLLED_BACK {Reason(reverted.reason).name}")

        # 6. Outputs that differ from key 15: v2 with one weight changed, carrying v2's key 15.
        v3 = lab.upload(client, "demo-cnn", "3.0.0", tweak_weight(v2_bytes))
        assert v3.status == VersionStatus.READY, v3.validation
        own = v3.validation["trial"][PROFILE]
        assert own["outputs_sha256"] != v2.validation["trial"][PROFILE]["outputs_sha256"]
        v3.validation["trial"][PROFILE] = v2.validation["trial"][PROFILE]
        v3.save(update_fields=["validation"])
        p3, mismatch = lab.run_rollout(v3, device, logs)
        assert mismatch.state == DeploymentState.ROLLED_BACK, DeploymentState(mismatch.state).name
        assert Reason(mismatch.reason) == Reason.TRIAL_OUTPUT_MISMATCH, Reason(mismatch.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
        print(f"package {p3.pk} with another model's key 15: ROLLED_BACK "
              f"{Reason(mismatch.reason).name}")

        # 7. A forged chunk: the MCU's digest check refuses the package, with its reason. A raw
        # package (the rollout reuses it) makes the flipped byte reach the digest: in a
        # compressed stream the decoder may trip first (DECODE_ERROR), which is refused too.
        v4 = lab.upload(client, "demo-cnn", "4.0.0", tweak_weight(v1_bytes))
        raw = do_build_package(v4, profile, actor=None, encoding=Encoding.RAW)
        middleman.tamper = True
        forged, failed = lab.run_rollout(v4, device, logs)
        middleman.tamper = False
        assert forged == raw and middleman.tampered >= 1
        assert failed.state == DeploymentState.FAILED, DeploymentState(failed.state).name
        assert Reason(failed.reason) == Reason.TRANSFER_DIGEST_MISMATCH, Reason(failed.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
        # v2's events go on, still v2's outputs (later inputs: the trials ran the sensor too).
        count = len(event_pairs(device, v2))
        lab.wait_until(lambda: len(event_pairs(device, v2)) >= count + 16, 30, "v2 events go on",
                       logs)
        later = event_pairs(device, v2)[count:count + 16]
        at3 = host_v2.find_run(later, first=at2 + count)
        print(f"forged package refused: {Reason(failed.reason).name} "
              f"({middleman.chunks} chunk frames relayed, {middleman.tampered} forged); "
              f"v2 runs on (events = host outputs from inference {at3}); "
              f"total {time.monotonic() - started:.1f} s")
    finally:
        middleman.stop()
