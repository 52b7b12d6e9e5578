"""The administration pages and the telemetry fixes in a real browser (Debian's Chromium)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from fleet.devices.models import Gateway, HardwareProfile
from fleet.telemetry.models import DeadLetter, Rollup
from ota.models import SigningKey
from ota.signing.actions import ensure_signing_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

Browse = Callable[..., Any]
Shot = Callable[[Any, str], Any]


def test_admin_rotates_and_retires_signing_keys(browse: Browse, screenshot: Shot) -> None:
    first = ensure_signing_key()
    page = browse("admin")
    page.goto("/console/")
    page.click("nav >> text=Signing keys")
    expect(page.locator("#key-table tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-kid="{first.kid}"]')).to_contain_text("only active key")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click('[data-action="rotate-key"]')
    expect(page.locator("#key-table tbody tr")).to_have_count(1)  # dismissed: nothing done
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('[data-action="rotate-key"]')
    expect(page.locator(".alert")).to_contain_text("is pending")
    expect(page.locator("#key-table tbody tr")).to_have_count(2)
    second = SigningKey.objects.exclude(pk=first.pk).get()
    expect(page.locator(f'tr[data-kid="{second.kid}"] .trust-share')).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-kid="{second.kid}"] [data-action="activate-key"]').click()
    expect(page.locator(".alert")).to_contain_text("new packages use it")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-kid="{first.kid}"] [data-action="retire-key"]').click()
    expect(page.locator(f'tr[data-kid="{first.kid}"]')).to_contain_text("retired")
    assert SigningKey.objects.get(pk=first.pk).state == "retired"
    screenshot(page, "signing-keys")


def test_operator_sees_keys_without_buttons(browse: Browse) -> None:
    ensure_signing_key()
    page = browse("operator")
    page.goto("/console/signing-keys/")
    expect(page.locator("#key-table tbody tr")).to_have_count(1)
    expect(page.locator('[data-action="rotate-key"]')).to_have_count(0)
    expect(page.locator('nav a[href="/console/users/"]')).to_have_count(0)


def test_profiles_show_budgets_and_admin_edits_one(browse: Browse, hardware_profile: Any,
                                                   screenshot: Shot) -> None:
    page = browse("admin")
    page.goto("/console/hardware-profiles/")
    row = page.locator('tr[data-profile="stm32f746"]')
    expect(row.locator('[data-budget="arena"]')).not_to_be_empty()
    row.locator("a").click()
    expect(page.locator("h1")).to_contain_text("stm32f746")
    expect(page.locator("#profile-ops .chip-op").first).to_be_visible()
    page.click("#profile-edit summary")
    page.fill("#id_arena_ram_bytes", "123456")
    page.click('[data-action="save-profile"]')
    expect(page.locator(".alert")).to_contain_text("saved")
    expect(page.locator('.stat [data-budget="arena"]')).to_contain_text("120.6 KiB")
    assert HardwareProfile.objects.get(name="stm32f746").arena_ram_bytes == 123456
    screenshot(page, "profile-detail")
    page.goto("/console/hardware-profiles/new/")
    page.fill("#id_name", "pico")
    page.fill("#id_mcu", "RP2040")
    for field, value in (("ram_bytes", "270336"), ("flash_bytes", "2097152"),
                         ("arena_ram_bytes", "131072"), ("model_slot_bytes", "524288")):
        page.fill(f"#id_{field}", value)
    page.select_option("#id_kernel_set", "cmsis-nn")
    page.fill("#id_supported_ops", "FULLY_CONNECTED SOFTMAX")
    page.click('[data-action="save-profile"]')
    expect(page.locator("h1")).to_contain_text("pico")


def test_viewer_cannot_edit_a_profile(browse: Browse, hardware_profile: Any) -> None:
    page = browse("viewer")
    page.goto("/console/hardware-profiles/stm32f746/")
    expect(page.locator("#profile-edit")).to_have_count(0)
    expect(page.locator('[data-action="new-profile"]')).to_have_count(0)


def test_operator_provisions_a_gateway_and_revokes_it(browse: Browse, fleet: Any,
                                                      screenshot: Shot) -> None:
    page = browse("operator")
    page.goto("/console/gateways/")
    page.click("#provision-card summary")
    page.fill("#id_uid", "gw-line-4")
    page.fill("#id_name", "line 4")
    page.fill("#id_children", "dev-a1\ndev-a2")
    page.click('[data-action="provision-gateway"]')
    password = page.locator('[data-secret="password"]').inner_text()
    assert len(password) >= 16
    expect(page.locator('[data-secret="api_token"]')).not_to_be_empty()
    expect(page.locator('tr[data-gateway="gw-line-4"]')).to_contain_text("2")
    screenshot(page, "gateways")
    page.reload()
    expect(page.locator("#gateway-secret")).to_have_count(0)  # shown once
    page.click('tr[data-gateway="gw-line-4"] a')
    expect(page.locator("#children-table tbody tr")).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('[data-action="revoke-gateway"]')
    expect(page.locator(".alert-error")).to_contain_text("Revoked")
    assert Gateway.objects.get(uid="gw-line-4").revoked


def test_dead_letters_filter_by_reason_and_device(browse: Browse, screenshot: Shot) -> None:
    for uid, reason in (("dev-1", "DECODE_ERROR"), ("dev-1", "TOO_LARGE"),
                        ("dev-2", "DECODE_ERROR")):
        DeadLetter.objects.create(topic=f"fleet/v1/{uid}/events", device_uid=uid, reason=reason,
                                  size=10, payload=b"\x01\x02")
    page = browse("viewer")
    page.goto("/console/dead-letters/")
    expect(page.locator("#dead-letter-table tbody tr")).to_have_count(3)
    page.select_option("#dl-reason", "DECODE_ERROR")
    page.click("#dead-letter-filters button[type=submit]")
    expect(page.locator("#dead-letter-table tbody tr")).to_have_count(2)
    page.fill("#dl-device", "dev-2")
    page.click("#dead-letter-filters button[type=submit]")
    expect(page.locator("#dead-letter-table tbody tr")).to_have_count(1)
    screenshot(page, "dead-letters")


def test_admin_creates_a_user_changes_the_role_and_deactivates(browse: Browse,
                                                               screenshot: Shot) -> None:
    page = browse("admin")
    page.click("nav >> text=Users")
    page.click("#user-create-card summary")
    page.fill("#id_username", "dora")
    page.select_option("#id_role", "viewer")
    page.fill("#id_password", "a-long-password")
    page.click('[data-action="create-user"]')
    row = page.locator('tr[data-user="dora"]')
    expect(row.locator("select")).to_have_value("viewer")
    row.locator("select").select_option("operator")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator('[data-action="change-role"]').click()
    expect(page.locator(".alert")).to_contain_text("dora is now operator")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-user="dora"] [data-action="deactivate-user"]').click()
    expect(page.locator('tr[data-user="dora"]')).to_contain_text("deactivated")
    screenshot(page, "users")


def test_users_page_refuses_an_operator(browse: Browse) -> None:
    page = browse("operator")
    response = page.goto("/console/users/")
    assert response is not None and response.status == 403
    expect(page.locator("main")).to_contain_text("needs the admin role")


def _young_fleet(fleet_devices: list[Any], mv: Any, minutes: int = 2) -> None:
    """Replace the seeded telemetry with ``minutes`` of data, as a fleet just switched on has:
    confidence near 99.6 %, latencies of a few hundred microseconds."""
    Rollup.objects.all().delete()
    now = timezone.now().replace(second=0, microsecond=0)
    Rollup.objects.bulk_create([
        Rollup(device_id=d.pk, model_version_id=mv.pk, bucket=now - timedelta(minutes=m),
               label=0, count=50, score_sum=50 * 254, latency_sum=50 * 4, lat_le_1ms=50)  # 100 µs units
        for d in fleet_devices for m in range(minutes)])


def test_telemetry_of_a_young_fleet_opens_on_its_data_with_readable_units(
        browse: Browse, fleet: Any, screenshot: Shot) -> None:
    """Two minutes of data open the last 15 minutes (not one dot over 24 h); confidence is in
    % on card and axis (axis up to 100 %, not 200); latency reads in µs on card and axis."""
    _young_fleet([fleet.devices["dev-a1"], fleet.devices["dev-a2"]], fleet.v1)
    page = browse("viewer")
    page.goto("/console/telemetry/")
    expect(page.locator("#id_range")).to_have_value("15m")
    expect(page.locator("#chart-rate svg")).to_be_visible()
    assert page.locator("#chart-rate svg .pt").count() >= 2
    expect(page.locator('[data-summary="mean_score"]')).to_have_text("99.6%")
    score_ticks = page.locator("#chart-score svg text.tick").all_text_contents()
    assert "100%" in score_ticks and not any(t.startswith("200") for t in score_ticks), score_ticks
    expect(page.locator('[data-summary="mean_latency_ms"]')).to_have_text("400 µs")
    latency_ticks = [t for t in page.locator("#chart-latency svg text.tick").all_text_contents()
                     if "µs" in t]
    assert len(latency_ticks) == 5 and len(set(latency_ticks)) == 5, latency_ticks
    assert page.locator('#chart-latency svg').get_attribute("aria-label") == \
        "mean latency (µs)"
    screenshot(page, "telemetry-young")


def test_telemetry_of_an_older_fleet_opens_on_the_range_that_holds_it(browse: Browse,
                                                                      fleet: Any) -> None:
    """The seeded fleet has 3 hours of data: 6 hours, in ms or µs as the values need."""
    page = browse("viewer")
    page.goto("/console/telemetry/")
    expect(page.locator("#id_range")).to_have_value("6h")
    ticks = page.locator("#chart-latency svg text.tick").all_text_contents()
    values = [t for t in ticks if t.endswith(("ms", "µs"))]
    assert len(set(values)) == 5, ticks
    page.select_option("#id_range", "24h")
    page.click("#telemetry-form button[type=submit]")
    expect(page.locator("#id_range")).to_have_value("24h")  # an explicit choice is kept
