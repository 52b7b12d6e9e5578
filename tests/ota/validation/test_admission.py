"""Admission of a model against hardware profiles: exact reasons and figures."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ota.validation.admission import (
    AdmissionCode,
    ProfileSpec,
    check_against_profile,
    estimate_arena,
    validate_model,
)
from ota.validation.inspect import ModelFormatError, ModelInspection, inspect_model
from ota.validation.tflm import ProbeResult, probe_model

KIB = 1024
ALL_OPS = [
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "MAX_POOL_2D", "MEAN",
    "RESHAPE", "QUANTIZE", "DEQUANTIZE", "AVERAGE_POOL_2D", "ADD",
]  # fmt: skip


def profile(**changes: object) -> ProfileSpec:
    """A generous Cortex-M7-like profile, with ``changes`` applied."""
    base = ProfileSpec("m7", 512 * KIB, 1024 * KIB, 32, list(ALL_OPS))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dense(dense_tflite: bytes) -> tuple[ModelInspection, ProbeResult]:
    """Inspection and probe of the MLP."""
    return inspect_model(dense_tflite), probe_model(dense_tflite)


@pytest.fixture(scope="module")
def big_arena(big_arena_tflite: bytes) -> tuple[ModelInspection, ProbeResult]:
    """Inspection and probe of the model that needs ~200 KB of arena."""
    return inspect_model(big_arena_tflite), probe_model(big_arena_tflite)


def test_model_that_fits_is_admitted(dense: tuple[ModelInspection, ProbeResult]) -> None:
    """No reasons, and the figures used are reported."""
    verdict = check_against_profile(*dense, profile())
    assert verdict.ok and verdict.reasons == []
    assert verdict.model_bytes == dense[0].size_bytes
    assert verdict.arena is not None and verdict.arena.host_arena_bytes == dense[1].arena_bytes


def test_missing_op_is_named(topk_tflite: bytes) -> None:
    """A profile without TOPK_V2 refuses the model, naming TOPK_V2; the arena is unknown."""
    verdict = check_against_profile(inspect_model(topk_tflite), probe_model(topk_tflite), profile())
    codes = [r.code for r in verdict.reasons]
    assert codes == [AdmissionCode.MISSING_OPS, AdmissionCode.PROBE_FAILED]
    assert verdict.reasons[0].missing_ops == ["TOPK_V2"]
    assert verdict.reasons[0].message == (
        "profile 'm7' does not register TOPK_V2 used by the model"
    )
    assert verdict.reasons[1].message == "arena not measured: TFLM has no kernel for TOPK_V2"
    assert verdict.arena is None and not verdict.ok


def test_ops_missing_from_a_small_kernel_set_are_all_listed(
    dense: tuple[ModelInspection, ProbeResult],
) -> None:
    """Every op the profile lacks is listed, in the model's order."""
    verdict = check_against_profile(*dense, profile(supported_ops=["CONV_2D"]))
    (reason,) = verdict.reasons
    assert reason.missing_ops == ["FULLY_CONNECTED", "SOFTMAX"]


def test_slot_too_small_says_how_many_bytes_are_missing(
    dense: tuple[ModelInspection, ProbeResult],
) -> None:
    """A slot 100 bytes short gives MODEL_TOO_LARGE with 100 bytes missing."""
    size = dense[0].size_bytes
    verdict = check_against_profile(*dense, profile(model_slot_bytes=size - 100))
    (reason,) = verdict.reasons
    assert reason.code == AdmissionCode.MODEL_TOO_LARGE
    assert reason.bytes_missing == 100
    assert (
        reason.message == f"model is {size} bytes, the model slot {size - 100}: 100 bytes missing"
    )
    assert check_against_profile(*dense, profile(model_slot_bytes=size)).ok


