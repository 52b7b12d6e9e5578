"""The production web path for real: nginx with the deploy site (TLS, proxy headers) in front
of gunicorn started with deploy/gunicorn.conf.py, on loopback ports."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.web import running_gunicorn
from tests.deploy.conftest import REPO, free_port, need_tool, nginx_test_config, self_signed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The "real" client: another loopback address, so it differs from nginx's own (127.0.0.1).
CLIENT = "127.0.0.2"
PYTHON = str(REPO / ".venv" / "bin" / "python")


@dataclass
class Stack:
    """A running nginx + gunicorn pair and what a test needs to talk to it."""

    https_port: int
    http_port: int
    token: str
    database: Path
    web_log: Path

    def request(self, method: str, path: str, body: dict | None = None,
                headers: dict[str, str] | None = None, *, source: str = CLIENT,
                tls: bool = True) -> tuple[int, dict[str, str], bytes]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, context=context, source_address=(source, 0),
                timeout=30)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port,
                                              source_address=(source, 0), timeout=30)
        all_headers = {"Host": "localhost", "Authorization": f"Token {self.token}",
                       **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        try:
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Migrate a fresh SQLite database, make an operator with a token, start gunicorn with the
    deploy config (production settings: no FLEET_DEBUG) and nginx with the deploy site."""
    nginx = need_tool("nginx", "nginx")
    folder = tmp_path_factory.mktemp("web")
    https_port, http_port = free_port(), free_port()
    database = folder / "fleet.sqlite3"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
        "SECRET_KEY": secrets.token_urlsafe(48), "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "DATABASE_URL": f"sqlite:///{database}", "FLEET_VAR_DIR": str(folder / "var"),
        "FLEET_KEK": secrets.token_urlsafe(32), "MQTT_ADMIN_PASSWORD": "not-contacted",
        "TRUSTED_PROXY_COUNT": "1", "WEB_THREADS": "2", "PYTHONPATH": str(REPO),
    }
    for args in (["migrate", "--noinput"],
                 ["create_user", "ci", "--role", "operator", "--api-token",
                  "--password", "correct-horse-battery"]):
        done = subprocess.run([PYTHON, "manage.py", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    token = next(line.split("=", 1)[1] for line in done.stdout.splitlines()
                 if line.startswith("api_token="))

    with running_gunicorn(env, folder / "gunicorn.log", workers=1) as web:
        cert, key = self_signed(folder)
        conf = nginx_test_config(folder, http_port=http_port, https_port=https_port,
                                 upstream_port=web.port, cert=cert, key=key)
        checked = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(folder)],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        proxy = subprocess.Popen([nginx, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(https_port, proxy, folder / "error.log")
            yield Stack(https_port, http_port, token, database, web.log)
        finally:
            proxy.terminate()
            try:
                proxy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proxy.kill()


def test_nginx_accepts_the_site(stack: Stack) -> None:
    """``nginx -t`` passed on the site in the fixture; plain HTTP is redirected to HTTPS."""
    status, headers, _ = stack.request("GET", "/api/v1/devices/", tls=False)
    assert status == 301
    assert headers["Location"] == "https://localhost/api/v1/devices/"


def test_the_api_answers_through_nginx_and_gunicorn(stack: Stack) -> None:
    """An authenticated API call over TLS reaches the app and comes back."""
    status, _, body = stack.request("GET", "/api/v1/hardware-profiles/")
    assert status == 200, body[:500]
    names = [p["name"] for p in json.loads(body)["results"]]
    assert "stm32f746" in names
    status, _, body = stack.request("GET", "/api/v1/devices/", headers={"Authorization": "Token x"})
    assert status == 401 and json.loads(body)["reason"] in ("not_authenticated",
                                                           "authentication_failed")


def test_gunicorn_logs_the_real_client_not_the_proxy(stack: Stack) -> None:
    """nginx overwrites X-Forwarded-For with the address it saw (a client's forged value never
    reaches the app); the access log names the client, then the proxy."""
    status, _, _ = stack.request("GET", "/api/v1/hardware-profiles/?probe=xff",
                                 headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 200
    time.sleep(0.3)
    lines = [line for line in stack.web_log.read_text().splitlines() if "probe=xff" in line]
    assert lines and lines[-1].startswith(f"{CLIENT} via 127.0.0.1 "), lines
    assert "203.0.113.9" not in lines[-1]


def test_the_app_sees_the_real_client_address(stack: Stack) -> None:
    """With TRUSTED_PROXY_COUNT=1 (the deploy setting behind this nginx) the audit log records
    the client's address, not nginx's, for a write through the proxy."""
    if "TRUSTED_PROXY_COUNT" not in (REPO / "fleet" / "settings.py").read_text():
        pytest.skip("this checkout's settings predate TRUSTED_PROXY_COUNT (server hardening)")
    status, _, body = stack.request("POST", "/api/v1/groups/", {"name": "via-nginx"},
                                    headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 201, body[:500]
    with sqlite3.connect(stack.database) as db:
        (address,) = db.execute("SELECT remote_addr FROM audit_auditlog WHERE action LIKE "
                                "'%create%' AND object_repr = 'via-nginx'").fetchone()
    assert address == CLIENT
