"""Nouns of the devices app: HardwareProfile, DeviceGroup, Tag, Device, EnrollmentToken, Gateway."""

from __future__ import annotations

import re

from django.conf import settings
from django.db import models
from django.utils import timezone

from fleet.devices.choices import DeviceState, KernelSet, KeyAlgorithm, TokenState


class HardwareProfile(models.Model):
    """A class of MCU board that a firmware build targets.

    The budgets here (arena RAM, model slot flash, registered ops) are what the admission check
    compares a model against before it may be packaged for this class.
    """

    name = models.SlugField(max_length=64, unique=True, help_text="wire name, e.g. stm32f746")
    display_name = models.CharField(max_length=100, blank=True)
    mcu = models.CharField(max_length=100, help_text="e.g. nRF52840 (Cortex-M4F, 64 MHz)")
    ram_bytes = models.PositiveIntegerField(help_text="total SRAM of the MCU")
    flash_bytes = models.PositiveIntegerField(help_text="total flash of the MCU")
    arena_ram_bytes = models.PositiveIntegerField(help_text="RAM available for the tensor arena")
    model_slot_bytes = models.PositiveIntegerField(help_text="flash of one model slot (A/B)")
    kernel_set = models.CharField(max_length=16, choices=KernelSet.choices)
    pointer_bits = models.PositiveSmallIntegerField(default=32, choices=[(32, "32"), (64, "64")])
    supported_ops = models.JSONField(default=list, help_text="TFLite op names the firmware registers")
    ota_chunk_bytes = models.PositiveIntegerField(
        default=1024, help_text="suggested OTA chunk size for this class's RAM"
    )
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DeviceGroup(models.Model):
    """A named set of devices, the usual target of enrollment tokens and rollouts."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    """A free label on devices (site, customer, batch...), used for filtering and targeting."""

    name = models.SlugField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Device(models.Model):
    """One enrolled device, bound to the public key it enrolled with."""

    uid = models.SlugField(max_length=64, unique=True, help_text="device id used in MQTT topics")
    name = models.CharField(max_length=100, blank=True)
    hardware_profile = models.ForeignKey(HardwareProfile, on_delete=models.PROTECT)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices")
    state = models.CharField(
        max_length=16, choices=DeviceState.choices, default=DeviceState.ENROLLED, db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    first_seen = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)
    firmware_version = models.CharField(max_length=64, blank=True)
    tflm_version = models.CharField(max_length=64, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    trusted_kids = models.JSONField(
        null=True, blank=True, help_text="OTA signing key ids the device reports trusting "
        "(hex); null: never reported")
    public_key_pem = models.TextField()
    public_key_fingerprint = models.CharField(max_length=64, unique=True, help_text="SHA-256 of SPKI")
    key_algorithm = models.CharField(max_length=16, choices=KeyAlgorithm.choices)
    enrolled_with = models.ForeignKey(
        "EnrollmentToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )
    enrolled_via = models.ForeignKey(
        "Gateway", null=True, blank=True, on_delete=models.SET_NULL, related_name="enrolled",
        help_text="the gateway that relayed this device's signed enrollment, if any",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    running_package_id = models.IntegerField(
        null=True, blank=True, help_text="OTA package the device last said it runs"
    )
    capability_issues = models.JSONField(
        default=list, blank=True,
        help_text="how the reported capabilities contradict the profile ([{code, message}])")

    class Meta:
        ordering = ["uid"]
        # The device list's filters at fleet scale (bench/queries.py): each count is an
        # index-only scan, where a one-column index left a heap visit per matching device.
        indexes = [
            models.Index(fields=["hardware_profile", "state"], name="devices_profile_state_idx"),
            models.Index(fields=["group", "revoked_at"], name="devices_group_revoked_idx"),
        ]

    def __str__(self) -> str:
        return self.uid

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class EnrollmentToken(models.Model):
    """A claim token devices present to enroll: single use or a batch with a limit.

    Only the SHA-256 of the token is stored; the plain token is shown once, at creation.
    """

    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="first characters, to recognise a token")
    max_uses = models.PositiveIntegerField(default=1)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField()
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL)
    hardware_profile = models.ForeignKey(
        HardwareProfile, null=True, blank=True, on_delete=models.SET_NULL,
        help_text="when set, only devices of this class may use the token",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    uid_pattern = models.CharField(
        max_length=200, blank=True,
        help_text="a regular expression every uid enrolled with this token must match in full",
    )
    allowed_uids = models.JSONField(
        default=list, blank=True, help_text="the only uids this token may enroll (when not empty)"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'token'})"

    def admits_uid(self, uid: str, derived: str) -> bool:
        """Tell whether this token may enroll ``uid`` (``derived``: the key's own uid).

        An allow-list or a pattern binds the token to the uids they name. A batch token with
        neither enrolls key-derived uids only, so nobody holding it can claim serial numbers
        before their devices do; a single-use token may enroll any uid.
        """
        if self.allowed_uids:
            return uid in self.allowed_uids
        if self.uid_pattern:
            return re.fullmatch(self.uid_pattern, uid) is not None
        return self.max_uses == 1 or uid == derived

    @property
    def state(self) -> TokenState:
        """Return why the token can or cannot enroll a new device now."""
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at <= timezone.now():
            return TokenState.EXPIRED
        if self.uses >= self.max_uses:
            return TokenState.USED_UP
        return TokenState.ACTIVE


class Gateway(models.Model):
    """A serial gateway: one broker identity that speaks for the MCUs wired to it.

    Its credential may touch its children's device topics and nothing else (docs/ARCHITECTURE.md, Topics), but
    for its own status on ``fleet/v1/{uid}/status``, which carries its last will: ``state`` and
    ``last_seen`` are its presence as the worker last applied it (``apply_gateway_status``).
    The MQTT password is never stored: it is issued once, when the gateway is (re)provisioned.
    So is its API token, which may do one thing only: add children to this gateway
    (``POST /api/v1/gateways/{uid}/children/``); only its SHA-256 is kept, and re-provisioning
    replaces it.
    """

    uid = models.SlugField(max_length=64, unique=True, help_text="the gateway's MQTT username")
    name = models.CharField(max_length=100, blank=True)
    children = models.ManyToManyField(Device, blank=True, related_name="gateways",
                                      help_text="devices whose topics the gateway may use")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    credential_issued_at = models.DateTimeField(null=True, blank=True)
    api_token_hash = models.CharField(
        max_length=64, unique=True, null=True, blank=True,
        help_text="SHA-256 of the gateway API token (none before its first provisioning)",
    )
    api_token_prefix = models.CharField(
        max_length=12, blank=True, help_text="first characters, to recognise a token"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=DeviceState.choices, default=DeviceState.ENROLLED,
        help_text="presence from the gateway's own status (enrolled: never connected)",
    )
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["uid"]

    def __str__(self) -> str:
        return self.uid

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class UsedNonce(models.Model):
    """A proof-of-possession nonce already spent (its SHA-256), so a signed request cannot be
    replayed; rows older than twice a nonce's lifetime are pruned."""

    digest = models.CharField(max_length=64, unique=True)
    used_at = models.DateTimeField(auto_now_add=True, db_index=True)
