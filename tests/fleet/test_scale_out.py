"""Scale-out shown, not assumed: two web processes and three workers on one PostgreSQL.

gunicorn runs with deploy/gunicorn.conf.py and two web processes; three ``fleet_worker``
processes (ingest, rollout controller, carousel) share the real Mosquitto. Simulated devices
enroll through gunicorn over HTTP (signed proof of possession, as the SDK does), send events
all along, and take a rollout across three waves. Mid-rollout the worker holding the rollout's
lease is killed with SIGKILL and a fourth joins. Checked: both web processes served, the lease
moved to a live worker only after it expired, one live worker drained the dead worker's broker
session on its own (WORKER_DEAD_AFTER_S without a heartbeat; fleet/intake/drain.py), every
device confirmed the new model, every deployment was offered once, and every event the devices
sent is stored exactly once.

PostgreSQL only: several processes writing one SQLite file is not the deployment shown here.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import Count, Sum
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.topics import Channel, parse_topic
from device_sdk.simulator import SimulationConfig, Simulator
from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, HardwareProfile
from fleet.telemetry.models import DeadLetter, Event, IngestedBatch, WorkerStats
from ota.models import ModelVersion
from ota.packaging.actions import do_build_package
from ota.rollouts import actions
from ota.rollouts.models import Deployment, Rollout, RolloutState
from testkit import model_factory
from testkit.web import Gunicorn, running_gunicorn
from testkit.worker import WorkerFactory, WorkerProcess, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HARDWARE = "stm32f746"
FLEET = 36
WEB_PROCESSES = 2
LEASE_S = 3  # ROLLOUT_LEASE_S of the workers: the deployed default (15 s) would only add waiting
DEAD_AFTER_S = 6  # WORKER_DEAD_AFTER_S of the workers (deployed default 60 s), likewise
# The deploy config's access log, with the serving process's pid first (gunicorn's %(p)s).
PID_LOG_FORMAT = '%(p)s "%(r)s" %(s)s'


def require_postgresql() -> None:
    """Skip on SQLite; fail if this run was meant to be on PostgreSQL and is not."""
    if connection.vendor == "postgresql":
        return
    if os.environ.get("FLEET_EXPECT_DB") == "postgresql":
        pytest.fail(f"FLEET_EXPECT_DB=postgresql but the test database is {connection.vendor}")
    pytest.skip("scale-out is shown on PostgreSQL (the PostgreSQL pass of scripts/test.sh); "
                "several processes on one SQLite file is not the deployment being shown")


def wait_until(check: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               every: float = 0.2) -> Any:
    """Poll ``check`` (on a fresh connection: other processes write) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        connection.close()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for "
                                 f"{what() if callable(what) else what}")
        time.sleep(every)


def served(web: Gunicorn, request: str, status: int) -> Counter[int]:
    """Count the requests starting ``request`` (e.g. ``"POST /api/v1/enroll/ "``) each web
    process answered with ``status`` (from the access log)."""
    pattern = re.compile(r'^<(\d+)> "' + re.escape(request) + r'.*" ' + str(status) + "$")
    return Counter(int(m.group(1)) for line in web.log.read_text().splitlines()
                   if (m := pattern.match(line)))


@pytest.fixture
def web(broker: MosquittoInstance, tmp_path: Path) -> Iterator[Gunicorn]:
    """Start gunicorn -c deploy/gunicorn.conf.py with two web processes on the test database."""
    require_postgresql()  # before starting anything
    var_dir = tmp_path / "web-var"
    var_dir.mkdir()
    env = worker_env(broker, "unused", "unused", "unused", var_dir)
    env.update({
        "WEB_THREADS": "4", "ENROLL_RATE": "100000/min", "ENROLL_CHALLENGE_RATE": "100000/min",
        "MQTT_DEVICE_URL": broker.tls_url, "MQTT_CA_FILE": str(broker.ca_cert),
    })
    with running_gunicorn(env, tmp_path / "gunicorn.log", workers=WEB_PROCESSES,
                          args=["--access-logformat", PID_LOG_FORMAT]) as made:
        yield made


