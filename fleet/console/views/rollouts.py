"""Rollouts: the list, the create form with its server-side preview, and a live detail page.

Every write goes through ``ota.rollouts.actions``; these views turn forms into arguments and
answers. The detail page renders the counts once and ``rollouts.js`` keeps them current by
polling ``/api/v1/rollouts/<id>/`` (the same ``wave_progress`` rows the page started from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import Reason
from fleet.core.roles import Role, has_role
from fleet.audit.models import AuditLog
from fleet.console.access import console_view, forbidden, render_page
from fleet.console.rollout_forms import SCORE_PER_POINT, RolloutForm
from ota.errors import OtaError
from ota.models import Package
from ota.rollouts import actions
from ota.rollouts.models import Rollout, RolloutState
from ota.rollouts.progress import failure_reasons, wave_progress

LIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED)
STATE_TONES = {"draft": "muted", "running": "info", "paused": "warn", "completed": "ok",
               "aborted": "bad"}
# How the bars group the per-device states (rollouts.js reads the same list from the page).
SEGMENTS = [
    {"key": "confirmed", "label": "Confirmed", "states": ["confirmed"]},
    {"key": "installing", "label": "Installing", "states": ["verified", "installed", "trial"]},
    {"key": "downloading", "label": "Downloading", "states": ["downloading"]},
    {"key": "offered", "label": "Offered", "states": ["offered"]},
    {"key": "failed", "label": "Failed", "states": ["failed"]},
    {"key": "rolled_back", "label": "Rolled back", "states": ["rolled_back"]},
    {"key": "pending", "label": "Pending", "states": ["pending"]},
]
# States that mean a device took the new version (what a rollback would undo).
TOOK_STATES = ("verified", "installed", "trial", "confirmed")
REASON_TEXT = {
    Reason.ABORTED: "the rollout was aborted before the device finished",
    Reason.TIMEOUT: "a step took longer than the rollout allows",
    Reason.TRIAL_FAILED: "golden inputs gave outputs outside tolerance",
    Reason.TRIAL_OUTPUT_MISMATCH: "the new model ran, but computed other outputs than expected",
    Reason.TRIAL_INTERRUPTED: "the device restarted before confirming and reverted",
    Reason.MODEL_LOAD_FAILED: "the interpreter refused the model",
    Reason.FLASH_ERROR: "writing the model slot failed",
    Reason.MANIFEST_ARENA_TOO_SMALL: "the firmware's arena is smaller than the model needs",
    Reason.MANIFEST_TOO_LARGE: "the model does not fit the device's slot",
    Reason.MANIFEST_WRONG_HARDWARE: "the package is for another hardware profile",
    Reason.MANIFEST_SEQUENCE_REPLAY: "the device has a newer package (anti-rollback)",
    Reason.MANIFEST_EXPIRED: "the signed manifest had expired",
    Reason.MANIFEST_UNKNOWN_KEY: "the device does not trust the signing key",
    Reason.MANIFEST_BAD_SIGNATURE: "the manifest signature did not verify",
    Reason.TRANSFER_DIGEST_MISMATCH: "the transferred bytes did not match the manifest",
    Reason.MODEL_DIGEST_MISMATCH: "the installed model did not match the manifest",
    Reason.DELTA_BASE_MISMATCH: "the device does not run the delta's base version",
    Reason.DECODE_ERROR: "the compressed or delta stream was corrupt",
}
HISTORY_WORDS = {"rollout.create": "created", "rollout.start": "started",
                 "rollout.advance": "advanced", "rollout.pause": "paused",
                 "rollout.resume": "resumed", "rollout.abort": "aborted",
                 "rollout.complete": "completed"}


def _with_counts(qs: QuerySet[Rollout]) -> QuerySet[Rollout]:
    confirmed = Q(deployments__state=DeploymentState.CONFIRMED)
    return qs.annotate(total=Count("deployments"),
                       done=Count("deployments", filter=confirmed),
                       failed=Count("deployments", filter=Q(deployments__state=DeploymentState
                                                            .FAILED)))


def _percent(part: int, whole: int) -> float:
    return part / whole * 100 if whole else 0.0


def active_rollouts() -> list[dict[str, Any]]:
    """Return running and paused rollouts as {name, url, state, done, total, percent}."""
    rows = _with_counts(Rollout.objects.filter(state__in=LIVE_STATES)).order_by("-created_at")
    return [{"name": r.name, "url": reverse("console:rollout-detail", args=[r.pk]),
             "state": r.state, "done": r.done, "total": r.total,
             "percent": _percent(r.done, r.total)} for r in rows[:10]]


@console_view()
def rollouts(request: HttpRequest) -> HttpResponse:
    """List rollouts (newest first, optionally of one state) and the signed packages."""
    state = request.GET.get("state")
    qs = _with_counts(Rollout.objects.select_related("model_version__model", "rollback_of")
                      .order_by("-created_at", "-id"))
    if state in RolloutState.values:
        qs = qs.filter(state=state)
    rollout_page = Paginator(qs, 25).get_page(request.GET.get("rpage"))
    for r in rollout_page:
        r.tone = STATE_TONES.get(r.state, "muted")
        r.percent = _percent(r.done, r.total)
        r.wave_percent = r.waves[r.current_wave] if r.current_wave < len(r.waves) else None
    packages = Package.objects.select_related(
        "model_version__model", "hardware_profile", "base_version", "signing_key").order_by("-id")
    counts = dict(Rollout.objects.order_by().values_list("state").annotate(n=Count("id")))
    return render_page(request, "console/rollouts.html", {
        "nav": "rollouts",
        "rollouts": rollout_page,
        "state": state if state in RolloutState.values else "",
        "state_filters": [(s, s.label, counts.get(s.value, 0)) for s in RolloutState],
        "all_count": sum(counts.values()),
        "packages": Paginator(packages, 50).get_page(request.GET.get("page")),
    })


# --- create, with a preview first -----------------------------------------------------------

@dataclass
class Preview:
    """What the preview panel shows; ``ok`` is whether "create and start" may follow."""

    total: int
    waves: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    refusals: dict[str, str]
    digest: str
    problems: list[str] = field(default_factory=list)
    device_refusals: dict[str, str] = field(default_factory=dict)  # uid -> why it cannot

    @property
    def ok(self) -> bool:
        return self.total > 0 and not self.refusals and not self.problems


def build_preview(form: RolloutForm) -> Preview:
    """Count the target per wave and per profile, and check the version fits each profile."""
    devices = form.target_devices()
    waves = form.cleaned_data["waves"]
    result = actions.preview_rollout(form.cleaned_data["model_version"], devices, waves,
                                     form.cleaned_data["wave_seed"])
    previous = 0
    wave_rows = []
    for index, (percent, cumulative) in enumerate(zip(waves, result.per_wave, strict=True)):
        wave_rows.append({"wave": index + 1, "percent": percent, "devices": cumulative,
                          "new": cumulative - previous})
        previous = cumulative
    profiles = [{"name": name, "devices": n, "refusal": result.refusals.get(name)}
                for name, n in sorted(result.per_profile.items())]
    problems = [] if devices else ["The target matches no device (revoked devices never count)."]
    return Preview(result.total, wave_rows, profiles, result.refusals, form.digest(), problems,
                   result.device_refusals)


def _create_page(request: HttpRequest, form: RolloutForm, preview: Preview | None = None,
                 status: int = 200) -> HttpResponse:
    return render_page(request, "console/rollouts/new.html", {
        "nav": "rollouts", "form": form, "preview": preview}, status=status)


@console_view()
def rollout_create(request: HttpRequest) -> HttpResponse:
    """Show the form (GET); preview the rollout; create and start it once a preview holds."""
    if not has_role(request.user, Role.OPERATOR):
        return forbidden(request, "Creating a rollout needs the operator role.")
    if request.method != "POST":
        return _create_page(request, RolloutForm(initial={"model_version":
                                                          request.GET.get("version")}))
    form = RolloutForm.with_wave_seed(request.POST)
    if not form.is_valid():
        return _create_page(request, form, status=400)
    preview = build_preview(form)
    if request.POST.get("step") != "create":
        return _create_page(request, form, preview)
    if request.POST.get("digest") != preview.digest:
        messages.warning(request, "The settings changed since the preview. Check the new "
                                  "preview, then create the rollout.")
        return _create_page(request, form, preview, status=409)
    if not preview.ok:
        return _create_page(request, form, preview, status=409)
    data = form.cleaned_data
    try:
        rollout = actions.do_create_rollout(
            actor=request.user, name=data["name"], model_version=data["model_version"],
            waves=data["waves"], base_version=data["base_version"], **form.target(),
            **form.settings())
        rollout = actions.do_start_rollout(rollout, actor=request.user)
    except OtaError as exc:
        form.add_error(None, exc.detail)
        return _create_page(request, form, preview, status=exc.status)
    messages.success(request, f"Rollout “{rollout.name}” started: wave 1 of "
                              f"{len(rollout.waves)} begins with the next controller step.")
    return redirect("console:rollout-detail", pk=rollout.pk)


# --- detail -------------------------------------------------------------------------------

def totals(waves: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-wave rows into one row of segment counts (plus total and percent)."""
    out: dict[str, Any] = {s["key"]: sum(w[st] for w in waves for st in s["states"])
                           for s in SEGMENTS}
    out["total"] = sum(w["devices"] for w in waves)
    out["active"] = out["offered"] + out["downloading"] + out["installing"]
    out["took"] = sum(w[st] for w in waves for st in TOOK_STATES)
    out["percent"] = _percent(out["confirmed"], out["total"])
    return out


