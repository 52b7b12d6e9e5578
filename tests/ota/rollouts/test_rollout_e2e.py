"""Rollouts end to end: the real broker, the real worker (controller + carousel + consumers),
a live server, and a simulated fleet running real TFLM models with A/B slots on disk.

Devices are enrolled in-process (``do_enroll_device`` + the identity files the simulator
reads) so the time goes to the rollout, not to HTTP enrollment; the live server is the URL
they would re-enroll with. Every device starts on a validated v1 as its factory model, under
v1's package id; the rollouts offer v2 (a wider MLP, several chunks long).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from device_sdk.client.identity import (
    CA_FILE,
    DeviceIdentity,
    MqttCredential,
    SigningKey,
    capabilities_json,
    load_or_create_key,
)
from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.ota_messages import (
    ChunkRequest,
    DeploymentState,
    decode_chunk,
    encode_chunk_request,
)
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.topics import Channel, PackageTopic, parse_topic
from device_sdk.simulator import Faults, SimulationConfig, Simulator
from fleet.broker.configured import reset_broker_access
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, HardwareProfile
from fleet.telemetry.models import DeadLetter, WorkerStats
from ota.models import ModelVersion, Package
from ota.packaging.actions import do_build_package
from ota.rollouts import actions
from ota.rollouts.models import Deployment, Rollout, RolloutState
from testkit.worker import READY_LINE, ROOT, WorkerFactory, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HARDWARE = "stm32f746"
DONE = (DeploymentState.CONFIRMED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK)


# -- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wide_tflite(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A trained int8 16-1024-4 MLP (~22 KB): several carousel chunks long."""
    from testkit import model_factory

    tf = model_factory._tf()
    x, y = model_factory.make_blobs()
    model = tf.keras.Sequential([
        tf.keras.Input((16,)),
        tf.keras.layers.Dense(1024, activation="relu"),
        tf.keras.layers.Dense(4, activation="softmax"),
    ])  # fmt: skip
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    return model_factory.to_int8(model, x[:200])


class RolloutWorker(WorkerProcess):
    """The worker subprocess with its rollouts thread (controller ticks and the carousel)."""

    def start(self, timeout: float = 30.0) -> None:
        ready_before = self.log().count(READY_LINE)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "fleet_worker", "--name", self.name, "--no-jobs"],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.log().count(READY_LINE) <= ready_before:
            assert self.running, self.log()[-3000:]
            assert time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.05)


def wait_until(check: Callable[[], Any], timeout: float, what: str | Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        # A fresh connection per look: the worker subprocess writes, and SQLite would
        # otherwise keep showing this connection an older snapshot.
        connection.close()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for "
                                 f"{what() if callable(what) else what}")
        time.sleep(0.2)


@dataclass
class Lab:
    """Everything a rollout test needs, with helpers to start fleets and rollouts."""

    broker: MosquittoInstance
    server: str
    tmp: Path
    v1: ModelVersion
    v2: ModelVersion
    v1_package: Package
    v1_path: Path
    worker: WorkerProcess
    sims: list[Simulator] = field(default_factory=list)

    def fleet(self, devices: int, *, name: str = "f", faults: Faults | None = None,
              rate_hz: float = 0.5, **overrides: Any) -> Simulator:
        """Enroll ``devices`` (in-process) and start them on v1."""
        from django.conf import settings

        from fleet.devices.actions import do_create_enrollment_token
        from testkit.enrollment import enroll_in_process
        from fleet.devices.trust import broker_ca_pem, published_signing_keys

        _, token = do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timezone.timedelta(days=1), max_uses=devices)
        config = SimulationConfig(
            server=self.server, token=token, devices=devices, model_path=self.v1_path,
            hardware=HARDWARE, state_dir=self.tmp / name, rate_hz=rate_hz, batch=16,
            batch_age_s=1.0, threads=2, package_id=self.v1_package.pk, report_every_s=60,
            faults=faults or Faults(), repair_after_s=0.5, reboot_after_s=0.3, **overrides,
        )
        sim = Simulator(config)
        keys = tuple(SigningKey(k["kid"], k["public_key"]) for k in published_signing_keys())
        ca = broker_ca_pem()
        caps = capabilities_json(sim.capabilities)
        for i in range(devices):
            state = sim.device_dir(i)
            key = load_or_create_key(state)
            result = enroll_in_process(token=token, key=key, hardware=HARDWARE,
                                       capabilities=caps)
            (state / CA_FILE).write_text(ca)
            DeviceIdentity(
                device_id=result.device.uid, hardware=HARDWARE, server=self.server,
                mqtt=MqttCredential(settings.MQTT_DEVICE_URL, result.mqtt_username,
                                    result.mqtt_password, str((state / CA_FILE).resolve())),
                signing_keys=keys, topics_prefix=f"fleet/v1/{result.device.uid}/",
                capabilities=caps,
            ).save(state)
            Device.objects.filter(pk=result.device.pk).update(
                running_package_id=self.v1_package.pk)
        self.sims.append(sim)
        sim.start()
        wait_until(lambda: sim.connected() == devices, 30, f"{devices} devices connected")
        return sim

    def devices(self, sim: Simulator) -> list[Device]:
        return list(Device.objects.filter(uid__in=[d.client.uid for d in sim.devices]))

    def rollout(self, sim: Simulator, version: ModelVersion | None = None,
                **settings_: Any) -> Rollout:
        settings_ = {"waves": [100], "offers_per_minute": 100_000, **settings_}
        rollout = actions.do_create_rollout(actor=None, name="e2e", model_version=version or self.v2,
                                            devices=self.devices(sim), **settings_)
        return actions.do_start_rollout(rollout, actor=None)


