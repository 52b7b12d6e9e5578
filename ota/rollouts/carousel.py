"""The package carousel's schedule: what to publish on a package's fan-out topic, and when.

The carousel sends a package round and round on ``fleet/v1/pkg/{pkg}/c`` (offset by
offset, wrapping at the end) for as long as some device that joined still lacks a full turn.
A device *joins* when its DOWNLOADING report is applied: it subscribed to the fan-out before
it sent that report, so every chunk published after the report was applied reaches it. It is
served once the carousel has sent one full package length after that point, wherever in the
package the turn began (devices keep chunks at their offsets).

So a wave costs about one turn however many devices it has: the carousel waits a moment for
the devices still checking their offer, or still due one, to join (until joins stop coming
for ``quiet``, ``max_wait_s`` at most) and then serves them all with the same bytes; a late
joiner is served by the next turn, which goes on from where this one ended: it costs the part
the late joiner missed, not a new package length. That turn also waits (``max_wait_s`` at
most) while devices an earlier turn served are still downloading: the broker copies a turn to
every subscribed device, and they would receive the package again (``served_until``). A rate-limited rollout thus costs one turn per ``max_wait_s`` of
offering at most, whatever the fleet size. Lost chunks are repaired by the device's own
requests.

This module is pure logic (no database, no broker) so the schedule is unit-tested on its own;
``ota.rollouts.delivery`` feeds it joins and publishes what it returns.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Publish times older than this are forgotten; a join older than every kept entry is treated
# as joining at the oldest one (it then gets at least the turn it needs, maybe more).
LOG_SPAN = timedelta(minutes=10)


@dataclass
class PackageCarousel:
    """Turn state of one package: where the next chunk starts and how far to keep going."""

    size: int
    chunk: int = 4096  # bytes per fan-out message (the hardware profile's suggestion)
    offset: int = 0  # next byte of the package to send (wraps at size)
    sent: int = 0  # bytes sent since this carousel began
    stop_at: int = 0  # keep sending until ``sent`` reaches this
    waiting_since: datetime | None = None  # first join not yet being served
    running: bool = False
    joined: set[int] = field(default_factory=set)  # deployment ids already counted
    newest_join: datetime | None = None
    last_join_seen: datetime | None = None  # when the newest join was counted (``now``)
    turn_end: int = 0  # ``sent`` at which the running turn has served its joiners
    served_until: datetime | None = None  # newest join a started turn served (None: no turn)
    _times: list[datetime] = field(default_factory=list)  # time before each publish
    _sent_before: list[int] = field(default_factory=list)  # ``sent`` before that publish

    def join(self, key: int, at: datetime, now: datetime) -> bool:
        """Count deployment ``key`` as subscribed no later than ``at``; False if already known.

        It surely receives every chunk whose publish began after ``at``: it is served once one
        package length has gone out from the first such chunk.
        """
        if key in self.joined:
            return False
        self.joined.add(key)
        self.last_join_seen = now
        if self.newest_join is None or at > self.newest_join:
            self.newest_join = at
        index = bisect_right(self._times, at)
        start = self._sent_before[index] if index < len(self._sent_before) else self.sent
        if start + self.size > self.stop_at:
            if self.stop_at <= self.sent and not self.running:
                self.waiting_since = now
            self.stop_at = start + self.size
        return True

    @property
    def pending(self) -> int:
        """Bytes still to send before every joined device has had a full turn."""
        return max(0, self.stop_at - self.sent)

    def should_run(self, now: datetime, more_coming: bool, max_wait: timedelta,
                   quiet: timedelta | None = None) -> bool:
        """Start (or keep) turning: a joiner waits, and nobody else is about to join, or no
        join came for ``quiet``, or the first waiting joiner has waited ``max_wait``.

        A turn serves the joiners counted when it starts. Devices that join while it runs
        are served by the next one: when more may still come, the carousel pauses at the end
        of the turn and waits for them as for the first, so a wave whose devices join over
        several seconds shares a few turns. (Extending the running turn for each late joiner
        kept it going for as long as joins came, and every subscribed device received all of
        it: at 10,000 devices, 21 package lengths instead of one or two.)
        """
        if self.pending == 0:
            self.running = False
            self.waiting_since = None
            return False
        if self.running:
            if self.sent < self.turn_end or not more_coming:
                return True
            self.running = False  # this turn's joiners are served; batch the late ones
            self.waiting_since = now
            return False
        waited = now - (self.waiting_since or now)
        calm = quiet is not None and (self.last_join_seen is None
                                      or now - self.last_join_seen >= quiet)
        if more_coming and waited < max_wait and not calm:
            return False
        self.running = True
        self.waiting_since = None
        self.turn_end = self.stop_at
        self.served_until = self.newest_join
        return True

    def next_chunk(self, chunk_bytes: int, now: datetime) -> tuple[int, int]:
        """Return (offset, length) of the next chunk to publish and count it as sent."""
        length = min(chunk_bytes, self.size - self.offset)
        offset = self.offset
        self._times.append(now)
        self._sent_before.append(self.sent)
        if now - self._times[0] > 2 * LOG_SPAN:  # trim now and then, not at every chunk
            keep = bisect_right(self._times, now - LOG_SPAN)
            del self._times[:keep], self._sent_before[:keep]
        self.sent += length
        self.offset = (offset + length) % self.size
        return offset, length
