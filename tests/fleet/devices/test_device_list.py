"""The device list's lean path (fleet/devices/api/listing.py): the same rows as
``DeviceSerializer``, the same devices for every filter the bench times, a fixed handful of
queries that read only what the page shows, and (PostgreSQL) counts served by the indexes of
migration devices 0012."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from fleet.devices.api.serializers import DeviceSerializer
from fleet.devices.models import Device, DeviceGroup, HardwareProfile, Tag
from fleet.devices.stock_profiles import STOCK_PROFILES

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def fleet() -> list[Device]:
    """40 devices over 2 profiles, 3 groups (and none), 4 tags, states, revocations, seen
    times (some never), capabilities and issues: every column a row shows, varied."""
    # The stock profiles come from a data migration; a transactional test that ran before
    # may have flushed them, so put back the two this fleet needs.
    profiles = [HardwareProfile.objects.update_or_create(name=spec["name"], defaults=spec)[0]
                for spec in sorted(STOCK_PROFILES, key=lambda spec: spec["name"])[:2]]
    groups = [DeviceGroup.objects.create(name=f"site-{i}") for i in range(3)]
    tags = [Tag.objects.create(name=name) for name in ("zeta", "alpha", "mid", "batch-7")]
    devices = []
    for i in range(40):
        revoked = i % 7 == 6
        devices.append(Device(
            uid=f"unit-{(i * 17) % 40:03d}", name=f"sensor {i}",
            hardware_profile=profiles[i % 2], group=groups[i % 3] if i % 4 else None,
            public_key_pem="-", public_key_fingerprint=f"{i:064x}", key_algorithm="ed25519",
            state="revoked" if revoked else ["online", "offline", "enrolled"][i % 3],
            revoked_at=NOW if revoked else None,
            first_seen=None if i % 5 == 0 else NOW - timedelta(days=40),
            last_seen=None if i % 5 == 0 else NOW - timedelta(hours=i * 3, microseconds=i),
            firmware_version=f"1.{i % 3}.0", tflm_version="2.16" if i % 2 else "",
            capabilities={"ops": ["CONV_2D"], "arena_bytes": 1000 + i} if i % 3 else {},
            capability_issues=[{"code": "arena", "message": "small"}] if i % 9 == 0 else []))
    Device.objects.bulk_create(devices)
    devices = list(Device.objects.order_by("uid"))
    for i, device in enumerate(devices):
        device.tags.set([tags[j] for j in range(4) if (i >> j) & 1])
    return devices


def _all(client: Any, params: dict[str, Any]) -> dict[str, Any]:
    response = client.get("/api/v1/devices/", {"limit": 500, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_rows_are_the_serializers(api_client_for: Callable, fleet: list[Device]) -> None:  # type: ignore[type-arg]
    body = _all(api_client_for("viewer"), {})
    expected = DeviceSerializer(Device.objects.order_by("uid"), many=True).data
    assert body["count"] == 40
    # Key order too: clients that print columns in answer order see no change.
    assert [list(row) for row in body["results"]] == [list(row) for row in expected]
    assert body["results"] == json.loads(json.dumps(expected, default=str))
    assert any(row["tags"] == ["alpha", "batch-7", "mid", "zeta"] for row in body["results"])
    assert any(row["group"] is None and row["last_seen"] is None for row in body["results"])


def test_unpaged_list_has_the_same_rows(api_client_for: Callable, fleet: list[Device],  # type: ignore[type-arg]
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.devices.api.views import DeviceViewSet

    paged = _all(api_client_for("viewer"), {})["results"]
    monkeypatch.setattr(DeviceViewSet, "pagination_class", None)
    assert api_client_for("viewer").get("/api/v1/devices/").json() == paged


def _uids(devices: list[Device], keep: Callable[[Device], bool]) -> list[str]:
    return sorted(d.uid for d in devices if keep(d))


def test_filters_select_exactly_their_devices(api_client_for: Callable,  # type: ignore[type-arg]
                                              fleet: list[Device]) -> None:
    client = api_client_for("viewer")
    profile = fleet[0].hardware_profile.name
    tag = Tag.objects.get(name="mid")
    seen = NOW - timedelta(hours=40)
    cases = [
        ({"hardware_profile": profile, "state": "online"},
         _uids(fleet, lambda d: d.hardware_profile.name == profile and d.state == "online")),
        ({"group": "site-1", "revoked": "false"},
         _uids(fleet, lambda d: d.group is not None and d.group.name == "site-1"
               and d.revoked_at is None)),
        ({"group": "site-1", "revoked": "true"},
         _uids(fleet, lambda d: d.group is not None and d.group.name == "site-1"
               and d.revoked_at is not None)),
        ({"tag": "mid"}, _uids(fleet, lambda d: tag in d.tags.all())),
        ({"state": "offline"}, _uids(fleet, lambda d: d.state == "offline")),
        ({"search": "unit-01"}, _uids(fleet, lambda d: "unit-01" in d.uid)),
    ]
    for params, expected in cases:
        body = _all(client, params)
        assert [row["uid"] for row in body["results"]] == expected, params
        assert body["count"] == len(expected), params
    recent = _all(client, {"last_seen_after": seen.isoformat(), "ordering": "-last_seen"})
    expected = sorted((d for d in fleet if d.last_seen and d.last_seen >= seen),
                      key=lambda d: d.last_seen, reverse=True)  # type: ignore[arg-type, return-value]
    assert [row["uid"] for row in recent["results"]] == [d.uid for d in expected]
    assert recent["count"] == len(expected) > 0
    # The bench's deep page: the window of the uid-ordered offline devices.
    offline = _uids(fleet, lambda d: d.state == "offline")
    page = _all(client, {"state": "offline", "offset": 3, "limit": 4})
    assert [row["uid"] for row in page["results"]] == offline[3:7]
    assert page["count"] == len(offline)
    assert _all(client, {"state": "offline", "offset": 500})["results"] == []


def _device_queries(client: Any, params: dict[str, Any]) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get("/api/v1/devices/", params).status_code == 200
    return [q["sql"] for q in ctx.captured_queries if "devices_" in q["sql"]]


def test_fixed_queries_reading_only_the_page(api_client_for: Callable,  # type: ignore[type-arg]
                                              fleet: list[Device]) -> None:
    client = api_client_for("viewer")
    states = {"state": ["online", "offline", "enrolled", "revoked"]}  # all, by a filter
    small = _device_queries(client, {**states, "limit": 2})
    large = _device_queries(client, {**states, "limit": 40})
    # The page, a count (the page is full), the page's tag names: whatever the page size.
    assert len(small) == len(large) == 3, large
    page, count, tags = large
    # The count joins nothing the filters did not ask for (a count over the page's column
    # query joined every device to its profile and group).
    assert count.startswith("SELECT COUNT(*)") and "JOIN" not in count, count
    # The page reads the profile's and group's names, not their rows (the profile's
    # supported_ops JSON was decoded once per device).
    assert "supported_ops" not in page and "devices_devicegroup\".\"description" not in page
    assert "devices_tag\"" in tags and "IN (" in tags
    assert "JOIN" not in _device_queries(client, {"state": "offline", "limit": 1})[1]


def _plan(sql: str, params: list[Any]) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # VACUUM runs outside a transaction only
def test_counts_are_index_only_scans_on_postgres(fleet: list[Device]) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the plans are PostgreSQL's")
    profile = fleet[0].hardware_profile_id
    group = DeviceGroup.objects.get(name="site-1").id
    tag = Tag.objects.get(name="mid").id
    with connection.cursor() as cursor:  # the visibility map autovacuum keeps
        cursor.execute("VACUUM ANALYZE devices_device")
        cursor.execute("VACUUM ANALYZE devices_device_tags")
    with transaction.atomic():
        plans = {
            "devices_profile_state_idx": _plan(
                "SELECT count(*) FROM devices_device WHERE hardware_profile_id = %s"
                " AND state = 'online'", [profile]),
            "devices_group_revoked_idx": _plan(
                "SELECT count(*) FROM devices_device WHERE group_id = %s"
                " AND NOT (revoked_at IS NOT NULL)", [group]),
            "devices_device_tags_tag_device_idx": _plan(
                "SELECT device_id FROM devices_device_tags WHERE tag_id = %s", [tag]),
        }
    for index, plan in plans.items():
        assert f"Index Only Scan using {index}" in plan, plan


def test_one_tag_counted_from_its_memberships(api_client_for: Callable,  # type: ignore[type-arg]
                                              fleet: list[Device]) -> None:
    client = api_client_for("viewer")
    for name in ("mid", "zeta", "batch-7"):
        tagged = sorted(d.uid for d in Device.objects.filter(tags__name=name))
        assert [row["uid"] for row in _all(client, {"tag": name, "ordering": "-uid"})["results"]
                ] == tagged[::-1]
        with CaptureQueriesContext(connection) as ctx:  # a full page: the count is queried
            body = _all(client, {"tag": f" {name} ", "limit": 1})
        assert body["count"] == len(tagged) > 1, name
        count = next(q["sql"] for q in ctx.captured_queries if "COUNT(*)" in q["sql"])
        assert "devices_device\"" not in count and "devices_device_tags" in count, count
    Tag.objects.create(name="unused")
    assert _all(client, {"tag": "unused", "offset": 1})["count"] == 0
    assert _all(client, {"tag": "no-such-tag", "offset": 1})["count"] == 0
    # With another filter, the count is the filtered queryset's again.
    both = _all(client, {"tag": "mid", "state": "online", "limit": 1})
    assert both["count"] == Device.objects.filter(tags__name="mid", state="online").count() > 1


def _tally() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(devices), 0) FROM devices_device_tally")
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
def test_tally_follows_every_insert_and_delete_on_postgres(api_client_for: Callable,  # type: ignore[type-arg]
                                                           fleet: list[Device]) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the tally's triggers are PostgreSQL's")
    client = api_client_for("viewer")
    assert _tally() == Device.objects.count() == 40
    with CaptureQueriesContext(connection) as ctx:
        assert _all(client, {"limit": 5})["count"] == 40
    assert any("devices_device_tally" in q["sql"] for q in ctx.captured_queries)
    assert not any("COUNT(*)" in q["sql"] and "devices_device" in q["sql"]
                   for q in ctx.captured_queries)
    profile = fleet[0].hardware_profile
    Device.objects.create(uid="one-more", hardware_profile=profile, public_key_pem="-",
                          public_key_fingerprint="f" * 64, key_algorithm="ed25519")
    assert _tally() == 41
    Device.objects.filter(uid__startswith="unit-00").delete()  # unit-000 .. unit-009
    assert _tally() == Device.objects.count() == 31
    assert _all(client, {"limit": 5})["count"] == 31
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM devices_device WHERE uid = 'nobody'")  # no row: no delta
        cursor.execute("SELECT count(*) FROM devices_device_tally")
        assert cursor.fetchone()[0] <= 2  # the fixture's and this test's backend slots
    Device.objects.all().delete()
    assert _tally() == 0
    assert _all(client, {"offset": 3})["count"] == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_tally_exact_under_concurrent_enrollments_on_postgres(hardware_profile: Any) -> None:
    """Backends that insert and delete at once, some rolling back: the tally is the count;
    a TRUNCATE (Django's flush) empties it."""
    if connection.vendor != "postgresql":
        pytest.skip("the tally's triggers are PostgreSQL's")
    import threading

    from django.db import connections

    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                try:
                    with transaction.atomic():
                        Device.objects.create(
                            uid=f"w{n}-{i}", hardware_profile=hardware_profile,
                            public_key_pem="-", public_key_fingerprint=f"{n:032x}{i:032x}",
                            key_algorithm="ed25519")
                        if i % 4 == 3:
                            Device.objects.filter(uid=f"w{n}-{i - 1}").delete()
                        if i % 5 == 4:
                            raise RuntimeError("roll back")
                except RuntimeError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert _tally() == Device.objects.count() > 0
    with connection.cursor() as cursor:  # as Django's flush empties tables between tests
        cursor.execute("TRUNCATE devices_device CASCADE")
    assert _tally() == 0


def test_filterset_copies_are_each_requests_own() -> None:
    """DeviceFilterSet copies its filters shallow and its form class once (filtersets.py):
    two requests still share no filter, bound method or form field."""
    from django.http import QueryDict

    from fleet.devices.filtersets import DeviceFilterSet

    one = DeviceFilterSet(QueryDict("capability_issues=true&state=online"), Device.objects.all())
    two = DeviceFilterSet(QueryDict("state=offline"), Device.objects.all())
    assert one.is_valid() and two.is_valid()
    for name, filter_ in one.filters.items():
        assert filter_ is not two.filters[name] is not DeviceFilterSet.base_filters[name]
        assert filter_.parent is one and two.filters[name].parent is two
    method = one.filters["capability_issues"]
    assert method.filter.f is method  # the method filter finds its own filterset's method
    assert type(one.form) is type(two.form)
    assert one.form.fields["state"] is not two.form.fields["state"]
    assert one.form.cleaned_data["state"] == ["online"]
    assert two.form.cleaned_data["state"] == ["offline"]


def _count_queries(client: Any, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with CaptureQueriesContext(connection) as ctx:
        body = _all(client, params)
    counts = [q for q in ctx.captured_queries
              if "COUNT(*)" in q["sql"] or "devices_device_tally" in q["sql"]]
    return body, len(counts)


def test_a_page_that_reaches_the_end_is_its_own_count(api_client_for: Callable,  # type: ignore[type-arg]
                                                       fleet: list[Device]) -> None:
    """fleet/core/pagination.py: the count query runs only when the page cannot tell."""
    client = api_client_for("viewer")
    offline = _uids(fleet, lambda d: d.state == "offline")
    cases = [  # params, expected uids, expected count, count queried
        ({"search": "unit-01"}, _uids(fleet, lambda d: "unit-01" in d.uid), None, False),
        ({"state": "offline", "offset": 5, "limit": 100}, offline[5:], len(offline), False),
        ({"state": "offline", "limit": 3}, offline[:3], len(offline), True),
        ({"state": "offline", "offset": len(offline) - 3, "limit": 3}, offline[-3:],
         len(offline), True),  # a full last page: more may follow for all the page knows
        ({"state": "offline", "offset": 99}, [], len(offline), True),
        ({"search": "nothing-like-it"}, [], 0, False),
    ]
    for params, uids, count, queried in cases:
        body, count_queries = _count_queries(client, params)
        assert [row["uid"] for row in body["results"]] == uids, params
        assert body["count"] == (len(uids) if count is None else count), params
        assert count_queries == int(queried), params
    # fleetctl follows "next" to the end: the links are the count's.
    first = _all(client, {"state": "offline", "limit": 3})
    assert "offset=3" in first["next"] and first["previous"] is None
    last = _all(client, {"state": "offline", "offset": len(offline) - 3, "limit": 3})
    assert last["next"] is None and last["previous"]
    # Another list (its own queryset, the same pagination): the same counts.
    names = sorted(HardwareProfile.objects.values_list("name", flat=True))
    full = client.get("/api/v1/hardware-profiles/", {"limit": 2, "offset": 1}).json()
    short = client.get("/api/v1/hardware-profiles/", {"offset": 1}).json()
    assert full["count"] == short["count"] == len(names) > 3
    assert [p["name"] for p in short["results"]] == names[1:]