def counts(rollout: Rollout) -> dict[str, int]:
    rows = Deployment.objects.filter(rollout=rollout).values_list("state", flat=True)
    out: dict[str, int] = {}
    for state in rows:
        name = DeploymentState(state).name.lower()
        out[name] = out.get(name, 0) + 1
    return out


def wait_done(rollout: Rollout, timeout: float, *, states: tuple[int, ...] = DONE) -> dict[str, int]:
    total = Deployment.objects.filter(rollout=rollout).count()
    wait_until(lambda: Deployment.objects.filter(rollout=rollout, state__in=states).count() == total,
               timeout, lambda: f"rollout {rollout.pk} done: {counts(rollout)}")
    return counts(rollout)


def active_bytes(sim: Simulator, index: int) -> bytes:
    store = SlotStore(sim.device_dir(index) / "slots")
    assert store.verify_active(), f"device {index}: active slot does not verify"
    return store.read_active()


@pytest.fixture
def lab(broker: MosquittoInstance, live_server: Any, hardware_profile: HardwareProfile,
        operator_client: APIClient, dense_tflite: bytes, wide_tflite: bytes,
        worker_factory: WorkerFactory, tmp_path: Path) -> Iterator[Lab]:
    reset_broker_access()
    with override_settings(
        BROKER_ACCESS="dynsec", MQTT_URL=broker.url, MQTT_DEVICE_URL=broker.tls_url,
        MQTT_ADMIN_USERNAME=broker.admin_username, MQTT_ADMIN_PASSWORD=broker.admin_password,
        MQTT_CA_FILE=str(broker.ca_cert),
    ):
        assert operator_client.post("/api/v1/models/", {"name": "kws"}, format="json").status_code == 201
        versions = []
        for version, data in (("1.0.0", dense_tflite), ("2.0.0", wide_tflite)):
            body = {"model": "kws", "version": version,
                    "file": SimpleUploadedFile("m.tflite", data)}
            response = operator_client.post("/api/v1/model-versions/", body, format="multipart")
            assert response.status_code == 201, response.json()
            versions.append(ModelVersion.objects.get(pk=response.json()["id"]))
        v1_package = do_build_package(versions[0], hardware_profile, actor=None)
        v1_path = tmp_path / "v1.tflite"
        v1_path.write_bytes(dense_tflite)
        worker = worker_factory(broker, start=False)
        worker.__class__ = RolloutWorker
        worker.start()
        made = Lab(broker, str(live_server.url), tmp_path, versions[0], versions[1], v1_package,
                   v1_path, worker)
        try:
            yield made
        finally:
            for sim in made.sims:
                sim.stop(timeout=5)
    reset_broker_access()


# -- a: a full rollout --------------------------------------------------------------------------

FLEET = 200


def test_a_signed_package_reaches_every_device_and_each_runs_the_exact_bytes(lab: Lab) -> None:
    sim = lab.fleet(FLEET, name="a")
    started = time.monotonic()
    rollout = lab.rollout(sim)
    final = wait_done(rollout, 90)
    took = time.monotonic() - started
    assert final == {"confirmed": FLEET}, final
    print(f"\n{FLEET} devices confirmed in {took:.1f} s")
    package = Package.objects.get(rollouts=rollout)
    for d in sim.devices:
        assert hashlib.sha256(active_bytes(sim, d.index)).hexdigest() == lab.v2.sha256
    assert set(Device.objects.filter(uid__in=[d.client.uid for d in sim.devices])
               .values_list("running_package_id", flat=True)) == {package.pk}
    wait_until(lambda: Rollout.objects.get(pk=rollout.pk).state == RolloutState.COMPLETED, 10,
               "rollout completed")
    # What the demo shows right after a rollout: each device infers with the new model and its
    # events are stored under the new version.
    for d in sim.devices:
        assert hashlib.sha256(d.stream.model.model_bytes).hexdigest() == lab.v2.sha256
    from fleet.telemetry.models import Rollup

    ids = [dev.pk for dev in lab.devices(sim)]
    wait_until(lambda: Rollup.objects.filter(device_id__in=ids, model_version_id=lab.v2.pk)
               .values("device_id").distinct().count() == FLEET, 30,
               "events of the new version from every device")
    # Egress did not grow with the fleet: the worker sent the package about once (fan-out),
    # far from once per device. Its counters are saved every 5 s.
    done = timezone.now()
    stats = wait_until(lambda: WorkerStats.objects.filter(worker=lab.worker.name,
                                                          heartbeat_at__gt=done).first(),
                       15, "the worker's counters")
    sent = stats.counters.get("ota_fanout_bytes", 0) + stats.counters.get("ota_unicast_bytes", 0)
    ratio = sent / (package.transfer_size * FLEET)
    print(f"server egress {sent} B = {ratio:.3f} x (package x devices)")
    assert ratio < 0.1, stats.counters


