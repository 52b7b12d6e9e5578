"""The device list stays an index lookup at fleet scale: no DISTINCT for plain filters, and
search served by trigram indexes on PostgreSQL (migration devices 0008)."""

from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.devices.models import Device, HardwareProfile

pytestmark = pytest.mark.django_db


def _devices(count: int) -> None:
    profile = HardwareProfile.objects.order_by("name").first()
    Device.objects.bulk_create([
        Device(uid=f"scale-{i:04d}", name=f"unit {i}", hardware_profile=profile,
               public_key_pem="-", public_key_fingerprint=f"{i:064x}", key_algorithm="ed25519",
               state="offline" if i % 2 else "online") for i in range(count)])


def test_state_filter_counts_without_distinct(api_client_for: Callable) -> None:  # type: ignore[type-arg]
    _devices(30)
    client = api_client_for("viewer")
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/api/v1/devices/", {"state": ["offline", "online"], "limit": 5})
    assert response.status_code == 200
    assert response.json()["count"] == 30
    device_queries = [q["sql"] for q in ctx.captured_queries if "devices_device" in q["sql"]]
    assert device_queries and not any("DISTINCT" in sql for sql in device_queries)


def test_search_finds_by_uid_fragment(api_client_for: Callable) -> None:  # type: ignore[type-arg]
    _devices(30)
    response = api_client_for("viewer").get("/api/v1/devices/", {"search": "ale-0017"})
    assert [d["uid"] for d in response.json()["results"]] == ["scale-0017"]


@pytest.mark.postgres
def test_search_has_trigram_indexes_on_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("trigram indexes are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'devices_device'"
                       " AND indexname LIKE '%%_trgm'")
        assert {r[0] for r in cursor.fetchall()} == {"devices_device_uid_trgm",
                                                     "devices_device_name_trgm"}
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname ="
                       " 'devices_device_uid_trgm'")
        assert "gin_trgm_ops" in cursor.fetchone()[0]
