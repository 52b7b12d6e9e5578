"""Indexes for the device list's filters at fleet scale (bench/queries.py, 100,000 devices).

Each filter's exact count becomes an index-only scan (after VACUUM, the state autovacuum
keeps), where one-column indexes left a heap visit per matching device: profile and state,
group and revoked, and a tag (``devices_device_tags`` by tag, then device). A state-filtered
page needs none: walking the uid index and skipping other states took 0.7 ms at offset 1,000
(the planner preferred it to a ``(state, uid)`` index, which would only have slowed every
presence update). Plain B-tree indexes: SQLite gets them too.

On PostgreSQL they are built CONCURRENTLY (fleet/core/live_indexes.py): a deploy onto a live
fleet does not hold enrollments and presence updates for the length of three builds. That
cannot run in a transaction, hence ``atomic = False``; if a build fails, running ``migrate``
again drops the invalid index it left and builds it anew. (A database that applied this
migration before it built concurrently keeps the same indexes.)
"""

from django.db import migrations, models

from fleet.core.live_indexes import (
    AddIndexConcurrentlyOnPostgres,
    CreateIndexConcurrentlyOnPostgres,
)


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ("devices", "0011_device_trusted_kids"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="device",
            index=models.Index(fields=["hardware_profile", "state"], name="devices_profile_state_idx"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="device",
            index=models.Index(fields=["group", "revoked_at"], name="devices_group_revoked_idx"),
        ),
        # The auto-created tags table has no model to declare indexes on.
        CreateIndexConcurrentlyOnPostgres(
            table="devices_device_tags", name="devices_device_tags_tag_device_idx",
            columns=["tag_id", "device_id"],
        ),
    ]
