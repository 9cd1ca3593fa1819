"""``collector export``: a table or a view out as CSV, JSON lines, or Kraken's own CSV layouts.

Streamed in constant memory. The database formats every value as text, the same text on both
databases: times in UTC as PostgreSQL writes them (``2026-01-01 00:00:00.250137+00``, no trailing
zeros), decimals exactly as stored (``0.0001000``, never a float), booleans ``true``/``false``. A
CSV of the same rows is the same bytes from SQLite and from PostgreSQL (an empty text and NULL are
both an empty field). A CSV's text cells that a spreadsheet would run as a formula (starting with
``=``, ``+``, ``-``, ``@``, tab or CR) get a leading ``'`` (:func:`collector.sanitize.cell`, in
SQL on the database's side); numbers, times and JSON lines are as stored. On SQLite, SQLite writes a table's CSV lines itself, 10,000 rows a value
(:func:`_sqlite_csv`), a large table's on two cores (:func:`_sqlite_halves`); on PostgreSQL a
CSV is the server's ``COPY … TO STDOUT`` (what ``psql \\copy`` does), a large table's lines
joined in chunks by two server processes (:func:`_pg_chunks`); the other formats read a cursor
a batch at a time (server-side on PostgreSQL).

It reads through raw driver connections only, of SQLAlchemy's ``Engine`` or of
:class:`collector.rawdb.Database` (``collector export``'s: ``sqlite3`` and ``psycopg`` alone), and
knows every table's columns from :mod:`collector.exportcolumns`: it imports no SQLAlchemy, whose
import was most of an export's start (docs/benchmarks.md, "## Export").

``--format kraken`` writes the layouts of the files Kraken's website exports, the ones tax tools
import (docs/export.md has the sources):

* ``ledger`` → ledgers.csv: ``txid, refid, time, type, subtype, aclass, asset, amount, fee,
  balance``; txid is the ledger entry's id, time ``YYYY-MM-DD HH:MM:SS`` (UTC, cut to the
  second), amounts as Kraken's decimal text, text quoted and numbers not, a missing balance ``""``;
* ``my_trades`` → trades.csv: ``txid, ordertxid, pair, time, type, ordertype, price, cost, fee,
  vol, margin, misc, ledgers``; time with up to 4 decimals of a second, ``ledgers`` the ids of the
  trade's ledger entries (those collected), comma-separated.

Why one module of this length: every format (CSV by the database, JSON lines, Kraken's two
layouts) shares the one SQL that turns a column into its exported text, the formula-cell rule in
it, and where ``-o`` may write; a format apart would have to repeat or reach into them. The
two-core SQLite CSV and PostgreSQL's chunks are most of its length: each is the CSV path's
chunk SQL and quoting check run by two processes, which a module of their own would have to
reach into.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import fcntl
import io
import json
import logging
import os
import shutil
import sqlite3
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from select import select as fds_ready
from typing import IO, Any, Protocol

from . import defaults, rawdb
from .errors import ConfigError
from .exportcolumns import COLUMNS, TIME_COLUMNS
from .sanitize import FORMULA_START, cell
from .views import VIEWS

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "kraken")
#: Rows a batch (SQLite's fetchmany, PostgreSQL's server-side cursor).
BATCH = 5_000
#: Rows a chunk of a SQLite table's CSV, made by SQLite as one text.
CHUNK = 10_000

#: Kraken's layouts: the file's columns, each with what fills it.
KRAKEN_LEDGER = (
    "txid",
    "refid",
    "time",
    "type",
    "subtype",
    "aclass",
    "asset",
    "amount",
    "fee",
    "balance",
)
KRAKEN_TRADES = (
    "txid",
    "ordertxid",
    "pair",
    "time",
    "type",
    "ordertype",
    "price",
    "cost",
    "fee",
    "vol",
    "margin",
    "misc",
    "ledgers",
)
KRAKEN_FILES = {"ledger": "ledgers.csv", "my_trades": "trades.csv"}


@dataclass(frozen=True)
class Request:
    """What to export: a table or view, a format, and the rows (times UTC; ``until`` exclusive)."""

    table: str
    format: str = "csv"
    since: datetime | None = None
    until: datetime | None = None
    account: str | None = None


class Source(Protocol):
    """What an export reads through: SQLAlchemy's ``Engine``, or :class:`collector.rawdb.Database`
    (the driver's own connections, no SQLAlchemy imported: ``collector export``'s). Only its raw
    connections are used (``driver_connection``, ``cursor()``, ``rollback()``, ``close()``)."""

    @property
    def dialect(self) -> Any: ...

    def raw_connection(self) -> Any: ...

    def dispose(self, close: bool = True) -> None: ...


def tables() -> list[str]:
    """Every table and view that can be exported."""
    return sorted({*COLUMNS, *VIEWS})


def columns(name: str) -> list[tuple[str, str]]:
    """The columns of a table or view, each with its kind (time, decimal, bool, json, int,
    text): :data:`collector.exportcolumns.COLUMNS`', a view's added names text."""
    base, added = VIEWS.get(name, (name, ()))
    return [*COLUMNS[base], *((a, "text") for a in added)]


def time_column(name: str) -> str | None:
    """The column ``--since``/``--until`` filter table or view ``name`` on (its dataset's
    ``time_column``, else when its rows last changed, else its ``time``:
    :data:`collector.exportcolumns.TIME_COLUMNS`)."""
    return TIME_COLUMNS.get(VIEWS.get(name, (name, ()))[0])


def check(request: Request) -> None:
    """The request makes sense before the database is opened, or one :class:`ConfigError`."""
    if request.table not in tables():
        close = difflib.get_close_matches(request.table, tables(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of: {', '.join(tables())}"
        raise ConfigError(f"no table {request.table!r}; {hint}", key="TABLE")
    if request.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}", key="--format")
    if request.format == "kraken" and request.table not in KRAKEN_FILES:
        raise ConfigError(
            "--format kraken writes Kraken's ledgers.csv (table ledger) and trades.csv "
            "(table my_trades); use csv or jsonl for the others",
            key="--format",
        )
    if (request.since or request.until) and time_column(request.table) is None:
        raise ConfigError(f"{request.table} has no time to filter on", key="--since")
    if request.since and request.until and request.since >= request.until:
        raise ConfigError("--since must be before --until", key="--since")
    names = {c for c, _ in columns(request.table)}
    if request.account is not None and "account" not in names:
        raise ConfigError(f"{request.table} has no account column", key="--account")


# -- SQL: every value formatted by the database -------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: :data:`collector.sanitize.FORMULA_START` as code points, which each dialect's SQL compares
#: with a text's first (SQLite's ``unicode()``, PostgreSQL's ``ascii()``: an integer, where
#: ``substr(…, 1, 1) IN (…)`` made a text a value and compared texts; the CASE then cost 1.27x
#: the line's SQL instead of 1.39x on SQLite, docs/benchmarks.md).
_FORMULA_CODES = "(" + ", ".join(str(ord(c)) for c in FORMULA_START) + ")"
_FIRST_CODE = {"sqlite": "unicode", "postgresql": "ascii"}
#: Every formula character's code is at most this (``@``, 64): a text starting with a letter
#: (most are) is passed by one comparison before the ``IN`` list is tried (the CASE then cost
#: 0.72 s of PostgreSQL's CPU instead of 0.81 s on a million trades' COPY, 1.36 s instead of
#: 1.44 s on SQLite; docs/benchmarks.md).
_FORMULA_TOP = max(ord(c) for c in FORMULA_START)


def _text(
    column: str, kind: str, dialect: str, *, csv_text: bool = False, cells: bool = False
) -> str:
    """``column`` as the text the export writes, in ``dialect``'s SQL (``csv_text``: for
    PostgreSQL's COPY, which writes each value's text itself; ``cells``: a CSV's, where a text
    that a spreadsheet would run as a formula gets a leading ``'``, as
    :func:`collector.sanitize.cell` does, by the database at its own speed)."""
    c = f"t.{_q(column)}"
    if cells and kind == "text":
        first = f"{_FIRST_CODE[dialect]}({c})"  # NULL (SQLite) or 0 (PostgreSQL) for ''
        plain = f"NULLIF({c}, '')" if csv_text else c
        return (
            f"CASE WHEN {first} > {_FORMULA_TOP} THEN {c} "
            f"WHEN {first} IN {_FORMULA_CODES} THEN '''' || {c} ELSE {plain} END"
        )
    if kind == "bool":
        return f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} THEN 'true' ELSE 'false' END"
    if dialect == "sqlite":
        if kind == "time":  # stored as 2026-01-01 00:00:00.250000+00:00: written as PostgreSQL does
            return f"rtrim(rtrim(substr({c}, 1, 26), '0'), '.') || '+00'"
        return c  # decimals and JSON are stored as text already
    if csv_text:  # COPY writes every value as its text: no cast (a function call per value)
        return f"NULLIF({c}, '')" if kind == "text" else c  # '' as SQLite's CSV: empty either way
    if kind in ("time", "decimal", "json"):  # times: the session's time zone is UTC (_utc)
        return f"{c}::text"
    return c


#: How a statement names its parameters: sqlite3's, psycopg's, and psycopg.sql's (for COPY,
#: which takes literals only).
_STYLES = {"sqlite": ":{}", "postgresql": "%({})s", "literal": "{{{}}}"}


def _where(request: Request, dialect: str, style: str) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    column = time_column(request.table)
    mark = _STYLES[style].format
    for name, value, op in (("since", request.since, ">="), ("until", request.until, "<")):
        if value is not None:
            assert column is not None
            clauses.append(f"t.{_q(column)} {op} {mark(name)}")
            params[name] = _time_param(value, dialect)
    if request.account is not None:
        clauses.append(f"t.account = {mark('account')}")
        params["account"] = request.account
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _time_param(value: datetime, dialect: str) -> Any:
    value = value.astimezone(UTC)
    if dialect == "sqlite":  # compared with the stored text, which has this form
        return value.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    return value


def select(
    request: Request, dialect: str, *, csv_text: bool = False, style: str | None = None
) -> tuple[str, dict]:
    """The SELECT of a csv or jsonl export: every column as text, in the table's order (a CSV's
    text cells neutralised)."""
    cells = request.format == "csv"
    cols = ", ".join(
        f"{_text(c, k, dialect, csv_text=csv_text, cells=cells)} AS {_q(c)}"
        for c, k in columns(request.table)
    )
    where, params = _where(request, dialect, style or dialect)
    return f"SELECT {cols} FROM {_q(request.table)} t{where}", params


def kraken_select(request: Request, dialect: str) -> tuple[str, dict]:
    """The SELECT of Kraken's layout of ``ledger`` or ``my_trades``, oldest first."""
    where, params = _where(request, dialect, dialect)
    if dialect == "sqlite":
        second, fraction = "substr(t.time, 1, 19)", "substr(t.time, 1, 24)"

        def num(c: str) -> str:
            return f"t.{c}"

        ids = (
            "(SELECT group_concat(ledger_id, ',') FROM (SELECT ledger_id FROM ledger l "
            "WHERE l.account = t.account AND l.refid = t.txid ORDER BY ledger_id))"
        )
    else:
        utc = "t.time AT TIME ZONE 'UTC'"
        second = f"to_char({utc}, 'YYYY-MM-DD HH24:MI:SS')"
        fraction = f"substr(to_char({utc}, 'YYYY-MM-DD HH24:MI:SS.US'), 1, 24)"

        def num(c: str) -> str:
            return f"t.{c}::text"

        ids = (
            "(SELECT string_agg(ledger_id, ',' ORDER BY ledger_id) FROM ledger l "
            "WHERE l.account = t.account AND l.refid = t.txid)"
        )
    if request.table == "ledger":
        fields = (
            f"t.ledger_id, t.refid, {second}, t.type, t.subtype, t.aclass, t.asset, "
            f"{num('amount')}, {num('fee')}, {num('balance')}"
        )
        order = "t.time, t.ledger_id"
    else:
        fields = (
            f"t.txid, t.ordertxid, t.pair, {fraction}, t.type, t.ordertype, {num('price')}, "
            f"{num('cost')}, {num('fee')}, {num('vol')}, {num('margin')}, t.misc, {ids}"
        )
        order = "t.time, t.txid"
    return f"SELECT {fields} FROM {request.table} t{where} ORDER BY {order}", params


