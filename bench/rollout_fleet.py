"""The rollout bench's simulated fleet: enrollment (in-process, or in bulk past
``BULK_ENROLL_OVER`` devices), the devices' state folder, and the simulator run in this process
(``LocalFleet``) or split over child processes (``ProcessFleet``, ``run_sim_process``).

The children run ``bench/rollout.py --role sim``. Imported by ``bench/rollout.py`` (run as a
script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lab import recorded_broker_steps, write_dynsec_devices  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("rollout.py")  # the entry point; children: ``--role sim``
BULK_ENROLL_OVER = 2000  # devices; above, enroll in bulk (see enroll())


def sim_config(state_dir: Path, model: Path, hardware: str, package_id: int, devices: int,
               first: int = 0) -> Any:
    """The simulator's settings for devices ``first..first+devices-1`` of ``state_dir``."""
    from device_sdk.simulator import SimulationConfig

    return SimulationConfig(
        server="http://127.0.0.1:9",  # only for re-enrollment, which this run never needs
        token="-", devices=devices, first_index=first, model_path=model, hardware=hardware,
        state_dir=state_dir, rate_hz=1e-4,  # telemetry nearly off: OTA traffic only
        # One reactor thread per simulator process: the GIL runs one at a time, and the
        # second only added hand-offs (4,000 devices, 2 processes: 8.0 ms of CPU per device
        # with one, 8.5 with two under py-spy at 25 Hz; rollout 30.2 s against 34.4 s, as
        # few repairs: a small, uncertain gain, measured once each while CI loaded the box).
        batch=16, batch_age_s=60.0, threads=1, package_id=package_id,
        # Repairs after 10 s without a new byte: one process simulates thousands of devices
        # on a shared core, so a device's chunks can wait in its socket for seconds, a wait a
        # real device's link does not have; with 2 s, starved devices asked the server for
        # bytes already in their buffers (10,000 devices: a storm of unicast repairs).
        report_every_s=3600, repair_after_s=10.0,
    )


class LocalFleet:
    """The whole simulated fleet in this process."""

    def __init__(self, sim: Any, tally: Any) -> None:
        self.sim, self.tally = sim, tally

    def start(self) -> None:
        self.sim.start()

    def connected(self) -> int:
        return int(self.sim.connected())

    def tally_snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        return dict(self.tally.snapshot())

    def pids(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        self.sim.stop(timeout=10)


class ProcessFleet:
    """The simulated fleet split over child processes (``--role sim``), each with its own
    interpreter lock: one Python process handles at most one core's worth of devices.

    Each child simulates a contiguous range of the enrolled devices and answers one-line
    commands on its stdin (``connected``, ``tally``, ``stop``) with one line on its stdout.
    """

    def __init__(self, state_dir: Path, model: Path, hardware: str, package_id: int,
                 devices: int, processes: int) -> None:
        self.children: list[subprocess.Popen[str]] = []
        share = -(-devices // processes)
        for first in range(0, devices, share):
            spec = {"state_dir": str(state_dir), "model": str(model), "hardware": hardware,
                    "package_id": package_id, "devices": min(share, devices - first),
                    "first": first}
            self.children.append(subprocess.Popen(
                [sys.executable, str(ENTRY), "--role", "sim", json.dumps(spec)], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))

    def _ask(self, command: str) -> list[str]:
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(command + "\n")
            child.stdin.flush()
        answers = []
        for child in self.children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"simulator process {child.pid} exited ({child.poll()})")
            answers.append(line)
        return answers

    def start(self) -> None:
        self._ask("start")

    def connected(self) -> int:
        return sum(int(a) for a in self._ask("connected"))

    def tally_snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        total: dict[tuple[str, str], tuple[int, int]] = {}
        for answer in self._ask("tally"):
            for kind, direction, packets, nbytes in json.loads(answer):
                old = total.get((kind, direction), (0, 0))
                total[(kind, direction)] = (old[0] + packets, old[1] + nbytes)
        return total

    def pids(self) -> dict[str, int]:
        return {f"simulator_{i}": child.pid for i, child in enumerate(self.children)}

    def stop(self) -> None:
        try:
            self._ask("stop")
        finally:
            for child in self.children:
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=10)


