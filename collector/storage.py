"""The database: tables people query, migrations, and a batching writer.

Tables (see the README for example SQL):

* ``runs``: one row per execution, success or failure.
* ``balances``: one row per asset per successful Balance/BalanceEx run; amounts are exact decimals
  (``NUMERIC`` on PostgreSQL, decimal text on SQLite, ``Decimal`` in Python; never floats).
* ``collector_state``: the highest nonce used, so a restart starts above it.

All timestamps are UTC and timezone-aware (``timestamptz`` on PostgreSQL; on SQLite, text ending in
``+00:00``). SQLite runs in WAL mode with a busy timeout, so people can query while we write.

Writes go through :class:`Writer`, a thread that commits runs in batches: one transaction per batch,
a run and its balances always in the same one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from .spool import Spool

logger = logging.getLogger(__name__)

#: At most this many runs go into one transaction.
BATCH_MAX = 500
#: The writer commits at least this often (seconds) while runs are waiting.
FLUSH_INTERVAL = 0.2
#: Runs waiting to be written before :meth:`Writer.submit` makes callers wait (backpressure:
#: when calls outpace the database, memory stays bounded and the scheduler coalesces instead).
MAX_PENDING = 2 * BATCH_MAX
#: Retrying an unavailable database: first wait, and the cap of the doubling.
RETRY_FIRST, RETRY_CAP = 0.5, 30.0
SQLITE_BUSY_TIMEOUT_MS = 10_000
NONCE_KEY = "nonce_high_water"

_SQLITE_TS = sqlite.DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"
    ".%(microsecond)06d+00:00",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)\.(\d+)\+00:00",
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_TS)
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: collector stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """Exact decimals: NUMERIC on PostgreSQL, decimal text on SQLite (whose NUMERIC is a float)."""

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | str | None, dialect: Any) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        # Plain notation keeps the text readable and comparable in SQL: 0.0000000000, not 0E-10.
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(str(value))


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
RunId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", RunId, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False),
    Column("method", String(100), nullable=False),
    Column("params", JSONType, nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("status", String(20), nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
    Column("result", JSONType),
    Column("attempts", Integer, nullable=False, server_default="1"),
    # A run's identity across a spool replay: replaying skips runs already stored (0002).
    Column("uid", String(32), unique=True),
)
Index("ix_runs_job_started_at", runs.c.job, runs.c.started_at)
Index("ix_runs_status", runs.c.status)

balances = Table(
    "balances",
    metadata,
    Column("run_id", RunId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("asset", String(32), primary_key=True),
    Column("job", String(200), nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
)
Index("ix_balances_asset_taken_at", balances.c.asset, balances.c.taken_at)

state = Table(
    "collector_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

STATUSES = ("ok", "kraken_error", "http_error", "timeout", "connection_error", "bad_response")


@dataclass
class RunRecord:
    """One execution of a job, ready to store. ``balances`` are ``(asset, amount)`` pairs."""

    job: str
    method: str
    params: dict[str, Any]
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime
    status: str
    http_status: int | None = None
    error: str | None = None
    result: Any = None
    attempts: int = 1
    balances: list[tuple[str, Decimal]] = field(default_factory=list)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self) -> dict[str, Any]:
        return {
            "job": self.job, "method": self.method, "params": self.params,
            "scheduled_at": self.scheduled_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "status": self.status,
            "http_status": self.http_status, "error": self.error, "result": self.result,
            "attempts": self.attempts, "uid": self.uid,
        }  # fmt: skip


def make_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout.

    :param busy_timeout_ms: how long a SQLite write waits for another process's lock before the
        database counts as unavailable (and runs go to the spool)
    """
    engine = create_engine(url, pool_pre_ping=True, future=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def migrations_dir() -> Path:
    """The Alembic scripts: inside the package when installed from a wheel, else the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("collector's migrations are missing from this installation")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class Store:
    """Reads and writes the collector's tables through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> Store:
        """A store on a new engine; ``engine_options`` go to :func:`make_engine`."""
        return cls(make_engine(url, **engine_options))

    def upgrade(self) -> None:
        upgrade(self.engine)

    def load_nonce(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(state.c.value).where(state.c.name == NONCE_KEY)).scalar()
        return int(value) if value else 0

    def write(self, records: Iterable[RunRecord], nonce: int | None = None, *,
              skip_stored: bool = False) -> list[int]:  # fmt: skip
        """Store runs, their balances and the nonce high-water mark in one transaction.

        :param skip_stored: leave out runs whose ``uid`` is already stored (a spool replay)
        """
        records = list(records)
        with self.engine.begin() as conn:
            if skip_stored and records:
                stored = set(conn.execute(select(runs.c.uid).where(
                    runs.c.uid.in_([r.uid for r in records]))).scalars())  # fmt: skip
                records = [r for r in records if r.uid not in stored]
            ids: list[int] = []
            if records:
                ids = list(
                    conn.execute(
                        insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
                        [r.row() for r in records],
                    ).scalars()
                )
                rows = [{"run_id": run_id, "asset": asset, "job": r.job,
                         "taken_at": r.finished_at, "amount": amount}
                        for run_id, r in zip(ids, records, strict=True)
                        for asset, amount in r.balances]  # fmt: skip
                if rows:
                    conn.execute(insert(balances), rows)
            if nonce:
                self._save_nonce(conn, nonce)
        return ids

    def _save_nonce(self, conn: Any, nonce: int) -> None:
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        stmt = dialect.insert(state).values(name=NONCE_KEY, value=str(nonce))
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["name"], set_={"value": str(nonce)})
        )

    def dispose(self) -> None:
        self.engine.dispose()


