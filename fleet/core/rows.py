"""Model rows without the ORM's per-call compilation: insert one, or load one from raw SQL.

``Model.objects.create`` compiles its INSERT through the ORM on every call; on a hot path
(enrollment, where two inserts were a third of its CPU) that compilation is most of the
Python cost. `insert_row` writes the same row, values prepared as ``Model.save`` prepares
them (``pre_save``: ``auto_now_add``, defaults; then ``get_db_prep_save``), with a statement
built the first time the model is written to that database. It sends no signals: use it for
models nothing listens to, and only on fields with no database-side default or expression.
`load_row` makes a model instance of a row that hand-written SQL returned (an ``UPDATE ...
RETURNING``, a join), with the values converted as the ORM converts them. `lock_in_order`
takes row locks in primary-key order, the one order every batch writer uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.models.fields import NOT_PROVIDED

M = TypeVar("M", bound=Model)

_STATEMENTS: dict[tuple[str, type[Model]], tuple[str, list[Field], bool]] = {}


def _statement(model: type[Model],
               connection: BaseDatabaseWrapper) -> tuple[str, list[Field], bool]:
    """Return (SQL, the fields it writes in order, whether it returns the primary key)."""
    key = (connection.alias, model)
    if key not in _STATEMENTS:
        meta = model._meta
        auto = meta.auto_field
        fields = [f for f in meta.local_concrete_fields if f is not auto]
        for f in fields:  # what Model.save would hand to the database instead of a value
            if getattr(f, "db_default", NOT_PROVIDED) is not NOT_PROVIDED or getattr(
                    f, "generated", False) or hasattr(f, "get_placeholder"):
                raise TypeError(f"insert_row cannot write {meta.label}.{f.name}")
        qn = connection.ops.quote_name
        sql = (f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
               f"VALUES ({', '.join(['%s'] * len(fields))})")
        returning = auto is not None and connection.features.can_return_columns_from_insert
        if returning:
            sql += f" RETURNING {qn(auto.column)}"
        _STATEMENTS[key] = (sql, fields, returning)
    return _STATEMENTS[key]


def insert_row(obj: M, using: str = DEFAULT_DB_ALIAS) -> M:
    """Insert ``obj`` (a new instance) as ``obj.save()`` would; set its primary key; return it."""
    connection = connections[using]
    model = type(obj)
    sql, fields, returning = _statement(model, connection)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    auto = model._meta.auto_field
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if auto is not None:
            pk = (cursor.fetchone()[0] if returning else connection.ops.last_insert_id(
                cursor, model._meta.db_table, auto.column))
            setattr(obj, auto.attname, pk)
    obj._state.adding = False
    obj._state.db = using
    return obj


def load_row(model: type[M], columns: Sequence[str], row: Sequence[Any],
             using: str = DEFAULT_DB_ALIAS) -> M:
    """Return the ``model`` instance of ``row``, whose values are those of the model's
    ``columns`` (column names), converted as a query would (e.g. SQLite's datetimes, JSON).
    Fields not among ``columns`` are deferred: read on first access, as with ``only()``."""
    connection = connections[using]
    meta = model._meta
    by_column = {f.column: f for f in meta.concrete_fields}
    loaded: dict[str, Any] = {}
    for column, value in zip(columns, row, strict=True):
        field = by_column[column]
        expression = field.get_col(meta.db_table)
        if value is not None:
            for convert in (connection.ops.get_db_converters(expression)
                            + expression.get_db_converters(connection)):
                value = convert(value, expression, connection)
        loaded[field.attname] = value
    # from_db takes the values in the model's field order.
    names = [f.attname for f in meta.concrete_fields if f.attname in loaded]
    return model.from_db(using, names, [loaded[n] for n in names])


def lock_in_order(model: type[Model], ids: Sequence[int] | set[int],
                  using: str = DEFAULT_DB_ALIAS) -> None:
    """Lock the rows ``ids`` of ``model`` (``FOR NO KEY UPDATE``) in primary-key order, inside
    the caller's transaction; nothing on databases without row locks (SQLite).

    Batch writers (statuses, OTA reports, ingest's last seen) each touch thousands of device
    rows in one transaction; UPDATEs lock in whatever order their plan visits rows, so two such
    transactions could each hold a row the other wants. Taking every lock first, in one order,
    makes that impossible; NO KEY UPDATE leaves foreign-key checks (a rollout inserting
    deployments for these devices) unblocked.
    """
    connection = connections[using]
    if not ids or not connection.features.has_select_for_update:
        return
    meta = model._meta
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT 1 FROM {qn(meta.db_table)} WHERE {qn(meta.pk.column)} ="
                           f" ANY(%s) ORDER BY {qn(meta.pk.column)} FOR NO KEY UPDATE",
                           [sorted(ids)])
        else:
            list(model._default_manager.using(using).select_for_update()
                 .filter(pk__in=sorted(ids)).order_by("pk").values_list("pk", flat=True))
