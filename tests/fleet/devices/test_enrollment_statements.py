"""Enrollment's hand-written statements (fleet.devices.claims): how many, and that the token
row lock still makes concurrent enrollments with one token take turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.db import connection, transaction

from fleet.audit.models import AuditLog
from fleet.devices.actions import EnrollmentError, EnrollmentResult
from fleet.devices.models import Device, EnrollmentToken, HardwareProfile
from testkit.enrollment import enroll_in_process
from tests.conftest import CAPABILITIES


def _enroll(token: str, key: ed25519.Ed25519PrivateKey, uid: str | None = None,
            hardware: str = "stm32f746") -> EnrollmentResult:
    return enroll_in_process(token=token, key=key, hardware=hardware,
                             capabilities=dict(CAPABILITIES), uid=uid)


@pytest.mark.django_db
def test_a_new_enrollment_sends_seven_statements(
        enrollment_token_factory: Callable[..., str], hardware_profile: HardwareProfile,
        device_group: Any, django_assert_num_queries: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Begin, nonce, token use (UPDATE ... RETURNING), context (profile, group, devices by key
    and uid), device, audit, commit (here, inside the test's transaction, a savepoint and its
    release): one more is a regression on the path of every device's first call. (One
    enrollment in 64 also prunes spent nonces, a DELETE: not this one.)"""
    from fleet.devices import proof

    monkeypatch.setattr(proof.secrets, "randbelow", lambda n: 1)  # no prune this time
    token = enrollment_token_factory(group=device_group, max_uses=5)
    _enroll(token, ed25519.Ed25519PrivateKey.generate())  # warm: nothing is cached per token
    with django_assert_num_queries(7):
        result = _enroll(token, ed25519.Ed25519PrivateKey.generate(), uid="stmt-1")
    device = Device.objects.get(uid="stmt-1")
    assert (device.group, device.hardware_profile, device.enrolled_with.uses) == (
        device_group, hardware_profile, 2)
    audit = AuditLog.objects.get(action="device.enroll", object_id=str(device.pk))
    assert audit.after["group"] == device_group.name
    assert audit.after["hardware"] == "stm32f746"
    assert result.device.pk == device.pk


@pytest.mark.django_db
def test_a_re_enrollment_gives_its_token_use_back_and_refusals_keep_none(
        enrollment_token_factory: Callable[..., str], hardware_profile: HardwareProfile) -> None:
    """The use `take_claim` counts is kept only by a new device."""
    token = enrollment_token_factory(max_uses=2)
    key = ed25519.Ed25519PrivateKey.generate()
    assert _enroll(token, key, uid="again-1").created
    assert not _enroll(token, key).created  # the same key: the same device, no use
    with pytest.raises(EnrollmentError) as refused:
        _enroll(token, ed25519.Ed25519PrivateKey.generate(), hardware="no-such-board")
    assert refused.value.reason == "unknown_hardware"
    assert EnrollmentToken.objects.get().uses == 1


def _require_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks taking turns are PostgreSQL's (SQLite runs one writer at a time)")


@pytest.mark.django_db(transaction=True)
def test_concurrent_enrollments_never_exceed_the_token_uses(
        enrollment_token_factory: Callable[..., str], hardware_profile: HardwareProfile) -> None:
    """Eight devices at once on a three-use token: three enrolled, five refused used-up."""
    _require_postgresql()
    token = enrollment_token_factory(max_uses=3)
    keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(8)]
    outcomes: list[str] = []
    gate = threading.Barrier(len(keys))

    def run(key: ed25519.Ed25519PrivateKey) -> None:
        try:
            gate.wait()
            _enroll(token, key)
            outcomes.append("enrolled")
        except EnrollmentError as exc:
            outcomes.append(exc.reason)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["enrolled"] * 3 + ["token_used_up"] * 5
    assert EnrollmentToken.objects.get().uses == 3
    assert Device.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_key_enrolling_twice_at_once_gets_its_device_twice(
        enrollment_token_factory: Callable[..., str], hardware_profile: HardwareProfile) -> None:
    """The second request waits on the token row, then sees the device the first committed
    (its reads come after the lock): the same device again, not a duplicate-key error."""
    _require_postgresql()
    token = enrollment_token_factory(max_uses=5)
    key = ed25519.Ed25519PrivateKey.generate()
    holding = threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = _enroll(token, key, uid="twice-1")
                holding.set()
                time.sleep(0.5)  # the token row stays locked until this commits
        finally:
            holding.set()
            connection.close()

    def second() -> None:
        holding.wait(10)
        try:
            results["second"] = _enroll(token, key, uid="twice-1")
        except Exception as exc:  # noqa: BLE001 -- recorded: the assertion below names it
            results["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(results["second"], EnrollmentResult), results["second"]
    assert results["first"].created and not results["second"].created
    assert results["second"].device.pk == results["first"].device.pk
    assert EnrollmentToken.objects.get().uses == 1
