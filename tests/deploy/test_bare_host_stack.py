"""The whole stack started from deploy/ the way deploy/README.md documents it for a bare host:
PostgreSQL (scripts/postgres.sh), the environment from fleet.env.example, every README step
(migrate, collectstatic, the broker unit, provision_broker_services, the web and two worker
units, nginx with the site, create_user), each unit run as its ExecStart says. Then a device
enrolls through nginx, publishes events over TLS, and the workers store them in PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, free_port, need_tool, nginx_test_config, self_signed
from tests.deploy.host_files import (
    HostLayout,
    env_file,
    exec_start,
    exec_stop,
    readme_host_steps,
    translate,
    unit_directives,
)
from tests.deploy.test_nginx_gunicorn import _wait_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

POSTGRES_SH = REPO / "scripts" / "postgres.sh"
DEVICE_HOST = "127.0.0.2"


@dataclass
class HostStack:
    """The running stack: where to reach it and what the README's steps printed."""

    layout: HostLayout
    env: dict[str, str]
    https_port: int
    cert: Path
    database_url: str
    outputs: dict[str, str] = field(default_factory=dict)  # README command -> its stdout
    logs: dict[str, Path] = field(default_factory=dict)
    token: str = ""  # an operator's API token

    def api(self, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
        """Call the API through nginx over TLS (the test certificate is the trust anchor)."""
        import ssl

        request = urllib.request.Request(
            f"https://localhost:{self.https_port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
        context = ssl.create_default_context(cafile=str(self.cert))
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _host_env(layout: HostLayout) -> dict[str, str]:
    """fleet.env.example with real secrets, test paths and ports, and this box's sizes."""
    env = {}
    for key, value in env_file().items():
        # Devices reach the broker by the fleet's public name: 127.0.0.2 stands for it (the
        # broker binds 0.0.0.0 as BROKER_HOST says, and its certificate must name this host).
        value = layout.port(layout.place(value)).replace("mqtts://fleet.example.com",
                                                         f"mqtts://{DEVICE_HOST}")
        value = value.replace("fleet.example.com", "localhost")
        if value.startswith("change-me"):
            value = secrets.token_urlsafe(32)
        env[key] = value
    # The example's URL, moved to the test cluster (trust auth: its placeholder password passes).
    assert env["DATABASE_URL"].endswith(f"@127.0.0.1:{layout.ports[5432]}/fleet"), env
    env["WEB_CONCURRENCY"], env["WEB_THREADS"] = "1", "2"  # 2 shared cores
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(layout.state),
            "LANG": "C.UTF-8", **env}


def _run(argv: list[str], env: dict[str, str], log: Path) -> str:
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def host_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostStack]:
    nginx = need_tool("nginx", "nginx")
    need_tool("mosquitto", "mosquitto")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("scripts/postgres.sh runs initdb as user postgres: needs root")
    folder = tmp_path_factory.mktemp("host")
    layout = HostLayout(state=folder / "var", ports={1883: free_port(), 8883: free_port(),
                                                     5432: free_port(), 8000: free_port()})
    layout.state.mkdir(mode=0o750)
    (layout.state / "broker").mkdir(mode=0o750)
    # Outside pytest's private (0700) folders: initdb runs as user postgres.
    pg_dir = Path(tempfile.mkdtemp(prefix="fleet-host-pg-")) / "pg"
    pg_dir.parent.chmod(0o755)
    env = _host_env(layout)
    cert, key = self_signed(folder)
    https_port, http_port = free_port(), free_port()
    stack = HostStack(layout, env, https_port, cert, env["DATABASE_URL"])
    processes: list[subprocess.Popen] = []
    broker_stop = exec_stop("fleet-broker.service", layout)
    try:
        started = subprocess.run(["bash", str(POSTGRES_SH), "start", str(pg_dir),
                                  str(layout.ports[5432])], capture_output=True, text=True,
                                 check=False, timeout=120)
        assert started.returncode == 0, started.stderr
        admin_url = started.stdout.strip().splitlines()[-1]
        subprocess.run(["psql", admin_url, "-qc", "CREATE DATABASE fleet"], check=True,
                       capture_output=True, timeout=60)
        for n, step in enumerate(translate(readme_host_steps())):
            if step.kind == "manage":
                argv = [layout.place(a) for a in step.argv]
                stack.outputs[" ".join(step.argv[1:])] = _run(argv, env, folder / f"step{n}.log")
            elif step.kind == "units":
                for unit in step.argv:
                    base, _, instance = unit.partition("@")
                    name = f"{base}@.service" if instance else f"{unit}.service"
                    argv = exec_start(name, env, layout, instance)
                    log = folder / f"{unit}.log"
                    stack.logs[unit] = log
                    kind = unit_directives(name)["Type"][0]
                    if kind == "forking":  # the broker: the start command returns once it runs
                        _run(argv, env, log)
                    else:
                        with log.open("wb") as out:
                            processes.append(subprocess.Popen(
                                argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True))
                        if base == "fleet-web":
                            _wait_port(layout.ports[8000], processes[-1], log)
            elif step.kind == "nginx":
                conf = nginx_test_config(folder, http_port=http_port, https_port=https_port,
                                         upstream_port=layout.ports[8000], cert=cert, key=key)
                # The site serves collectstatic's output from the state folder.
                site = (folder / "site.conf").read_text().replace(
                    f"{folder}/static/", f"{layout.state}/static/")
                (folder / "site.conf").write_text(site)
                processes.append(subprocess.Popen(
                    [nginx, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                _wait_port(https_port, processes[-1], folder / "error.log")
        assert len(processes) == 4, "web, 2 workers, nginx"
        _wait_workers(stack)
        stack.token = _operator_token(stack)
        yield stack
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run(broker_stop, cwd=REPO, env=env, check=False, timeout=60)
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(pg_dir),
                        str(layout.ports[5432])], check=False, timeout=60)
        shutil.rmtree(pg_dir.parent, ignore_errors=True)


def _wait_workers(stack: HostStack, timeout: float = 60) -> None:
    """Both worker units hold their shared subscriptions before devices send."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [stack.logs[u].read_text(errors="replace") for u in stack.logs if "worker@" in u]
        if len(logs) == 2 and all("subscriptions granted" in t for t in logs):
            return
        time.sleep(0.3)
    raise AssertionError("workers not subscribed: " + " | ".join(
        stack.logs[u].read_text()[-1500:] for u in stack.logs if "worker@" in u))


def _operator_token(stack: HostStack) -> str:
    """An operator with an API token, made the README's way (``manage.py create_user``)."""
    out = _run([str(REPO / ".venv" / "bin" / "python"), "manage.py", "create_user", "ci",
                "--role", "operator", "--api-token", "--password", "correct-horse-battery"],
               stack.env, stack.layout.state / "create_user_ci.log")
    return next(line.split("=", 1)[1] for line in out.splitlines()
                if line.startswith("api_token="))


def test_the_readme_steps_start_every_service(host_stack: HostStack) -> None:
    """The admin the README makes exists; the workers carry the units' names; the web unit
    serves the API and collectstatic's files through nginx."""
    assert "user=alice role=admin" in host_stack.outputs["manage.py create_user alice --role admin"]
    for unit in ("fleet-worker@1", "fleet-worker@2"):
        assert f"worker testhost-{unit[-1]} started" in host_stack.logs[unit].read_text()
    status, body = host_stack.api("GET", "/api/v1/hardware-profiles/", host_stack.token)
    assert status == 200 and "stm32f746" in [p["name"] for p in body["results"]]
    import ssl

    context = ssl.create_default_context(cafile=str(host_stack.cert))
    with urllib.request.urlopen(f"https://localhost:{host_stack.https_port}/static/admin/css/"
                                "base.css", context=context, timeout=30) as response:
        assert response.status == 200 and b"{" in response.read()


def test_a_device_event_reaches_postgresql_through_the_deployed_stack(
        host_stack: HostStack, tmp_path: Path) -> None:
    """Enrollment through nginx (the web unit provisions the broker credential), events over
    the broker's TLS listener, stored by the worker units in PostgreSQL."""
    import psycopg

    from device_sdk.client.identity import DeviceIdentity
    from device_sdk.mqtt import BrokerEndpoint, connect, new_client
    from device_sdk.protocol.events import Event, EventBatch, encode_batch

    status, claim = host_stack.api("POST", "/api/v1/enrollment-tokens/", host_stack.token,
                                   {"max_uses": 1})
    assert status == 201, claim
    state = tmp_path / "device"
    device_env = {**os.environ, "SSL_CERT_FILE": str(host_stack.cert), "PYTHONPATH": str(REPO)}
    enrolled = subprocess.run(
        [sys.executable, "-m", "device_sdk", "enroll", "--server",
         f"https://localhost:{host_stack.https_port}", "--token", claim["token"],
         "--hardware", "stm32f746", "--state-dir", str(state)],
        cwd=REPO, env=device_env, capture_output=True, text=True, check=False, timeout=120)
    assert enrolled.returncode == 0, enrolled.stderr
    identity = DeviceIdentity.load(state)
    assert identity.mqtt.url == f"mqtts://{DEVICE_HOST}:{host_stack.layout.ports[8883]}"

    endpoint = BrokerEndpoint.parse(identity.mqtt.url)
    client = new_client(endpoint, client_id=identity.device_id,
                        username=identity.mqtt.username, password=identity.mqtt.credential,
                        ca_certs=identity.mqtt.ca_file)
    connect(client, endpoint, wait_s=10)
    now_ms = int(time.time() * 1000)
    batches = [EventBatch.of(seq, 0, [Event(now_ms + 1000 * (seq * 4 + i), i % 3, 200, 150)
                                      for i in range(4)]) for seq in (1, 2, 3)]
    for batch in batches:
        info = client.publish(f"fleet/v1/{identity.device_id}/events", encode_batch(batch), qos=1)
        info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()

    deadline = time.monotonic() + 30
    rows: list[tuple[int, int]] = []
    with psycopg.connect(host_stack.database_url, autocommit=True) as db:
        while time.monotonic() < deadline:
            rows = db.execute(
                "SELECT e.seq, e.label FROM telemetry_event e JOIN devices_device d "
                "ON d.id = e.device_id WHERE d.uid = %s ORDER BY e.seq, e.ts",
                (identity.device_id,)).fetchall()
            if len(rows) >= 12:
                break
            time.sleep(0.3)
    assert rows == [(b.seq, e.label) for b in batches for e in b.events]