def _wave_rows(rollout: Rollout) -> list[dict[str, Any]]:
    rows = wave_progress(rollout)
    for row in rows:
        row["segments"] = {s["key"]: sum(row[st] for st in s["states"]) for s in SEGMENTS}
        index = row["wave"] - 1
        if rollout.state == RolloutState.COMPLETED or index < rollout.current_wave:
            row["phase"] = "done"
        elif index == rollout.current_wave and rollout.state in LIVE_STATES:
            row["phase"] = "current"
        else:
            row["phase"] = "waiting"
    return rows


def _failures(rollout: Rollout) -> list[dict[str, Any]]:
    rows = []
    for name, n in sorted(failure_reasons(rollout).items(), key=lambda kv: -kv[1]):
        member = Reason.__members__.get(name)
        rows.append({"name": name, "count": n, "text": REASON_TEXT.get(member, "")})
    return rows


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _history(rollout: Rollout) -> list[dict[str, Any]]:
    entries = AuditLog.objects.filter(object_type=Rollout._meta.label_lower,
                                      object_id=str(rollout.pk))[:30]
    out = []
    for e in entries:
        after = e.after or {}
        what = HISTORY_WORDS.get(e.action, e.action)
        if e.action == "rollout.advance":
            what = f"advanced to wave {after.get('wave')} ({_num(after.get('percent'))}%)"
        elif e.action == "rollout.start":
            what = f"started with {after.get('devices')} devices"
        elif e.action == "rollout.pause" and after.get("paused_reason"):
            what = f"paused: {after['paused_reason']}"
        out.append({"at": e.created_at, "actor": e.actor_label, "what": what})
    return out


