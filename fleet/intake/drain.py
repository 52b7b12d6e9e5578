"""Drain a dead worker's broker session automatically.

A worker's persistent session outlives it (SESSION_EXPIRY_S): Mosquitto goes on queueing its
share of the shared subscriptions, so a worker that never comes back under its name (its host
died) holds back a share of every device's messages until it is retired. Each live worker
looks, at each heartbeat, for a peer whose heartbeat is older than ``WORKER_DEAD_AFTER_S``;
one live worker claims it (a conditional UPDATE: one winner), retires the dead name's session
in a background thread (``MqttWorker.retire`` under that name: unsubscribe, store what it
held, end the session), then marks the row retired.

Safety:
- the claim holds only while the heartbeat it saw is unchanged and the row is neither retired
  nor claimed by someone else (``drain_until`` in the future); it lapses unless renewed, so a
  drainer that dies leaves the drain to another peer;
- a worker never claims its own name;
- the dead worker coming back under its name takes its session over (MQTT client id): the
  drainer, built without reconnect, stops (RetireInterrupted) instead of taking it back, and
  the returning worker's first heartbeat clears the claim so the row is not marked retired.
  Messages the drainer stored but had not acknowledged come again to the returning worker and
  are absorbed by the (device, seq) keys.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from fleet.intake.worker import RetireInterrupted
from fleet.telemetry.models import WorkerStats

log = logging.getLogger("fleet.worker")


def dead_after() -> timedelta:
    """How long a heartbeat may be missing before its worker counts as dead."""
    return timedelta(seconds=settings.WORKER_DEAD_AFTER_S)


def drain_lease() -> timedelta:
    """How long a drain claim lasts unless renewed (renewed at each of the drainer's beats)."""
    return 2 * dead_after()


def _claimable(now: datetime) -> Q:
    return Q(retired_at__isnull=True) & (Q(drain_until__isnull=True) | Q(drain_until__lt=now))


def claim_dead_peer(me: str, *, now: datetime | None = None) -> str | None:
    """Claim the drain of one dead peer for ``me``; return its name, or None.

    Candidates: rows of other workers whose heartbeat is older than ``WORKER_DEAD_AFTER_S``,
    not retired and not claimed (or whose claim lapsed). Each claim is one UPDATE whose WHERE
    repeats those conditions and the heartbeat read: of two workers racing, the second finds
    the row claimed (PostgreSQL re-checks the WHERE on the row the first one updated; SQLite
    runs writers one at a time), and a worker that reported meanwhile is not claimed.
    """
    now = now or timezone.now()
    for pk, name, heartbeat_at in dead_candidates(me, now):
        if try_claim(me, pk, heartbeat_at, now):
            return name
    return None


def dead_candidates(me: str, now: datetime) -> list[tuple[int, str, datetime]]:
    """Return (pk, worker, heartbeat_at) of claimable dead peers of ``me``, oldest first."""
    return list(WorkerStats.objects.filter(_claimable(now), heartbeat_at__lt=now - dead_after())
                .exclude(worker=me).order_by("heartbeat_at")
                .values_list("pk", "worker", "heartbeat_at")[:20])


def try_claim(me: str, pk: int, heartbeat_at: datetime, now: datetime) -> bool:
    """Claim the row ``pk`` if it is still as read: same heartbeat, claimable, not ``me``."""
    return bool(WorkerStats.objects.filter(_claimable(now), pk=pk, heartbeat_at=heartbeat_at)
                .exclude(worker=me).update(drained_by=me, drain_until=now + drain_lease()))


def renew_drain(name: str, me: str) -> bool:
    """Extend ``me``'s claim on ``name``; False if it is no longer ours (the worker reported)."""
    return bool(WorkerStats.objects.filter(worker=name, drained_by=me, retired_at__isnull=True)
                .update(drain_until=timezone.now() + drain_lease()))


def finish_drain(name: str, me: str) -> bool:
    """Mark ``name`` retired if ``me`` still holds its claim; False if the worker came back."""
    return bool(WorkerStats.objects.filter(worker=name, drained_by=me, retired_at__isnull=True)
                .update(retired_at=timezone.now(), drain_until=None))


class Drainer:
    """A live worker's side: at each heartbeat, claim a dead peer and drain it in a thread.

    One drain at a time per worker. Counters (the live worker's, so /metrics shows them as
    ``fleet_worker_counter``): ``worker_sessions_drained``, ``worker_drained_messages``,
    ``worker_drains_interrupted``, ``worker_drains_failed``.
    """

    def __init__(self, me: str, counters: Counter[str]) -> None:
        self.me = me
        self.counters = counters
        self.thread: threading.Thread | None = None
        self.draining: str | None = None

    def tick(self) -> str | None:
        """Renew the drain under way, or claim and start one; return the name being drained."""
        if self.thread is not None and self.thread.is_alive():
            if self.draining is not None:
                renew_drain(self.draining, self.me)
            return self.draining
        self.thread = None
        name = claim_dead_peer(self.me)
        if name is None:
            return None
        log.warning("worker %s: peer %s sent no heartbeat for over %d s; draining its broker "
                    "session", self.me, name, settings.WORKER_DEAD_AFTER_S)
        self.draining = name
        self.thread = threading.Thread(target=self._drain, args=(name,), daemon=True,
                                       name=f"drain-{name}")
        self.thread.start()
        return name

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the drain under way, if any (the worker is stopping)."""
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _drain(self, name: str) -> None:
        from django.db import connection

        try:
            self._retire(name)
        finally:
            self.draining = None
            connection.close()  # this thread's own database connection

    def _retire(self, name: str) -> None:
        from fleet.intake.assemble import build_worker

        try:
            worker, _, _ = build_worker(name, reconnect=False)
            handled = worker.retire()
        except RetireInterrupted as e:
            self.counters["worker_drains_interrupted"] += 1
            log.warning("worker %s: drain of %s stopped, its connection was taken over (the "
                        "worker is back?): %s", self.me, name, e)
            return
        except Exception:
            # The claim stays until it lapses (drain_lease): then a peer tries again.
            self.counters["worker_drains_failed"] += 1
            log.exception("worker %s: drain of %s failed; retried once the claim lapses",
                          self.me, name)
            return
        self.counters["worker_drained_messages"] += handled
        if finish_drain(name, self.me):
            self.counters["worker_sessions_drained"] += 1
            log.warning("worker %s: drained dead worker %s: %d queued messages stored, its "
                        "broker session ended, marked retired", self.me, name, handled)
        else:
            log.warning("worker %s: drained %s (%d messages stored) but it reported again "
                        "meanwhile; not marked retired", self.me, name, handled)
