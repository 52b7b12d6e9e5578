"""Broker access that does not grow with the fleet: per-device X.509 certificates.

`X509Access` implements `BrokerAccess` for a Mosquitto 2 whose device listener takes client
certificates from the fleet's *device CA* (``deploy/mosquitto-x509.conf.template``):

- ``require_certificate true``, ``use_identity_as_username true`` (the certificate's CN, the
  device uid, is the username) and ``use_username_as_clientid true`` (so nobody can take over
  another device's session by its client id);
- an ``acl_file`` whose ``pattern`` lines (which 2.0.11 expands, unlike dynamic security)
  give every device exactly `device_grants` of its own ``%u``; only services and gateways
  have ``user`` blocks;
- ``crlfile``: certificates revoked by the device CA.

Enrolling a device therefore writes nothing at the broker: the server signs a certificate
for the public key the device proved it holds (`issue_device_certificate`, a fraction of a
millisecond) and appends its serial to that device's small issuance record. Nothing the
broker holds grows with the fleet, so the cost is the same for the 100,000th device as for
the first (dynamic security rewrites its whole JSON on every change: 537 ms per device with
10,000 in it).

Revocation (`revoke_device`): the device's serials go on the CRL, the broker reloads
(SIGHUP: Mosquitto reads ``crlfile`` again when it sets its listeners up on a reload), which
refuses every new TLS handshake with those certificates; a reload does not touch a live
connection, so the server then takes over the device's client id on its admin listener
(clean start), which makes the broker drop the device's connection at once (DISCONNECT
"session taken over"); its reconnection fails the handshake. Measured in
``tests/fleet/broker/test_x509_access.py`` and ``bench/enroll.py``.

Services (worker, web, monitor) log in with passwords from a ``password_file`` on the
loopback listener; their grants, and gateways' children, are ``user`` blocks of the ACL file.
Changing those rewrites the two small files and reloads: their size follows services and
gateway children, not devices.

State (in ``directory``, the broker's work folder on a single node): ``device-ca.pem`` /
``device-ca.key`` (0600), ``crl.pem``, ``revoked.txt`` (serial, uid, time), ``issued/`` (one
file per device: its serials), ``acl``, ``passwd``, ``access.json`` (services and gateways,
from which ``acl`` and ``passwd`` are written). Back the CA key up with the broker CA.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.broker.access import (
    Access,
    BrokerCommandError,
    BrokerUnavailable,
    Grant,
    ServiceRole,
    check_uid,
    device_grants,
    device_topic,
    service_grants,
)

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
DEVICE_VALIDITY = datetime.timedelta(days=3650)  # revocation, not expiry, ends a device
# OpenSSL refuses every client once the CRL is past its nextUpdate: far ahead, re-signed at
# every revocation (and by `refresh_crl`).
CRL_VALIDITY = datetime.timedelta(days=3650)
# Device grants as acl_file patterns: %u is the certificate's CN, the uid.
PATTERN_UID = "%u"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def device_patterns() -> list[str]:
    """Return the acl_file ``pattern`` lines that give every device its `device_grants`."""
    # device_grants of a placeholder uid, with the placeholder turned into %u.
    placeholder = "uidplaceholder0"
    lines = []
    for topic, access in _merge(device_grants(placeholder)).items():
        lines.append(f"pattern {access} {topic.replace(placeholder, PATTERN_UID)}")
    return lines


def _merge(grants: tuple[Grant, ...] | list[Grant]) -> dict[str, str]:
    """Fold grants into acl_file access words per topic: write, read or readwrite.

    Mosquitto's ``read`` covers subscribing and receiving; ``write`` publishing.
    """
    per_topic: dict[str, set[str]] = {}
    for grant in grants:
        word = "write" if grant.access == Access.PUBLISH else "read"
        per_topic.setdefault(grant.topic, set()).add(word)
    return {topic: "readwrite" if len(words) == 2 else words.pop()
            for topic, words in per_topic.items()}


class DeviceCA:
    """The fleet's device CA: issues device certificates, keeps who got which, signs the CRL.

    Thread-safe within a process; across processes the issuance records are per-device
    files (appends) and the CRL is rewritten under an exclusive lock file.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.cert_path = self.dir / "device-ca.pem"
        self.key_path = self.dir / "device-ca.key"
        self.crl_path = self.dir / "crl.pem"
        self.revoked_path = self.dir / "revoked.txt"
        self.issued_dir = self.dir / "issued"
        self._lock = threading.Lock()
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None

    def ensure(self) -> Self:
        """Create the CA (and an empty CRL) unless it exists; load it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.issued_dir.mkdir(exist_ok=True)
        if not (self.cert_path.exists() and self.key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TinyML fleet device CA")])
            now = _now()
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            self.revoked_path.unlink(missing_ok=True)
            log.info("created the device CA in %s", self.dir)
        self._load()
        if not self.crl_path.exists():
            self.write_crl()
        return self

    def _load(self) -> None:
        self._key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)  # type: ignore[assignment]
        self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    @property
    def cert_pem(self) -> str:
        """The CA certificate (PEM) the broker trusts device certificates with."""
        return self.cert_path.read_text()

    def _issued_file(self, uid: str) -> Path:
        shard = hashlib.sha256(uid.encode()).hexdigest()[:2]  # 256 folders, not 100k files in one
        return self.issued_dir / shard / check_uid(uid)

    def issue(self, uid: str, public_key_pem: str | bytes) -> str:
        """Return a PEM certificate for ``public_key_pem`` with CN = ``uid``; record its serial."""
        assert self._key is not None and self._cert is not None, "call ensure() first"
        key = serialization.load_pem_public_key(
            public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem)
        serial = x509.random_serial_number()
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_uid(uid))]))
            .issuer_name(self._cert.subject).public_key(key).serial_number(serial)  # type: ignore[arg-type]
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + DEVICE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        path = self._issued_file(uid)
        path.parent.mkdir(exist_ok=True)
        with open(path, "a") as fh:  # an append: O(1) whatever the fleet size
            fh.write(f"{serial:x}\n")
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def serials(self, uid: str) -> list[int]:
        """Return the serials issued to ``uid``."""
        path = self._issued_file(uid)
        if not path.exists():
            return []
        return [int(line, 16) for line in path.read_text().split()]

    def revoked(self) -> dict[int, tuple[str, datetime.datetime]]:
        """Return serial -> (uid, revocation time) of every revoked certificate."""
        out: dict[int, tuple[str, datetime.datetime]] = {}
        if self.revoked_path.exists():
            for line in self.revoked_path.read_text().splitlines():
                serial, uid, when = line.split()
                out[int(serial, 16)] = (uid, datetime.datetime.fromisoformat(when))
        return out

    def revoke(self, uid: str) -> list[int]:
        """Put every certificate of ``uid`` on the CRL (rewritten); return the new serials."""
        with self._lock:
            done = self.revoked()
            new = [s for s in self.serials(uid) if s not in done]
            if new:
                now = _now().isoformat()
                with open(self.revoked_path, "a") as fh:
                    fh.writelines(f"{s:x} {uid} {now}\n" for s in new)
                self.write_crl()
            return new

    def write_crl(self) -> None:
        """Sign the CRL of every revoked certificate and replace ``crl.pem`` atomically."""
        assert self._key is not None and self._cert is not None
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self._cert.subject)
                   .last_update(now - datetime.timedelta(minutes=5))
                   .next_update(now + CRL_VALIDITY))
        for serial, (_, when) in self.revoked().items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(when).build())
        crl = builder.sign(self._key, hashes.SHA256())
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.crl_path)


def _mqtt_str(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _OneShot:
    """One MQTT 5 connection that only logs in (clean start) and leaves: enough to take a
    client id over, with none of a full client's threads."""

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str,
                 timeout: float) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        body = (_mqtt_str("MQTT") + bytes([5, 0xC2]) + (10).to_bytes(2, "big") + b"\x00"
                + _mqtt_str(client_id) + _mqtt_str(username) + _mqtt_str(password))
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        head = self._read(2)
        if head[0] != 0x20:
            self.sock.close()
            raise BrokerCommandError(f"unexpected answer {head[0]:#x} to the admin's CONNECT")
        rest = self._read(head[1])  # CONNACK: flags, reason, properties (short)
        if rest[1] != 0:
            self.sock.close()
            if rest[1] in (0x86, 0x87):
                raise BrokerUnavailable(f"the broker refused the admin login (reason {rest[1]:#x})")
            raise BrokerCommandError(f"the broker refused the admin (reason {rest[1]:#x})")

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError("the broker closed the admin connection")
            data += chunk
        return data

    def disconnect(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()


def _pid_reloader(pid_file: Path) -> Callable[[], None]:
    def reload() -> None:
        try:
            pid = int(Path(pid_file).read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as exc:
            raise BrokerUnavailable(f"cannot signal the broker (pid file {pid_file}): {exc}") from exc
    return reload


class X509Access:
    """Broker access by per-device certificates (implements `BrokerAccess`; module docstring).

    ``reload``: makes the broker re-read its ACL, password and CRL files (default: SIGHUP to
    the pid in ``pid_file``). ``admin``: (host, port, username, password) of the loopback
    listener, used to cut a revoked device's live connection by taking over its client id.
    """

    def __init__(self, directory: Path | str, *, admin: tuple[str, int, str, str],
                 pid_file: Path | str | None = None,
                 reload: Callable[[], None] | None = None,
                 passwd_bin: str = "mosquitto_passwd", reload_wait_s: float = 0.3) -> None:
        self.dir = Path(directory)
        self.ca = DeviceCA(self.dir).ensure()
        self.admin = admin
        if reload is None:
            if pid_file is None:
                raise ValueError("X509Access needs pid_file or reload")
            reload = _pid_reloader(Path(pid_file))
        self._reload = reload
        self.passwd_bin = passwd_bin
        self.reload_wait_s = reload_wait_s
        self.acl_path = self.dir / "acl"
        self.passwd_path = self.dir / "passwd"
        self.state_path = self.dir / "access.json"
        self._lock = threading.Lock()
        self._write_acl(self._state())  # this code's patterns, whatever an older one wrote

    # BrokerAccess ------------------------------------------------------------------------

    def provision_device(self, uid: str, password: str) -> None:
        """Nothing to do at the broker: the device's certificate and the ACL patterns are its
        access (the password is unused). O(1) whatever the fleet size."""
        check_uid(uid)

    def issue_device_certificate(self, uid: str, public_key_pem: str) -> str:
        """Return the PEM client certificate of device ``uid`` for its enrolled public key."""
        return self.ca.issue(uid, public_key_pem)

    @property
    def device_ca_pem(self) -> str:
        return self.ca.cert_pem

    def revoke_device(self, uid: str) -> None:
        """Revoke every certificate of ``uid`` (CRL, reload) and cut its live connection."""
        check_uid(uid)
        state = self._state()
        changed = False
        with self._lock:
            if uid in state["gateways"]:  # a gateway's own identity
                del state["gateways"][uid]
                changed = True
            for gw, children in state["gateways"].items():  # nobody speaks for it any more
                if uid in children:
                    children.remove(uid)
                    changed = True
            if changed:
                self._save_state(state)
                self._write_acl(state)
        new = self.ca.revoke(uid)
        if new or changed:
            self._reload()
            time.sleep(self.reload_wait_s)  # the broker handles the signal in its loop
        self.kick(uid)
        log.info("broker: %s revoked (%d certificates on the CRL, connection cut)", uid, len(new))

    def provision_service(self, username: str, password: str, role: ServiceRole | str) -> None:
        role = ServiceRole(role)
        if not username or username == self.admin[2]:
            raise ValueError(f"invalid service username {username!r}")
        with self._lock:
            state = self._state()
            state["services"][username] = role.value
            self._save_state(state)
            self._set_password(username, password)
            self._write_acl(state)
        self._reload()
        time.sleep(self.reload_wait_s)

    def provision_gateway(self, uid: str, password: str, children: list[str]) -> None:
        check_uid(uid)
        kids = sorted({check_uid(c) for c in children})
        if uid in kids:
            raise ValueError(f"gateway {uid} cannot be its own child")
        with self._lock:
            state = self._state()
            state["gateways"][uid] = kids
            self._save_state(state)
            self._write_acl(state)
        self._reload()

    def add_gateway_children(self, uid: str, children: list[str]) -> None:
        check_uid(uid)
        with self._lock:
            state = self._state()
            if uid not in state["gateways"]:
                raise BrokerCommandError(f"no gateway {uid!r} at the broker: provision it first")
            kids = set(state["gateways"][uid]) | {check_uid(c) for c in children}
            kids.discard(uid)
            if kids == set(state["gateways"][uid]):
                return
            state["gateways"][uid] = sorted(kids)
            self._save_state(state)
            self._write_acl(state)
        self._reload()

    def grant_package(self, pkg: int, uids: list[str]) -> None:
        """Per-deployment fan-out grants need per-device ACL entries, which this backend keeps
        out of the broker on purpose (one ``pattern`` for every device): with X.509 access the
        fan-out is encrypted instead (``FANOUT_ACCESS=encrypt``, the default)."""
        raise BrokerCommandError(
            "X.509 broker access cannot grant a package's fan-out per device: use "
            "FANOUT_ACCESS=encrypt")

    def revoke_package(self, pkg: int, uids: list[str]) -> None:
        """Nothing was granted (see :meth:`grant_package`): nothing to take back."""

    def ping(self) -> float:
        start = time.monotonic()
        client = self._admin_client(f"fleet-admin-ping-{os.getpid()}")
        client.disconnect()
        return time.monotonic() - start

    def close(self) -> None:
        """Nothing held open between calls."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Building blocks ---------------------------------------------------------------------

    def kick(self, uid: str, timeout: float = 5.0) -> None:
        """Drop ``uid``'s live connection: connect with its client id (clean start) on the
        admin listener, which makes the broker close the device's session, then leave."""
        client = self._admin_client(uid, timeout)
        client.disconnect()

    def _admin_client(self, client_id: str, timeout: float = 5.0) -> _OneShot:
        host, port, username, password = self.admin
        try:
            return _OneShot(host, port, client_id, username, password, timeout)
        except OSError as exc:
            raise BrokerUnavailable(f"broker admin listener {host}:{port}: {exc}") from exc

    def ensure_admin(self) -> None:
        """Give the admin identity (``admin``'s username and password) a login, no grants."""
        with self._lock:
            self._set_password(self.admin[2], self.admin[3])

    def _state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"services": {}, "gateways": {}}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def _set_password(self, username: str, password: str) -> None:
        if not self.passwd_path.exists():
            self.passwd_path.touch(mode=0o600)
        result = subprocess.run([self.passwd_bin, "-b", str(self.passwd_path), username,
                                 password], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerCommandError(f"mosquitto_passwd failed: {result.stderr.strip()}")
        os.chmod(self.passwd_path, 0o644)

    def _write_acl(self, state: dict[str, Any]) -> None:
        """Write the ACL file: device patterns, then a block per service and gateway."""
        lines = ["# Written by fleet.broker.x509 from access.json: do not edit.",
                 "# Every device (certificate CN = uid = username = client id):",
                 *device_patterns(), ""]
        for username, role in sorted(state["services"].items()):
            lines.append(f"user {username}")
            lines += [f"topic {a} {t}" for t, a in _merge(service_grants(role)).items()]
            lines.append("")
        for uid, children in sorted(state["gateways"].items()):
            grants = [Grant(Access.PUBLISH, device_topic(uid, "status"))]
            for child in children:
                grants += device_grants(child)
            lines.append(f"user {uid}")
            lines += [f"topic {a} {t}" for t, a in _merge(grants).items()]
            lines.append("")
        tmp = self.acl_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.acl_path)


# The broker config for certificate-authenticated devices. string.Template placeholders of
# fleet.broker.mosquitto.MosquittoInstance (${port}, ...) stay; the ones of this mode are
# filled by `write_broker_template` ($$ is a literal dollar for the second pass).
X509_TEMPLATE = """\
# Mosquitto 2 for the TinyML fleet with per-device X.509 certificates (fleet/broker/x509.py).
# Rendered twice: by fleet.broker.x509.write_broker_template, then by fleet.broker.mosquitto.
per_listener_settings false
allow_anonymous false
user $${user}

# Loopback, plain: the web server, the workers and the admin (passwords in password_file).
listener $${port} $${host}
protocol mqtt
max_connections $${max_connections}

# TLS with a password (services from another host); the fleet broker CA signs the server.
listener $${tls_port} $${host}
protocol mqtt
max_connections $${max_connections}
certfile $${server_cert}
keyfile $${server_key}
tls_version tlsv1.2

# Devices: a client certificate from the device CA is the only way in. Its CN (the device
# uid) becomes the username and the client id, so the ACL patterns below give each device
# its own subtree and nobody can take over another device's session.
listener ${device_port} ${device_host}
protocol mqtt
max_connections $${max_connections}
certfile $${server_cert}
keyfile $${server_key}
cafile ${device_ca}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
crlfile ${crl}
tls_version tlsv1.2

password_file ${passwd}
acl_file ${acl}

persistence true
persistence_location $${persistence_dir}/
autosave_interval $${autosave_interval}
persistent_client_expiration 14d
max_queued_messages $${max_queued_messages}
max_queued_bytes $${max_queued_bytes}
max_inflight_messages $${max_inflight_messages}
max_packet_size $${max_packet_size}
set_tcp_nodelay true

log_dest file $${log_file}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


def write_broker_template(directory: Path | str, device_port: int,
                          device_host: str = "127.0.0.1") -> Path:
    """Write the Mosquitto config template of this mode for ``directory`` (the X509Access
    folder, which must be readable by the broker's user); return its path."""
    import string

    directory = Path(directory)
    DeviceCA(directory).ensure()
    for name in ("acl", "passwd"):
        (directory / name).touch(mode=0o644)
    path = directory / "mosquitto-x509.conf.template"
    path.write_text(string.Template(X509_TEMPLATE).substitute(
        device_port=device_port, device_host=device_host,
        device_ca=directory / "device-ca.pem", crl=directory / "crl.pem",
        passwd=directory / "passwd", acl=directory / "acl"))
    return path