def _gates(rollout: Rollout) -> list[tuple[str, str | None]]:
    def pct(v: float | None) -> str | None:
        return None if v is None else f"{v * 100:g}%"

    drop = rollout.max_score_drop
    return [
        ("Confidence drop", None if drop is None else f"{drop / SCORE_PER_POINT:.3g} pp"),
        ("Label shift", None if rollout.max_label_shift is None
         else f"{rollout.max_label_shift:g} TVD"),
        ("Latency rise", pct(rollout.max_latency_rise)),
        ("Event rate drop", pct(rollout.max_rate_drop)),
    ]


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _window(rollout: Rollout) -> str:
    start, end = rollout.window_start_hour, rollout.window_end_hour
    if start is None or end is None:
        return "any time"
    return f"{start:02d}:00–{end:02d}:00 UTC"


@console_view()
def rollout_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show one rollout's waves, failures and settings; the page follows it live."""
    rollout = get_object_or_404(Rollout.objects.select_related(
        "model_version__model", "base_version__model", "target_group", "target_profile",
        "rollback_of", "created_by"), pk=pk)
    waves = _wave_rows(rollout)
    pause = (AuditLog.objects.filter(object_type=Rollout._meta.label_lower,
                                     object_id=str(rollout.pk), action="rollout.pause").first()
             if rollout.state == RolloutState.PAUSED else None)
    gates = _gates(rollout)
    return render_page(request, "console/rollouts/detail.html", {
        "nav": "rollouts",
        "rollout": rollout,
        "tone": STATE_TONES.get(rollout.state, "muted"),
        "tones": STATE_TONES,
        "waves": waves,
        "totals": totals(waves),
        "segments": SEGMENTS,
        "took_states": TOOK_STATES,
        "failures": _failures(rollout),
        "reason_text": {r.name: text for r, text in REASON_TEXT.items()},
        "history": _history(rollout),
        "pause": pause,
        "gates": gates,
        "gated": any(value is not None for _, value in gates),
        "soak": _duration(rollout.soak_s) if rollout.soak_s else "",
        "window": _window(rollout),
        "wave_percent": rollout.waves[min(rollout.current_wave, len(rollout.waves) - 1)],
        "packages": rollout.packages.select_related("hardware_profile").order_by("id"),
        "explicit_devices": rollout.target_devices.count(),
        "rollbacks": rollout.rollbacks.order_by("-created_at"),
        "api_url": reverse("rollout-detail", args=[rollout.pk]),
    })


