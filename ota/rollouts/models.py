"""Nouns of rollouts: Rollout and per-device Deployment.

Imported by ota/models.py so Django sees them as models of the ota app.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from device_sdk.protocol.ota_messages import DeploymentState
from fleet.devices.models import Device, DeviceGroup, HardwareProfile


class RolloutState(models.TextChoices):
    DRAFT = "draft", "draft"
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    COMPLETED = "completed", "completed"
    ABORTED = "aborted", "aborted"


# Per-device states, as Django choices made from the wire enum (values live in one place).
DeploymentStateChoices = models.IntegerChoices(
    "DeploymentStateChoices", [(s.name, (s.value, s.name.lower())) for s in DeploymentState]
)
ACTIVE_STATES = (DeploymentState.OFFERED, DeploymentState.DOWNLOADING, DeploymentState.VERIFIED,
                 DeploymentState.INSTALLED, DeploymentState.TRIAL)
DONE_STATES = (DeploymentState.CONFIRMED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK)


class Rollout(models.Model):
    """A model version offered to a set of devices in waves, each gated on outcomes and health.

    Target: any of group, tags, hardware profile, explicit devices (intersected). Waves are
    cumulative percentages of the target; membership is a hash of (rollout id, device uid), so
    a re-run controller picks the same devices.
    """

    name = models.CharField(max_length=100)
    model_version = models.ForeignKey("ota.ModelVersion", on_delete=models.PROTECT,
                                      related_name="rollouts")
    base_version = models.ForeignKey("ota.ModelVersion", null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="+",
                                     help_text="build deltas from this version when smaller")
    packages = models.ManyToManyField("ota.Package", related_name="rollouts")
    state = models.CharField(max_length=16, choices=RolloutState.choices,
                             default=RolloutState.DRAFT, db_index=True)
    # target
    target_group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.PROTECT)
    target_tags = models.JSONField(default=list, blank=True)
    target_profile = models.ForeignKey(HardwareProfile, null=True, blank=True,
                                       on_delete=models.PROTECT)
    target_devices = models.ManyToManyField(Device, blank=True, related_name="+")
    # waves and gates
    waves = models.JSONField(default=list, help_text="cumulative percentages, e.g. [1, 10, 50, 100]")
    current_wave = models.PositiveSmallIntegerField(default=0)
    wave_started_at = models.DateTimeField(null=True, blank=True)
    wave_succeeded_at = models.DateTimeField(null=True, blank=True)
    success_threshold = models.FloatField(default=0.95, help_text="share confirmed to advance")
    failure_threshold = models.FloatField(default=0.2, help_text="share failed that pauses")
    soak_s = models.PositiveIntegerField(default=0, help_text="wait after success before advancing")
    max_score_drop = models.FloatField(null=True, blank=True,
                                       help_text="pause if mean score (0..255) drops more")
    max_label_shift = models.FloatField(null=True, blank=True,
                                        help_text="pause if label distribution TVD exceeds")
    max_latency_rise = models.FloatField(null=True, blank=True,
                                         help_text="pause if mean latency rises by this ratio")
    max_rate_drop = models.FloatField(null=True, blank=True,
                                      help_text="pause if event rate falls by this ratio")
    health_min_events = models.PositiveIntegerField(default=100,
                                                    help_text="events needed to judge health")
    health_timeout_s = models.PositiveIntegerField(
        default=3600, help_text="pause when a gate cannot judge this long after a wave succeeded")
    # The same devices' telemetry before the rollout: the baseline when no old version has
    # telemetry (a fleet on its factory model, package 0). Recorded at start.
    baseline_from = models.DateTimeField(null=True, blank=True)
    baseline_until = models.DateTimeField(null=True, blank=True)
    wave_seed = models.BigIntegerField(
        null=True, blank=True,
        help_text="salt of the wave hash, fixed when the rollout is previewed (None: its id)")
    # pacing
    offers_per_minute = models.PositiveIntegerField(default=600)
    rate_growth = models.FloatField(default=1.0, help_text="x per minute (>1: exponential ramp)")
    jitter_s = models.FloatField(default=0.0, help_text="random delay before each offer")
    max_concurrent = models.PositiveIntegerField(default=1000, help_text="downloads at once")
    window_start_hour = models.PositiveSmallIntegerField(null=True, blank=True,
                                                         help_text="UTC maintenance window")
    window_end_hour = models.PositiveSmallIntegerField(null=True, blank=True)
    step_timeout_s = models.PositiveIntegerField(default=600)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # bookkeeping
    paused_reason = models.CharField(max_length=300, blank=True)
    rollback_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="rollbacks")
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"rollout {self.pk} {self.name} ({self.state})"

    @property
    def wave_salt(self) -> int:
        """What wave membership hashes with: the seed fixed at preview, else the id."""
        return self.wave_seed if self.wave_seed is not None else int(self.pk or 0)


class FactoryVersion(models.Model):
    """The model version a hardware profile's devices leave the factory with (package 0).

    Registering it makes the factory model a rollback target: devices that ran package 0
    before a rollout get a fresh package of this version when the rollout is rolled back.
    """

    hardware_profile = models.OneToOneField(HardwareProfile, on_delete=models.CASCADE,
                                            related_name="factory_version")
    model_version = models.ForeignKey("ota.ModelVersion", on_delete=models.PROTECT,
                                      related_name="factory_for")
    registered_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"factory {self.model_version} on {self.hardware_profile}"


class Deployment(models.Model):
    """One device's progress through one rollout."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="deployments")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="deployments")
    package = models.ForeignKey("ota.Package", on_delete=models.PROTECT)
    wave = models.PositiveSmallIntegerField()
    state = models.PositiveSmallIntegerField(choices=DeploymentStateChoices.choices,
                                             default=DeploymentState.PENDING, db_index=True)
    reason = models.PositiveIntegerField(default=0, help_text="wire Reason code when failed")
    attempts = models.PositiveSmallIntegerField(default=0)
    previous_package_id = models.IntegerField(null=True, blank=True,
                                              help_text="what the device ran before")
    offer_after = models.DateTimeField(null=True, blank=True, help_text="jitter: not before")
    offered_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    bytes_served = models.BigIntegerField(default=0)
    fanout_granted = models.BooleanField(
        default=False, help_text="the broker lets the device read this package's fan-out")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rollout", "device"],
                                               name="unique_rollout_device")]
        indexes = [models.Index(fields=["rollout", "wave", "state"])]

    def __str__(self) -> str:
        return f"{self.device} in {self.rollout}: {DeploymentState(self.state).name.lower()}"
