"""How large each kind of registry upload may be (settings, read when asked)."""

from __future__ import annotations

from django.conf import settings


def upload_limits() -> dict[str, int]:
    """Return the byte limit of each upload field: models (.tflite, .keras) and data sets
    (conversion data, validation samples)."""
    return {
        "file": settings.MAX_MODEL_UPLOAD_BYTES,
        "keras": settings.MAX_MODEL_UPLOAD_BYTES,
        "dataset": settings.MAX_DATASET_UPLOAD_BYTES,
        "samples": settings.MAX_DATASET_UPLOAD_BYTES,
    }


def largest_upload_request() -> int:
    """Return the largest multipart request an upload may make (all files plus fields)."""
    return settings.MAX_UPLOAD_REQUEST_BYTES
