"""One truth for the QEMU boards: their stock profiles are the firmware's configuration.

Read, not copied: the firmware's figures come from include/tml/ops.h, the qemu-mps2 port and
the Makefile (evaluated by make itself), so a change on one side only fails here. The data
migration brings an existing install's profiles to the same figures.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.devices.stock_profiles import (
    FIRMWARE_ARENA_BYTES,
    FIRMWARE_OPS,
    FIRMWARE_SLOT_BYTES,
    QEMU_PROFILES,
    STOCK_PROFILES,
)
from ota.validation.admission import ProfileSpec
from ota.validation.qemu_probe import BOARDS

FIRMWARE = Path(__file__).resolve().parents[3] / "firmware"
BY_NAME = {p["name"]: p for p in STOCK_PROFILES}
# The Makefile's TFLM trees: TFLM_DIR has the reference kernels, TFLM_NN_DIR CMSIS-NN.
KERNELS_OF_TREE = {"TFLM_DIR": "reference", "TFLM_NN_DIR": "cmsis-nn"}


def make_variable(name: str, board: str) -> str:
    """Return a Makefile variable's value for ``board`` (nothing else overridden)."""
    if shutil.which("make") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("make missing")
        pytest.skip("make missing")
    done = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE), f"BOARD={board}",
         f"--eval=print-var: ; @echo '$(value {name})|$({name})'", "print-var"],
        capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


def firmware_ops() -> list[str]:
    """The TML_OPS X-macro list of include/tml/ops.h, in order."""
    text = (FIRMWARE / "include" / "tml" / "ops.h").read_text()
    return re.findall(r"^\s*X\((\w+),\s*\w+\)", text, flags=re.MULTILINE)


def port_slot_bytes() -> int:
    """SLOT_BYTES of the qemu-mps2 port (e.g. ``(128UL * 1024UL)``)."""
    text = (FIRMWARE / "ports" / "qemu-mps2" / "platform_mps2.c").read_text()
    found = re.search(r"#define\s+SLOT_BYTES\s+\((\d+)UL\s*\*\s*(\d+)UL\)", text)
    assert found, "SLOT_BYTES not found in platform_mps2.c"
    return int(found.group(1)) * int(found.group(2))


def test_the_qemu_boards_have_stock_profiles() -> None:
    """One profile per Cortex-M image board, named as the firmware names it by default."""
    assert {p["name"] for p in QEMU_PROFILES} == {"qemu-mps2-an385", "qemu-mps2-an386"}
    for board in ("mps2-an385", "mps2-an386"):
        assert make_variable("HARDWARE_PROFILE", board).split("|")[1] == f"qemu-{board}"
        assert f"qemu-{board}" in BY_NAME


def test_ops_are_the_firmwares() -> None:
    """supported_ops is exactly ops.h's list (the firmware registers these and no others)."""
    assert firmware_ops() == FIRMWARE_OPS
    for profile in QEMU_PROFILES:
        assert profile["supported_ops"] == firmware_ops(), profile["name"]


def test_arena_and_slot_are_the_firmwares() -> None:
    """Arena: the images' TML_ARENA_BYTES (ARM_ARENA); slot: the port's SLOT_BYTES."""
    for profile in QEMU_PROFILES:
        board = profile["name"].removeprefix("qemu-")
        assert int(make_variable("ARM_ARENA", board).split("|")[1]) == FIRMWARE_ARENA_BYTES
        assert profile["arena_ram_bytes"] == FIRMWARE_ARENA_BYTES
        assert profile["model_slot_bytes"] == port_slot_bytes() == FIRMWARE_SLOT_BYTES


def test_kernel_set_and_probe_board_are_the_firmwares() -> None:
    """The kernel set is the TFLM tree the Makefile builds for the board, and admission
    measures the profile on that very board's probe image."""
    for profile in QEMU_PROFILES:
        board = profile["name"].removeprefix("qemu-")
        tree = make_variable("TFLM_TREE", board).split("|")[1]
        trees = {make_variable(name, board).split("|")[1]: kernels
                 for name, kernels in KERNELS_OF_TREE.items()}
        assert trees[tree] == profile["kernel_set"], profile["name"]
        spec = ProfileSpec.from_fields(profile)
        assert spec.probe_board == board
        assert BOARDS[board].kernels == profile["kernel_set"]


@pytest.mark.django_db
def test_migration_brings_an_existing_install_to_the_firmwares_figures() -> None:
    """An install with the old figures (128 KB arena, 256 KB slot, 10 ops) gets the
    firmware's, and gains qemu-mps2-an386."""
    from django.apps import apps

    from fleet.devices.models import HardwareProfile

    migration = importlib.import_module(
        "fleet.devices.migrations.0008_qemu_profiles_match_firmware")
    HardwareProfile.objects.filter(name="qemu-mps2-an385").update(**migration.OLD_AN385)
    HardwareProfile.objects.filter(name="qemu-mps2-an386").delete()
    migration.forwards(apps, None)
    for stock in QEMU_PROFILES:
        row = HardwareProfile.objects.get(name=stock["name"])
        assert (row.arena_ram_bytes, row.model_slot_bytes, row.kernel_set, row.supported_ops) \
            == (stock["arena_ram_bytes"], stock["model_slot_bytes"], stock["kernel_set"],
                stock["supported_ops"])
        assert row.mcu == stock["mcu"]
