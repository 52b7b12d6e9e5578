"""The core app: the API's rate buckets (a model) and, after migrate, the login throttle's cache table."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


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
