"""Keep admission current: re-validate versions when a hardware profile is created or edited.

A version's admission report lists a verdict per profile as the profiles were when it was
checked. A profile added later has no verdict (building its package answers 409 "has no
admission result"), and an edited one a stale verdict. Saving a profile therefore queues a
:class:`~ota.jobs.models.RevalidationJob` (on commit, one queued job at a time per scope), and a
worker runs it: every validated or refused version goes through the admission check again.
``POST /api/v1/model-versions/{id}/revalidate/`` queues one for a single version.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_save
from django.utils import timezone

from fleet.audit.actions import record_audit
from fleet.devices.models import HardwareProfile
from ota.choices import JobState, VersionStatus
from ota.errors import OtaError
from ota.jobs.models import RevalidationJob
from ota.models import ModelVersion
from ota.registry.actions import run_validation

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 3
# Versions whose bytes passed (or failed) the admission check: those have verdicts to renew.
REVALIDATED_STATES = (VersionStatus.READY, VersionStatus.INVALID)


def versions_to_revalidate(job: RevalidationJob) -> Any:
    """Return the versions a job covers, oldest first."""
    qs = ModelVersion.objects.filter(status__in=REVALIDATED_STATES).exclude(sha256="")
    if job.model_version_id:
        qs = qs.filter(pk=job.model_version_id)
    return qs.order_by("created_at", "id")


def do_request_revalidation(*, actor: AbstractBaseUser | None,
                            profile: HardwareProfile | None = None,
                            version: ModelVersion | None = None) -> RevalidationJob:
    """Queue a re-validation of ``version`` (or of every version); reuse a queued one."""
    if version is not None and version.status not in REVALIDATED_STATES:
        raise OtaError("version_not_validated",
                       f"{version} is {version.status}: there is no admission result to renew.",
                       409)
    with transaction.atomic():
        queued = RevalidationJob.objects.filter(
            state=JobState.QUEUED, model_version=version).select_for_update().first()
        if queued is None and version is not None:
            # A queued job over every version covers this one too.
            queued = RevalidationJob.objects.filter(state=JobState.QUEUED,
                                                    model_version=None).first()
        if queued is not None:
            return queued
        job = RevalidationJob.objects.create(
            hardware_profile=profile, model_version=version,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
        )
        job.total = versions_to_revalidate(job).count()
        job.save(update_fields=["total"])
        record_audit(actor=actor, actor_label=None if actor else "system",
                     action="model_version.revalidate_request", obj=job,
                     after={"profile": profile.name if profile else None,
                            "version": str(version) if version else "every version",
                            "versions": job.total})
    return job


def _profile_saved(sender: type, instance: HardwareProfile, raw: bool = False,
                   **kwargs: Any) -> None:
    """Queue a re-validation of every version once a profile's save commits."""
    if raw:  # loading fixtures
        return
    profile_id = instance.pk

    def queue() -> None:
        if not ModelVersion.objects.filter(status__in=REVALIDATED_STATES).exists():
            return  # nothing was ever validated: nothing to renew
        do_request_revalidation(
            actor=None, profile=HardwareProfile.objects.filter(pk=profile_id).first())

    transaction.on_commit(queue)


def connect_profile_signal() -> None:
    """Revalidate on every profile create and edit (API, console, admin alike); from
    ``OtaConfig.ready``: the devices app sits below this one and never calls it."""
    post_save.connect(_profile_saved, sender=HardwareProfile,
                      dispatch_uid="ota.revalidate_on_profile_save")


def claim_revalidation_job(owner: str) -> RevalidationJob | None:
    """Take the oldest queued job (or one whose worker died) with a conditional UPDATE."""
    now = timezone.now()
    claimable = Q(state=JobState.QUEUED) | Q(state=JobState.RUNNING, lease_until__lt=now)
    for job_id in (RevalidationJob.objects.filter(claimable, attempts__lt=MAX_ATTEMPTS)
                   .order_by("created_at").values_list("id", flat=True)[:5]):
        if RevalidationJob.objects.filter(claimable, id=job_id).update(
                state=JobState.RUNNING, lease_owner=owner, lease_until=now + LEASE):
            job = RevalidationJob.objects.get(id=job_id)
            RevalidationJob.objects.filter(id=job_id).update(attempts=job.attempts + 1)
            return job
    return None


def run_revalidation_job(job: RevalidationJob) -> RevalidationJob:
    """Re-validate the job's versions one by one, recording progress as it goes."""
    versions = list(versions_to_revalidate(job))
    RevalidationJob.objects.filter(id=job.id).update(total=len(versions), done=0)
    failures = 0
    for index, mv in enumerate(versions):
        try:
            run_validation(mv)
        except Exception as exc:  # one unreadable artifact must not stop the others
            failures += 1
            log.exception("re-validation of %s failed", mv)
            message = f"{mv}: {exc}"
        else:
            message = f"re-validated {mv}"
        RevalidationJob.objects.filter(id=job.id, lease_owner=job.lease_owner).update(
            done=index + 1, message=message[:300], lease_until=timezone.now() + LEASE)
    RevalidationJob.objects.filter(id=job.id).update(
        state=JobState.FAILED if failures else JobState.DONE, finished_at=timezone.now(),
        message=(f"{failures} of {len(versions)} versions could not be re-validated"
                 if failures else f"{len(versions)} versions re-validated"))
    job.refresh_from_db()
    log.info("%s", job.message)
    return job


def run_pending_revalidations(owner: str, *, limit: int = 1) -> int:
    """Claim and run up to ``limit`` re-validation jobs; return how many ran."""
    ran = 0
    while ran < limit:
        job = claim_revalidation_job(owner)
        if job is None:
            break
        try:
            run_revalidation_job(job)
        except Exception as exc:  # a job must never take the worker down
            log.exception("re-validation job %s failed", job.id)
            RevalidationJob.objects.filter(id=job.id).update(
                state=JobState.FAILED, message=f"internal error: {exc}"[:300],
                finished_at=timezone.now())
        ran += 1
    return ran
