"""The console in a real browser: login, enrollment, uploads, charts, roles, phone layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from fleet.devices.choices import DeviceState, TokenState
from fleet.devices.credentials import hash_secret
from fleet.devices.models import Device, EnrollmentToken, HardwareProfile

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = {"overview": "/console/", "devices": "/console/devices/",
         "enrollment": "/console/enrollment/", "models": "/console/models/",
         "rollouts": "/console/rollouts/", "telemetry": "/console/telemetry/",
         "audit": "/console/audit/"}
PHONE = {"width": 390, "height": 844}
Browse = Callable[..., Any]
Shot = Callable[[Any, str], Any]


def overflow_px(page: Any) -> int:
    """Return how far the page is wider than the viewport (0: no horizontal scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def test_login_leads_back_to_the_page_asked_for(browse: Browse, fleet: Any,
                                                user_factory: Callable, screenshot: Shot) -> None:
    from fleet.core.roles import Role

    user = user_factory(Role.OPERATOR)
    page = browse(role=None)
    page.goto("/console/devices/")
    expect(page).to_have_url("/console/login/?next=/console/devices/")
    screenshot(page, "login")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".alert-error")).to_be_visible()
    page.fill("input[name=password]", "correct-horse-battery")
    page.click("button[type=submit]")
    page.wait_for_url("**/console/devices/")
    expect(page.locator("#device-table tbody tr")).to_have_count(8)
    page.goto("/console/")
    expect(page.locator('[data-stat="online"]')).to_have_text("4")
    expect(page.locator('[data-stat="enrolled"]')).to_have_text("1")
    screenshot(page, "overview")


