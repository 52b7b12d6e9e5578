"""Forms of the console's administration pages: hardware profiles, gateways, users.

Each one's cleaned data feeds one action function (fleet/devices/profile_actions.py,
fleet/devices/gateway_actions.py, fleet/accounts/actions.py).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from django import forms
from django.contrib.auth import get_user_model

from fleet.core.roles import ROLE_GROUP_NAMES
from fleet.devices.models import HardwareProfile

_SPLIT = re.compile(r"[\s,]+")
ROLE_CHOICES = [(name, name) for name in ROLE_GROUP_NAMES.values()]


def split_words(text: str) -> list[str]:
    """Split a list typed as words separated by spaces, commas or new lines."""
    return [w for w in _SPLIT.split(text.strip()) if w]


class HardwareProfileForm(forms.ModelForm):
    """A class of MCU board and its budgets; the ops are typed one per line or comma-separated."""

    supported_ops = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Registered ops",
        help_text="TFLite op names the firmware registers, e.g. FULLY_CONNECTED, SOFTMAX.")

    class Meta:
        model = HardwareProfile
        fields = ("name", "display_name", "mcu", "ram_bytes", "flash_bytes", "arena_ram_bytes",
                  "model_slot_bytes", "kernel_set", "pointer_bits", "ota_chunk_bytes",
                  "supported_ops", "description")
        widgets: ClassVar[dict[str, Any]] = {"description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].disabled = True  # the wire name: devices enroll with it
            self.initial["supported_ops"] = ", ".join(self.instance.supported_ops or [])

    def clean_supported_ops(self) -> list[str]:
        ops = [op.upper() for op in split_words(self.cleaned_data["supported_ops"])]
        bad = [op for op in ops if not re.fullmatch(r"[A-Z0-9_]+", op)]
        if bad:
            raise forms.ValidationError(f"Not op names: {', '.join(bad[:5])}")
        return sorted(set(ops))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        ram, arena = data.get("ram_bytes"), data.get("arena_ram_bytes")
        flash, slot = data.get("flash_bytes"), data.get("model_slot_bytes")
        if ram is not None and arena is not None and arena > ram:
            self.add_error("arena_ram_bytes", "The arena cannot exceed the MCU's RAM.")
        if flash is not None and slot is not None and 2 * slot > flash:
            self.add_error("model_slot_bytes", "Two slots (A/B) must fit in the flash.")
        return data

    def action_fields(self) -> dict[str, Any]:
        """Return the cleaned values the profile actions take (everything but the name)."""
        return {k: v for k, v in self.cleaned_data.items() if k != "name"}


class GatewayProvisionForm(forms.Form):
    """Provision a gateway, or re-provision one (new password and token, these children)."""

    uid = forms.SlugField(max_length=64, label="Gateway id",
                          help_text="Its MQTT username; not a device's id.")
    name = forms.CharField(max_length=100, required=False)
    children = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, label="Children",
        help_text="Device ids wired to it, separated by spaces, commas or new lines.")

    def clean_children(self) -> list[str]:
        return sorted(set(split_words(self.cleaned_data["children"])))


class UserCreateForm(forms.Form):
    """A console and API user with one role."""

    username = forms.RegexField(regex=r"^[\w.@+-]+$", max_length=150)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="viewer")
    password = forms.CharField(widget=forms.PasswordInput, min_length=10, max_length=128,
                               help_text="At least 10 characters; tell it to the user securely.")

    def clean_username(self) -> str:
        name = self.cleaned_data["username"]
        if get_user_model().objects.filter(username=name).exists():
            raise forms.ValidationError("A user with this name exists.")
        return name


class UserRoleForm(forms.Form):
    """The one role a user holds."""

    role = forms.ChoiceField(choices=ROLE_CHOICES)
