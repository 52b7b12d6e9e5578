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
import time
from pathlib import Path
from typing import Any

from lab import cpu_seconds

from testkit.web import Gunicorn, start_gunicorn

RATE = "1000000/min"


def start_web(workdir: Path, port: int) -> Gunicorn:
    """Start gunicorn (deploy config, one web process) on 127.0.0.1:``port`` with this
    process's environment (the bench's settings) and the raised rate limits; return once its
    web process answers (``testkit.web``)."""
    env = {**os.environ, "ENROLL_RATE": RATE, "ENROLL_CHALLENGE_RATE": RATE}
    return start_gunicorn(env, workdir / "gunicorn.log", workers=1, port=port)


def web_cpu_seconds(web: Gunicorn) -> float:
    """CPU seconds of the master and its web process so far."""
    return sum(cpu_seconds(pid) for pid in web.pids())


def enroll_over_http(web: Gunicorn, token: str, hardware: str, caps: dict[str, Any], folder: Path,
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
