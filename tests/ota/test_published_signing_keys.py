"""The signing keys an enrollment answer publishes follow the database at every call."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from ota.choices import KeyState
from ota.models import SigningKey
from ota.signing.keys import new_signing_key_row, published_public_keys

pytestmark = pytest.mark.django_db


def published() -> list[str]:
    return [entry["kid"] for entry in published_public_keys()]


def test_a_key_added_or_retired_elsewhere_shows_in_the_next_answer() -> None:
    """Only the SQL is kept between calls: rows written by another process (a bare UPDATE,
    no signal here) change the very next answer, oldest key first, pending ones included."""
    first = new_signing_key_row(Ed25519PrivateKey.generate())
    first.save()
    assert published_public_keys() == [{"kid": first.kid, "public_key": first.public_key}]
    second = new_signing_key_row(Ed25519PrivateKey.generate())
    second.state = KeyState.PENDING
    second.save()
    SigningKey.objects.filter(pk=second.pk).update(
        created_at=timezone.now() + timedelta(seconds=1))
    assert published() == [first.kid, second.kid]
    SigningKey.objects.filter(pk=first.pk).update(state=KeyState.RETIRED)
    assert published() == [second.kid]
    SigningKey.objects.all().update(state=KeyState.RETIRED)
    assert published() == []
