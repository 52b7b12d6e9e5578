"""An exact count of all devices kept by triggers, for the unfiltered device list (PostgreSQL).

``SELECT count(*) FROM devices_device`` visits every index entry: 5–7 ms of the database's
CPU at 100,000 devices, most of the cost of the list's first page. Statement-level triggers
add each INSERT's and DELETE's row count (COPY and bulk inserts included) to
``devices_device_tally``, and a TRUNCATE empties it; the list sums its rows
(fleet/devices/api/listing.py), which is the exact count in the reader's snapshot since the
deltas commit with the rows they count. The delta goes to one of 64 slots chosen by backend
pid, so concurrent enrollments rarely wait on each other's counter row. SQLite counts its
B-tree directly and gets nothing here.
"""

from django.db import migrations

SLOTS = 64

CREATE = [
    # Held until the migration commits: a device inserted or deleted between the initial count
    # and the triggers' creation (a live fleet enrolling during the deploy) would never be
    # counted. The lock waits for writers in flight, so the count sees all that committed.
    "LOCK TABLE devices_device IN SHARE ROW EXCLUSIVE MODE",
    "CREATE TABLE devices_device_tally (slot smallint PRIMARY KEY, devices bigint NOT NULL)",
    "INSERT INTO devices_device_tally SELECT 0, count(*) FROM devices_device",
    f"""
    CREATE FUNCTION devices_device_tally_add() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE n bigint;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            SELECT count(*) INTO n FROM new_rows;
        ELSE
            SELECT -count(*) INTO n FROM old_rows;
        END IF;
        IF n <> 0 THEN
            INSERT INTO devices_device_tally AS t (slot, devices)
            VALUES (mod(pg_backend_pid(), {SLOTS}), n)
            ON CONFLICT (slot) DO UPDATE SET devices = t.devices + EXCLUDED.devices;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION devices_device_tally_reset() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM devices_device_tally;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER devices_device_tally_insert AFTER INSERT ON devices_device"
    " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION devices_device_tally_add()",
    "CREATE TRIGGER devices_device_tally_delete AFTER DELETE ON devices_device"
    " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION devices_device_tally_add()",
    "CREATE TRIGGER devices_device_tally_truncate AFTER TRUNCATE ON devices_device"
    " FOR EACH STATEMENT EXECUTE FUNCTION devices_device_tally_reset()",
]

DROP = [
    "DROP TRIGGER IF EXISTS devices_device_tally_truncate ON devices_device",
    "DROP TRIGGER IF EXISTS devices_device_tally_delete ON devices_device",
    "DROP TRIGGER IF EXISTS devices_device_tally_insert ON devices_device",
    "DROP FUNCTION IF EXISTS devices_device_tally_reset()",
    "DROP FUNCTION IF EXISTS devices_device_tally_add()",
    "DROP TABLE IF EXISTS devices_device_tally",
]


def _run(statements: list[str]):  # noqa: ANN202
    def run(apps, schema_editor) -> None:  # noqa: ANN001
        if schema_editor.connection.vendor == "postgresql":
            for sql in statements:
                schema_editor.execute(sql)
    return run


class Migration(migrations.Migration):

    dependencies = [
        ("devices", "0012_device_list_indexes"),
    ]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP))]