# -- writing -------------------------------------------------------------------------------------


def _quoted(value: str | None) -> str:
    """A text field of Kraken's CSV: quoted, and neutralised when a spreadsheet would run it."""
    value = cell(value)
    return '""' if value is None else '"' + value.replace('"', '""') + '"'


def _quoting_cr(batch: Sequence[Sequence[Any]]) -> str:
    """CSV lines of ``batch`` ending in "\n", a cell holding a "\r" quoted as one holding a
    "\n" is (csv.writer quotes what its line terminator holds: "\r\n" here, then cut)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    lines = []
    for row in batch:
        writer.writerow(row)
        lines.append(buffer.getvalue()[:-2] + "\n")
        buffer.seek(0)
        buffer.truncate()
    return "".join(lines)


def _kraken_lines(request: Request, rows: Iterator[Sequence[Any]]) -> Iterator[str]:
    """Kraken's CSV: every header and text field quoted, numbers bare (as its files are)."""
    ledger = request.table == "ledger"
    yield ",".join(_quoted(c) for c in (KRAKEN_LEDGER if ledger else KRAKEN_TRADES)) + "\n"
    if ledger:
        for r in rows:
            texts = ",".join(_quoted(v) for v in r[:7])
            balance = _quoted(None) if r[9] is None else r[9]
            yield f"{texts},{r[7]},{r[8]},{balance}\n"
        return
    for r in rows:
        when = r[3].rstrip("0").rstrip(".") if "." in r[3] else r[3]
        head = ",".join(_quoted(v) for v in (r[0], r[1], r[2], when, r[4], r[5]))
        margin = "" if r[10] is None else r[10]
        yield f"{head},{r[6]},{r[7]},{r[8]},{r[9]},{margin},{_quoted(r[11])},{_quoted(r[12])}\n"