def test_arena_estimate_for_32_bit_pointers(big_arena: tuple[ModelInspection, ProbeResult]) -> None:
    """32-bit: host minimum minus half the pointer-only structs, plus max(10 %, 1 KiB)."""
    probe = big_arena[1]
    assert probe.arena_bytes is not None and probe.allocations is not None
    pointer = probe.allocations.used("TfLiteEvalTensor data") + probe.allocations.used(
        "NodeAndRegistration struct"
    )
    target = -(-(probe.arena_bytes - pointer // 2) // 16) * 16
    margin = max(1024, -(-target // 10))

    estimate = estimate_arena(probe, 32)
    assert estimate is not None
    assert (estimate.pointer_adjustment_bytes, estimate.target_arena_bytes) == (
        pointer // 2,
        target,
    )
    assert (estimate.margin_bytes, estimate.required_bytes) == (margin, target + margin)
    host = estimate_arena(probe, 64)
    assert host is not None and host.target_arena_bytes == probe.arena_bytes
    assert "64-bit host" in estimate.method and "max(10%, 1024 bytes)" in estimate.method


def test_arena_too_small_says_how_many_bytes_are_missing(
    big_arena: tuple[ModelInspection, ProbeResult],
) -> None:
    """A 64 KiB profile refuses the ~200 KB-arena model with the exact shortfall."""
    required = estimate_arena(big_arena[1], 32).required_bytes  # type: ignore[union-attr]
    verdict = check_against_profile(*big_arena, profile(arena_ram_bytes=64 * KIB))
    (reason,) = verdict.reasons
    assert reason.code == AdmissionCode.ARENA_TOO_SMALL
    assert reason.bytes_missing == required - 64 * KIB
    assert reason.message.endswith(f"profile has {64 * KIB}: {required - 64 * KIB} bytes missing")


def test_arena_boundary_is_exact(big_arena: tuple[ModelInspection, ProbeResult]) -> None:
    """Exactly the required bytes pass; one byte less fails with one byte missing."""
    required = estimate_arena(big_arena[1], 32).required_bytes  # type: ignore[union-attr]
    assert check_against_profile(*big_arena, profile(arena_ram_bytes=required)).ok
    verdict = check_against_profile(*big_arena, profile(arena_ram_bytes=required - 1))
    assert [(r.code, r.bytes_missing) for r in verdict.reasons] == [
        (AdmissionCode.ARENA_TOO_SMALL, 1)
    ]


def test_64_bit_profile_needs_more_than_32_bit(
    big_arena: tuple[ModelInspection, ProbeResult],
) -> None:
    """The same model needs more arena with 64-bit pointers."""
    r32 = estimate_arena(big_arena[1], 32)
    r64 = estimate_arena(big_arena[1], 64)
    assert r32 is not None and r64 is not None and r32.required_bytes < r64.required_bytes


def test_every_failed_rule_is_listed(big_arena: tuple[ModelInspection, ProbeResult]) -> None:
    """Ops, slot and arena failures are all reported at once, in that order."""
    verdict = check_against_profile(
        *big_arena, profile(supported_ops=[], model_slot_bytes=1024, arena_ram_bytes=1024)
    )
    assert [r.code for r in verdict.reasons] == [
        AdmissionCode.MISSING_OPS, AdmissionCode.MODEL_TOO_LARGE, AdmissionCode.ARENA_TOO_SMALL,
    ]  # fmt: skip


def test_pointer_bits_must_be_32_or_64(dense: tuple[ModelInspection, ProbeResult]) -> None:
    """A 16-bit profile is a configuration error, not a verdict."""
    with pytest.raises(ValueError, match="pointer_bits"):
        check_against_profile(*dense, profile(pointer_bits=16))


def test_validate_model_reports_every_profile_as_json(big_arena_tflite: bytes) -> None:
    """One report: inspection, one probe, one verdict per profile, JSON-serializable."""
    profiles = [
        profile(name="m7"),
        profile(name="m4-64k", arena_ram_bytes=64 * KIB),
        profile(name="tiny-slot", model_slot_bytes=4 * KIB),
        profile(name="no-conv", supported_ops=["FULLY_CONNECTED"]),
    ]
    report = validate_model(big_arena_tflite, profiles)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["compatible_profiles"] == ["m7"]
    assert data["ops"] == ["CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert data["arena_bytes_host"] == report.probe.arena_bytes
    codes = {c["profile"]: [r["code"] for r in c["reasons"]] for c in data["compatibility"]}
    assert codes == {
        "m7": [],
        "m4-64k": ["arena_too_small"],
        "tiny-slot": ["model_too_large"],
        "no-conv": ["missing_ops"],
    }
    assert report.probe.launches == 1


def test_validate_model_refuses_garbage_before_probing() -> None:
    """A file that is not a model raises ModelFormatError with its reason."""
    with pytest.raises(ModelFormatError) as err:
        validate_model(b"\x00" * 100, [profile()])
    assert err.value.reason == "bad_identifier"
