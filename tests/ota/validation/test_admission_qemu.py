"""Exact admission on the targets QEMU runs: measured arenas, per profile, with how they were got.

The stock profiles whose core and kernel set a probe board runs (the QEMU boards, the M4 and
M7 CMSIS-NN boards) get the bisected minimum arena of the firmware's probe image in QEMU;
ESP32-S3 is estimated. In CI (``CI=true``) a missing toolchain, QEMU or probe image fails these
tests instead of skipping them: the measured path is required there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from device_sdk.protocol.golden import golden_input, outputs_digest
from fleet.devices.stock_profiles import FIRMWARE_ARENA_BYTES, STOCK_PROFILES
from ota.validation import qemu_probe
from ota.validation.admission import (
    AdmissionCode,
    MeasurementUnavailable,
    ProfileSpec,
    TargetMeasurement,
    validate_model,
)
from ota.validation.golden import register_outputs_measurer
from ota.validation.qemu_probe import ProbeCode
from ota.validation.targets import QemuOutputsMeasurer, core_of, probe_board_for

FIRMWARE = Path(__file__).resolve().parents[3] / "firmware"
STOCK = [ProfileSpec.from_fields(p) for p in STOCK_PROFILES]
METHODS = {
    "qemu-mps2-an385": "measured: cortex-m3, reference",
    "qemu-mps2-an386": "measured: cortex-m4, cmsis-nn",
    "stm32f746": "measured: cortex-m4, cmsis-nn",
    "arduino-nano-33-ble-sense": "measured: cortex-m4, cmsis-nn",
    "esp32-s3": "estimated",
}
EXACT = TargetMeasurement(cache=False)


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def probes() -> None:
    """The probe images and the instruction-counting plugin, built (make is incremental)."""
    missing = [t for t in ("make", "arm-none-eabi-gcc", "qemu-system-arm") if not shutil.which(t)]
    if missing:
        _missing(f"missing {', '.join(missing)} (scripts/bootstrap.sh installs them)")
    built = subprocess.run(["make", "-C", str(FIRMWARE), "probes", "insn-plugin", "-j2"],
                           capture_output=True, text=True, timeout=1800, check=False)
    if built.returncode != 0:
        _missing(f"building the probes failed:\n{(built.stdout + built.stderr)[-3000:]}")
    for board in ("mps2-an385", "mps2-an386"):
        assert qemu_probe.unavailable(board) is None


@pytest.fixture
def cmsis_measurer() -> object:
    """CMSIS-NN golden outputs from the M4 probe, as the server registers them."""
    register_outputs_measurer("cmsis-nn", QemuOutputsMeasurer())
    yield
    register_outputs_measurer("cmsis-nn", None)


def test_profiles_map_to_boards_by_core_and_kernel_set() -> None:
    """The core comes from the MCU text; the board from core and kernel set."""
    assert core_of("STM32F746NG (Cortex-M7, 216 MHz)") == "cortex-m7"
    assert core_of("nRF52840 (Cortex-M4F, 64 MHz)") == "cortex-m4"
    assert core_of("ESP32-S3 (Xtensa LX7 dual core, 240 MHz)") == ""
    assert probe_board_for("cortex-m7", "cmsis-nn") == "mps2-an386"
    assert probe_board_for("cortex-m3", "reference") == "mps2-an385"
    assert probe_board_for("cortex-m55", "cmsis-nn") == "mps3-an547"
    assert probe_board_for("cortex-m33", "cmsis-nn") is None  # DSP optional: no board
    assert {p.name: p.probe_board for p in STOCK} == {
        "arduino-nano-33-ble-sense": "mps2-an386", "esp32-s3": None,
        "stm32f746": "mps2-an386", "qemu-mps2-an385": "mps2-an385",
        "qemu-mps2-an386": "mps2-an386",
    }  # fmt: skip


@pytest.mark.slow
def test_admission_gives_the_exact_bisected_minimum_per_board(
    probes: None, conv_tflite: bytes, tmp_path: Path, cmsis_measurer: None
) -> None:
    """QEMU profiles: the arena is qemu_probe's bisected minimum (one byte less fails), no
    margin, method per profile; ESP32-S3 estimated with the reason; flash and instructions."""
    report = validate_model(conv_tflite, STOCK, targets=EXACT)
    verdicts = {c.profile: c for c in report.compatibility}
    assert {name: c.arena_method for name, c in verdicts.items()} == METHODS
    model = tmp_path / "m.tflite"
    model.write_bytes(conv_tflite)
    for board in ("mps2-an385", "mps2-an386"):
        direct = qemu_probe.measure_min_arena(conv_tflite, board)
        verdict = verdicts[f"qemu-{board}"]
        assert verdict.ok, verdict.reasons
        assert verdict.arena_bytes == verdict.arena_required_bytes == direct.min_arena_bytes
        assert verdict.arena_margin_bytes == 0 and verdict.arena is None
        assert verdict.measured is not None and verdict.measured.board == board
        assert qemu_probe.run_probe(model, board, direct.min_arena_bytes, invoke=1).ok
        below = qemu_probe.run_probe(model, board, direct.min_arena_bytes - 1)
        assert below.code in (ProbeCode.ALLOCATE, ProbeCode.TIMEOUT, ProbeCode.FAULT), below
        assert verdict.instructions_per_inference and verdict.instructions_per_inference > 10**5
        assert verdict.flash is not None and verdict.flash.model_bytes == len(conv_tflite)
        assert verdict.flash.slot_free_bytes == 128 * 1024 - len(conv_tflite)
        print(f"\n{board}: {verdict.arena_bytes} B, "
              f"{verdict.instructions_per_inference} instructions per inference")
    # The M4 figure decides for every CMSIS-NN Cortex-M4/M7 profile.
    m4 = verdicts["qemu-mps2-an386"].arena_bytes
    assert verdicts["stm32f746"].arena_required_bytes == m4
    esp = verdicts["esp32-s3"]
    assert esp.measured is None and esp.arena is not None
    assert esp.arena_method_reason and "esp-nn" in esp.arena_method_reason
    assert esp.arena_required_bytes == esp.arena.required_bytes
    assert esp.arena_margin_bytes == esp.arena.margin_bytes > 0
    # Key 15 for CMSIS-NN is CMSIS-NN's own outputs, measured in QEMU.
    trial = report.trial["stm32f746"]
    assert trial.source == "measured" and trial.max_label_mismatches == 0
    golden = report.probe.golden
    assert golden is not None
    inputs = b"".join(golden_input(bytes.fromhex(report.sha256), i, golden["input_bytes"])
                      for i in range(golden["n"]))
    raw = qemu_probe.run_golden(conv_tflite, "mps2-an386", inputs, 65536)
    size = len(raw) // golden["n"]
    assert trial.outputs_sha256 == outputs_digest(
        [raw[i * size:(i + 1) * size] for i in range(golden["n"])]).hex()
    assert report.to_dict()["compatibility"][0]["arena_method"]  # JSON-ready


@pytest.mark.slow
def test_a_model_needing_more_arena_than_the_board_is_refused_with_the_missing_bytes(
    probes: None, big_arena_tflite: bytes, tmp_path: Path
) -> None:
    """~200 KB of arena on a 32 KB board: ARENA_TOO_SMALL, missing = exact minimum - 32 KB."""
    qemu = [p for p in STOCK if p.name.startswith("qemu-")]
    report = validate_model(big_arena_tflite, qemu, targets=EXACT)
    model = tmp_path / "m.tflite"
    model.write_bytes(big_arena_tflite)
    for verdict in report.compatibility:
        board = verdict.profile.removeprefix("qemu-")
        minimum = verdict.arena_bytes
        assert minimum is not None and minimum > FIRMWARE_ARENA_BYTES
        # Exact: the minimum allocates, one byte less does not (allocate-only runs).
        assert qemu_probe.run_probe(model, board, minimum).ok
        assert not qemu_probe.run_probe(model, board, minimum - 1).ok
        (reason,) = verdict.reasons
        assert reason.code == AdmissionCode.ARENA_TOO_SMALL
        assert reason.bytes_missing == minimum - FIRMWARE_ARENA_BYTES
        assert reason.message == (
            f"arena needs {minimum} bytes ({verdict.arena_method}), profile has "
            f"{FIRMWARE_ARENA_BYTES}: {minimum - FIRMWARE_ARENA_BYTES} bytes missing")
    m4 = next(p for p in qemu if p.kernel_set == "cmsis-nn")
    roomy = dataclasses.replace(m4, name="roomy", arena_ram_bytes=512 * 1024)
    assert validate_model(big_arena_tflite, [roomy]).compatibility[0].ok  # cached figure


def test_without_probe_images_admission_estimates_and_says_why_or_refuses(
    dense_tflite: bytes, tmp_path: Path
) -> None:
    """Production: "estimated" with the reason; required (CI): MeasurementUnavailable."""
    qemu = [p for p in STOCK if p.name.startswith("qemu-")]
    report = validate_model(dense_tflite, qemu, targets=TargetMeasurement(probe_dir=tmp_path))
    for verdict in report.compatibility:
        assert verdict.arena_method == "estimated" and verdict.measured is None
        assert "probe image" in (verdict.arena_method_reason or ""), verdict.arena_method_reason
        assert verdict.arena_required_bytes == verdict.arena.required_bytes  # type: ignore[union-attr]
    with pytest.raises(MeasurementUnavailable, match="qemu-mps2-an385"):
        validate_model(dense_tflite, qemu,
                       targets=TargetMeasurement(probe_dir=tmp_path, require=True))


def test_the_server_requires_measurement_in_ci() -> None:
    """Under CI=true (the test command sets ADMISSION_REQUIRE_MEASURED=1) the server never
    estimates a Cortex-M arena; the settings reach the admission check."""
    from django.conf import settings

    from ota.registry.actions import target_measurement

    if os.environ.get("CI", "").lower() == "true":
        assert settings.ADMISSION_REQUIRE_MEASURED, "run the tests with scripts/test.sh in CI"
    assert target_measurement().require is settings.ADMISSION_REQUIRE_MEASURED
    assert target_measurement().probe_dir == settings.ADMISSION_PROBE_DIR


def test_qemu_runs_with_the_allow_listed_environment(
    probes: None, dense_tflite: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU runs an uploaded model: it starts like every untrusted-input child, without the
    server's secrets, and still finds and runs the probe."""
    monkeypatch.setenv("FLEET_KEK", "kek-must-not-leak")
    monkeypatch.setenv("DATABASE_URL", "postgres://fleet:pw-must-not-leak@db/fleet")
    seen: list[dict[str, str]] = []
    real_run = subprocess.run

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(kwargs["env"])  # type: ignore[arg-type]
        return real_run(cmd, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(qemu_probe.subprocess, "run", run)
    model = tmp_path / "m.tflite"
    model.write_bytes(dense_tflite)
    assert qemu_probe.run_probe(model, "mps2-an385", 65536, invoke=1).ok
    (env,) = seen
    assert "FLEET_KEK" not in env and "DATABASE_URL" not in env and env["PATH"]


@pytest.mark.django_db
def test_an_upload_that_cannot_be_measured_when_required_is_refused_not_estimated(
    operator_client: object, hardware_profile: object, dense_tflite: bytes, tmp_path: Path,
    settings: object,
) -> None:
    """ADMISSION_REQUIRE_MEASURED and no probe images: 503 measurement_unavailable, the
    version stays `validating` (the worker re-checks it), no verdict is stored."""
    from ota.models import ModelVersion, ProfileCompatibility
    from tests.ota.api.test_registry_api import make_model, upload

    settings.ADMISSION_REQUIRE_MEASURED = True  # type: ignore[attr-defined]
    settings.ADMISSION_PROBE_DIR = tmp_path  # type: ignore[attr-defined]
    make_model(operator_client)
    response = upload(operator_client, dense_tflite, "1.0.0")
    assert response.status_code == 503
    assert response.json()["reason"] == "measurement_unavailable"
    assert "probe image" in response.json()["detail"]
    mv = ModelVersion.objects.get(version="1.0.0")
    assert mv.status == "validating" and not ProfileCompatibility.objects.filter(
        model_version=mv).exists()
