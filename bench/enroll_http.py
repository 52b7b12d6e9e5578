"""Enrollment as a device does it: the SDK's ``enroll`` against gunicorn (deploy config).

Used by ``bench/enroll.py``: a gunicorn started with ``deploy/gunicorn.conf.py`` on a loopback
port (one web process, so its CPU is the server's alone), with the bench's environment
(PostgreSQL, X.509 broker access). Each timed enrollment is ``device_sdk.client.identity.
enroll``: ``POST /api/v1/enroll/challenge/``, the device's signature, ``POST /api/v1/enroll/``
(two HTTP connections, Django's whole stack: middleware, DRF, the throttle's shared rate
buckets in the database, the serializer), then the device checks and stores what it was given.

The rate limits are raised for this run (``ENROLL_RATE``, ``ENROLL_CHALLENGE_RATE``: `RATE`)
so the bench, one client address, is never throttled; the throttle still counts every request.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
RATE = "1000000/min"


@dataclass
class Web:
    """A gunicorn master and its one web process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def pids(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *(int(p) for p in path.read_text().split())]
        except OSError:
            return [self.process.pid]

    def cpu_seconds(self) -> float:
        """CPU seconds of the master and its web process so far."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_web(workdir: Path, port: int) -> Web:
    """Start gunicorn -c deploy/gunicorn.conf.py on 127.0.0.1:``port`` with this process's
    environment (the bench's settings) and wait until its web process answers."""
    env = {**os.environ, "FLEET_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
           "ENROLL_RATE": RATE, "ENROLL_CHALLENGE_RATE": RATE, "PYTHONPATH": str(ROOT)}
    log = workdir / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "--config",
             str(ROOT / "deploy" / "gunicorn.conf.py")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    web = Web(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0 and len(web.pids()) == 2:
                return web
        if time.monotonic() > deadline:
            web.stop()
            raise RuntimeError(f"gunicorn did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def enroll_over_http(web: Web, token: str, hardware: str, caps: dict[str, Any], folder: Path,
                     count: int) -> tuple[list[float], list[Any]]:
    """Enroll ``count`` new devices (state directories under ``folder``) through ``web`` with
    the device SDK; return each one's wall time (ms) and identity."""
    from device_sdk.client.identity import enroll
    from device_sdk.protocol.status import Capabilities

    capabilities = Capabilities(**caps)
    times, identities = [], []
    for i in range(count):
        state = folder / f"http-{i:05d}"
        started = time.perf_counter()
        identity = enroll(web.url, token, state_dir=state, hardware=hardware,
                          capabilities=capabilities, attempts=1)
        times.append((time.perf_counter() - started) * 1000)
        assert identity.mqtt.cert_file, "X.509 broker access answers with a certificate"
        identities.append(identity)
    return times, identities


def http_statements(token: str, hardware: str, caps: dict[str, Any]) -> int:
    """Count the SQL statements of one enrollment through Django's whole stack (in this
    process, Django's test client: the same middleware, views and throttle as gunicorn's)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from device_sdk.client.identity import public_key_pem, sign_enrollment

    key = ed25519.Ed25519PrivateKey.generate()
    client = Client(HTTP_HOST="127.0.0.1")
    with CaptureQueriesContext(connection) as queries:
        answer = client.post("/api/v1/enroll/challenge/")
        assert answer.status_code == 200, answer.content
        nonce = bytes.fromhex(answer.json()["nonce"])
        signature = sign_enrollment(key, nonce=nonce, token=token, uid="", hardware=hardware,
                                    capabilities=caps)
        answer = client.post("/api/v1/enroll/", {
            "token": token, "public_key": public_key_pem(key), "hardware": hardware,
            "capabilities": caps, "nonce": nonce.hex(), "signature": signature.hex()},
            content_type="application/json")
        assert answer.status_code == 201, answer.content
    return len(queries.captured_queries)
