"""No query parameter, however large, negative or strange, makes a list endpoint answer 5xx.

Every GET route under /api/v1/ without a path parameter is found in the URL conf (a new list
endpoint is covered without editing this file), and each is called with huge and negative
paging values and with odd values in search, ordering and every filter it declares.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

HUGE = "9" * 30
ODD_VALUES = [HUGE, "-" + HUGE, "-1", "0", "\x00", "a\x00b", "é💥\u202e\ufeff", "%", "'\"`;--",
              "1e309", "nan", "1" * 5000, "2026-13-45T99:99", "\ud800".encode("utf-8",
              "surrogatepass").decode("latin-1")]


def _list_routes() -> list[tuple[str, Any]]:
    """Return (path, view) for every API route with no path parameter, GET-able."""
    found: list[tuple[str, Any]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern):
                clean = route.replace("^", "").replace("$", "")
                if (clean.startswith("api/v1/") and "<" not in clean and "(?P" not in clean
                        and "format" not in clean):
                    found.append(("/" + clean, p.callback))

    walk(get_resolver().url_patterns, "")
    gets = [(path, view) for path, view in found
            if "get" in getattr(view, "actions", {"get": None})]
    return sorted({path: view for path, view in gets}.items())


ROUTES = _list_routes()


def _filter_names(view: Any) -> list[str]:
    cls = getattr(view, "cls", None)
    names: set[str] = {"search", "ordering", "limit", "offset", "format", "page"}
    filterset = getattr(cls, "filterset_class", None)
    if filterset is not None:
        names |= set(filterset.base_filters)
    fields = getattr(cls, "filterset_fields", None) or []
    names |= set(fields if isinstance(fields, list | tuple) else fields.keys())
    names |= {f"{name}__in" for name in list(names)}
    return sorted(names)


def test_the_url_conf_has_list_endpoints_to_check() -> None:
    paths = {path for path, _ in ROUTES}
    assert {"/api/v1/devices/", "/api/v1/model-versions/", "/api/v1/audit-log/"} <= paths, paths


@pytest.mark.parametrize(("path", "view"), ROUTES, ids=[p for p, _ in ROUTES])
def test_odd_query_parameters_never_give_a_5xx(admin_client: APIClient, path: str,
                                               view: Any) -> None:
    names = _filter_names(view)
    failures = []
    for paging in ({"limit": HUGE}, {"offset": HUGE}, {"limit": HUGE, "offset": HUGE},
                   {"limit": "-5"}, {"offset": "-5"}, {"limit": "0"}, {"limit": "1" * 5000}):
        answer = admin_client.get(path, paging)
        if answer.status_code >= 500:
            failures.append((paging, answer.status_code))
    for value in ODD_VALUES:
        answer = admin_client.get(path, {name: value for name in names})
        if answer.status_code >= 500:
            failures.append((value[:40], answer.status_code))
        for name in names:  # one at a time too: a 400 on one must not hide a 500 on another
            answer = admin_client.get(path, {name: value})
            if answer.status_code >= 500:
                failures.append((name, value[:40], answer.status_code))
    assert not failures, failures


def test_a_huge_limit_is_clamped_and_a_huge_offset_is_an_empty_page(
    admin_client: APIClient,
) -> None:
    from django.conf import settings

    answer = admin_client.get("/api/v1/audit-log/", {"limit": HUGE, "offset": HUGE})
    assert answer.status_code == 200
    assert answer.json()["results"] == []
    assert f"limit={settings.API_MAX_PAGE_SIZE}" in (answer.json()["previous"] or "")
