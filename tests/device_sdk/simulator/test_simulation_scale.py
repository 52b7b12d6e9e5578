"""What lets one simulator process hold a large fleet: the open-file budget (sockets first,
outbox files while they fit, reporting devices first in line), idle devices that stay connected
without inferring, paced connects, the collector kept off the fleet's long-lived objects, and a
broker that takes more clients than the common 1,024 open-file limit allows."""

from __future__ import annotations

import gc
import json
import os
import resource
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import device_sdk.simulator.simulation as simulator_module
from device_sdk.client.identity import CA_FILE, DeviceIdentity, MqttCredential
from device_sdk.simulator import SimulationConfig, Simulator, raise_open_file_limit
from fleet.broker.mosquitto import FD_RESERVE, MosquittoInstance
from testkit.broker import Probe, free_port, require_mosquitto

REPO = Path(__file__).resolve().parents[3]


def write_fleet(state_dir: Path, creds: list[tuple[str, str]], url: str,
                ca_pem: str | None = None) -> None:
    """Write the identity files of already enrolled devices, as the simulator reads them."""
    for i, (uid, password) in enumerate(creds):
        state = state_dir / "devices" / f"{i:05d}"
        state.mkdir(parents=True, mode=0o700)
        ca_file = None
        if ca_pem is not None:
            (state / CA_FILE).write_text(ca_pem)
            ca_file = str(state / CA_FILE)
        DeviceIdentity(
            device_id=uid, hardware="stm32f746", server="http://127.0.0.1:9",
            mqtt=MqttCredential(url, uid, password, ca_file), topics_prefix=f"fleet/v1/{uid}/",
        ).save(state)


