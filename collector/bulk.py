"""Bulk upserts on PostgreSQL: COPY a batch's rows into a staging table, then one INSERT … SELECT.

An ``executemany`` upsert with ``RETURNING`` (to count each run's new rows) costs PostgreSQL a
statement per row; psycopg 3's ``COPY`` streams the rows in its C text format instead, and one
``INSERT … SELECT … ON CONFLICT DO NOTHING`` (or ``DO UPDATE … WHERE NOT frozen``) applies the same
exactly-once rule to them all, counting the rows each run inserted or changed.

A page of rows none of whose keys is stored yet (a backfill's, nearly every time) skips the
staging table: one ``SELECT`` of the page's key range finds nothing stored, and the rows are copied
straight into the table, under a savepoint, every row new (counted by its ``run_id`` in Python).
The range is only a hint: a row another writer (a replica, a second process) stored meanwhile, or
one the range missed, makes the ``COPY`` fail with a unique violation; the savepoint is rolled back
and the same rows take the upsert below, in the same transaction, so exactly once still holds by
the table's key, never by the probe. Tables whose stored rows are updated (``update``) always take
the upsert.

The staging table is a temporary table of the connection: the target's columns and ``NOT NULL``\\ s
(``LIKE``), no key and no index, emptied at every commit (``ON COMMIT DELETE ROWS``). It is created
in the transaction that uses it when it is missing (``IF NOT EXISTS``), so a transaction that rolls
back, a new connection, or a pooler that hands each transaction another server connection never
finds it absent.

Values go through the columns' own bind processors first (exact decimals, timezone-aware UTC times,
strict booleans, JSONB), as an ``executemany`` would send them; a value PostgreSQL refuses (a NUL
character, a text too long) fails the statement as the same ``sqlalchemy.exc.DBAPIError`` subclass,
so the writer's run-by-run fallback and its outage detection see no difference.

On SQLite, a table whose stored rows are never updated (``ON CONFLICT DO NOTHING``: trades, the
ledger, fills) takes :func:`insert_new`: the same conversions, then one ``executemany`` per run
through the driver, whose row count is that run's new rows (SQLite counts only the rows an
``INSERT`` added), instead of SQLAlchemy's ``RETURNING`` path, which builds each row's parameters
in Python: about half of ``Store.write``'s time on a page of 1,000 trades. A stream's batch,
already in its stored text (:func:`insert_prepared`), goes in as one statement instead, its rows
one JSON text read by ``json_each``: a single step the driver runs without the interpreter lock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import is_, itemgetter
from typing import Any

import msgspec
from sqlalchemy import Connection, Table, and_, column, func, or_, select, table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from .records import Prepared, decimal_text, time_text
from .schema import ExactDecimal, UTCDateTime

logger = logging.getLogger(__name__)

#: PostgreSQL's SQLSTATE of a duplicate key: a row another writer stored first.
UNIQUE_VIOLATION = "23505"

#: The savepoint a page copied straight into its table rolls back to when a key was stored.
_SAVEPOINT = "collector_copy"

#: Prefix of the staging tables' names (``collector_stage_trades``, ...): temporary, per connection.
STAGE_PREFIX = "collector_stage_"


def supported(connection: Connection) -> bool:
    """Whether ``connection`` can COPY: PostgreSQL through psycopg 3 (psycopg2 has no ``copy()``)."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


@dataclass(frozen=True)
class _Plan:
    """What a table's bulk upsert needs, built once per table and dialect."""

    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    create: str
    copy: str
    upsert: Any  # INSERT … SELECT … ON CONFLICT … and the per-run count (SQLAlchemy caches its SQL)
    direct: str | None  # COPY into the table itself (an insert-only table), else None
    # Whether a stored key lies in the page's key range, by how many leading key columns the
    # page's lowest and highest keys share: equal to those, the next one between its bounds. A
    # plain condition on the key's columns, which the planner meets with the key's index (a row
    # comparison, ``(pair, trade_id) >= (…)``, it can't estimate, and scans the table for).
    probes: tuple[str, ...]
    keys: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # a converted row's key
    run: int  # the position of run_id


_PlanKey = tuple[
    Table, tuple[str, ...], tuple[str, ...], tuple[str, ...], str | None, tuple[str, ...], str
]
_plans: dict[_PlanKey, _Plan] = {}


