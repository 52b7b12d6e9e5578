"""End to end on an emulated MCU: server, broker, worker, serial gateway and the C firmware.

Everything is real: Django on ``live_server``, the session Mosquitto (dynamic security, TLS),
the fleet worker as a subprocess (ingest, OTA chunks, rollout controller, package carousel),
the gateway program (``python -m device_sdk.gateway``), and the Cortex-M3 image on QEMU's
mps2-an385, built with the server's OTA signing key as its only trusted key and the stock
``qemu-mps2-an385`` hardware profile. Between the gateway and QEMU's UART sits a middleman
that can flip a byte in chunk frames, as a compromised gateway would.

1. The MCU says HELLO; the gateway enrolls it (its key, the capabilities of its STATUS) and
   adds it to its children; the worker marks it online.
2. A rollout of a validated model version: offer, chunks (unicast and carousel, clipped to the
   UART's MTU), signature and digest checks on the MCU, swap, trial, confirm. The server shows
   the deployment CONFIRMED and the device running the package; events the MCU encodes
   arrive in the telemetry tables. The image runs TFLite Micro (it boots on its factory demo
   model, package 0, which the server treats as no package): the trial and the events are
   real inferences of the uploaded int8 classifier on the port's synthetic sensor, so every
   event names one of its 4 classes with the int8 softmax's top-1 score (q + 128 >= 64).
3. A rollout of the next version through a tampering middleman: the MCU refuses it with its
   reason code, and the deployment is FAILED with that reason; the old package keeps running.

CI=true turns a missing toolchain, QEMU or Mosquitto into a failure instead of a skip.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.protocol import link
from device_sdk.protocol.manifest import Encoding
from device_sdk.protocol.ota_messages import Chunk, DeploymentState, decode_chunk, encode_chunk
from device_sdk.protocol.reasons import Reason
from fleet.core.roles import Role
from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, Gateway, HardwareProfile
from fleet.telemetry.models import Event, IngestedBatch
from ota.models import ModelVersion, Package
from ota.packaging.actions import do_build_package
from ota.rollouts import actions as rollouts
from ota.rollouts.models import Deployment
from ota.signing.actions import ensure_signing_key
from testkit.model_factory import tweak_weight
from testkit.worker import READY_LINE, WorkerFactory, WorkerProcess
from tests.firmware.test_firmware_build import FIRMWARE, free_port, require

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "qemu-mps2-an385"


# -- the firmware image, built with the fleet's key --------------------------------------------


def build_image(build_dir: Path, trusted_key_hex: str, uid: str) -> Path:
    """Build the QEMU image into ``build_dir`` (the shared build/ is left alone).

    The stock profile is the Makefile's default; it is passed anyway, so that the manifests the
    server signs for ``PROFILE`` always name the image's profile.
    """
    keys = build_dir / "trusted.hex"
    build_dir.mkdir(parents=True, exist_ok=True)
    keys.write_text(trusted_key_hex + "\n")
    result = subprocess.run(
        ["make", "-C", str(FIRMWARE), "qemu", f"BUILD={build_dir / 'build'}",
         f"TRUSTED_KEYS={keys}", f"HARDWARE_PROFILE={PROFILE}", f"DEVICE_UID={uid}", "-j2"],
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


def upload_versions(client: APIClient, tflite: bytes) -> tuple[ModelVersion, ModelVersion]:
    """Upload two validated versions of one model (the second with one weight changed)."""
    assert client.post("/api/v1/models/", {"name": "e2e-gesture"}, format="json").status_code == 201
    changed = tweak_weight(tflite)
    versions = []
    for version, data in (("1.0.0", tflite), ("1.1.0", changed)):
        body = {"model": "e2e-gesture", "version": version,
                "file": SimpleUploadedFile("m.tflite", data)}
        response = client.post("/api/v1/model-versions/", body, format="multipart")
        assert response.status_code == 201, response.json()
        versions.append(ModelVersion.objects.get(pk=response.json()["id"]))
    return versions[0], versions[1]


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


def test_mcu_enrolls_through_the_gateway_installs_a_signed_update_and_refuses_a_forged_one(
    fleet: str, broker: MosquittoInstance, worker_factory: WorkerFactory,
    processes: tuple[list[subprocess.Popen[bytes]], Logs], user_factory: Any,
    enrollment_token_factory: Callable[..., str], tmp_path: Path,
) -> None:
    """Enroll via the gateway, CONFIRMED update with telemetry, FAILED forged update."""
    require("make", "arm-none-eabi-gcc", "qemu-system-arm")
    from testkit import model_factory

    started = time.monotonic()
    made, logs = processes
    mcu_uid = f"mcu-e2e-{secrets.token_hex(3)}"
    key = ensure_signing_key()  # the fleet's first key: the image trusts it and nothing else
    elf = build_image(tmp_path / "fw", key.public_key, mcu_uid)
    operator = user_factory(Role.OPERATOR)
    api_token = Token.objects.create(user=operator).key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {api_token}")
    v1, v2 = upload_versions(client, model_factory.dense_classifier(tmp_path / "model").tflite)
    start_worker_with_rollouts(worker_factory(broker, start=False))

    gateway_uid = f"gw-e2e-{secrets.token_hex(3)}"
    answer = client.post("/api/v1/gateways/", {"uid": gateway_uid}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet, "hardware": PROFILE,  # with its gateway_token
        "claim_token": enrollment_token_factory(
            max_uses=1, hardware_profile=HardwareProfile.objects.get(name=PROFILE)),
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
        # 1. Enrollment through the gateway; the worker sees the MCU's status.
        device = wait_until(lambda: Device.objects.filter(uid=mcu_uid, state="online").first(),
                            30, "MCU enrolled and online", logs)
        assert device.hardware_profile.name == PROFILE
        assert device.capabilities["pointer_bits"] == 32
        assert device.capabilities["firmware_version"].startswith("tml-fw")
        assert device.capabilities["tflm_version"].startswith("tflite-micro@")  # not the fake
        assert device.running_package_id is None  # the factory model is package 0
        assert list(Gateway.objects.get(uid=gateway_uid).children.all()) == [device]
        print(f"\nenrolled through the gateway after {time.monotonic() - started:.1f} s")

        # 2. A signed update, verified and confirmed by the MCU.
        package, deployment = run_rollout(v1, device, logs)
        assert deployment.state == DeploymentState.CONFIRMED, (
            f"{DeploymentState(deployment.state).name} {Reason(deployment.reason).name}")
        wait_until(lambda: Device.objects.get(pk=device.pk).running_package_id == package.pk, 15,
                   "device.running_package_id", logs)
        batch = wait_until(lambda: IngestedBatch.objects.filter(
            device_id=device.pk, package_id=package.pk).first(), 30, "first event batch", logs)
        assert batch.model_version_id == v1.pk and batch.event_count > 0
        events = Event.objects.filter(device_id=device.pk, model_version_id=v1.pk)
        assert events.count() >= batch.event_count
        assert all(0 <= e.score <= 255 for e in events)
        # Real inferences of the 4-class int8 model: top-1 of a softmax is >= 1/4 (q + 128 >= 64).
        assert all(e.label < 4 and e.score >= 63 for e in events), [
            (e.label, e.score) for e in events[:20]]
        assert all(e.latency_100us > 0 for e in events)
        print(f"confirmed {package} and {events.count()} events stored after "
              f"{time.monotonic() - started:.1f} s")

        # 3. A forged chunk: the MCU's digest check refuses the package, with its reason. A raw
        # package (the rollout reuses it) makes the flipped byte reach the digest: in a
        # compressed stream the decoder may trip first (DECODE_ERROR), which is refused too.
        raw = do_build_package(v2, device.hardware_profile, actor=None, encoding=Encoding.RAW)
        middleman.tamper = True
        forged, failed = run_rollout(v2, device, logs)
        assert forged == raw and middleman.tampered >= 1
        assert failed.state == DeploymentState.FAILED, DeploymentState(failed.state).name
        assert Reason(failed.reason) == Reason.TRANSFER_DIGEST_MISMATCH, Reason(failed.reason).name
        assert Device.objects.get(pk=device.pk).running_package_id == package.pk
        print(f"forged package refused: {Reason(failed.reason).name} "
              f"({middleman.chunks} chunk frames relayed, {middleman.tampered} forged); "
              f"total {time.monotonic() - started:.1f} s")
    finally:
        middleman.stop()