# -- b: canary failure, pause, resume, abort, rollback ------------------------------------------


def test_b_failing_canary_pauses_resume_completes_and_rollback_restores(lab: Lab) -> None:
    sim = lab.fleet(30, name="b")
    for d in sim.devices:  # exactly 30 % of the devices fail their trial
        d.agent.faults = Faults(fail_trial=1.0 if d.index % 10 < 3 else 0.0)
    rollout = lab.rollout(sim, waves=[50, 100], failure_threshold=0.1)
    wait_until(lambda: Rollout.objects.get(pk=rollout.pk).state == RolloutState.PAUSED, 60,
               f"the canary pauses: {counts(rollout)}")
    rollout.refresh_from_db()
    assert rollout.current_wave == 0
    assert "TRIAL_FAILED" in rollout.paused_reason, rollout.paused_reason
    assert rollout.paused_reason.startswith("wave 1:")
    # Nothing beyond the canary is offered while paused.
    time.sleep(1.5)
    assert not Deployment.objects.filter(rollout=rollout, wave=1).exclude(
        state=DeploymentState.PENDING).exists()

    for d in sim.devices:  # the "fix"
        d.agent.faults = Faults()
    rollout = actions.do_resume_rollout(rollout, actor=None)
    final = wait_done(rollout, 60, states=(DeploymentState.CONFIRMED,))
    assert final == {"confirmed": 30}, final
    wait_until(lambda: Rollout.objects.get(pk=rollout.pk).state == RolloutState.COMPLETED, 10,
               "completed")
    for d in sim.devices:
        assert hashlib.sha256(active_bytes(sim, d.index)).hexdigest() == lab.v2.sha256

    # Roll back: every device returns to v1's exact bytes.
    back = actions.do_rollback_rollout(rollout, actor=None)
    final = wait_done(back, 60)
    assert final == {"confirmed": 30}, final
    v1 = lab.v1_path.read_bytes()
    for d in sim.devices:
        assert active_bytes(sim, d.index) == v1
    assert set(Device.objects.filter(uid__in=[d.client.uid for d in sim.devices])
               .values_list("running_package_id", flat=True)) == {
        Package.objects.get(rollouts=back).pk}


# -- c: health gate -----------------------------------------------------------------------------


def test_c_health_gate_pauses_on_a_score_drop_on_the_canary(lab: Lab) -> None:
    sim = lab.fleet(10, name="c", faults=Faults(degrade_scores=1.0), rate_hz=20.0)
    from fleet.telemetry.models import Rollup

    ids = [d.pk for d in lab.devices(sim)]
    wait_until(lambda: sum(Rollup.objects.filter(device_id__in=ids, model_version_id=lab.v1.pk)
                           .values_list("count", flat=True)) >= 300, 30, "v1 telemetry")
    rollout = lab.rollout(sim, waves=[50, 100], max_score_drop=5, health_min_events=40)
    wait_until(lambda: Rollout.objects.get(pk=rollout.pk).state == RolloutState.PAUSED, 45,
               f"the health gate: {counts(rollout)}")
    rollout.refresh_from_db()
    assert rollout.paused_reason.startswith("health gate: mean score fell"), rollout.paused_reason
    assert rollout.current_wave == 0


# -- d: power cuts during downloads --------------------------------------------------------------


def test_d_power_cut_mid_download_every_device_ends_on_a_valid_model(lab: Lab) -> None:
    sim = lab.fleet(30, name="d", faults=Faults(crash_download=0.4))
    rollout = lab.rollout(sim)
    final = wait_done(rollout, 60)
    assert sim.crashes > 0
    v1, v2 = lab.v1_path.read_bytes(), None
    for d in sim.devices:
        data = active_bytes(sim, d.index)
        assert data == v1 or hashlib.sha256(data).hexdigest() == lab.v2.sha256
    assert final == {"confirmed": 30}, final  # the crashed resumed after their reboot
    del v2


