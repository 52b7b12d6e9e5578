"""Enroll the MCUs the gateway meets and make them its children, over the server's REST API.

The child's key pair (Ed25519) is kept for it in ``<state>/children/<uid>/``, made once; the
gateway signs for the child with it, as the child's own firmware signs over the serial link
where it holds its key. For each new MCU:

1. ``POST /api/v1/enroll/challenge/`` for a fresh nonce;
2. ``POST /api/v1/enroll/`` with the claim token, the child's public key, the hardware profile,
   the capabilities from the MCU's first STATUS, the uid of its HELLO, the nonce and the
   child key's signature over all of it and this gateway's uid (``via``), sent with the
   gateway's own token (``Authorization: Gateway <gateway_token>``). The server checks the
   proof and makes the device this gateway's child in the same step, so the gateway's broker
   identity may use the child's topics (its password stays the same).

The call is idempotent (the same key enrolls the same device again). A uid enrolled with
another key is refused, and the gateway never tries to adopt it: nobody gets a device whose
key it does not hold. The child's own MQTT credential from the answer is not kept: the gateway
speaks for it under its own identity. Transient failures (unreachable server, 429, 5xx) are
retried with a growing delay; a refusal is logged and retried at the MCU's next HELLO.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from device_sdk.gateway.config import GatewayConfig
from device_sdk.protocol.enrollment import enrollment_message
from device_sdk.protocol.status import Capabilities

__all__ = ["ChildEnroller", "EnrollmentRefused"]

log = logging.getLogger(__name__)

ENROLL_PATH = "/api/v1/enroll/"
CHALLENGE_PATH = "/api/v1/enroll/challenge/"
KEY_FILE = "device.key"
STATE_FILE = "child.json"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class EnrollmentRefused(Exception):
    """The server refused a call for good (``reason`` is its code), or was unreachable."""

    def __init__(self, reason: str, detail: str, status: int | None, *,
                 transient: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.transient = transient


class ChildEnroller:
    """Admit children (implements ``bridge.Admission``) on a background thread."""

    def __init__(self, config: GatewayConfig, *, timeout: float = 15.0,
                 retry_s: tuple[float, float] = (1.0, 60.0)) -> None:
        if not config.enrolls_children:
            raise ValueError(
                "the configuration has no server, claim_token, hardware, gateway_token")
        self.config = config
        self.timeout = timeout
        self.retry_s = retry_s
        self.on_admitted: Callable[[str], None] = lambda uid: None
        self._queue: queue.Queue[tuple[str, Capabilities] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enroll", daemon=True)

    # Admission ------------------------------------------------------------------------------

    def is_admitted(self, uid: str) -> bool:
        """Return whether ``uid`` was enrolled and added to our children before."""
        return bool(self._state(uid).get("gateway_child"))

    def request(self, uid: str, capabilities: Capabilities) -> None:
        """Queue ``uid`` for admission; ``on_admitted(uid)`` is called once it is done."""
        self._queue.put((uid, capabilities))

    def start(self) -> None:
        """Start the admission thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the admission thread (an admission in progress finishes its HTTP call)."""
        self._stop.set()
        self._queue.put(None)

    # The work -------------------------------------------------------------------------------

    def admit(self, uid: str, capabilities: Capabilities) -> None:
        """Enroll ``uid`` with its own key through this gateway (it becomes our child); raise
        on refusal."""
        directory = self._child_dir(uid)
        key = _load_or_create_key(directory / KEY_FILE)
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        caps = asdict(capabilities)
        caps["ops"] = list(caps["ops"])
        nonce = bytes.fromhex(str(self._post(CHALLENGE_PATH, None).get("nonce", "")))
        message = enrollment_message(nonce=nonce, token=self.config.claim_token, uid=uid,
                                     hardware=self.config.hardware, capabilities=caps,
                                     via=self.config.uid)
        body = {"token": self.config.claim_token, "public_key": public_pem,
                "hardware": self.config.hardware, "capabilities": caps,
                "uid": uid, "name": f"{uid} via {self.config.uid}",
                "nonce": nonce.hex(), "signature": key.sign(message).hex()}
        answer = self._post(ENROLL_PATH, body, gateway_token=self.config.gateway_token)
        log.info("child %s enrolled through gateway %s (%s)", uid, self.config.uid,
                 "new" if answer.get("created") else "known key, enrolled before")
        self._save_state(uid, {"device_id": answer.get("device_id", uid),
                               "signing_keys": answer.get("signing_keys", []),
                               "gateway_child": True})

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            uid, capabilities = item
            delay = self.retry_s[0]
            while not self._stop.is_set():
                try:
                    self.admit(uid, capabilities)
                except EnrollmentRefused as exc:
                    if not exc.transient:
                        log.error("cannot admit child %s: %s%s", uid, exc,
                                  " (was the gateway re-provisioned or revoked? save the new "
                                  "gateway_token in the config)" if exc.status == 401 else "")
                        break
                    log.warning("admitting %s failed (%s); retrying in %.0f s", uid, exc, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.retry_s[1])
                except Exception:
                    log.exception("admitting child %s failed", uid)
                    break
                else:
                    self.on_admitted(uid)
                    break

    def _post(self, path: str, body: dict[str, Any] | None, *,
              gateway_token: str | None = None) -> dict[str, Any]:
        url = str(self.config.server).rstrip("/") + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if gateway_token:
            headers["Authorization"] = f"Gateway {gateway_token}"
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(url, data, headers, method="POST")
        context = ssl.create_default_context() if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as rsp:
                answer = json.loads(rsp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read() or b"{}")
            except ValueError:
                error = {}
            raise EnrollmentRefused(str(error.get("reason", "http_error")),
                                    str(error.get("detail", exc.reason)), exc.code,
                                    transient=exc.code in _RETRY_STATUSES) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EnrollmentRefused("unreachable", str(exc), None, transient=True) from None
        return answer if isinstance(answer, dict) else {}

    # State ----------------------------------------------------------------------------------

    def _child_dir(self, uid: str) -> Path:
        directory = self.config.state_dir / "children" / uid
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    def _state(self, uid: str) -> dict[str, Any]:
        try:
            data = json.loads((self.config.state_dir / "children" / uid / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, uid: str, data: dict[str, Any]) -> None:
        path = self._child_dir(uid) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def _load_or_create_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Return the child's private key, making it on first use (mode 0600, never sent)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return key
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key