def _jsonl_lines(request: Request, rows: Iterator[Sequence[Any]]) -> Iterator[str]:
    """One JSON object a row: decimals and times as strings (exact), integers as numbers,
    booleans as booleans, JSON columns as JSON."""
    cols = columns(request.table)
    names = [c for c, _ in cols]
    convert: list[Callable[[Any], Any] | None] = []
    for _, kind in cols:
        if kind == "bool":
            convert.append(lambda v: v == "true")
        elif kind == "json":
            convert.append(lambda v: json.loads(v) if isinstance(v, str) else v)
        else:
            convert.append(None)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for row in rows:
        values = [v if f is None or v is None else f(v) for f, v in zip(convert, row, strict=True)]
        yield dumps(dict(zip(names, values, strict=True))) + "\n"


def export(engine: Source, request: Request, out: IO[bytes]) -> int:
    """Write ``request``'s rows to ``out`` (binary, UTF-8); returns how many rows."""
    check(request)
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        return _export(engine, request, out)
    except dbapi_error as exc:
        if getattr(engine.dialect, "raw", False):  # collector.rawdb's: the driver's errors
            raise
        # The raw connection's errors are the driver's own: SQLAlchemy's, as everywhere else.
        from sqlalchemy.exc import DBAPIError

        raise DBAPIError.instance(None, None, exc, dbapi_error) from exc


def _export(engine: Source, request: Request, out: IO[bytes]) -> int:
    raw = engine.raw_connection()
    try:
        count = _written(engine, raw, request, out)
    except BaseException:
        # The first error is the one to tell: a lost connection's rollback fails too.
        with contextlib.suppress(Exception):
            raw.rollback()
        raw.close()
        raise
    raw.rollback()  # read-only: nothing to keep, and a server-side cursor's transaction ends
    raw.close()
    return count


