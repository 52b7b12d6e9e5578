"""Reason codes shared by the server, the Python device SDK and the C firmware.

Wire values: never renumber, never reuse. The firmware header ``firmware/include/tml/reasons.h``
mirrors this enum and a contract test compares the two by reading both files.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Why a device or the server refused something. 0 means accepted."""

    OK = 0

    # Manifest checks (device side, manifest.py).
    MANIFEST_MALFORMED = 1  # not CBOR, not a COSE_Sign1, missing or mistyped field
    MANIFEST_UNSUPPORTED_VERSION = 2  # manifest format version this build does not know
    MANIFEST_BAD_ALGORITHM = 3  # protected header is not {1: -8} (EdDSA)
    MANIFEST_UNKNOWN_KEY = 4  # kid not among the keys the device trusts
    MANIFEST_BAD_SIGNATURE = 5
    MANIFEST_SEQUENCE_REPLAY = 6  # sequence <= the device's persisted sequence (anti-rollback)
    MANIFEST_EXPIRED = 7
    MANIFEST_WRONG_HARDWARE = 8  # hardware profile differs from the device's
    MANIFEST_TOO_LARGE = 9  # installed size exceeds the model slot
    MANIFEST_ARENA_TOO_SMALL = 10  # required arena exceeds the firmware's arena
    MANIFEST_BAD_ROTATION = 11  # key rotation record not signed by a trusted key

    # Transfer and decode (device side, while streaming into the inactive slot).
    TRANSFER_OVERFLOW = 20  # a byte beyond the declared transfer size
    TRANSFER_TRUNCATED = 21  # stream ended before the declared size
    TRANSFER_DIGEST_MISMATCH = 22  # SHA-256 of the transferred bytes differs
    MODEL_DIGEST_MISMATCH = 23  # SHA-256 of the installed bytes differs
    DELTA_BASE_MISMATCH = 24  # running model is not the delta's base
    DECODE_ERROR = 25  # compressed or delta stream is corrupt
    CHUNK_OUT_OF_ORDER = 26  # chunk offset is not the next expected offset
    PACKAGE_NOT_OFFERED = 27  # chunk request for a package not offered to this device

    # Install and trial (device side).
    FLASH_ERROR = 30
    TRIAL_FAILED = 31  # the trial's inferences failed, or gave no well-formed output
    TRIAL_INTERRUPTED = 32  # device restarted before confirming: reverted
    MODEL_LOAD_FAILED = 33  # interpreter refused the model
    TIMEOUT = 34  # a step took longer than the rollout allows
    ABORTED = 35  # operator aborted
    TRIAL_OUTPUT_MISMATCH = 36  # model ran, but its golden outputs differ from the manifest's

    # Ingest (server side, untrusted device input).
    PAYLOAD_TOO_LARGE = 40
    CBOR_MALFORMED = 41
    SCHEMA_MISMATCH = 42  # well-formed CBOR of the wrong shape or types
    VALUE_OUT_OF_RANGE = 43  # negative, too large, columns of unequal length
    UNKNOWN_DEVICE = 44  # topic names a device the server does not know or has revoked
    UNKNOWN_MODEL = 45  # batch names a model version the server does not know
    SEQUENCE_REUSED = 46  # a batch reuses a stored (device, seq) with other content


def reason_name(code: int) -> str:
    """Return the symbolic name of a reason code, or ``UNKNOWN_<n>`` for one we do not know."""
    try:
        return Reason(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


class ProtocolError(ValueError):
    """A message or stream was refused; ``reason`` says why in wire terms."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.name}: {detail}" if detail else self.reason.name)
