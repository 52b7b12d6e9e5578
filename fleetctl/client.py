"""A small REST client over the standard library: token auth, JSON, multipart with progress,
and the API's ``{"reason", "detail"}`` refusals turned into ``FleetError`` with an exit code."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fleetctl import __name__ as _pkg
from fleetctl.config import Settings
from fleetctl.errors import Exit, FleetError

CHUNK = 64 * 1024
USER_AGENT = f"{_pkg}/0.1"
Progress = Callable[[int], None]


class Client:
    """Talk to ``{url}/api/v1/`` with ``Authorization: Token ...``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.url + "/api/v1/"

    # --- requests ---------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._json(self.request("GET", path, params=params))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        return self._json(self.request("POST", path, data=data,
                                       headers={"Content-Type": "application/json"}))

    def get_raw(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        return self.request("GET", path, params=params)

    def upload(self, path: str, fields: dict[str, str], files: dict[str, Path],
               progress: Progress | None = None) -> Any:
        """POST multipart/form-data, streaming the files and reporting bytes sent."""
        boundary = "fleetctl" + secrets.token_hex(12)
        parts: list[bytes | Path] = []
        for name, value in fields.items():
            parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                          f"\r\n\r\n{value}\r\n").encode())
        for name, file in files.items():
            parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                          f"filename=\"{file.name}\"\r\nContent-Type: application/octet-stream"
                          "\r\n\r\n").encode())
            parts.append(file)
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)

        def body() -> Iterator[bytes]:
            for part in parts:
                if isinstance(part, Path):
                    with part.open("rb") as fh:
                        while chunk := fh.read(CHUNK):
                            if progress:
                                progress(len(chunk))
                            yield chunk
                else:
                    yield part

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(length)}
        return self._json(self.request("POST", path, data=body(), headers=headers))

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                data: Any = None, headers: dict[str, str] | None = None) -> bytes:
        """Send one request; return the body or raise ``FleetError`` with the right code."""
        url = path if path.startswith("http") else self.base + path.lstrip("/")
        if params:
            query = urllib.parse.urlencode(
                [(k, v) for k, v in params.items() if v is not None and not isinstance(v, list)]
                + [(k, x) for k, v in params.items() if isinstance(v, list) for x in v])
            url += ("&" if "?" in url else "?") + query
        all_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if self.settings.token:
            all_headers["Authorization"] = f"Token {self.settings.token}"
        req = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise _refusal(exc, method, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FleetError(f"cannot reach {self.settings.url}: {reason}",
                             Exit.UNREACHABLE) from None

    @staticmethod
    def _json(raw: bytes) -> Any:
        return json.loads(raw) if raw else None

    # --- paging -----------------------------------------------------------------------------

    def list_all(self, path: str, params: dict[str, Any] | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
        """Follow limit/offset pages (or take a plain list) up to ``limit`` rows."""
        rows: list[dict[str, Any]] = []
        page = self.get(path, {**(params or {}), "limit": min(limit or 200, 200)})
        while True:
            if isinstance(page, list):
                rows.extend(page)
                break
            rows.extend(page.get("results", []))
            if not page.get("next") or (limit is not None and len(rows) >= limit):
                break
            page = self._json(self.request("GET", page["next"]))
        return rows[:limit] if limit is not None else rows


def _refusal(exc: urllib.error.HTTPError, method: str, url: str) -> FleetError:
    """Turn an HTTP error into a message carrying the API's ``reason`` and ``detail``."""
    raw = exc.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")[:300]
    reason = body.get("reason") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(body, dict):
        # Field errors (``fields``) and an action's extra (per-profile ``refusals``...) too.
        extra = {k: v for k, v in body.items() if k not in ("reason", "detail")}
        extra = extra.get("fields", extra) if isinstance(extra.get("fields"), dict) else extra
        more = "; ".join(f"{k}: {_flat(v)}" for k, v in extra.items())
        detail = " ".join(p for p in (detail, more) if p)
    text = detail or body or exc.reason
    path = urllib.parse.urlparse(url).path
    message = f"{method} {path}: HTTP {exc.code}" + (f" [{reason}]" if reason else "") + \
        f": {text}"
    if exc.code in (401, 403):
        code = Exit.AUTH
    elif exc.code >= 500:
        code = Exit.UNREACHABLE
    else:
        code = Exit.ERROR
    return FleetError(message, code, reason=reason, status=exc.code, body=body)


def _flat(value: Any) -> str:
    """Render a nested error value on one line."""
    if isinstance(value, list):
        return " ".join(_flat(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    return str(value)
