"""Fixtures of the fleetctl tests: a live server with API tokens, fleetctl as a subprocess, and
a stand-in for the worker and the devices that moves rollouts along."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
import tflite_micro
from django.db import connection
from rest_framework.authtoken.models import Token

from device_sdk.protocol.ota_messages import DeploymentState
from fleet.accounts.actions import do_create_user
from fleet.core.roles import Role
from fleet.devices.models import Device, HardwareProfile

REPO = Path(__file__).resolve().parents[2]
SINE_MODEL = Path(tflite_micro.__file__).parent / "python" / "tflite_micro" / "sine_float.tflite"


@dataclass
class Result:
    """A finished fleetctl run."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture
def token_for(transactional_db: Any) -> Callable[[Role], str]:
    """Return a function making a user of a role and returning its API token."""
    counter = iter(range(1000))

    def make(role: Role) -> str:
        user = do_create_user(f"ci-{role.label}-{next(counter)}", "correct-horse-battery", role,
                              actor=None)
        return Token.objects.create(user=user).key

    return make


@pytest.fixture
def fleetctl(live_server: Any, token_for: Callable[[Role], str], tmp_path: Path,
             ) -> Callable[..., Result]:
    """Run ``python -m fleetctl ARGS`` against the live server with an operator's token in
    ``FLEET_URL``/``FLEET_TOKEN`` (``token=`` overrides it, ``env=`` adds variables)."""
    operator = token_for(Role.OPERATOR)

    def run(*args: str, token: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
        environ.update({"FLEET_URL": live_server.url, "FLEET_TOKEN": token or operator,
                        "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "160",
                        "PYTHONPATH": str(REPO)})
        environ.update(env or {})
        done = subprocess.run([sys.executable, "-m", "fleetctl", *args], check=False, cwd=REPO,
                              env=environ, capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def sine_model_file() -> Path:
    """A small real .tflite (sine regression, about 3 KB, from the tflite-micro wheel)."""
    return SINE_MODEL


@pytest.fixture
def lab_devices(hardware_profile: HardwareProfile) -> list[Device]:
    """Three enrolled devices of the stock profile (rows made directly)."""
    return [Device.objects.create(
        uid=f"ci-dev-{i}", hardware_profile=hardware_profile, public_key_pem="-",
        key_algorithm="ed25519", public_key_fingerprint=hashlib.sha256(b"%d" % i).hexdigest(),
    ) for i in range(3)]


class FleetStandIn:
    """Plays the worker's rollout controller and well-behaved devices in a thread.

    Every ``period_s`` it runs one controller tick (offers go to a list, not a broker) and
    confirms every offered deployment, as devices that install and pass their trial would.
    """

    def __init__(self, period_s: float = 0.3) -> None:
        self.period_s = period_s
        self.offers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if topic.endswith("/ota/offer"):  # not the fan-out keys sent before each offer
            self.offers.append(topic)

    def _run(self) -> None:
        from ota.rollouts.controller import tick
        from ota.rollouts.delivery import apply_report
        from ota.rollouts.models import Deployment

        try:
            while not self._stop.wait(self.period_s):
                tick("ci-stand-in", self)
                for dep in Deployment.objects.filter(state=DeploymentState.OFFERED):
                    apply_report(dep.device_id, dep.package_id, DeploymentState.CONFIRMED, 0)
        finally:
            connection.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def stand_in() -> Iterator[type[FleetStandIn]]:
    """The controller-and-devices stand-in class (use it as a context manager)."""
    yield FleetStandIn
