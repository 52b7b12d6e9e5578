"""Claim and run conversion jobs; safe with several workers (a lease per job)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from fleet.audit.actions import record_audit
from fleet.core.child_env import PROJECT_ROOT, child_environment
from ota.choices import JobState, VersionStatus
from ota.models import ConversionJob, ModelVersion
from ota.registry.actions import run_validation
from ota.registry.storage import artifact_storage

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 3
CONVERSION_TIMEOUT_S = 900


def claim_conversion_job(owner: str) -> ConversionJob | None:
    """Take the oldest queued job (or one whose worker died), or None.

    The claim is a conditional UPDATE, so two workers never take the same job, on SQLite and
    PostgreSQL alike.
    """
    now = timezone.now()
    claimable = Q(state=JobState.QUEUED) | Q(state=JobState.RUNNING, lease_until__lt=now)
    for job_id in (
        ConversionJob.objects.filter(claimable, attempts__lt=MAX_ATTEMPTS)
        .order_by("created_at").values_list("id", flat=True)[:5]
    ):
        won = ConversionJob.objects.filter(claimable, id=job_id).update(
            state=JobState.RUNNING, lease_owner=owner, lease_until=now + LEASE,
        )
        if won:
            job = ConversionJob.objects.select_related("model_version__model").get(id=job_id)
            ConversionJob.objects.filter(id=job_id).update(attempts=job.attempts + 1)
            return job
    return None


def _progress(job: ConversionJob, fraction: float, message: str) -> None:
    ConversionJob.objects.filter(id=job.id, lease_owner=job.lease_owner).update(
        progress=max(0.0, min(1.0, fraction)), message=message[:300],
        lease_until=timezone.now() + LEASE,
    )


def run_conversion_job(job: ConversionJob) -> ModelVersion:
    """Convert in a child process, store the .tflite, then run the admission check."""
    storage = artifact_storage()
    mv = job.model_version
    with tempfile.TemporaryDirectory(prefix="fleet-convert-") as tmp:
        keras = Path(tmp) / "model.keras"  # Keras insists on the extension
        data = Path(tmp) / "data.npz"
        out = Path(tmp) / "model.tflite"
        shutil.copyfile(storage.path(job.keras_path), keras)
        shutil.copyfile(storage.path(job.dataset_path), data)
        outcome = _run_child(job, [str(keras), str(data), str(out)])
        if "error" in outcome:
            return _fail(job, f"{outcome['error']}: {outcome.get('detail', '')}")
        tflite = out.read_bytes()
    with transaction.atomic():
        mv.sha256 = storage.put(tflite)
        mv.size_bytes = len(tflite)
        mv.metrics = outcome.get("metrics", {})
        mv.status = VersionStatus.VALIDATING
        mv.save(update_fields=["sha256", "size_bytes", "metrics", "status"])
        ConversionJob.objects.filter(id=job.id).update(
            state=JobState.DONE, progress=1.0, message="converted", finished_at=timezone.now()
        )
        record_audit(actor=None, actor_label="system", action="model_version.converted", obj=mv,
                     after={"sha256": mv.sha256, "size": len(tflite),
                            "float_accuracy": mv.metrics.get("float_accuracy"),
                            "int8_accuracy": mv.metrics.get("int8_accuracy")})
    return run_validation(mv)


def _run_child(job: ConversionJob, args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "ota.jobs.convert_child", *args]
    # An allow-listed environment: the Keras file is untrusted, the secrets stay here.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT, env=child_environment())
    outcome: dict[str, Any] = {"error": "conversion_crashed", "detail": "no result"}
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # TensorFlow chatter on stdout
        if "progress" in event:
            _progress(job, float(event["progress"]), str(event.get("message", "")))
        elif "error" in event or "done" in event:
            outcome = event
    try:
        proc.wait(timeout=CONVERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "conversion_timeout", "detail": f"over {CONVERSION_TIMEOUT_S} s"}
    if proc.returncode != 0 and "error" not in outcome:
        tail = (proc.stderr.read() if proc.stderr else "")[-500:]
        return {"error": "conversion_crashed", "detail": f"exit {proc.returncode}: {tail}"}
    return outcome


def _fail(job: ConversionJob, error: str) -> ModelVersion:
    mv = job.model_version
    with transaction.atomic():
        ConversionJob.objects.filter(id=job.id).update(
            state=JobState.FAILED, error=error[:2000], finished_at=timezone.now()
        )
        mv.status = VersionStatus.FAILED
        mv.save(update_fields=["status"])
        record_audit(actor=None, actor_label="system", action="model_version.conversion_failed",
                     obj=mv, after={"error": error[:300]})
    log.warning("conversion of %s failed: %s", mv, error)
    return mv


def revalidate_stuck_versions(older_than: timedelta = timedelta(minutes=5)) -> int:
    """Re-run the admission check of versions a crashed process left ``validating``."""
    cutoff = timezone.now() - older_than
    stuck = ModelVersion.objects.filter(status=VersionStatus.VALIDATING, created_at__lt=cutoff)
    count = 0
    for mv in stuck.exclude(sha256=""):
        run_validation(mv)
        count += 1
    return count


def run_pending_jobs(owner: str, *, limit: int = 1) -> int:
    """Claim and run up to ``limit`` conversion jobs; return how many ran."""
    ran = 0
    while ran < limit:
        job = claim_conversion_job(owner)
        if job is None:
            break
        log.info("%s converting %s", owner, job.model_version)
        try:
            run_conversion_job(job)
        except Exception as exc:  # a job must never take the worker down
            log.exception("conversion job %s failed", job.id)
            _fail(job, f"internal error: {exc}")
        ran += 1
    return ran
