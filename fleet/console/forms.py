"""Forms of the console's write pages; each one's cleaned data feeds one action function."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile
from django.utils import timezone

from fleet.devices.models import DeviceGroup, HardwareProfile
from ota.choices import VersionStatus
from ota.models import Model, ModelVersion

EXPIRY_CHOICES = [("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"),
                  ("90d", "90 days")]
_EXPIRY = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30), "90d": timedelta(days=90)}


class EnrollmentTokenForm(forms.Form):
    """A claim token: how many devices it may enroll, until when, into which group."""

    name = forms.CharField(max_length=100, required=False,
                           help_text="What the token is for, e.g. “line 3 batch, March”.")
    max_uses = forms.IntegerField(min_value=1, max_value=100_000, initial=1,
                                  help_text="Devices it may enroll.")
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="24h", label="Expires in")
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), required=False,
                                   empty_label="— no group —", to_field_name="name")
    hardware_profile = forms.ModelChoiceField(
        HardwareProfile.objects.all(), required=False, empty_label="— any profile —",
        to_field_name="name", help_text="When set, only devices of this class may enroll.")
    uid_pattern = forms.CharField(
        max_length=200, required=False, label="Device ids",
        help_text="A regular expression every device id must match, e.g. SN-[0-9]{6} for a "
                  "factory line. Empty: a token for several devices enrolls ids derived from "
                  "each device's key only, so nobody can claim serial numbers in advance.")

    def clean_uid_pattern(self) -> str:
        """Refuse a pattern that is not a regular expression."""
        pattern = self.cleaned_data["uid_pattern"]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise forms.ValidationError(f"Not a regular expression: {exc}") from None
        return pattern

    def expires_at(self) -> datetime:
        """Return the expiry the chosen duration means, from now."""
        return timezone.now() + _EXPIRY[self.cleaned_data["expires_in"]]


class ModelCreateForm(forms.Form):
    """A model name and what its inputs and output classes mean."""

    name = forms.SlugField(max_length=64, help_text="Letters, digits, - and _, e.g. kws-tiny.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    labels = forms.CharField(required=False, max_length=4000,
                             help_text="Class names by output index, comma-separated.")
    input_meaning = forms.CharField(max_length=200, required=False, label="Input")
    output_meaning = forms.CharField(max_length=200, required=False, label="Output")

    def clean_labels(self) -> list[str]:
        raw = self.cleaned_data["labels"]
        return [part.strip() for part in raw.split(",") if part.strip()]


def _check_suffix(upload: UploadedFile | None, suffixes: tuple[str, ...]) -> None:
    if upload is not None and PurePath(upload.name or "").suffix.lower() not in suffixes:
        raise forms.ValidationError(f"Expected a {' or '.join(suffixes)} file.")


class VersionUploadForm(forms.Form):
    """A new version: a .tflite to validate now, or a .keras model plus data to convert."""

    model = forms.ModelChoiceField(Model.objects.all(), to_field_name="name",
                                   empty_label="— choose a model —")
    version = forms.CharField(max_length=32, help_text="Semantic version, e.g. 1.2.0.")
    notes = forms.CharField(required=False, max_length=5000,
                            widget=forms.Textarea(attrs={"rows": 2}))
    file = forms.FileField(required=False, label=".tflite model",
                           widget=forms.ClearableFileInput(attrs={"accept": ".tflite"}))
    samples = forms.FileField(required=False, label="Sample inputs (optional)",
                              help_text=".npy/.npz inputs the validation runs the model on.",
                              widget=forms.ClearableFileInput(attrs={"accept": ".npy,.npz"}))
    keras = forms.FileField(required=False, label=".keras model",
                            widget=forms.ClearableFileInput(attrs={"accept": ".keras"}))
    dataset = forms.FileField(required=False, label="Representative data",
                              help_text=".npz with x (and optional y), for int8 calibration.",
                              widget=forms.ClearableFileInput(attrs={"accept": ".npy,.npz"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        has_file, has_keras = bool(data.get("file")), bool(data.get("keras"))
        if has_file == has_keras:
            raise forms.ValidationError("Give either a .tflite file, or a .keras model with "
                                        "representative data to convert.")
        if has_keras and not data.get("dataset"):
            self.add_error("dataset", "Conversion needs representative data.")
        for name, suffixes in (("file", (".tflite",)), ("keras", (".keras",)),
                               ("dataset", (".npz", ".npy")), ("samples", (".npz", ".npy"))):
            try:
                _check_suffix(data.get(name), suffixes)
            except forms.ValidationError as exc:
                self.add_error(name, exc)
        return data


ENCODING_CHOICES = [("", "smallest that applies"), ("raw", "raw"), ("compressed", "compressed"),
                    ("delta", "delta from base")]


class BuildPackageForm(forms.Form):
    """Which hardware profile to package a version for, and optionally a delta base."""

    hardware_profile = forms.ModelChoiceField(HardwareProfile.objects.none(),
                                              to_field_name="name", empty_label=None)
    base_version = forms.ModelChoiceField(ModelVersion.objects.none(), required=False,
                                          empty_label="— none (full model) —",
                                          label="Delta base")
    encoding = forms.ChoiceField(choices=ENCODING_CHOICES, required=False)

    def __init__(self, *args: Any, version: ModelVersion, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Offer only profiles the admission check accepted; the action re-checks anyway.
        self.fields["hardware_profile"].queryset = HardwareProfile.objects.filter(
            profilecompatibility__model_version=version,
            profilecompatibility__compatible=True)
        self.fields["base_version"].queryset = (
            ModelVersion.objects.filter(model_id=version.model_id, status=VersionStatus.READY)
            .exclude(pk=version.pk).select_related("model"))


class DeviceEditForm(forms.Form):
    """What an operator may change on a device: name, group, tags."""

    name = forms.CharField(max_length=100, required=False)
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), required=False,
                                   empty_label="— no group —", to_field_name="name")
    tags = forms.CharField(required=False, max_length=1000, help_text="Comma-separated.")

    def clean_tags(self) -> list[str]:
        names = [t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()]
        field = forms.SlugField(max_length=64)
        for name in names:
            field.clean(name)
        return sorted(set(names))


RANGE_CHOICES = [("15m", "Last 15 minutes"), ("1h", "Last hour"), ("6h", "Last 6 hours"), ("24h", "Last 24 hours"),
                 ("7d", "Last 7 days"), ("30d", "Last 30 days"), ("custom", "Custom range")]
_RANGE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1),
          "7d": timedelta(days=7), "30d": timedelta(days=30)}
MAX_RANGE = timedelta(days=400)  # what the telemetry API accepts


def bucket_for(span: timedelta) -> int:
    """Pick the series bucket (seconds) that gives a chart 60 to ~200 points."""
    for limit, bucket in ((timedelta(hours=2), 60), (timedelta(hours=12), 300),
                          (timedelta(days=2), 900), (timedelta(days=14), 3600)):
        if span <= limit:
            return bucket
    return 86400


class TelemetryForm(forms.Form):
    """The telemetry page's query: a time range, a device selection, versions to compare."""

    range = forms.ChoiceField(choices=RANGE_CHOICES, required=False, initial="24h")
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), required=False,
                                   to_field_name="name", empty_label="All groups")
    hardware_profile = forms.ModelChoiceField(HardwareProfile.objects.all(), required=False,
                                              to_field_name="name", empty_label="All profiles",
                                              label="Profile")
    model_version = forms.TypedChoiceField(coerce=int, required=False, empty_value=None,
                                           label="Model version")
    device = forms.CharField(required=False, max_length=64, label="Device uid")
    a = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Version A")
    b = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Version B")

    def __init__(self, *args: Any, versions: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, empty in (("model_version", "All versions"), ("a", "—"), ("b", "—")):
            self.fields[name].choices = [("", empty), *versions]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        choice = data.get("range") or "24h"
        data["range"] = choice
        if choice == "custom":
            since, until = data.get("since"), data.get("until")
            if since is None or until is None:
                raise forms.ValidationError("A custom range needs both a start and an end.")
            if since >= until:
                raise forms.ValidationError("The start must be before the end.")
            if until - since > MAX_RANGE:
                raise forms.ValidationError("A range covers at most 400 days.")
        if (data.get("a") is None) != (data.get("b") is None):
            raise forms.ValidationError("Choose two versions to compare, or none.")
        return data

    def window(self) -> tuple[datetime, datetime, int]:
        """Return (since, until, bucket seconds) of the query; call after is_valid()."""
        data = self.cleaned_data
        if data["range"] == "custom":
            since, until = data["since"], data["until"]
        else:
            until = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
            since = until - _RANGE[data["range"]]
        return since, until, bucket_for(until - since)
