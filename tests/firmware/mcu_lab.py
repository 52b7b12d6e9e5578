"""The lab for end-to-end tests on an emulated MCU: the QEMU image built with the fleet's key, the
board's hardware profile, the server-side steps (upload, gateway registration, a one-device
rollout), the subprocesses (worker, QEMU, gateway) with their logs, and a middleman on the UART
that can forge chunk frames. The pytest fixtures (``processes``, ``fleet``) are in conftest.py.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from device_sdk.protocol import link
from device_sdk.protocol.manifest import Encoding
from device_sdk.protocol.ota_messages import Chunk, DeploymentState, decode_chunk, encode_chunk
from fleet.core.roles import Role
from fleet.devices.models import Device, HardwareProfile
from ota.choices import VersionStatus
from ota.models import ModelVersion, Package
from ota.packaging.actions import do_build_package
from ota.rollouts import actions as rollouts
from ota.rollouts.models import Deployment
from testkit.worker import READY_LINE, WorkerProcess
from tests.firmware.firmware_kit import FIRMWARE, ROOT

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

    (The shared fixture starts workers with ``--no-rollouts``; these tests need the controller.)
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


Processes = tuple[list[subprocess.Popen[bytes]], Logs]
"""What the ``processes`` fixture yields: the subprocesses to stop at teardown, their logs."""


def register_gateway(client: APIClient, tmp_path: Path, fleet: str, profile: HardwareProfile,
                     token_factory: Callable[..., str], prefix: str) -> tuple[str, Path]:
    """Register a gateway through the API; return its uid and its config file (mode 0600)."""
    uid = f"{prefix}-{secrets.token_hex(3)}"
    answer = client.post("/api/v1/gateways/", {"uid": uid}, format="json")
    assert answer.status_code == 201, answer.json()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({
        **answer.json(), "server": fleet, "hardware": PROFILE,  # with its gateway_token
        "claim_token": token_factory(max_uses=1, hardware_profile=profile),
    }))
    config.chmod(0o600)
    return uid, config


def start_qemu(elf: Path, uart: int, made: list[subprocess.Popen[bytes]], logs: Logs,
               tmp_path: Path) -> None:
    """Boot ``elf`` on mps2-an385 with its UART a TCP server on loopback port ``uart``."""
    logs.files["qemu"] = tmp_path / "qemu.log"
    made.append(subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an385", "-nographic", "-monitor", "none",
         "-kernel", str(elf), "-serial", f"tcp:127.0.0.1:{uart},server=on,wait=on,nodelay=on",
         "-semihosting-config", "enable=on,target=native"],
        stdout=logs.files["qemu"].open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))


def start_gateway(port: int, config: Path, made: list[subprocess.Popen[bytes]], logs: Logs,
                  tmp_path: Path) -> None:
    """Run the gateway program on the serial link at loopback TCP ``port`` with ``config``."""
    logs.files["gateway"] = tmp_path / "gateway.log"
    made.append(subprocess.Popen(
        [sys.executable, "-m", "device_sdk.gateway", "--port", f"socket://127.0.0.1:{port}",
         "--config", str(config)],
        cwd=ROOT, stdout=logs.files["gateway"].open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL))


# -- the server side -----------------------------------------------------------------------------


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


def operator_client(user_factory: Callable[[Role], Any]) -> APIClient:
    """Return an API client holding the token of a new operator."""
    token = Token.objects.create(user=user_factory(Role.OPERATOR)).key
    return APIClient(HTTP_AUTHORIZATION=f"Token {token}")


def factory_package(client: APIClient, profile: HardwareProfile,
                    model: bytes) -> tuple[ModelVersion, Package]:
    """Upload ``model`` as demo-cnn 1.0.0 and build its raw package: the image's factory slot."""
    assert client.post("/api/v1/models/", {"name": "demo-cnn"}, format="json").status_code == 201
    v1 = upload(client, "demo-cnn", "1.0.0", model)
    assert v1.status == VersionStatus.READY, v1.validation
    return v1, do_build_package(v1, profile, actor=None, encoding=Encoding.RAW)


def upload(client: APIClient, model: str, version: str, data: bytes) -> ModelVersion:
    """Upload a .tflite as a new version of ``model`` (validated in the real TFLM on upload)."""
    body = {"model": model, "version": version, "file": SimpleUploadedFile("m.tflite", data)}
    response = client.post("/api/v1/model-versions/", body, format="multipart")
    assert response.status_code == 201, response.json()
    return ModelVersion.objects.get(pk=response.json()["id"])


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