def run_sim_process(spec_json: str) -> None:
    """Child process: simulate one range of devices; obey ProcessFleet's commands."""
    import logging

    from device_sdk.mqtt import paho_speedup
    from device_sdk.mqtt.link import WireTally
    from device_sdk.simulator import Simulator

    paho_speedup.install()  # opt-in, per process: this child is a simulator's entry point

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Answers go to the real stdout; anything else written there (a C library's chatter)
    # goes to stderr instead of into the answers.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(spec_json)
    tally = WireTally()
    sim = Simulator(sim_config(Path(spec["state_dir"]), Path(spec["model"]), spec["hardware"],
                               spec["package_id"], spec["devices"], spec["first"]), tally=tally)
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            sim.start()
            answer: Any = "started"
        elif command == "connected":
            answer = sim.connected()
        elif command == "tally":
            answer = json.dumps([[k, d, p, b] for (k, d), (p, b) in tally.snapshot().items()])
        elif command == "stop":
            sim.stop(timeout=10)
            print("stopped", file=answers, flush=True)
            return
        else:
            answer = f"unknown command {command!r}"
        print(answer, file=answers, flush=True)


def sim_state_dir(workdir: Path) -> Path:
    """Where the simulated devices keep their files (slots, download, identity, outbox).

    In memory (/dev/shm) when there is one: it stands for each device's own flash. On this
    machine's ext4, replacing or truncating a file that holds data costs ~0.2 ms (the
    delayed-allocation flush), which the devices' slot switches, downloads and clean-ups pay
    several times per update: a shared host disk's cost no device has.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f"{workdir.name}-", dir=shm)) / "sim"
    return workdir / "sim"


def enroll(devices: int, sim: Any, server: str, v1_package_id: int, hardware: str,
           broker: Any, bulk: bool) -> None:
    """Enroll ``devices`` in-process and write the identity files the simulator reads.

    ``bulk``: the same do_enroll_device, 250 per transaction, with the broker credentials
    recorded and written into the dynamic-security file while the broker is stopped
    (bench/lab.py says why: the plugin's cost per enrollment grows with the fleet).
    """
    from django.db import transaction

    if bulk:
        with recorded_broker_steps() as recorder:
            for first in range(0, devices, 250):
                with transaction.atomic():
                    _enroll(range(first, min(first + 250, devices)), devices, sim, server,
                            v1_package_id, hardware)
        broker.stop()
        write_dynsec_devices(broker.dynsec_file, recorder.devices)
        broker.start()
    else:
        _enroll(range(devices), devices, sim, server, v1_package_id, hardware)


_token: list[str] = []


def _enroll(indexes: range, devices: int, sim: Any, server: str, v1_package_id: int,
            hardware: str) -> None:
    from django.conf import settings
    from django.utils import timezone

    from device_sdk.client.identity import (
        CA_FILE,
        DeviceIdentity,
        MqttCredential,
        SigningKey,
        capabilities_json,
        load_or_create_key,
    )
    from fleet.devices.actions import do_create_enrollment_token
    from fleet.devices.models import Device
    from fleet.devices.trust import broker_ca_pem, published_signing_keys
    from testkit.enrollment import enroll_in_process

    if not _token:
        _token.append(do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timezone.timedelta(days=1),
            max_uses=devices)[1])
    token = _token[0]
    keys = tuple(SigningKey(k["kid"], k["public_key"]) for k in published_signing_keys())
    ca = broker_ca_pem()
    caps = capabilities_json(sim.capabilities)
    uids = []
    for i in indexes:
        state = sim.device_dir(i)
        key = load_or_create_key(state)
        result = enroll_in_process(token=token, key=key, hardware=hardware, capabilities=caps)
        (state / CA_FILE).write_text(ca)
        DeviceIdentity(
            device_id=result.device.uid, hardware=hardware, server=server,
            mqtt=MqttCredential(settings.MQTT_DEVICE_URL, result.mqtt_username,
                                result.mqtt_password, str((state / CA_FILE).resolve())),
            signing_keys=keys, topics_prefix=f"fleet/v1/{result.device.uid}/",
            capabilities=caps,
        ).save(state)
        uids.append(result.device.uid)
    Device.objects.filter(uid__in=uids).update(running_package_id=v1_package_id)
