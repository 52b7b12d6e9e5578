"""Enrollment is rate-limited per real client, in one bucket shared by every web process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from fleet.core.throttling import client_ip
from testkit.worker import database_url

ROOT = Path(__file__).resolve().parents[3]


def request_from(remote: str, forwarded: str | None = None) -> SimpleNamespace:
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return SimpleNamespace(META=meta)


@override_settings(TRUSTED_PROXY_COUNT=0)
def test_without_trusted_proxies_x_forwarded_for_is_ignored() -> None:
    assert client_ip(request_from("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_one_trusted_proxy_means_the_rightmost_forwarded_address() -> None:
    assert client_ip(request_from("10.0.0.2", "1.1.1.1, 203.0.113.9")) == "203.0.113.9"


@override_settings(TRUSTED_PROXY_COUNT=2)
def test_two_trusted_proxies_mean_the_second_from_the_right() -> None:
    assert client_ip(request_from("10.0.0.3", "6.6.6.6, 203.0.113.9, 10.0.0.2")) == "203.0.113.9"


@override_settings(TRUSTED_PROXY_COUNT=2)
def test_a_request_that_skipped_the_proxies_is_keyed_on_its_peer() -> None:
    assert client_ip(request_from("203.0.113.9", "6.6.6.6")) == "203.0.113.9"
    assert client_ip(request_from("203.0.113.9", "junk, 10.0.0.2")) == "203.0.113.9"


@pytest.fixture
def enroll_rate_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"enroll": "3/min"})


@pytest.mark.django_db
@pytest.mark.parametrize("proxies", [0, 1])
def test_a_spoofed_x_forwarded_for_gets_no_fresh_bucket(enroll_rate_3: None, proxies: int) -> None:
    """Each attempt claims another address; the client behind them is the same."""
    client = APIClient(REMOTE_ADDR="10.0.0.2" if proxies else "203.0.113.9")
    with override_settings(TRUSTED_PROXY_COUNT=proxies):
        codes = []
        for n in range(5):
            claimed = f"198.51.100.{n}" + (", 203.0.113.9" if proxies else "")
            codes.append(client.post("/api/v1/enroll/", {}, format="json",
                                     HTTP_X_FORWARDED_FOR=claimed).status_code)
    assert codes[:3] == [400, 400, 400]
    assert codes[3:] == [429, 429]
    # Another real client still has its own bucket.
    other = APIClient(REMOTE_ADDR="10.0.0.2" if proxies else "203.0.113.10")
    with override_settings(TRUSTED_PROXY_COUNT=proxies):
        answer = other.post("/api/v1/enroll/", {}, format="json",
                            HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.10")
    assert answer.status_code == 400


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_web_processes(transactional_db: None, tmp_path: Path) -> Iterator[list[str]]:
    """Two real `runserver` processes on the test database, enrollment limited to 3/min."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MQTT_", "DATABASE_", "DJANGO_", "FLEET_", "BROKER_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "1",
                "FLEET_VAR_DIR": str(tmp_path), "BROKER_ACCESS": "none",
                "DATABASE_URL": database_url(connection.settings_dict),
                "ENROLL_RATE": "3/min", "PYTHONUNBUFFERED": "1"})
    procs, urls = [], []
    for n in range(2):
        port = _free_port()
        log = open(tmp_path / f"web{n}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append((subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload",
             "--skip-checks"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/schema/", timeout=2).close()
                    break
                except (OSError, urllib.error.URLError):
                    if time.monotonic() > deadline:
                        raise AssertionError((tmp_path / "web0.log").read_text()) from None
                    time.sleep(0.2)
        yield urls
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(10)
            log.close()


def _enroll_status(url: str) -> int:
    request = urllib.request.Request(f"{url}/api/v1/enroll/", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_the_enrollment_limit_holds_across_two_web_processes(
    two_web_processes: list[str],
) -> None:
    """Alternating between two processes gives no client more than the one limit."""
    first, second = two_web_processes
    codes = [_enroll_status(url) for url in (first, second, first, second, first)]
    assert codes == [400, 400, 400, 429, 429]


@pytest.mark.django_db
def test_a_refused_client_is_told_when_to_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """3/min: a token every 20 s, so the fourth request at once waits 20 s (Retry-After)."""
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"enroll_challenge": "3/min"})
    client = APIClient(REMOTE_ADDR="203.0.113.9")
    codes = [client.post("/api/v1/enroll/challenge/").status_code for _ in range(3)]
    refused = client.post("/api/v1/enroll/challenge/")
    assert codes == [200, 200, 200]
    assert refused.status_code == 429 and refused.json()["reason"] == "throttled"
    assert refused["Retry-After"] == "20"


@pytest.mark.django_db
def test_the_throttle_costs_one_statement_a_request(
    django_assert_num_queries: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A challenge writes nothing: its one statement is the throttle's upsert. (Every
    PRUNE_EVERY-th call of a process also prunes: the count starts afresh, so not this one.)"""
    import itertools

    from fleet.core import buckets

    monkeypatch.setattr(buckets, "_calls", itertools.count(1))
    client = APIClient(REMOTE_ADDR="203.0.113.9")
    with django_assert_num_queries(1) as captured:
        assert client.post("/api/v1/enroll/challenge/").status_code == 200
    assert "fleet_rate_bucket" in captured.captured_queries[0]["sql"]