def _written(engine: Source, raw: Any, request: Request, out: IO[bytes]) -> int:
    """``request``'s rows written to ``out`` through ``raw``, a raw connection of ``engine``."""
    dialect = engine.dialect.name
    if dialect == "postgresql" and request.format == "csv":
        if request.table not in VIEWS:
            count = _pg_chunks(engine, raw.driver_connection, request, out)
            if count is not None:
                return count
        return _copy_csv(raw.driver_connection, request, out)
    if dialect == "sqlite" and request.format == "csv" and request.table not in VIEWS:
        return _sqlite_csv(engine, raw, request, out)
    if request.format == "kraken":
        sql, params = kraken_select(request, dialect)
    else:
        sql, params = select(request, dialect)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    rows = _rows(raw, dialect, sql, params)
    try:
        count = 0
        if request.format == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow([c for c, _ in columns(request.table)])
            text.write(buffer.getvalue())
            for batch in rows:
                buffer.seek(0)
                buffer.truncate()
                writer.writerows(batch)
                chunk = buffer.getvalue()
                # csv quotes a cell with the line terminator's "\n", not one with a bare "\r",
                # which readers (Python's, spreadsheets) take for a line's end: "x\r=1+2" would
                # put a formula at a line's start. Rare: that batch is written again, quoted.
                text.write(chunk if "\r" not in chunk else _quoting_cr(batch))
                count += len(batch)
            return count
        lines = _kraken_lines if request.format == "kraken" else _jsonl_lines
        counted = _counting(rows)
        text.writelines(lines(request, counted.rows()))
        return counted.count
    finally:
        rows.close()  # its cursor, while the connection is open (a reader gone: `| head`)
        try:
            text.flush()
        finally:
            text.detach()  # ``out`` is the caller's to close


class _counting:
    """The rows of batches, one at a time, counted."""

    def __init__(self, batches: Iterator[list[Any]]) -> None:
        self.batches, self.count = batches, 0

    def rows(self) -> Iterator[Sequence[Any]]:
        for batch in self.batches:
            self.count += len(batch)
            yield from batch


def _rows(raw: Any, dialect: str, sql: str, params: dict) -> Generator[list[Any], None, None]:
    """The query's rows in batches of ``BATCH``: SQLite's cursor reads as it goes; on
    PostgreSQL a server-side (named) cursor, so the server holds the result, not us."""
    if dialect == "sqlite":
        cursor = raw.cursor()
    else:
        _utc(raw.driver_connection)
        cursor = raw.driver_connection.cursor(name="collector_export")
        cursor.itersize = BATCH
    try:
        cursor.execute(sql, params)
        while True:
            batch = cursor.fetchmany(BATCH)
            if not batch:
                return
            yield batch
    finally:
        cursor.close()


#: A text value that CSV must quote: it holds the delimiter, a quote or a line break.
_NEEDS_QUOTES = '*[,"\n\r]*'


def _sqlite_csv(engine: Source, raw: Any, request: Request, out: IO[bytes]) -> int:
    """A table's CSV on SQLite, made by SQLite itself: ``CHUNK`` rows at a time as one text
    (``printf`` of each row, joined by ``group_concat``), the chunks walked by rowid in one read
    transaction (one snapshot). Python checks each chunk in C-speed scans (as many separators and
    line breaks as the rows make, no quote): a chunk with a text that needs quoting (a comma in
    ``misc``, a JSON) is asked again with every such field quoted as Python's csv would. One
    object per 10,000 rows instead of one per value, and that one bytes (SQLite's UTF-8 as it
    is, ``CAST … AS BLOB``): no text decoded to be encoded again.

    A large table whose rowids are dense is made on two cores (:func:`_sqlite_halves`): the
    chunk SQL alone costs SQLite more CPU than ``sqlite3 -csv`` spends on the whole table."""
    cols = columns(request.table)
    values = [_text(column, kind, "sqlite", cells=True) for column, kind in cols]
    plain = f"printf('{','.join(['%s'] * len(cols))}', {', '.join(values)})"
    quoted = []
    for value, (_, kind) in zip(values, cols, strict=True):
        if kind in ("text", "json"):  # times, numbers and booleans never need quotes
            value = (
                f"CASE WHEN {value} GLOB :pattern "
                f"THEN '\"' || replace({value}, '\"', '\"\"') || '\"' ELSE {value} END"
            )
        quoted.append(f"coalesce({value}, '')")
    where, params = _where(request, "sqlite", "sqlite")
    rowid = "t.rowid > :after AND t.rowid <= :upto"
    where = f"{where} AND {rowid}" if where else f" WHERE {rowid}"
    table = _q(request.table)

    def chunk(line: str) -> str:
        return (
            f"SELECT CAST(group_concat(line, char(10)) AS BLOB), max(rid), count(*) FROM "
            f"(SELECT t.rowid AS rid, {line} AS line FROM {table} t{where} "
            f"ORDER BY t.rowid LIMIT {CHUNK})"
        )

    careful = chunk(" || ',' || ".join(quoted))
    chunks = _Chunks(chunk(plain), careful, params, len(cols) - 1, _BOUNDS.format(table=table))
    out.write((",".join(_csv_field(c) for c, _ in cols) + "\n").encode())
    monitor = _monitor(engine, raw)
    cursor = raw.cursor()
    try:
        version = _data_version(monitor) if monitor is not None else None
        cursor.execute("BEGIN")  # one snapshot for every chunk
        bounds = cursor.execute(chunks.bounds).fetchone()
        if monitor is not None and _two_cores_pay(*bounds):
            count = _sqlite_halves(engine, monitor, version, cursor, chunks, bounds, out)
            if count is not None:
                logger.debug("%s: %d rows made on two cores", request.table, count)
                return count
        return _walk(cursor, chunks, -(2**63), 2**63 - 1, out)
    finally:
        cursor.close()
        if monitor is not None:
            monitor.close()


def _walk(cursor: Any, chunks: _Chunks, after: int, upto: int, out: IO[bytes]) -> int:
    """The CSV lines of the rows after rowid ``after`` up to ``upto``, a chunk at a time, written
    to ``out``; how many rows."""
    count = 0
    while True:
        text, last, n = chunks.read(cursor, after, upto)
        if not n:
            return count
        out.write(text)
        out.write(b"\n")
        count, after = count + n, last


