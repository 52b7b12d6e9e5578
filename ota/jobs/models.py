"""Nouns of background jobs other than conversion: RevalidationJob.

Imported by ota/models.py so Django sees them as models of the ota app.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from fleet.devices.models import HardwareProfile
from ota.choices import JobState


class RevalidationJob(models.Model):
    """Re-run the admission check of every version (or one) after a profile changed.

    A hardware profile created or edited after a version was validated has no (or a stale)
    admission result for it; a worker re-validates the versions so packages for it can be
    built. ``total``/``done`` are the progress the API and the console's profile page show.
    """

    hardware_profile = models.ForeignKey(HardwareProfile, null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+",
                                         help_text="the profile whose change asked for it")
    model_version = models.ForeignKey("ota.ModelVersion", null=True, blank=True,
                                      on_delete=models.CASCADE, related_name="+",
                                      help_text="only this version (else: every version)")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED,
                             db_index=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    message = models.CharField(max_length=300, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        scope = self.model_version or "every version"
        return f"re-validation of {scope} ({self.state})"

    @property
    def progress(self) -> float:
        """Share of the versions re-validated (1.0 once done)."""
        if self.state == JobState.DONE:
            return 1.0
        return self.done / self.total if self.total else 0.0