class Writer:
    """A thread that stores runs in batches, so the run loop never waits on the database.

    :meth:`submit` waits while ``max_pending`` runs are already waiting, so a process whose calls
    outpace its database slows its calls down instead of growing without bound.

    When the database can't be reached (down, locked, full), batches go to the ``spool`` (durable,
    bounded, on local disk) and are replayed in order once it answers; while runs wait in the
    spool, new ones queue behind them. Without a spool, the batch is retried with backoff.

    When neither can take a batch (the disk under both is full, the spool file is locked), the
    thread does not die: the batch waits in memory and is retried with backoff, and callers are
    held back by ``max_pending``. Only those runs are lost if the process then dies.
    """

    def __init__(self, store: Store, nonce: Any = None, *, batch_max: int = BATCH_MAX,
                 flush_interval: float = FLUSH_INTERVAL, max_pending: int = MAX_PENDING,
                 spool: Spool | None = None) -> None:  # fmt: skip
        self.store = store
        self.spool = spool
        self._next_try = 0.0
        self._retry_delay = RETRY_FIRST
        self._nonce = nonce  # a callable giving the highest nonce used so far, or None
        self._saved_nonce = 0
        self._batch_max = batch_max
        self._interval = flush_interval
        self._max_pending = max_pending
        self._queue: queue.SimpleQueue[RunRecord | None] = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="collector-writer", daemon=True)
        self.written = 0
        self._thread.start()

    def submit(self, record: RunRecord) -> None:
        with self._cond:
            while self._pending >= self._max_pending and self._thread.is_alive():
                self._cond.wait(1.0)
            self._pending += 1
        self._queue.put(record)

    @property
    def pending(self) -> int:
        """Runs submitted and not yet in the database or the spool."""
        with self._cond:
            return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Write everything, then stop the thread; False if it did not finish in time."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[RunRecord] = []
            try:
                item = self._queue.get(timeout=self._interval)
                while item is not None:
                    batch.append(item)
                    if len(batch) >= self._batch_max:
                        break
                    item = self._queue.get_nowait()
                stopping = item is None
            except queue.Empty:
                pass  # idle, or the queue is drained: write what we have
            self._write_until_taken(batch)  # an empty batch still persists a newer nonce

    def _write_until_taken(self, batch: list[RunRecord]) -> None:
        delay, again = RETRY_FIRST, False
        while True:
            try:
                # After a failure, some of the batch may be stored already (the run-by-run path).
                self._write(batch, skip_stored=again)
                return
            except Exception as exc:
                logger.critical("neither the database nor the spool %s can take %d runs "
                                "(%s: %s); they wait in memory, next try in %.1fs",
                                self.spool.path if self.spool else "(none)", len(batch),
                                type(exc).__name__, _first_line(exc), delay)  # fmt: skip
                time.sleep(delay)
                delay, again = min(delay * 2, RETRY_CAP), True

    def _write(self, batch: list[RunRecord], skip_stored: bool = False) -> None:
        nonce = self._nonce() if self._nonce else 0
        new_nonce = nonce if nonce > self._saved_nonce else None
        if self.spool is not None and len(self.spool):
            self.spool.put(batch)  # behind the runs already waiting, to keep their order
            self._drain(new_nonce)
        elif batch or new_nonce:
            try:
                self._store(batch, new_nonce, skip_stored)
            except _Unavailable as exc:
                assert self.spool is not None
                logger.error("database unavailable (%s); %d runs go to the spool %s (%d waiting)",
                             exc, len(batch), self.spool.path, len(self.spool) + len(batch))  # fmt: skip
                self.spool.put(batch)
                if new_nonce:
                    self.spool.save_nonce(max(new_nonce, self.spool.load_nonce()))
        self._done(batch, nonce)

    def _store(self, batch: list[RunRecord], nonce: int | None, skip_stored: bool = False) -> None:
        try:
            self._until_stored(functools.partial(self.store.write, batch, nonce,
                                                 skip_stored=skip_stored), len(batch))  # fmt: skip
        except _Unavailable:
            raise
        except Exception as exc:
            # Something in the batch cannot be stored (a result nested too deep to encode, a NUL
            # character PostgreSQL's JSONB refuses): it must not stall every other run.
            logger.error("a batch of %d runs was refused (%s: %s); storing them one by one",
                         len(batch), type(exc).__name__, _first_line(exc))  # fmt: skip
            for record in batch:
                try:
                    self._until_stored(functools.partial(self.store.write, [record],
                                                         skip_stored=skip_stored), 1)  # fmt: skip
                except _Unavailable:
                    raise
                except Exception as exc:
                    logger.error("job %s: its answer could not be stored (%s: %s)", record.job,
                                 type(exc).__name__, _first_line(exc))  # fmt: skip
                    bare = _unstorable(record, exc)
                    self._until_stored(functools.partial(self.store.write, [bare],
                                                         skip_stored=skip_stored), 1)  # fmt: skip
            self._until_stored(functools.partial(self.store.write, [], nonce), 0)

    def _until_stored(self, write: Callable[[], object], count: int) -> None:
        """Run ``write``. While the database is unavailable: with a spool, raise
        :class:`_Unavailable` at once; without one, retry with backoff. Other errors are the
        data's fault and are raised."""
        delay = RETRY_FIRST
        while True:
            try:
                write()
                return
            except (OperationalError, InterfaceError) as exc:
                if self.spool is not None:
                    self._next_try = time.monotonic() + self._retry_delay
                    raise _Unavailable(f"{type(exc).__name__}: {_first_line(exc)}") from exc
                logger.error("could not store %d runs (%s: %s); retrying in %.1fs",
                             count, type(exc).__name__, _first_line(exc), delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

    def _drain(self, nonce: int | None) -> None:
        """Replay the spool into the database, oldest first, while it answers."""
        assert self.spool is not None
        if time.monotonic() < self._next_try:
            return
        replayed = 0
        while len(self.spool):
            chunk = self.spool.oldest(self._batch_max)
            try:
                self._store([r for _, r in chunk], nonce, skip_stored=True)
            except _Unavailable as exc:
                self._retry_delay = min(self._retry_delay * 2, RETRY_CAP)
                self._next_try = time.monotonic() + self._retry_delay
                logger.warning("database still unavailable (%s); %d runs wait in the spool %s, "
                               "next try in %.0fs", exc, len(self.spool), self.spool.path,
                               self._retry_delay)  # fmt: skip
                return
            self.spool.remove_through(chunk[-1][0])
            replayed += len(chunk)
            nonce = None
        self._retry_delay = RETRY_FIRST
        logger.warning("database is back: %d spooled runs written, the spool is empty", replayed)

    def _done(self, batch: list[RunRecord], nonce: int) -> None:
        self._saved_nonce = max(self._saved_nonce, nonce)
        self.written += len(batch)
        with self._cond:
            self._pending -= len(batch)
            self._cond.notify_all()


class _Unavailable(Exception):
    """The database can't be reached and the runs should go to the spool."""


def _unstorable(record: RunRecord, exc: BaseException) -> RunRecord:
    """``record`` without what could not be stored, marked as a bad response."""
    return dataclasses.replace(
        record, status="bad_response", result=None, balances=[],
        error=f"the answer could not be stored ({type(exc).__name__}: {_first_line(exc)[:200]})",
    )  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
