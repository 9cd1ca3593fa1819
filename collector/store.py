"""The database: migrations, and writes of runs with their dataset rows, cursors and the nonce mark.

SQLite runs in WAL mode with a busy timeout, so people can query while the collector writes.
:meth:`Store.write` commits a batch of runs in one transaction: each run with its rows and its
job's cursor, so a crash never leaves rows without their cursor, or a cursor ahead of its rows.
Dataset rows are upserted by the dataset's key, so writing the same rows twice stores them once; on
PostgreSQL they are copied into a staging table first and upserted in one statement (:mod:`.bulk`).

Why one module of this length: everything here holds or opens the one database connection pool
and its transaction rules (migrations, the read-only engine, the write transaction with its
per-record fallback); what is not about that lives in :mod:`.bulk`, :mod:`.valuation` and
:mod:`.preflight`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import Engine, bindparam, create_engine, event, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from . import bulk, defaults, statefile, valuation
from .backoff import Backoff
from .datasets import DEFAULT, Dataset
from .datasets.reference import pairs
from .dburl import parse as parse_url
from .dburl import read_only_uri
from .errors import ConfigError
from .pairs import Names
from .rawdb import migrations_dir
from .records import Prepared, RunRecord, time_text
from .schema import ExactDecimal, UTCDateTime, cursors, runs, state

logger = logging.getLogger(__name__)

_json_encode = msgspec.json.Encoder().encode

#: The stored runs' ids of a batch's uids (a JSON array), as one JSON object in one row.
_SQLITE_IDS = (
    "SELECT json_group_object(uid, id) FROM runs WHERE uid IN (SELECT value FROM json_each(?))"
)

NONCE_KEY = "nonce_high_water"


class DatabaseGone(Exception):
    """The SQLite file at the database's path is gone (deleted, moved): writing on would go into a
    file nobody can open again."""


def sqlite_path(engine: Engine) -> str | None:
    """The file of a SQLite engine (None for a server or an in-memory database)."""
    name = engine.url.database if engine.dialect.name == "sqlite" else None
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


def make_engine(
    url: str,
    *,
    busy_timeout_ms: int = defaults.SQLITE_BUSY_TIMEOUT_MS,
    immediate: bool = False,
    read_only: bool = False,
) -> Engine:
    """An engine for ``url`` (no connection is made yet); SQLite gets WAL mode and a busy timeout,
    and a file it creates is the owner's alone (mode 0600; its ``-wal`` and ``-shm`` take the
    same mode).

    :param busy_timeout_ms: how long a SQLite write waits for another process's lock before the
        database counts as unavailable (and runs go to the spool)
    :param immediate: SQLite only: every transaction is a real one from its first statement
        (``BEGIN IMMEDIATE``), DDL included. pysqlite otherwise commits each ``CREATE`` on its own,
        so a migration killed half-way would leave tables without their revision.
    :param read_only: for the commands that only read (:func:`read_only_engine`)
    """
    if read_only:
        return read_only_engine(url, busy_timeout_ms)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        path = sqlite_path(engine)

        @event.listens_for(engine, "do_connect")
        def _private_file(*_args: Any) -> None:
            if path is not None:
                # SQLite would create it 0644; an empty file is an empty database. It exists, or
                # can't be made (SQLite will say why).
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
            cursor.execute("PRAGMA foreign_keys=ON")
            # Bounded below SQLite's default, so memory is level early, not after ~120k runs.
            cursor.execute(f"PRAGMA cache_size=-{int(defaults.SQLITE_CACHE_KIB)}")
            cursor.close()
            if immediate:
                dbapi_connection.isolation_level = None  # no implicit BEGIN/COMMIT of its own

        if immediate:

            @event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def read_only_engine(url: str, busy_timeout_ms: int = defaults.SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """An engine that can only read, and needs only read permission: SQLite opens the file
    ``mode=ro`` (nothing created, no journal mode set), or ``immutable=1`` when its folder is
    not writable and it has no ``-wal`` to read (SQLite could not make the ``-shm`` it needs);
    PostgreSQL's every transaction is read-only."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database or ""
    if path.startswith("file:") and parsed.get_backend_name() == "sqlite":
        # SQLite's own URI: read-only whatever mode it asked for (dburl.read_only_uri).
        url = read_only_uri(parse_url(url)).render(hide_password=False)
    if (
        parsed.get_backend_name() != "sqlite"
        or path in ("", ":memory:")
        or path.startswith("file:")
    ):
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "postgresql":

            @event.listens_for(engine, "connect")
            def _read_only(dbapi_connection: Any, _record: Any) -> None:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                dbapi_connection.commit()

        return engine
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    frozen = not os.access(folder, os.W_OK) and not os.path.exists(full + "-wal")
    uri = f"file:{quote(full)}?{'immutable=1' if frozen else 'mode=ro'}"

    def connect() -> Any:
        import sqlite3

        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    engine = create_engine(url, pool_pre_ping=True, creator=connect)

    @event.listens_for(engine, "connect")
    def _sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")

    return engine


