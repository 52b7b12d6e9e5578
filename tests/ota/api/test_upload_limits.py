"""Uploads over their limit are refused with 413 and a reason, before any of them is read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.files import utils as file_utils
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from rest_framework.test import APIClient

from fleet.accounts.actions import do_create_user
from fleet.core.roles import Role
from ota.models import Model, ModelVersion

pytestmark = pytest.mark.django_db

SUFFIX = {"file": ".tflite", "keras": ".keras", "dataset": ".npz", "samples": ".npz"}
LIMITS = {"MAX_MODEL_UPLOAD_BYTES": 1000, "MAX_DATASET_UPLOAD_BYTES": 2000,
          "MAX_UPLOAD_REQUEST_BYTES": 50_000}


@pytest.fixture
def small_limits() -> Iterator[None]:
    with override_settings(**LIMITS):
        yield


@pytest.fixture
def reads_forbidden(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Return a switch after which any read of an uploaded file's bytes fails the test (the
    request body is encoded before it is turned on)."""

    def no_read(self: Any) -> Any:
        raise AssertionError("an upload was read before its size was checked")

    return lambda: monkeypatch.setattr(file_utils.FileProxyMixin, "read", property(no_read))


@pytest.fixture
def kws(db: Any) -> Model:
    return Model.objects.create(name="kws")


def post_upload(client: Any, url: str, before_sending: Callable[[], None] | None = None,
                **files: bytes) -> Any:
    """POST a multipart upload of ``files``, encoded first, then ``before_sending()``."""
    body: dict[str, Any] = {"model": "kws", "version": "1.0.0"}
    body.update({name: SimpleUploadedFile(f"upload{SUFFIX[name]}", data)
                 for name, data in files.items()})
    encoded = encode_multipart(BOUNDARY, body)
    if before_sending:
        before_sending()
    return client.generic("POST", url, encoded, content_type=MULTIPART_CONTENT)


@pytest.mark.parametrize(("files", "field"), [
    ({"file": b"x" * 1001}, "file"),
    ({"file": b"x" * 10, "samples": b"x" * 2001}, "samples"),
    ({"keras": b"x" * 1001, "dataset": b"x" * 10}, "keras"),
    ({"keras": b"x" * 10, "dataset": b"x" * 2001}, "dataset"),
])
def test_an_oversized_upload_is_refused_413_before_it_is_read(
    operator_client: APIClient, kws: Model, small_limits: None,
    reads_forbidden: Callable[[], None],
    files: dict[str, bytes], field: str,
) -> None:
    answer = post_upload(operator_client, "/api/v1/model-versions/", reads_forbidden, **files)
    assert answer.status_code == 413, answer.content
    body = answer.json()
    assert body["reason"] == "file_too_large" and body["field"] == field
    assert f"`{field}` is" in body["detail"] and "at most" in body["detail"]
    assert not ModelVersion.objects.exists()


def test_an_oversized_request_is_refused_before_it_is_parsed(
    operator_client: APIClient, kws: Model, small_limits: None,
) -> None:
    with override_settings(MAX_UPLOAD_REQUEST_BYTES=5_000):
        answer = post_upload(operator_client, "/api/v1/model-versions/", file=b"x" * 6_000)
    assert answer.status_code == 413
    assert answer.json()["reason"] == "file_too_large"
    assert "in all" in answer.json()["detail"]


def test_the_console_refuses_an_oversized_upload_with_413_and_says_why(
    kws: Model, small_limits: None, reads_forbidden: Callable[[], None],
) -> None:
    client = Client()
    client.force_login(do_create_user("op", "correct-horse-battery", Role.OPERATOR, actor=None))
    answer = post_upload(client, "/console/models/upload/", reads_forbidden, file=b"x" * 1001)
    assert answer.status_code == 413
    assert b"may be at most 1000 bytes" in answer.content
    assert not ModelVersion.objects.exists()


def test_a_json_body_over_the_memory_limit_is_a_4xx(operator_client: APIClient) -> None:
    from django.conf import settings

    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= 2_621_440
    big = {"name": "m", "description": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}
    answer = operator_client.post("/api/v1/models/", big, format="json")
    assert 400 <= answer.status_code < 500
