"""Integration fixtures: the real fleet worker (`manage.py fleet_worker`) as a subprocess.

The worker runs with the production settings (``fleet.settings``), pointed by ``DATABASE_URL``
at the database this test process uses (a SQLite file or PostgreSQL's ``test_*`` database,
read from ``django.db.connection.settings_dict`` at test time), so tests using it need
``@pytest.mark.django_db(transaction=True)``: the worker only sees committed rows.

Each worker writes its log to a file; when a test fails, the logs of the workers it started
are added to the report. Loaded for the whole suite by tests/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance

ROOT = Path(__file__).resolve().parents[1]  # the repository: manage.py, deploy/
# Logged once the broker granted the worker's shared subscriptions (fleet/intake/worker.py).
READY_LINE = "subscriptions granted"
START_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 20_000
_workers_key = pytest.StashKey[list["WorkerProcess"]]()


def database_url(settings_dict: dict[str, Any]) -> str:
    """Return a DATABASE_URL naming the database ``settings_dict`` describes.

    During a test, Django's connection settings name the test database, so a subprocess
    given this URL works on the very rows the test writes (once they are committed).
    """
    engine, name = settings_dict["ENGINE"], str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        if name == ":memory:" or name.startswith("file:") or not os.path.isabs(name):
            raise RuntimeError(f"a subprocess cannot open the SQLite database {name!r}")
        return f"sqlite:///{name}"  # an absolute path: sqlite:////tmp/...
    if engine.endswith("postgresql"):
        user = quote(settings_dict.get("USER") or "", safe="")
        password = quote(settings_dict.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{quote(name, safe='')}"
    raise RuntimeError(f"no DATABASE_URL for engine {engine}")


class WorkerProcess:
    """One `manage.py fleet_worker --no-jobs` subprocess under a stable name (its client id).

    ``kill`` sends SIGKILL (no clean disconnect, no ack of what it was handling); ``start``
    again with the same name resumes the broker session, as a restarted service would.
    ``jobs=True`` runs its conversion-job loop too (as the deployed worker does);
    ``rollouts=True`` its rollout controller and carousel.
    """

    def __init__(self, name: str, env: dict[str, str], log_path: Path,
                 broker: MosquittoInstance, *, jobs: bool = False,
                 rollouts: bool = False) -> None:
        self.name = name
        self.jobs = jobs
        self.rollouts = rollouts
        self.broker = broker
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        """Return whether the subprocess is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the worker and wait until the broker granted its subscriptions."""
        if self.running:
            raise RuntimeError(f"worker {self.name} is already running")
        ready_before = self.log().count(READY_LINE)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts} of {self.name}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "fleet_worker", "--name", self.name,
                 *(() if self.jobs else ("--no-jobs",)),
                 *(() if self.rollouts else ("--no-rollouts",))],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.log().count(READY_LINE) <= ready_before:
            if not self.running:
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not subscribed after {timeout:.0f} s:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the worker with SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Kill the worker and start it again under the same name."""
        self.kill()
        self.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker cleanly (SIGTERM), killing it if it does not exit in ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        """Return everything the worker logged so far (all its starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


WorkerFactory = Callable[..., WorkerProcess]


def end_session(broker: MosquittoInstance, client_id: str, username: str, password: str) -> None:
    """Discard a stopped worker's persistent session on the broker.

    A session outlives its process (SESSION_EXPIRY_S): Mosquitto goes on handing it its share
    of every shared subscription and queues it. Connecting with a clean start and no session
    expiry replaces the session, and closing ends it.
    """
    endpoint = BrokerEndpoint(broker.host, broker.port, tls=False)
    client = new_client(endpoint, client_id=client_id, username=username, password=password)
    connect(client, endpoint, clean_start=True, wait_s=5)
    client.disconnect()
    client.loop_stop()


def worker_env(broker: MosquittoInstance, username: str, password: str, group: str,
               var_dir: Path) -> dict[str, str]:
    """Return the environment of a worker using the test database and ``broker``."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MQTT_", "DATABASE_", "DJANGO_", "FLEET_", "BROKER_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "FLEET_DEBUG": "1",
        "FLEET_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url(connection.settings_dict),
        "MQTT_URL": broker.url,
        "MQTT_WORKER_USERNAME": username,
        "MQTT_WORKER_PASSWORD": password,
        "MQTT_WORKER_GROUP": group,
        # The worker grants each offered device its package's fan-out (and takes it back).
        "MQTT_ADMIN_USERNAME": broker.admin_username,
        "MQTT_ADMIN_PASSWORD": broker.admin_password,
        "BROKER_ACCESS": "dynsec",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def worker_factory(request: pytest.FixtureRequest,
                   tmp_path: Path) -> Iterator[WorkerFactory]:
    """Return a maker of real worker subprocesses; every one is stopped at teardown.

    ``make(broker, name=..., jobs=..., rollouts=...)`` provisions the worker identity on ``broker`` (the
    session broker or a ``fresh_broker``), then starts the worker and waits until it consumes.
    Workers of one test share one identity and, by default, one shared-subscription group.
    """
    made: list[WorkerProcess] = []
    request.node.stash[_workers_key] = made
    identity = ("fleet-worker-" + secrets.token_hex(3), secrets.token_urlsafe(16))
    group = "ingest-" + secrets.token_hex(3)  # tests sharing the session broker stay apart
    provisioned: set[int] = set()

    def make(broker: MosquittoInstance, name: str | None = None, *,
             start: bool = True, jobs: bool = False, rollouts: bool = False,
             extra_env: dict[str, str] | None = None) -> WorkerProcess:
        if broker.port not in provisioned:
            with DynsecAccess(broker.host, broker.port, broker.admin_username,
                              broker.admin_password) as access:
                access.provision_service(*identity, ServiceRole.WORKER)
            provisioned.add(broker.port)
        name = name or f"w{len(made)}-{secrets.token_hex(3)}"
        var_dir = tmp_path / f"worker-{name}"
        var_dir.mkdir(exist_ok=True)
        env = {**worker_env(broker, identity[0], identity[1], group, var_dir),
               **(extra_env or {})}
        worker = WorkerProcess(name, env, tmp_path / f"worker-{name}.log", broker, jobs=jobs,
                               rollouts=rollouts)
        made.append(worker)
        if start:
            worker.start()
        return worker

    yield make
    for worker in made:
        worker.stop()
    for worker in made:  # or the broker keeps queueing their share for the rest of the run
        if worker.broker.is_running():
            end_session(worker.broker, worker.name, *identity)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Add the logs of a failed test's workers to its report."""
    report = yield
    workers = item.stash.get(_workers_key, [])
    if report.failed and workers:
        for worker in workers:
            text = worker.log()
            if len(text) > LOG_TAIL_CHARS:
                text = "[...]\n" + text[-LOG_TAIL_CHARS:]
            report.sections.append((f"worker {worker.name} log ({worker.log_path})", text))
    return report