#: SQLSTATE classes of a refusal about one record's content (data exception, integrity
#: constraint, program limit such as an index row too large): storing the record without the
#: offending part helps. Every other refusal is about the database (gone, read-only, full, no
#: permission, a table missing) and waits in the spool like an outage.
_CONTENT_SQLSTATE = ("22", "23", "54")
_CONTENT_SQLITE = ("SQLITE_TOOBIG", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_RANGE")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database can't take writes now (unreachable, or refusing them
    for a reason of its own), as opposed to refusing one record's content."""
    if isinstance(exc, DatabaseGone):
        return True
    if not isinstance(exc, DBAPIError):
        return False  # a value that can't be bound (a bug, or a hostile value): that record's
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)  # psycopg
    if isinstance(state, str) and state:
        return not state.startswith(_CONTENT_SQLSTATE)
    name = getattr(orig, "sqlite_errorname", None)  # sqlite3, Python 3.11+
    if isinstance(name, str) and name:
        return not name.startswith(_CONTENT_SQLITE)
    # No code (a driver's own refusal): its class says it.
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return not isinstance(exc, DataError | IntegrityError)


def error_line(exc: BaseException) -> str:
    """The driver's own first line of a database error (SQLAlchemy's wrapping repeats the
    statement), bounded: what a one-line error or a log line says of it."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``, all in one transaction: killed at any
    moment, the database is as before, and the next start migrates it.

    :raises ConfigError: the database is at a revision this collector does not know (a newer
        collector migrated it)
    """
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from alembic.util import CommandError

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    target = engine
    if engine.dialect.name == "sqlite":
        # A connection of its own whose transaction covers the DDL too (see make_engine).
        target = make_engine(engine.url.render_as_string(hide_password=False), immediate=True)
    try:
        with target.begin() as connection:
            cfg.attributes["connection"] = connection
            try:
                command.upgrade(cfg, revision)
            except CommandError as exc:
                raise _unknown_revision(connection, cfg, exc) from None
    finally:
        if target is not engine:
            target.dispose()


def check_revision(engine: Engine) -> None:
    """Read-only: that the database is at a revision this collector knows (or has none yet).

    :raises ConfigError: a newer collector migrated it
    """
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    scripts = ScriptDirectory.from_config(cfg)
    with engine.connect() as connection:
        found = MigrationContext.configure(connection).get_current_revision()
        if found is not None and found not in {r.revision for r in scripts.walk_revisions()}:
            raise _unknown_revision(connection, cfg, None)


