"""The OpenAPI schema is the contract: a bounded schemathesis run against a live server.

The test starts the server itself (pytest-django's ``live_server``, on the test database),
seeds one of everything (device, gateway, token, model version, package, rollout, dead letter,
worker stats) and runs the schemathesis CLI with an admin token and a fixed seed. Checks:
``not_a_server_error`` (no input gives a 5xx), ``response_schema_conformance`` (every answer
matches its documented schema, errors included) and ``status_code_conformance`` (every status
is documented). Bounded by ``SCHEMATHESIS_MAX_EXAMPLES`` per operation and
``SCHEMATHESIS_MAX_TIME`` seconds in all.

schemathesis is in the test extras: a missing CLI fails the test, it never skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.utils import timezone

from fleet.core.schema import ErrorSerializer

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"
MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12")
MAX_TIME = os.environ.get("SCHEMATHESIS_MAX_TIME", "100")
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261206")


def _seed_fleet(tflite: bytes) -> str:
    """Create one of every kind of object the API lists; return an admin's API token."""
    from rest_framework.authtoken.models import Token

    from fleet.accounts.actions import do_create_user
    from fleet.core.roles import Role
    from fleet.devices.actions import do_create_enrollment_token
    from fleet.devices.gateway_actions import do_provision_gateway
    from fleet.devices.models import DeviceGroup, HardwareProfile
    from fleet.devices.stock_profiles import STOCK_PROFILES
    from fleet.telemetry.models import DeadLetter, WorkerStats
    from ota.packaging.actions import do_build_package
    from ota.registry.actions import do_create_model, do_upload_version
    from ota.rollouts.actions import do_create_rollout
    from ota.signing.actions import ensure_signing_key
    from testkit.enrollment import enroll_in_process
    from tests.conftest import CAPABILITIES

    for spec in STOCK_PROFILES:
        HardwareProfile.objects.get_or_create(name=spec["name"], defaults=spec)
    admin = do_create_user("fuzz-admin", "correct-horse-battery", Role.ADMIN, actor=None)
    do_create_user("fuzz-viewer", "correct-horse-battery", Role.VIEWER, actor=admin)
    group = DeviceGroup.objects.create(name="lab")
    _, token = do_create_enrollment_token(actor=admin, expires_at=timezone.now()
                                          + timedelta(days=1), max_uses=10, uid_pattern=".*",
                                          group=group)
    profile = HardwareProfile.objects.get(name="stm32f746")
    device = enroll_in_process(token=token, key=ed25519.Ed25519PrivateKey.generate(),
                               hardware=profile.name, capabilities=dict(CAPABILITIES),
                               uid="fuzz-device-1").device
    do_provision_gateway(uid="fuzz-gateway", children=[device.uid], actor=admin)
    ensure_signing_key()
    model = do_create_model(actor=admin, name="kws", description="")
    version = do_upload_version(model, version="1.0.0", data=tflite, actor=admin)
    do_build_package(version, profile, actor=admin)
    do_create_rollout(actor=admin, name="first", model_version=version, waves=[10, 100],
                      group=group)
    DeadLetter.objects.create(topic="fleet/v1/x/events", reason="CBOR_MALFORMED", size=1,
                              payload=b"\xff")
    now = timezone.now()
    WorkerStats.objects.create(worker="w1", started_at=now, heartbeat_at=now,
                               counters={"events_stored": 1})
    return Token.objects.create(user=admin).key


def test_every_operation_documents_the_error_shape(client: Any) -> None:
    """Each operation lists 401 and 403 with the ``Error`` component, 404 when its path names
    an object, and the component has ``reason`` and ``detail``."""
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"reason", "detail"}
    assert set(error["properties"]) == set(ErrorSerializer().fields)
    missing = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            need = {"401", "403"} | ({"404"} if "{" in path else set())
            if method in ("post", "put", "patch"):
                need.add("400")
            for code in need:
                ref = (operation["responses"].get(code, {}).get("content", {})
                       .get("application/json", {}).get("schema", {}).get("$ref"))
                if ref != "#/components/schemas/Error":
                    missing.append(f"{method.upper()} {path} {code}")
            assert codes
    assert not missing, missing
    enroll = schema["paths"]["/api/v1/enroll/"]["post"]["responses"]
    assert {"413", "429"} <= set(enroll)
    upload = schema["paths"]["/api/v1/model-versions/"]["post"]["responses"]
    assert "413" in upload
    revoke = schema["paths"]["/api/v1/devices/{uid}/revoke/"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "503"} <= set(revoke)
    assert "429" not in revoke  # not rate-limited
    listing = schema["paths"]["/api/v1/devices/"]["get"]["responses"]
    assert set(listing) == {"200", "400", "401", "403"}