# --- controls ---------------------------------------------------------------------------

def _pause(rollout: Rollout, request: HttpRequest) -> tuple[Rollout, str]:
    reason = " ".join(request.POST.get("reason", "").split())[:300] or "paused by an operator"
    done = actions.do_pause_rollout(rollout, actor=request.user, reason=reason)
    return done, "Rollout paused: no new offers go out; devices already downloading finish."


def _resume(rollout: Rollout, request: HttpRequest) -> tuple[Rollout, str]:
    done = actions.do_resume_rollout(rollout, actor=request.user)
    return done, "Rollout resumed; devices that had failed get another attempt."


def _abort(rollout: Rollout, request: HttpRequest) -> tuple[Rollout, str]:
    done = actions.do_abort_rollout(rollout, actor=request.user)
    return done, "Rollout aborted; devices not yet done were marked failed (aborted)."


def _rollback(rollout: Rollout, request: HttpRequest) -> tuple[Rollout, str]:
    back = actions.do_rollback_rollout(rollout, actor=request.user)
    return back, (f"Rolling back: this rollout offers {back.model_version} to the "
                  f"{back.deployments.count()} devices that took {rollout.model_version}.")


CONTROLS: dict[str, Callable[[Rollout, HttpRequest], tuple[Rollout, str]]] = {
    "pause": _pause, "resume": _resume, "abort": _abort, "rollback": _rollback}


@console_view()
def rollout_control(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    """Pause, resume, abort or roll back a rollout (POST, operators); GET shows the rollout."""
    control = CONTROLS.get(verb)
    if control is None:
        raise Http404("no such rollout control")
    rollout = get_object_or_404(Rollout, pk=pk)
    if request.method != "POST":
        return redirect("console:rollout-detail", pk=rollout.pk)
    try:
        result, note = control(rollout, request)
    except OtaError as exc:
        messages.error(request, exc.detail)
        return redirect("console:rollout-detail", pk=rollout.pk)
    messages.success(request, note)
    return redirect("console:rollout-detail", pk=result.pk)
