"""The rollout form of the console: target, waves, gates and pacing, in an operator's units.

The form speaks percentages and minutes; ``settings()`` converts them to the units
``ota.rollouts.actions.do_create_rollout`` takes (shares, seconds, score points).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django import forms

from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from ota.choices import VersionStatus
from ota.models import ModelVersion
from ota.rollouts.targeting import check_waves, new_wave_seed, target_devices

SCORE_PER_POINT = 255 / 100  # wire scores are 0..255; operators read confidence in percent


class VersionChoiceField(forms.ModelChoiceField):
    """A model version shown as ``model@version``."""

    def label_from_instance(self, obj: ModelVersion) -> str:
        return str(obj)


def ready_versions() -> Any:
    """Return the validated versions a rollout may offer, newest first within each model."""
    return (ModelVersion.objects.filter(status=VersionStatus.READY).select_related("model")
            .order_by("model__name", "-created_at"))


def _pct(label: str, initial: float | None, help_text: str, *, high: float = 100) -> forms.Field:
    return forms.FloatField(label=label, initial=initial, min_value=0, max_value=high,
                            required=initial is not None, help_text=help_text)


class RolloutForm(forms.Form):
    """Everything a rollout needs; the target criteria combine (a device must match all)."""

    name = forms.CharField(max_length=100, help_text="e.g. “kws 1.1 to the north sites”.")
    model_version = VersionChoiceField(ready_versions(), empty_label="— choose a version —",
                                       help_text="Only validated versions are listed.")
    base_version = VersionChoiceField(
        ready_versions(), required=False, label="Delta base", empty_label="— none (full model) —",
        help_text="Optional: send a delta from this version where that is smaller.")
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), required=False,
                                   to_field_name="name", empty_label="— any group —")
    tags = forms.CharField(required=False, max_length=1000,
                           help_text="Comma-separated; a device needs every tag.")
    hardware_profile = forms.ModelChoiceField(HardwareProfile.objects.all(), required=False,
                                              to_field_name="name", empty_label="— any profile —")
    devices = forms.CharField(
        required=False, max_length=20_000, label="Device uids",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "dev-001, dev-002 …"}),
        help_text="Comma, space or newline separated. Leave every target field empty to "
                  "address the whole fleet.")
    waves = forms.CharField(initial="1,10,50,100", max_length=200,
                            help_text="Cumulative percentages of the target, ending at 100.")
    success_pct = _pct("Success threshold (%)", 95, "Share confirmed before the next wave.")
    failure_pct = _pct("Failure threshold (%)", 20, "Share failed that pauses the rollout.")
    soak_min = forms.FloatField(label="Soak (minutes)", initial=0, min_value=0,
                                max_value=7 * 24 * 60, help_text="Wait after success.")
    max_confidence_drop = _pct("Confidence drop (pp)", None,
                               "Mean top-1 confidence, percentage points.")
    max_label_shift = forms.FloatField(
        label="Label shift (0–1)", required=False, min_value=0, max_value=1,
        help_text="Total variation distance of the label mix.")
    max_latency_rise = _pct("Latency rise (%)", None, "Mean inference latency.", high=10_000)
    max_rate_drop = _pct("Event rate drop (%)", None, "Events per second.")
    health_timeout_min = forms.FloatField(
        label="Judge within (minutes)", required=False, min_value=1, max_value=7 * 24 * 60,
        help_text="A gate that cannot judge this long after a wave succeeded pauses the "
                  "rollout (default 60).")
    offers_per_minute = forms.IntegerField(initial=600, min_value=1, max_value=1_000_000,
                                           label="Offers per minute")
    jitter_s = forms.FloatField(initial=0, min_value=0, max_value=86_400, label="Jitter (s)",
                                help_text="Random delay before each offer.")
    max_concurrent = forms.IntegerField(initial=1000, min_value=1, max_value=1_000_000,
                                        label="Max concurrent",
                                        help_text="Devices downloading at once.")
    window_start_hour = forms.IntegerField(required=False, min_value=0, max_value=23,
                                           label="Window from (UTC hour)")
    window_end_hour = forms.IntegerField(required=False, min_value=0, max_value=23,
                                         label="Window until (UTC hour)",
                                         help_text="Optional: offer only inside the window.")

    # The salt of the wave hash, drawn at the first preview and carried in a hidden field, so
    # the preview counts the waves the rollout will have (not those of some other salt).
    wave_seed = forms.IntegerField(required=False, min_value=1, max_value=2**62,
                                   widget=forms.HiddenInput)

    SECTIONS = (
        ("Release", ("name", "model_version", "base_version")),
        ("Target", ("group", "tags", "hardware_profile", "devices")),
        ("Waves", ("waves", "success_pct", "failure_pct", "soak_min")),
        ("Health gates", ("max_confidence_drop", "max_label_shift", "max_latency_rise",
                          "max_rate_drop", "health_timeout_min")),
        ("Pacing", ("offers_per_minute", "jitter_s", "max_concurrent", "window_start_hour",
                    "window_end_hour")),
    )

    def sections(self) -> list[tuple[str, list[forms.BoundField]]]:
        """Return the fields grouped under their headings, for the template."""
        return [(title, [self[name] for name in names]) for title, names in self.SECTIONS]

    def clean_waves(self) -> list[float]:
        try:
            return check_waves([float(p) for p in re.split(r"[,\s]+", self.cleaned_data["waves"])
                                if p])
        except ValueError as exc:
            raise forms.ValidationError(f"Waves: {exc}.") from None

    def clean_tags(self) -> list[str]:
        names = sorted({t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()})
        for name in names:
            forms.SlugField(max_length=64).clean(name)
        return names

    def clean_devices(self) -> list[Device]:
        uids = list(dict.fromkeys(u for u in re.split(r"[,\s]+", self.cleaned_data["devices"])
                                  if u))
        found = {d.uid: d for d in Device.objects.filter(uid__in=uids)}
        unknown = [u for u in uids if u not in found]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise forms.ValidationError(f"No such device: {shown}.")
        return [found[u] for u in uids]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("window_start_hour"), data.get("window_end_hour")
        if (start is None) != (end is None):
            self.add_error("window_end_hour", "Give both ends of the window, or neither.")
        elif start is not None and start == end:
            self.add_error("window_end_hour", "The window must not be empty.")
        mv, base = data.get("model_version"), data.get("base_version")
        if mv is not None and base is not None:
            if base.model_id != mv.model_id:
                self.add_error("base_version", "A delta base must be a version of the same "
                                               "model.")
            elif base.pk == mv.pk:
                self.add_error("base_version", "A version cannot be its own delta base.")
        return data

    # -- what the cleaned form means, for the actions ---------------------------------------

    @classmethod
    def with_wave_seed(cls, data: Any) -> RolloutForm:
        """Bind ``data``, drawing a wave seed when it carries none (the first preview)."""
        data = data.copy()
        if not data.get("wave_seed"):
            data["wave_seed"] = str(new_wave_seed())
        return cls(data)

    def target(self) -> dict[str, Any]:
        """Return the target criteria as ``do_create_rollout`` takes them."""
        d = self.cleaned_data
        return {"group": d["group"], "tags": d["tags"], "profile": d["hardware_profile"],
                "devices": d["devices"]}

    def target_devices(self) -> list[Device]:
        """Return the (unrevoked) devices the target matches, with their profiles."""
        t = self.target()
        return list(target_devices(
            group_id=t["group"].pk if t["group"] else None, tags=t["tags"],
            profile_id=t["profile"].pk if t["profile"] else None,
            device_ids=[d.pk for d in t["devices"]],
        ).select_related("hardware_profile").order_by("uid"))

    def settings(self) -> dict[str, Any]:
        """Return the gate and pacing fields in the rollout's own units."""
        d = self.cleaned_data

        def share(value: float | None) -> float | None:
            return None if value is None else value / 100

        drop = d["max_confidence_drop"]
        return {
            "success_threshold": d["success_pct"] / 100,
            "failure_threshold": d["failure_pct"] / 100,
            "soak_s": round(d["soak_min"] * 60),
            "max_score_drop": None if drop is None else drop * SCORE_PER_POINT,
            "max_label_shift": d["max_label_shift"],
            "max_latency_rise": share(d["max_latency_rise"]),
            "max_rate_drop": share(d["max_rate_drop"]),
            "health_timeout_s": round((d.get("health_timeout_min") or 60) * 60),
            "offers_per_minute": d["offers_per_minute"],
            "jitter_s": d["jitter_s"],
            "max_concurrent": d["max_concurrent"],
            "window_start_hour": d["window_start_hour"],
            "window_end_hour": d["window_end_hour"],
            "wave_seed": d.get("wave_seed"),
        }

    def digest(self) -> str:
        """Fingerprint what a preview showed, so "create" can tell whether it is still true."""
        d = self.cleaned_data
        t = self.target()
        payload = {
            "name": d["name"], "model_version": d["model_version"].pk,
            "base_version": d["base_version"].pk if d["base_version"] else None,
            "group": t["group"].pk if t["group"] else None, "tags": t["tags"],
            "profile": t["profile"].pk if t["profile"] else None,
            "devices": sorted(x.pk for x in t["devices"]), "waves": d["waves"],
            **self.settings(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