@dataclass(frozen=True)
class _Chunks:
    """The two statements of a chunk (``fast``: each row's ``printf``; ``careful``: each text
    quoted where CSV needs it) and how to tell the fast one's text needs the careful one."""

    fast: str
    careful: str
    params: dict[str, Any]
    commas: int
    bounds: str  # :data:`_BOUNDS` of the table

    def read(self, cursor: Any, after: int, upto: int) -> tuple[bytes, int, int]:
        """The CSV lines of the rows after rowid ``after`` up to ``upto`` (at most ``CHUNK``),
        the last rowid read, and how many rows."""
        bound = {**self.params, "after": after, "upto": upto}
        text, last, n = cursor.execute(self.fast, bound).fetchone()
        if n and (
            text.count(b",") != n * self.commas
            or text.count(b"\n") != n - 1
            or b'"' in text
            or b"\r" in text
        ):
            bound = {**self.params, "after": after, "upto": last, "pattern": _NEEDS_QUOTES}
            text, last, n = cursor.execute(self.careful, bound).fetchone()
        return text, last, n


#: The table's first and last rowid and its rows (each its own subquery: ``min()`` and ``max()``
#: in one SELECT make SQLite scan the table, 0.18 s a million rows, instead of two seeks).
_BOUNDS = (
    "SELECT (SELECT min(rowid) FROM {table}), (SELECT max(rowid) FROM {table}), "
    "(SELECT count(*) FROM {table})"
)
#: From this many rows on, a SQLite table's CSV is made on two cores: below it the second
#: process's start (a fork, a connection, a read transaction: a few milliseconds) weighs more
#: than the half of the chunks' SQL it takes (about 1.3 s of CPU a million trades).
TWO_CORES_FROM = 50_000
#: How long the worker may take to begin its read transaction (a rollback-journal database's
#: writer may hold it off up to SQLite's busy timeout) before the export goes on on one core.
_READY_WITHIN = defaults.SQLITE_BUSY_TIMEOUT_MS / 1000 + 5
_FRAME = struct.Struct("<qq")  # the worker's word: its part's bytes and rows, or one of these:
_ERROR, _READY, _CHANGED = -1, -2, -3


def _two_cores_pay(first: int | None, last: int | None, rows: int) -> bool:
    """Whether the table is large enough for two cores to pay and the process may use two:
    it has two cores, and no other thread (a fork copies only the calling thread: another
    thread's lock held at that moment, one of SQLite's own mutexes say, would never be released
    in the worker)."""
    if first is None or last is None or rows < TWO_CORES_FROM or not hasattr(os, "fork"):
        return False
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use (Linux)
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return threading.active_count() == 1 and cores >= 2


def _monitor(engine: Source, raw: Any) -> Any:
    """A second connection to the file of ``raw``, which watches ``PRAGMA data_version`` while
    the chunks are read (None for a database in memory: another connection sees another one)."""
    rows = raw.driver_connection.execute("PRAGMA database_list").fetchall()
    if not any(name == "main" and file for _, name, file in rows):
        return None
    return engine.raw_connection()


def _data_version(monitor: Any) -> int:
    return int(monitor.driver_connection.execute("PRAGMA data_version").fetchone()[0])


def _sqlite_halves(
    engine: Source,
    monitor: Any,
    version: int | None,
    cursor: Any,
    chunks: _Chunks,
    bounds: tuple[int, int, int],
    out: IO[bytes],
) -> int | None:
    """The chunks made on two cores: the rowids cut in two halves, this process writing the
    first half's chunks on ``cursor`` while a forked worker, on a read-only connection of its
    own, writes the second half's into an unnamed temporary file, copied after them (the output
    in rowid order, as one process writes it). The two meet twice, not at every chunk: on a
    loaded machine each meeting waits for the other to be scheduled. Both read the same
    snapshot, proven: no other connection committed (``PRAGMA data_version`` of ``monitor``, a
    third connection, unchanged) between before this process's read transaction began and after
    the worker's had. None when it changed (the worker is stopped, and the caller makes every
    chunk on ``cursor``: its snapshot is whole); a worker that fails later (a full temporary
    folder) leaves its half to this process."""
    import multiprocessing  # only here: 13 ms of a start that is mostly imports

    first, last, _ = bounds
    middle = first - 1 + (last - first + 1) // 2
    try:
        part = tempfile.TemporaryFile(prefix="collector-export-")  # noqa: SIM115 (closed below)
    except OSError as exc:  # no temporary folder to write: one core
        logger.debug("no temporary file for the export's worker (%s): one core", exc)
        return None
    with part:
        read_fd, write_fd = os.pipe()
        args = (engine, chunks, bounds, (middle, last), part.fileno(), read_fd, write_fd)
        worker = multiprocessing.get_context("fork").Process(target=_sqlite_worker, args=args)
        try:
            worker.start()
        finally:
            os.close(write_fd)
        return _sqlite_first_half(
            worker, read_fd, part, monitor, version, cursor, chunks, (first, middle, last), out
        )


