"""The suite runs where the test command says it runs."""

import os

import pytest
from django.db import connection


@pytest.mark.django_db
def test_runs_on_the_expected_database() -> None:
    """scripts/test.sh sets FLEET_EXPECT_DB for its PostgreSQL pass; SQLite otherwise."""
    expected = os.environ.get("FLEET_EXPECT_DB", "sqlite")
    assert connection.vendor == expected
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            # in-memory test databases report "memory"; file databases must be in WAL mode
            assert cursor.fetchone()[0] in ("wal", "memory")