def on_conflict(
    stmt: Any,
    table_: Table,
    key: Sequence[str],
    update: Sequence[str],
    frozen: str | None,
    compare: Sequence[str] = (),
) -> Any:
    """``stmt`` (a dialect ``INSERT``) as an upsert by ``key``: a stored row updates ``update``
    (unless its ``frozen`` column is true, and, with ``compare``, only when one of those columns
    differs), or is left as it is. SQLite's insert has the same interface, so
    :mod:`collector.store` uses this for both databases."""
    if update:
        conditions: list[Any] = [] if frozen is None else [table_.c[frozen].is_(False)]
        if compare:
            conditions.append(
                or_(*(table_.c[c].is_distinct_from(stmt.excluded[c]) for c in compare))
            )
        return stmt.on_conflict_do_update(
            index_elements=list(key),
            set_={c: stmt.excluded[c] for c in update},
            where=and_(*conditions) if conditions else None,
        )
    return stmt.on_conflict_do_nothing(index_elements=list(key))


def _plan(
    connection: Connection,
    target: Table,
    names: tuple[str, ...],
    key: Sequence[str],
    update: Sequence[str],
    frozen: str | None,
    compare: Sequence[str] = (),
) -> _Plan:
    dialect = connection.dialect
    cache_key = (target, names, tuple(key), tuple(update), frozen, tuple(compare), dialect.name)
    plan = _plans.get(cache_key)
    if plan is not None:
        return plan
    quote = dialect.identifier_preparer.quote
    stage_name = STAGE_PREFIX + target.name
    stage = table(stage_name, *(column(n) for n in names))
    stmt = on_conflict(
        insert(target).from_select(names, select(*(stage.c[n] for n in names))),
        target,
        key,
        update,
        frozen,
        compare,
    )
    inserted = stmt.returning(target.c.run_id).cte("inserted")
    counted = select(inserted.c.run_id, func.count()).group_by(inserted.c.run_id)
    columns = ", ".join(quote(n) for n in names)
    plan = _Plan(
        converters=_converters(connection, target, names),
        create=(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(stage_name)} "
            f"(LIKE {quote(target.name)}) ON COMMIT DELETE ROWS"
        ),
        copy=f"COPY {quote(stage_name)} ({columns}) FROM STDIN",
        upsert=counted,
        direct=None if update else f"COPY {quote(target.name)} ({columns}) FROM STDIN",
        probes=tuple(
            f"SELECT 1 FROM {quote(target.name)} WHERE "
            + "".join(f"{quote(k)} = {{}} AND " for k in key[:same])
            + f"{quote(key[same])} BETWEEN {{}} AND {{}} LIMIT 1"
            for same in range(len(key))
        ),
        keys=_keys(tuple(names.index(k) for k in key)),
        run=names.index("run_id"),
    )
    _plans[cache_key] = plan
    return plan


