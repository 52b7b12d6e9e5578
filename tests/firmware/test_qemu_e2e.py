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
import importlib.util
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.protocol import cose, link
from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.ota_messages import Chunk, DeploymentState, decode_chunk, encode_chunk
from device_sdk.protocol.reasons import Reason
from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from fleet.core.roles import Role
from fleet.devices.models import Device, Gateway, HardwareProfile
from fleet.telemetry.models import Event, IngestedBatch
from ota.choices import VersionStatus
from ota.errors import OtaError
from ota.models import ModelVersion, Package, ProfileCompatibility
from ota.packaging.actions import do_build_package
from ota.rollouts import actions as rollouts
from ota.rollouts.models import Deployment
from ota.signing.actions import ensure_signing_key
from testkit.model_factory import big_arena_model, tweak_weight
from testkit.worker import READY_LINE, WorkerFactory, WorkerProcess
from tests.firmware.test_firmware_build import FIRMWARE, free_port, require

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "qemu-mps2-an385"
ARENA_BYTES = 32 * 1024  # the image's TML_ARENA_BYTES (Makefile ARM_ARENA)


# -- the firmware image, built with the fleet's key --------------------------------------------


def build_image(build_dir: Path, trusted_key_hex: str, uid: str, factory_package: int) -> Path:
    """Build the QEMU image into ``build_dir`` (the shared build/ is left alone).

    The stock profile is the Makefile's default; it is passed anyway, so that the manifests the
    server signs for ``PROFILE`` always name the image's profile. The factory model is the
    Makefile's default (build/demo_model.tflite), recorded as package ``factory_package``.
    """
    keys = build_dir / "trusted.hex"
    build_dir.mkdir(parents=True, exist_ok=True)
    keys.write_text(trusted_key_hex + "\n")
    result = subprocess.run(
        ["make", "-C", str(FIRMWARE), "qemu", f"BUILD={build_dir / 'build'}",
         f"TRUSTED_KEYS={keys}", f"HARDWARE_PROFILE={PROFILE}", f"DEVICE_UID={uid}",
         f"FACTORY_PACKAGE={factory_package}", "-j2"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return build_dir / "build" / "qemu" / "fw.elf"


# -- a middleman on the UART: it may flip one byte of chunk frames ------------------------------


class Middleman(threading.Thread):
    """Forward the gateway <-> QEMU byte streams, re-framing what goes to the MCU.

    While ``tamper`` is set, the data of every CHUNK at ``tamper_offset`` gets one byte
    flipped (with a correct CRC: the link cannot tell, only the MCU's digests can).
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(daemon=True, name="middleman")
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.tamper = False
        self.tamper_offset = 512
        self.tampered = 0
        self.chunks = 0
        self._stop = threading.Event()

    def run(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                gateway, _ = self.server.accept()
            except TimeoutError:
                continue
            deadline = time.monotonic() + 15
            while True:  # QEMU may still be starting its listener
                try:
                    mcu = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        gateway.close()
                        return
                    time.sleep(0.05)
            for sock in (gateway, mcu):
                sock.settimeout(None)  # blocking: a quiet link is not a dead one
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._copy, args=(mcu, gateway), daemon=True).start()
            self._to_mcu(gateway, mcu)

    def stop(self) -> None:
        self._stop.set()
        self.server.close()

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(4096):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def _to_mcu(self, gateway: socket.socket, mcu: socket.socket) -> None:
        decoder = link.FrameDecoder()
        try:
            while data := gateway.recv(4096):
                out = b"".join(link.encode_frame(self._maybe_tamper(f))
                               for f in decoder.feed(data))
                mcu.sendall(out)
        except OSError:
            pass
        finally:
            mcu.close()

    def _maybe_tamper(self, frame: link.Frame) -> link.Frame:
        if frame.kind != link.Kind.CHUNK:
            return frame
        self.chunks += 1
        chunk = decode_chunk(frame.payload)
        if not self.tamper or chunk.offset != self.tamper_offset or not chunk.data:
            return frame
        data = bytearray(chunk.data)
        data[len(data) // 2] ^= 0x40
        self.tampered += 1
        forged = encode_chunk(Chunk(chunk.pkg, chunk.offset, bytes(data)))
        return link.Frame(frame.kind, frame.seq, frame.flags, forged)


# -- processes -----------------------------------------------------------------------------------


class Logs:
    """Log files of the subprocesses, shown when a wait times out."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}

    def tail(self, chars: int = 3000) -> str:
        parts = []
        for name, path in self.files.items():
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"---- {name} ({path})\n{text[-chars:]}")
        return "\n".join(parts)


def wait_until(check: Callable[[], Any], timeout: float, what: str, logs: Logs) -> Any:
    """Poll ``check`` until it returns something true; fail with the logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs.tail()}")
        time.sleep(0.1)
    return result


def start_worker_with_rollouts(worker: WorkerProcess) -> None:
    """Start the real worker with its rollout controller and package carousel on.

    (The shared fixture starts workers with ``--no-rollouts``; this test needs the controller.)
    """
    with open(worker.log_path, "ab") as log:
        worker.process = subprocess.Popen(
            [sys.executable, "manage.py", "fleet_worker", "--name", worker.name, "--no-jobs"],
            cwd=ROOT, env=worker.env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while READY_LINE not in worker.log():
        assert worker.running, f"worker exited:\n{worker.log()[-3000:]}"
        assert time.monotonic() < deadline, f"worker not ready:\n{worker.log()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], Logs]]:
    """Collect subprocesses (QEMU, the gateway) and stop them at teardown."""
    made: list[subprocess.Popen[bytes]] = []
    logs = Logs()
    yield made, logs
    for process in reversed(made):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def fleet(broker: MosquittoInstance, live_server: Any, hardware_profile: Any) -> Iterator[str]:
    """Point the live server at the session broker; return its URL."""
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec", MQTT_URL=broker.url, MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username, MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        yield str(live_server.url)
    reset_broker_access()


def firmware_model(target: str) -> bytes:
    """Make (or reuse) a model the firmware's Makefile builds into firmware/build/; its bytes."""
    result = subprocess.run(["make", "-C", str(FIRMWARE), target], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return (FIRMWARE / target).read_bytes()


def board_profile() -> HardwareProfile:
    """Set the QEMU profile to what the image is: its arena, slot size and registered ops."""
    ops_h = (FIRMWARE / "include" / "tml" / "ops.h").read_text()
    ops = re.findall(r"^\s*X\(([A-Z0-9_]+),", ops_h, re.MULTILINE)
    assert len(ops) >= 10, ops
    profile = HardwareProfile.objects.get(name=PROFILE)
    profile.arena_ram_bytes = ARENA_BYTES
    profile.model_slot_bytes = 128 * 1024
    profile.supported_ops = ops
    profile.save()
    return profile


def upload(client: APIClient, model: str, version: str, data: bytes) -> ModelVersion:
    """Upload a .tflite as a new version of ``model`` (validated in the real TFLM on upload)."""
    body = {"model": model, "version": version, "file": SimpleUploadedFile("m.tflite", data)}
    response = client.post("/api/v1/model-versions/", body, format="multipart")
    assert response.status_code == 201, response.json()
    return ModelVersion.objects.get(pk=response.json()["id"])


def _load_sensor() -> Any:
    """The port's synthetic sensor in Python (firmware/tools/demo_model.py: ``Sensor``)."""
    spec = importlib.util.spec_from_file_location("demo_model", FIRMWARE / "tools" / "demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Sensor


class HostOutputs:
    """What the host TFLM (the tflite-micro wheel) computes for a model on the sensor's inputs.

    Inference k of the device (from reset, whatever model runs) reads the sensor in 64-sample
    calls and quantizes with float32 arithmetic as ``tflm_adapter.cc``'s ``fill_input`` does;
    the event is output 0's first maximum and its value + 128.
    """

    inputs: ClassVar[list[np.ndarray]] = []
    sensor: ClassVar[Any] = None

    def __init__(self, model: bytes) -> None:
        from tflite_micro import runtime

        self.interp = runtime.Interpreter.from_bytes(model, arena_size=256 * 1024)
        detail = self.interp.get_input_details(0)
        self.shape = tuple(int(v) for v in detail["shape"])
        q = detail["quantization_parameters"]
        self.scale, self.zero = np.float32(q["scales"][0]), np.float32(q["zero_points"][0])
        self.outputs: list[tuple[int, int]] = []

    def _input(self, k: int) -> np.ndarray:
        if HostOutputs.sensor is None:
            HostOutputs.sensor = _load_sensor()()
        while len(HostOutputs.inputs) <= k:  # shared: the sensor does not depend on the model
            samples = HostOutputs.sensor.windows(1, int(np.prod(self.shape)))[0]
            HostOutputs.inputs.append(np.array(samples, dtype=np.int32))
        real = (HostOutputs.inputs[k] + 128).astype(np.float32) / np.float32(255.0)
        q = real / self.scale + self.zero
        v = np.trunc(q + np.where(q < 0, np.float32(-0.5), np.float32(0.5))).astype(np.int32)
        return np.clip(v, -128, 127).astype(np.int8).reshape(self.shape)

    def output(self, k: int) -> tuple[int, int]:
        while len(self.outputs) <= k:
            self.interp.set_input(self._input(len(self.outputs)), 0)
            self.interp.invoke()
            out = self.interp.get_output(0).astype(np.int32).ravel() + 128
            self.outputs.append((int(np.argmax(out)), int(out.max())))
        return self.outputs[k]

    def find_run(self, events: list[tuple[int, int]], first: int = 0, limit: int = 3000) -> int:
        """Return the first inference index >= ``first`` where ``events`` is a contiguous run
        of outputs."""
        for start in range(first, limit):
            if all(self.output(start + i) == e for i, e in enumerate(events)):
                return start
        raise AssertionError(f"events {events[:12]}... are no run of the host's outputs "
                             f"{self.outputs[:12]}...")


def event_pairs(device: Device, mv: ModelVersion) -> list[tuple[int, int]]:
    """Return the (label, score) of the device's events for ``mv``, in the device's order."""
    return [(e.label, e.score) for e in
            Event.objects.filter(device_id=device.pk, model_version_id=mv.pk).order_by("ts", "id")]


def run_rollout(mv: ModelVersion, device: Device, logs: Logs) -> tuple[Package, Deployment]:
    """Start a one-device rollout and wait until its deployment is final."""
    rollout = rollouts.do_create_rollout(actor=None, name=f"e2e {mv.version}", model_version=mv,
                                         waves=[100], devices=[device])
    package = Package.objects.get(rollouts=rollout)
    rollouts.do_start_rollout(rollout, actor=None)
    final = (DeploymentState.CONFIRMED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK)
    deployment = wait_until(
        lambda: Deployment.objects.filter(rollout=rollout, state__in=final).first(), 60,
        f"deployment of {mv.version}", logs)
    return package, deployment


# -- the test ------------------------------------------------------------------------------------


def test_mcu_boots_the_servers_v1_in_tflm_confirms_v2_and_reverts_what_its_trial_refuses(
    fleet: str, broker: MosquittoInstance, worker_factory: WorkerFactory,
    processes: tuple[list[subprocess.Popen[bytes]], Logs], user_factory: Any,
    enrollment_token_factory: Callable[..., str], tmp_path: Path,
) -> None:
    """Factory v1 known to the server, real outputs, v2 confirmed, three updates refused."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    started = time.monotonic()
    made, logs = processes
    mcu_uid = f"mcu-e2e-{secrets.token_hex(3)}"
    key = ensure_signing_key()  # the fleet's first key: the image trusts it and nothing else
    operator = user_factory(Role.OPERATOR)
    api_token = Token.objects.create(user=operator).key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {api_token}")
    profile = board_profile()

    # 1. v1 = the image's factory model, known to the server with its package and manifest.
    v1_bytes = firmware_model("build/demo_model.tflite")
    v2_bytes = firmware_model("build/demo_model_seed1.tflite")
    assert client.post("/api/v1/models/", {"name": "demo-cnn"}, format="json").status_code == 201
    v1 = upload(client, "demo-cnn", "1.0.0", v1_bytes)
    assert v1.status == VersionStatus.READY, v1.validation
    p1 = do_build_package(v1, profile, actor=None, encoding=Encoding.RAW)
    m1 = Manifest.decode(cose.parse_sign1(bytes(p1.manifest)).payload)
    assert m1.model_sha256 == hashlib.sha256(v1_bytes).digest() and m1.trial is not None
    assert m1.trial.outputs_sha256 is not None  # reference kernels: the digest is checked
    elf = build_image(tmp_path / "fw", key.public_key, mcu_uid, p1.pk)
    print(f"\nv1 {len(v1_bytes)} B as package {p1.pk}; image built after "
          f"{time.monotonic() - started:.1f} s")
    start_worker_with_rollouts(worker_factory(broker, start=False))

    gateway_uid = f"gw-e2e-{secrets.token_hex(3)}"
    answer = client.post("/api/v1/gateways/", {"uid": gateway_uid}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet, "hardware": PROFILE,  # with its gateway_token
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
    middleman = Middleman(uart)
    middleman.start()
    logs.files["gateway"] = tmp_path / "gateway.log"
    made.append(subprocess.Popen(
        [sys.executable, "-m", "device_sdk.gateway", "--port",
         f"socket://127.0.0.1:{middleman.port}", "--config", str(config)],
        cwd=ROOT, stdout=logs.files["gateway"].open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL))
    try:
        # 2. Enrollment through the gateway; the worker sees the MCU's status: it runs v1.
        device = wait_until(lambda: Device.objects.filter(uid=mcu_uid, state="online").first(),
                            30, "MCU enrolled and online", logs)
        assert device.hardware_profile.name == PROFILE
        assert device.capabilities["pointer_bits"] == 32
        assert device.capabilities["arena_bytes"] == ARENA_BYTES
        assert device.capabilities["firmware_version"].startswith("tml-fw")
        assert device.capabilities["tflm_version"].startswith("tflite-micro@")  # not the fake
        assert list(Gateway.objects.get(uid=gateway_uid).children.all()) == [device]
        wait_until(lambda: Device.objects.get(pk=device.pk).running_package_id == p1.pk, 15,
                   "device runs the factory package", logs)
        print(f"enrolled through the gateway, running package {p1.pk} (v1), after "
              f"{time.monotonic() - started:.1f} s")

        # 3. v1's events are v1's outputs on the sensor, as the host TFLM computes them.
        host_v1, host_v2 = HostOutputs(v1_bytes), HostOutputs(v2_bytes)
        wait_until(lambda: len(event_pairs(device, v1)) >= 8, 40, "8 events of v1", logs)
        batch = IngestedBatch.objects.filter(device_id=device.pk, package_id=p1.pk).first()
        assert batch is not None and batch.model_version_id == v1.pk
        events = Event.objects.filter(device_id=device.pk, model_version_id=v1.pk)
        assert all(e.latency_100us > 0 for e in events)
        pairs = event_pairs(device, v1)
        at = host_v1.find_run(pairs)
        print(f"{len(pairs)} events of v1 = host TFLM outputs of inferences {at}.."
              f"{at + len(pairs) - 1}: {sorted(set(pairs))}")

        # 4. v2: validated, packaged with key 15, rolled out, trial passed, confirmed.
        v2 = upload(client, "demo-cnn", "2.0.0", v2_bytes)
        assert v2.status == VersionStatus.READY, v2.validation
        assert v2.validation["trial"][PROFILE]["outputs_sha256"]  # reference: digest checked
        p2, deployment = run_rollout(v2, device, logs)
        assert deployment.state == DeploymentState.CONFIRMED, (
            f"{DeploymentState(deployment.state).name} {Reason(deployment.reason).name}")
        assert Manifest.decode(cose.parse_sign1(bytes(p2.manifest)).payload).trial is not None
        wait_until(lambda: Device.objects.get(pk=device.pk).running_package_id == p2.pk, 15,
                   "device.running_package_id", logs)
        wait_until(lambda: len(event_pairs(device, v2)) >= 8, 40, "8 events of v2", logs)
        assert IngestedBatch.objects.filter(device_id=device.pk, package_id=p2.pk,
                                            model_version_id=v2.pk).exists()
        pairs = event_pairs(device, v2)
        # v2 runs on the sensor's later inputs: after v1's events and the trial's inferences.
        at2 = host_v2.find_run(pairs, first=at + len(event_pairs(device, v1)))
        print(f"v2 confirmed as package {p2.pk} ({Encoding(p2.encoding).name.lower()}, "
              f"{p2.transfer_size} B); {len(pairs)} events = host outputs of v2 from inference "
              f"{at2}: {sorted(set(pairs))}, after {time.monotonic() - started:.1f} s")

        # 5. Too big for the arena: refused at admission; forced through, the trial refuses it.
        big = upload(client, "demo-cnn", "3.0.0-big", big_arena_model())
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
            forced, reverted = run_rollout(big, device, logs)
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
        v3 = upload(client, "demo-cnn", "3.0.0", tweak_weight(v2_bytes))
        assert v3.status == VersionStatus.READY, v3.validation
        own = v3.validation["trial"][PROFILE]
        assert own["outputs_sha256"] != v2.validation["trial"][PROFILE]["outputs_sha256"]
        v3.validation["trial"][PROFILE] = v2.validation["trial"][PROFILE]
        v3.save(update_fields=["validation"])
        p3, mismatch = run_rollout(v3, device, logs)
        assert mismatch.state == DeploymentState.ROLLED_BACK, DeploymentState(mismatch.state).name
        assert Reason(mismatch.reason) == Reason.TRIAL_OUTPUT_MISMATCH, Reason(mismatch.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
        print(f"package {p3.pk} with another model's key 15: ROLLED_BACK "
              f"{Reason(mismatch.reason).name}")

        # 7. A forged chunk: the MCU's digest check refuses the package, with its reason. A raw
        # package (the rollout reuses it) makes the flipped byte reach the digest: in a
        # compressed stream the decoder may trip first (DECODE_ERROR), which is refused too.
        v4 = upload(client, "demo-cnn", "4.0.0", tweak_weight(v1_bytes))
        raw = do_build_package(v4, profile, actor=None, encoding=Encoding.RAW)
        middleman.tamper = True
        forged, failed = run_rollout(v4, device, logs)
        middleman.tamper = False
        assert forged == raw and middleman.tampered >= 1
        assert failed.state == DeploymentState.FAILED, DeploymentState(failed.state).name
        assert Reason(failed.reason) == Reason.TRANSFER_DIGEST_MISMATCH, Reason(failed.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == p2.pk
        # v2's events go on, still v2's outputs (later inputs: the trials ran the sensor too).
        count = len(event_pairs(device, v2))
        wait_until(lambda: len(event_pairs(device, v2)) >= count + 16, 30, "v2 events go on",
                   logs)
        later = event_pairs(device, v2)[count:count + 16]
        at3 = host_v2.find_run(later, first=at2 + count)
        print(f"forged package refused: {Reason(failed.reason).name} "
              f"({middleman.chunks} chunk frames relayed, {middleman.tampered} forged); "
              f"v2 runs on (events = host outputs from inference {at3}); "
              f"total {time.monotonic() - started:.1f} s")
    finally:
        middleman.stop()
