"""Migration operations that add an index without blocking a live fleet's writes (PostgreSQL).

A plain ``CREATE INDEX`` holds a SHARE lock on its table while it builds: on 100,000 devices,
every enrollment and presence update waits for the whole build. On PostgreSQL these
operations build ``CONCURRENTLY`` instead (writes go on; the build waits for transactions in
flight). Elsewhere (SQLite, the default database) they are the plain operation.

A concurrent build cannot run in a transaction, so a migration using them sets
``atomic = False``, and it can stop half done: an earlier index built, or, when a build fails
(cancelled, timed out, deadlocked), an INVALID index left behind under its name, which
PostgreSQL keeps updating but never reads. Running the migration again finishes the job: an
invalid leftover is dropped and built anew, and an index already built is left as it is
(``IF NOT EXISTS``; on SQLite, skipped when its name exists).
"""

from __future__ import annotations

from typing import Any

from django.db import NotSupportedError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations import AddIndex
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

_CONCURRENT = "CREATE INDEX CONCURRENTLY "


def index_validity(connection: BaseDatabaseWrapper, name: str) -> bool | None:
    """Return whether PostgreSQL's index ``name`` (found through the search path) is valid:
    False for the leftover of a failed concurrent build, None when there is no such index."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                       [connection.ops.quote_name(name)])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def _index_exists(schema_editor: BaseDatabaseSchemaEditor, table: str, name: str) -> bool:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        return name in connection.introspection.get_constraints(cursor, table)


def _build_concurrently(schema_editor: BaseDatabaseSchemaEditor, name: str,
                        create_sql: str) -> None:
    """Run ``create_sql`` (a ``CREATE INDEX CONCURRENTLY`` of index ``name``) so that it also
    finishes what an earlier, failed run left: drop an invalid leftover, keep a built index."""
    if schema_editor.connection.in_atomic_block and not schema_editor.collect_sql:
        raise NotSupportedError(f"index {name} is built CONCURRENTLY, which cannot run in a"
                                " transaction: set atomic = False on the migration")
    if not create_sql.startswith(_CONCURRENT):
        raise ValueError(f"not a concurrent index build: {create_sql!r}")
    if index_validity(schema_editor.connection, name) is False:
        schema_editor.execute(
            f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}")
    schema_editor.execute(_CONCURRENT + "IF NOT EXISTS " + create_sql[len(_CONCURRENT):])


class AddIndexConcurrentlyOnPostgres(AddIndex):
    """``AddIndex``, built ``CONCURRENTLY`` on PostgreSQL and re-runnable after a failed build.

    Its migration state is AddIndex's, so models declaring the index see no change."""

    def describe(self) -> str:
        """Say how the index is built, for ``migrate --plan``."""
        return super().describe() + " (concurrently on PostgreSQL)"

    def database_forwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor,
                          from_state: ProjectState, to_state: ProjectState) -> None:
        """Build the index; leave one already built (by an interrupted run) as it is."""
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            statement = self.index.create_sql(model, schema_editor, concurrently=True)
            _build_concurrently(schema_editor, self.index.name, str(statement))
        elif not _index_exists(schema_editor, model._meta.db_table, self.index.name):
            schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor,
                           from_state: ProjectState, to_state: ProjectState) -> None:
        """Drop the index (concurrently on PostgreSQL)."""
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.remove_index(model, self.index, concurrently=True)
        else:
            schema_editor.remove_index(model, self.index)


class CreateIndexConcurrentlyOnPostgres(Operation):
    """A B-tree index on columns of a table with no model state to declare it on (an
    auto-created many-to-many table), built like ``AddIndexConcurrentlyOnPostgres``."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, table: str, name: str, columns: list[str]) -> None:
        """Index ``name`` on ``table`` (``columns`` in order)."""
        self.table, self.name, self.columns = table, name, list(columns)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return the arguments that rebuild this operation (for the migration writer)."""
        return (self.__class__.__qualname__, [],
                {"table": self.table, "name": self.name, "columns": self.columns})

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        """No model state changes: the table's model is auto-created."""

    def describe(self) -> str:
        """Say what is built, for ``migrate --plan``."""
        return (f"Create index {self.name} on {self.table} ({', '.join(self.columns)})"
                " (concurrently on PostgreSQL)")

    def _create_sql(self, schema_editor: BaseDatabaseSchemaEditor, prefix: str) -> str:
        quote = schema_editor.quote_name
        columns = ", ".join(quote(column) for column in self.columns)
        return f"{prefix}{quote(self.name)} ON {quote(self.table)} ({columns})"

    def database_forwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor,
                          from_state: ProjectState, to_state: ProjectState) -> None:
        """Build the index; leave one already built (by an interrupted run) as it is."""
        if schema_editor.connection.vendor == "postgresql":
            _build_concurrently(schema_editor, self.name,
                                self._create_sql(schema_editor, _CONCURRENT))
        elif not _index_exists(schema_editor, self.table, self.name):
            schema_editor.execute(self._create_sql(schema_editor, "CREATE INDEX "))

    def database_backwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor,
                           from_state: ProjectState, to_state: ProjectState) -> None:
        """Drop the index (concurrently on PostgreSQL)."""
        concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
        schema_editor.execute(
            f"DROP INDEX {concurrently}IF EXISTS {schema_editor.quote_name(self.name)}")