def _keys(positions: tuple[int, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A converted row's key columns, as a tuple even for one column."""
    get = itemgetter(*positions)
    return get if len(positions) > 1 else lambda row: (get(row),)


@dataclass
class Rows:
    """A table's rows as tuples of their Python values, in ``names``' order (no dict a row)."""

    names: tuple[str, ...]
    values: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as dicts, for SQLAlchemy's ``executemany``."""
        return [dict(zip(self.names, v, strict=True)) for v in self.values]


def tuples(
    target: Table, groups: Sequence[tuple[Sequence[dict[str, Any]], dict[str, Any]]]
) -> Rows:
    """The rows of ``groups`` (each: a run's rows, and the values every one of them takes, as
    ``run_id``) as one :class:`Rows`: each row's own columns (those of the first row, in the
    table's order; a row without one of them is refused, ``KeyError``, as an ``executemany``
    refuses it), then the group's. A value a row holds for a group's column is the group's."""
    first = next((rows[0] for rows, _ in groups if rows), None)
    if first is None:
        return Rows((), [])
    extra = tuple(groups[0][1])
    own = tuple(c.name for c in target.columns if c.name in first and c.name not in extra)
    get = itemgetter(*own)
    values: list[tuple[Any, ...]] = []
    for rows, fixed in groups:
        tail = tuple(fixed[n] for n in extra)
        if len(own) > 1:
            values.extend([get(row) + tail for row in rows])
        else:
            values.extend([(get(row), *tail) for row in rows])
    return Rows(own + extra, values)


def upsert(
    connection: Connection,
    target: Table,
    key: Sequence[str],
    rows: Rows,
    update: Sequence[str] = (),
    frozen: str | None = None,
    compare: Sequence[str] = (),
) -> Counter[int]:
    """Insert ``rows`` into ``target`` in the connection's transaction; a row whose ``key`` is
    stored already updates ``update`` (unless its ``frozen`` column is true; with ``compare``,
    only when one of those columns differs) or is left as it is.
    Returns how many rows each ``run_id`` inserted or changed.

    ``rows`` must not hold a key twice (one statement can't touch a row twice); their columns are
    the ones written (the others get their defaults)."""
    if not rows.values:
        return Counter()
    plan = _plan(connection, target, rows.names, key, update, frozen, compare)
    values = _converted(plan.converters, rows.values)  # before COPY begins
    if plan.direct is not None and _copied(connection, plan, plan.direct, values):
        return Counter(map(itemgetter(plan.run), values))
    connection.exec_driver_sql(plan.create)
    _copy(connection, plan.copy, values)
    return Counter({run_id: n for run_id, n in connection.execute(plan.upsert)})


def copy_prepared(
    connection: Connection, target: Table, key: Sequence[str], rows: Prepared, run_id: int
) -> int:
    """:func:`upsert` of an insert-only table for one run's rows already in their stored text
    (:class:`~collector.records.Prepared`: a Trades page, a stream's batch): the tuples, with
    ``run_id``, copied as they are (PostgreSQL reads the decimals' and times' text as its
    ``COPY`` reads any), no typed row and no bind processor a value; straight into the table
    when no key of theirs is stored, else through the staging table's ``ON CONFLICT DO
    NOTHING``. Returns the rows inserted."""
    if not rows:
        return 0
    plan = _plan(connection, target, (*rows.columns, "run_id"), key, (), None)
    values = [(*row, run_id) for row in rows]
    assert plan.direct is not None  # no update: an insert-only table's plan
    if _copied(connection, plan, plan.direct, values):
        return len(values)
    connection.exec_driver_sql(plan.create)
    _copy(connection, plan.copy, values)
    return sum(n for _, n in connection.execute(plan.upsert))


def _copied(
    connection: Connection, plan: _Plan, direct: str, values: list[tuple[Any, ...]]
) -> bool:
    """Copy ``values`` straight into the table when none of their keys is stored (by the page's
    key range); False when some may be (the range holds a stored row, or the copy met one that
    another writer stored meanwhile: its savepoint is rolled back): then they take the upsert."""
    try:
        keys = [plan.keys(row) for row in values]
        low, high = min(keys), max(keys)
    except TypeError:  # a key Python can't order (a NULL): the upsert says what is wrong
        return False
    same = 0
    while same < len(low) - 1 and low[same] == high[same]:
        same += 1
    bounds = (*low[:same], low[same], high[same])
    raw = connection.connection.driver_connection
    assert raw is not None, "the connection was invalidated"  # SQLAlchemy would have raised
    from psycopg import sql

    # The look and the savepoint in one round trip (a simple query, its values as literals quoted
    # by the driver; the look's rows are the first result); kept to the commit when unused.
    probe = sql.SQL(plan.probes[same]).format(*map(sql.Literal, bounds)).as_string(raw)
    if connection.exec_driver_sql(f"{probe}; SAVEPOINT {_SAVEPOINT}").first() is not None:
        return False
    try:
        _copy(connection, direct, values)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise  # NOT NULL, a foreign key: the rows' own fault, as the upsert would say
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        logger.debug("%s: a key stored meanwhile; the page takes the upsert", direct)
        return False
    return True


@dataclass(frozen=True)
class _Inserts:
    """What a table's :func:`insert_new` needs, built once per table and columns."""

    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    run: int  # the position of run_id
    sql: str
    batch: str | None = None  # SQLite: the rows as one JSON text (insert_prepared)


_inserts: dict[tuple[Table, tuple[str, ...], tuple[str, ...], str], _Inserts] = {}

#: SQLite's version with the ``->>`` operator (3.38): a JSON value as SQL text or integer.
_JSON_ARROWS = (3, 38, 0)

#: A batch's tuples as one JSON text, in C: text stays text, whole numbers integers.
_json = msgspec.json.Encoder().encode


def insert_new(
    connection: Connection, target: Table, key: Sequence[str], rows: Rows
) -> Counter[int]:
    """Insert the ``rows`` whose ``key`` is not stored yet, leave the others (``ON CONFLICT DO
    NOTHING``), in the connection's transaction; returns how many rows each ``run_id`` inserted.

    For any dialect whose driver's ``executemany`` row count adds up the rows inserted (SQLite's).
    ``rows`` as :func:`upsert` takes them."""
    if not rows.values:
        return Counter()
    dialect = connection.dialect
    names = rows.names
    cache_key = (target, names, tuple(key), dialect.name)
    plan = _inserts.get(cache_key)
    if plan is None:
        plan = _inserts[cache_key] = _insert_plan(connection, target, names, key)
    values = _converted(plan.converters, rows.values)
    by_run: dict[int, list[tuple[Any, ...]]] = {}
    for row in values:
        by_run.setdefault(row[plan.run], []).append(row)
    added: Counter[int] = Counter()
    for run_id, group in by_run.items():
        n = connection.exec_driver_sql(plan.sql, group).rowcount
        if n:
            added[run_id] = n
    return added


def insert_prepared(
    connection: Connection, target: Table, key: Sequence[str], rows: Prepared, run_id: int
) -> int:
    """:func:`insert_new` for one run's rows already in their stored text (a stream's batch),
    ``run_id`` added; returns the rows inserted.

    On SQLite from 3.38 the batch is ONE statement, ``INSERT … SELECT value->>0, … FROM
    json_each(?)``, its rows one JSON text. The surprise it answers: CPython's ``sqlite3`` lets go
    of the interpreter lock around each step of an ``executemany``, one a row, and takes it back
    before the next row, so a writer beside a thread busy in Python (a stream's feed) waits up to
    the switch interval (5 ms) for every row: 40,000 rows beside a busy thread took 4,708 µs a row
    in a prototype, and 7.7 µs as one statement, whose single step runs without the lock while the
    feed goes on. Alone it costs about 3 µs a row more than ``executemany``. A batch with a NUL
    character in a value (which SQLite's JSON text would cut short) takes ``executemany``."""
    if not rows:
        return 0
    names = (*rows.columns, "run_id")
    dialect = connection.dialect
    cache_key = (target, names, tuple(key), dialect.name)
    plan = _inserts.get(cache_key)
    if plan is None:
        plan = _inserts[cache_key] = _insert_plan(connection, target, names, key)
    if plan.batch is not None:
        body = _json(rows)
        if b"\\u0000" not in body:
            # Bound as text: SQLite 3.45.0 read a BLOB given to a JSON function as its binary JSONB.
            n = connection.exec_driver_sql(plan.batch, (run_id, body.decode())).rowcount
            return max(n, 0)
    values = [(*row, run_id) for row in rows]
    return max(connection.exec_driver_sql(plan.sql, values).rowcount, 0)


def _insert_plan(
    connection: Connection, target: Table, names: tuple[str, ...], key: Sequence[str]
) -> _Inserts:
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in names)
    into = f"INSERT INTO {quote(target.name)} ({', '.join(quote(n) for n in names)}) "
    conflict = f" ON CONFLICT ({', '.join(quote(k) for k in key)}) DO NOTHING"
    batch = None
    if dialect.name == "sqlite" and sqlite3.sqlite_version_info >= _JSON_ARROWS:
        # The row's values by position, run_id (last) bound once; `WHERE true` keeps SQLite from
        # reading ON CONFLICT as a join's ON.
        picks = ", ".join([*(f"value->>{i}" for i in range(len(names) - 1)), "?"])
        batch = f"{into}SELECT {picks} FROM json_each(?) WHERE true{conflict}"
    return _Inserts(
        converters=_converters(connection, target, names),
        run=names.index("run_id"),
        sql=f"{into}VALUES ({marks}){conflict}",
        batch=batch,
    )


def _converters(
    connection: Connection, target: Table, names: tuple[str, ...]
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """Each column's bind processor (our exact decimals, UTC times, ...) by position."""
    dialect = connection.dialect
    return tuple(
        (i, f)
        for i, f in enumerate(
            _sqlite_text(target.c[n].type, dialect)
            or target.c[n].type.dialect_impl(dialect).bind_processor(dialect)
            for n in names
        )
        if f is not None
    )


def _sqlite_text(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """On SQLite, our exact types' text in one step each, the same text as their processors
    (``ExactDecimal``: plain notation; ``UTCDateTime``: ``YYYY-MM-DD HH:MM:SS.ffffff+00:00``)
    without SQLAlchemy's three layers of calls per value."""
    if dialect.name != "sqlite":
        return None
    if isinstance(type_, ExactDecimal):
        return decimal_text
    if isinstance(type_, UTCDateTime):
        return time_text
    return None


def _converted(
    converters: tuple[tuple[int, Callable[[Any], Any]], ...], values: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The rows as tuples of the driver's values, converted a column at a time: a value our own
    types refuse (a naive datetime) fails before anything is sent."""
    if not converters:
        return values
    columns: list[Any] = list(zip(*values, strict=True))
    for i, convert in converters:
        column_ = columns[i]
        columns[i] = (
            [None if v is None else convert(v) for v in column_]
            if any(map(is_, column_, repeat(None)))  # not `None in`: Decimal's == is slow
            else list(map(convert, column_))
        )
    return list(zip(*columns, strict=True))


def _copy(connection: Connection, statement: str, values: list[tuple[Any, ...]]) -> None:
    """``COPY … FROM STDIN`` through the driver, its errors raised as SQLAlchemy's (so an
    ``OperationalError`` still says "the database can't be reached", a ``DataError`` "refused")."""
    raw = connection.connection.driver_connection
    assert raw is not None, "the connection was invalidated"  # SQLAlchemy would have raised
    dbapi = connection.dialect.loaded_dbapi
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for record in values:
                copy.write_row(record)
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, dbapi.Error, dialect=connection.dialect
        ) from exc
