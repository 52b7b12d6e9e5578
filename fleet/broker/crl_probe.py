"""Prove that the broker enforces a new CRL: a throw-away client certificate revoked in the
same CRL update, and TLS handshakes with it until the device listener refuses it.

A reload (SIGHUP) is handled in Mosquitto's loop some time after the signal, and a signal can
be lost (wrong pid file, broker restarting); a fixed wait proves nothing. The probe's key lives
only in this object (and, for the duration of a handshake, in a 0600 temporary file, since
Python's ``ssl`` loads client keys from files only).
"""

from __future__ import annotations

import secrets
import socket
import ssl
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.broker.device_ca import DeviceCA


class CrlProbe:
    """A certificate from ``ca`` for a random uid, to revoke alongside a device."""

    def __init__(self, ca: DeviceCA) -> None:
        self.uid = f"crl-probe-{secrets.token_hex(8)}"
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._context = self._client_context(ca.issue(self.uid, public).certificate_pem)

    def _client_context(self, cert_pem: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only the broker's verdict on us matters
        # TLS 1.2: the server checks the client certificate inside the handshake, so a refusal
        # surfaces here (TLS 1.3 would report it only at the first read).
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="crl-probe-") as folder:
            cert, key = Path(folder) / "probe.crt", Path(folder) / "probe.key"
            cert.write_text(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(self._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            context.load_cert_chain(cert, key)
        return context

    def accepted(self, host: str, port: int, timeout: float = 2.0) -> bool:
        """Return True if the listener at (host, port) completes a TLS handshake with this
        certificate, False if it refuses it. Raises OSError if it cannot be reached."""
        with socket.create_connection((host, port), timeout=timeout) as raw:
            try:
                with self._context.wrap_socket(raw):
                    return True
            except (ssl.SSLError, ConnectionResetError):
                return False  # the alert, or the broker closing at once

    def wait_refused(self, listener: tuple[str, int], timeout: float) -> bool:
        """Handshake with ``listener`` until it refuses this certificate (True) or ``timeout``
        seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.accepted(*listener):
                    return True
            except OSError:
                pass  # a broker restarting: try again until the deadline
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
