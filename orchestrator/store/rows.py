"""Many rows into one table at once, without SQLAlchemy's per-row statement machinery.

A bulk intake of 1,000 signals writes some 5,000 rows (incidents, rules, decisions,
events). Through ``conn.execute(insert(table), rows)`` SQLAlchemy builds and processes a
parameter set per row (``construct_params`` and a bind-processor walk per column): for
these narrow rows that cost more CPU than SQLite's own work. :func:`insert_rows` binds
each row with the columns' own bind processors (taken once per call from the table's
types, so what is stored is exactly what SQLAlchemy would store: the same JSON text, the
same timestamp format) and hands the tuples to the driver's ``executemany``.

Only on SQLite, where the Python side is most of the cost (in a profile of a bulk
intake: 0.45 s in SQLite's ``executemany``, 1.4 s preparing the parameters); on
PostgreSQL the server does the work in its own process and the rows go through
SQLAlchemy as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, DateTime, Table, Update, bindparam, insert, select, update

from orchestrator.store.models import UTCDateTime


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in the caller's transaction."""
    if not rows:
        return
    names = list(rows[0])
    if conn.dialect.name != "sqlite" or _needs_defaults(table, names):
        conn.execute(insert(table), list(rows))
        return
    for row in rows:
        if len(row) != len(names):
            raise ValueError(f"rows for {table.name} must all have the keys {names}")
    sql, get, todo = _prepared(conn, table, tuple(names))
    memos: list[dict[Any, Any] | None] = [{} if timestamp else None for _, _, timestamp in todo]
    params: list[tuple[Any, ...]] = []
    bound: dict[int, tuple[Any, ...]] = {}  # a row object given again is bound once
    for row in rows:
        again = bound.get(id(row))
        if again is not None:
            params.append(again)
            continue
        values = list(get(row)) if len(names) > 1 else [get(row)]
        for (i, proc, _), memo in zip(todo, memos, strict=True):
            v = values[i]
            if memo is None or v is None:
                values[i] = proc(v)
            elif v in memo:
                values[i] = memo[v]
            else:
                values[i] = memo[v] = proc(v)
        params.append(bound.setdefault(id(row), tuple(values)))
    conn.exec_driver_sql(sql, params)


def update_rows(
    conn: Connection, table: Table, key: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """``UPDATE table SET columns WHERE key = ..`` for each of ``rows`` (dicts holding
    ``key`` and ``columns``), in the caller's transaction. On SQLite bound as
    :func:`insert_rows` binds (the columns' own processors) and handed to the driver;
    elsewhere through SQLAlchemy."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        params = [{f"b_{n}": row[n] for n in (key, *columns)} for row in rows]
        conn.execute(_update(table, key, columns), params)
        return
    sql, order, procs = _prepared_update(conn, table, key, tuple(columns))
    values = [
        tuple(
            v if proc is None else proc(v)
            for v, proc in zip((row[n] for n in order), procs, strict=True)
        )
        for row in rows
    ]
    conn.exec_driver_sql(sql, values)


def _update(table: Table, key: str, columns: Sequence[str]) -> Update:
    """``UPDATE table SET column = :b_column .. WHERE key = :b_key``."""
    return (
        update(table)
        .where(table.c[key] == bindparam("b_" + key))
        .values({c: bindparam("b_" + c) for c in columns})
    )


_PREPARED_UPDATES: dict[tuple[Any, ...], tuple[str, list[str], list[Any]]] = {}


def _prepared_update(
    conn: Connection, table: Table, key: str, columns: tuple[str, ...]
) -> tuple[str, list[str], list[Any]]:
    """The statement, the column of each parameter in order, and each one's processor."""
    dialect = conn.dialect
    cache_key = (table, key, columns, dialect)
    found = _PREPARED_UPDATES.get(cache_key)
    if found is not None:
        return found
    compiled = _update(table, key, columns).compile(dialect=dialect)
    order = [name.removeprefix("b_") for name in compiled.positiontup or ()]
    if sorted(order) != sorted((key, *columns)):  # pragma: no cover - qmark style
        raise RuntimeError(f"unexpected parameters {order} for {table.name}")
    procs = [table.c[n].type._cached_bind_processor(dialect) for n in order]
    if len(_PREPARED_UPDATES) >= 256:
        _PREPARED_UPDATES.clear()
    found = _PREPARED_UPDATES[cache_key] = (str(compiled), order, procs)
    return found


def insert_returning_ids(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *cols: Any
) -> list[Any]:
    """Insert ``rows`` and return ``(id, *cols)`` of each new row, in id order.

    On SQLite the rows go in through :func:`insert_rows` and are read back by id: the
    table's integer ``id`` is its rowid, each new one one above the largest in the table,
    and the insert holds the write lock, so the rows are the ``len(rows)`` consecutive ids
    that end at this connection's ``last_insert_rowid()``. Nothing is read before the
    insert: a read first would start a snapshot that another thread's commit could make
    stale before the write (SQLite then refuses the write). Elsewhere ``INSERT ..
    RETURNING``.
    """
    if not rows:
        return []
    ident = table.c.id
    if conn.dialect.name != "sqlite":
        out = conn.execute(insert(table).returning(ident, *cols), list(rows)).all()
        return sorted(out, key=lambda r: int(r[0]))
    insert_rows(conn, table, rows)
    last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
    first = last - len(rows) + 1
    found = conn.execute(
        select(ident, *cols).where(ident >= first, ident <= last).order_by(ident)
    ).all()
    if len(found) != len(rows):  # not consecutive (cannot happen under the write lock)
        raise RuntimeError(f"{table.name}: inserted {len(rows)} rows, found {len(found)}")
    return list(found)


# (position, bind processor, is a timestamp) of the columns whose values need converting
_Todo = list[tuple[int, Any, bool]]
_PREPARED: dict[tuple[Any, ...], tuple[str, Any, _Todo]] = {}


def _prepared(conn: Connection, table: Table, names: tuple[str, ...]) -> tuple[str, Any, _Todo]:
    """The statement, a getter of the values in its parameter order, and the conversions,
    built once per (table, columns, dialect): every batch of the intake inserts the same
    shapes, and compiling them per call would cost more than small batches save."""
    dialect = conn.dialect
    key = (table, names, dialect)
    found = _PREPARED.get(key)
    if found is not None:
        return found
    compiled = insert(table).compile(dialect=dialect, column_keys=list(names))
    order = list(compiled.positiontup or ())
    if sorted(order) != sorted(names):  # pragma: no cover - SQLite's qmark style
        raise RuntimeError(f"unexpected parameters {order} for {table.name}")
    todo: _Todo = []
    for i, name in enumerate(order):
        col = table.c[name]
        proc = col.type._cached_bind_processor(dialect)  # the type's own (see module doc)
        if proc is not None:
            # a batch's timestamps are mostly one "now": each distinct value converted once
            todo.append((i, proc, isinstance(col.type, DateTime | UTCDateTime)))
    if len(_PREPARED) >= 256:  # engines come and go in tests
        _PREPARED.clear()
    found = _PREPARED[key] = (str(compiled), itemgetter(*order), todo)
    return found


def _needs_defaults(table: Table, names: list[str]) -> bool:
    """Whether a column left out has a Python-side default SQLAlchemy would fill in."""
    given = set(names)
    return any(
        c.name not in given and (c.default is not None or c.onupdate is not None)
        for c in table.columns
    )