@pytest.mark.django_db
def test_a_body_over_django_s_limit_is_413_in_the_error_shape(admin_client: Any) -> None:
    """Django's DATA_UPLOAD_MAX_MEMORY_SIZE met while DRF parses: 413 as documented, not
    Django's HTML 400."""
    from django.conf import settings

    body = {"name": "lab", "description": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}
    answer = admin_client.post("/api/v1/groups/", body, format="json")
    assert answer.status_code == 413
    assert answer.json()["reason"] == "payload_too_large"


@pytest.mark.django_db
def test_found_by_schemathesis_huge_ids_and_unknown_formats_are_400(admin_client: Any) -> None:
    """A model version id past 64 bits reached the database (500); ``?format=`` with no such
    renderer was DRF's undocumented 404. Both are bad query values: 400 in the error shape."""
    huge = "159375641940197233393664"
    for query in ({"a": huge, "b": "1"}, {"a": "1", "b": "2", "model_version": huge}):
        answer = admin_client.get("/api/v1/telemetry/compare/", query)
        assert answer.status_code == 400, answer.content
        assert answer.json()["reason"] == "invalid"
    answer = admin_client.get("/api/v1/telemetry/series/", {"format": "AAA"})
    assert answer.status_code == 400
    assert answer.json()["reason"] == "unknown_format"
    assert admin_client.get("/api/v1/telemetry/series/", {"format": "csv"}).status_code == 200
    assert admin_client.get("/api/v1/devices/", {"format": "json"}).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["0083-02-01T20:20:53+19:24", "0001-01-01T00:00:00+05:00",
                                   "9999-12-31T23:59:59-05:00", "2026-12-06T10:00:00-15:59"])
def test_found_by_schemathesis_odd_time_zone_offsets_never_give_a_5xx(
        admin_client: Any, value: str) -> None:
    """PostgreSQL refused an offset of +19:24 in a date-time filter (500); near year 1 or 9999
    the conversion to UTC overflows. Filters pass UTC to the database, or answer 400."""
    for path, names in (("/api/v1/audit-log/", ("since", "until")),
                        ("/api/v1/devices/", ("last_seen_after", "last_seen_before"))):
        for name in names:
            answer = admin_client.get(path, {name: value})
            assert answer.status_code in (200, 400), (path, name, answer.content)
            if answer.status_code == 400:
                assert answer.json()["reason"] == "invalid"


def test_unmatched_api_paths_answer_in_the_error_shape(client: Any) -> None:
    answer = client.get("/api/v1/devices/a/b/c/")
    assert answer.status_code == 404
    assert answer.json() == {"reason": "not_found", "detail": "Not found."}


@pytest.mark.integration
@pytest.mark.slow
def test_schemathesis_finds_nothing(live_server: Any, tmp_path: Path) -> None:
    """No generated input gives a 5xx, an undocumented status or a body outside its schema."""
    st = Path(sys.executable).with_name("st")
    assert st.exists(), "schemathesis is in the test extras: pip install -e '.[test]'"
    from testkit.model_factory import conv_model

    token = _seed_fleet(conv_model())
    command = [
        str(st), "run", f"{live_server.url}/api/schema/",
        "--checks", CHECKS,
        "--header", f"Authorization: Token {token}",
        "--max-examples", MAX_EXAMPLES, "--max-time", MAX_TIME, "--seed", SEED,
        "--workers", "1", "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all", "--request-timeout", "20",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(command, check=False, capture_output=True, text=True, cwd=tmp_path,
                         timeout=int(MAX_TIME) + 240,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
