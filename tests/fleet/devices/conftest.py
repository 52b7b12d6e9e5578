"""Fixtures shared by the device and gateway tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import CAPABILITIES, make_public_key_pem


@pytest.fixture
def enrolled(enrollment_token_factory: Callable[..., str],
             hardware_profile: Any) -> Callable[[str], str]:
    """Return a maker of enrolled devices (by uid), as a gateway enrolls its MCUs."""
    token = enrollment_token_factory(max_uses=20)

    def make(uid: str) -> str:
        body = {"token": token, "public_key": make_public_key_pem(),
                "hardware": hardware_profile.name, "capabilities": dict(CAPABILITIES), "uid": uid}
        response = APIClient().post("/api/v1/enroll/", body, format="json")
        assert response.status_code == 201, response.json()
        return uid

    return make
