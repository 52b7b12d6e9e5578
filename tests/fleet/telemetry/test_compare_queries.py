"""The version comparison reads the rollups twice for both versions, and says what the
per-version summary and label distribution say."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from fleet.telemetry import queries
from fleet.telemetry.models import Rollup

pytestmark = pytest.mark.django_db


def test_compare_matches_summary_and_labels_per_version(django_assert_max_num_queries) -> None:  # noqa: ANN001
    rng = random.Random(5)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    Rollup.objects.bulk_create([
        Rollup(device_id=d, model_version_id=mv, bucket=start + timedelta(minutes=m), label=lab,
               count=(n := rng.randint(1, 9)), score_sum=n * rng.randint(90, 250),
               latency_sum=n * rng.randint(5, 900), lat_le_1ms=n)
        for d in range(1, 6) for mv in (1, 2, 3) for m in range(0, 30, 7) for lab in range(4)
        if rng.random() < 0.7])
    flt = queries.TelemetryFilter(since=start, until=start + timedelta(hours=1))
    with django_assert_max_num_queries(2):
        compared = queries.compare_versions(flt, 1, 2)
    for side, mv in (("a", 1), ("b", 2)):
        one = queries.TelemetryFilter(**{**flt.__dict__, "model_version_ids": [mv]})
        want = {"model_version": mv, **queries.summary(one),
                "labels": queries.label_distribution(one)}
        assert compared[side] == want
    empty = queries.compare_versions(flt, 1, 99)
    assert empty["b"]["events"] == 0 and empty["b"]["labels"] == []
    assert empty["b"]["mean_score"] is None and empty["delta"]["mean_score"] is None
