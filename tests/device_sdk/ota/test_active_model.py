"""The reference device runs the model in its active slot and tags events with what really ran.

Before the fix, ``python -m device_sdk run`` inferred with its ``--model`` file forever: after an
OTA update it went on running the factory model while tagging events with the new package, and
after a restart it tagged them with ``--package-id`` again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from device_sdk.__main__ import main
from device_sdk.client.identity import DeviceIdentity, MqttCredential
from device_sdk.client.outbox import Outbox
from device_sdk.inference import SensorStream
from device_sdk.ota.active_model import ActiveSlotModel
from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.events import Event, decode_message
from testkit import model_factory

pytestmark = pytest.mark.slow  # a real int8 model built with TensorFlow (once per session)


def _installed(store: SlotStore, model: bytes, package: int, *, confirm: bool = True) -> None:
    """Put ``model`` in the inactive slot as OTA does, and confirm it (or leave it on trial)."""
    store.slot_path(store.inactive).write_bytes(model)
    store.activate_for_trial(package, package, hashlib.sha256(model).hexdigest(), len(model))
    if confirm:
        store.confirm()


def _offline_device(state: Path) -> None:
    state.mkdir(parents=True)
    DeviceIdentity(
        device_id="dev-active", hardware="stm32f746", server="http://unused",
        mqtt=MqttCredential("mqtt://127.0.0.1:9", "dev-active", "x", None),
    ).save(state)


def _run_and_collect(state: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> tuple[set[bytes], set[int]]:
    """Run the device offline for a moment; return the models that inferred and the tags."""
    ran: set[bytes] = set()
    real_infer = SensorStream.infer

    def spy(self: SensorStream, t_ms: int | None = None) -> Event:
        ran.add(self.model.model_bytes)
        return real_infer(self, t_ms)

    monkeypatch.setattr(SensorStream, "infer", spy)
    assert main(["run", "--state-dir", str(state), "--model", str(model_path),
                 "--package-id", "0", "--rate", "40", "--batch", "4", "--duration", "0.6"]) == 0
    outbox = Outbox(state / "outbox.sqlite3")
    try:
        tags = {decode_message(e.payload).model for e in outbox.pending(limit=1000)}
    finally:
        outbox.close()
    return ran, tags


def test_run_infers_with_the_installed_package_after_a_restart(
    tmp_path: Path, dense_model: bytes, dense_model_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device restarted after an OTA update runs the new model and tags its package."""
    new = model_factory.tweak_weight(dense_model)
    state = tmp_path / "dev"
    _offline_device(state)
    store = SlotStore(state / "slots")
    store.install_factory(dense_model, package=0)
    _installed(store, new, 7)

    ran, tags = _run_and_collect(state, dense_model_path, monkeypatch)
    assert ran == {new}, "the factory --model ran instead of the active slot's model"
    assert tags == {7}


def test_run_goes_back_to_the_old_model_when_a_trial_was_interrupted(
    tmp_path: Path, dense_model: bytes, dense_model_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart during a trial reverts: the previous package's model runs, under its tag."""
    second, third = model_factory.tweak_weight(dense_model), dense_model
    state = tmp_path / "dev"
    _offline_device(state)
    store = SlotStore(state / "slots")
    store.install_factory(dense_model, package=0)
    _installed(store, second, 5)
    _installed(store, third, 9, confirm=False)  # power cut during the trial

    ran, tags = _run_and_collect(state, dense_model_path, monkeypatch)
    assert ran == {second} and tags == {5}


class _Client:
    def __init__(self) -> None:
        self.model = -1
        self.records: list[tuple[int, int]] = []

    def record(self, event: Event) -> None:
        self.records.append((self.model, event.label))

    def set_model(self, package_id: int, *, manifest_seq: int | None = None) -> None:
        self.model = package_id


class _Source:
    def __init__(self, model: bytes) -> None:
        self.label = len(model)  # which model ran, told by its size

    def infer(self) -> Event:
        return Event(1_700_000_000_000, self.label, 0, 0)


def test_an_install_swaps_model_and_tag_together(tmp_path: Path) -> None:
    """Every event is tagged with the package of the model that produced it, across swaps."""
    store = SlotStore(tmp_path)
    store.install_factory(b"factory", package=0)
    client = _Client()
    running = ActiveSlotModel(store, client, _Source)
    assert running.package == 0 and client.model == 0
    running.step()
    _installed(store, b"pkg-3", 3, confirm=False)
    store.confirm()
    running.installed(3, b"pkg-3")
    running.step()
    assert client.records == [(0, len(b"factory")), (3, len(b"pkg-3"))]
    running.reload()  # nothing changed: no reload, no new tag
    assert client.model == 3
