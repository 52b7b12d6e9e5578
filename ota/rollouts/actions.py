"""Every write on rollouts: create, start, pause, resume, abort, rollback. All audited."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.audit.actions import record_audit
from fleet.devices.capabilities import cannot_take
from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from ota.errors import OtaError
from ota.models import ModelVersion, Package, ProfileCompatibility
from ota.packaging.actions import check_packageable, do_build_package
from ota.rollouts.health import BEFORE_WINDOW
from ota.rollouts.models import (
    ACTIVE_STATES,
    Deployment,
    FactoryVersion,
    Rollout,
    RolloutState,
)
from ota.rollouts.targeting import check_waves, new_wave_seed, target_devices, wave_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutPreview:
    """What a rollout would do: devices per wave and per profile, and what refuses it."""

    total: int
    per_wave: list[int]
    per_profile: dict[str, int]
    refusals: dict[str, str]  # profile name -> why the version does not fit
    # device uid -> why that device cannot take the version (its reported capabilities fall
    # short of what the model needs on its profile); listed, not refused: the offer would fail
    device_refusals: dict[str, str] = field(default_factory=dict)


def preview_rollout(mv: ModelVersion, devices: list[Device], waves: list[float],
                    wave_seed: int) -> RolloutPreview:
    """Count devices per wave and per profile, and check the version against each profile.

    ``wave_seed`` is the salt the rollout will hash with (pass it on to
    :func:`do_create_rollout`), so these per-wave counts are the rollout's.
    """
    per_profile = Counter(d.hardware_profile.name for d in devices)
    refusals: dict[str, str] = {}
    for profile in {d.hardware_profile for d in devices}:
        try:
            check_packageable(mv, profile)
        except OtaError as exc:
            refusals[profile.name] = exc.detail
    per_wave_new = Counter(wave_of(wave_seed, d.uid, waves) for d in devices)
    arena_by_profile = dict(ProfileCompatibility.objects.filter(model_version=mv).values_list(
        "hardware_profile_id", "arena_bytes_required"))
    model_ops = list((mv.validation or {}).get("ops") or [])
    device_refusals = {}
    for d in devices:
        why = cannot_take(d.capabilities, ops=model_ops,
                          arena_bytes=arena_by_profile.get(d.hardware_profile_id),
                          model_bytes=mv.size_bytes)
        if why:
            device_refusals[d.uid] = "; ".join(why)
    cumulative, running = [], 0
    for index in range(len(waves)):
        running += per_wave_new.get(index, 0)
        cumulative.append(running)
    return RolloutPreview(len(devices), cumulative, dict(per_profile), refusals, device_refusals)


def do_create_rollout(
    *,
    actor: AbstractBaseUser | None,
    name: str,
    model_version: ModelVersion,
    waves: list[float],
    group: DeviceGroup | None = None,
    tags: list[str] | None = None,
    profile: HardwareProfile | None = None,
    devices: list[Device] | None = None,
    base_version: ModelVersion | None = None,
    rollback_of: Rollout | None = None,
    wave_seed: int | None = None,
    **settings_: Any,
) -> Rollout:
    """Create a rollout (draft) after checking the version fits every targeted profile.

    Packages are built (or reused) per targeted hardware profile; a delta from
    ``base_version`` is used where it is smaller. ``wave_seed``: the one a preview used
    (a fresh one when None), so the waves are the ones the preview counted.
    """
    wave_seed = wave_seed if wave_seed is not None else new_wave_seed()
    try:
        waves = check_waves(waves)
    except ValueError as exc:
        raise OtaError("bad_waves", str(exc)) from None
    targets = list(target_devices(
        group_id=group.pk if group else None, tags=tags or [],
        profile_id=profile.pk if profile else None,
        device_ids=[d.pk for d in devices or []],
    ).select_related("hardware_profile"))
    if not targets:
        raise OtaError("no_targets", "The target matches no (unrevoked) device.")
    preview = preview_rollout(model_version, targets, waves, wave_seed)
    if preview.refusals:
        text = "; ".join(f"{p}: {why}" for p, why in sorted(preview.refusals.items()))
        raise OtaError("incompatible", f"Refused for {text}", 409, refusals=preview.refusals)
    # A rollback must not reuse the old version's package: its sequence is below the one the
    # devices accepted since, so they would refuse it (anti-rollback). A fresh build of the
    # old version carries a new, higher sequence.
    packages = [_package_for(model_version, p, base_version, actor,
                             fresh=rollback_of is not None, devices=targets)
                for p in {d.hardware_profile for d in targets}]
    with transaction.atomic():
        rollout = Rollout.objects.create(
            name=name, model_version=model_version, base_version=base_version, waves=waves,
            target_group=group, target_tags=tags or [], target_profile=profile,
            rollback_of=rollback_of, wave_seed=wave_seed,
            created_by=actor if actor is not None and actor.is_authenticated else None,
            **settings_,
        )
        rollout.packages.set(packages)
        if devices:
            rollout.target_devices.set(devices)
        record_audit(actor=actor, action="rollout.create", obj=rollout, after={
            "model_version": str(model_version), "waves": waves, "targets": len(targets),
            "packages": [p.pk for p in packages],
        })
    return rollout


def _package_for(mv: ModelVersion, profile: HardwareProfile, base: ModelVersion | None,
                 actor: AbstractBaseUser | None, *, fresh: bool = False,
                 devices: list[Device] | None = None) -> Package:
    """Reuse the newest unexpired package of ``mv`` for ``profile`` or build one.

    A package is reused only if its sequence (= its id) is above every package the target
    devices run or were offered: a device refuses anything at or below its sequence.
    """
    validity = timedelta(days=settings.ROLLOUT_PACKAGE_VALIDITY_DAYS)
    if fresh:
        return do_build_package(mv, profile, actor=actor, base=base, validity=validity)
    ids = [d.pk for d in devices or [] if d.hardware_profile_id == profile.pk]
    floor = max([0, *(d.running_package_id or 0 for d in devices or []
                      if d.hardware_profile_id == profile.pk),
                 *Deployment.objects.filter(device_id__in=ids)
                 .values_list("package_id", flat=True).distinct()])
    # Reused only while it has a day to live. Packages a rollout builds are short-lived (a
    # pulled manifest stays installable until it expires, unless a signed revocation reached
    # the device); one built by hand keeps the lifetime it was built with.
    now = timezone.now()
    existing = (Package.objects.filter(model_version=mv, hardware_profile=profile,
                                       base_version=base if base else None,
                                       expires_at__gt=now + timedelta(days=1), pk__gt=floor)
                .order_by("-id").first())
    return existing or do_build_package(mv, profile, actor=actor, base=base, validity=validity)


@transaction.atomic
def do_start_rollout(rollout: Rollout, *, actor: AbstractBaseUser | None) -> Rollout:
    """Start a draft rollout: place every target device in its wave; wave 0 begins."""
    rollout = Rollout.objects.select_for_update().get(pk=rollout.pk)
    if rollout.state != RolloutState.DRAFT:
        raise OtaError("bad_state", f"Only a draft can start; this one is {rollout.state}.", 409)
    packages = {p.hardware_profile_id: p for p in rollout.packages.all()}
    targets = target_devices(
        group_id=rollout.target_group_id, tags=rollout.target_tags,
        profile_id=rollout.target_profile_id,
        device_ids=list(rollout.target_devices.values_list("id", flat=True)),
    )
    rows = []
    for device in targets.only("id", "uid", "hardware_profile_id", "running_package_id"):
        package = packages.get(device.hardware_profile_id)
        if package is None:  # a device of a new profile joined the target after creation
            continue
        rows.append(Deployment(rollout=rollout, device=device, package=package,
                               wave=wave_of(rollout.wave_salt, device.uid, rollout.waves),
                               previous_package_id=device.running_package_id))
    Deployment.objects.bulk_create(rows, batch_size=1000)
    now = timezone.now()
    rollout.state = RolloutState.RUNNING
    rollout.started_at = rollout.wave_started_at = now
    # The health gates' baseline when the devices' old version has no telemetry of its own.
    rollout.baseline_from, rollout.baseline_until = now - BEFORE_WINDOW, now
    rollout.current_wave = 0
    rollout.save()
    record_audit(actor=actor, action="rollout.start", obj=rollout,
                 after={"devices": len(rows), "waves": rollout.waves})
    return rollout


def _transition(rollout: Rollout, allowed: tuple[str, ...], new_state: str, action: str,
                actor: AbstractBaseUser | None, **fields: Any) -> Rollout:
    locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
    if locked.state not in allowed:
        raise OtaError("bad_state", f"Cannot {action.split('.')[-1]} a {locked.state} rollout.",
                       409)
    before = {"state": locked.state}
    locked.state = new_state
    for key, value in fields.items():
        setattr(locked, key, value)
    locked.save()
    record_audit(actor=actor, action=action, obj=locked, before=before,
                 after={"state": new_state, **{k: str(v) for k, v in fields.items()}},
                 actor_label=None if actor else "controller")
    return locked


@transaction.atomic
def do_pause_rollout(rollout: Rollout, *, actor: AbstractBaseUser | None,
                     reason: str = "paused by an operator") -> Rollout:
    """Stop offering; devices already downloading finish. ``reason`` is shown to operators."""
    return _transition(rollout, (RolloutState.RUNNING,), RolloutState.PAUSED, "rollout.pause",
                       actor, paused_reason=reason[:300])


@transaction.atomic
def do_resume_rollout(rollout: Rollout, *, actor: AbstractBaseUser | None) -> Rollout:
    """Resume offering. Failed devices of the current wave get another attempt."""
    resumed = _transition(rollout, (RolloutState.PAUSED,), RolloutState.RUNNING,
                          "rollout.resume", actor, paused_reason="")
    # Devices that failed get a fresh try (the fix may be on their side or in a new gate).
    Deployment.objects.filter(rollout=resumed, state=DeploymentState.FAILED).update(
        state=DeploymentState.PENDING, attempts=0, reason=0, offer_after=None,
    )
    return resumed


@transaction.atomic
def do_abort_rollout(rollout: Rollout, *, actor: AbstractBaseUser | None) -> Rollout:
    """Stop for good: no further offers; devices not yet done are marked failed (aborted).

    Devices hear of it twice: the controller sends each device it had offered the package a
    withdrawal (``ota/withdraw``: stop downloading, revert a trial), and a signed policy record
    on ``fleet/v1/keys`` revokes the rollout's packages (and raises the fleet's minimum
    sequence past them when no live rollout needs a lower one), so an unexpired manifest of a
    pulled package is refused even by a device that missed the withdrawal.
    """
    aborted = _transition(rollout, (RolloutState.DRAFT, RolloutState.RUNNING,
                                    RolloutState.PAUSED), RolloutState.ABORTED, "rollout.abort",
                          actor, finished_at=timezone.now())
    Deployment.objects.filter(rollout=aborted, state__in=[DeploymentState.PENDING,
                                                          *ACTIVE_STATES]).update(
        state=DeploymentState.FAILED, reason=int(Reason.ABORTED),
        state_changed_at=timezone.now(),
    )
    if aborted.started_at is not None:
        _revoke_packages(aborted, actor)
    return aborted


def _revoke_packages(rollout: Rollout, actor: AbstractBaseUser | None) -> None:
    """Sign a policy revoking ``rollout``'s packages that no other live rollout offers."""
    from ota.signing.actions import record_policy

    live = Rollout.objects.filter(state__in=(RolloutState.DRAFT, RolloutState.RUNNING,
                                             RolloutState.PAUSED)).exclude(pk=rollout.pk)
    needed = set(Package.objects.filter(rollouts__in=live).values_list("id", flat=True))
    pulled = [p for p in rollout.packages.all() if p.pk not in needed]
    if not pulled:
        return
    top = max(p.sequence or p.pk for p in pulled)
    lower_needed = Package.objects.filter(pk__in=needed, sequence__lte=top).exists()
    record_policy(actor=actor, revoke_packages=[p.pk for p in pulled],
                  min_sequence=None if lower_needed else top,
                  why=f"rollout {rollout.pk} aborted")


