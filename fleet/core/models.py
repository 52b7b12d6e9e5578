"""The core app's one table: the rate-limit buckets every web process shares.

(The module also makes `migrate` signal this app, post_migrate being sent only to apps with a
models module: fleet.core.apps then creates the login throttle's cache table.)
"""

from __future__ import annotations

from django.db import models


class RateBucket(models.Model):
    """One client's bucket in one throttle scope (fleet.core.buckets: GCRA, one upsert a request).

    ``tat`` is the bucket's theoretical arrival time in microseconds since the epoch: the
    moment it is empty again. A row whose ``tat`` has passed is the same as no row (pruned).
    """

    key = models.CharField(max_length=120, primary_key=True)
    tat = models.BigIntegerField()
    allowed = models.BooleanField(default=True)  # the last request's verdict (RETURNING reads it)

    class Meta:
        db_table = "fleet_rate_bucket"

    def __str__(self) -> str:
        return self.key
