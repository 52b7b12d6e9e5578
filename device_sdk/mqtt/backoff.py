"""Reconnect back-off: exponential growth with random jitter, reset once a link proved stable.

Jitter matters more than growth for a fleet: when the broker restarts, thousands of devices
lose their connection in the same millisecond, and without jitter they would all come back in
the same millisecond too, again and again. Each delay is drawn uniformly from
``[(1 - jitter) * d, d]`` where ``d = min(maximum, initial * multiplier ** attempt)``, so the
reconnects of a fleet spread over the whole window while the worst case stays bounded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Compute the delays between reconnect attempts.

    Not thread-safe: each link owns one and uses it from its reactor thread only.
    """

    initial: float = 1.0  # seconds before the first retry (before jitter)
    maximum: float = 120.0  # the delay never grows past this
    multiplier: float = 2.0
    jitter: float = 0.5  # 0: fixed delays; 1: "full jitter", anywhere in [0, d]
    # A connection that stayed up this long resets the back-off; one that dropped sooner
    # (a broker that accepts and then kicks the device) keeps growing it.
    stable_after: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0  # consecutive failed attempts since the last reset

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def ceiling(self, attempt: int) -> float:
        """Return the delay before jitter for the ``attempt``-th consecutive failure (0-based)."""
        # Compare exponents rather than computing multiplier ** attempt: no float overflow.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.multiplier
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def next_delay(self) -> float:
        """Return how long to wait before the next attempt, and count the attempt."""
        top = self.ceiling(self.attempts)
        self.attempts += 1
        return self.rng.uniform((1.0 - self.jitter) * top, top)

    def reset(self) -> None:
        """Start over from ``initial``: the last connection proved the path works."""
        self.attempts = 0

    def connection_ended(self, uptime_s: float) -> None:
        """Reset the back-off if a connection that just ended had stayed up long enough."""
        if uptime_s >= self.stable_after:
            self.reset()
