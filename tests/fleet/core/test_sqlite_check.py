"""The system check that refuses a SQLite without ``RETURNING`` (enrollment and the rate
buckets use ``UPDATE/INSERT ... RETURNING``, SQLite 3.35+)."""

from __future__ import annotations

import sqlite3

import pytest
from django.db import connection

from fleet.core.apps import check_sqlite_version


def test_a_sqlite_without_returning_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the check is about SQLite")
    assert check_sqlite_version() == []
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    errors = check_sqlite_version()
    assert [e.id for e in errors] == ["fleet.E001"] and "3.34.1" in errors[0].msg
