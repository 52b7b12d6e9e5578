"""Console and admin logins: failed attempts are limited per username and per client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client, override_settings

from fleet.accounts.actions import do_create_user
from fleet.core.roles import Role

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"
LOGIN_URLS = ["/console/login/", "/admin/login/"]
THROTTLED = b"Too many failed login attempts"


@pytest.fixture
def low_limits() -> Iterator[None]:
    with override_settings(LOGIN_RATE_USER="3/hour", LOGIN_RATE_CLIENT="5/hour"):
        yield


@pytest.fixture
def admin_user() -> str:
    do_create_user("root", PASSWORD, Role.ADMIN, actor=None)
    return "root"


def attempt(url: str, username: str, password: str, ip: str = "203.0.113.9") -> tuple[int, bytes]:
    answer = Client(REMOTE_ADDR=ip).post(url, {"username": username, "password": password})
    return answer.status_code, answer.content


@pytest.mark.parametrize("url", LOGIN_URLS)
def test_wrong_passwords_for_one_account_are_limited_from_any_address(
    url: str, low_limits: None, admin_user: str,
) -> None:
    for n in range(3):
        status, page = attempt(url, admin_user, "wrong", ip=f"198.51.100.{n}")
        assert status == 200 and THROTTLED not in page
    # The fourth try, from yet another address and with the right password, is refused.
    status, page = attempt(url, admin_user, PASSWORD, ip="198.51.100.99")
    assert status == 200 and THROTTLED in page and b"Try again in" in page


@pytest.mark.parametrize("url", LOGIN_URLS)
def test_one_client_guessing_many_accounts_is_limited(
    url: str, low_limits: None, admin_user: str,
) -> None:
    for n in range(5):
        _, page = attempt(url, f"nobody{n}", "wrong")
        assert THROTTLED not in page
    _, page = attempt(url, admin_user, PASSWORD)
    assert THROTTLED in page
    # Another client may still log in.
    answer = Client(REMOTE_ADDR="203.0.113.50").post(
        url, {"username": admin_user, "password": PASSWORD})
    assert answer.status_code == 302


@pytest.mark.parametrize("url", LOGIN_URLS)
def test_successful_logins_are_not_counted(url: str, low_limits: None, admin_user: str) -> None:
    for _ in range(6):
        answer = Client(REMOTE_ADDR="203.0.113.9").post(
            url, {"username": admin_user, "password": PASSWORD})
        assert answer.status_code == 302
