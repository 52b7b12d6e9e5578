"""The X.509 backend's files under trouble: a partial restore of the device CA, processes
creating the CA at once, and web processes changing access.json at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from fleet.broker.crl_probe import CrlProbe
from fleet.broker.device_ca import DeviceCA, DeviceCAIncomplete
from fleet.broker.x509 import X509Access
from testkit.broker import require_mosquitto, running_x509_broker


@pytest.mark.parametrize("lost", ["device-ca.key", "device-ca.pem"])
def test_half_a_ca_is_an_error_not_a_new_ca(tmp_path: Path, lost: str) -> None:
    """A lost key (or certificate) must not silently become a new CA: that would refuse every
    enrolled device and forget the revocations."""
    ca = DeviceCA(tmp_path).ensure()
    ca.revoke("dev-1")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    (tmp_path / lost).unlink()
    with pytest.raises(DeviceCAIncomplete, match="restore the pair"):
        DeviceCA(tmp_path).ensure()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != lost}


def test_a_crl_of_another_ca_is_an_error(tmp_path: Path) -> None:
    DeviceCA(tmp_path / "a").ensure()
    DeviceCA(tmp_path / "b").ensure()
    (tmp_path / "b" / "crl.pem").write_bytes((tmp_path / "a" / "crl.pem").read_bytes())
    with pytest.raises(DeviceCAIncomplete, match="not signed by"):
        DeviceCA(tmp_path / "b").ensure()


def _ensure_ca(folder: str, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    out.put(DeviceCA(folder).ensure().cert_pem)  # type: ignore[attr-defined]


def test_processes_creating_the_ca_at_once_agree_on_one(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        start, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_ensure_ca, args=(str(folder), start, out))
                 for _ in range(4)]
        for p in procs:
            p.start()
        seen = {out.get(timeout=60) for _ in procs}
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert seen == {(folder / "device-ca.pem").read_text()}
        DeviceCA(folder).ensure()  # the key matches the certificate, the CRL is the CA's


@pytest.mark.integration
def test_a_new_ca_gets_its_own_crl_and_the_broker_takes_its_devices(tmp_path: Path) -> None:
    """Both CA files gone (a deliberate new CA) while the old crl.pem stays: the new CA must
    write its own CRL, or OpenSSL refuses every client of the fleet."""
    tmp_path.chmod(0o755)
    pki = tmp_path / "pki"
    old = DeviceCA(pki).ensure()
    old.revoke("dev-gone")
    (pki / "device-ca.pem").unlink()
    (pki / "device-ca.key").unlink()
    with running_x509_broker(tmp_path / "broker", pki) as broker:
        # A certificate of the new CA for a device never revoked: the handshake must pass.
        assert CrlProbe(broker.access.ca).accepted(broker.instance.host, broker.device_port)


def _no_reload() -> None:
    """The broker is not the subject here: access.json and the ACL file are."""


def _add_children(folder: str, prefix: str, count: int, start: object) -> None:
    access = X509Access(folder, admin=("127.0.0.1", 1, "admin", "pw"), reload=_no_reload,
                        device_listener=("127.0.0.1", 1))
    start.wait()  # type: ignore[attr-defined]
    for i in range(count):
        access.add_gateway_children("gw-1", [f"{prefix}-{i}"])


def test_processes_adding_gateway_children_at_once_lose_none(tmp_path: Path) -> None:
    """Web processes (gunicorn workers) change access.json at once: every grant must survive,
    in access.json and in the ACL file the broker reads."""
    require_mosquitto()  # mosquitto_passwd
    access = X509Access(tmp_path, admin=("127.0.0.1", 1, "admin", "pw"), reload=_no_reload,
                        device_listener=("127.0.0.1", 1))
    access.provision_gateway("gw-1", "pw", [])
    ctx = multiprocessing.get_context("spawn")
    start, count = ctx.Barrier(2), 40
    procs = [ctx.Process(target=_add_children, args=(str(tmp_path), p, count, start))
             for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    want = sorted(f"{p}-{i}" for p in ("a", "b") for i in range(count))
    assert access._state()["gateways"]["gw-1"] == want
    acl = (tmp_path / "acl").read_text()
    assert all(f"topic write fleet/v1/{kid}/events" in acl for kid in want)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