def config(state_dir: Path, model: Path, devices: int, **overrides: object) -> SimulationConfig:
    values: dict[str, object] = {
        "server": "http://127.0.0.1:9", "token": "-", "devices": devices, "model_path": model,
        "hardware": "stm32f746", "state_dir": state_dir, "threads": 2, "ota": False,
        "report_every_s": 3600,
    }
    values.update(overrides)
    return SimulationConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def offline_fleet(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Twelve enrolled devices whose broker is not there (they retry in the background)."""
    creds = [(f"sim-{i:02d}", "pw") for i in range(12)]
    write_fleet(tmp_path, creds, f"mqtt://127.0.0.1:{free_port()}")
    yield tmp_path, len(creds)


def test_raising_the_open_file_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    """Run in a child whose soft limit is low, as a login shell's 1,024 usually is."""
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "from device_sdk.simulator import raise_open_file_limit\n"
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    returned, soft, hard = map(int, out)
    assert returned == soft == hard
    assert raise_open_file_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_devices_past_the_descriptor_budget_keep_their_outbox_in_memory_reporters_first(
    offline_fleet: tuple[Path, int], dense_model_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each device's socket comes first; an outbox file is a second descriptor, given while
    the limit leaves room, to the reporting devices before the idle ones."""
    state_dir, devices = offline_fleet
    connectors = 4
    files_wanted = 5
    sim = Simulator(config(state_dir, dense_model_path, devices, reporting=3, rate_hz=20.0,
                           connectors=connectors))
    open_now = len(os.listdir("/proc/self/fd"))  # the model and the reactors hold some
    limit = open_now + simulator_module._FD_RESERVE + connectors + devices + files_wanted
    monkeypatch.setattr(simulator_module, "raise_open_file_limit", lambda: limit)
    try:
        sim.start()
        on_disk = [d.client.outbox.path != Path(":memory:") for d in sim.devices]
        files = sum(on_disk)
        assert abs(files - files_wanted) <= 2, on_disk  # give or take a transient descriptor
        assert on_disk == [True] * files + [False] * (devices - files), "a prefix: reporters first"
        assert files >= 3
        # Both kinds of outbox queue telemetry while the broker is away.
        time.sleep(0.8)
        sim.devices[0].client.flush()
        sim.devices[-1].client.record(sim.devices[0].stream.infer())
        sim.devices[-1].client.flush()
        assert len(sim.devices[0].client.outbox) >= 1
        assert len(sim.devices[-1].client.outbox) == 1
        # Only the reporting devices infer; the others just stay (or try to stay) connected.
        assert all(d.inferences > 0 for d in sim.devices[:3])
        assert all(d.inferences == 0 for d in sim.devices[3:])
    finally:
        sim.stop(timeout=3)
    # Files were made for everyone: a later run with a higher limit uses them.
    assert all((state_dir / "devices" / f"{i:05d}" / "outbox.sqlite3").exists()
               for i in range(devices))


def test_an_outbox_file_still_holding_messages_is_kept_whatever_the_budget(
    offline_fleet: tuple[Path, int], dense_model_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unsent telemetry from an earlier run goes out: that device keeps its file."""
    from device_sdk.client.outbox import Outbox

    state_dir, devices = offline_fleet
    with Outbox(state_dir / "devices" / "00011" / "outbox.sqlite3") as leftover:
        leftover.put(7, b"an earlier run's batch")
    monkeypatch.setattr(simulator_module, "raise_open_file_limit", lambda: 0)
    sim = Simulator(config(state_dir, dense_model_path, devices, reporting=0))
    try:
        sim.start()
        kinds = [d.client.outbox.path == Path(":memory:") for d in sim.devices]
        assert kinds == [True] * (devices - 1) + [False]
        assert len(sim.devices[-1].client.outbox) == 1
    finally:
        sim.stop(timeout=3)


def test_connects_are_paced_and_a_stop_cuts_the_pacing_short(
    offline_fleet: tuple[Path, int], dense_model_path: Path,
) -> None:
    state_dir, devices = offline_fleet
    sim = Simulator(config(state_dir, dense_model_path, 6, connect_rate=10.0, reporting=0))
    try:
        started = time.monotonic()
        sim.start()
        assert time.monotonic() - started >= 0.45  # six devices, 0.1 s apart
    finally:
        sim.stop(timeout=3)

    stop = threading.Event()
    slow = Simulator(config(state_dir, dense_model_path, devices, connect_rate=0.5, reporting=0),
                     stop=stop)
    threading.Timer(0.3, stop.set).start()
    try:
        started = time.monotonic()
        slow.start()
        assert time.monotonic() - started < 5, "a stop request ends the pacing"
    finally:
        slow.stop(timeout=3)


def test_the_fleet_is_frozen_for_the_collector_while_it_runs(
    offline_fleet: tuple[Path, int], dense_model_path: Path,
) -> None:
    """A full collection walks every object: at 10,000 devices it paused the fleet for 0.7 s."""
    state_dir, devices = offline_fleet
    assert gc.get_freeze_count() == 0
    sim = Simulator(config(state_dir, dense_model_path, devices, reporting=0))
    try:
        sim.start()
        assert gc.get_freeze_count() > 0
    finally:
        sim.stop(timeout=3)
    assert gc.get_freeze_count() == 0, "stop() hands the objects back to the collector"

    unfrozen = Simulator(config(state_dir, dense_model_path, devices, reporting=0,
                                freeze_gc=False))
    try:
        unfrozen.start()
        assert gc.get_freeze_count() == 0
    finally:
        unfrozen.stop(timeout=3)


# -- against a real broker ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_devices_on_descriptors_above_1024_connect_over_tls_and_deliver(
    fresh_broker: MosquittoInstance, dense_model_path: Path, tmp_path: Path,
) -> None:
    """Every device socket and outbox gets a descriptor past 1024 (where select() fails); all
    connect over TLS with their own credential and their batches reach a subscriber."""
    from device_sdk.protocol.events import decode_message
    from fleet.broker.dynsec import DynsecAccess

    devices = 150
    fresh_broker.start()
    creds = [(f"scale-{i:03d}", secrets.token_urlsafe(12)) for i in range(devices)]
    with DynsecAccess(fresh_broker.host, fresh_broker.port, fresh_broker.admin_username,
                      fresh_broker.admin_password, timeout=30) as access:
        for uid, password in creds:
            access.provision_device(uid, password)
    write_fleet(tmp_path, creds, fresh_broker.tls_url, fresh_broker.ca_cert.read_text())
    watcher = Probe(fresh_broker.host, fresh_broker.port, fresh_broker.admin_username,
                    fresh_broker.admin_password, "scale-watcher")
    watcher.connect()
    watcher.subscribe("fleet/v1/+/events")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100 + 3 * devices:
        pytest.skip(f"the hard open-file limit {hard} is too low for this test")
    filler: list[int] = []
    sim = Simulator(config(tmp_path, dense_model_path, devices, reporting=devices // 3,
                           rate_hz=5.0, batch=5, batch_age_s=60.0))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100 + 3 * devices), hard))
        while not filler or filler[-1] < 1030:  # the fleet's descriptors all land past 1024
            filler.append(os.open(os.devnull, os.O_RDONLY))
        sim.start()
        deadline = time.monotonic() + 60
        while sim.connected() < devices and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sim.connected() == devices
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        assert highest > 1024 + devices
        time.sleep(2.5)
    finally:
        sim.stop(timeout=10)
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    totals = sim.totals()
    assert totals.messages > 0 and totals.acked == totals.messages
    assert totals.connects == devices, "nobody had to reconnect"
    senders = set()
    deadline = time.monotonic() + 10
    while len(senders) < devices // 3 and time.monotonic() < deadline:
        message = watcher.receive(timeout=1)
        if message is not None:
            decode_message(bytes(message.payload))
            senders.add(message.topic.split("/")[2])
    watcher.close()
    assert senders == {uid for uid, _ in creds[: devices // 3]}


@pytest.mark.integration
def test_a_broker_started_under_a_1024_soft_limit_gets_the_hard_limit_and_a_cap(
    tmp_path: Path,
) -> None:
    """Mosquitto never raises its own limit: started from a login shell it would reset every
    client past ~1,015. It gets the hard limit, and max_connections stays below it."""
    require_mosquitto()
    workdir = tmp_path / "broker"
    code = (
        "import json, resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))\n"
        "from fleet.broker.mosquitto import MosquittoInstance\n"
        f"b = MosquittoInstance({str(workdir)!r}, {free_port()}, {free_port()}, 'pw-limits')\n"
        "b.start()\n"
        "b.detach()\n"
        "print(json.dumps({'pid': b.pid, 'hard': hard, 'max': b.max_connections}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    started = json.loads(out.strip().splitlines()[-1])
    broker = MosquittoInstance(workdir, 1, 2, "pw-limits")
    try:
        limits = Path(f"/proc/{started['pid']}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft_now, hard_now = (int(v) for v in line.split()[3:5])
        assert soft_now == hard_now == started["hard"]
        assert started["max"] == started["hard"] - FD_RESERVE
        config_lines = (workdir / "mosquitto.conf").read_text().splitlines()
        assert config_lines.count(f"max_connections {started['max']}") == 2  # both listeners
    finally:
        broker.stop()
