"""A small simulated fleet against the real server and broker: every device enrolls, connects
over TLS with its own credential and sends decodable batches; a restart reuses the identities
and continues every sequence; the command line runs the same thing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device_sdk.__main__ import COMMANDS, build_parser, main
from device_sdk.client.identity import DeviceIdentity
from device_sdk.protocol.events import EventBatch, Summary, decode_message
from device_sdk.protocol.status import LinkState, decode_status
from device_sdk.simulator import SimulationConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DEVICES = 20


def by_device(messages: list[Any]) -> dict[str, list[EventBatch | Summary]]:
    """Decode every events message and group them by the device in the topic."""
    grouped: dict[str, list[EventBatch | Summary]] = defaultdict(list)
    for m in messages:
        _, _, uid, channel = m.topic.split("/", 3)
        if channel == "events":
            grouped[uid].append(decode_message(bytes(m.payload)))
    return grouped


def test_twenty_devices_each_send_decodable_batches_and_a_restart_continues_them(
    fleet_server: str, enrollment_token_factory: Callable[..., str], dense_model_path: Path,
    tmp_path: Path, monitor: Any,
) -> None:
    watcher = monitor("fleet/v1/+/events", "fleet/v1/+/status")
    config = SimulationConfig(
        server=fleet_server, token=enrollment_token_factory(max_uses=DEVICES), devices=DEVICES,
        model_path=dense_model_path, hardware="stm32f746", state_dir=tmp_path, rate_hz=5.0,
        batch=5, duration_s=2.5, threads=2, package_id=0, report_every_s=1.0,
    )
    simulator = Simulator(config)
    totals = simulator.run()
    ids = {d.client.uid for d in simulator.devices}
    assert len(ids) == DEVICES
    assert totals.pending == 0 and totals.dropped == 0 and totals.rejected == 0
    assert totals.acked == totals.messages > DEVICES

    watcher.collect(lambda ms: sum(map(len, by_device(ms).values())) >= totals.messages)
    first_run = by_device(watcher.messages)
    assert set(first_run) == ids, "every device delivered"
    for uid, messages in first_run.items():
        seqs = [m.seq for m in messages]
        assert seqs == sorted(set(seqs)), f"{uid}: {seqs}"
        assert all(isinstance(m, EventBatch) and m.model == 0 for m in messages)
        assert all(0 <= e.label < 4 for m in messages for e in m.events)  # type: ignore[union-attr]
    assert sum(len(m.events) for ms in first_run.values() for m in ms) == totals.events  # type: ignore[union-attr]
    # Every device said online (its first status on a connection carries its capabilities) and,
    # once stopped, offline.
    # Live statuses only: the session broker still holds other tests' retained ones.
    statuses = [(m.topic.split("/")[2], decode_status(bytes(m.payload))) for m in watcher.messages
                if m.topic.endswith("/status") and not m.retain]
    assert {uid for uid, s in statuses if s.state is LinkState.ONLINE} == ids
    assert all(s.capabilities and "FULLY_CONNECTED" in s.capabilities.ops
               for _, s in statuses if s.state is LinkState.ONLINE)
    watcher.collect(lambda ms: {m.topic.split("/")[2] for m in ms if m.topic.endswith("/status")
                                and decode_status(bytes(m.payload)).state is LinkState.OFFLINE}
                    >= ids)

    # Restart on the same state: no enrollment (the token is used up), same ids, seqs go on.
    watcher.messages.clear()
    again = Simulator(SimulationConfig(**{**vars(config), "duration_s": 1.0,
                                          "token": "used-up-anyway", "summary_window_s": 1}))
    again_totals = again.run()
    assert {d.client.uid for d in again.devices} == ids
    watcher.collect(lambda ms: sum(map(len, by_device(ms).values())) >= again_totals.messages)
    for uid, messages in by_device(watcher.messages).items():
        assert all(isinstance(m, Summary) for m in messages)
        assert min(m.seq for m in messages) > max(m.seq for m in first_run[uid])


def test_the_command_line_enrolls_and_simulates(
    fleet_server: str, enrollment_token_factory: Callable[..., str], dense_model_path: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monitor: Callable[..., Any],
) -> None:
    # Someone must consume events: with no subscriber the broker answers PUBACK 16 and the
    # devices keep their batches queued for later (as they should).
    monitor("fleet/v1/+/events")
    token = enrollment_token_factory(max_uses=5)
    state = tmp_path / "one"
    assert main(["enroll", "--server", fleet_server, "--token", token, "--hardware",
                 "stm32f746", "--state-dir", str(state), "--model", str(dense_model_path)]) == 0
    device_id = capsys.readouterr().out.strip()
    assert DeviceIdentity.load(state).device_id == device_id
    assert main(["run", "--state-dir", str(state), "--model", str(dense_model_path),
                 "--rate", "20", "--batch", "8", "--duration", "1"]) == 0
    assert main(["simulate", "--server", fleet_server, "--token", token, "--devices", "3",
                 "--hardware", "stm32f746", "--model", str(dense_model_path), "--rate", "10",
                 "--batch", "4", "--duration", "1", "--drift-after", "0.5", "--drift-mix",
                 "1,0,0,0", "--state-dir", str(tmp_path / "fleet"), "--reporting", "2",
                 "--connect-rate", "100"]) == 0
    out = capsys.readouterr().out
    assert "devices=3" in out and "queued=0" in out


def test_every_subcommand_is_registered_with_its_options() -> None:
    assert set(COMMANDS) >= {"enroll", "run", "simulate"}
    args = build_parser().parse_args(
        ["simulate", "--server", "http://x", "--token", "t", "--devices", "2", "--hardware",
         "h", "--model", "m.tflite", "--drift-after", "5", "--drift-mix", "1,0", "--package-id",
         "9", "--reporting", "1", "--connect-rate", "50"]
    )
    assert (args.devices, args.package_id, args.drift_after, args.rate) == (2, 9, 5.0, 1.0)
    assert (args.reporting, args.connect_rate) == (1, 50.0)
