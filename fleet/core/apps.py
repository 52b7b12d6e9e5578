"""The core app: the API's rate buckets (a model) and, after migrate, the login throttle's cache table."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate

SQLITE_RETURNING = (3, 35)  # UPDATE/INSERT ... RETURNING (enrollment, the rate buckets)


@checks.register(checks.Tags.database)
def check_sqlite_version(app_configs: Any = None, **_: Any) -> list[checks.CheckMessage]:
    """Refuse a SQLite too old for the RETURNING clauses enrollment and the throttle use."""
    import sqlite3

    from django.db import connections

    if (any(c.vendor == "sqlite" for c in connections.all())
            and sqlite3.sqlite_version_info < SQLITE_RETURNING):
        return [checks.Error(
            f"SQLite {sqlite3.sqlite_version} is too old: 3.35 or newer is needed",
            hint="Debian 12 ships 3.40; or use PostgreSQL (DATABASE_URL)", id="fleet.E001")]
    return []


def create_cache_tables(using: str = "default", **_: Any) -> None:
    """Create the database cache tables (the login attempt counters) if missing; idempotent."""
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=0)


class CoreConfig(AppConfig):
    name = "fleet.core"
    label = "fleet_core"
    verbose_name = "Core"

    def ready(self) -> None:
        # `migrate` is the one deploy step everybody runs: it also creates the cache table.
        post_migrate.connect(create_cache_tables, sender=self,
                             dispatch_uid="fleet.core.create_cache_tables")
