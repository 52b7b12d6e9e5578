"""Who the client is behind trusted proxies, and rate limits shared by every web process.

The API's rate limits (``ClientRateThrottle``) are buckets in a database table
(fleet.core.buckets: one upsert a request); the login limits (``AttemptLimiter``) are counters
in the ``THROTTLE_CACHE`` cache, a database table too. Either way two gunicorn workers, two
``runserver`` processes or two hosts on one database share one bucket per client; a
per-process memory cache would give each process its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle

from fleet.core.buckets import bucket_key, take

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def client_ip(request: Any) -> str:
    """Return the client's address, taking ``TRUSTED_PROXY_COUNT`` proxies into account.

    With no trusted proxy (the default) it is ``REMOTE_ADDR`` and ``X-Forwarded-For`` is
    ignored: anybody can send that header. With N proxies, each appends the address it saw, so
    the client is the Nth entry from the right; entries further left are the client's own
    claims. A header shorter than N, or an entry that is not an address, means the request did
    not come through the proxies: ``REMOTE_ADDR`` then.
    """
    meta = getattr(request, "META", {})
    remote = meta.get("REMOTE_ADDR", "") or ""
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    hops = [hop.strip() for hop in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) < count:
        return remote
    candidate = hops[-count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


def throttle_cache() -> BaseCache:
    """Return the cache every web process shares for rate limits."""
    return caches[settings.THROTTLE_CACHE]


def parse_rate(rate: str) -> tuple[int, int]:
    """Parse DRF's rate syntax (``"30/min"``, ``"10/hour"``) into (requests, seconds)."""
    count, period = rate.split("/")
    return int(count), _PERIODS[period.strip()[0]]


class ClientRateThrottle(ScopedRateThrottle):
    """A scoped throttle keyed on :func:`client_ip`, its buckets shared by every web process.

    Views name their ``throttle_scope`` (a rate in ``DEFAULT_THROTTLE_RATES``, DRF's syntax).
    Each client gets ``N`` requests at once, then one every ``period / N`` (a token bucket,
    fleet.core.buckets), for one database statement a request. Callers logged in as a user are
    not limited (their token is the accountable credential); anonymous callers and gateway
    tokens are.
    """

    _wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        """Count the request against its client's bucket in the view's scope."""
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return True
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        if self.rate is None:  # DRF's meaning of a None rate: no limit
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        verdict = take(bucket_key(self.scope, client_ip(request)), self.num_requests,
                       self.duration)
        self._wait = verdict.wait
        return verdict.allowed

    def wait(self) -> float:
        """Seconds until this client's next request in the scope would be let through."""
        return self._wait


class AttemptLimiter:
    """Fixed-window counters of failed attempts per key (a username, a client address)."""

    def __init__(self, scope: str, rate: str) -> None:
        self.scope = scope
        self.limit, self.window = parse_rate(rate)

    def _key(self, ident: str) -> str:
        digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"attempts:{self.scope}:{digest}"

    def blocked(self, ident: str) -> bool:
        """Tell whether ``ident`` used up its attempts in the current window."""
        entry = throttle_cache().get(self._key(ident))
        return bool(entry) and entry["n"] >= self.limit and entry["until"] > time.time()

    def wait_seconds(self, ident: str) -> int:
        """Seconds until ``ident``'s window ends (0 when not blocked)."""
        entry = throttle_cache().get(self._key(ident))
        return max(0, int(entry["until"] - time.time())) if entry else 0

    def record(self, ident: str) -> None:
        """Count one failed attempt."""
        cache, key, now = throttle_cache(), self._key(ident), time.time()
        entry = cache.get(key)
        if not entry or entry["until"] <= now:
            entry = {"n": 0, "until": now + self.window}
        entry["n"] += 1
        cache.set(key, entry, timeout=max(1, int(entry["until"] - now)) + 1)
