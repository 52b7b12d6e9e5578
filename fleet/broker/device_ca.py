"""The fleet's device CA: certificates for the keys devices proved at enrollment, and the CRL.

A device's certificate is a function of its uid, its enrollment public key and the CA, and of
nothing else: the serial is an HMAC of the uid under a key derived from the CA's private key,
and the validity is the CA's own. Issuing therefore writes nothing (no record per device, no
per-host state): any web process holding the CA key issues the same certificate again, and
revocation finds a device's serial from its uid alone. With an Ed25519 CA (the default for a
new CA) signatures are deterministic too, so a re-issued certificate is byte-identical; with an
older P-256 CA the re-issued certificate has the same content and serial and another signature.

The uid names the certificate: a uid once revoked stays refused at the broker, whatever key a
later device under that uid would bring (the server refuses to enroll a revoked device anyway).
Older releases recorded random serials per device under ``issued/``; those are still revoked
(``serials``). State in ``directory``: ``device-ca.pem``, ``device-ca.key`` (0600),
``revoked.txt`` (serial, uid, time), ``crl.pem``, ``crl.lock``.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.broker.access import DeviceCertificate, check_uid

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
# OpenSSL refuses every client once the CRL is past its nextUpdate: far ahead, re-signed at
# every revocation.
CRL_VALIDITY = datetime.timedelta(days=3650)
_SERIAL_LABEL = b"fleet.broker.device_ca serial v1\x00"
_SERIAL_BYTES = 15  # 120 bits: positive, well inside RFC 5280's 20 octets
# revoked.txt marks a probe's line (see `DeviceCA.revoke`) with this before its uid: no
# device uid starts with it, so pruning probes never takes a device off the CRL.
PROBE_MARK = "~probe:"
PROBES_KEPT = 16

CAKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class DeviceCAIncomplete(RuntimeError):
    """The device CA's files do not belong together (one of the pair, another CA's CRL)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _hash_for(key: CAKey) -> hashes.SHA256 | None:
    """Ed25519 signs without a separate digest; ECDSA with SHA-256."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class DeviceCA:
    """Issue device certificates (CN = uid) and keep the CRL of revoked ones.

    Thread-safe; across processes the CRL is rewritten under an exclusive ``flock``.
    """

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.cert_path = self.dir / "device-ca.pem"
        self.key_path = self.dir / "device-ca.key"
        self.crl_path = self.dir / "crl.pem"
        self.revoked_path = self.dir / "revoked.txt"
        self.issued_dir = self.dir / "issued"  # older releases' serial records (read only)
        self._lock = threading.Lock()
        self._key: CAKey | None = None
        self._cert: x509.Certificate | None = None
        self._cert_pem = ""
        self._serial_key = b""

    def ensure(self, key_type: str = "ed25519") -> Self:
        """Create the CA (``key_type`` ed25519 or p256) and an empty CRL unless they exist;
        load the CA key once (every issuance uses the loaded key object).

        Raises `DeviceCAIncomplete` if only one of the certificate and the key exists (a lost
        key, a partial restore) or the CRL is not signed by this CA: a new CA would lock out
        every enrolled device, an old CRL every client. Creation is under the CRL's ``flock``,
        so processes starting at once agree on one CA.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.dir / "crl.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            have_cert, have_key = self.cert_path.exists(), self.key_path.exists()
            if have_cert != have_key:
                present, missing = ((self.cert_path, self.key_path) if have_cert
                                    else (self.key_path, self.cert_path))
                raise DeviceCAIncomplete(
                    f"{present} exists but {missing} does not: restore the pair from the backup "
                    "(a new device CA would lock out every enrolled device), or remove both "
                    "to start a new CA deliberately")
            created = not have_cert
            if created:
                self._create(key_type)
            self._load()
            if created or not self.crl_path.exists():
                self.write_crl()  # never keep a CRL of another CA: OpenSSL refuses everyone
            self._check_crl()
        return self

    def _check_crl(self) -> None:
        assert self._cert is not None
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        if not crl.is_signature_valid(self._cert.public_key()):  # type: ignore[arg-type]
            raise DeviceCAIncomplete(
                f"{self.crl_path} is not signed by {self.cert_path}: the broker would refuse "
                "every device; restore the CA's own CRL and revoked.txt")

    def _create(self, key_type: str) -> None:
        if key_type not in ("ed25519", "p256"):
            raise ValueError(f"device CA key type must be ed25519 or p256, not {key_type!r}")
        key: CAKey = (ed25519.Ed25519PrivateKey.generate() if key_type == "ed25519"
                      else ec.generate_private_key(ec.SECP256R1()))
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
            .sign(key, _hash_for(key)))
        # O_EXCL: never overwrite a CA key, even one another host's process just wrote.
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        tmp = self.cert_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.cert_path)
        self.revoked_path.unlink(missing_ok=True)  # serials of another CA
        log.info("created the device CA (%s) in %s", key_type, self.dir)

    def _load(self) -> None:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            raise TypeError(f"{self.key_path}: the device CA key must be Ed25519 or ECDSA")
        self._key = key
        self._cert_pem = self.cert_path.read_text()
        self._cert = x509.load_pem_x509_certificate(self._cert_pem.encode())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # Secret to anyone without the CA key, identical on every host that has it.
        self._serial_key = hashlib.sha256(_SERIAL_LABEL + der).digest()

    @property
    def cert_pem(self) -> str:
        """The CA certificate (PEM) the broker trusts device certificates with."""
        return self._cert_pem

    def serial_for(self, uid: str) -> int:
        """Return the serial of ``uid``'s certificate: the same on every issuance and host."""
        digest = hmac.new(self._serial_key, check_uid(uid).encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:_SERIAL_BYTES], "big") or 1

    def issue(self, uid: str, public_key_pem: str | bytes) -> DeviceCertificate:
        """Return the certificate binding ``public_key_pem`` to CN = ``uid`` (writes nothing).

        The caller must have checked that the device holds the key (enrollment's proof of
        possession) and that ``uid`` is bound to that key.
        """
        assert self._key is not None and self._cert is not None, "call ensure() first"
        key = serialization.load_pem_public_key(
            public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem)
        ca = self._cert
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_uid(uid))]))
            .issuer_name(ca.subject).public_key(key)  # type: ignore[arg-type]
            .serial_number(self.serial_for(uid))
            # The CA's validity: revocation, not expiry, ends a device; and a fixed content.
            .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(self._key, _hash_for(self._key)))
        return DeviceCertificate(cert.public_bytes(serialization.Encoding.PEM).decode(),
                                 self._cert_pem)

    def _legacy_file(self, uid: str) -> Path:
        shard = hashlib.sha256(uid.encode()).hexdigest()[:2]
        return self.issued_dir / shard / check_uid(uid)

    def serials(self, uid: str) -> list[int]:
        """Return every serial ``uid`` may hold: its derived one and any recorded by older
        releases (random serials under ``issued/``)."""
        out = [self.serial_for(uid)]
        path = self._legacy_file(uid)
        if path.exists():
            out += [int(line, 16) for line in path.read_text().split()]
        return out

    def revoked(self) -> dict[int, tuple[str, datetime.datetime]]:
        """Return serial -> (uid, revocation time) of every revoked certificate."""
        out: dict[int, tuple[str, datetime.datetime]] = {}
        if self.revoked_path.exists():
            for line in self.revoked_path.read_text().splitlines():
                serial, uid, when = line.split()
                out[int(serial, 16)] = (uid, datetime.datetime.fromisoformat(when))
        return out

    def revoke(self, uid: str, probe: str | None = None) -> list[int]:
        """Put every certificate of ``uid`` on the CRL (rewritten); return the new serials.

        ``probe``: the uid of a throw-away certificate to revoke in the same CRL update, so
        that a handshake refused with it proves the broker loaded this CRL. The CRL is
        rewritten even when ``uid`` was revoked already. Only the newest `PROBES_KEPT` probes
        stay on it, so probes do not grow the CRL with every revocation.
        """
        with self._lock, open(self.dir / "crl.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # web processes revoking at once
            done = self.revoked()
            new = [s for s in self.serials(uid) if s not in done]
            if new or probe is not None:
                now = _now().isoformat()
                lines = (self.revoked_path.read_text().splitlines(keepends=True)
                         if self.revoked_path.exists() else [])
                lines += [f"{s:x} {uid} {now}\n" for s in new]
                if probe is not None:
                    lines.append(f"{self.serial_for(probe):x} {PROBE_MARK}{probe} {now}\n")
                    probes = [i for i, line in enumerate(lines)
                              if line.split()[1].startswith(PROBE_MARK)]
                    drop = set(probes[:-PROBES_KEPT])
                    lines = [line for i, line in enumerate(lines) if i not in drop]
                tmp = self.revoked_path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text("".join(lines))
                os.replace(tmp, self.revoked_path)
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
        crl = builder.sign(self._key, _hash_for(self._key))  # type: ignore[arg-type]
        tmp = self.crl_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.crl_path)
