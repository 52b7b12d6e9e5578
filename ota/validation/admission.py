"""Decide whether a model fits a hardware profile: ops, model slot, tensor arena.

For a profile whose core and kernel set an emulated board here runs (``targets.py``: Cortex-M3
reference, Cortex-M4/M7 CMSIS-NN, Cortex-M55 CMSIS-NN), the arena figure is **measured**: the
firmware's probe image bisects, in QEMU, the smallest arena with which the model allocates and
runs one Invoke on that core's build with that kernel set (``qemu_probe``). No margin is added
(the probe links the firmware's own TFLM objects); the report says ``measured: cortex-m4,
cmsis-nn`` and gives the instructions of one inference when the counting plugin is built.

For any other profile (ESP32-S3, a core without a board), or when QEMU or the probe images are
missing, the figure is **estimated** (and the report says why), as follows. The host figure
comes from the real TFLM interpreter on this (64-bit) host. A Cortex-M has
32-bit pointers, so TFLM's bookkeeping structs are smaller there. The estimate for a 32-bit
target (see :func:`estimate_arena`) takes the measured minimum, removes half of the bytes of
the structs that are nothing but pointers (``TfLiteEvalTensor``: data, dims, type - 24 bytes
on 64-bit, 12 on 32-bit; ``NodeAndRegistration``: six pointers, an int and the registration
pointer - 64 bytes vs 32), and keeps everything else at its 64-bit size (activations, scratch,
op data, TfLiteTensor and quantization structs), which errs on the large side. A safety margin
of max(10 %, 1 KiB) is then added for alignment and for TFLM builds that differ from ours.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ota.validation import qemu_probe
from ota.validation.golden import (
    OutputsMeasurer,
    TrialExpectation,
    measure_outputs_on_target,
    trial_expectation,
)
from ota.validation.inspect import ModelInspection, inspect_model
from ota.validation.targets import core_of, method_for, probe_board_for
from ota.validation.tflm import DEFAULT_TIMEOUT_S, ProbeResult, Samples, probe_model
from ota.validation.tflm_probe import parse_missing_ops

__all__ = [
    "AdmissionCode",
    "ArenaEstimate",
    "ArenaMeasurement",
    "Compatibility",
    "FlashUse",
    "MeasurementUnavailable",
    "ProfileSpec",
    "Reason",
    "TargetMeasurement",
    "ValidationReport",
    "check_against_profile",
    "estimate_arena",
    "validate_model",
]

ARENA_MARGIN_PERCENT = 10
ARENA_MARGIN_MIN_BYTES = 1024
# TFLM allocation records whose structs hold only pointers (and pointer-sized padding).
POINTER_ONLY_RECORDS = ("TfLiteEvalTensor data", "NodeAndRegistration struct")
ESTIMATE_METHOD = (
    "measured minimum arena on a {host}-bit host build, minus the pointer-only TFLM structs "
    "(TfLiteEvalTensor, NodeAndRegistration) scaled to {target}-bit pointers, rounded up to "
    "16 bytes, plus a margin of max(10%, 1024 bytes)"
)


class AdmissionCode(StrEnum):
    """Machine code of a refusal (stored in reports and shown by clients: do not rename)."""

    MISSING_OPS = "missing_ops"  # the profile's firmware does not register an op the model uses
    MODEL_TOO_LARGE = "model_too_large"  # model bytes exceed the model slot
    ARENA_TOO_SMALL = "arena_too_small"  # estimated arena need exceeds the profile's RAM
    PROBE_FAILED = "probe_failed"  # TFLM could not run the model, so its arena is unknown


@dataclass(frozen=True)
class ProfileSpec:
    """What a class of device offers a model (mirrors the server's HardwareProfile)."""

    name: str
    arena_ram_bytes: int
    model_slot_bytes: int
    pointer_bits: int
    supported_ops: list[str]
    kernel_set: str = "reference"  # TFLM kernels its firmware has: reference, cmsis-nn, esp-nn
    core: str = ""  # e.g. "cortex-m4" (targets.core_of(mcu)); "" when not a Cortex-M

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> ProfileSpec:
        """Build a spec from a hardware profile's fields (e.g. a stock profile's dict)."""
        return cls(name=fields["name"], arena_ram_bytes=fields["arena_ram_bytes"],
                   model_slot_bytes=fields["model_slot_bytes"],
                   pointer_bits=fields.get("pointer_bits", 32),
                   supported_ops=list(fields["supported_ops"]),
                   kernel_set=fields.get("kernel_set", "reference"),
                   core=core_of(fields.get("mcu", "")))

    @property
    def probe_board(self) -> str | None:
        """The emulated board that measures this profile's arena (None: estimated)."""
        return probe_board_for(self.core, self.kernel_set) if self.core else None


@dataclass(frozen=True)
class TargetMeasurement:
    """How admission measures on emulated targets (the server fills it from its settings).

    ``probe_dir``: the probe images (None: ``firmware/build/probe``); ``plugin``: the
    instruction-counting plugin (None: the default path when built); ``require``: raise
    :class:`MeasurementUnavailable` instead of estimating when a board cannot run (CI);
    ``enabled`` False: estimate everything (says so in the report).
    """

    enabled: bool = True
    probe_dir: Path | None = None
    plugin: Path | None = None
    require: bool = False
    cache: bool = True

    def plugin_path(self) -> Path | None:
        """The plugin to count instructions with, if there is one."""
        path = self.plugin or qemu_probe.INSN_PLUGIN
        return path if path.is_file() else None


class MeasurementUnavailable(RuntimeError):
    """A profile's arena must be measured (``require``) but its board cannot run here."""


@dataclass(frozen=True)
class Reason:
    """One reason a model does not fit: a code for programs and a sentence for people."""

    code: AdmissionCode
    message: str
    bytes_missing: int | None = None
    missing_ops: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ArenaMeasurement:
    """The arena measured on an emulated board with the profile's core and kernel set."""

    board: str  # QEMU machine
    core: str  # the board's core, e.g. cortex-m4
    kernels: str  # reference, cmsis-nn
    min_arena_bytes: int  # allocates and runs one Invoke; one byte less does not allocate
    arena_used_bytes: int | None  # what TFLM reports (not the minimum)
    instructions_per_inference: int | None  # guest instructions of one Invoke
    qemu_runs: int
    seconds: float


@dataclass(frozen=True)
class FlashUse:
    """What the model costs in one model slot."""

    model_bytes: int
    slot_bytes: int
    slot_free_bytes: int  # negative: bytes missing
    slot_used_percent: float


@dataclass(frozen=True)
class ArenaEstimate:
    """How the arena need on the target was derived from the host measurement."""

    host_arena_bytes: int
    host_pointer_bits: int
    target_pointer_bits: int
    pointer_struct_bytes: int  # host bytes of the pointer-only structs TFLM recorded
    pointer_adjustment_bytes: int  # subtracted (negative: added) for the target's pointers
    target_arena_bytes: int
    margin_bytes: int
    required_bytes: int  # target estimate plus margin: what the profile must offer
    method: str


@dataclass(frozen=True)
class Compatibility:
    """The verdict for one profile, with every figure it was based on."""

    profile: str
    ok: bool
    reasons: list[Reason]
    model_bytes: int
    model_slot_bytes: int
    arena_ram_bytes: int
    arena: ArenaEstimate | None  # the host-derived estimate, when the figure is estimated
    # How the arena figure was obtained: "measured: cortex-m4, cmsis-nn" or "estimated".
    arena_method: str = "estimated"
    arena_method_reason: str | None = None  # why estimated (no board for the core, no QEMU...)
    arena_bytes: int | None = None  # measured minimum, or the estimate without margin
    arena_margin_bytes: int | None = None  # shown apart: 0 when measured
    arena_required_bytes: int | None = None  # what decides: arena_bytes + margin
    measured: ArenaMeasurement | None = None
    flash: FlashUse | None = None
    instructions_per_inference: int | None = None  # on the measuring board, when counted

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    """Inspection, one TFLM probe, and a verdict per profile for one model."""

    model_bytes: int
    sha256: str
    inspection: ModelInspection
    probe: ProbeResult
    compatibility: list[Compatibility]
    elapsed_s: float
    # Per profile name: manifest key 15 for its devices' trial (golden.py); absent: legacy trial.
    trial: dict[str, TrialExpectation] = field(default_factory=dict)

    @property
    def compatible_profiles(self) -> list[str]:
        """Name the profiles the model fits."""
        return [c.profile for c in self.compatibility if c.ok]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what the model-version API shows)."""
        return {
            "model_bytes": self.model_bytes,
            "sha256": self.sha256,
            "ops": list(self.inspection.ops),
            "arena_bytes_host": self.probe.arena_bytes,
            "inspection": self.inspection.to_dict(),
            "probe": self.probe.to_dict(),
            "compatibility": [c.to_dict() for c in self.compatibility],
            "compatible_profiles": self.compatible_profiles,
            "elapsed_s": self.elapsed_s,
            "trial": {name: t.to_dict() for name, t in self.trial.items()},
        }


def estimate_arena(probe: ProbeResult, target_pointer_bits: int) -> ArenaEstimate | None:
    """Estimate the arena a target with ``target_pointer_bits`` needs (None if unmeasured)."""
    if target_pointer_bits not in (32, 64):
        raise ValueError(f"pointer_bits must be 32 or 64, not {target_pointer_bits}")
    if probe.arena_bytes is None:
        return None
    pointer_bytes = 0
    if probe.allocations is not None:
        pointer_bytes = sum(probe.allocations.used(name) for name in POINTER_ONLY_RECORDS)
    adjustment = pointer_bytes - pointer_bytes * target_pointer_bits // probe.pointer_bits
    target = _align16(probe.arena_bytes - adjustment)
    margin = max(ARENA_MARGIN_MIN_BYTES, -(-target * ARENA_MARGIN_PERCENT // 100))
    return ArenaEstimate(
        host_arena_bytes=probe.arena_bytes,
        host_pointer_bits=probe.pointer_bits,
        target_pointer_bits=target_pointer_bits,
        pointer_struct_bytes=pointer_bytes,
        pointer_adjustment_bytes=adjustment,
        target_arena_bytes=target,
        margin_bytes=margin,
        required_bytes=target + margin,
        method=ESTIMATE_METHOD.format(host=probe.pointer_bits, target=target_pointer_bits),
    )


def check_against_profile(
    inspection: ModelInspection, probe: ProbeResult, profile: ProfileSpec,
    measured: qemu_probe.ProbeResult | None = None, estimated_because: str | None = None,
) -> Compatibility:
    """Check ops, model size and arena need against one profile; list every failed rule.

    ``measured``: the QEMU measurement on the profile's board (``profile.probe_board``); it
    decides the arena. Without it the arena is estimated from the host probe, and
    ``estimated_because`` says why.
    """
    reasons: list[Reason] = []
    supported = set(profile.supported_ops)
    missing = [op for op in inspection.ops if op not in supported]
    if missing:
        reasons.append(Reason(
            AdmissionCode.MISSING_OPS,
            f"profile {profile.name!r} does not register {', '.join(missing)} used by the model",
            missing_ops=missing,
        ))  # fmt: skip
    size = inspection.size_bytes
    if size > profile.model_slot_bytes:
        short = size - profile.model_slot_bytes
        reasons.append(Reason(
            AdmissionCode.MODEL_TOO_LARGE,
            f"model is {size} bytes, the model slot {profile.model_slot_bytes}: "
            f"{short} bytes missing",
            bytes_missing=short,
        ))  # fmt: skip
    flash = FlashUse(size, profile.model_slot_bytes, profile.model_slot_bytes - size,
                     round(size / profile.model_slot_bytes * 100, 2)
                     if profile.model_slot_bytes else 100.0)
    if measured is not None:
        return _measured_verdict(profile, measured, reasons, size, flash)
    arena = estimate_arena(probe, profile.pointer_bits)
    if arena is not None and arena.required_bytes > profile.arena_ram_bytes:
        short = arena.required_bytes - profile.arena_ram_bytes
        reasons.append(Reason(
            AdmissionCode.ARENA_TOO_SMALL,
            f"arena needs {arena.required_bytes} bytes ({arena.target_arena_bytes} estimated for "
            f"{profile.pointer_bits}-bit pointers + {arena.margin_bytes} margin), profile has "
            f"{profile.arena_ram_bytes}: {short} bytes missing",
            bytes_missing=short,
        ))  # fmt: skip
    if probe.failure is not None:
        what = "arena not measured" if arena is None else "model did not run"
        reasons.append(Reason(
            AdmissionCode.PROBE_FAILED,
            f"{what}: {probe.failure.message}",
            missing_ops=list(probe.failure.missing_ops),
        ))  # fmt: skip
    return Compatibility(
        profile=profile.name,
        ok=not reasons,
        reasons=reasons,
        model_bytes=size,
        model_slot_bytes=profile.model_slot_bytes,
        arena_ram_bytes=profile.arena_ram_bytes,
        arena=arena,
        arena_method="estimated",
        arena_method_reason=estimated_because or _why_estimated(profile),
        arena_bytes=arena.target_arena_bytes if arena else None,
        arena_margin_bytes=arena.margin_bytes if arena else None,
        arena_required_bytes=arena.required_bytes if arena else None,
        flash=flash,
    )


def _measured_verdict(profile: ProfileSpec, measured: qemu_probe.ProbeResult,
                      reasons: list[Reason], size: int, flash: FlashUse) -> Compatibility:
    """The verdict when the profile's board measured the arena (no margin: exact)."""
    board = qemu_probe.BOARDS[measured.board]
    method = method_for(measured.board)
    measurement = None
    if measured.min_arena_bytes is None:
        failure = measured.failure or "no arena up to the board's RAM was enough"
        reasons.append(Reason(
            AdmissionCode.PROBE_FAILED,
            f"TFLM on {board.cpu} ({board.kernels}) could not run the model: {failure}",
            missing_ops=parse_missing_ops(failure),
        ))  # fmt: skip
    else:
        measurement = ArenaMeasurement(
            board=measured.board, core=board.cpu, kernels=board.kernels,
            min_arena_bytes=measured.min_arena_bytes, arena_used_bytes=measured.arena_used_bytes,
            instructions_per_inference=measured.instructions_per_invoke,
            qemu_runs=measured.runs, seconds=round(measured.seconds, 3),
        )  # fmt: skip
        if measured.min_arena_bytes > profile.arena_ram_bytes:
            short = measured.min_arena_bytes - profile.arena_ram_bytes
            reasons.append(Reason(
                AdmissionCode.ARENA_TOO_SMALL,
                f"arena needs {measured.min_arena_bytes} bytes ({method}), profile has "
                f"{profile.arena_ram_bytes}: {short} bytes missing",
                bytes_missing=short,
            ))  # fmt: skip
    need = measurement.min_arena_bytes if measurement else None
    return Compatibility(
        profile=profile.name,
        ok=not reasons,
        reasons=reasons,
        model_bytes=size,
        model_slot_bytes=profile.model_slot_bytes,
        arena_ram_bytes=profile.arena_ram_bytes,
        arena=None,
        arena_method=method,
        arena_bytes=need,
        arena_margin_bytes=0 if measurement else None,
        arena_required_bytes=need,
        measured=measurement,
        flash=flash,
        instructions_per_inference=measurement.instructions_per_inference if measurement else None,
    )