def do_rollback_rollout(rollout: Rollout, *, actor: AbstractBaseUser | None) -> Rollout:
    """Offer the previous version to every device that took this rollout's version.

    Creates and starts a one-wave rollout of the version most of those devices ran before;
    the original rollout is aborted if it was still going.
    """
    took = Deployment.objects.filter(rollout=rollout, state__in=[
        DeploymentState.CONFIRMED, DeploymentState.INSTALLED, DeploymentState.TRIAL,
        DeploymentState.VERIFIED])
    # None or 0: the device ran its factory model (package 0) before this rollout.
    previous = Counter(p or 0 for p in took.values_list("previous_package_id", flat=True)
                       ).most_common(1)
    if not previous:
        raise OtaError("nothing_to_roll_back", "No device took this rollout's version.", 409)
    if previous[0][0] == 0:
        old_version = _factory_version(took)
    else:
        old_package = Package.objects.filter(pk=previous[0][0]).first()
        if old_package is None:
            raise OtaError("nothing_to_roll_back", "The previous package no longer exists.", 409)
        old_version = old_package.model_version
    devices = list(Device.objects.filter(id__in=took.values("device_id")))
    if Rollout.objects.get(pk=rollout.pk).state in (RolloutState.RUNNING, RolloutState.PAUSED):
        try:
            do_abort_rollout(rollout, actor=actor)
        except OtaError:
            pass  # the controller completed it meanwhile: nothing left to stop
    back = do_create_rollout(
        actor=actor, name=f"rollback of {rollout.name}", model_version=old_version,
        waves=[100], devices=devices, rollback_of=rollout,
        offers_per_minute=rollout.offers_per_minute, max_concurrent=rollout.max_concurrent,
    )
    return do_start_rollout(back, actor=actor)


