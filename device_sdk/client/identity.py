"""A device's identity: its key pair, and what enrollment gave it, kept in a state directory.

Layout of the state directory (0700)::

    device.key       Ed25519 private key, PKCS#8 PEM, mode 0600. Made once, never sent.
    identity.json    device id, MQTT url/username/credential, signing keys (0600: a secret)
    broker-ca.pem    the CA the broker's TLS certificate chains to
    device.crt       with X.509 broker access: the client certificate for device.key

Enrollment (:func:`enroll`) asks the server for a nonce (``POST /api/v1/enroll/challenge/``),
signs it with the device key together with the claim token, uid, hardware profile and
capabilities (``device_sdk.protocol.enrollment``: proof that the device holds its key), and
posts all of it to ``POST /api/v1/enroll/`` with the standard library's urllib. The server
binds the device id to the key, so enrolling again with the same key is idempotent: the same
device id, no token use consumed, and a fresh MQTT credential (which is why the answer is
persisted before anything else happens). Nobody without the key can do that.

With X.509 broker access the answer carries no password but ``mqtt.client_certificate``: the
server's device CA certifies the very public key the device just proved it holds (CN = device
id). The device checks that before keeping it, and presents it with ``device.key`` in the TLS
handshake; the private key never leaves the device, and no CSR is needed (the signed, fresh
enrollment request is a stronger proof of possession than a CSR's self-signature, which could
be replayed).
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from device_sdk.protocol.enrollment import enrollment_message
from device_sdk.protocol.status import Capabilities

__all__ = [
    "DeviceIdentity",
    "EnrollmentError",
    "MqttCredential",
    "SigningKey",
    "enroll",
    "ensure_enrolled",
    "load_or_create_key",
    "public_key_pem",
    "sign_enrollment",
]

log = logging.getLogger(__name__)

KEY_FILE = "device.key"
IDENTITY_FILE = "identity.json"
CA_FILE = "broker-ca.pem"
CERT_FILE = "device.crt"
ENROLL_PATH = "/api/v1/enroll/"
CHALLENGE_PATH = "/api/v1/enroll/challenge/"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})  # throttled or briefly unavailable


class EnrollmentError(Exception):
    """The server refused the enrollment (``reason`` is its code) or could not be reached."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}" + (f" (HTTP {status})" if status else ""))


@dataclass(frozen=True)
class SigningKey:
    """An OTA signing public key the device trusts: key id and raw Ed25519 key, both hex."""

    kid: str
    public_key: str


@dataclass(frozen=True)
class MqttCredential:
    """How the device reaches the broker."""

    url: str  # mqtts://host:port
    username: str
    credential: str  # the MQTT password; empty with a client certificate
    ca_file: str | None  # absolute path of the broker CA; None: the system trust store
    # With X.509 broker access: absolute paths of the client certificate and its key (the
    # device key), presented in the TLS handshake instead of a password.
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class DeviceIdentity:
    """Everything a device learnt at enrollment, as persisted in its state directory."""

    device_id: str
    hardware: str
    server: str
    mqtt: MqttCredential
    signing_keys: tuple[SigningKey, ...] = ()
    topics_prefix: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: str | Path) -> DeviceIdentity:
        """Read the identity of the device whose state lives in ``state_dir``."""
        data = json.loads((Path(state_dir) / IDENTITY_FILE).read_text())
        return cls(
            device_id=data["device_id"],
            hardware=data["hardware"],
            server=data["server"],
            mqtt=MqttCredential(**data["mqtt"]),
            signing_keys=tuple(SigningKey(**k) for k in data.get("signing_keys", ())),
            topics_prefix=data.get("topics_prefix", ""),
            capabilities=data.get("capabilities", {}),
        )

    @staticmethod
    def exists(state_dir: str | Path) -> bool:
        """Say whether ``state_dir`` holds an enrolled identity."""
        return (Path(state_dir) / IDENTITY_FILE).is_file()

    def save(self, state_dir: str | Path) -> None:
        """Write the identity atomically, readable by the owner only (it holds a credential)."""
        _write_private(Path(state_dir) / IDENTITY_FILE, json.dumps(asdict(self), indent=2))


