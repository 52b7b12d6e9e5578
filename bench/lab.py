"""What the end-to-end benches set up alike: a broker with fast $SYS counters and Django
configured against it with a throwaway SQLite database.

Imported by ``bench/rollout.py`` (and its ``rollout_fleet.py``) and ``bench/simulator.py``
and ``bench/ingest.py`` (run as scripts: ``bench/`` is on ``sys.path`` as their own folder).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_broker(workdir: Path, bench: str) -> Any:
    """Return an unstarted Mosquitto with the project's config plus $SYS every second
    (default: every 10 s), on free loopback ports, kept in ``workdir / "broker"``."""
    from fleet.broker.mosquitto import DEFAULT_TEMPLATE, MosquittoInstance

    template = workdir / "mosquitto.conf.template"
    template.write_text(DEFAULT_TEMPLATE.read_text() + f"\n# {bench}\nsys_interval 1\n")
    return MosquittoInstance(workdir / "broker", free_port(), free_port(),
                             secrets.token_urlsafe(16), template=template)


def setup_django(workdir: Path, broker: Any, database_url: str | None = None) -> dict[str, str]:
    """Point Django at ``database_url`` (default: a new SQLite file in ``workdir``) and at
    ``broker`` (dynamic security), migrate, and return the environment set (a worker
    subprocess starts from it)."""
    var_dir = workdir / "var"
    var_dir.mkdir(exist_ok=True)
    # DEBUG off, as in production: with it on, Django formats and keeps every query it runs
    # (the worker subprocess inherits this environment).
    env = {
        "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "0",
        "SECRET_KEY": "bench-" + secrets.token_hex(24),
        "FLEET_VAR_DIR": str(var_dir), "DATABASE_URL": database_url or f"sqlite:///{workdir / 'fleet.sqlite3'}",
        "ARTIFACT_ROOT": str(var_dir / "artifacts"),
        "FLEET_KEK": "bench-kek-" + secrets.token_hex(16),
        "MQTT_URL": broker.url, "MQTT_DEVICE_URL": broker.tls_url,
        "MQTT_ADMIN_USERNAME": broker.admin_username,
        "MQTT_ADMIN_PASSWORD": broker.admin_password, "MQTT_CA_FILE": str(broker.ca_cert),
        "BROKER_ACCESS": "dynsec", "FLEET_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


# -- bulk enrollment -------------------------------------------------------------------------
#
# In Mosquitto 2.0.11 every createRole/createClient makes the dynamic-security plugin rewrite
# its whole JSON file, so one real enrollment costs time in proportion to the fleet already
# enrolled (~75 ms at 1,000 devices): 10,000 would take about an hour. Benches that need that
# many enroll through the same do_enroll_device with the broker step recorded, then write the
# recorded clients into the plugin's file while the broker is stopped, exactly as the plugin
# stores what DynsecAccess.provision_device sends.

DYNSEC_ITERATIONS = 101  # what the plugin itself uses for createClient in 2.0.11
DYNSEC_SALT_BYTES = 12


class RecordingAccess:
    """A broker-access backend that only records device credentials, for the bulk path."""

    def __init__(self) -> None:
        self.devices: dict[str, str] = {}

    def provision_device(self, uid: str, password: str) -> None:
        """Record the credential the real backend would have created."""
        self.devices[uid] = password

    def __getattr__(self, name: str) -> Any:
        # AttributeError, not NotImplementedError: enrollment asks whether the backend issues
        # certificates (a runtime Protocol check, i.e. hasattr), and this one does not.
        raise AttributeError(f"the bulk enrollment path records devices only, not {name}")


@contextmanager
def recorded_broker_steps() -> Iterator[RecordingAccess]:
    """Within the block, enrollment records broker credentials instead of sending them."""
    from fleet.devices import actions

    recorder = RecordingAccess()
    real = actions.broker_access
    actions.broker_access = lambda: recorder  # type: ignore[assignment]
    try:
        yield recorder
    finally:
        actions.broker_access = real  # type: ignore[assignment]


def write_dynsec_devices(path: Path, devices: dict[str, str]) -> float:
    """Add each device's client and role to the plugin's JSON (the broker must be stopped);
    return the seconds it took.

    Stored as the plugin stores what DynsecAccess.provision_device sends: the client (its uid,
    bound client id, PBKDF2-SHA512 hash of its own password, role ``device-<uid>``) and the
    role with ``device_grants(uid)``; deny-by-default ACL access as DynsecAccess sets it.
    """
    from fleet.broker.access import device_grants
    from fleet.broker.dynsec import DEFAULT_ACL_ACCESS, KIND_DEVICE, _acl, device_role

    started = time.monotonic()
    data = json.loads(path.read_text())
    data["defaultACLAccess"] = {a["acltype"]: a["allow"] for a in DEFAULT_ACL_ACCESS}
    clients, roles = data.setdefault("clients", []), data.setdefault("roles", [])
    for uid, password in devices.items():
        salt = os.urandom(DYNSEC_SALT_BYTES)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
        clients.append({
            "username": uid, "clientid": uid, "textname": KIND_DEVICE,
            "roles": [{"rolename": device_role(uid)}],
            "password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": DYNSEC_ITERATIONS,
        })
        roles.append({"rolename": device_role(uid), "acls": [_acl(g) for g in device_grants(uid)]})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return time.monotonic() - started


def cpu_seconds(pid: int | None, tid: int | None = None) -> float:
    """Return the CPU seconds (user + system) process ``pid`` has used so far, or only its
    thread ``tid`` (0 once gone)."""
    if pid is None:
        return 0.0
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds() -> dict[str, float]:
    """Return this process's CPU seconds per thread name (threads of one name summed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


class CpuMeter:
    """CPU seconds of the processes of an end-to-end bench between :meth:`start` and
    :meth:`stop`, with the load average, so a wall-clock figure can be read against them."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self._threads: dict[str, float] = {}
        self.figures: dict[str, Any] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._threads = thread_cpu_seconds()

    def stop(self) -> dict[str, Any]:
        """Return {process: seconds, ..., "threads": {name: seconds}, "loadavg": [...]}."""
        self.figures = {name: round(cpu_seconds(pid) - self._before[name], 2)
                        for name, pid in self.pids.items()}
        threads = thread_cpu_seconds()
        self.figures["threads"] = {
            name: round(value - self._threads.get(name, 0.0), 2)
            for name, value in sorted(threads.items(), key=lambda kv: -kv[1])
            if value - self._threads.get(name, 0.0) >= 0.05}
        self.figures["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        return self.figures


def remove_workdir(workdir: Path) -> None:
    """Remove a bench's temporary folder, unless FLEET_BENCH_KEEP=1 asks to keep it."""
    import shutil
    import sys

    if os.environ.get("FLEET_BENCH_KEEP"):
        print(f"kept {workdir}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def print_figures(results: list[dict[str, Any]]) -> None:
    """Print the figures as JSON lines on stdout (progress went to stderr)."""
    for item in results:
        print(json.dumps(item))


def finish(workdir: Path, started: float, results: list[dict[str, Any]]) -> None:
    """Remove ``workdir`` (kept with FLEET_BENCH_KEEP=1), then print the figures."""
    import sys

    remove_workdir(workdir)
    print(f"total {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    print_figures(results)