def _why_estimated(profile: ProfileSpec) -> str:
    what = f"{profile.core or 'a non-Cortex-M core'} with {profile.kernel_set} kernels"
    return f"no emulated board here runs {what}"


def validate_model(
    model_bytes: bytes,
    profiles: Sequence[ProfileSpec],
    samples: Samples | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    measure: OutputsMeasurer = measure_outputs_on_target,
    targets: TargetMeasurement | None = None,
) -> ValidationReport:
    """Inspect a model, probe it once in TFLM, measure it on emulated targets, check every profile.

    The host probe (sandboxed child) and the QEMU measurements of the profiles' boards
    (``targets``, default :class:`TargetMeasurement`: one bisection per board, the boards in
    parallel) run at the same time. The probe also runs the golden inputs of the device trial;
    ``measure`` (kernel set -> target outputs, see ota.validation.golden) supplies outputs for
    non-reference kernel sets. Raises ``ModelFormatError`` (before starting any process) when
    the bytes are not a model, and :class:`MeasurementUnavailable` when ``targets.require`` and
    a profile's board cannot run here.
    """
    started = time.perf_counter()
    targets = targets or TargetMeasurement()
    inspection = inspect_model(model_bytes)
    boards, estimated_because = _boards(profiles, targets)
    with ThreadPoolExecutor(max_workers=1) as pool:
        on_targets = pool.submit(
            qemu_probe.measure_boards, model_bytes, sorted(boards), probe_dir=targets.probe_dir,
            plugin=targets.plugin_path(), cache=targets.cache,
        ) if boards else None  # fmt: skip
        probe = probe_model(model_bytes, samples=samples, timeout_s=timeout_s)
        trial = _trial_expectations(model_bytes, probe, profiles, measure)
        measured = on_targets.result() if on_targets is not None else {}
    verdicts = [
        check_against_profile(inspection, probe, p, measured.get(p.probe_board or ""),
                              estimated_because.get(p.name))
        for p in profiles
    ]  # fmt: skip
    return ValidationReport(
        trial=trial,
        model_bytes=len(model_bytes),
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        inspection=inspection,
        probe=probe,
        compatibility=verdicts,
        elapsed_s=time.perf_counter() - started,
    )


