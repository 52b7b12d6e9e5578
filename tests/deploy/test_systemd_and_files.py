"""The deployment files are valid for their tools: systemd units, the environment example,
the compose file."""

from __future__ import annotations

import json
import re
import shlex
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


# --- compose and the Dockerfile run what the units and the README's bootstrap run ----------------

APP = "/srv/fleet/app"


def _unit(name: str) -> dict[str, str]:
    pairs = re.findall(r"^([A-Za-z]+)=(.*)$", (DEPLOY / "systemd" / name).read_text(), re.MULTILINE)
    return dict(pairs)


def _unit_argv(name: str) -> list[str]:
    """A unit's ExecStart relative to its WorkingDirectory, programs by their base name (the
    image puts the virtualenv on PATH), ``${VAR}`` as the shell writes it."""
    unit = _unit(name)
    assert unit["WorkingDirectory"] == APP
    line = unit["ExecStart"].replace(APP + "/", "")
    argv = shlex.split(re.sub(r"\$\{([A-Z_]+)\}", r"$\1", line))
    return [argv[0].rsplit("/", 1)[-1], *argv[1:]]


def _compose_argv(service: dict) -> list[str]:
    """The program a compose service ends up running (the command after ``exec``, or the one
    before ``&&`` for the broker, whose start returns), ``$$`` unescaped, ``${X}`` as ``$X``."""
    command = service["command"]
    text = command if isinstance(command, str) else command[-1]
    text = text.removeprefix("sh -c ").strip('"')
    parts = [p.strip() for p in text.split("&&")]
    main = next((p for p in parts if p.startswith("exec ") and "tail --pid" not in p),
                parts[0]).removeprefix("exec ")
    main = re.sub(r"\$\$\{?([A-Z_]+)\}?", r"$\1", main)
    return shlex.split(main)


def test_compose_services_run_the_units_commands() -> None:
    """web, worker and broker run the very command of their systemd unit, from the same
    working directory (the image's WORKDIR is the units' /srv/fleet/app); only the worker's
    name differs (per host and instance vs per container: both distinct per process)."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    docker = (DEPLOY / "Dockerfile").read_text()
    assert f"WORKDIR {APP}" in docker
    assert _compose_argv(compose["web"]) == _unit_argv("fleet-web.service")
    assert _compose_argv(compose["broker"]) == _unit_argv("fleet-broker.service")
    worker, unit_worker = _compose_argv(compose["worker"]), _unit_argv("fleet-worker@.service")
    name_at = unit_worker.index("--name") + 1
    assert worker[:name_at] == unit_worker[:name_at] and len(worker) == len(unit_worker)
    assert "$HOSTNAME" in worker[name_at] and unit_worker[name_at] == "%H-%i"
    # The image's default command is the web unit's.
    cmd = json.loads(re.search(r"^CMD (.*)$", docker, re.MULTILINE)[1])
    assert cmd == _unit_argv("fleet-web.service")


def test_every_variable_compose_and_the_units_use_is_documented_and_read() -> None:
    """The units and compose share one env file whose every key the example documents; every
    variable they name is in it; every key of the example is read by the settings, the
    gunicorn config or a unit (no dead setting); compose's own interpolations are explained in
    its header."""
    example = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (DEPLOY / "fleet.env.example").read_text(),
                             re.MULTILINE))
    units = {n: _unit(n) for n in UNITS}
    for name in ("fleet-web.service", "fleet-worker@.service", "fleet-broker.service"):
        assert units[name]["EnvironmentFile"] == "/etc/fleet/fleet.env"
    unit_vars = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", "".join(
        (DEPLOY / "systemd" / n).read_text() for n in UNITS)))
    compose_text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    app_env = set(compose["services"]["web"]["environment"])
    shell_vars = set(re.findall(r"\$\$\{?([A-Z_][A-Z0-9_]*)", compose_text)) - {"HOSTNAME"}
    assert unit_vars and unit_vars <= example
    assert app_env <= example, app_env - example
    assert shell_vars <= example, shell_vars - example
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", compose_text))
    header = "".join(line for line in compose_text.splitlines(True) if line.startswith("#"))
    assert interpolated and all(f"{v} " in header for v in interpolated), interpolated
    readers = ((REPO / "fleet" / "settings.py").read_text()
               + (DEPLOY / "gunicorn.conf.py").read_text())
    unread = {k for k in example if f'"{k}"' not in readers and k not in unit_vars}
    assert unread == set(), unread


def test_the_dockerfile_installs_with_the_readme_bootstrap() -> None:
    """The image runs scripts/bootstrap.sh (server profile) rather than steps of its own; that
    profile's Debian packages are a subset of the developer's; the image copies every package
    pyproject installs and the bootstrap itself."""
    docker = (DEPLOY / "Dockerfile").read_text()
    boot = (REPO / "scripts" / "bootstrap.sh").read_text()
    runs = " ".join(re.findall(r"^RUN (.*(?:\n [^\n]*)*)", docker, re.MULTILINE))
    assert "FLEET_PROFILE=server" in runs and "bash scripts/bootstrap.sh" in runs
    assert "pip install" not in runs  # the bootstrap installs; the image does not on its own
    dev = set(re.search(r"^APT_PACKAGES=\((.*)\)$", boot, re.MULTILINE)[1].split())
    server = set(re.search(r"^SERVER_PACKAGES=\((.*)\)$", boot, re.MULTILINE)[1].split())
    assert "mosquitto" in server and server - {"ca-certificates"} <= dev
    copied = {p.split()[0] for p in re.findall(r"^COPY (.*)$", docker, re.MULTILINE)}
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"^include = \[(.*)\]$", pyproject, re.MULTILINE)[1]
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in copied, package
    assert "scripts" in copied and "ENV PATH=/srv/fleet/app/.venv/bin" in docker
