"""The simulator bench's enrollment: the devices' model, and enrolling them.

The model is the 16-32-4 int8 MLP of the SDK tests, trained once by TensorFlow in a subprocess
(``bench/simulator.py --role build-model``) and cached in the temp folder; ``Enroller`` enrolls
the devices through ``do_enroll_device`` (the real path, or in bulk with the broker step
recorded) and writes the identity files the simulator reads. Also the bench's progress ``log``.
Imported by ``bench/simulator.py`` (run as a script: ``bench/`` is on ``sys.path`` as its
folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import recorded_broker_steps  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("simulator.py")  # the entry point; ``--role build-model``
HARDWARE = "stm32f746"
MODEL_CACHE = Path(tempfile.gettempdir()) / "fleet-bench-simulator-model-v1"


def log(msg: str) -> None:
    """Report progress on stderr (stdout carries only the figures)."""
    print(f"[simulator] {msg}", file=sys.stderr, flush=True)


# -- model (subprocess: TensorFlow stays out of the bench process) ----------------------------


def run_build_model(out: str) -> None:
    """Train the 16-32-4 MLP of the SDK tests; write dense.tflite to ``out``."""
    from testkit import model_factory

    target = Path(out)
    artifacts = model_factory.dense_classifier(target / "keras")
    (target / "dense.tflite.tmp").write_bytes(artifacts.tflite)
    (target / "dense.tflite.tmp").rename(target / "dense.tflite")


def model_path() -> Path:
    """Return the .tflite, training it once (cached in the temp folder)."""
    path = MODEL_CACHE / "dense.tflite"
    if not path.exists():
        started = time.monotonic()
        subprocess.run([sys.executable, str(ENTRY), "--role", "build-model", str(MODEL_CACHE)],
                       cwd=ROOT, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                       stdout=subprocess.DEVNULL)
        log(f"trained and converted the model in {time.monotonic() - started:.1f} s")
    return path


# -- enrollment -------------------------------------------------------------------------------


class Enroller:
    """Enroll simulated devices in this process and write the identity files they read."""

    def __init__(self, state_dir: Path, devices: int) -> None:
        from django.conf import settings
        from django.utils import timezone

        from device_sdk.client.identity import SigningKey, capabilities_json
        from device_sdk.inference import TflmModel, host_capabilities
        from fleet.devices.actions import do_create_enrollment_token
        from fleet.devices.trust import broker_ca_pem, published_signing_keys

        self.state_dir = state_dir
        self.device_url = settings.MQTT_DEVICE_URL
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="bench-enroll-files")
        _, self.token = do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timezone.timedelta(days=1), max_uses=devices)
        self.keys = tuple(SigningKey(k["kid"], k["public_key"]) for k in published_signing_keys())
        self.ca = broker_ca_pem()
        model = TflmModel.from_file(model_path())
        self.caps = capabilities_json(host_capabilities(model))

    def device_dir(self, index: int) -> Path:
        return self.state_dir / "devices" / f"{index:05d}"  # as Simulator.device_dir

    def enroll(self, indexes: range, *, per_transaction: int = 1) -> float:
        """Enroll devices ``indexes`` through do_enroll_device; return the seconds it took.

        ``per_transaction`` > 1 commits that many enrollments at once (the bulk path: one
        SQLite commit per device would be most of the time).
        """
        from django.db import transaction

        started = time.monotonic()
        for first in range(indexes.start, indexes.stop, per_transaction):
            with transaction.atomic():
                self._enroll(range(first, min(first + per_transaction, indexes.stop)))
            done = min(first + per_transaction, indexes.stop) - indexes.start
            if len(indexes) >= 1000 and done % 1000 < per_transaction:
                log(f"  {done} of {len(indexes)} enrolled ({time.monotonic() - started:.0f} s)")
        return time.monotonic() - started

    def _enroll(self, indexes: range) -> None:
        """Enroll ``indexes``: keys and files in a few threads (each file is fsynced, which
        releases the GIL), the enrollments themselves one after another."""
        from device_sdk.client.identity import (
            CA_FILE,
            DeviceIdentity,
            MqttCredential,
            load_or_create_key,
        )
        from fleet.devices.actions import EnrollmentResult
        from testkit.enrollment import enroll_in_process

        def save(i: int, result: EnrollmentResult) -> None:
            state = self.device_dir(i)
            (state / CA_FILE).write_text(self.ca)
            DeviceIdentity(
                device_id=result.device.uid, hardware=HARDWARE, server="http://127.0.0.1:9",
                mqtt=MqttCredential(self.device_url, result.mqtt_username,
                                    result.mqtt_password, str((state / CA_FILE).resolve())),
                signing_keys=self.keys, topics_prefix=f"fleet/v1/{result.device.uid}/",
                capabilities=self.caps,
            ).save(state)

        keys = list(self.pool.map(lambda i: load_or_create_key(self.device_dir(i)), indexes))
        results = [enroll_in_process(token=self.token, key=key, hardware=HARDWARE,
                                     capabilities=self.caps) for key in keys]
        list(self.pool.map(save, indexes, results))

    def enroll_bulk(self, indexes: range) -> tuple[float, dict[str, str]]:
        """Enroll through do_enroll_device with the broker step recorded, not sent."""
        with recorded_broker_steps() as recorder:
            seconds = self.enroll(indexes, per_transaction=250)
        return seconds, recorder.devices

