"""Enrollment with X.509 broker access (BROKER_ACCESS=x509): the answer carries a client
certificate for the key the device proved it holds, and nothing is written per device outside
the database; no broker round trip either, so enrollment works while the broker is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from django.test import override_settings

from fleet.broker.configured import reset_broker_access
from tests.conftest import make_public_key_pem, post_enroll

pytestmark = pytest.mark.django_db


@pytest.fixture
def x509_settings(tmp_path: Path, unused_port: int) -> Iterator[Path]:
    """X.509 broker access whose broker is not running (enrollment must not need it)."""
    reset_broker_access()
    with override_settings(BROKER_ACCESS="x509", BROKER_X509_DIR=tmp_path / "pki",
                           BROKER_PID_FILE=tmp_path / "none.pid",
                           MQTT_URL=f"mqtt://127.0.0.1:{unused_port}", MQTT_ADMIN_PASSWORD="x",
                           MQTT_DEVICE_URL="mqtts://127.0.0.1:8884"):
        yield tmp_path / "pki"
    reset_broker_access()


def _spki(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_answer_certifies_the_enrolled_key_and_writes_nothing_per_device(
        x509_settings: Path, enroll_body: dict[str, Any],
        enrollment_token_factory: Any) -> None:
    enroll_body = {**enroll_body, "token": enrollment_token_factory(max_uses=2)}
    first = post_enroll({**enroll_body, "uid": "cert-dev-1"})
    assert first.status_code == 201, first.json()
    files_after_first = sorted(p.name for p in x509_settings.rglob("*"))
    mqtt = first.json()["mqtt"]
    assert mqtt["credential"] == ""
    assert mqtt["url"] == "mqtts://127.0.0.1:8884"
    cert = x509.load_pem_x509_certificate(mqtt["client_certificate"].encode())
    ca = x509.load_pem_x509_certificate(mqtt["client_ca"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=cert-dev-1"
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) == _spki(enroll_body["public_key"])
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    # The same key enrolling again gets the very same certificate; another device, its own.
    again = post_enroll({**enroll_body, "uid": "cert-dev-1"})
    assert again.status_code == 200, again.json()
    assert again.json()["mqtt"]["client_certificate"] == mqtt["client_certificate"]
    other = post_enroll({**enroll_body, "uid": "cert-dev-2",
                         "public_key": make_public_key_pem()})
    assert other.status_code == 201, other.json()
    other_cert = x509.load_pem_x509_certificate(
        other.json()["mqtt"]["client_certificate"].encode())
    assert other_cert.serial_number != cert.serial_number
    assert sorted(p.name for p in x509_settings.rglob("*")) == files_after_first


def test_password_backends_answer_without_a_certificate(
        enroll_body: dict[str, Any]) -> None:
    with override_settings(BROKER_ACCESS="none"):
        answer = post_enroll(enroll_body)
    assert answer.status_code == 201, answer.json()
    assert answer.json()["mqtt"]["credential"]
    assert "client_certificate" not in answer.json()["mqtt"]
