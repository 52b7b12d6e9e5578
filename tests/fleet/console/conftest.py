"""Fixtures of the console tests: logged-in clients per role, a seeded fleet, a small model."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tflite_micro
from django.test import Client
from django.utils import timezone

from fleet.core.roles import Role
from fleet.devices.actions import do_create_enrollment_token
from fleet.devices.choices import DeviceState, KeyAlgorithm
from fleet.devices.models import Device, DeviceGroup, HardwareProfile, Tag
from fleet.telemetry.models import Rollup, WorkerStats
from ota.choices import Encoding, VersionSource, VersionStatus
from ota.models import Model, ModelVersion, Package, ProfileCompatibility
from ota.registry.storage import artifact_storage
from ota.signing.actions import ensure_signing_key

# A real float model (sine regression, FULLY_CONNECTED only) that ships inside the tflite-micro
# wheel: uploads validate it in the real TFLM interpreter without TensorFlow installed.
SINE_MODEL = Path(tflite_micro.__file__).parent / "python" / "tflite_micro" / "sine_float.tflite"
LABELS = ["silence", "unknown", "yes", "no"]


@pytest.fixture
def sine_tflite() -> bytes:
    """The bytes of a small real .tflite (about 3 KB)."""
    return SINE_MODEL.read_bytes()


@pytest.fixture
def client_for(user_factory: Callable[[Role], Any]) -> Callable[[str], Client]:
    """Return a Django test client logged in as a fresh user of the named role."""

    def make(role_name: str) -> Client:
        client = Client()
        if role_name != "anonymous":
            client.force_login(user_factory(Role[role_name.upper()]))
        return client

    return make


def make_device(uid: str, profile: HardwareProfile, state: str = DeviceState.ONLINE, *,
                group: DeviceGroup | None = None, tags: tuple[Tag, ...] = (),
                seen_ago: timedelta | None = timedelta(minutes=1),
                package: Package | None = None) -> Device:
    """Create a device row directly (enrollment is tested elsewhere)."""
    now = timezone.now()
    device = Device.objects.create(
        uid=uid, name=f"sensor {uid}", hardware_profile=profile, group=group, state=state,
        last_seen=now - seen_ago if seen_ago is not None else None,
        first_seen=now - timedelta(days=3) if seen_ago is not None else None,
        firmware_version="1.4.0", tflm_version="2026.10",
        capabilities={"firmware_version": "1.4.0", "ops": ["FULLY_CONNECTED", "SOFTMAX"],
                      "arena_bytes": 65536, "slot_bytes": 262144, "pointer_bits": 32},
        public_key_pem="-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
        public_key_fingerprint=hashlib.sha256(uid.encode()).hexdigest(),
        key_algorithm=KeyAlgorithm.ED25519,
        running_package_id=package.pk if package else None,
        revoked_at=now if state == DeviceState.REVOKED else None,
    )
    if tags:
        device.tags.set(tags)
    return device


def make_version(model: Model, version: str) -> ModelVersion:
    """Create a validated version row directly (uploads are tested with the real model).

    Every profile accepts it except esp32-s3, refused for its arena, so pages show both.
    """
    # Real bytes in the artifact store (a version of the sine model with its version string
    # appended): packages can really be built from it.
    data = SINE_MODEL.read_bytes() + version.encode()
    mv = ModelVersion.objects.create(
        model=model, version=version, sha256=artifact_storage().put(data),
        size_bytes=len(data), source=VersionSource.UPLOADED, status=VersionStatus.READY)
    for profile in HardwareProfile.objects.all():
        fits = profile.name != "esp32-s3"
        ProfileCompatibility.objects.create(
            model_version=mv, hardware_profile=profile, compatible=fits, arena_bytes_required=2752,
            reasons=[] if fits else [{"code": "arena_too_small",
                                      "message": "arena needs 2752 bytes, profile has 2048"}])
    return mv


def make_package(mv: ModelVersion, profile: HardwareProfile) -> Package:
    """Create a package row directly (a placeholder manifest; signing is tested elsewhere)."""
    package = Package.objects.create(
        model_version=mv, hardware_profile=profile, encoding=int(Encoding.RAW),
        manifest=b"\x84", transfer_sha256=mv.sha256, transfer_size=mv.size_bytes,
        installed_size=mv.size_bytes, signing_key=ensure_signing_key(),
        expires_at=timezone.now() + timedelta(days=30))
    package.sequence = package.pk
    package.save(update_fields=["sequence"])
    return package


def seed_rollups(devices: list[Device], mv: ModelVersion, *, hours: int = 3,
                 step_min: int = 5, skew: int = 0) -> int:
    """Write per-minute rollups for ``devices`` over the last hours; return the event count."""
    now = timezone.now().replace(second=0, microsecond=0)
    rows, total = [], 0
    for d_index, device in enumerate(devices):
        for step in range(0, hours * 60, step_min):
            bucket = now - timedelta(minutes=step + 1)
            for label in range(len(LABELS)):
                count = 5 + (step // step_min + d_index + label * (3 + skew)) % 11
                total += count
                rows.append(Rollup(
                    device_id=device.pk, model_version_id=mv.pk, bucket=bucket, label=label,
                    count=count, score_sum=count * (180 + 10 * label - 15 * skew),
                    latency_sum=count * (40 + 5 * label + 8 * skew), lat_le_5ms=count))
    Rollup.objects.bulk_create(rows)
    return total


@dataclass
class Fleet:
    """What the ``fleet`` fixture seeded, for assertions."""

    profile: HardwareProfile
    other_profile: HardwareProfile
    lab: DeviceGroup
    field_group: DeviceGroup
    north: Tag
    model: Model
    v1: ModelVersion
    v2: ModelVersion
    pkg1: Package
    pkg2: Package
    devices: dict[str, Device] = field(default_factory=dict)
    events: int = 0


@pytest.fixture
def fleet(hardware_profile: HardwareProfile) -> Fleet:
    """Seed a small fleet: two groups, tags, eight devices in every state, two model versions
    with packages, telemetry rollups for both versions, worker counters and an active token."""
    other = HardwareProfile.objects.get(name="esp32-s3")
    lab = DeviceGroup.objects.create(name="lab")
    field_group = DeviceGroup.objects.create(name="field")
    north, south = Tag.objects.create(name="north"), Tag.objects.create(name="south")
    model = Model.objects.create(name="kws", labels=LABELS, input_meaning="49x40 MFCC")
    v1, v2 = make_version(model, "1.0.0"), make_version(model, "1.1.0")
    pkg1, pkg2 = make_package(v1, hardware_profile), make_package(v2, hardware_profile)
    seeded = Fleet(hardware_profile, other, lab, field_group, north, model, v1, v2, pkg1, pkg2)
    specs = [
        ("dev-a1", hardware_profile, DeviceState.ONLINE, lab, (north,), pkg1),
        ("dev-a2", hardware_profile, DeviceState.ONLINE, lab, (north, south), pkg1),
        ("dev-a3", hardware_profile, DeviceState.ONLINE, field_group, (south,), pkg2),
        ("dev-a4", hardware_profile, DeviceState.OFFLINE, field_group, (), pkg2),
        ("dev-b1", other, DeviceState.ONLINE, lab, (), None),
        ("dev-b2", other, DeviceState.OFFLINE, None, (), None),
        ("dev-n1", other, DeviceState.ENROLLED, None, (), None),
        ("dev-r1", hardware_profile, DeviceState.REVOKED, lab, (), pkg1),
    ]
    for uid, profile, state, group, tags, package in specs:
        seen = None if state == DeviceState.ENROLLED else (
            timedelta(minutes=2) if state == DeviceState.ONLINE else timedelta(days=2))
        seeded.devices[uid] = make_device(uid, profile, state, group=group, tags=tags,
                                          seen_ago=seen, package=package)
    d = seeded.devices
    seeded.events = seed_rollups([d["dev-a1"], d["dev-a2"]], v1)
    seeded.events += seed_rollups([d["dev-a3"], d["dev-a4"]], v2, skew=2)
    now = timezone.now()
    WorkerStats.objects.create(worker="worker-1", started_at=now - timedelta(hours=1),
                               heartbeat_at=now, counters={"events_stored": 36000,
                                                           "batches_stored": 900,
                                                           "batches_duplicate": 3,
                                                           "rejected_too_large": 2})
    WorkerStats.objects.create(worker="worker-old", started_at=now - timedelta(days=2),
                               heartbeat_at=now - timedelta(days=1), counters={})
    do_create_enrollment_token(actor=None, expires_at=now + timedelta(days=1), max_uses=10,
                               name="line 3", group=lab)
    return seeded


# --- Browser fixtures: Debian's Chromium driven by Playwright ----------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Launch headless Chromium once per run (fail in CI when it is missing, else skip)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing; scripts/bootstrap.sh installs the chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # The sync API keeps an event loop on this thread, and Django then refuses ORM calls from
    # it as "async context". Tests only seed and check rows between browser steps.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                  args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browse(browser: Any, live_server: Any, user_factory: Callable[[Role], Any]) -> Iterator[
        Callable[..., Any]]:
    """Open a page on the live server, logged in through the form as a user of ``role``.

    Any script error or failed request the pages cause fails the test at teardown.
    """
    contexts: list[Any] = []
    problems: list[str] = []

    def open_page(role: str | None = "operator", viewport: dict[str, int] = DESKTOP) -> Any:
        context = browser.new_context(base_url=live_server.url, viewport=viewport)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                if msg.type == "error" else None)
        if role is not None:
            user = user_factory(Role[role.upper()])
            login(page, user.username, "correct-horse-battery")
        return page

    yield open_page
    for context in contexts:
        context.close()
    # A 403 on purpose (the viewer test) logs a console error too; only count real failures.
    problems = [p for p in problems if "403" not in p]
    assert problems == [], problems


def login(page: Any, username: str, password: str) -> None:
    """Sign in through the console's login form."""
    page.goto("/console/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/")


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """Return a function saving a full-page screenshot to test-artifacts/console-NAME.png."""

    def take(page: Any, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def sign_in() -> Callable[[Any, str, str], None]:
    """Return the login-through-the-form helper."""
    return login