def test_enrollment_token_is_shown_once_copied_and_revoked(browse: Browse, fleet: Any,
                                                           screenshot: Shot) -> None:
    page = browse("operator")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/console/enrollment/")
    page.fill("#id_name", "assembly line 4")
    page.fill("#id_max_uses", "50")
    page.select_option("#id_expires_in", "7d")
    page.select_option("#id_group", "field")
    page.select_option("#id_hardware_profile", "stm32f746")
    page.click('[data-action="create-token"]')
    token_text = page.locator("#new-token")
    expect(token_text).to_be_visible()
    plain = token_text.inner_text().strip()
    token = EnrollmentToken.objects.get(name="assembly line 4")
    assert token.token_hash == hash_secret(plain) and token.max_uses == 50
    assert token.group.name == "field" and token.hardware_profile.name == "stm32f746"
    page.click("[data-copy]")
    expect(page.locator("[data-copy-label]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == plain
    screenshot(page, "enrollment-new-token")

    page.reload()
    expect(page.locator("#new-token")).to_have_count(0)
    assert plain not in page.content()
    row = page.locator(f'tr[data-token-prefix="{token.prefix}"]')
    expect(row.locator(".badge")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator('[data-action="revoke-token"]').click()
    expect(page.locator(f'tr[data-token-prefix="{token.prefix}"] .badge')).to_have_text("revoked")
    token.refresh_from_db()
    assert token.state == TokenState.REVOKED
    screenshot(page, "enrollment")


def test_upload_tflite_shows_the_validation_report(browse: Browse, fleet: Any,
                                                   sine_tflite: bytes, screenshot: Shot) -> None:
    # A board without FULLY_CONNECTED and with a tiny arena, so one verdict says why not.
    HardwareProfile.objects.create(
        name="tiny-m0", mcu="Cortex-M0+ 48 MHz", ram_bytes=8192, flash_bytes=65536,
        arena_ram_bytes=1024, model_slot_bytes=2048, kernel_set="reference",
        supported_ops=["CONV_2D", "SOFTMAX"])
    page = browse("operator")
    page.goto("/console/models/")
    page.click("#new-model summary")
    page.fill("#id_name", "sine")
    page.fill("#id_labels", "value")
    page.click('[data-action="create-model"]')
    expect(page.locator(".alert-success")).to_contain_text("Model sine created")
    expect(page.locator("#upload")).to_have_attribute("open", "")
    page.fill("#id_version", "1.0.0")
    page.set_input_files("#id_file", files=[{"name": "sine.tflite",
                                             "mimeType": "application/octet-stream",
                                             "buffer": sine_tflite}])
    page.click('[data-action="upload-version"]')
    page.wait_for_url("**/console/models/versions/*/")
    expect(page.locator("#version-status .badge")).to_have_text("validated")
    expect(page.locator("#ops .chip")).to_have_text(["FULLY_CONNECTED"])
    expect(page.locator("[data-arena]")).to_contain_text("B")
    tiny = page.locator('#compatibility tr[data-profile="tiny-m0"]')
    expect(tiny).to_contain_text("does not fit")
    expect(tiny.locator(".reasons")).to_contain_text("missing_ops")
    expect(tiny.locator(".reasons")).to_contain_text("model_too_large")
    expect(page.locator('#compatibility tr[data-profile="stm32f746"]')).to_contain_text("fits")
    page.select_option("#id_hardware_profile", "stm32f746")
    page.click('[data-action="build-package"]')
    expect(page.locator(".alert-success")).to_contain_text("built for stm32f746")
    expect(page.locator("#packages tbody tr")).to_have_count(1)
    screenshot(page, "model-version")
    page.goto("/console/models/")
    screenshot(page, "models")


def test_conversion_progress_follows_the_job_and_shows_the_result(
    browse: Browse, fleet: Any, screenshot: Shot
) -> None:
    from ota.choices import JobState, VersionStatus
    from ota.models import ConversionJob
    from ota.registry.actions import do_request_conversion

    mv = do_request_conversion(fleet.model, version="3.0.0", keras=b"PK keras", dataset=b"PK",
                               actor=None)
    page = browse("viewer")
    page.goto(f"/console/models/versions/{mv.pk}/")
    bar = page.locator("#conversion-progress .progress-bar")
    expect(page.locator("[data-job-state]")).to_have_text("queued")
    # A worker would do this; the page follows by polling the model-version API.
    ConversionJob.objects.filter(model_version=mv).update(state=JobState.RUNNING, progress=0.6,
                                                          message="calibrating int8 ranges")
    expect(page.locator("[data-job-message]")).to_have_text("calibrating int8 ranges")
    expect(bar).to_have_attribute("style", "width: 60%;")
    screenshot(page, "conversion")
    ConversionJob.objects.filter(model_version=mv).update(state=JobState.DONE, progress=1.0)
    type(mv).objects.filter(pk=mv.pk).update(status=VersionStatus.READY)
    expect(page.locator("#version-status .badge")).to_have_text("validated", timeout=10_000)
    expect(page.locator("#conversion")).to_have_count(0)


def test_telemetry_charts_draw_data_points(browse: Browse, fleet: Any, screenshot: Shot) -> None:
    page = browse("viewer")
    page.goto("/console/telemetry/?range=6h")
    expect(page.locator("#chart-rate svg")).to_be_visible()
    points = page.locator("#chart-rate svg .pt").count()
    assert points >= 30, points  # 3 h of 5-minute rollups in 5-minute buckets
    expect(page.locator("#chart-labels svg rect.bar")).to_have_count(4)
    expect(page.locator("#chart-labels")).to_contain_text("silence")
    assert page.locator("#chart-score svg .pt").count() == points
    assert page.locator("#chart-latency svg .pt").count() == points
    expect(page.locator("#csv-export")).to_have_attribute("href", "/api/v1/telemetry/series/?"
                                                          + _csv_query(page))
    page.click(".compare-pick summary")
    page.select_option("#id_a", str(fleet.v1.pk))
    page.select_option("#id_b", str(fleet.v2.pk))
    page.select_option("#id_hardware_profile", "stm32f746")
    page.click("#telemetry-form button[type=submit]")
    expect(page.locator("#comparison")).to_be_visible()
    expect(page.locator("#chart-compare svg rect.bar-b.pt")).to_have_count(4)
    screenshot(page, "telemetry")


def _csv_query(page: Any) -> str:
    href = page.locator("#csv-export").get_attribute("href")
    assert "format=csv" in href and "since=" in href and "bucket=300" in href
    return href.split("?", 1)[1]


def test_device_detail_charts_events_and_revokes_after_confirmation(
    browse: Browse, fleet: Any, screenshot: Shot
) -> None:
    page = browse("operator")
    page.goto("/console/devices/?group=lab&tag=north")
    rows = page.locator("#device-table tbody tr")
    expect(rows).to_have_count(2)
    rows.first.locator("a").first.click()
    page.wait_for_url("**/console/devices/dev-a1/")
    assert page.locator("#device-events-chart svg rect.pt").count() > 5
    screenshot(page, "device-detail")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click('[data-action="revoke-device"]')
    assert Device.objects.get(uid="dev-a1").state == DeviceState.ONLINE
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('[data-action="revoke-device"]')
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    assert Device.objects.get(uid="dev-a1").state == DeviceState.REVOKED


def test_viewer_sees_no_actions_and_cannot_post(browse: Browse, fleet: Any,
                                                screenshot: Shot) -> None:
    page = browse("viewer")
    for path in PAGES.values():
        page.goto(path)
        expect(page.locator("[data-action]")).to_have_count(0)
        expect(page.locator(".role")).to_have_text("viewer")
    page.goto("/console/devices/dev-a1/")
    expect(page.locator("[data-action]")).to_have_count(0)
    screenshot(page, "viewer-device")
    status = page.evaluate("""async () => {
        const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
        const body = new URLSearchParams({csrfmiddlewaretoken: csrf});
        const r = await fetch("/console/devices/dev-a1/revoke/", {method: "POST", body});
        return r.status;
    }""")
    assert status == 403
    assert Device.objects.get(uid="dev-a1").state == DeviceState.ONLINE


def test_pages_fit_a_phone_screen(browse: Browse, fleet: Any, screenshot: Shot) -> None:
    page = browse("operator", viewport=PHONE)
    extra = {"device": "/console/devices/dev-a3/",
             "version": f"/console/models/versions/{fleet.v1.pk}/"}
    for name, path in {**PAGES, **extra}.items():
        page.goto(path)
        assert overflow_px(page) <= 0, f"{path} scrolls sideways by {overflow_px(page)} px"
        screenshot(page, f"phone-{name}")
    expect(page.locator("#nav")).to_be_hidden()
    page.click("[data-nav-toggle]")
    expect(page.locator("#nav")).to_be_visible()
    screenshot(page, "phone-menu")
    page.click("#nav >> text=Devices")
    page.wait_for_url("**/console/devices/")


def test_pages_fit_a_desktop_screen(browse: Browse, fleet: Any, screenshot: Shot) -> None:
    page = browse("admin")
    for name, path in PAGES.items():
        page.goto(path)
        assert overflow_px(page) <= 0, path
        if name not in ("overview", "telemetry", "enrollment", "models"):
            screenshot(page, name)
