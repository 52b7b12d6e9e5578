"""Retention drops old raw events and keeps every rollup."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet.telemetry.models import Event, Rollup

pytestmark = pytest.mark.django_db


def test_prune_drops_old_events_and_keeps_rollups() -> None:
    now = timezone.now()
    for age_days in (1, 40, 41):
        ts = now - timedelta(days=age_days)
        Event.objects.create(device_id=1, seq=age_days, ts=ts, label=0, score=1, latency_100us=1)
        Rollup.objects.create(device_id=1, bucket=ts.replace(second=0, microsecond=0), label=0,
                              count=1)
    out = StringIO()
    call_command("prune_telemetry", "--days", "30", "--batch", "1", stdout=out)
    assert "deleted 2 events" in out.getvalue()
    assert list(Event.objects.values_list("seq", flat=True)) == [1]
    assert Rollup.objects.count() == 3


def test_prune_drops_dedupe_keys_past_the_redelivery_horizon() -> None:
    """The dedupe table does not grow forever: keys older than --dedupe-days go."""
    from fleet.telemetry.models import IngestedBatch

    now = timezone.now()
    for seq, age_days in ((1, 1), (2, 8), (3, 30)):
        IngestedBatch.objects.create(device_id=1, seq=seq, kind=0, t0=now, event_count=1,
                                     received_at=now - timedelta(days=age_days))
    out = StringIO()
    call_command("prune_telemetry", "--days", "30", "--dedupe-days", "7", stdout=out)
    assert "2 dedupe keys" in out.getvalue()
    assert list(IngestedBatch.objects.values_list("seq", flat=True)) == [1]
