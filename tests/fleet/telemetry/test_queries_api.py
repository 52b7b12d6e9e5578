"""Telemetry API over rollups: numbers match the rows, CSV export downloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from fleet.telemetry.models import Rollup

pytestmark = pytest.mark.django_db


@pytest.fixture
def rollups() -> datetime:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    rows = []
    for minute in range(10):
        for label, count in ((0, 6), (1, 4)):
            rows.append(Rollup(device_id=1, model_version_id=7, label=label, count=count,
                               score_sum=count * (200 if label == 0 else 100),
                               latency_sum=count * 50,
                               bucket=start + timedelta(minutes=minute)))
    Rollup.objects.bulk_create(rows)
    return start


def test_series_and_labels_match_the_rollups(api_client_for, rollups: datetime) -> None:  # noqa: ANN001
    client = api_client_for("viewer")
    body = client.get("/api/v1/telemetry/series/", {"bucket": 300}).json()
    assert sum(p["events"] for p in body["points"]) == 100
    assert body["points"][0]["mean_score"] == pytest.approx(160.0)
    assert body["points"][0]["mean_latency_ms"] == pytest.approx(5.0)
    labels = client.get("/api/v1/telemetry/labels/").json()["labels"]
    assert [(x["label"], x["count"], x["share"]) for x in labels] == [(0, 60, 0.6), (1, 40, 0.4)]


def test_series_exports_csv(api_client_for, rollups: datetime) -> None:  # noqa: ANN001
    response = api_client_for("viewer").get("/api/v1/telemetry/series/",
                                             {"format": "csv", "bucket": 3600})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    lines = response.content.decode().strip().splitlines()
    assert lines[0] == "t,events,events_per_s,mean_score,mean_latency_ms"
    assert sum(int(line.split(",")[1]) for line in lines[1:]) == 100


def test_bad_range_is_a_clean_400(api_client_for) -> None:  # noqa: ANN001
    response = APIClient()
    client = api_client_for("viewer")
    bad = client.get("/api/v1/telemetry/series/", {"since": "2026-01-02T00:00:00Z",
                                                   "until": "2026-01-01T00:00:00Z"})
    assert bad.status_code == 400 and bad.json()["reason"] == "invalid"
    assert response.get("/api/v1/telemetry/series/").status_code == 401
