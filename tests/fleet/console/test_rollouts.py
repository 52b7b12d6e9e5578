"""Rollout pages through the test client: who may do what, the preview, create, controls."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.audit.models import AuditLog
from fleet.console.views.rollouts import active_rollouts
from ota.choices import VersionStatus
from ota.models import ModelVersion
from ota.registry.storage import artifact_storage
from ota.rollouts import actions
from ota.rollouts.controller import step
from ota.rollouts.delivery import apply_report
from ota.rollouts.models import Deployment, Rollout, RolloutState

pytestmark = pytest.mark.django_db

Clients = Callable[[str], Client]
NEW = "/console/rollouts/new/"


class RecordingPublisher:
    """Stands in for the worker's MQTT client: keeps what the controller would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent.append((topic, payload))


def form_body(fleet: Any, **changes: Any) -> dict[str, Any]:
    """A complete create form for kws@1.1.0 on the stm32f746 devices of group lab."""
    body = {"name": "kws 1.1 to the lab", "model_version": fleet.v2.pk, "base_version": "",
            "group": "lab", "tags": "", "hardware_profile": "stm32f746", "devices": "",
            "waves": "50,100", "success_pct": 95, "failure_pct": 20, "soak_min": 0,
            "max_confidence_drop": "", "max_label_shift": "", "max_latency_rise": "",
            "max_rate_drop": "", "offers_per_minute": 600, "jitter_s": 0, "max_concurrent": 1000,
            "window_start_hour": "", "window_end_hour": ""}
    body.update(changes)
    return body


def preview(client: Client, body: dict[str, Any]) -> tuple[Any, str]:
    response = client.post(NEW, {**body, "step": "preview"})
    return response, response.content.decode()


def digest_of(page: str) -> str:
    found = re.search(r'name="digest" value="(\w+)"', page)
    assert found, "the preview offers no create button"
    return found.group(1)


def seed_of(page: str) -> str:
    """The wave seed the preview drew (a hidden field the browser posts back)."""
    found = re.search(r'name="wave_seed" value="(\d+)"', page)
    assert found, "the form carries no wave seed"
    return found.group(1)


def start(fleet: Any, uids: tuple[str, ...] = ("dev-a1", "dev-a2"), **kwargs: Any) -> Rollout:
    """Create and start a rollout of kws@1.1.0 on the given devices (they run 1.0.0)."""
    rollout = actions.do_create_rollout(
        actor=None, name=kwargs.pop("name", "canary"), model_version=fleet.v2,
        waves=kwargs.pop("waves", [100]), devices=[fleet.devices[u] for u in uids], **kwargs)
    return actions.do_start_rollout(rollout, actor=None)


def confirm_offered(rollout: Rollout) -> int:
    """Offer what is due (a controller step), then have every offered device confirm."""
    step(rollout.pk, RecordingPublisher())
    offered = list(Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED))
    for dep in offered:
        assert apply_report(dep.device_id, dep.package_id, DeploymentState.CONFIRMED, 0)
    return len(offered)


# --- access --------------------------------------------------------------------------------

def test_anonymous_visits_lead_to_the_login_form(client: Client, fleet: Any) -> None:
    rollout = start(fleet)
    for path in ("/console/rollouts/", NEW, f"/console/rollouts/{rollout.pk}/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"] == f"/console/login/?next={path}"


def test_viewer_reads_list_and_detail_without_any_action(client_for: Clients,
                                                         fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("viewer")
    for path in ("/console/rollouts/", f"/console/rollouts/{rollout.pk}/"):
        page = client.get(path).content.decode()
        assert "canary" in page
        assert 'data-action="' not in page
        assert re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', page) == [
            "/console/logout/"]


def test_viewer_cannot_open_the_create_form(client_for: Clients, fleet: Any) -> None:
    response = client_for("viewer").get(NEW)
    assert response.status_code == 403
    assert "operator role" in response.content.decode()


@pytest.mark.parametrize("verb", ["pause", "resume", "abort", "rollback"])
def test_viewer_controls_are_refused_and_change_nothing(client_for: Clients, fleet: Any,
                                                        verb: str) -> None:
    rollout = start(fleet)
    confirm_offered(rollout)
    viewer = client_for("viewer")
    before = AuditLog.objects.count()
    response = viewer.post(f"/console/rollouts/{rollout.pk}/{verb}/")
    assert response.status_code == 403
    rollout.refresh_from_db()
    assert rollout.state in (RolloutState.RUNNING, RolloutState.COMPLETED)
    assert AuditLog.objects.count() == before
    assert Rollout.objects.count() == 1


