"""Rollout pages in a real browser: create through the preview, live progress, pause, roles.

No worker runs here: the test process plays the controller (``step`` with a recording
publisher moves devices to OFFERED) and the devices (``apply_report``), and the open page has
to follow by polling the rollout API, without a reload.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from ota.rollouts import actions
from ota.rollouts.controller import step
from ota.rollouts.delivery import apply_report
from ota.rollouts.models import Deployment, Rollout, RolloutState
from tests.fleet.console.conftest import PHONE, make_device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

Browse = Callable[..., Any]
Shot = Callable[[Any, str], Any]
LAB_EXTRA = 14  # more stm32f746 devices in group lab, so waves have something to show


class RecordingPublisher:
    """Stands in for the worker's MQTT client: keeps what the controller would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if topic.endswith("/ota/offer"):  # not the fan-out keys sent before each offer
            self.sent.append((topic, payload))


@pytest.fixture
def lab(fleet: Any) -> Any:
    """The console fleet plus 14 stm32f746 devices in group lab running kws@1.0.0."""
    for i in range(LAB_EXTRA):
        make_device(f"lab-{i:02d}", fleet.profile, group=fleet.lab, package=fleet.pkg1)
    return fleet


def overflow_px(page: Any) -> int:
    """Return how far the page is wider than the viewport (0: no horizontal scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def report(rollout: Rollout, state: DeploymentState, count: int | None = None,
           detail: int = 0) -> int:
    """Have ``count`` (default: all) offered devices of ``rollout`` report ``state``."""
    offered = list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED)
                   .order_by("id"))[:count]
    for dep in offered:
        assert apply_report(dep.device_id, dep.package_id, state, detail)
    return len(offered)


def grow(page: Any, selector: str, value: int) -> None:
    """Expect a bar segment to have grown to ``value`` devices."""
    expect(page.locator(selector)).to_have_attribute(
        "style", re.compile(rf"flex-grow: {value};?$"))


def test_operator_creates_a_rollout_through_the_preview_and_follows_it_live(
    browse: Browse, lab: Any, screenshot: Shot
) -> None:
    page = browse("operator")
    page.goto("/console/rollouts/")
    page.click('[data-action="new-rollout"]')
    page.wait_for_url("**/console/rollouts/new/")
    page.fill("#id_name", "kws 1.1 to the lab")
    page.select_option("#id_model_version", str(lab.v2.pk))
    page.select_option("#id_group", "lab")
    page.fill("#id_waves", "25,100")
    page.click('[data-action="preview-rollout"]')
    # Group lab holds an esp32-s3 too, and the version does not fit it: refused, with why.
    expect(page.locator("#preview-refusal")).to_contain_text("does not fit 1 targeted profile")
    expect(page.locator('#preview-profiles [data-profile="esp32-s3"] [data-refusal]')
           ).to_contain_text("arena needs 2752 bytes, profile has 2048")
    expect(page.locator('[data-action="create-rollout"]')).to_have_count(0)
    page.evaluate("window.scrollTo(0, 0)")  # the preview button jumps to #preview
    screenshot(page, "rollout-preview-refused")

    page.select_option("#id_hardware_profile", "stm32f746")
    page.click('[data-action="preview-rollout"]')
    expect(page.locator("[data-preview-total]")).to_have_text(str(2 + LAB_EXTRA))
    expect(page.locator('#preview-waves tr[data-wave="2"] [data-devices]')).to_have_text("16")
    go = page.locator('[data-action="create-rollout"]')
    expect(go).to_be_enabled()
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "rollout-preview")
    page.fill("#id_soak_min", "1")  # editing after the preview makes it stale
    expect(go).to_be_disabled()
    page.fill("#id_soak_min", "0")
    page.click('[data-action="preview-rollout"]')
    expect(go).to_be_enabled()  # the fresh preview's button
    go.click()
    page.wait_for_url(re.compile(r".*/console/rollouts/\d+/$"))
    rollout = Rollout.objects.get()
    assert rollout.state == RolloutState.RUNNING and rollout.waves == [25.0, 100.0]
    expect(page.locator("[data-rollout-state]")).to_have_text("running")
    expect(page.locator('.stat [data-total="total"]')).to_have_text("16")

    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    publisher = RecordingPublisher()
    step(rollout.pk, publisher)
    first = Deployment.objects.filter(rollout=rollout, wave=0).count()
    assert first > 0 and len(publisher.sent) == first
    expect(page.locator('#progress [data-total="offered"]')).to_have_text(str(first))
    grow(page, '#rollout-progress [data-seg="offered"]', first)

    report(rollout, DeploymentState.CONFIRMED)
    expect(page.locator('.stat [data-total="confirmed"]')).to_have_text(str(first))
    grow(page, '#rollout-progress [data-seg="confirmed"]', first)
    grow(page, 'tr[data-wave="1"] [data-seg="confirmed"]', first)
    expect(page.locator('tr[data-wave="1"] [data-phase]')).to_have_text("current")

    step(rollout.pk, publisher)  # wave 1 succeeded: wave 2 starts and its devices are offered
    expect(page.locator('tr[data-wave="1"] [data-phase]')).to_have_text("done")
    expect(page.locator('tr[data-wave="2"] [data-phase]')).to_have_text("current")
    expect(page.locator("[data-current-wave]")).to_have_text("2 / 2")
    report(rollout, DeploymentState.DOWNLOADING, 3)
    report(rollout, DeploymentState.FAILED, 1, detail=int(Reason.TRIAL_FAILED))
    confirmed = first + report(rollout, DeploymentState.CONFIRMED, 6)
    expect(page.locator('.stat [data-total="confirmed"]')).to_have_text(str(confirmed))
    expect(page.locator("#failures")).to_contain_text("TRIAL_FAILED")
    expect(page.locator("#failures")).to_contain_text("golden inputs")
    expect(page.locator('[data-action="rollback-rollout"]')).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True
    screenshot(page, "rollout-live")

    page.once("dialog", lambda dialog: dialog.dismiss())  # cancelling the prompt changes nothing
    page.click('[data-action="pause-rollout"]')
    assert Rollout.objects.get().state == RolloutState.RUNNING
    page.once("dialog", lambda dialog: dialog.accept("holding for the telemetry review"))
    page.click('[data-action="pause-rollout"]')
    expect(page.locator("[data-rollout-state]")).to_have_text("paused")
    expect(page.locator("#paused [data-paused-reason]")).to_have_text(
        "holding for the telemetry review")
    expect(page.locator("#paused")).to_contain_text("by operator")
    expect(page.locator('[data-action="resume-rollout"]')).to_be_visible()
    expect(page.locator('[data-action="pause-rollout"]')).to_be_hidden()
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert rollout.paused_reason == "holding for the telemetry review"
    screenshot(page, "rollout-paused")


def test_a_pause_by_the_controller_shows_up_without_reload(browse: Browse, lab: Any) -> None:
    devices = [d for uid, d in lab.devices.items() if uid in ("dev-a1", "dev-a2")]
    rollout = actions.do_start_rollout(actions.do_create_rollout(
        actor=None, name="canary", model_version=lab.v2, waves=[100], devices=devices),
        actor=None)
    page = browse("operator")
    page.goto(f"/console/rollouts/{rollout.pk}/")
    expect(page.locator("#paused")).to_be_hidden()
    page.evaluate("window.__sameDocument = true")
    step(rollout.pk, RecordingPublisher())
    report(rollout, DeploymentState.FAILED, detail=int(Reason.MODEL_LOAD_FAILED))
    step(rollout.pk, RecordingPublisher())  # 2 of 2 failed: the controller pauses
    expect(page.locator("[data-rollout-state]")).to_have_text("paused")
    expect(page.locator("#paused [data-paused-reason]")).to_contain_text("2 of 2 devices failed")
    expect(page.locator('[data-action="resume-rollout"]')).to_be_visible()
    expect(page.locator("#failures")).to_contain_text("MODEL_LOAD_FAILED")
    assert page.evaluate("window.__sameDocument") is True


def test_viewer_sees_no_controls_and_cannot_post_them(browse: Browse, lab: Any,
                                                      screenshot: Shot) -> None:
    rollout = actions.do_start_rollout(actions.do_create_rollout(
        actor=None, name="kws 1.1 everywhere it fits", model_version=lab.v2, waves=[10, 100],
        profile=lab.profile), actor=None)
    step(rollout.pk, RecordingPublisher())
    report(rollout, DeploymentState.CONFIRMED)
    page = browse("viewer")
    page.goto("/console/rollouts/")
    expect(page.locator("[data-action]")).to_have_count(0)
    row = page.locator(f'tr[data-rollout="{rollout.pk}"]')
    expect(row.locator(".rollout-state .badge")).to_have_text("running")
    screenshot(page, "rollouts")
    page.click(f'tr[data-rollout="{rollout.pk}"] a >> nth=0')
    page.wait_for_url(f"**/console/rollouts/{rollout.pk}/")
    expect(page.locator("[data-action]")).to_have_count(0)
    expect(page.locator(".page-actions form")).to_have_count(0)
    screenshot(page, "rollout-viewer")
    status = page.evaluate("""async (url) => {
        const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
        const body = new URLSearchParams({csrfmiddlewaretoken: csrf, reason: "no"});
        const r = await fetch(url, {method: "POST", body});
        return r.status;
    }""", f"/console/rollouts/{rollout.pk}/pause/")
    assert status == 403
    assert Rollout.objects.get().state == RolloutState.RUNNING


def test_rollout_pages_fit_a_phone_screen(browse: Browse, lab: Any, screenshot: Shot) -> None:
    rollout = actions.do_start_rollout(actions.do_create_rollout(
        actor=None, name="kws 1.1 to every stm32f746 in the lab group", model_version=lab.v2,
        waves=[5, 25, 50, 100], group=lab.lab, profile=lab.profile), actor=None)
    step(rollout.pk, RecordingPublisher())
    report(rollout, DeploymentState.FAILED, 1, detail=int(Reason.TRIAL_FAILED))
    actions.do_pause_rollout(rollout, actor=None, reason="wave 1: 1 of 1 devices failed "
                             "(100% > 20%); TRIAL_FAILED x1")
    page = browse("operator", viewport=PHONE)
    paths = {"rollouts": "/console/rollouts/", "rollout-new": "/console/rollouts/new/",
             "rollout": f"/console/rollouts/{rollout.pk}/"}
    for name, path in paths.items():
        page.goto(path)
        assert overflow_px(page) <= 0, f"{path} scrolls sideways by {overflow_px(page)} px"
        screenshot(page, f"phone-{name}")
    page.goto("/console/rollouts/new/")
    page.fill("#id_name", "phone preview")
    page.select_option("#id_model_version", str(lab.v2.pk))
    page.select_option("#id_group", "lab")
    page.click('[data-action="preview-rollout"]')
    expect(page.locator("#preview-refusal")).to_be_visible()
    assert overflow_px(page) <= 0
    screenshot(page, "phone-rollout-preview")
