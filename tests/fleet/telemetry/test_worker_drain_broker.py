"""The automatic drain against the real Mosquitto: a dead worker's persistent session is
ended by a live peer; a dead worker that comes back under its name during the drain takes its
session over and the drainer steps aside (no crash, no reconnect, no ping-pong).

The drain storing what the dead session held, with every event stored once and the rollout
completing, is shown end to end by tests/fleet/test_scale_out.py (PostgreSQL).
"""

from __future__ import annotations

import io
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from fleet.broker.access import ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from fleet.intake.assemble import build_worker
from fleet.intake.drain import Drainer
from fleet.intake.stats import save_worker_stats
from fleet.telemetry.models import WorkerStats
from testkit.worker import end_session

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DEAD_AFTER_S = 5


@pytest.fixture
def worker_settings(broker: MosquittoInstance) -> Iterator[tuple[str, str]]:
    """A worker identity on the session broker and settings pointing build_worker at it."""
    identity = ("drain-test-" + secrets.token_hex(3), secrets.token_urlsafe(16))
    with DynsecAccess(broker.host, broker.port, broker.admin_username,
                      broker.admin_password) as access:
        access.provision_service(*identity, ServiceRole.WORKER)
    with override_settings(MQTT_URL=broker.url, MQTT_WORKER_USERNAME=identity[0],
                           MQTT_WORKER_PASSWORD=identity[1],
                           MQTT_WORKER_GROUP="drain-" + secrets.token_hex(3), MQTT_CA_FILE="",
                           WORKER_DEAD_AFTER_S=DEAD_AFTER_S):
        yield identity


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return value


def leave_a_dead_session(name: str) -> None:
    """Connect a worker under ``name`` (persistent session, subscribed), then drop it."""
    worker, _, _ = build_worker(name)
    granted = threading.Event()
    on_subscribe = worker.client.on_subscribe

    def subscribed(*args: Any) -> None:
        on_subscribe(*args)
        granted.set()

    worker.client.on_subscribe = subscribed
    worker.start()
    assert granted.wait(10), "subscriptions not granted"
    worker.stop()  # the session stays on the broker (24 h expiry), as after a SIGKILL
    WorkerStats.objects.create(worker=name, started_at=timezone.now() - timedelta(hours=1),
                               heartbeat_at=timezone.now() - timedelta(seconds=3 * DEAD_AFTER_S))


def session_present(broker: MosquittoInstance, name: str, identity: tuple[str, str]) -> bool:
    """Tell whether the broker still holds a session for the client id ``name`` (and end it)."""
    flags: list[Any] = []
    endpoint = BrokerEndpoint(broker.host, broker.port, tls=False)
    client = new_client(endpoint, client_id=name, username=identity[0], password=identity[1])
    client.on_connect = lambda c, u, f, rc, p: flags.append(f)
    reason = connect(client, endpoint, clean_start=False, wait_s=5)
    assert reason is not None and not reason.is_failure, reason
    client.disconnect()
    client.loop_stop()
    return bool(flags[0].session_present)


def test_a_live_worker_drains_a_dead_peers_session_once(
    broker: MosquittoInstance, worker_settings: tuple[str, str],
) -> None:
    dead = "dead-" + secrets.token_hex(3)
    leave_a_dead_session(dead)
    save_worker_stats("live", timezone.now(), Counter())
    counters: Counter[str] = Counter()
    drainer = Drainer("live", counters)
    assert drainer.tick() == dead
    assert WorkerStats.objects.get(worker=dead).drained_by == "live"
    drainer.join(30)
    assert not drainer.thread.is_alive()
    row = WorkerStats.objects.get(worker=dead)
    assert row.retired_at is not None and row.drained_by == "live"
    assert counters["worker_sessions_drained"] == 1
    assert counters["worker_drains_interrupted"] == counters["worker_drains_failed"] == 0
    # Not drained again, and the broker forgot the session (expiry 0 on the way out).
    assert drainer.tick() is None and drainer.thread is None
    assert Drainer("other", Counter()).tick() is None
    assert not session_present(broker, dead, worker_settings)


def test_a_worker_back_under_its_name_during_the_drain_stops_the_drainer(
    broker: MosquittoInstance, worker_settings: tuple[str, str],
) -> None:
    dead = "back-" + secrets.token_hex(3)
    leave_a_dead_session(dead)
    counters: Counter[str] = Counter()
    drainer = Drainer("live", counters)
    assert drainer.tick() == dead
    # The drainer needs >= 2 s of quiet to finish: the worker comes back well within it.
    time.sleep(0.3)
    returning, _, _ = build_worker(dead)
    drops: list[Any] = []
    on_disconnect = returning.client.on_disconnect

    def dropped(*args: Any) -> None:
        drops.append(args[3])
        on_disconnect(*args)

    returning.client.on_disconnect = dropped
    returning.start()
    try:
        assert returning.connected.wait(10)
        save_worker_stats(dead, timezone.now(), Counter())  # its first heartbeat
        drainer.join(30)
        assert not drainer.thread.is_alive()
        assert counters["worker_drains_interrupted"] == 1, counters
        assert counters["worker_sessions_drained"] == 0
        row = WorkerStats.objects.get(worker=dead)
        assert (row.drained_by, row.drain_until, row.retired_at) == ("", None, None)
        # The returning worker holds its session: the drainer did not come back to take it.
        # (If the drainer connected second it kicked the returning worker once, which then
        # reconnected; never more than that.)
        wait_for(returning.connected.is_set, 10, "the returning worker connected")
        settled = len(drops)
        time.sleep(3)
        assert returning.connected.is_set() and len(drops) == settled <= 1, drops
        assert Drainer("live", counters).tick() is None  # alive: nothing to drain
    finally:
        returning.stop()
        end_session(broker, dead, *worker_settings)  # or it queues a share for later tests


def test_retire_by_hand_ends_a_dead_session(
    broker: MosquittoInstance, worker_settings: tuple[str, str],
) -> None:
    """``fleet_worker --name NAME --retire``: what the drain does, run by an operator."""
    dead = "manual-" + secrets.token_hex(3)
    leave_a_dead_session(dead)
    out = io.StringIO()
    call_command("fleet_worker", "--name", dead, "--retire", "--no-paho-speedup", stdout=out)
    assert re.fullmatch(rf"worker {dead} retired \(\d+ queued messages stored\)\n",
                        out.getvalue()), out.getvalue()
    assert not session_present(broker, dead, worker_settings)
    # The check tells a kept session from an ended one: a dead session nobody retired.
    kept = "kept-" + secrets.token_hex(3)
    leave_a_dead_session(kept)
    assert session_present(broker, kept, worker_settings)  # (and ends it)