def _unknown_revision(connection: Any, cfg: Any, exc: Exception | None) -> Exception:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    found = MigrationContext.configure(connection).get_current_revision()
    known = ScriptDirectory.from_config(cfg).get_current_head()
    if found is None and exc is not None:
        return exc
    return ConfigError(
        f"the database is at revision {found}, which this collector does not know (it knows up "
        f"to {known}): a newer collector migrated it; run that version, or upgrade this one",
        key="database",
    )


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class Store:
    """Reads and writes the collector's tables through one engine.

    :param datasets: the tables a record's ``rows`` may name
    """

    def __init__(self, engine: Engine, datasets: Sequence[Dataset] = DEFAULT) -> None:
        self.engine = engine
        self.datasets = {d.name: d for d in datasets}
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        self._path = sqlite_path(engine)
        self._identity: tuple[int, int] | None = None  # the SQLite file's (device, inode)
        self._identity_lock = threading.Lock()
        # The known pairs' names (read from `pairs`), and when they were read (monotonic).
        self._names = Names()
        self._names_read: float | None = None
        self._statements: dict[Any, Any] = {}  # the statements a write makes, by their shape

    @classmethod
    def from_url(
        cls, url: str, datasets: Sequence[Dataset] = DEFAULT, **engine_options: Any
    ) -> Store:
        """A store on a new engine; ``engine_options`` go to :func:`make_engine`."""
        return cls(make_engine(url, **engine_options), datasets)

    @classmethod
    def wait_until_reachable(
        cls,
        url: str,
        wait: Callable[[float], bool] | None = None,
        delays: Iterable[float] | None = None,
    ) -> Store | None:
        """The store at ``url``, migrated.

        Without ``wait``, the first failure is raised. With it (a service started before its
        database), a database that can't be reached yet is logged and tried again after each of
        ``delays`` (the one backoff's by default): ``wait(delay)`` waits up to ``delay`` seconds
        and says True when told to stop (``threading.Event.wait``), and then None is returned.
        A server that is down comes back; a SQLite file that can't be opened or created
        (permissions, a full or read-only disk) does not: only its lock is waited for. Raised as
        they come: :class:`ConfigError` (a revision this collector does not know),
        ``ModuleNotFoundError`` (no driver), and any database error waiting would not cure.
        """
        from sqlalchemy.engine import make_url

        steps: Iterator[float] = iter(delays) if delays is not None else Backoff().delays()
        sqlite_file = url.startswith("sqlite")
        while True:
            store = None
            try:
                store = cls.from_url(url)
                store.upgrade()
                return store
            except (ConfigError, SQLAlchemyError, ModuleNotFoundError) as exc:
                if store is not None:
                    store.dispose()
                reason = error_line(exc)
                if (
                    wait is None
                    or not isinstance(exc, OperationalError | InterfaceError)
                    or (sqlite_file and "locked" not in reason)
                ):
                    raise
            delay = next(steps)
            logger.error(
                "database %s unavailable at start (%s); waiting for it, next try in %.0fs",
                make_url(url).render_as_string(hide_password=True),
                reason,
                delay,
            )
            if wait(delay):
                return None

    def upgrade(self) -> None:
        upgrade(self.engine)
        self._identity = self._stat()
        if self._path is not None:
            # The migration ran on a connection of its own: SQLite's connections made before
            # it keep the old schema until they read, and resolve names by it when preparing
            # (0011's table would still be 0009's view).
            self.engine.dispose()
        with self.engine.begin() as conn:
            valuation.catch_up(conn)  # the snapshots stored before 0011, valued once

    def _stat(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def check_file(self) -> None:
        """For SQLite: that the file at the path is still the one open. Deleted or moved away:
        :class:`DatabaseGone` (writes would vanish with the unlinked file). Replaced by another
        file (a backup put back, a new file): the connections are re-made on it and it is
        migrated, so writes go where people look. A stat: microseconds."""
        if self._path is None:
            return
        with self._identity_lock:
            now = self._stat()
            if now is None:
                raise DatabaseGone(
                    f"the database file {self._path} was deleted or moved while in use"
                )
            if self._identity is None:
                self._identity = now
            elif now != self._identity:
                logger.warning(
                    "the database file %s was replaced while in use; writing into the new one",
                    self._path,
                )
                self.engine.dispose()
                upgrade(self.engine)
                self._identity = self._stat()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- reads ----------------------------------------------------------------------------------

    def load_nonce(self, name: str = NONCE_KEY) -> object:
        """The highest nonce a previous process recorded under ``name`` (0 when none did), as
        stored: an outside value, bounded by the caller (:func:`statefile.floor`), so a mark that
        is not plain digits is refused with a warning rather than a traceback at start."""
        with self.engine.connect() as conn:
            value = conn.execute(select(state.c.value).where(state.c.name == name)).scalar()
        return statefile.integer_text(value) if value else 0

    def last_success(self, job: str) -> datetime | None:
        """When ``job``'s last successful run finished, or None: the newest ``ok`` run by
        ``ix_runs_job_started_at``, a seek (stepping back over failures), as ``status`` finds it;
        not ``max(finished_at)``, which reads every run the job has (at start, for every job)."""
        query = (
            select(runs.c.finished_at)
            .where(runs.c.job == job, runs.c.status == "ok")
            .order_by(runs.c.started_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def pair_names(self) -> list[tuple[str, str | None, str | None]]:
        """The ``pairs`` table's ``(pair, altname, wsname)`` rows (delisted ones too: their
        names still name stored rows), as :class:`collector.pairs.Names` and the streams'
        ``Symbols`` take them."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pairs.c.pair, pairs.c.altname, pairs.c.wsname)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    def load_cursor(self, job: str, dataset: str) -> Any:
        """``job``'s stored cursor for ``dataset``, or None before its first run."""
        query = select(cursors.c.value).where(cursors.c.job == job, cursors.c.dataset == dataset)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    # -- writes ---------------------------------------------------------------------------------

    def write(
        self, records: Iterable[RunRecord], nonce: int | Mapping[str, int] | None = None
    ) -> list[int]:
        """Store runs, their rows and cursors, and the nonce high-water mark, in one transaction;
        returns the runs' ids, one per distinct ``uid``.

        Idempotent: a run's ``uid`` identifies its ``runs`` row (a later record of the same run,
        the next page of a paging run or a spool replay, updates it), and dataset rows are upserted
        by their key. So writing the same records twice stores everything once.
        """
        records = _merge(records)
        self.check_file()
        with self.engine.begin() as conn:
            ids: list[int] = []
            if records:
                by_uid, stored = self._write_runs(conn, records)
                ids = [by_uid[r.uid] for r in records]
                changed: set[str] = set()
                added = self._write_rows(conn, by_uid, records, changed)
                self._finish_runs(conn, by_uid, stored, added)
                self._write_cursors(conn, records)
                self._value(conn, by_uid, records, changed)
            marks = {NONCE_KEY: nonce} if isinstance(nonce, int) else dict(nonce or {})
            rows = [{"name": k, "value": str(v)} for k, v in marks.items() if v]
            if rows:
                self._upsert(conn, state, ("name",), rows, ("value",))
        return ids

    def _value(
        self, conn: Any, by_uid: dict[str, int], records: list[RunRecord], changed: set[str]
    ) -> None:
        """Keep ``portfolio_value`` true in the batch's transaction: a reader never sees a
        snapshot without its value, or a value from before a price it should have."""
        snapshots = [
            by_uid[r.uid]
            for r in records
            if r.method in valuation.SNAPSHOT_METHODS and r.status == "ok"
        ]
        prices = [row["taken_at"] for r in records for row in r.rows.get("ticker", ())]
        prices += [
            row["time"] + timedelta(minutes=row["interval"])  # a candle's price is its close's
            for r in records
            for row in r.rows.get("ohlc", ())
            if row.get("final")
        ]
        routes = bool(changed & {"pairs", "assets"})
        if not (snapshots or prices or routes):
            return
        try:
            valuation.after_write(conn, snapshots, prices, routes)
        except DBAPIError:
            raise  # the database's refusal: the batch's, handled as any other
        except Exception as exc:  # a value never costs the runs and their rows
            # Raised while computing (the SQL so far only read): the batch is stored without
            # the values, and the next start values the snapshots the table lacks (catch_up).
            logger.error(
                "portfolio_value not updated for this batch (%s: %s); the runs are stored, "
                "and the next start values the snapshots it lacks",
                type(exc).__name__,
                exc,
            )

    def _write_runs(
        self, conn: Any, records: list[RunRecord]
    ) -> tuple[dict[str, int], list[RunRecord]]:
        """Insert the runs rows not stored yet; returns every run's id by ``uid``, and the
        records whose row is stored already (updated by :meth:`_finish_runs`, once their new rows
        are counted: one statement a page of a paging run, not two)."""
        if conn.dialect.name == "sqlite":
            done = self._write_runs_sqlite(conn, records)
            if done is not None:
                return done
        ids = self._statements.get("ids")
        if ids is None:
            ids = select(runs.c.uid, runs.c.id).where(
                runs.c.uid.in_(bindparam("uids", expanding=True))
            )
            self._statements["ids"] = ids
        by_uid = dict(conn.execute(ids, {"uids": [r.uid for r in records]}).all())
        fresh = [r for r in records if r.uid not in by_uid]
        stored = [r for r in records if r.uid in by_uid]
        if fresh:
            new_ids = conn.execute(
                insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
                [r.row() for r in fresh],
            ).scalars()
            by_uid.update(zip((r.uid for r in fresh), new_ids, strict=True))
        return by_uid, stored

    def _write_runs_sqlite(
        self, conn: Any, records: list[RunRecord]
    ) -> tuple[dict[str, int], list[RunRecord]] | None:
        """:meth:`_write_runs` on SQLite in three statements of one step each, whatever the
        batch's size: the stored ids, one ``INSERT … SELECT … FROM json_each(?)`` of the new rows
        (one JSON text), and their ids, each as one row of ``json_group_object``. Why: CPython's
        ``sqlite3`` lets go of the interpreter lock around every step and takes it back before
        the next; beside 16 run threads, a step another thread used to take the lock costs up to
        the switch interval (5 ms) to get it back. SQLAlchemy made one ``INSERT … RETURNING`` a
        run on SQLite (to return the ids in order): in the capacity bench the writer spent 813 µs
        of wall time a run in ``Store.write`` for 81 µs of CPU, and in one window its backlog
        reached ``MAX_PENDING`` (run threads waiting on it); now a batch costs three such waits
        however large it grows (docs/benchmarks.md, "The service").
        None: a value holds a NUL character, which SQLite's JSON text would cut short; the
        caller's own statements take that batch, as before."""
        plan = self._statements.get("runs_sqlite")
        if plan is None:
            names = tuple(records[0].row())
            dialect = conn.dialect
            quote = dialect.identifier_preparer.quote
            picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
            plan = self._statements["runs_sqlite"] = (
                names,
                tuple(
                    (i, f)
                    for i, f in enumerate(_runs_converter(runs.c[n].type, dialect) for n in names)
                    if f is not None
                ),
                f"INSERT INTO runs ({', '.join(quote(n) for n in names)}) "
                f"SELECT {picks} FROM json_each(?)",
            )
        names, converters, insert_sql = plan
        # The same values SQLAlchemy binds (the columns' processors: JSON text, UTC times' text).
        rows = []
        for record in records:
            row = record.row()
            values = [row[n] for n in names]
            for i, convert in converters:
                values[i] = convert(values[i])
            rows.append(values)
        body = _json_encode(rows)  # a lone surrogate raises here, as binding it would
        if b"\\u0000" in body:
            return None
        by_uid = self._sqlite_ids(conn, [r.uid for r in records])
        fresh = [i for i, r in enumerate(records) if r.uid not in by_uid]
        stored = [r for r in records if r.uid in by_uid]
        if fresh:
            if len(fresh) < len(records):
                body = _json_encode([rows[i] for i in fresh])
            conn.exec_driver_sql(insert_sql, (body.decode(),))  # text: 3.45.0 read a BLOB as JSONB
            by_uid.update(self._sqlite_ids(conn, [records[i].uid for i in fresh]))
        return by_uid, stored

    @staticmethod
    def _sqlite_ids(conn: Any, uids: list[str]) -> dict[str, int]:
        """The stored runs' ids by ``uid``, as one row (one step of the driver, not one a run)."""
        found = conn.exec_driver_sql(_SQLITE_IDS, (_json_encode(uids).decode(),)).scalar()
        return dict(json.loads(found)) if found else {}

    def _finish_runs(
        self,
        conn: Any,
        by_uid: dict[str, int],
        stored: list[RunRecord],
        added: Counter[int],
    ) -> None:
        """Count each run's ``added`` rows in its row, and update the stored runs' fields (the
        latest record's) in the same statement."""
        if stored:
            fields = tuple(c for c in stored[0].row() if c != "uid")
            again = self._statements.get(("again", fields))
            if again is None:
                again = (
                    update(runs)
                    .where(runs.c.uid == bindparam("b_uid"))
                    .values(
                        {
                            **{c: bindparam(f"b_{c}") for c in fields},
                            "new_rows": runs.c.new_rows + bindparam("b_added"),
                        }
                    )
                )
                self._statements[("again", fields)] = again
            conn.execute(
                again,
                [
                    {**{f"b_{k}": v for k, v in r.row().items()}, "b_added": added[by_uid[r.uid]]}
                    for r in stored
                ],
            )
        updated = {by_uid[r.uid] for r in stored}
        fresh = [{"run": run, "added": n} for run, n in added.items() if run not in updated]
        if fresh:
            counted = self._statements.get("counted")
            if counted is None:
                counted = (
                    update(runs)
                    .where(runs.c.id == bindparam("run"))
                    .values(new_rows=runs.c.new_rows + bindparam("added"))
                )
                self._statements["counted"] = counted
            conn.execute(counted, fresh)

    def _write_rows(
        self, conn: Any, by_uid: dict[str, int], records: list[RunRecord], changed: set[str]
    ) -> Counter[int]:
        """Upsert every record's rows; returns how many rows each run added (``changed``: the
        tables whose rows it added or changed).

        Each table's rows become tuples once (:func:`.bulk.tuples`: the row's values, then its
        run's ``run_id`` and ``account``), not a dict copy a row."""
        by_table: dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]] = {}
        written: dict[str, list[tuple[RunRecord, int]]] = {}
        prepared: list[tuple[str, int, Prepared]] = []
        # Whether an insert-only table's Prepared tuples go to the database as the text they
        # are: SQLite's executemany, PostgreSQL's COPY (psycopg 3); elsewhere typed rows again.
        as_text = conn.dialect.name == "sqlite" or bulk.supported(conn)
        for record in records:
            run_id = by_uid[record.uid]
            for name, rows in record.rows.items():
                dataset = self.datasets[name]
                if isinstance(rows, Prepared):
                    if as_text and not dataset.update and "account" not in dataset.table.c:
                        prepared.append((name, run_id, rows))
                        written.setdefault(name, []).append((record, run_id))
                        continue
                    rows = self._typed(dataset, rows)
                # Tables of account data say whose each row is (the run's account).
                extra: dict[str, Any] = {"run_id": run_id}
                if "account" in dataset.table.c:
                    extra["account"] = record.account or defaults.DEFAULT_ACCOUNT
                by_table.setdefault(name, []).append((rows, extra))
                written.setdefault(name, []).append((record, run_id))
        added: Counter[int] = Counter()
        # The tables that name pairs last: a batch's new pairs are known by then.
        for name in sorted(by_table, key=lambda n: self.datasets[n].pair_column is not None):
            dataset = self.datasets[name]
            groups = by_table[name]
            column = dataset.pair_column
            rename = (
                self._renames(conn, dataset, {row[column] for rows, _ in groups for row in rows})
                if column is not None
                else None
            )
            if rename and column is not None:
                groups = [
                    (
                        [
                            {**row, column: rename[row[column]]} if row[column] in rename else row
                            for row in rows
                        ],
                        extra,
                    )
                    for rows, extra in groups
                ]
            table = bulk.tuples(dataset.table, groups)
            touched = self._upsert_rows(conn, dataset, table) if table.values else Counter()
            if touched:
                changed.add(name)
            # A row counts for the run writing it: inserted, or changed by a dataset that hands
            # it to that run (reference data updates run_id). A row updated in place keeps the
            # run that first stored it, and is no new row of that run either (an open candle
            # replaced by its update counted once more, at every run, for the first one).
            run = itemgetter(table.names.index("run_id")) if table.values else None
            mine = set(map(run, table.values)) if run is not None else set()
            added.update({run_id: n for run_id, n in touched.items() if run_id in mine})
            added.update(dataset.stored(conn, written[name]))
            if dataset.table is pairs:
                self._names_read = None  # read the names again at the next write that names one
        # Prepared tuples (a stream's batch, a Trades page): as they are, one executemany
        # (SQLite) or COPY (PostgreSQL) a run, insert-only; after the tables above, so that a
        # batch's new pairs are known when their names are made canonical.
        for name, run_id, tuples in prepared:
            dataset = self.datasets[name]
            tuples = self._canonical(conn, dataset, tuples)
            if bulk.supported(conn):
                n = bulk.copy_prepared(conn, dataset.table, dataset.key, tuples, run_id)
            else:
                n = bulk.insert_prepared(conn, dataset.table, dataset.key, tuples, run_id)
            if n:
                added[run_id] += n
                changed.add(name)
        for name in dict.fromkeys(name for name, _, _ in prepared):
            if name not in by_table:
                added.update(self.datasets[name].stored(conn, written[name]))
        return added

    def _canonical(self, conn: Any, dataset: Dataset, rows: Prepared) -> Prepared:
        """``rows`` with each pair under its canonical name (as :meth:`_renames` renames a
        dict row's): a Trades page's pair is the answer's key, a stream's already canonical."""
        column = dataset.pair_column
        if column is None or column not in rows.columns or not rows:
            return rows
        at = rows.columns.index(column)
        rename = self._renames(conn, dataset, set(map(itemgetter(at), rows)))
        if not rename:
            return rows
        return Prepared(
            rows.columns, ((*r[:at], rename.get(r[at], r[at]), *r[at + 1 :]) for r in rows)
        )

    @staticmethod
    def _typed(dataset: Dataset, rows: Prepared) -> list[dict[str, Any]]:
        """:class:`Prepared` tuples as the typed rows every other path takes (``Decimal``,
        aware ``datetime``), read back from their stored text by the columns' types."""
        readers: list[Any] = []
        for name in rows.columns:
            type_ = dataset.table.c[name].type
            if isinstance(type_, ExactDecimal):
                readers.append(Decimal)
            elif isinstance(type_, UTCDateTime):
                readers.append(datetime.fromisoformat)
            else:
                readers.append(None)
        return [
            {
                c: v if f is None else f(v)
                for c, f, v in zip(rows.columns, readers, row, strict=True)
            }
            for row in rows
        ]

    def _upsert_rows(self, conn: Any, dataset: Dataset, rows: bulk.Rows) -> Counter[int]:
        """Upsert a dataset's ``rows`` by its key; how many rows each ``run_id`` inserted or
        changed. A key held twice is written once (one statement must not touch a key twice:
        PostgreSQL refuses it): the latest values win, the run that first had the row keeps
        it."""
        table, key = dataset.table, dataset.key
        run = rows.names.index("run_id")
        keys = list(map(itemgetter(*(rows.names.index(k) for k in key)), rows.values))
        if len(set(keys)) < len(keys):
            unique: dict[Any, tuple[Any, ...]] = {}
            for k, row in zip(keys, rows.values, strict=True):
                first = unique.get(k)
                unique[k] = row if first is None else (*row[:run], first[run], *row[run + 1 :])
            rows.values = list(unique.values())
        if bulk.supported(conn):  # PostgreSQL: COPY, then one INSERT … SELECT
            return bulk.upsert(
                conn, table, key, rows, dataset.update, dataset.frozen, dataset.compare
            )
        if not dataset.update and conn.dialect.name == "sqlite":
            return bulk.insert_new(conn, table, key, rows)  # an executemany a run, counted
        return self._upsert(
            conn,
            table,
            key,
            rows.dicts(),
            dataset.update,
            dataset.frozen,
            count=True,
            compare=dataset.compare,
        )

    def _renames(self, conn: Any, dataset: Dataset, names: set[str]) -> dict[str, str] | None:
        """For a dataset naming pairs: the ``names`` (its rows' pairs) that are another spelling
        of a known pair, each with its canonical name (None when there are none). The known names
        are read again when a name is not among them, at most every ``PAIR_NAMES_REREAD``
        seconds."""
        if dataset.pair_column is None or not names:
            return None
        if names <= self._names.canonical:
            return None  # what Kraken's answers say, nearly always: nothing to look up
        now = time.monotonic()
        if self._names_read is None or now - self._names_read >= defaults.PAIR_NAMES_REREAD:
            known = conn.execute(select(pairs.c.pair, pairs.c.altname, pairs.c.wsname)).all()
            self._names = Names(tuple(row) for row in known)
            self._names_read = now
        found = {name: self._names.resolve(name) for name in names}
        return {name: c for name, c in found.items() if c is not None and c != name} or None

    def _write_cursors(self, conn: Any, records: list[RunRecord]) -> None:
        now = datetime.now(UTC)
        latest = {  # a batch may hold several runs of one job: the last one's cursor counts
            (r.job, r.dataset): r.cursor for r in records if r.cursor is not None and r.dataset
        }
        rows = [
            {"job": job, "dataset": dataset, "value": value, "updated_at": now}
            for (job, dataset), value in latest.items()
        ]
        if rows:
            self._upsert(conn, cursors, ("job", "dataset"), rows, ("value", "updated_at"))

    def _upsert(
        self,
        conn: Any,
        table: Any,
        key: Sequence[str],
        rows: list[dict[str, Any]],
        update: Sequence[str] = (),
        frozen: str | None = None,
        *,
        count: bool = False,
        compare: Sequence[str] = (),
    ) -> Counter[int]:
        """Insert ``rows``; a row whose ``key`` is stored already updates ``update`` (unless its
        ``frozen`` column is true; with ``compare``, only when one of those differs) or is left as
        it is. With ``count``: how many rows each ``run_id`` inserted or changed."""
        if not rows:
            return Counter()
        shape = (table, tuple(key), tuple(update), frozen, tuple(compare))
        stmt = self._statements.get(shape)
        if stmt is None:  # built once: SQLAlchemy caches the SQL, not the making of the statement
            stmt = bulk.on_conflict(self._insert(table), table, key, update, frozen, compare)
            self._statements[shape] = stmt
        if not count:
            conn.execute(stmt, rows)
            return Counter()
        return Counter(conn.execute(stmt.returning(table.c.run_id), rows).scalars())


def _runs_converter(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """A runs column's bind processor on SQLite; a time's in one step (the same text as
    ``UTCDateTime``'s, a naive one refused the same way) instead of SQLAlchemy's three layers of
    calls, three times a run in the writer's thread, under the interpreter lock."""
    if isinstance(type_, UTCDateTime):
        return _optional_time
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else time_text(value)


def _merge(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per run (``uid``), in order: the latest fields, every record's rows, and the
    latest cursor."""
    merged: dict[str, RunRecord] = {}
    for record in records:
        before = merged.get(record.uid)
        if before is None:
            merged[record.uid] = record
            continue
        rows = {name: _copy(rs) for name, rs in before.rows.items()}
        for name, rs in record.rows.items():
            if name not in rows:
                rows[name] = _copy(rs)
            elif isinstance(rows[name], Prepared) is isinstance(rs, Prepared):
                rows[name].extend(rs)  # both tuples (of one table's columns) or both dicts
            else:  # never made so (a run's rows are one or the other): refused, not mixed
                raise TypeError(f"run {record.uid}: {name} rows both prepared and not")
        cursor = record.cursor if record.cursor is not None else before.cursor
        merged[record.uid] = dataclasses.replace(record, rows=rows, cursor=cursor)
    return list(merged.values())


def _copy(rows: list[Any]) -> list[Any]:
    return Prepared(rows.columns, rows) if isinstance(rows, Prepared) else list(rows)
