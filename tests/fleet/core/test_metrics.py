"""/metrics speaks Prometheus text and is closed to strangers."""

from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from fleet.telemetry.models import DeadLetter, WorkerStats
from tests.conftest import post_enroll

pytestmark = pytest.mark.django_db


def test_metrics_expose_devices_dead_letters_and_workers(enroll_body: dict[str, Any]) -> None:
    from rest_framework.test import APIClient

    assert post_enroll(enroll_body).status_code == 201
    DeadLetter.objects.create(topic="t", reason="CBOR_MALFORMED", size=1, payload=b"x")
    WorkerStats.objects.create(worker="w1", started_at=timezone.now(),
                               heartbeat_at=timezone.now(), counters={"events_stored": 42})
    with override_settings(METRICS_TOKEN="s3cret"):
        body = Client(REMOTE_ADDR="127.0.0.1").get(
            "/metrics", HTTP_AUTHORIZATION="Bearer s3cret").content.decode()
    assert 'fleet_devices{profile="stm32f746",state="enrolled"} 1.0' in body
    assert 'fleet_dead_letters_total{reason="CBOR_MALFORMED"} 1.0' in body
    assert 'fleet_worker_up{worker="w1"} 1.0' in body
    assert 'fleet_worker_counter{counter="events_stored",worker="w1"} 42.0' in body


def test_metrics_parse_as_prometheus_text_with_their_types(enroll_body: dict[str, Any]) -> None:
    """prometheus_client renders the page: it parses back with the same names, labels and
    types, and a label value with a quote is escaped, not dropped."""
    from prometheus_client.parser import text_string_to_metric_families

    assert post_enroll(enroll_body).status_code == 201
    DeadLetter.objects.create(topic="t", reason='odd"reason', size=1, payload=b"x")
    WorkerStats.objects.create(worker="w1", started_at=timezone.now(),
                               heartbeat_at=timezone.now() - timezone.timedelta(minutes=5),
                               counters={"events_stored": 7, "batches": 2})
    with override_settings(METRICS_PUBLIC=True):
        response = Client(REMOTE_ADDR="10.1.2.3").get("/metrics")
    assert response["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert {n: f.type for n, f in families.items()} == {
        "fleet_devices": "gauge", "fleet_rollouts": "gauge", "fleet_dead_letters": "counter",
        "fleet_worker_up": "gauge", "fleet_workers_retired": "gauge",
        "fleet_worker_counter": "unknown"}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("fleet_devices", (("profile", "stm32f746"), ("state", "enrolled")))] == 1
    assert samples[("fleet_dead_letters_total", (("reason", 'odd"reason'),))] == 1
    assert samples[("fleet_worker_up", (("worker", "w1"),))] == 0  # no report for 5 minutes
    assert samples[("fleet_worker_counter", (("counter", "batches"), ("worker", "w1")))] == 2


def test_metrics_leave_retired_workers_out_of_up_and_count_them() -> None:
    """A dead worker drained by a peer is not expected back: no fleet_worker_up 0 forever."""
    now = timezone.now()
    WorkerStats.objects.create(worker="dead", started_at=now, heartbeat_at=now
                               - timezone.timedelta(hours=1), retired_at=now,
                               drained_by="live", counters={"events_stored": 3})
    WorkerStats.objects.create(worker="live", started_at=now, heartbeat_at=now,
                               counters={"worker_sessions_drained": 1})
    with override_settings(METRICS_PUBLIC=True):
        body = Client().get("/metrics").content.decode()
    assert 'fleet_worker_up{worker="live"} 1.0' in body
    assert 'fleet_worker_up{worker="dead"}' not in body
    assert "fleet_workers_retired 1.0" in body
    assert 'fleet_worker_counter{counter="worker_sessions_drained",worker="live"} 1.0' in body
    assert 'fleet_worker_counter{counter="events_stored",worker="dead"} 3.0' in body


def test_metrics_refuse_remote_callers_without_the_token() -> None:
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
    with override_settings(METRICS_TOKEN="s3cret"):
        client = Client(REMOTE_ADDR="10.1.2.3")
        assert client.get("/metrics").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_metrics_want_the_token_from_loopback_too() -> None:
    """A reverse proxy on the same host makes every caller loopback: no exemption."""
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content
    with override_settings(METRICS_TOKEN="s3cret"):
        assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
        wrong = Client(REMOTE_ADDR="127.0.0.1").get("/metrics",
                                                   HTTP_AUTHORIZATION="Bearer s3cr\u00e9t")
        assert wrong.status_code == 403


def test_metrics_public_only_when_opened_explicitly() -> None:
    with override_settings(METRICS_PUBLIC=True):
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    with override_settings(METRICS_PUBLIC=False, METRICS_TOKEN=""):
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