def test_viewer_create_posts_are_refused(client_for: Clients, fleet: Any) -> None:
    client = client_for("viewer")
    assert preview(client, form_body(fleet))[0].status_code == 403
    response = client.post(NEW, {**form_body(fleet), "step": "create", "digest": "x"})
    assert response.status_code == 403
    assert not Rollout.objects.exists()


def test_operator_sees_the_controls_the_state_allows(client_for: Clients, fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("operator")
    assert 'data-action="new-rollout"' in client.get("/console/rollouts/").content.decode()
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    forms = dict(re.findall(r'<form[^>]*action="/console/rollouts/\d+/(\w+)/"[^>]*?(hidden)?>',
                            page.replace("\n", " ")))
    assert forms == {"pause": "", "resume": "hidden", "rollback": "hidden", "abort": ""}


# --- create form and preview ---------------------------------------------------------------

def test_form_offers_only_validated_versions(client_for: Clients, fleet: Any) -> None:
    ModelVersion.objects.filter(pk=fleet.v1.pk).update(status=VersionStatus.INVALID)
    page = client_for("operator").get(NEW).content.decode()
    select = re.search(r'<select name="model_version".*?</select>', page, re.DOTALL).group(0)
    assert "kws@1.1.0" in select and "kws@1.0.0" not in select


def test_preview_counts_the_target_per_wave_and_profile(client_for: Clients,
                                                        fleet: Any) -> None:
    response, page = preview(client_for("operator"), form_body(fleet))
    assert response.status_code == 200
    assert re.search(r'data-preview-total>2<', page)  # dev-a1, dev-a2 (dev-r1 is revoked)
    assert re.search(r'data-profile="stm32f746".*?2 devices', page, re.DOTALL)
    waves = re.findall(r'<tr data-wave="(\d)">.*?data-devices>(\d+)<', page, re.DOTALL)
    assert [w for w, _ in waves] == ["1", "2"] and waves[-1][1] == "2"
    assert 'data-action="create-rollout"' in page
    assert not Rollout.objects.exists()  # a preview writes nothing


def test_preview_counts_the_waves_the_rollout_will_have(client_for: Clients, fleet: Any) -> None:
    """The preview hashes waves with the salt the rollout keeps: its counts are the rollout's.

    Before, the preview hashed with rollout id 0 and the rollout with its own id.
    """
    from tests.fleet.console.conftest import make_device

    for i in range(60):
        make_device(f"dev-w{i:02d}", fleet.profile, group=fleet.lab, package=fleet.pkg1)
    client = client_for("operator")
    body = form_body(fleet, waves="10,40,100")
    _, page = preview(client, body)
    shown = [int(n) for n in re.findall(r'data-wave-new="(\d+)"', page)]
    response = client.post(NEW, {**body, "step": "create", "digest": digest_of(page),
                                 "wave_seed": seed_of(page)})
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    actual = [Deployment.objects.filter(rollout=rollout, wave=w).count() for w in range(3)]
    assert sum(actual) == 62 and shown == actual
    # A later preview of the same form draws another seed: nothing pins one rollout's waves
    # on every future rollout of the same devices.
    assert seed_of(preview(client, body)[1]) != seed_of(page)


def test_preview_refuses_a_profile_the_version_does_not_fit(client_for: Clients,
                                                            fleet: Any) -> None:
    client = client_for("operator")
    body = form_body(fleet, hardware_profile="")  # group lab also holds dev-b1 (esp32-s3)
    response, page = preview(client, body)
    assert response.status_code == 200
    assert 'id="preview-refusal"' in page
    refused = re.search(r'<li data-profile="esp32-s3" class="is-refused">(.*?)</li>', page,
                        re.DOTALL)
    assert refused and "arena needs 2752 bytes, profile has 2048" in refused.group(1)
    assert 'data-action="create-rollout"' not in page
    # Forcing the create step anyway is refused on the server, with the same reason.
    response = client.post(NEW, {**body, "step": "create", "digest": "forged"})
    assert response.status_code == 409
    response = client.post(NEW, {**body, "step": "create", "digest": _digest(client, body)})
    assert response.status_code == 409
    assert "arena needs 2752 bytes" in response.content.decode()
    assert not Rollout.objects.exists()


def _digest(client: Client, body: dict[str, Any]) -> str:
    """The digest the server would give this body (a refused preview shows none)."""
    from fleet.console.rollout_forms import RolloutForm

    form = RolloutForm(body)
    assert form.is_valid(), form.errors
    return form.digest()


def test_create_after_preview_starts_the_rollout(client_for: Clients, fleet: Any) -> None:
    client = client_for("operator")
    body = form_body(fleet, max_confidence_drop="5", max_latency_rise="30", soak_min="15",
                     window_start_hour="1", window_end_hour="5", jitter_s="2.5")
    _, page = preview(client, body)
    response = client.post(NEW, {**body, "step": "create", "digest": digest_of(page),
                                 "wave_seed": seed_of(page)})
    rollout = Rollout.objects.get()
    assert response.status_code == 302
    assert response.headers["Location"] == f"/console/rollouts/{rollout.pk}/"
    assert rollout.state == RolloutState.RUNNING and rollout.waves == [50.0, 100.0]
    assert rollout.health_timeout_s == 3600  # the form's default: judge within an hour
    assert rollout.model_version == fleet.v2 and rollout.target_group == fleet.lab
    assert rollout.target_profile == fleet.profile
    assert Deployment.objects.filter(rollout=rollout).count() == 2
    assert rollout.soak_s == 900 and rollout.max_score_drop == pytest.approx(12.75)
    assert rollout.max_latency_rise == pytest.approx(0.3) and rollout.jitter_s == 2.5
    assert (rollout.window_start_hour, rollout.window_end_hour) == (1, 5)
    assert set(AuditLog.objects.filter(object_type="ota.rollout").values_list(
        "action", flat=True)) == {"rollout.create", "rollout.start"}
    page = client.get(response.headers["Location"]).content.decode()
    assert "started: wave 1 of 2" in page and "Confidence drop &gt; 5 pp" in page
    assert "Latency rise &gt; 30%" in page and "01:00–05:00 UTC" in page and "15 min" in page


def test_create_with_settings_changed_since_the_preview_previews_again(
    client_for: Clients, fleet: Any
) -> None:
    client = client_for("operator")
    _, page = preview(client, form_body(fleet))
    changed = form_body(fleet, waves="10,100")
    response = client.post(NEW, {**changed, "step": "create", "digest": digest_of(page),
                                 "wave_seed": seed_of(page)})
    assert response.status_code == 409
    assert "changed since the preview" in response.content.decode()
    assert not Rollout.objects.exists()


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"waves": "50,10,100"}, "waves", "increasing"),
    ({"waves": "10,50"}, "waves", "must be 100"),
    ({"devices": "dev-a1 nope-1"}, "devices", "No such device: nope-1"),
    ({"window_start_hour": "3"}, "window_end_hour", "both ends"),
    ({"tags": "not a slug!"}, "tags", "letters"),
    ({"base_version": "v2"}, "base_version", "its own delta base"),
])
def test_bad_form_input_is_refused_with_the_reason(client_for: Clients, fleet: Any,
                                                   changes: dict[str, str], field: str,
                                                   message: str) -> None:
    if changes.get("base_version") == "v2":
        changes = {"base_version": fleet.v2.pk}
    response, page = preview(client_for("operator"), form_body(fleet, **changes))
    assert response.status_code == 400
    assert message in response.context["form"].errors[field][0]
    assert 'data-preview>' not in page


