"""Decide whether a model fits a hardware profile: ops, model slot, tensor arena.

The arena figure comes from the real TFLM interpreter on this (64-bit) host. A Cortex-M has
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ota.validation.golden import (
    OutputsMeasurer,
    TrialExpectation,
    measure_outputs_on_target,
    trial_expectation,
)
from ota.validation.inspect import ModelInspection, inspect_model
from ota.validation.tflm import DEFAULT_TIMEOUT_S, ProbeResult, Samples, probe_model

__all__ = [
    "AdmissionCode",
    "ArenaEstimate",
    "Compatibility",
    "ProfileSpec",
    "Reason",
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


@dataclass(frozen=True)
class Reason:
    """One reason a model does not fit: a code for programs and a sentence for people."""

    code: AdmissionCode
    message: str
    bytes_missing: int | None = None
    missing_ops: list[str] = field(default_factory=list)


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
    arena: ArenaEstimate | None  # None when the probe could not measure the arena

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
    inspection: ModelInspection, probe: ProbeResult, profile: ProfileSpec
) -> Compatibility:
    """Check ops, model size and arena need against one profile; list every failed rule."""
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
    )


def validate_model(
    model_bytes: bytes,
    profiles: Sequence[ProfileSpec],
    samples: Samples | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    measure: OutputsMeasurer = measure_outputs_on_target,
) -> ValidationReport:
    """Inspect a model, probe it once in TFLM, and check it against every profile.

    The probe also runs the golden inputs of the device trial; ``measure`` (kernel set ->
    target outputs, see ota.validation.golden) supplies outputs for non-reference kernel sets.
    Raises ``ModelFormatError`` (before starting any process) when the bytes are not a model.
    """
    started = time.perf_counter()
    inspection = inspect_model(model_bytes)
    probe = probe_model(model_bytes, samples=samples, timeout_s=timeout_s)
    verdicts = [check_against_profile(inspection, probe, p) for p in profiles]
    return ValidationReport(
        trial=_trial_expectations(model_bytes, probe, profiles, measure),
        model_bytes=len(model_bytes),
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        inspection=inspection,
        probe=probe,
        compatibility=verdicts,
        elapsed_s=time.perf_counter() - started,
    )


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