def _factory_version(took: Any) -> ModelVersion:
    """Return the registered factory version of the devices in ``took`` (one for all)."""
    profiles = set(took.values_list("device__hardware_profile_id", flat=True))
    versions = {f.hardware_profile_id: f.model_version
                for f in FactoryVersion.objects.filter(hardware_profile_id__in=profiles)
                .select_related("model_version")}
    missing = sorted(HardwareProfile.objects.filter(pk__in=profiles - set(versions))
                     .values_list("name", flat=True))
    if missing:
        raise OtaError("nothing_to_roll_back", "The devices ran their factory model before, and "
                       f"no factory version is registered for {', '.join(missing)}.", 409)
    distinct = {v.pk: v for v in versions.values()}
    if len(distinct) != 1:
        raise OtaError("nothing_to_roll_back", "The devices' profiles have different factory "
                       "versions: roll each profile back on its own.", 409)
    return next(iter(distinct.values()))


@transaction.atomic
def do_register_factory_version(model_version: ModelVersion, profile: HardwareProfile, *,
                                actor: AbstractBaseUser | None) -> FactoryVersion:
    """Record ``model_version`` as what ``profile``'s devices leave the factory with.

    A rollback of devices that ran package 0 then ships a fresh package of this version.
    """
    check_packageable(model_version, profile)
    before = FactoryVersion.objects.filter(hardware_profile=profile).first()
    factory, _ = FactoryVersion.objects.update_or_create(
        hardware_profile=profile, defaults={"model_version": model_version})
    record_audit(actor=actor, action="factory_version.register", obj=factory,
                 before={"model_version": str(before.model_version)} if before else None,
                 after={"model_version": str(model_version), "profile": profile.name})
    return factory
