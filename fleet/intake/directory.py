"""Look up device ids and package → model version mappings, cached for the ingest hot path."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from fleet.devices.models import Device
from ota.models import Package


@dataclass(frozen=True)
class KnownDevice:
    """What ingest needs to know of a device."""

    id: int
    revoked: bool


class DeviceDirectory:
    """Caches uid → device and package id → model version id for ``ttl_s`` seconds.

    A revoked device is refused at the broker already; the cache only delays the second line
    of defence by at most ``ttl_s``.
    """

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._devices: dict[str, tuple[float, KnownDevice | None]] = {}
        self._packages: dict[int, int] = {}

    def prefetch(self, uids: Iterable[str]) -> None:
        """Look up, in one query, every device of ``uids`` not cached or cached too long ago.

        The worker calls this once per batch of messages, so a cold start or the expiry of
        many entries costs one query per batch, not one per device.
        """
        now = time.monotonic()
        stale = {uid for uid in uids
                 if (hit := self._devices.get(uid)) is None or now - hit[0] >= self.ttl_s}
        if not stale:
            return
        found = {uid: KnownDevice(pk, revoked_at is not None) for uid, pk, revoked_at in
                 Device.objects.filter(uid__in=stale).values_list("uid", "id", "revoked_at")}
        for uid in stale:
            self._devices[uid] = (now, found.get(uid))

    def device(self, uid: str) -> KnownDevice | None:
        """Return the device with this uid, or None when the server does not know it."""
        now = time.monotonic()
        hit = self._devices.get(uid)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        row = Device.objects.filter(uid=uid).values_list("id", "revoked_at").first()
        known = KnownDevice(row[0], row[1] is not None) if row else None
        self._devices[uid] = (now, known)
        return known

    def model_version_of(self, package_id: int) -> int:
        """Return the model version a package installs (0 when unknown or ``package_id`` is 0)."""
        if package_id <= 0:
            return 0
        if package_id not in self._packages:
            mv = Package.objects.filter(pk=package_id).values_list("model_version_id", flat=True)
            found = mv.first()
            if found is None:
                return 0  # not cached: the package may appear later
            self._packages[package_id] = found
        return self._packages[package_id]

    def forget(self, uid: str) -> None:
        """Drop a cached device (after a revoke seen by this process)."""
        self._devices.pop(uid, None)
