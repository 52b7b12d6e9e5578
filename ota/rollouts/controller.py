"""The rollout controller: one ``tick`` advances every running rollout a step.

Runs inside ``fleet_worker`` on a timer. Several workers may tick at once: a rollout is
stepped only by the worker holding its lease (a conditional UPDATE), and every step is
idempotent — re-running it after a crash changes nothing already done.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Protocol

from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from device_sdk.protocol.ota_messages import (
    DeploymentState,
    FanoutKey,
    Withdrawal,
    encode_fanout_key,
    encode_withdrawal,
)
from device_sdk.protocol.reasons import Reason
from device_sdk.protocol.topics import Channel, FleetChannel, device_topic, fleet_topic
from fleet.audit.actions import record_audit
from fleet.devices.models import Gateway
from ota.models import Package, TrustRecord
from ota.rollouts.actions import do_pause_rollout
from ota.rollouts.delivery_keys import fanout_key
from ota.rollouts.health import BEFORE_WINDOW, cohort, cohort_before, tripped_gates
from ota.rollouts.models import ACTIVE_STATES, Deployment, Rollout, RolloutState

log = logging.getLogger(__name__)


def lease() -> timedelta:
    """How long a rollout stays with the worker that last stepped it (``ROLLOUT_LEASE_S``):
    also how long a rollout waits for a new driver after its worker died."""
    from django.conf import settings

    return timedelta(seconds=settings.ROLLOUT_LEASE_S)


class Publisher(Protocol):
    """Something that can publish to the broker (the worker's MQTT client)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish ``payload`` on ``topic``."""


FINAL_STATES = (DeploymentState.CONFIRMED, DeploymentState.FAILED, DeploymentState.ROLLED_BACK)
_LIVE_ROLLOUTS = (RolloutState.RUNNING, RolloutState.PAUSED)
_published_trust: dict[int, int] = {}  # id(publisher) -> newest trust record sequence published


def publish_trust(publisher: Publisher) -> bool:
    """Publish the trust bundle, retained on ``fleet/v1/keys``, when it changed (or on this
    publisher's first call). True when something was published."""
    from django.db.models import Max

    from ota.signing.actions import trust_bundle

    newest = TrustRecord.objects.aggregate(m=Max("sequence"))["m"]
    if newest is None or _published_trust.get(id(publisher)) == newest:
        return False
    publisher.publish(fleet_topic(FleetChannel.KEYS), trust_bundle(), 1, retain=True)
    _published_trust[id(publisher)] = newest
    log.info("trust bundle published (records up to %d)", newest)
    return True


def _broker_access():
    from fleet.broker.configured import broker_access

    try:
        return broker_access()
    except Exception:  # not configured in this process: nothing to grant with
        log.exception("broker access unavailable: package fan-out not granted")
        return None


def _with_gateways(device_uids: dict[int, str]) -> dict[int, list[str]]:
    """Return, per device id, the broker identities that read for it: itself and its gateways."""
    out = {pk: [uid] for pk, uid in device_uids.items()}
    for gw_uid, child in Gateway.objects.filter(children__in=list(device_uids)).values_list(
            "uid", "children"):
        out[child].append(gw_uid)
    return out


def change_fanout(grant: bool, by_package: dict[int, list[str]]) -> None:
    """Grant (or take back) package fan-out at the broker (``FANOUT_ACCESS=grant``; with
    ``encrypt`` there is nothing to change); failures are logged, not raised: a device without
    the grant falls back to repairs by request."""
    from fleet.broker.access import fanout_by_grant

    if not fanout_by_grant():
        return
    access = _broker_access()
    if access is None:
        return
    for pkg, uids in by_package.items():
        try:
            (access.grant_package if grant else access.revoke_package)(pkg, uids)
        except Exception:
            log.exception("broker: could not %s package %d fan-out for %d identities",
                          "grant" if grant else "revoke", pkg, len(uids))


def release(publisher: Publisher, limit: int = 5000) -> int:
    """End the fan-out grants of deployments that are over; withdraw aborted ones.

    A deployment granted at its offer keeps the grant while it is in progress; once final, or
    once its rollout is no longer live, the grant is taken back. A deployment an abort stopped
    (reason ABORTED) also gets a withdrawal on ``ota/withdraw``: a device downloading the
    package drops it, one on trial reverts. Idempotent, so any worker may run it.
    """
    over = (Deployment.objects.filter(fanout_granted=True)
            .filter(Q(state__in=FINAL_STATES) | ~Q(rollout__state__in=_LIVE_ROLLOUTS)))
    # Ids first, without the device join: at 10,000 devices the joined read, run every
    # second and nearly always empty, was the database's largest cost in a rollout.
    ids = list(over.values_list("id", flat=True)[:limit])
    if not ids:
        return 0
    rows = list(Deployment.objects.filter(id__in=ids)
                .values_list("id", "device_id", "device__uid", "package_id", "reason"))
    readers = _with_gateways({device_id: uid for _, device_id, uid, _, _ in rows})
    revoke: dict[int, list[str]] = {}
    withdraw: list[tuple[str, int]] = []
    for _, device_id, uid, pkg, reason in rows:
        revoke.setdefault(pkg, []).extend(readers[device_id])
        if reason == Reason.ABORTED:
            withdraw.append((uid, pkg))
    with transaction.atomic():
        Deployment.objects.filter(id__in=[r[0] for r in rows]).update(fanout_granted=False)

        def after() -> None:
            for uid, pkg in withdraw:
                publisher.publish(device_topic(uid, Channel.OTA_WITHDRAW),
                                  encode_withdrawal(Withdrawal(pkg, int(Reason.ABORTED))), 1)
            change_fanout(False, revoke)

        transaction.on_commit(after)
    if withdraw:
        log.info("withdrew %d aborted deployments", len(withdraw))
    return len(rows)


def claim(rollout_id: int, owner: str, now: datetime) -> bool:
    """Take or renew the lease on a rollout; False when another worker holds it."""
    return bool(Rollout.objects.filter(
        Q(lease_owner=owner) | Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        pk=rollout_id,
    ).update(lease_owner=owner, lease_until=now + lease()))


def tick(owner: str, publisher: Publisher) -> list[int]:
    """Publish the trust bundle if it changed, end finished deployments' fan-out grants, then
    step every running rollout this worker can lease; return the ids stepped."""
    publish_trust(publisher)
    release(publisher)
    stepped = []
    now = timezone.now()
    for rollout_id in Rollout.objects.filter(state=RolloutState.RUNNING).values_list("id",
                                                                                      flat=True):
        if claim(rollout_id, owner, now):
            step(rollout_id, publisher, now)
            stepped.append(rollout_id)
    return stepped


def step(rollout_id: int, publisher: Publisher, now: datetime | None = None) -> None:
    """Expire stuck devices, judge the current wave, then send the offers that are due."""
    now = now or timezone.now()
    _expire(rollout_id, now)
    rollout = Rollout.objects.get(pk=rollout_id)
    if rollout.state != RolloutState.RUNNING:
        return
    if not _judge_wave(rollout, now):
        return
    _offer(rollout, publisher, now)


def _expire(rollout_id: int, now: datetime) -> None:
    """Give devices stuck in a step another offer, or fail them after the last attempt."""
    rollout = Rollout.objects.only("step_timeout_s", "max_attempts").get(pk=rollout_id)
    stuck = Deployment.objects.filter(
        rollout_id=rollout_id, state__in=ACTIVE_STATES,
        state_changed_at__lt=now - timedelta(seconds=rollout.step_timeout_s),
    )
    if not stuck.exists():  # the usual case: one read of the active ones, not two writes
        return
    stuck.filter(attempts__lt=rollout.max_attempts).update(
        state=DeploymentState.PENDING, offer_after=None, state_changed_at=now)
    stuck.filter(attempts__gte=rollout.max_attempts).update(
        state=DeploymentState.FAILED, reason=int(Reason.TIMEOUT), state_changed_at=now)


def wave_counts(rollout: Rollout, wave: int | None = None) -> Counter[int]:
    """Count the deployments of waves 0..``wave`` (default: the current one) by state."""
    wave = rollout.current_wave if wave is None else wave
    rows = (Deployment.objects.filter(rollout=rollout, wave__lte=wave)
            .values("state").annotate(n=Count("id")))
    return Counter({row["state"]: row["n"] for row in rows})


def _judge_wave(rollout: Rollout, now: datetime) -> bool:
    """Pause on failures or a tripped health gate; advance on success. True: keep offering."""
    counts = wave_counts(rollout)
    members = sum(counts.values())
    if members == 0:
        return _advance(rollout, now)
    failed = counts[DeploymentState.FAILED]
    if failed / members > rollout.failure_threshold:
        reasons = Counter(Deployment.objects.filter(
            rollout=rollout, wave__lte=rollout.current_wave, state=DeploymentState.FAILED,
        ).values_list("reason", flat=True)).most_common(3)
        top = ", ".join(f"{Reason(r).name if r in Reason._value2member_map_ else r} x{n}"
                        for r, n in reasons)
        do_pause_rollout(rollout, actor=None, reason=(
            f"wave {rollout.current_wave + 1}: {failed} of {members} devices failed "
            f"({failed / members:.0%} > {rollout.failure_threshold:.0%}); {top}"))
        log.warning("rollout %s paused: %d/%d failed", rollout.pk, failed, members)
        return False
    if counts[DeploymentState.CONFIRMED] / members < rollout.success_threshold:
        return True
    if rollout.wave_succeeded_at is None:
        Rollout.objects.filter(pk=rollout.pk).update(wave_succeeded_at=now)
        rollout.wave_succeeded_at = now
    verdict = _health(rollout, now)
    if verdict is not None:
        do_pause_rollout(rollout, actor=None, reason=f"health gate: {verdict}")
        log.warning("rollout %s paused by a health gate: %s", rollout.pk, verdict)
        return False
    if _gates_configured(rollout) and not _health_judged(rollout, now):
        waited = (now - rollout.wave_succeeded_at).total_seconds()
        if waited < rollout.health_timeout_s:
            return True  # not enough telemetry yet to judge; hold the wave
        old, new = _cohorts(rollout, now)
        reason = (f"health gate: cannot judge wave {rollout.current_wave + 1} within "
                  f"{rollout.health_timeout_s} s: {old.events} baseline and {new.events} new "
                  f"events (needs {rollout.health_min_events} of each)")
        do_pause_rollout(rollout, actor=None, reason=reason)
        log.warning("rollout %s paused: %s", rollout.pk, reason)
        return False
    if now - rollout.wave_succeeded_at >= timedelta(seconds=rollout.soak_s):
        return _advance(rollout, now)
    return True


def _gates_configured(rollout: Rollout) -> bool:
    return any(v is not None for v in (rollout.max_score_drop, rollout.max_label_shift,
                                       rollout.max_latency_rise, rollout.max_rate_drop))


def _cohorts(rollout: Rollout, now: datetime):
    confirmed = Deployment.objects.filter(rollout=rollout, state=DeploymentState.CONFIRMED)
    device_ids = list(confirmed.values_list("device_id", flat=True))

    old_versions = list(Package.objects.filter(
        pk__in=confirmed.exclude(previous_package_id=None).values("previous_package_id"),
    ).values_list("model_version_id", flat=True).distinct())
    start = rollout.wave_started_at or rollout.started_at or now
    old = cohort(device_ids, old_versions, start - BEFORE_WINDOW, start)
    if old.events < rollout.health_min_events and rollout.baseline_until is not None:
        # No (or too little) old-version telemetry: a fleet on its factory model, say. The
        # baseline is then these devices' own telemetry before the rollout started.
        before = cohort_before(device_ids, rollout.model_version_id,
                               rollout.baseline_from or rollout.baseline_until - BEFORE_WINDOW,
                               rollout.baseline_until)
        if before.events > old.events:
            old = before
    # Rollups are per minute: the new version's events of the minute the wave started are in
    # the bucket that starts before ``start``. The version filter keeps the cohorts apart.
    new = cohort(device_ids, [rollout.model_version_id], start.replace(second=0, microsecond=0),
                 now + timedelta(minutes=1))
    return old, new


def _health_judged(rollout: Rollout, now: datetime) -> bool:
    old, new = _cohorts(rollout, now)
    return min(old.events, new.events) >= rollout.health_min_events


def _health(rollout: Rollout, now: datetime) -> str | None:
    """Return why the new version looks unhealthy on the canary devices, or None."""
    if not _gates_configured(rollout):
        return None
    old, new = _cohorts(rollout, now)
    if min(old.events, new.events) < rollout.health_min_events:
        return None
    tripped = tripped_gates(rollout, old, new)
    return "; ".join(tripped) if tripped else None


@transaction.atomic
def _advance(rollout: Rollout, now: datetime) -> bool:
    """Move to the next wave, or complete after the last. True: keep offering."""
    locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
    if locked.state != RolloutState.RUNNING or locked.current_wave != rollout.current_wave:
        return False
    if locked.current_wave + 1 >= len(locked.waves):
        locked.state = RolloutState.COMPLETED
        locked.finished_at = now
        locked.save(update_fields=["state", "finished_at"])
        record_audit(actor=None, actor_label="controller", action="rollout.complete", obj=locked,
                     after={"counts": {DeploymentState(k).name.lower(): v
                                       for k, v in wave_counts(locked).items()}})
        log.info("rollout %s completed", locked.pk)
        return False
    locked.current_wave += 1
    locked.wave_started_at = now
    locked.wave_succeeded_at = None
    locked.save(update_fields=["current_wave", "wave_started_at", "wave_succeeded_at"])
    record_audit(actor=None, actor_label="controller", action="rollout.advance", obj=locked,
                 after={"wave": locked.current_wave + 1,
                        "percent": locked.waves[locked.current_wave]})
    log.info("rollout %s advanced to wave %d (%s%%)", locked.pk, locked.current_wave + 1,
             locked.waves[locked.current_wave])
    rollout.current_wave = locked.current_wave
    return True


def _in_window(rollout: Rollout, now: datetime) -> bool:
    start, end = rollout.window_start_hour, rollout.window_end_hour
    if start is None or end is None:
        return True
    hour = now.hour
    return start <= hour < end if start < end else hour >= start or hour < end


def offer_allowance(rollout: Rollout, now: datetime) -> int:
    """How many offers may go out now: the rate limit (maybe ramping) and the download cap."""
    minutes = max((now - (rollout.wave_started_at or now)).total_seconds() / 60, 0.0)
    rate = rollout.offers_per_minute * (rollout.rate_growth ** minutes)
    recent = Deployment.objects.filter(rollout=rollout,
                                       offered_at__gte=now - timedelta(minutes=1)).count()
    active = Deployment.objects.filter(rollout=rollout, state__in=ACTIVE_STATES).count()
    return max(0, min(int(rate) - recent, rollout.max_concurrent - active))


def _offer(rollout: Rollout, publisher: Publisher, now: datetime) -> None:
    if not _in_window(rollout, now):
        return
    pending = Deployment.objects.filter(rollout=rollout, wave__lte=rollout.current_wave,
                                        state=DeploymentState.PENDING)
    if not pending.exists():  # every offer of the wave is out: no counts to make each second
        return
    allowance = offer_allowance(rollout, now)
    if allowance <= 0:
        return
    if rollout.jitter_s > 0:
        unscheduled = list(pending.filter(offer_after=None).values_list("id", flat=True)[:5000])
        for dep_id in unscheduled:  # spread offers: no thundering herd on the broker
            Deployment.objects.filter(id=dep_id).update(
                offer_after=now + timedelta(seconds=random.uniform(0, rollout.jitter_s)))
    # Plain rows, not models: a wave offers thousands at once, and a Device or Package model
    # each (keys, capabilities, manifest) made this read the step's largest cost.
    due = list(pending.filter(Q(offer_after=None) | Q(offer_after__lte=now)).order_by("id")
               .values_list("id", "device_id", "device__uid", "package_id")[:allowance])
    if not due:
        return
    readers = _with_gateways({device_id: uid for _, device_id, uid, _ in due})
    grants: dict[int, list[str]] = {}
    for _, device_id, _, package_id in due:
        grants.setdefault(package_id, []).extend(readers[device_id])
    with transaction.atomic():
        ids = [dep_id for dep_id, _, _, _ in due]
        for start in range(0, len(ids), 5000):  # one statement per 5,000 offers, not one each
            Deployment.objects.filter(id__in=ids[start:start + 5000],
                                      state=DeploymentState.PENDING).update(
                state=DeploymentState.OFFERED, offered_at=now, state_changed_at=now,
                attempts=F("attempts") + 1, fanout_granted=True)
        manifests = {pkg: bytes(manifest) for pkg, manifest in
                     Package.objects.filter(pk__in=grants).values_list("id", "manifest")}
        offers = [(device_topic(uid, Channel.OTA_OFFER), manifests[package_id])
                  for _, _, uid, package_id in due]
        keys = {pkg: encode_fanout_key(FanoutKey(pkg, key)) for pkg in grants
                if (key := fanout_key(pkg)) is not None}  # one message per package
        key_messages = [(device_topic(uid, Channel.OTA_KEY), keys[package_id])
                        for _, _, uid, package_id in due if package_id in keys]

        def send() -> None:
            # First what lets the device read this package's fan-out: its key (encrypt), or
            # the broker's grant (the device reconnects once and finds its offer queued).
            change_fanout(True, grants)
            for topic, message in key_messages:
                publisher.publish(topic, message, 1)
            for topic, manifest in offers:
                publisher.publish(topic, manifest, 1)

        # Publish only what is committed: a rolled-back step sends nothing.
        transaction.on_commit(send)
    log.info("rollout %s: offered %d devices", rollout.pk, len(due))
