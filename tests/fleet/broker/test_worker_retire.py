"""Retiring a worker: what its broker session still holds is stored, then the session is gone.

Mosquitto keeps a stopped worker's session (24 h) and goes on handing it a share of every
shared subscription. ``fleet_worker --name N --retire`` resumes that session, leaves the
group, stores what was queued for it, and ends the session: nothing is lost and nothing is
queued for it any more.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import HardwareProfile
from fleet.telemetry.models import IngestedBatch
from testkit.stored import Fleet, assert_stored_exactly, wait_ingested
from testkit.traffic import FleetPublisher, Ledger, make_stream
from testkit.worker import ROOT, WorkerFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

START_MS = int(time.time() * 1000) - 3600 * 1000


@pytest.fixture
def fleet(broker: MosquittoInstance, hardware_profile: HardwareProfile) -> Iterator[Fleet]:
    access = DynsecAccess(broker.host, broker.port, broker.admin_username,
                          broker.admin_password)
    yield Fleet(broker, access, hardware_profile)
    access.close()


def send(fleet: Fleet, uids: list[str], ledger: Ledger, batches: int, first_seq: int) -> None:
    """Publish ``batches`` batches per device and wait until the broker took them all."""
    links = []
    for i, uid in enumerate(uids):
        messages = make_stream(uid, batches=batches, per_batch=8, package=0, start_ms=START_MS,
                               seed=first_seq + i, first_seq=first_seq)
        ledger.add(uid, messages)
        links.append(fleet.link(uid))
        links[-1].queue(messages)
    publisher = FleetPublisher(links, rate=1000)
    publisher.start()
    try:
        publisher.wait()
    finally:
        publisher.close()


def stored(ledger: Ledger) -> int:
    return IngestedBatch.objects.filter(device_id__in=ledger.device_ids.values()).count()


def test_retire_stores_the_queued_share_and_ends_the_session(
    broker: MosquittoInstance, fleet: Fleet, worker_factory: WorkerFactory,
) -> None:
    uids = fleet.add(6)
    ledger = Ledger(fleet.ids)
    stays, leaves = worker_factory(broker), worker_factory(broker)
    leaves.stop()  # a clean stop: its session (and its share) stays with the broker

    send(fleet, uids, ledger, batches=10, first_seq=1)
    time.sleep(2.0)
    queued = len(ledger.batch_keys()) - stored(ledger)
    assert queued > 0, "the broker handed the stopped worker no share: nothing to retire"

    retire = subprocess.run(
        [sys.executable, "manage.py", "fleet_worker", "--name", leaves.name, "--retire"],
        cwd=ROOT, env=leaves.env, capture_output=True, text=True, timeout=120,
    )
    assert retire.returncode == 0, retire.stdout + retire.stderr
    assert f"worker {leaves.name} retired" in retire.stdout
    wait_ingested(ledger, timeout=30)

    # The session is gone: the next traffic all goes to the worker that stays, at once.
    send(fleet, uids, ledger, batches=10, first_seq=100)
    wait_ingested(ledger, timeout=15)
    assert_stored_exactly(ledger)
    assert stays.running