def _boards(profiles: Sequence[ProfileSpec],
            targets: TargetMeasurement) -> tuple[set[str], dict[str, str]]:
    """Return the boards to measure on, and why each other Cortex-M profile is estimated."""
    boards: set[str] = set()
    because: dict[str, str] = {}
    for p in profiles:
        board = p.probe_board
        if board is None:
            continue
        why = "measurement on emulated targets is turned off" if not targets.enabled else \
            qemu_probe.unavailable(board, targets.probe_dir)
        if why is None:
            boards.add(board)
            continue
        if targets.require:
            raise MeasurementUnavailable(
                f"profile {p.name!r} must be measured on {board} ({method_for(board)}): {why}")
        because[p.name] = f"{method_for(board)} not available: {why}"
    return boards, because


def _trial_expectations(
    model_bytes: bytes, probe: ProbeResult, profiles: Sequence[ProfileSpec],
    measure: OutputsMeasurer,
) -> dict[str, TrialExpectation]:
    """Return key 15 per profile, measuring each non-reference kernel set at most once."""
    golden = probe.golden if probe.ok else None
    if not golden or not golden.get("applicable"):
        return {}
    measured: dict[str, list[bytes] | None] = {}
    out = {}
    for p in profiles:
        if p.kernel_set != "reference" and p.kernel_set not in measured:
            measured[p.kernel_set] = measure(model_bytes, p.kernel_set, int(golden["n"]))
        expectation = trial_expectation(golden, p.kernel_set, measured=measured.get(p.kernel_set))
        if expectation is not None:
            out[p.name] = expectation
    return out


def _align16(n: int) -> int:
    return -(-n // 16) * 16