def _sqlite_first_half(
    worker: Any,
    read_fd: int,
    part: IO[bytes],
    monitor: Any,
    version: int | None,
    cursor: Any,
    chunks: _Chunks,
    cut: tuple[int, int, int],
    out: IO[bytes],
) -> int | None:
    """This process's side of :func:`_sqlite_halves`, the worker started: ``cut`` is the rowids'
    first, the end of this process's half, and the last."""
    first, middle, last = cut
    done = False
    try:
        with open(read_fd, "rb") as pipe:
            if not fds_ready([read_fd], [], [], _READY_WITHIN)[0]:
                logger.debug("the export's worker did not begin: one core")
                return None
            _, ready = _frame(pipe)
            if ready != _READY or _data_version(monitor) != version:
                logger.debug("the database changed as the export began: one core")
                return None
            count = _walk(cursor, chunks, first - 1, middle, out)
            try:
                _, rows = _frame(pipe)
            except sqlite3.Error as exc:
                logger.debug("the export's worker failed (%s): its half on one core", exc)
                count += _walk(cursor, chunks, middle, last, out)
            else:
                part.seek(0)
                shutil.copyfileobj(part, out, _PART_BUFFER)
                count += rows
            done = True
            return count
    finally:
        if not done:
            worker.kill()
        worker.join()


#: The worker's writes into its part, and the copy of it into the output, a megabyte at a time.
_PART_BUFFER = 1 << 20


def _frame(pipe: IO[bytes]) -> tuple[int, int]:
    """The worker's next word: ``(0, _READY)`` (or ``_CHANGED``: its snapshot is not the
    parent's), then its part's bytes and rows; its error raised as the driver's."""
    head = pipe.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise sqlite3.OperationalError("the export's second process ended before its work")
    size, n = _FRAME.unpack(head)
    if n == _ERROR:
        raise sqlite3.OperationalError(pipe.read(size).decode(errors="replace"))
    return size, n


def _sqlite_worker(
    engine: Source,
    chunks: _Chunks,
    bounds: tuple[int, int, int],
    half: tuple[int, int],
    part_fd: int,
    read_fd: int,
    write_fd: int,
) -> None:
    """The forked worker of :func:`_sqlite_halves`: its own connection (the parent's pool is
    left alone, as SQLAlchemy asks of a fork), a read transaction, a ready word once its
    snapshot is taken, then the rows of ``half`` (after rowid, up to rowid) written into the
    part, and the word of its bytes and rows; an error is a word the parent reads. Nothing
    escapes it: a parent gone (its pipe closed) or an interrupt ends it quietly, where
    multiprocessing would print a traceback."""
    try:
        os.close(read_fd)
        with open(write_fd, "wb", buffering=0) as pipe:
            try:
                engine.dispose(close=False)
                raw = engine.raw_connection()
                cursor = raw.cursor()
                cursor.execute("BEGIN")
                seen = tuple(cursor.execute(chunks.bounds).fetchone())  # the snapshot taken
                pipe.write(_FRAME.pack(0, _READY if seen == tuple(bounds) else _CHANGED))
                with open(part_fd, "wb", buffering=_PART_BUFFER, closefd=False) as part:
                    rows = _walk(cursor, chunks, *half, part)
                    part.flush()
                    pipe.write(_FRAME.pack(part.tell(), rows))
            except Exception as exc:  # told to the parent, which makes the half itself
                message = str(exc).encode()[:1000]
                pipe.write(_FRAME.pack(len(message), _ERROR) + message)
    except BaseException:
        pass


def _utc(conn: Any) -> None:
    """This transaction's times as PostgreSQL writes them in UTC (``2026-01-01 00:00:00.25+00``):
    the server formats them itself, at the cost of none; back as they were at its end."""
    conn.execute("SET LOCAL TIME ZONE 'UTC'")
    conn.execute("SET LOCAL DateStyle = 'ISO'")


def _copy_csv(conn: Any, request: Request, out: IO[bytes]) -> int:
    """A CSV through PostgreSQL's ``COPY (SELECT …) TO STDOUT``: the server writes it, we pass the
    blocks on."""
    from psycopg import sql as pgsql

    _utc(conn)
    query, params = select(request, "postgresql", csv_text=True, style="literal")
    # COPY takes no parameters: the values go in as literals, quoted by psycopg.
    composed = pgsql.SQL(query).format(**{k: pgsql.Literal(v) for k, v in params.items()})
    statement = pgsql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(composed)
    out.write((",".join(_csv_field(c) for c, _ in columns(request.table)) + "\n").encode())
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy:
            for block in copy:
                out.write(block)
        return max(cursor.rowcount, 0)


#: A chunk of a PostgreSQL table's CSV: this many of the table's 8 KB blocks (about 10,000
#: trades, 1 MB: what the server holds for one chunk's text, and our process too).
PG_CHUNK_BLOCKS = 128
#: From this many chunks on, a PostgreSQL table's CSV is made in chunks by two server processes
#: (:func:`_pg_chunks`); a smaller table is one COPY of its rows.
PG_CHUNKS_FROM = 5


