"""Read the deployment files as a host would use them: the environment file, the systemd units'
commands and the bare-host steps of deploy/README.md, moved onto loopback ports and a test
folder by one table of substitutions (never by rewriting what a command does)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.conftest import DEPLOY, REPO

# Host paths of the deployment (deploy/README.md) and where the test puts each.
APP, VENV, STATE = "/srv/fleet/app", "/srv/fleet/venv", "/var/lib/fleet"
# Steps of the README that prepare a host (user, folders, code, venv, copies of the files the
# test reads in place): nothing to run here. Any other step must be translated below.
PREPARATION = ("useradd ", "install ", "git clone ", f"{VENV}/bin/pip install ", "cp ",
               "set -a; . /etc/fleet/fleet.env;", "python3 -m venv ", "ln -s ",
               "systemctl daemon-reload", "cd /srv/fleet/app")


@dataclass(frozen=True)
class HostLayout:
    """Where the test runs the host's state and which loopback ports stand for the real ones."""

    state: Path  # stands for /var/lib/fleet
    ports: dict[int, int]  # documented port -> free loopback port (1883, 8883, 5432, 8000)
    hostname: str = "testhost"

    def place(self, text: str) -> str:
        """Move host paths into this checkout and the test folder."""
        return (text.replace(VENV, str(REPO / ".venv")).replace(APP, str(REPO))
                .replace(STATE, str(self.state)))

    def port(self, text: str) -> str:
        """Replace documented ports (as ``:PORT`` or ``--...port PORT``) by the test's."""
        for real, test in self.ports.items():
            text = re.sub(rf"(?<=:){real}\b|(?<=port ){real}\b", str(test), text)
        return text


def env_file(path: Path = DEPLOY / "fleet.env.example") -> dict[str, str]:
    """Parse a systemd EnvironmentFile (``KEY=value`` lines, ``#`` comments)."""
    pairs = re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", path.read_text(), re.MULTILINE)
    return {k: v.strip() for k, v in pairs}


def unit_directives(name: str) -> dict[str, list[str]]:
    """Return a unit's ``Key=value`` directives (every occurrence, in order)."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if match:
            out.setdefault(match[1], []).append(match[2])
    return out


def exec_start(unit: str, env: dict[str, str], layout: HostLayout, instance: str = "") -> list[str]:
    """Return a unit's ExecStart as argv, with systemd's specifiers and ``${VAR}`` expanded."""
    template = unit.replace(f"@{instance}.", "@.") if instance else unit
    line = unit_directives(template)["ExecStart"][0]
    line = line.replace("%H", layout.hostname).replace("%i", instance)
    line = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: env[m[1]], line)
    return shlex.split(layout.port(layout.place(line)))


def exec_stop(unit: str, layout: HostLayout) -> list[str]:
    """Return a unit's ExecStop as argv (the broker's stop command)."""
    return shlex.split(layout.port(layout.place(unit_directives(unit)["ExecStop"][0])))


def readme_host_steps() -> list[str]:
    """Return the shell lines of deploy/README.md's "On a host (systemd)" block."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("## On a host (systemd)", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]


@dataclass(frozen=True)
class Step:
    """One README line as the test carries it out."""

    kind: str  # "manage" (a runuser'd command), "units" (systemctl enable --now), "nginx"
    argv: tuple[str, ...]


def translate(lines: list[str]) -> Iterator[Step]:
    """Turn the README's lines into steps; fail on a line the test does not know how to run."""
    for line in lines:
        for part in (p.strip() for p in line.split("&&")):
            if part.startswith(PREPARATION):
                continue
            if part.startswith("runuser -u fleet -- "):
                yield Step("manage", tuple(shlex.split(part.removeprefix("runuser -u fleet -- "))))
            elif part.startswith("systemctl enable --now "):
                yield Step("units", tuple(part.removeprefix("systemctl enable --now ").split()))
            elif part == "systemctl reload nginx":
                yield Step("nginx", ())
            else:
                raise AssertionError(f"deploy/README.md has a step this test cannot run: {part!r}")
