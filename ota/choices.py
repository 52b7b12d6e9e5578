"""States and enumerations of the ota app (stored values: never rename)."""

from django.db import models


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
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


class Encoding(models.IntegerChoices):
    """Manifest key 8 (wire values: never renumber)."""

    RAW = 0, "raw"
    COMPRESSED = 1, "compressed"
    DELTA = 2, "delta"