def _pg_chunks(engine: Source, conn: Any, request: Request, out: IO[bytes]) -> int | None:
    """A large table's CSV on PostgreSQL, the lines made by the server in chunks of
    ``PG_CHUNK_BLOCKS`` blocks of the table (a TID range scan each: its rows in the order a
    sequential scan reads them, as the one COPY of the rows writes them), joined by
    ``string_agg``: one COPY row a chunk, where psycopg reads a COPY a row per call (0.8 s of
    our CPU a million rows, more than the server's whole COPY). Two server processes make them,
    the even chunks on ``conn`` and the odd ones on a second connection, in one snapshot
    (``pg_export_snapshot``, the table locked against a rewrite before the snapshot is taken,
    so every row it sees is in a block it counts); they are read in turn, so the CSV is in
    order. A chunk whose text a field's comma, quote or line break would break (counted as on
    SQLite) is asked again with its text fields quoted, on a third connection in the same
    snapshot. None for a table too small to chunk (the caller makes one COPY)."""
    from psycopg import sql as pgsql

    cols = columns(request.table)
    table = _q(request.table)
    conn.rollback()  # a transaction of its own, its isolation set before its first query
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    _utc(conn)
    conn.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
    blocks = conn.execute(
        "SELECT pg_relation_size(%s) / current_setting('block_size')::int", (request.table,)
    ).fetchone()[0]
    second = (
        _second_in_snapshot(engine, conn) if blocks >= PG_CHUNKS_FROM * PG_CHUNK_BLOCKS else None
    )
    if second is None:
        conn.rollback()
        return None
    second_conn, snapshot = second
    where, params = _where(request, "postgresql", "literal")
    literals = {k: pgsql.Literal(v) for k, v in params.items()}
    values = [  # each a text: what COPY would write of it
        _text(c, k, "postgresql", csv_text=k == "text", cells=True)
        + ("::text" if k == "int" else "")
        for c, k in cols
    ]
    plain = " || ',' || ".join(f"coalesce({v}, '')" for v in values)
    quoted = []
    for value, (_, kind) in zip(values, cols, strict=True):
        if kind in ("text", "json"):  # as COPY's CSV quotes: a comma, a quote, a line break
            value = (
                f"CASE WHEN {value} ~ '[,\"\\r\\n]' "
                f"THEN '\"' || replace({value}, '\"', '\"\"') || '\"' ELSE {value} END"
            )
        quoted.append(f"coalesce({value}, '')")
    ranges = "t.ctid >= ('(' || b || ',0)')::tid AND t.ctid < ('(' || (b + {size}) || ',0)')::tid"
    ranges = ranges.format(size=PG_CHUNK_BLOCKS)
    where = f"{where} AND {ranges}" if where else f" WHERE {ranges}"

    def chunks(line: str, series: str) -> pgsql.Composable:
        query = (
            f"SELECT b::int8, c.text, c.n FROM {series}, LATERAL (SELECT convert_to("
            f"string_agg(line, E'\\n'), 'UTF8') AS text, count(*) AS n FROM (SELECT {line} "
            f"AS line FROM {table} t{where}) s) c"
        )
        return pgsql.SQL(query).format(**literals)  # COPY takes literals, not parameters

    step = 2 * PG_CHUNK_BLOCKS
    commas = len(cols) - 1
    series = [
        f"generate_series({first}, {blocks - 1}, {step}) AS b" for first in (0, PG_CHUNK_BLOCKS)
    ]
    careful: Any = None
    try:
        out.write((",".join(_csv_field(c) for c, _ in cols) + "\n").encode())
        count = 0
        with contextlib.ExitStack() as stack:
            copies = []
            for each, numbers in zip((conn, second_conn.driver_connection), series, strict=True):
                cursor = stack.enter_context(each.cursor())
                copy = stack.enter_context(cursor.copy(_copy_binary(chunks(plain, numbers))))
                copy.set_types(["int8", "bytea", "int8"])
                copies.append(copy)
            for start in range(0, blocks, PG_CHUNK_BLOCKS):
                row = copies[(start // PG_CHUNK_BLOCKS) % 2].read_row()
                if row is None or row[0] != start:  # a nested loop over the series: in order
                    raise RuntimeError(f"chunk {start} of {request.table} came out of order")
                _, text, n = row
                if n and (
                    text.count(b",") != n * commas
                    or text.count(b"\n") != n - 1
                    or b'"' in text
                    or b"\r" in text
                ):
                    if careful is None:
                        careful = engine.raw_connection()
                        _in_snapshot(careful.driver_connection, snapshot)
                    again = chunks(" || ',' || ".join(quoted), f"(VALUES ({start})) AS v(b)")
                    with careful.driver_connection.cursor(binary=True) as asked:
                        _, text, n = asked.execute(again).fetchone()
                if n:
                    out.write(text)
                    out.write(b"\n")
                    count += n
            for copy in copies:  # each COPY read to its end: its connection free again
                if copy.read_row() is not None:
                    raise RuntimeError(f"{request.table} had more chunks than blocks")
        logger.debug("%s: %d rows in chunks by two server processes", request.table, count)
        return count
    finally:
        for extra in (second_conn, careful):
            if extra is not None:
                with contextlib.suppress(Exception):
                    extra.rollback()
                extra.close()


def _second_in_snapshot(engine: Source, conn: Any) -> tuple[Any, str] | None:
    """A second connection in ``conn``'s snapshot, and the snapshot's name; None when the server
    will not give one (no connection left under ``max_connections``, a snapshot it cannot
    export): the table is then one COPY on ``conn``, as before, not an error."""
    import psycopg

    refused: tuple[type[BaseException], ...] = (psycopg.Error,)
    if not getattr(engine.dialect, "raw", False):  # SQLAlchemy's pool wraps a refused connect
        from sqlalchemy.exc import DBAPIError

        refused = (psycopg.Error, DBAPIError)
    try:
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        second = engine.raw_connection()
    except refused as exc:
        logger.debug("no second connection in the export's snapshot (%s): one COPY", exc)
        return None
    try:
        _in_snapshot(second.driver_connection, snapshot)
    except psycopg.Error as exc:
        logger.debug("no second connection in the export's snapshot (%s): one COPY", exc)
        second.close()
        return None
    return second, snapshot


def _copy_binary(query: Any) -> Any:
    from psycopg import sql as pgsql

    return pgsql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)


def _in_snapshot(conn: Any, snapshot: str) -> None:
    """``conn``'s next transaction in ``snapshot`` (exported by a transaction still open), its
    times in UTC."""
    from psycopg import sql as pgsql

    conn.rollback()
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute(pgsql.SQL("SET TRANSACTION SNAPSHOT {}").format(pgsql.Literal(snapshot)))
    _utc(conn)


def _csv_field(name: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([name])
    return buffer.getvalue()


# -- where it goes -------------------------------------------------------------------------------

#: The names ``-o`` takes for the standard output.
STDOUT = ("-", "/dev/stdout")


@dataclass(frozen=True)
class Target:
    """Where an export goes: ``path`` None is stdout; ``stream`` writes into ``path`` in place (a
    FIFO or a character device such as ``/dev/null``); otherwise a new file replaces ``path``
    once complete."""

    path: str | None
    stream: bool = False


def _streamable(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def target(path: str | None) -> Target:
    """``-o path`` checked before anything is exported, or one :class:`ConfigError` line. A
    file is replaced only by a complete export; a FIFO or a device is written into, never
    replaced (as root, replacing ``/dev/null`` with a file breaks the machine); a folder, a
    symbolic link (to anything but a FIFO or a device: its target would be replaced or written
    through) or a socket is refused."""
    if path is None or path in STDOUT:
        return Target(None)
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigError(f"{path}: its folder {folder} does not exist", key="-o") from None
        return Target(path)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or type(exc).__name__}", key="-o") from None
    mode = link.st_mode
    if stat.S_ISLNK(mode):
        try:
            pointed = os.stat(path).st_mode
        except OSError:
            pointed = 0
        if _streamable(pointed):
            return Target(path, stream=True)
        raise ConfigError(
            f"{path} is a symbolic link; an export never replaces a link nor writes through one "
            "to a file: give the file's own path",
            key="-o",
        )
    if stat.S_ISDIR(mode):
        raise ConfigError(
            f"{path} is a folder; give a file in it, e.g. {os.path.join(path, 'export.csv')}",
            key="-o",
        )
    if _streamable(mode):
        return Target(path, stream=True)
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"{path} is neither a file, a FIFO nor a character device; an export writes those",
            key="-o",
        )
    return Target(path)


@contextlib.contextmanager
def open_target(found: Target) -> Iterator[IO[bytes]]:
    """The binary stream of ``found`` (not stdout, which is the caller's). A file: a new private
    (0600) file beside it, locked while written, that replaces it once complete; an export
    that fails leaves it as it was. The ``.NAME.XXXX.part`` files a killed export left (no lock
    held) are removed first."""
    assert found.path is not None
    path = found.path
    if found.stream:
        # Never created nor truncated: a FIFO or a device is written as it is.
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        if not _streamable(os.fstat(fd).st_mode):  # swapped since it was checked
            os.close(fd)
            raise ConfigError(f"{path} is no longer a FIFO or a device", key="-o")
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            yield out
        return
    folder, name = os.path.split(os.path.abspath(path))
    with _folder_locked(folder):  # no export sees another's .part before it is locked
        _remove_leftovers(folder, name)
        fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        fcntl.flock(fd, fcntl.LOCK_EX)  # alive: the next export of this file leaves it be
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            yield out
        target(path)  # nothing planted at the path meanwhile (a link, a folder) is replaced
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


@contextlib.contextmanager
def _folder_locked(folder: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` while an export cleans up and makes its partial file
    (none when the folder can't be opened: the cleanup is then best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_leftovers(folder: str, name: str) -> None:
    """Remove the partial files of exports of ``name`` that were killed: no process holds
    their lock (an export still writing one does)."""
    prefix = f".{name}."
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        if not entry.name.endswith(".part") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
            logger.info("removed %s, left by an export that was killed", entry.path)
        except OSError:  # locked: an export writing it now
            pass
        finally:
            os.close(fd)


def moment(value: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: a date (UTC midnight), an ISO time (UTC unless it says) or unix
    seconds, as an aware datetime; one line for anything else."""
    if value is None:
        return None
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise ConfigError(
            f"{value!r} is not a date, a time or unix seconds ({exc}); e.g. 2024-01-31, "
            "2024-01-31T12:00:00Z or 1706702400",
            key=option,
        ) from None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def has_table(engine: Source, table: str, *, shown: str, file: str) -> None:
    """The database (``shown``, of the job file ``file``) has ``table``, or one line saying how
    to add it (an older collector migrated it), before anything is written."""
    if rawdb.has_table(engine, table, views=True):
        return
    raise ConfigError(
        f"database {shown} has no {table} yet (at revision "
        f"{max(rawdb.revisions(engine), default=None)}, an older collector's): "
        f"`collector db upgrade {os.path.basename(file)}` adds it",
        file=file,
        key="database",
    )


def one_account(engine: Source, request: Request, *, file: str) -> Request:
    """Kraken's files are one account's: ``request`` for the account of the table's rows, or an
    error that asks which when there are several."""
    import dataclasses

    found = [
        r[0]
        for r in rawdb.rows(
            engine, f"SELECT DISTINCT account FROM {request.table} ORDER BY account LIMIT 2"
        )
    ]
    if len(found) > 1:
        raise ConfigError(
            f"the {request.table} holds several accounts' rows ({', '.join(found)}, ...); "
            "a Kraken file is one account's: say which with --account",
            file=file,
            key="--account",
        )
    return dataclasses.replace(request, account=found[0] if found else None)


@contextlib.contextmanager
def destination(where: Target, stdout: IO[bytes]) -> Iterator[IO[bytes]]:
    """Where an export writes: ``stdout`` (flushed at the end), or :func:`open_target`'s stream.
    A reader that closed the pipe (``| head``) raises ``BrokenPipeError`` out of here."""
    if where.path is not None:
        with open_target(where) as out:
            yield out
        return
    yield stdout
    stdout.flush()
