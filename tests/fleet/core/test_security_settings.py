"""Security settings come from the environment with production-safe defaults; a server that
cannot administer the broker is refused outside debug, and a revocation then fails loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from fleet.broker.configured import BrokerNotConfigured, require_broker_access, reset_broker_access
from fleet.devices.actions import do_revoke_device
from fleet.devices.models import Device
from tests.conftest import post_enroll

ROOT = Path(__file__).resolve().parents[3]
SHOWN = ["DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
         "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER", "BROKER_ACCESS", "METRICS_PUBLIC",
         "TRUSTED_PROXY_COUNT"]


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Import fleet.settings in a fresh interpreter with exactly ``env`` (plus PATH)."""
    code = ("import json; from fleet import settings as s; "
            f"print(json.dumps({{k: getattr(s, k) for k in {SHOWN!r}}}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), **env}, timeout=60,
                          check=False)


def settings_of(**env: str) -> dict[str, object]:
    done = load_settings(**env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


PRODUCTION = {"SECRET_KEY": "x" * 50, "MQTT_ADMIN_PASSWORD": "pw"}


def test_production_defaults_are_https_only() -> None:
    s = settings_of(**PRODUCTION)
    assert s["SECURE_SSL_REDIRECT"] and s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert s["SECURE_PROXY_SSL_HEADER"] is None  # no proxy trusted: the header is not believed
    assert s["METRICS_PUBLIC"] is False


def test_debug_serves_plain_http_on_loopback() -> None:
    s = settings_of(FLEET_DEBUG="1")
    assert not (s["SECURE_SSL_REDIRECT"] or s["SESSION_COOKIE_SECURE"] or s["CSRF_COOKIE_SECURE"])
    assert s["SECURE_HSTS_SECONDS"] == 0


def test_each_https_setting_is_read_from_the_environment() -> None:
    s = settings_of(**PRODUCTION, SECURE_SSL_REDIRECT="0", SESSION_COOKIE_SECURE="0",
                    CSRF_COOKIE_SECURE="0", SECURE_HSTS_SECONDS="60", TRUSTED_PROXY_COUNT="1")
    assert not (s["SECURE_SSL_REDIRECT"] or s["SESSION_COOKIE_SECURE"] or s["CSRF_COOKIE_SECURE"])
    assert s["SECURE_HSTS_SECONDS"] == 60
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_a_malformed_switch_is_a_configuration_error() -> None:
    done = load_settings(**PRODUCTION, SESSION_COOKIE_SECURE="maybe")
    assert done.returncode != 0 and "SESSION_COOKIE_SECURE must be 1 or 0" in done.stderr


def test_broker_access_none_is_refused_outside_debug() -> None:
    done = load_settings(**PRODUCTION, BROKER_ACCESS="none")
    assert done.returncode != 0
    assert "BROKER_ACCESS=none is refused unless FLEET_DEBUG=1" in done.stderr
    # Without an admin password, production still means dynsec (and fails loudly on use).
    assert settings_of(SECRET_KEY="x" * 50)["BROKER_ACCESS"] == "dynsec"
    assert settings_of(FLEET_DEBUG="1", BROKER_ACCESS="none")["BROKER_ACCESS"] == "none"


@override_settings(SECURE_SSL_REDIRECT=True, SECURE_PROXY_SSL_HEADER=(
    "HTTP_X_FORWARDED_PROTO", "https"))
def test_http_is_redirected_unless_a_trusted_proxy_says_https() -> None:
    assert Client().get("/api/schema/").status_code == 301
    assert Client().get("/api/schema/", HTTP_X_FORWARDED_PROTO="https").status_code == 200


@pytest.fixture
def enrolled_device(enroll_body: dict) -> Device:
    assert post_enroll(enroll_body).status_code == 201
    return Device.objects.get()


@pytest.mark.django_db
def test_revoking_without_broker_administration_fails_loudly_and_writes_nothing(
    enrolled_device: Device, operator_client: APIClient,
) -> None:
    with override_settings(FLEET_DEBUG=False, BROKER_ACCESS="none"):
        with pytest.raises(BrokerNotConfigured, match="keep its broker credential"):
            do_revoke_device(enrolled_device, actor=None)
        answer = operator_client.post(f"/api/v1/devices/{enrolled_device.uid}/revoke/")
    assert (answer.status_code, answer.json()["reason"]) == (503, "broker_not_configured")
    enrolled_device.refresh_from_db()
    assert enrolled_device.revoked_at is None


@pytest.mark.django_db
def test_dynsec_without_the_admin_password_is_a_clear_error() -> None:
    reset_broker_access()
    try:
        with (override_settings(BROKER_ACCESS="dynsec", MQTT_ADMIN_PASSWORD=""),
              pytest.raises(BrokerNotConfigured, match="MQTT_ADMIN_PASSWORD is not set")):
            require_broker_access("revoke device d1")
    finally:
        reset_broker_access()
