"""A/B model slots on disk with an atomic switch, a trial flag and the anti-rollback sequence.

Layout of a slot directory::

    slot-0.bin, slot-1.bin   the two model slots
    meta.json                which slot is active, trial state, sequence, trusted keys

``meta.json`` is replaced atomically (write a temp file, fsync, rename, fsync the folder),
so after a power cut it is either the old or the new version, never a mix. The active slot
is only ever a slot whose every byte was verified; downloads write the other one. A device
that restarts while a new model is on trial goes back to the previous slot.

Anti-rollback, the same rule as the C firmware (``firmware/src/slots.c``) and pinned for both by
``tests/vectors/rollback.vec`` (``device_sdk/protocol/ANTI_ROLLBACK.md``): the floor
(``sequence``) is raised when a model is *confirmed*, to that model's manifest sequence, and
never at install: a trial that fails or is interrupted leaves the floor where it was, so the
same package may be offered again, and nothing at or below a confirmed sequence ever is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# A hook called before every write that changes the disk: the power-cut simulation raises
# from it to stop the process at exactly that point.
WriteHook = Callable[[str], None]


def _no_hook(point: str) -> None:
    return None


@dataclass(frozen=True)
class SlotMeta:
    """What ``meta.json`` holds."""

    active: int = 0  # slot the device boots from
    previous: int | None = None  # slot to go back to while the active one is on trial
    trial: bool = False  # the active slot is new and not yet confirmed
    sequence: int = 0  # anti-rollback floor: highest confirmed manifest sequence (never decreases)
    trial_sequence: int = 0  # manifest sequence of the model on trial (the floor at confirm)
    rotation_sequence: int = 0  # highest key-rotation record applied
    package: int = 0  # package id of the active model (0: factory model)
    previous_package: int = 0
    reverted_package: int = 0  # the package whose trial failed or was interrupted (may retry)
    sha256: dict[str, str] = field(default_factory=dict)  # slot index -> digest of its bytes
    sizes: dict[str, int] = field(default_factory=dict)
    trusted_keys: dict[str, str] = field(default_factory=dict)  # kid hex -> raw key hex
    # The trust chain (manifest.py, trust rules): retired kids never return; the fleet's
    # minimum manifest sequence and the packages revoked by signed policy records.
    retired_keys: list[str] = field(default_factory=list)
    # The kids of trusted_keys as enrollment set them (the firmware's built-in keys); the others
    # came by rotation (at most 2). None: written before this was kept (trust.TrustState).
    enrolled_keys: list[str] | None = None
    min_sequence: int = 0
    revoked_packages: list[int] = field(default_factory=list)


class SlotStore:
    """The two slots and their metadata in one folder."""

    def __init__(self, directory: Path, *, hook: WriteHook = _no_hook,
                 durable: bool = True) -> None:
        """``durable=False`` skips every fsync, nothing else (same writes, same order): for a
        simulated fleet, whose devices survive their own process's crash but never a power
        cut, and which would otherwise spend ~2 ms per update waiting for the disk."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hook = hook
        self.durable = durable
        self.meta = self._load()

    # -- metadata ------------------------------------------------------------------------

    def _load(self) -> SlotMeta:
        path = self.dir / "meta.json"
        if not path.exists():
            return SlotMeta()
        data = json.loads(path.read_text())
        return SlotMeta(**data)

    def save(self, meta: SlotMeta) -> None:
        """Replace the metadata atomically."""
        self.hook("meta")
        tmp = self.dir / "meta.json.tmp"
        # One write of the encoded text; the fields are plain values, dicts and lists that
        # json encodes as they are (no deep copy through dataclasses.asdict).
        data = json.dumps({f.name: getattr(meta, f.name) for f in fields(meta)}).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "meta.json")
        if self.durable:
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.meta = meta

    # -- slots ---------------------------------------------------------------------------

    def slot_path(self, index: int) -> Path:
        return self.dir / f"slot-{index}.bin"

    @property
    def inactive(self) -> int:
        """The slot a download may write: never the active one, nor the trial's fallback."""
        return 1 - self.meta.active

    def read_active(self) -> bytes:
        """Return the active model's bytes."""
        return self.slot_path(self.meta.active).read_bytes()

    def install_factory(self, model: bytes, package: int = 0) -> None:
        """Put a model in slot 0 as the active one (first boot of a new device)."""
        self.slot_path(0).write_bytes(model)
        digest = hashlib.sha256(model).hexdigest()
        self.save(replace(self.meta, active=0, previous=None, trial=False, package=package,
                          sha256={"0": digest}, sizes={"0": len(model)}))

    def open_inactive(self) -> SlotWriter:
        """Start writing the inactive slot from its beginning."""
        return SlotWriter(self.slot_path(self.inactive), self.hook, durable=self.durable)

    def activate_for_trial(self, package: int, sequence: int, sha256: str, size: int) -> None:
        """Boot from the freshly written slot next, on trial; remember the way back.

        The floor stays: it rises at :meth:`confirm` (the anti-rollback rule of the firmware)."""
        meta = self.meta
        new = self.inactive
        self.save(replace(
            meta, active=new, previous=meta.active, trial=True, package=package,
            previous_package=meta.package, trial_sequence=sequence,
            sha256={**meta.sha256, str(new): sha256}, sizes={**meta.sizes, str(new): size},
        ))

    def confirm(self) -> None:
        """Keep the trial model: it becomes the plain active one and its sequence the floor."""
        meta = self.meta
        if not meta.trial:
            return
        self.save(replace(meta, trial=False, previous=None, trial_sequence=0,
                          sequence=max(meta.sequence, meta.trial_sequence)))

    def revert(self) -> None:
        """Go back to the previous slot (trial failed or interrupted)."""
        meta = self.meta
        if meta.previous is None:
            return
        self.save(replace(meta, active=meta.previous, previous=None, trial=False,
                          trial_sequence=0, package=meta.previous_package,
                          reverted_package=meta.package))

    def boot(self) -> bool:
        """Start up: a model still on trial was never confirmed, so revert. True if reverted."""
        if self.meta.trial:
            self.revert()
            return True
        return False

    def check_active(self) -> bool:
        """At boot: make sure the active slot holds the bytes its metadata names.

        A corrupt active slot (flash decay, a write the metadata does not describe) is never
        run: the device goes back to the other slot if that one verifies. Returns True when
        the active slot was fine, False when it was not (fallen back, or nothing verifies).
        """
        if self.verify_active():
            return True
        other = 1 - self.meta.active
        if self.verify_slot(other):
            meta = self.meta
            self.save(replace(meta, active=other, previous=None, trial=False, trial_sequence=0,
                              package=meta.previous_package, reverted_package=meta.package))
        return False

    def verify_active(self) -> bool:
        """Tell whether the active slot holds exactly the bytes its metadata names."""
        return self.verify_slot(self.meta.active)

    def verify_slot(self, index: int) -> bool:
        """Tell whether slot ``index`` holds exactly the bytes its metadata names."""
        path = self.slot_path(index)
        want = self.meta.sha256.get(str(index))
        return path.exists() and want == hashlib.sha256(path.read_bytes()).hexdigest()


class SlotWriter:
    """Sequential writer of one slot file (each write passes the power-cut hook)."""

    def __init__(self, path: Path, hook: WriteHook, *, durable: bool = True) -> None:
        self.hook = hook
        self.durable = durable
        self.hook("slot-open")
        self._file = open(path, "wb")  # noqa: SIM115  (closed by close())

    def write(self, data: bytes) -> None:
        self.hook("slot-write")
        self._file.write(data)

    def close(self) -> None:
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()
