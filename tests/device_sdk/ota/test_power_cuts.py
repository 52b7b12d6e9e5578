"""Power cuts in the Python SDK, as strict as the C suite: torn and unsynced writes, cut points
all the way through confirm, and the update resumed after every cut.

A simulated disk keeps what a real one guarantees and nothing more: bytes a file was fsynced
with survive; a rename survives once its folder is fsynced; everything else written since may
survive whole, be lost, or be torn (a prefix of the new bytes over the old). Each run cuts the
power at one point (a write, an fsync or a rename) of download, install, trial or confirm,
reboots, checks the device boots a verified model, then lets the update run on to the end.

Before, the cut always fell *before* a write, never tore one or lost an unsynced one, the update
never resumed, and ``outcomes["new"] >= 0`` held whatever happened.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from device_sdk.protocol.manifest import Encoding
from device_sdk.protocol.reasons import ProtocolError, Reason
from tests.device_sdk.ota.test_updater import device, model_bytes, package

SEQUENCE = 8
RUNS = 240  # chunks of 300, 1000 and 4096 bytes: every cut point at least once


class PowerCut(Exception):
    """The power goes at this exact point."""


class Disk:
    """What survives a power cut in one folder (see the module docstring)."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        self.folder = folder
        self.rng = rng
        self.synced: dict[str, bytes | None] = {p.name: p.read_bytes()
                                                for p in folder.iterdir() if p.is_file()}
        self.durable: set[bytes] = {v for v in self.synced.values() if v is not None}
        self.torn = self.lost = 0

    def fsynced(self, fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.is_dir():  # names become durable: renames and deletions in the folder
            present = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
            for name in set(self.synced) | set(present):
                data = present.get(name)
                if data is None or data in self.durable:
                    self.synced[name] = data
        elif path.parent == self.folder:
            data = path.read_bytes()
            self.synced[path.name] = data
            self.durable.add(data)

    def cut(self) -> None:
        """Apply the power loss: every name whose state is not durable gets a random fate."""
        present = {p.name: p.read_bytes() for p in self.folder.iterdir() if p.is_file()}
        for name in sorted(set(present) | set(self.synced)):
            now, then = present.get(name), self.synced.get(name)
            if now == then:
                continue
            fates: list[bytes | None] = [then, now]
            if now is not None and now not in self.durable:  # not a rename of synced bytes
                k = self.rng.randrange(len(now) + 1)
                fates.append(now[:k] + (then[k:] if then else b""))
            fate = self.rng.choice(fates)
            if fate is None:
                (self.folder / name).unlink(missing_ok=True)
            else:
                (self.folder / name).write_bytes(fate)
            if fate != now:
                self.lost += fate == then
                self.torn += fate not in (then, now)
        self.synced = {p.name: p.read_bytes() for p in self.folder.iterdir() if p.is_file()}
        self.durable |= {v for v in self.synced.values() if v is not None}


class Power:
    """Counts cut points (writes, fsyncs, renames) and cuts at one of them."""

    def __init__(self, cut_at: int | None, disk: Disk | None) -> None:
        self.cut_at, self.disk, self.points = cut_at, disk, 0

    def tick(self, point: str) -> None:
        self.points += 1
        if self.points == self.cut_at:
            raise PowerCut(point)


@pytest.fixture
def power(monkeypatch: pytest.MonkeyPatch) -> dict[str, Power | None]:
    """Route os.fsync and os.replace through the current Power (None: plain calls)."""
    current: dict[str, Power | None] = {"now": None}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        p = current["now"]
        if p is not None:
            p.tick("fsync")
        real_fsync(fd)
        if p is not None and p.disk is not None:
            p.disk.fsynced(fd)

    def replace(src: Any, dst: Any) -> None:
        p = current["now"]
        if p is not None:
            p.tick("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return current


def _update(folder: Path, old: bytes, cose: bytes, transfer: bytes, chunk: int,
            hook: Any) -> None:
    updater = device(folder, old, hook=hook)
    try:
        updater.offer(cose)
        while (want := updater.wanted()) is not None:
            pkg, offset, _ = want
            updater.on_chunk(pkg, offset, transfer[offset:offset + chunk])
        updater.install()
        updater.finish_trial(True)
    finally:
        updater.close()


def _resume_to_the_end(folder: Path, old: bytes, cose: bytes, transfer: bytes) -> int:
    """After the reboot, what the agent and the server do: resume or re-offer, until confirmed.

    Return how many times the download had to start again (a journal naming bytes the cut lost
    fails the digest: FAILED, and the server offers again)."""
    restarts = 0
    errors: list[str] = []
    for _ in range(3):
        updater = device(folder, old)
        try:
            if updater.resume() is None:
                try:
                    updater.offer(cose)
                except ProtocolError as exc:  # already confirmed before the cut
                    assert exc.reason == Reason.MANIFEST_SEQUENCE_REPLAY
                    return restarts
            while (want := updater.wanted()) is not None:
                pkg, offset, _ = want
                updater.on_chunk(pkg, offset, transfer[offset:offset + 700])
            updater.install()
            updater.finish_trial(True)
            return restarts
        except ProtocolError as exc:
            restarts += 1
            errors.append(f"{exc.reason.name}: {exc}")
        finally:
            updater.close()
    raise AssertionError(f"the update never completed after the cut: {errors}")


def test_power_cuts_tear_and_lose_writes_and_the_update_always_resumes(
    tmp_path: Path, power: dict[str, Power | None],
) -> None:
    old, new = model_bytes(1, 6000), model_bytes(2, 6000)
    cose, transfer = package(new, SEQUENCE, encoding=Encoding.COMPRESSED)
    points = []
    for chunk in (300, 1000, 4096):
        folder = tmp_path / f"count{chunk}"
        device(folder, old)
        counter = Power(None, None)
        power["now"] = counter
        _update(folder, old, cose, transfer, chunk, counter.tick)
        power["now"] = None
        # Every point, plus one past the last: the cut after the confirm is durable.
        points += [(chunk, k) for k in range(1, counter.points + 2)]
    assert RUNS >= len(points) > 40, len(points)
    rng = random.Random(20261206)
    outcomes = {"old": 0, "new": 0}
    restarts = 0
    disks: list[Disk] = []
    for run in range(RUNS):
        chunk, cut_at = points[run % len(points)]
        folder = tmp_path / f"run{run}"
        device(folder, old)  # factory state, all durable
        disk = Disk(folder, random.Random(rng.random()))
        disks.append(disk)
        p = Power(cut_at, disk)
        power["now"] = p
        try:
            _update(folder, old, cose, transfer, chunk, p.tick)
        except PowerCut:
            pass
        finally:
            power["now"] = None
        # The dead process's open files were closed (their buffers flushed, or not: the disk
        # decides) when its frames went with the exception, before the disk is judged.
        disk.cut()

        rebooted = device(folder, old)
        rebooted.store.boot()
        where = f"run {run}: cut at point {cut_at} (chunk {chunk})"
        assert rebooted.store.verify_active(), f"{where}: the active slot is not bootable"
        active = rebooted.store.read_active()
        assert active in (old, new), where
        outcomes["new" if active == new else "old"] += 1
        rebooted.close()

        restarts += _resume_to_the_end(folder, old, cose, transfer)
        final = device(folder, old).store
        assert final.read_active() == new and final.verify_active(), where
        assert final.meta.sequence == SEQUENCE and not final.meta.trial, where
        for leftover in folder.iterdir():
            leftover.unlink()
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    assert sum(d.torn for d in disks) > 0 and sum(d.lost for d in disks) > 0
