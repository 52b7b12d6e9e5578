"""Enroll the MCUs the gateway meets and make them its children, over the server's REST API.

An MCU whose HELLO announces its own Ed25519 public key (the C firmware: its key never leaves
it) signs its enrollment itself; the gateway relays. For an MCU without a key, the child's key
pair is kept for it in ``<state>/children/<uid>/device.key``, made once, and the gateway signs
for it. For each new MCU:

1. ``POST /api/v1/enroll/challenge/`` for a fresh nonce;
2. MCU with a key: an ENROLL_CHALLENGE over the link (``send_challenge``: the nonce, SHA-256 of
   the claim token, SHA-256 of the capabilities, this gateway's uid); the MCU builds the
   enroll-message with its own uid and hardware profile and answers ENROLL_PROOF, its
   signature (:meth:`ChildEnroller.proof`). The gateway waits ``proof_timeout`` at most and
   checks the signature against the key the MCU announced before it relays anything: a proof
   that does not verify is refused (and the attempt retried with a fresh nonce).
3. ``POST /api/v1/enroll/`` with the claim token, the child's public key (the MCU's own, as
   PEM, or the gateway-held one), the hardware profile (the MCU's HELLO names it when it
   signs), the capabilities from the MCU's first STATUS, the uid of its HELLO, the nonce and
   the signature over all of it and this gateway's uid (``via``), sent with the gateway's own
   token (``Authorization: Gateway <gateway_token>``). The server checks the proof and makes
   the device this gateway's child in the same step, so the gateway's broker identity may use
   the child's topics (its password stays the same).

The gateway never enrolls a uid with a key other than the one its MCU announced: an MCU with a
key is only ever enrolled with that key, and a child admitted under one key (or none) is not
taken as admitted when it announces another.

The call is idempotent (the same key enrolls the same device again). A uid enrolled with
another key is refused, and the gateway never tries to adopt it: nobody gets a device whose
key it does not hold. The child's own MQTT credential from the answer is not kept: the gateway
speaks for it under its own identity. Transient failures (unreachable server, 429, 5xx) are
retried with a growing delay; a refusal is logged and retried at the MCU's next HELLO.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from device_sdk.gateway.config import GatewayConfig
from device_sdk.protocol import link
from device_sdk.protocol.enrollment import capabilities_digest, enrollment_message
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
                 retry_s: tuple[float, float] = (1.0, 60.0), proof_timeout: float = 10.0) -> None:
        if not config.enrolls_children:
            raise ValueError(
                "the configuration has no server, claim_token, hardware, gateway_token")
        self.config = config
        self.timeout = timeout
        self.retry_s = retry_s
        self.proof_timeout = proof_timeout
        self.on_admitted: Callable[[str], None] = lambda uid: None
        # Sends an ENROLL_CHALLENGE payload to a child's MCU (Bridge.challenge); False: gone.
        self.send_challenge: Callable[[str, bytes], bool] = lambda uid, payload: False
        self.counters: dict[str, int] = {"proofs_refused": 0, "proofs_missing": 0}
        self._proofs: dict[str, queue.Queue[bytes]] = {}
        self._proofs_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Capabilities, bytes | None, str | None] | None] = \
            queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enroll", daemon=True)

    # Admission ------------------------------------------------------------------------------

    def is_admitted(self, uid: str, *, key: bytes | None = None) -> bool:
        """Return whether ``uid`` was enrolled and added to our children before, with the same
        key: the MCU's own ``key`` (32 raw bytes), or the gateway-held one when None."""
        state = self._state(uid)
        return bool(state.get("gateway_child")) and \
            state.get("mcu_key") == (key.hex() if key is not None else None)

    def request(self, uid: str, capabilities: Capabilities, *, key: bytes | None = None,
                hardware: str | None = None) -> None:
        """Queue ``uid`` for admission (with the MCU's own public ``key`` and the ``hardware``
        profile its HELLO named, when it has a key); ``on_admitted(uid)`` is called once done."""
        self._queue.put((uid, capabilities, key, hardware))

    def proof(self, uid: str, signature: bytes) -> None:
        """Take an MCU's ENROLL_PROOF (called on its serial thread); ignored unless asked."""
        with self._proofs_lock:
            waiting = self._proofs.get(uid)
        if waiting is not None:
            waiting.put(bytes(signature))

    def start(self) -> None:
        """Start the admission thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the admission thread (an admission in progress finishes its HTTP call)."""
        self._stop.set()
        self._queue.put(None)

    # The work -------------------------------------------------------------------------------

    def admit(self, uid: str, capabilities: Capabilities, *, key: bytes | None = None,
              hardware: str | None = None) -> None:
        """Enroll ``uid`` through this gateway (it becomes our child): signed by the MCU itself
        when it announced its own ``key``, else with the key the gateway keeps for it; raise
        EnrollmentRefused on refusal (transient when the MCU did not prove its key in time)."""
        caps = asdict(capabilities)
        caps["ops"] = list(caps["ops"])
        hardware = hardware or self.config.hardware
        nonce = bytes.fromhex(str(self._post(CHALLENGE_PATH, None).get("nonce", "")))
        message = enrollment_message(nonce=nonce, token=self.config.claim_token, uid=uid,
                                     hardware=hardware, capabilities=caps, via=self.config.uid)
        if key is not None:
            mcu_key = ed25519.Ed25519PublicKey.from_public_bytes(key)
            public = mcu_key
            signature = self._mcu_proof(uid, mcu_key, nonce, caps, message)
        else:
            held = _load_or_create_key(self._child_dir(uid) / KEY_FILE)
            public = held.public_key()
            signature = held.sign(message)
        public_pem = public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        body = {"token": self.config.claim_token, "public_key": public_pem,
                "hardware": hardware, "capabilities": caps,
                "uid": uid, "name": f"{uid} via {self.config.uid}",
                "nonce": nonce.hex(), "signature": signature.hex()}
        answer = self._post(ENROLL_PATH, body, gateway_token=self.config.gateway_token)
        log.info("child %s enrolled through gateway %s with %s (%s)", uid, self.config.uid,
                 "its own key" if key is not None else "a gateway-held key",
                 "new" if answer.get("created") else "known key, enrolled before")
        self._save_state(uid, {"device_id": answer.get("device_id", uid),
                               "signing_keys": answer.get("signing_keys", []),
                               "mcu_key": key.hex() if key is not None else None,
                               "gateway_child": True})

    def _mcu_proof(self, uid: str, key: ed25519.Ed25519PublicKey, nonce: bytes,
                   caps: dict[str, Any], message: bytes) -> bytes:
        """Challenge the MCU and return its signature of ``message``, checked against ``key``."""
        challenge = link.encode_enroll_challenge(link.EnrollChallenge(
            nonce, hashlib.sha256(self.config.claim_token.encode()).digest(),
            capabilities_digest(caps), self.config.uid))
        answers: queue.Queue[bytes] = queue.Queue()
        with self._proofs_lock:
            self._proofs[uid] = answers
        try:
            if not self.send_challenge(uid, challenge):
                raise EnrollmentRefused("no_link", f"{uid} is not on a port", None,
                                        transient=True)
            deadline = time.monotonic() + self.proof_timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    signature = answers.get(timeout=left)
                except queue.Empty:
                    break
                try:
                    key.verify(signature, message)
                except InvalidSignature:
                    # Stale (an earlier nonce) or forged: never relayed.
                    self.counters["proofs_refused"] += 1
                    log.warning("enroll proof of %s does not verify with the key it announced: "
                                "refused", uid)
                    continue
                return signature
            self.counters["proofs_missing"] += 1
            raise EnrollmentRefused("no_proof", f"{uid} did not prove its key within "
                                    f"{self.proof_timeout:.0f} s", None, transient=True)
        finally:
            with self._proofs_lock:
                if self._proofs.get(uid) is answers:
                    del self._proofs[uid]

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            uid, capabilities, key, hardware = item
            delay = self.retry_s[0]
            while not self._stop.is_set():
                try:
                    self.admit(uid, capabilities, key=key, hardware=hardware)
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