# -- g: resume after a disconnect ------------------------------------------------------------------


def test_g_a_download_cut_at_half_resumes_and_fetches_nothing_twice(lab: Lab) -> None:
    """Disconnect at 50 %, reconnect: bytes received <= payload + one chunk + framing."""
    sim = lab.fleet(1, name="g", rate_hz=0.01)
    device = sim.devices[0]
    client, agent = device.client, device.agent
    assert agent is not None
    seen = {"data": 0, "payload": 0, "messages": 0, "cut_at": 0}
    deliver = client.on_message

    def counting(owner: Any, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        if isinstance(parsed, PackageTopic) or parsed.channel == Channel.OTA_CHUNK:
            seen["data"] += len(decode_chunk(payload).data)
            seen["payload"] += len(payload)
            seen["messages"] += 1
        deliver(owner, topic, payload)
        download = agent.updater.download
        if (not seen["cut_at"] and download is not None
                and 2 * download.received >= download.manifest.transfer_size):
            seen["cut_at"] = download.received
            client.link.abort()  # the link drops as on a flaky radio; the client reconnects

    client.on_message = counting
    connects = client.link.connects
    rollout = lab.rollout(sim)
    assert wait_done(rollout, 60) == {"confirmed": 1}, counts(rollout)
    package = Package.objects.get(rollouts=rollout)
    size = package.transfer_size
    chunk = HardwareProfile.objects.get(name=HARDWARE).ota_chunk_bytes
    print(f"\ncut at {seen['cut_at']} of {size} bytes; received {seen['data']} data bytes in "
          f"{seen['messages']} chunk messages ({seen['payload']} payload bytes)")
    assert 0 < seen["cut_at"] < size  # the cut happened mid-download
    assert client.link.connects > connects  # and the device came back
    assert seen["data"] <= size + chunk
    # [pkg, offset, bstr] framing (unicast), or pkg and offset alone (the fan-out's)
    assert seen["payload"] <= seen["data"] + 16 * seen["messages"]
    assert hashlib.sha256(active_bytes(sim, 0)).hexdigest() == lab.v2.sha256


# -- f: refusals ----------------------------------------------------------------------------------


def test_f_replays_wrong_profile_and_unoffered_chunks_are_refused_and_reported(
    lab: Lab, hardware_profile: HardwareProfile,
) -> None:
    sim = lab.fleet(3, name="f")
    first = lab.rollout(sim)
    assert wait_done(first, 30) == {"confirmed": 3}
    devices = lab.devices(sim)
    # A replayed old manifest (v1's, lower sequence) offered by a rollout: refused.
    replay = actions.do_create_rollout(actor=None, name="replay", model_version=lab.v1,
                                       devices=devices, waves=[100])
    replay.packages.set([lab.v1_package])
    Package.objects.filter(pk=lab.v1_package.pk).update(expires_at=timezone.now()
                                                        + timezone.timedelta(days=1))
    Deployment.objects.filter(rollout=replay).update(package=lab.v1_package)
    actions.do_start_rollout(replay, actor=None)
    final = wait_done(replay, 30)
    assert final == {"failed": 3}, final
    assert set(Deployment.objects.filter(rollout=replay).values_list("reason", flat=True)) == {
        Reason.MANIFEST_SEQUENCE_REPLAY}

    # A manifest for another hardware profile: refused.
    other = HardwareProfile.objects.get(name="esp32-s3")
    foreign = do_build_package(lab.v2, other, actor=None)
    wrong = actions.do_create_rollout(actor=None, name="wrong", model_version=lab.v2,
                                      devices=devices, waves=[100])
    wrong.packages.set([foreign])
    started = actions.do_start_rollout(wrong, actor=None)
    Deployment.objects.filter(rollout=started).delete()
    Deployment.objects.bulk_create([Deployment(rollout=started, device=d, package=foreign, wave=0)
                                    for d in devices])
    final = wait_done(started, 30)
    assert final == {"failed": 3}, final
    reasons = set(Deployment.objects.filter(rollout=started).values_list("reason", flat=True))
    assert reasons == {Reason.MANIFEST_WRONG_HARDWARE}, reasons

    # A chunk request for a package never offered to the device: dead-lettered.
    client = sim.devices[0].client
    client.publish(client_channel_get(), encode_chunk_request(ChunkRequest(foreign.pk + 999, 0, 64)))
    letter = wait_until(lambda: DeadLetter.objects.filter(
        reason=Reason.PACKAGE_NOT_OFFERED.name).first(), 15, "a dead letter")
    assert letter.device_uid == client.uid and letter.topic.endswith("/ota/get")


def client_channel_get() -> Any:
    from device_sdk.protocol.topics import Channel

    return Channel.OTA_GET
