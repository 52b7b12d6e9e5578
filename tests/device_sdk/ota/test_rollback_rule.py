"""One anti-rollback rule for C and Python, pinned by ``tests/vectors/rollback.vec``.

The floor rises when a model is confirmed, never at install (the C firmware's rule); a failed or
interrupted trial keeps the floor. The same vector runs on the firmware's slots
(``firmware/tests/test_rollback.c``). Before, the SDK raised the floor at install.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from device_sdk.ota.slots import SlotStore

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "rollback.vec"


def _records() -> list[dict[str, str]]:
    records, current = [], {}
    for line in VECTORS.read_text().splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                records.append(current)
            current = {}
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    if current:
        records.append(current)
    return records


@pytest.mark.parametrize("vector", _records(), ids=lambda r: r["name"])
def test_the_sdk_slots_follow_the_shared_rule(tmp_path: Path, vector: dict[str, str]) -> None:
    ops = vector["ops"].split(",")
    floors = [int(x) for x in vector["floors"].split(",")]
    accepts = [int(x) for x in vector["accepts"].split(",")]
    store = SlotStore(tmp_path)
    store.install_factory(b"factory", package=0)
    for op, floor, accept in zip(ops, floors, accepts, strict=True):
        verb, _, arg = op.partition(" ")
        if verb == "offer":
            assert int(int(arg) > store.meta.sequence) == accept, op
        elif verb == "install":
            model = b"m%s" % arg.encode()
            store.slot_path(store.inactive).write_bytes(model)
            store.activate_for_trial(int(arg), int(arg), hashlib.sha256(model).hexdigest(),
                                     len(model))
        elif verb == "confirm":
            store.confirm()
        elif verb == "fail":
            store.revert()
        elif verb == "reboot":
            store = SlotStore(tmp_path)
            store.boot()
        assert store.meta.sequence == floor, f"after {op!r}"


def test_a_package_whose_trial_failed_may_be_offered_again_but_nothing_below_a_confirm() -> None:
    """The rule in words, as device_sdk/protocol/ANTI_ROLLBACK.md states it."""
    names = {r["name"] for r in _records()}
    assert {"failed_trial_keeps_the_floor", "reboot_in_trial_reverts_and_keeps_the_floor",
            "install_alone_does_not"} <= names
    doc = (Path(__file__).resolve().parents[3] / "device_sdk" / "protocol" / "ANTI_ROLLBACK.md")
    assert "at confirm" in doc.read_text()