def count_offers(sim: Simulator) -> Counter[str]:
    """Count the offers each device receives from now on (wrapping its message handler)."""
    offers: Counter[str] = Counter()
    for device in sim.devices:
        client, deliver = device.client, device.client.on_message

        def counting(owner: Any, topic: str, payload: bytes, deliver: Any = deliver) -> None:
            parsed = parse_topic(topic)
            if getattr(parsed, "channel", None) == Channel.OTA_OFFER:
                offers[owner.uid] += 1
            deliver(owner, topic, payload)

        client.on_message = counting
    return offers


def test_two_web_processes_and_three_workers_survive_a_killed_lease_holder(
    broker: MosquittoInstance, web: Gunicorn, worker_factory: WorkerFactory,
    hardware_profile: HardwareProfile, operator_client: APIClient, tmp_path: Path,
) -> None:
    reset_broker_access()
    t0 = time.monotonic()
    timeline: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        timeline.append((what, time.monotonic() - t0))
        print(f"[scale-out] {time.monotonic() - t0:6.1f} s  {what}", flush=True)

    with override_settings(
        BROKER_ACCESS="dynsec", MQTT_URL=broker.url, MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username, MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        # Two small versions: the factory model and a one-byte-different update.
        v1_bytes = model_factory.dense_classifier(tmp_path / "dense").tflite
        v2_bytes = model_factory.tweak_weight(v1_bytes)
        assert operator_client.post("/api/v1/models/", {"name": "kws"},
                                    format="json").status_code == 201
        versions = []
        for version, data in (("1.0.0", v1_bytes), ("2.0.0", v2_bytes)):
            response = operator_client.post("/api/v1/model-versions/", {
                "model": "kws", "version": version,
                "file": SimpleUploadedFile("m.tflite", data)}, format="multipart")
            assert response.status_code == 201, response.json()
            versions.append(ModelVersion.objects.get(pk=response.json()["id"]))
        v1, v2 = versions
        v1_package = do_build_package(v1, hardware_profile, actor=None)  # signing keys exist
        v1_path = tmp_path / "v1.tflite"
        v1_path.write_bytes(v1_bytes)

        lease_env = {"ROLLOUT_LEASE_S": str(LEASE_S), "WORKER_DEAD_AFTER_S": str(DEAD_AFTER_S)}
        workers: list[WorkerProcess] = [
            worker_factory(broker, name=f"scale-w{i}", rollouts=True, extra_env=lease_env)
            for i in range(3)]
        mark("gunicorn (2 web processes) and 3 workers up")

        # -- enrollment through gunicorn, then events all along ------------------------------
        from fleet.devices.actions import do_create_enrollment_token

        _, token = do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timezone.timedelta(days=1), max_uses=FLEET)
        sim = Simulator(SimulationConfig(
            server=web.url, token=token, devices=FLEET, model_path=v1_path, hardware=HARDWARE,
            state_dir=tmp_path / "fleet", rate_hz=4.0, batch=8, batch_age_s=0.5, threads=2,
            package_id=v1_package.pk, report_every_s=60, repair_after_s=0.5,
            reboot_after_s=0.3, enroll_workers=8))
        sim.start()
        try:
            wait_until(lambda: sim.connected() == FLEET, 60, f"{FLEET} devices connected")
            mark(f"{FLEET} devices enrolled through gunicorn and connected")
            offers = count_offers(sim)
            assert not sim.failed_enrollments, sim.failed_enrollments[:3]
            served_by = served(web, "POST /api/v1/enroll/ ", 201)
            pids = set(web.children())
            print(f"[scale-out] enrollments per web process: {dict(served_by)}; pids {pids}")
            assert set(served_by) == pids, (served_by, pids)  # both web processes enrolled devices
            assert sum(served_by.values()) == FLEET  # each device enrolled over HTTP, once
            uids = [d.client.uid for d in sim.devices]
            ids = dict(Device.objects.filter(uid__in=uids).values_list("uid", "id"))
            assert len(ids) == FLEET
            # Let events flow before the rollout.
            wait_until(lambda: IngestedBatch.objects.filter(device_id__in=ids.values())
                .values("device_id").distinct().count() == FLEET, 30, "events from every device")

            # -- the rollout: three waves, a kill and a join mid-way ---------------------------
            rollout = actions.do_create_rollout(
                actor=None, name="scale-out", model_version=v2, waves=[20, 60, 100],
                devices=list(Device.objects.filter(uid__in=uids)), soak_s=2,
                offers_per_minute=100_000)
            rollout = actions.do_start_rollout(rollout, actor=None)
            mark(f"rollout {rollout.pk} started (waves 20/60/100 %, soak 2 s)")

            def leased() -> Rollout | None:
                r = Rollout.objects.get(pk=rollout.pk)
                confirmed = Deployment.objects.filter(
                    rollout=rollout, state=DeploymentState.CONFIRMED).count()
                return r if r.lease_owner and confirmed > 0 else None

            held = wait_until(leased, 60, "a first confirmation", every=0.05)
            victim = next(w for w in workers if w.name == held.lease_owner)
            victim.kill()
            killed_at = timezone.now()
            held.refresh_from_db()
            old_until: datetime = held.lease_until
            confirmed_at_kill = Deployment.objects.filter(
                rollout=rollout, state=DeploymentState.CONFIRMED).count()
            mark(f"SIGKILL {victim.name} (lease holder, lease until +"
                 f"{(old_until - killed_at).total_seconds():.1f} s; wave "
                 f"{held.current_wave + 1}, {confirmed_at_kill}/{FLEET} confirmed)")
            assert held.lease_owner == victim.name
            assert confirmed_at_kill < FLEET, "the rollout ended before the kill"
            # A fourth worker joins meanwhile (its start, ~2-3 s, runs beside the watch).
            joined = worker_factory(broker, name="scale-w3", start=False, rollouts=True,
                                    extra_env=lease_env)
            workers.append(joined)
            joining = threading.Thread(target=joined.start, name="join")
            joining.start()

            taken = wait_until(lambda: (r := Rollout.objects.get(pk=rollout.pk)).lease_owner
                               != victim.name and r, 30, "the lease taken over", every=0.05)
            taken_at = timezone.now()
            mark(f"lease taken over by {taken.lease_owner}")
            joining.join(60)
            assert joined.running
            mark(f"{joined.name} joined")
            live = {w.name for w in workers if w.running}
            assert taken.lease_owner in live, (taken.lease_owner, live)
            # Not before the dead worker's lease ran out: the new owner claimed at a time
            # >= old_until, so its lease runs to at least old_until + the lease.
            assert taken_at >= old_until, (taken_at, old_until)
            assert taken.lease_until >= old_until + timedelta(seconds=LEASE_S), (
                taken.lease_until, old_until)

            # Ingest went on without the dead worker: the live ones store the devices' batches.
            wait_until(lambda: IngestedBatch.objects.filter(
                device_id__in=ids.values(), received_at__gt=taken_at).count() >= FLEET, 30,
                "batches stored after the takeover")
            mark("live workers store events after the takeover")
            # The dead worker's broker session outlives it and Mosquitto goes on queueing a
            # share of the devices' messages (events, OTA reports) for it. No heartbeat for
            # WORKER_DEAD_AFTER_S: one live worker claims its row and drains the session
            # (stores what it held, ends it), then marks the row retired.
            drained = wait_until(lambda: WorkerStats.objects.filter(
                worker=victim.name, retired_at__isnull=False).first(), 90,
                f"{victim.name}'s session drained by a live worker")
            drainer = next(w for w in workers if w.name == drained.drained_by)
            assert drainer.running and drainer is not victim
            line = re.search(rf"drained dead worker {re.escape(victim.name)}: (\d+) queued "
                             r"messages stored", drainer.log())
            assert line, drainer.log()[-3000:]
            held_back = int(line.group(1))
            # One drain, by one worker; no live worker was taken for dead.
            claims = {w.name: re.findall(r"peer (\S+) sent no heartbeat", w.log())
                      for w in workers if w is not victim}
            assert claims == {w: [victim.name] if w == drainer.name else [] for w in claims}, (
                claims)
            live_rows = WorkerStats.objects.exclude(worker=victim.name)
            assert set(live_rows.values_list("drained_by", flat=True)) == {""}
            assert not live_rows.filter(retired_at__isnull=False).exists()
            # The drainer's counters (its WorkerStats row, /metrics' fleet_worker_counter).
            wait_until(lambda: WorkerStats.objects.get(worker=drainer.name).counters.get(
                "worker_sessions_drained") == 1, 30, f"{drainer.name}'s drain counters")
            counted = WorkerStats.objects.get(worker=drainer.name).counters
            assert counted.get("worker_drained_messages") == held_back, counted
            confirmed_now = Deployment.objects.filter(
                rollout=rollout, state=DeploymentState.CONFIRMED).count()
            mark(f"{victim.name}'s broker session drained by {drainer.name}: {held_back} "
                 f"queued messages stored ({confirmed_now}/{FLEET} confirmed)")

            def finished() -> bool:
                return Rollout.objects.get(pk=rollout.pk).state == RolloutState.COMPLETED
            wait_until(finished, 60, lambda: "rollout completed: " + str(Counter(
                Deployment.objects.filter(rollout=rollout).values_list("state", flat=True))))
            mark("rollout completed")
        finally:
            sim.stop(timeout=20)
        mark("devices stopped, outboxes drained")

        # -- the rollout's outcome --------------------------------------------------------
        deployments = Deployment.objects.filter(rollout=rollout)
        states = Counter(deployments.values_list("state", flat=True))
        assert states == {DeploymentState.CONFIRMED: FLEET}, states
        # Each deployment was offered once: no worker stepped one a second time.
        assert set(deployments.values_list("attempts", flat=True)) == {1}
        print(f"[scale-out] offers received per device: {sorted(Counter(offers.values()).items())}")
        assert set(offers) == set(uids) and max(offers.values()) <= 2, offers
        for d in sim.devices:
            store = SlotStore(sim.device_dir(d.index) / "slots")
            assert store.verify_active()
            assert hashlib.sha256(store.read_active()).hexdigest() == v2.sha256

        # -- every event sent stored exactly once -------------------------------------------
        sent: dict[int, tuple[int, int]] = {}
        for d in sim.devices:
            stats = d.client.snapshot()
            assert (stats.pending, stats.dropped, stats.rejected) == (0, 0, 0), stats
            sent[ids[d.client.uid]] = (stats.messages, stats.events)
        total_events = sum(e for _, e in sent.values())
        sent_total = (sum(m for m, _ in sent.values()), total_events)

        def stored() -> dict[int, tuple[int, int]]:
            return {row["device_id"]: (row["n"], row["events"]) for row in
                    IngestedBatch.objects.filter(device_id__in=ids.values())
                    .values("device_id").annotate(n=Count("id"), events=Sum("event_count"))}

        wait_until(lambda: stored() == sent, 60,
                   lambda: f"every batch stored: {len(sent)} devices sent {sent_total}, "
                           f"stored {tuple(map(sum, zip(*stored().values(), strict=True)))}")
        assert not IngestedBatch.objects.filter(device_id__in=ids.values()).values(
            "device_id", "seq").annotate(n=Count("id")).filter(n__gt=1).exists()
        per_batch = {(r["device_id"], r["seq"]): r["n"] for r in Event.objects.filter(
            device_id__in=ids.values()).values("device_id", "seq").annotate(n=Count("id"))}
        declared = {(b, s): n for b, s, n in IngestedBatch.objects.filter(
            device_id__in=ids.values()).values_list("device_id", "seq", "event_count")}
        assert per_batch == declared  # each batch's events stored once, none lost
        assert sum(per_batch.values()) == total_events
        assert not DeadLetter.objects.filter(device_uid__in=uids).exists()
        mark(f"{total_events} events in {sum(m for m, _ in sent.values())} batches stored "
             f"exactly once")

    print("[scale-out] timeline: " + "; ".join(f"{what} at {at:.1f} s" for what, at in timeline))
    print(f"[scale-out] kill -> takeover {(taken_at - killed_at).total_seconds():.1f} s "
          f"(lease {LEASE_S} s); load {os.getloadavg()[0]:.2f}")
    reset_broker_access()
