"""The model a device infers with is always its active slot's, and its events say so.

An application that loads a model file once and keeps it would go on running it after an OTA
update (the new model sits unused in the slot) while tagging events with the new package, and
after a restart would tag them with whatever it was told at start-up. :class:`ActiveSlotModel`
closes that gap: it loads the model from the active slot at start-up (after the boot-time
revert of an interrupted trial), swaps it when the OTA agent installs a new one
(``on_installed``), and re-reads the slot after any revert, so every event is tagged with the
package whose model produced it.

Thread safety: :meth:`step` runs on the application thread, :meth:`installed` on the client's
network thread; one lock makes "swap the model and the package tag" atomic with respect to
"infer and record", so no event of the new model leaves under the old package, nor the reverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.events import Event

__all__ = ["ActiveSlotModel", "EventSource", "ModelSink"]


class EventSource(Protocol):
    """Something that runs a model once and returns the event (a SensorStream)."""

    def infer(self) -> Event: ...


class ModelSink(Protocol):
    """The part of a DeviceClient the runner needs."""

    def record(self, event: Event) -> None: ...

    def set_model(self, package_id: int, *, manifest_seq: int | None = None) -> None: ...


class ActiveSlotModel:
    """Run the active slot's model and tag its events with the active slot's package."""

    def __init__(self, store: SlotStore, client: ModelSink,
                 load: Callable[[bytes], EventSource]) -> None:
        """Load the active slot now (call after the OTA agent's ``boot()``)."""
        self.store = store
        self.client = client
        self._load = load
        self._lock = threading.Lock()
        self.model_bytes = b""
        self.package = -1
        self.source: EventSource
        self.reload()

    def reload(self) -> None:
        """Load whatever the active slot holds now (start-up, or after a revert)."""
        meta = self.store.meta
        model = self.store.read_active()
        self._swap(meta.package, model, manifest_seq=meta.sequence)

    def installed(self, package_id: int, model: bytes) -> None:
        """OTA agent hook (``on_installed``): the new model passed its trial; run it from now."""
        self._swap(package_id, model, manifest_seq=None)

    def step(self) -> Event:
        """Infer once with the current model and record the event under its package."""
        with self._lock:
            event = self.source.infer()
            self.client.record(event)
        return event

    def _swap(self, package_id: int, model: bytes, *, manifest_seq: int | None) -> None:
        if package_id == self.package and model == self.model_bytes:
            return
        source = self._load(model)  # slow (loads an interpreter): outside the lock
        with self._lock:
            self.source = source
            self.model_bytes = bytes(model)
            self.package = package_id
            self.client.set_model(package_id, manifest_seq=manifest_seq)