def load_or_create_key(state_dir: str | Path) -> ed25519.Ed25519PrivateKey:
    """Return the device's private key, generating and storing it (0600) on first use."""
    path = _state_dir(state_dir) / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem.decode())
    log.debug("generated a new device key in %s", path)
    return key


def public_key_pem(key: ed25519.Ed25519PrivateKey) -> str:
    """Return the public half of ``key`` as SubjectPublicKeyInfo PEM, as enrollment expects."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def enroll(
    server: str,
    token: str,
    *,
    state_dir: str | Path,
    hardware: str,
    capabilities: Capabilities,
    uid: str | None = None,
    name: str = "",
    timeout: float = 30.0,
    attempts: int = 5,
    ssl_context: ssl.SSLContext | None = None,
) -> DeviceIdentity:
    """Enroll the device of ``state_dir`` with ``server`` and persist what it answers.

    Makes the key pair first if the directory has none. Retries (with jittered back-off) when
    the server is unreachable, throttles (429, honouring Retry-After) or is briefly unavailable;
    raises :class:`EnrollmentError` on a refusal, carrying the server's reason code.

    Each enrollment issues a fresh credential. A retry after a timeout can therefore lose a
    race with its own first attempt finishing late on the server, leaving the broker with a
    credential the device never saw; the broker then refuses the device (CONNACK 0x86/0x87),
    and enrolling again (``DeviceClient.on_refused``) repairs it.
    """
    state = _state_dir(state_dir)
    key = load_or_create_key(state)
    body: dict[str, Any] = {
        "token": token,
        "public_key": public_key_pem(key),
        "hardware": hardware,
        "capabilities": capabilities_json(capabilities),
    }
    if uid:
        body["uid"] = uid
    if name:
        body["name"] = name
    base = server.rstrip("/")

    def signed() -> dict[str, Any]:
        # A fresh nonce for every attempt: a nonce is spent by the request that used it.
        nonce = bytes.fromhex(_request_json(base + CHALLENGE_PATH, None, timeout=timeout,
                                            ssl_context=ssl_context)["nonce"])
        signature = sign_enrollment(key, nonce=nonce, token=token, uid=uid or "",
                                    hardware=hardware, capabilities=body["capabilities"])
        return {**body, "nonce": nonce.hex(), "signature": signature.hex()}

    answer = _post_json(base + ENROLL_PATH, signed, timeout=timeout, attempts=attempts,
                        ssl_context=ssl_context)
    try:
        mqtt = answer["mqtt"]
        ca_pem = mqtt.get("ca_cert") or ""
        ca_file: str | None = None
        if ca_pem:
            _write_private(state / CA_FILE, ca_pem)
            ca_file = str((state / CA_FILE).resolve())
        cert_file = key_file = None
        if mqtt.get("client_certificate"):
            _check_certificate(mqtt["client_certificate"], key, answer["device_id"])
            _write_private(state / CERT_FILE, mqtt["client_certificate"])
            cert_file = str((state / CERT_FILE).resolve())
            key_file = str((state / KEY_FILE).resolve())
        identity = DeviceIdentity(
            device_id=answer["device_id"],
            hardware=hardware,
            server=server,
            mqtt=MqttCredential(mqtt["url"], mqtt["username"], mqtt["credential"], ca_file,
                                cert_file, key_file),
            signing_keys=tuple(
                SigningKey(k["kid"], k["public_key"]) for k in answer.get("signing_keys", [])
            ),
            topics_prefix=answer.get("topics_prefix", ""),
            capabilities=body["capabilities"],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise EnrollmentError("bad_answer", f"unexpected enrollment answer: {exc!r}") from None
    identity.save(state)
    log.debug(
        "enrolled as %s (%s) at %s", identity.device_id,
        "new device" if answer.get("created") else "same key, enrolled again", server,
    )
    return identity


def _check_certificate(pem: str, key: ed25519.Ed25519PrivateKey, device_id: str) -> None:
    """Refuse a client certificate that is not for this device's own key and id: it would not
    work at the broker (or would be someone else's identity)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise EnrollmentError("bad_answer", f"client certificate unreadable: {exc}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cert.public_key() != key.public_key():
        raise EnrollmentError("bad_answer", "the client certificate is not for this device's key")
    if [n.value for n in names] != [device_id]:
        raise EnrollmentError("bad_answer",
                              f"the client certificate names {names!r}, not {device_id!r}")


def ensure_enrolled(
    server: str, token: str, *, state_dir: str | Path, hardware: str,
    capabilities: Capabilities, uid: str | None = None, **kwargs: Any,
) -> DeviceIdentity:
    """Return the identity stored in ``state_dir``, enrolling first if there is none."""
    if DeviceIdentity.exists(state_dir):
        return DeviceIdentity.load(state_dir)
    return enroll(
        server, token, state_dir=state_dir, hardware=hardware, capabilities=capabilities,
        uid=uid, **kwargs,
    )


def sign_enrollment(key: ed25519.Ed25519PrivateKey, *, nonce: bytes, token: str, uid: str,
                    hardware: str, capabilities: dict[str, Any], via: str = "") -> bytes:
    """Return the device's signature over its enrollment request (proof of possession)."""
    return key.sign(enrollment_message(nonce=nonce, token=token, uid=uid, hardware=hardware,
                                       capabilities=capabilities, via=via))


def capabilities_json(caps: Capabilities) -> dict[str, Any]:
    """Return capabilities with the enrollment JSON's field names (the status map's too)."""
    return {
        "firmware_version": caps.firmware_version,
        "tflm_version": caps.tflm_version,
        "ops": list(caps.ops),
        "arena_bytes": caps.arena_bytes,
        "slot_bytes": caps.slot_bytes,
        "pointer_bits": caps.pointer_bits,
    }


def _request_json(url: str, body: dict[str, Any] | None, *, timeout: float,
                  ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    """POST ``body`` (or nothing) as JSON and return the JSON answer; HTTP errors raise."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else b"", method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
        return dict(json.loads(response.read()))


def _post_json(
    url: str, make_body: Callable[[], dict[str, Any]], *, timeout: float, attempts: int,
    ssl_context: ssl.SSLContext | None,
) -> dict[str, Any]:
    """POST ``make_body()`` (made anew for each attempt), retrying what may pass later."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        wait = delay * random.uniform(0.5, 1.0)
        try:
            return _request_json(url, make_body(), timeout=timeout, ssl_context=ssl_context)
        except urllib.error.HTTPError as exc:
            answer = _error_body(exc)
            reason = str(answer.get("reason") or f"http_{exc.code}")
            detail = str(answer.get("detail") or exc.reason)
            if exc.code not in _RETRY_STATUSES or attempt == attempts:
                raise EnrollmentError(reason, detail, exc.code) from None
            retry_after = exc.headers.get("Retry-After", "")
            if retry_after.isdigit():
                wait = max(wait, float(retry_after))
            log.warning("enrollment: %s (HTTP %d); retrying in %.1f s", reason, exc.code, wait)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == attempts:
                raise EnrollmentError("unreachable", f"{url}: {exc}") from None
            log.warning("enrollment: %s unreachable (%s); retrying in %.1f s", url, exc, wait)
        time.sleep(wait)
        delay = min(delay * 2, 60.0)
    raise AssertionError("unreachable")  # the loop always returns or raises


def _error_body(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        value = json.loads(exc.read() or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _state_dir(state_dir: str | Path) -> Path:
    path = Path(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, created 0600 (never briefly world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
