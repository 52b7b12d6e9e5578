"""States and enumerations of the devices app (stored values: never rename)."""

from django.db import models


class DeviceState(models.TextChoices):
    ENROLLED = "enrolled", "enrolled, never connected"
    ONLINE = "online", "online"
    OFFLINE = "offline", "offline"
    REVOKED = "revoked", "revoked"


class KernelSet(models.TextChoices):
    REFERENCE = "reference", "TFLM reference kernels"
    CMSIS_NN = "cmsis-nn", "Arm CMSIS-NN"
    ESP_NN = "esp-nn", "Espressif ESP-NN"


class KeyAlgorithm(models.TextChoices):
    ED25519 = "ed25519", "Ed25519"
    P256 = "p256", "ECDSA P-256"


class TokenState(models.TextChoices):
    ACTIVE = "active", "active"
    EXPIRED = "expired", "expired"
    USED_UP = "used_up", "used up"
    REVOKED = "revoked", "revoked"
