"""Size checks on uploads, made from what the upload handler already knows (the request's
Content-Length, each file's ``size``), before anything is read into memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleet.core.errors import Refused


class UploadTooLarge(Refused):
    """An upload over its limit: 413 with the field, its size and the limit."""

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__("file_too_large", detail, 413, **extra)


def check_request_size(request: Any, limit: int) -> None:
    """Refuse a request whose declared body is over ``limit`` bytes, before it is parsed."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise UploadTooLarge(f"The request is {declared} bytes; uploads are limited to {limit} "
                             "bytes in all.", limit=limit)


def check_upload_sizes(files: Mapping[str, Any], limits: Mapping[str, int]) -> None:
    """Refuse the first file in ``files`` (field name -> uploaded file or None) whose ``size``
    is over its field's limit in ``limits``; the files are not read."""
    for field, upload in files.items():
        if upload is None or field not in limits:
            continue
        size, limit = int(upload.size or 0), limits[field]
        if size > limit:
            raise UploadTooLarge(f"`{field}` is {size} bytes; it may be at most {limit} bytes.",
                                 field=field, limit=limit)
