"""The deployment files are valid for their tools: systemd units, the environment example,
the compose file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, REPO, need_tool

UNITS = ["fleet-web.service", "fleet-worker@.service", "fleet-broker.service", "fleet.target"]


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts every unit (paths pointed at this checkout, since it
    checks that ExecStart binaries exist), the worker template through two instances."""
    analyze = need_tool("systemd-analyze", "systemd")
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace("/srv/fleet/venv", str(REPO / ".venv"))
        text = text.replace("/srv/fleet/app", str(REPO))
        (tmp_path / name).write_text(text)
    targets = [str(tmp_path / n) for n in UNITS if "@" not in n]
    targets += [str(tmp_path / "fleet-worker@1.service"), str(tmp_path / "fleet-worker@2.service")]
    done = subprocess.run([analyze, "verify", "--man=no", *targets], capture_output=True,
                          text=True, check=False, cwd=tmp_path)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "fleet" in line or "error" in line.lower()]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr


def test_worker_instances_get_distinct_names() -> None:
    """Each worker instance names itself from the host and its instance (%H-%i)."""
    unit = (DEPLOY / "systemd" / "fleet-worker@.service").read_text()
    assert "fleet_worker --name %H-%i" in unit


def test_environment_example_lists_every_setting_and_no_secret() -> None:
    """Every variable fleet/settings.py reads is in deploy/fleet.env.example, with a
    placeholder (``change-me``) wherever it is a secret."""
    settings = (REPO / "fleet" / "settings.py").read_text()
    read = set(re.findall(r"os\.environ\.get\(\s*\"([A-Z_][A-Z0-9_]*)\"", settings))
    read |= set(re.findall(r"_env_(?:int|flag)\(\s*\"([A-Z_][A-Z0-9_]*)\"", settings))
    example = (DEPLOY / "fleet.env.example").read_text()
    listed = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    assert read and read - set(listed) == set()
    for name in ("SECRET_KEY", "MQTT_ADMIN_PASSWORD", "MQTT_WORKER_PASSWORD", "FLEET_KEK",
                 "METRICS_TOKEN"):
        assert "change-me" in listed[name], name
    assert listed["TRUSTED_PROXY_COUNT"] == "1" and listed["FLEET_DEBUG"] == "0"


def test_compose_file_runs_the_whole_stack() -> None:
    """The compose file has PostgreSQL, the broker, web, workers and nginx, sharing one env."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "broker", "web", "worker", "nginx"}
    for name in ("broker", "web", "worker"):
        assert services[name]["env_file"] == "fleet.env"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "gunicorn --config deploy/gunicorn.conf.py" in services["web"]["command"]
    assert services["worker"]["deploy"]["replicas"] >= 2