def test_target_matching_no_device_cannot_start(client_for: Clients, fleet: Any) -> None:
    _, page = preview(client_for("operator"), form_body(fleet, group="field", tags="north"))
    assert "matches no device" in page
    assert 'data-action="create-rollout"' not in page


# --- controls ------------------------------------------------------------------------------

def test_pause_with_reason_then_resume(client_for: Clients, fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("operator")
    url = f"/console/rollouts/{rollout.pk}/"
    response = client.post(url + "pause/", {"reason": "  checking   canary telemetry "})
    assert response.headers["Location"] == url
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert rollout.paused_reason == "checking canary telemetry"
    page = client.get(url).content.decode()
    assert re.search(r'data-paused-reason>checking canary telemetry<', page)
    assert re.search(r"by operator\d+", page)
    client.post(url + "resume/")
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING and rollout.paused_reason == ""


def test_pause_without_reason_says_who_paused(client_for: Clients, fleet: Any) -> None:
    rollout = start(fleet)
    client_for("operator").post(f"/console/rollouts/{rollout.pk}/pause/", {"reason": ""})
    rollout.refresh_from_db()
    assert rollout.paused_reason == "paused by an operator"


def test_a_refused_control_explains_and_changes_nothing(client_for: Clients,
                                                        fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("operator")
    response = client.post(f"/console/rollouts/{rollout.pk}/resume/", follow=True)
    assert "Cannot resume a running rollout" in response.content.decode()
    response = client.post(f"/console/rollouts/{rollout.pk}/rollback/", follow=True)
    assert "No device took this rollout" in response.content.decode()
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING


def test_unknown_control_is_not_found_and_get_shows_the_rollout(client_for: Clients,
                                                                fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("operator")
    assert client.post(f"/console/rollouts/{rollout.pk}/explode/").status_code == 404
    response = client.get(f"/console/rollouts/{rollout.pk}/pause/")
    assert response.headers["Location"] == f"/console/rollouts/{rollout.pk}/"


def test_abort_marks_unfinished_devices_failed(client_for: Clients, fleet: Any) -> None:
    rollout = start(fleet)
    client = client_for("operator")
    client.post(f"/console/rollouts/{rollout.pk}/abort/")
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ABORTED
    assert set(Deployment.objects.filter(rollout=rollout).values_list("reason", flat=True)) == {
        int(Reason.ABORTED)}
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert "<code>ABORTED</code> <strong>2</strong>" in page


def test_rollback_starts_a_rollout_of_the_previous_version_linked_both_ways(
    client_for: Clients, fleet: Any, sine_tflite: bytes
) -> None:
    # A rollback builds a fresh package of the old version (a higher anti-rollback sequence),
    # so that version needs its model bytes in the artifact store.
    key = artifact_storage().put(sine_tflite)
    ModelVersion.objects.filter(pk=fleet.v1.pk).update(sha256=key, size_bytes=len(sine_tflite))
    rollout = start(fleet)
    assert confirm_offered(rollout) == 2
    client = client_for("operator")
    response = client.post(f"/console/rollouts/{rollout.pk}/rollback/")
    back = Rollout.objects.get(rollback_of=rollout)
    assert response.headers["Location"] == f"/console/rollouts/{back.pk}/"
    assert back.model_version == fleet.v1 and back.state == RolloutState.RUNNING
    assert Deployment.objects.filter(rollout=back).count() == 2
    page = client.get(f"/console/rollouts/{back.pk}/").content.decode()
    assert f'href="/console/rollouts/{rollout.pk}/"' in page and "rolls back" in page
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert f'href="/console/rollouts/{back.pk}/"' in page and "Rolled back by" in page


# --- what the pages show -------------------------------------------------------------------

def test_list_shows_state_version_wave_progress_failures_and_pause_reason(
    client_for: Clients, fleet: Any
) -> None:
    rollout = start(fleet, name="paused one")
    step(rollout.pk, RecordingPublisher())
    dep = Deployment.objects.filter(rollout=rollout, state=DeploymentState.OFFERED).first()
    apply_report(dep.device_id, dep.package_id, DeploymentState.FAILED, int(Reason.TRIAL_FAILED))
    step(rollout.pk, RecordingPublisher())  # more than 20 % failed: the controller pauses it
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    page = client_for("viewer").get("/console/rollouts/").content.decode()
    row = re.search(rf'<tr data-rollout="{rollout.pk}".*?</tr>', page, re.DOTALL).group(0)
    assert 'badge-warn">paused<' in row and "kws@1.1.0" in row
    assert "devices failed" in row and "TRIAL_FAILED" in row  # the controller's reason
    assert re.search(r"data-failed>1<", row)
    assert re.search(r"<strong>0</strong> <span class=\"dim\">of 2 · 0%", row)
    detail = client_for("viewer").get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert "by controller" in detail and "golden inputs gave outputs" in detail


def test_active_rollouts_feed_the_overview(client_for: Clients, fleet: Any,
                                           sine_tflite: bytes) -> None:
    # Later rollouts to devices already offered a package need a fresh (higher-sequence)
    # package, so the version's bytes must really be stored.
    key = artifact_storage().put(sine_tflite)
    ModelVersion.objects.filter(pk=fleet.v2.pk).update(sha256=key, size_bytes=len(sine_tflite))
    fleet.v2.refresh_from_db()
    rollout = start(fleet)
    confirm_offered(rollout)
    other = start(fleet, ("dev-a3",), name="other")
    actions.do_pause_rollout(other, actor=None, reason="hold")
    done = start(fleet, ("dev-a4",), name="done")
    actions.do_abort_rollout(done, actor=None)
    rollout.refresh_from_db()
    rows = {r["name"]: r for r in active_rollouts()}
    assert set(rows) == {"other"} | ({"canary"} if rollout.state == "running" else set())
    assert rows["other"] == {"name": "other", "url": f"/console/rollouts/{other.pk}/",
                             "state": "paused", "done": 0, "total": 1, "percent": 0.0}
    page = client_for("viewer").get("/console/").content.decode()
    assert f'href="/console/rollouts/{other.pk}/"' in page
    assert "No rollout is running" not in page
