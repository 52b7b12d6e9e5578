"""Children that parse uploaded models (TFLM probe, Keras conversion) never see the secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.core.child_env import child_environment
from ota.jobs import conversion
from ota.validation import tflm

SECRETS = {
    "FLEET_KEK": "kek-must-not-leak",
    "SECRET_KEY": "secret-key-must-not-leak",
    "DATABASE_URL": "postgres://fleet:pw-must-not-leak@db/fleet",
    "MQTT_ADMIN_PASSWORD": "admin-pw-must-not-leak",
    "MQTT_WORKER_PASSWORD": "worker-pw-must-not-leak",
    "METRICS_TOKEN": "metrics-token-must-not-leak",
    "SOME_FUTURE_API_KEY": "unknown-names-stay-behind-too",
}

# Prints the child's whole environment as a conversion "done" event.
ENV_PROBE = "import json, os; print(json.dumps({'done': True, 'env': dict(os.environ)}))"


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def assert_no_secrets(env: dict[str, str]) -> None:
    leaked = {k for k, v in env.items() if k in SECRETS or v in SECRETS.values()}
    assert not leaked, f"secrets reached the child: {sorted(leaked)}"


def spy_popen(monkeypatch: pytest.MonkeyPatch, module: Any, *, replace_cmd: list[str] | None
              ) -> list[dict[str, Any]]:
    """Record the keyword arguments the product starts its child with (optionally running a
    probe command instead of the product's, with exactly those arguments)."""
    seen: list[dict[str, Any]] = []
    real_popen = subprocess.Popen

    def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        seen.append(kwargs)
        return real_popen(replace_cmd or cmd, **kwargs)

    monkeypatch.setattr(module.subprocess, "Popen", popen)
    return seen


def test_the_helper_passes_only_allow_listed_names(secrets_in_environment: None) -> None:
    env = child_environment()
    assert_no_secrets(env)
    assert env["OMP_NUM_THREADS"] == "1" and "PATH" in env


def test_the_tflm_probe_child_runs_without_secrets(
    secrets_in_environment: None, monkeypatch: pytest.MonkeyPatch, conv_tflite: bytes,
) -> None:
    """The real probe runs the model with the environment the product gives it."""
    seen = spy_popen(monkeypatch, tflm, replace_cmd=None)
    result = tflm.probe_model(conv_tflite)
    assert result.ok, result.failure
    assert seen and all(kwargs.get("env") is not None for kwargs in seen)
    for kwargs in seen:
        assert_no_secrets(kwargs["env"])
    # And what that child really sees, started the same way:
    probe = subprocess.run([sys.executable, "-c", ENV_PROBE], capture_output=True, text=True,
                           check=True, env=seen[0]["env"], cwd=seen[0]["cwd"])
    assert_no_secrets(json.loads(probe.stdout)["env"])


def test_the_conversion_child_sees_no_secrets(
    secrets_in_environment: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The conversion job's child, started by the job's own launcher, reports its env."""
    spy_popen(monkeypatch, conversion, replace_cmd=[sys.executable, "-c", ENV_PROBE])
    job = SimpleNamespace(id=0, lease_owner="test")
    outcome = conversion._run_child(job, ["model.keras", "data.npz", "out.tflite"])
    assert outcome.get("done") is True, outcome
    assert_no_secrets(outcome["env"])
    assert outcome["env"].get("OMP_NUM_THREADS") == "1"
