"""fleet.core.rows: rows written and read as the ORM writes and reads them, on either database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from fleet.audit.models import AuditLog
from fleet.core.rows import insert_row, load_row
from fleet.devices.models import EnrollmentToken, HardwareProfile

pytestmark = pytest.mark.django_db


def test_insert_row_writes_what_create_would() -> None:
    """Primary key set, ``auto_now_add`` filled, JSON and null fields stored; the row reads
    back equal to one the ORM wrote with the same values."""
    values = {"actor_label": "device:x", "action": "device.enroll", "object_type": "t",
              "object_id": "7", "object_repr": "x", "before": None,
              "after": {"ops": ["CONV_2D"], "n": 2, "nested": {"a": None}},
              "remote_addr": "192.0.2.1"}
    fast = insert_row(AuditLog(**values))
    slow = AuditLog.objects.create(**values)
    assert fast.pk is not None and fast.pk != slow.pk
    assert not fast._state.adding
    assert fast.created_at is not None and fast.created_at.tzinfo is not None
    stored = AuditLog.objects.get(pk=fast.pk)
    for name in ("actor_label", "action", "object_id", "before", "after", "remote_addr"):
        assert getattr(stored, name) == getattr(slow, name) == values[name], name
    assert stored.created_at == fast.created_at


def test_insert_row_refuses_a_model_it_cannot_write_faithfully() -> None:
    """A field the database fills (db_default) would be written as the Python default."""
    from django.apps import apps
    from django.db import models

    class WithDbDefault(models.Model):
        n = models.IntegerField(db_default=3)

        class Meta:
            app_label = "audit"
            managed = False

    try:
        with pytest.raises(TypeError, match="WithDbDefault.n"):
            insert_row(WithDbDefault())
    finally:
        # Out of the app registry again: later tests (makemigrations --check) see the models
        # the project has, not this one.
        del apps.all_models["audit"]["withdbdefault"]
        apps.clear_cache()


def test_load_row_converts_values_and_defers_the_rest(hardware_profile: HardwareProfile) -> None:
    """Datetimes come back aware (SQLite returns text), JSON decoded; columns not read are
    deferred, loaded on access."""
    token = EnrollmentToken.objects.create(
        token_hash="h" * 64, prefix="fet_x", expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        allowed_uids=["a", "b"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, expires_at, allowed_uids FROM devices_enrollmenttoken"
                       " WHERE id = %s", [token.pk])
        row = cursor.fetchone()
    loaded = load_row(EnrollmentToken, ["id", "expires_at", "allowed_uids"], row)
    assert loaded.pk == token.pk
    assert loaded.expires_at == token.expires_at and loaded.expires_at.tzinfo is not None
    assert loaded.allowed_uids == ["a", "b"]
    assert loaded.get_deferred_fields() >= {"prefix", "uses"}
    assert loaded.prefix == "fet_x"  # deferred: read on access
    with connection.cursor() as cursor:
        cursor.execute("SELECT supported_ops, id FROM devices_hardwareprofile WHERE id = %s",
                       [hardware_profile.pk])
        profile = load_row(HardwareProfile, ["supported_ops", "id"], cursor.fetchone())
    assert profile.supported_ops == hardware_profile.supported_ops != []
