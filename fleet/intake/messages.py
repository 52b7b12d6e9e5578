"""The contract every device message passes at intake, whatever its channel.

A message is decoded by its channel's decoder (size cap, schema, ranges), then its device
must be enrolled and not revoked; anything else becomes a ``Rejected`` with its wire reason,
never an exception, and is kept as a dead letter for operators.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from device_sdk.protocol.events import decode_message_packed
from device_sdk.protocol.reasons import ProtocolError, Reason
from fleet.intake.directory import DeviceDirectory, KnownDevice
from fleet.telemetry.ingest import Accepted
from fleet.telemetry.models import DeadLetter

T = TypeVar("T")
DEAD_LETTER_KEEP_BYTES = 1024


@dataclass(frozen=True)
class Rejected:
    """A refused message with its wire reason."""

    topic: str
    uid: str
    reason: Reason
    detail: str
    payload: bytes



def decode_from_device(
    topic: str, uid: str, payload: bytes, decode: Callable[[bytes], T],
    directory: DeviceDirectory,
) -> tuple[T, KnownDevice] | Rejected:
    """Decode a device's message and check the device is enrolled and not revoked.

    Every consumer of device input starts here: the decoder applies the size cap, schema and
    ranges; what fails becomes a ``Rejected`` with its wire reason, never an exception.
    """
    try:
        message = decode(payload)
    except ProtocolError as exc:
        return Rejected(topic, uid, exc.reason, exc.detail, payload)
    device = directory.device(uid)
    if device is None or device.revoked:
        why = "revoked" if device else "not enrolled"
        return Rejected(topic, uid, Reason.UNKNOWN_DEVICE, f"device {uid} {why}", payload)
    return message, device


def decode_event_message(
    topic: str, uid: str, payload: bytes, directory: DeviceDirectory
) -> Accepted | Rejected:
    """Check and decode one message from ``fleet/v1/{uid}/events``."""
    outcome = decode_from_device(topic, uid, payload, decode_message_packed, directory)
    if isinstance(outcome, Rejected):
        return outcome
    message, device = outcome
    return Accepted(device.id, directory.model_version_of(message.model), message,
                    digest=content_digest(payload), topic=topic, uid=uid, payload=payload)


def content_digest(payload: bytes) -> int:
    """Return 63 bits of the payload's BLAKE2b (fits a signed 64-bit column)."""
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big") >> 1


def record_rejections(rejections: list[Rejected]) -> None:
    """Keep refused messages (truncated) in the dead-letter table."""
    DeadLetter.objects.bulk_create([
        DeadLetter(topic=r.topic[:200], device_uid=r.uid[:64], reason=r.reason.name,
                   detail=r.detail[:300], size=len(r.payload),
                   payload=r.payload[:DEAD_LETTER_KEEP_BYTES])
        for r in rejections
    ])
