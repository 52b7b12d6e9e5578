"""Broker access that does not grow with the fleet: per-device X.509 certificates.

`X509Access` implements `BrokerAccess` (and `IssuesDeviceCertificates`) for a Mosquitto 2
whose device listener takes client certificates from the fleet's *device CA*
(``fleet.broker.device_ca``; listener config and ACL file: ``fleet.broker.x509_config``):

- ``require_certificate true``, ``use_identity_as_username true`` (the certificate's CN, the
  device uid, is the username) and ``use_username_as_clientid true`` (so nobody can take over
  another device's session by its client id);
- an ``acl_file`` whose ``pattern`` lines give every device exactly `device_grants` of its own
  ``%u``; only services and gateways have ``user`` blocks;
- ``crlfile``: certificates revoked by the device CA.

Enrolling a device therefore writes nothing at the broker nor on disk: the enrollment answer
carries the certificate the CA signs for the public key the device proved it holds, a function
of (uid, key, CA). Nothing the broker holds grows with the fleet, so the cost is the same for
the 100,000th device as for the first (dynamic security rewrites its whole JSON on every
change: 537 ms per device with 10,000 in it).

Revocation (`revoke_device`): the device's serial goes on the CRL, with a throw-away probe
certificate's (``fleet.broker.crl_probe``), the broker reloads (SIGHUP: Mosquitto reads
``crlfile`` again when it sets its listeners up on a reload), which refuses every new TLS
handshake with that certificate; the server handshakes with the probe until the device listener
refuses it (the new CRL is in force; else BrokerUnavailable). A reload does not touch a live
connection, so the server then takes over the device's client id on its admin listener (clean
start), which makes the broker drop the device's connection at once; its reconnection fails
the handshake. Every call reloads, so retrying a revocation whose reload failed still works.
Measured in ``tests/fleet/broker/test_x509_access.py`` and ``bench/enroll.py``.

Services (worker, web, monitor) log in with passwords from a ``password_file`` on the
loopback listener; serial gateways with theirs on the TLS password listener, where the
username (the gateway's uid) is the client id, so a gateway cannot take a device's session; their grants, and gateways' children, are ``user`` blocks of the ACL file.
Changing those rewrites the two small files and reloads: their size follows services and
gateway children, not devices.

State (in ``directory``, the broker's work folder on a single node): the device CA's files,
``acl``, ``passwd``, ``access.json`` (services and gateways, from which ``acl`` and ``passwd``
are written; each change is made under an exclusive ``flock`` of ``access.lock``, so web
processes changing them at once lose nothing). Back the CA key up with the broker CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from device_sdk.mqtt.wire import mqtt_str, packet
from fleet.broker.access import (
    BrokerCommandError,
    BrokerUnavailable,
    DeviceCertificate,
    ServiceRole,
    check_uid,
)
from fleet.broker.crl_probe import CrlProbe
from fleet.broker.device_ca import DeviceCA
from fleet.broker.x509_config import (
    device_patterns,
    merge_grants,
    render_acl,
    write_broker_template,
)

__all__ = ["DeviceCA", "X509Access", "device_patterns", "merge_grants", "write_broker_template"]

log = logging.getLogger(__name__)

class _OneShot:
    """One MQTT 5 connection that only logs in (clean start) and leaves: enough to take a
    client id over, with none of a full client's threads."""

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str,
                 timeout: float) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        body = (mqtt_str("MQTT") + bytes([5, 0xC2]) + (10).to_bytes(2, "big") + b"\x00"
                + mqtt_str(client_id) + mqtt_str(username) + mqtt_str(password))
        self.sock.sendall(packet(0x10, body))
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
    ``device_listener``: (host, port) of the certificate listener, where a revocation checks
    that the broker loaded the new CRL before it cuts the device.
    """

    def __init__(self, directory: Path | str, *, admin: tuple[str, int, str, str],
                 device_listener: tuple[str, int],
                 pid_file: Path | str | None = None,
                 reload: Callable[[], None] | None = None,
                 passwd_bin: str = "mosquitto_passwd", reload_wait_s: float = 0.3,
                 crl_timeout_s: float = 4.0) -> None:
        self.dir = Path(directory)
        self.ca = DeviceCA(self.dir).ensure()
        self.admin = admin
        self.device_listener = device_listener
        if reload is None:
            if pid_file is None:
                raise ValueError("X509Access needs pid_file or reload")
            reload = _pid_reloader(Path(pid_file))
        self._reload = reload
        self.passwd_bin = passwd_bin
        self.reload_wait_s = reload_wait_s
        self.crl_timeout_s = crl_timeout_s
        self.acl_path = self.dir / "acl"
        self.passwd_path = self.dir / "passwd"
        self.state_path = self.dir / "access.json"
        self._lock = threading.Lock()
        self._lock_path = self.dir / "access.lock"
        with self._locked():
            self._write_acl(self._state())  # this code's patterns, whatever an older one wrote

    # BrokerAccess ------------------------------------------------------------------------

    def provision_device(self, uid: str, password: str) -> None:
        """Nothing to do at the broker: the device's certificate and the ACL patterns are its
        access (the password is unused). O(1) whatever the fleet size."""
        check_uid(uid)

    def issue_device_certificate(self, uid: str, public_key_pem: str) -> DeviceCertificate:
        """Return device ``uid``'s client certificate for its enrolled public key (O(1): a
        signature with the loaded CA key, nothing written; see ``fleet.broker.device_ca``)."""
        return self.ca.issue(uid, public_key_pem)

    @property
    def device_ca_pem(self) -> str:
        return self.ca.cert_pem

    def revoke_device(self, uid: str) -> None:
        """Revoke every certificate of ``uid`` (CRL, reload) and cut its live connection."""
        check_uid(uid)
        changed = was_gateway = False
        with self._locked():
            state = self._state()
            if uid in state["gateways"]:  # a gateway's own identity
                del state["gateways"][uid]
                changed = was_gateway = True
            for children in state["gateways"].values():  # nobody speaks for it any more
                if uid in children:
                    children.remove(uid)
                    changed = True
            if changed:
                self._save_state(state)
                self._write_acl(state)
            if was_gateway:
                self._delete_password(uid)  # its own login
        # A probe certificate revoked in the same CRL update: once the broker refuses it, it
        # refuses ``uid`` too. Always rewrite and reload: an earlier attempt may have written
        # the CRL and then failed to reload (a retry finds nothing new to revoke).
        probe = CrlProbe(self.ca)
        new = self.ca.revoke(uid, probe=probe.uid)
        self._reload()
        in_force = probe.wait_refused(self.device_listener, self.crl_timeout_s)
        self.kick(uid)  # even if unconfirmed: the caller retries, the device is cut meanwhile
        if not in_force:
            raise BrokerUnavailable(
                f"the broker did not refuse a certificate revoked with {uid} within "
                f"{self.crl_timeout_s} s: is the reload reaching it?")
        log.info("broker: %s revoked (%d certificates on the CRL, connection cut)", uid, len(new))

    def provision_service(self, username: str, password: str, role: ServiceRole | str) -> None:
        role = ServiceRole(role)
        if not username or username == self.admin[2]:
            raise ValueError(f"invalid service username {username!r}")
        with self._locked():
            state = self._state()
            state["services"][username] = role.value
            self._save_state(state)
            self._set_password(username, password)
            self._write_acl(state)
        self._reload()
        time.sleep(self.reload_wait_s)

    def provision_gateway(self, uid: str, password: str, children: list[str]) -> None:
        """Let gateway ``uid`` log in with ``password`` (on the gateways' TLS password
        listener, client id = ``uid``: the device listener takes certificates only) and use
        exactly ``children``'s topics."""
        check_uid(uid)
        kids = sorted({check_uid(c) for c in children})
        if uid in kids:
            raise ValueError(f"gateway {uid} cannot be its own child")
        with self._locked():
            state = self._state()
            state["gateways"][uid] = kids
            self._save_state(state)
            self._set_password(uid, password)
            self._write_acl(state)
        self._reload()
        time.sleep(self.reload_wait_s)  # the new password counts once the broker reloaded

    def add_gateway_children(self, uid: str, children: list[str]) -> None:
        check_uid(uid)
        with self._locked():
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
        with self._locked():
            self._set_password(self.admin[2], self.admin[3])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this process's lock and an exclusive ``flock`` on ``access.lock``: web
        processes (gunicorn workers) read-modify-write access.json, the ACL and the password
        file one at a time, so none loses another's change."""
        with self._lock, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"services": {}, "gateways": {}}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(f".tmp{os.getpid()}")
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

    def _delete_password(self, username: str) -> None:
        if self.passwd_path.exists():
            subprocess.run([self.passwd_bin, "-D", str(self.passwd_path), username],
                           capture_output=True, text=True, check=False)  # absent: fine
            os.chmod(self.passwd_path, 0o644)

    def _write_acl(self, state: dict[str, Any]) -> None:
        """Write the ACL file (``render_acl``) atomically."""
        tmp = self.acl_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(render_acl(state))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.acl_path)
