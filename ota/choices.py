"""States and enumerations of the ota app (stored values: never rename)."""

from django.db import models

from device_sdk.protocol.manifest import Encoding as WireEncoding


class VersionSource(models.TextChoices):
    UPLOADED = "uploaded", "uploaded .tflite"
    CONVERTED = "converted", "converted from Keras"


class VersionStatus(models.TextChoices):
    CONVERTING = "converting", "converting"
    VALIDATING = "validating", "validating"
    READY = "ready", "validated"
    INVALID = "invalid", "refused by validation"
    FAILED = "failed", "conversion failed"


class JobState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class KeyState(models.TextChoices):
    # Trusted by devices (rotation record published), not yet signing: an operator activates
    # it once enough of the fleet reports trusting it.
    PENDING = "pending", "pending activation"
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


# Manifest key 8, as Django choices made from the wire enum so the values live in one place.
Encoding = models.IntegerChoices(
    "Encoding", [(e.name, (e.value, e.name.lower())) for e in WireEncoding]
)
