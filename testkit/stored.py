"""The server side of ingest tests: devices known to the server and the broker, and checks of
what the worker stored against what was sent (testkit/traffic.py).

Reads and writes the test database: use from tests marked ``django_db(transaction=True)``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import MosquittoInstance
from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from fleet.telemetry.models import Event, IngestedBatch, Rollup
from testkit.broker import Probe
from testkit.traffic import DeviceLink, FleetPublisher, Ledger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
INGEST_TIMEOUT_S = 90.0


class Fleet:
    """Devices known to the server (rows) and to the broker (credentials), and their links."""

    def __init__(self, broker: MosquittoInstance, access: DynsecAccess,
                 profile: HardwareProfile) -> None:
        self.broker, self.access, self.profile = broker, access, profile
        self.passwords: dict[str, str] = {}
        self.ids: dict[str, int] = {}

    def add(self, count: int, prefix: str = "tinyml", group: DeviceGroup | None = None,
            ) -> list[str]:
        """Create ``count`` devices with 16-20 character uids; return their uids."""
        tag = secrets.token_hex(3)
        uids = [f"{prefix}-{tag}-{i:04d}" for i in range(count)]
        Device.objects.bulk_create([
            Device(uid=u, hardware_profile=self.profile, group=group, public_key_pem="-",
                   public_key_fingerprint=u, key_algorithm="ed25519") for u in uids])
        self.ids.update(Device.objects.filter(uid__in=uids).values_list("uid", "id"))
        for u in uids:
            self.passwords[u] = secrets.token_urlsafe(12)
            self.access.provision_device(u, self.passwords[u])
        return uids

    def link(self, uid: str, **kwargs: Any) -> DeviceLink:
        """Return an unconnected MQTT link for device ``uid``."""
        return DeviceLink(uid, self.passwords[uid], self.broker.host, self.broker.port, **kwargs)

    def probe(self, uid: str) -> Probe:
        """Return a connected synchronous client for device ``uid``."""
        p = Probe(self.broker.host, self.broker.port, uid, self.passwords[uid], uid)
        assert p.connect().value == 0
        return p


def wait_ingested(ledger: Ledger, timeout: float = INGEST_TIMEOUT_S,
                  publisher: FleetPublisher | None = None) -> None:
    """Wait until the server holds as many batches of these devices as were sent."""
    want = ledger.batch_keys()
    deadline = time.monotonic() + timeout
    while True:
        have = IngestedBatch.objects.filter(device_id__in=ledger.device_ids.values()).count()
        if have >= len(want):
            return
        if time.monotonic() > deadline:
            stored = set(IngestedBatch.objects.filter(device_id__in=ledger.device_ids.values())
                         .values_list("device_id", "seq"))
            missing = sorted(set(want) - stored)
            uid_of = {v: k for k, v in ledger.device_ids.items()}
            history = {}
            if publisher is not None:
                links = {link.uid: link for link in publisher.links}
                history = {key: links[uid_of[key[0]]].history[key[1]] for key in missing[:5]}
            raise AssertionError(f"only {have} of {len(want)} batches stored; missing "
                                 f"{missing[:20]}; what the devices saw: {history}")
        time.sleep(0.2)



def assert_stored_exactly(ledger: Ledger) -> None:
    """Compare events, dedupe keys and rollups in the database with what was sent."""
    ids = list(ledger.device_ids.values())
    keys = {(d, s): n for d, s, n in IngestedBatch.objects.filter(device_id__in=ids)
            .values_list("device_id", "seq", "event_count")}
    assert keys == ledger.batch_keys()
    stored = Counter((d, s, (ts - EPOCH) // MS, label, score, lat)
                     for d, s, ts, label, score, lat in Event.objects.filter(device_id__in=ids)
                     .values_list("device_id", "seq", "ts", "label", "score", "latency_100us"))
    expected = ledger.event_rows()
    missing, extra = expected - stored, stored - expected
    assert not missing and not extra, f"{sum(missing.values())} events lost, " \
        f"{sum(extra.values())} stored twice or wrong (e.g. {list(missing or extra)[:3]})"
    rollups = {(d, mv, int(b.timestamp()), label): (n, s, lat)
               for d, mv, b, label, n, s, lat in Rollup.objects.filter(device_id__in=ids)
               .values_list("device_id", "model_version_id", "bucket", "label", "count",
                            "score_sum", "latency_sum")}
    assert rollups == ledger.rollups()
