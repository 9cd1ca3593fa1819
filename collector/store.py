"""The database: migrations, and writes of runs with their dataset rows, cursors and the nonce mark.

SQLite runs in WAL mode with a busy timeout, so people can query while the collector writes.
:meth:`Store.write` commits a batch of runs in one transaction: each run with its rows and its
job's cursor, so a crash never leaves rows without their cursor, or a cursor ahead of its rows.
Dataset rows are upserted by the dataset's key, so writing the same rows twice stores them once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from . import defaults
from .datasets import DEFAULT, Dataset
from .records import RunRecord
from .schema import cursors, runs, state

NONCE_KEY = "nonce_high_water"


def make_engine(url: str, *, busy_timeout_ms: int = defaults.SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url`` (no connection is made yet); SQLite gets WAL mode and a busy timeout.

    :param busy_timeout_ms: how long a SQLite write waits for another process's lock before the
        database counts as unavailable (and runs go to the spool)
    """
    engine = create_engine(url, pool_pre_ping=True)
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
    """Reads and writes the collector's tables through one engine.

    :param datasets: the tables a record's ``rows`` may name
    """

    def __init__(self, engine: Engine, datasets: Sequence[Dataset] = DEFAULT) -> None:
        self.engine = engine
        self.datasets = {d.name: d for d in datasets}
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert

    @classmethod
    def from_url(
        cls, url: str, datasets: Sequence[Dataset] = DEFAULT, **engine_options: Any
    ) -> Store:
        """A store on a new engine; ``engine_options`` go to :func:`make_engine`."""
        return cls(make_engine(url, **engine_options), datasets)

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- reads ----------------------------------------------------------------------------------

    def load_nonce(self) -> int:
        """The highest nonce a previous process recorded (0 when none did)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(state.c.value).where(state.c.name == NONCE_KEY)).scalar()
        return int(value) if value else 0

    def load_cursor(self, job: str, dataset: str) -> Any:
        """``job``'s stored cursor for ``dataset``, or None before its first run."""
        query = select(cursors.c.value).where(cursors.c.job == job, cursors.c.dataset == dataset)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    # -- writes ---------------------------------------------------------------------------------

    def write(
        self, records: Iterable[RunRecord], nonce: int | None = None, *, skip_stored: bool = False
    ) -> list[int]:
        """Store runs, their rows and cursors, and the nonce high-water mark, in one transaction;
        returns the new runs' ids.

        :param skip_stored: leave out runs whose ``uid`` is already stored (a spool replay, or a
            retry after a batch that failed part way)
        """
        records = list(records)
        with self.engine.begin() as conn:
            if skip_stored and records:
                uids = [r.uid for r in records]
                stored = set(conn.execute(select(runs.c.uid).where(runs.c.uid.in_(uids))).scalars())
                records = [r for r in records if r.uid not in stored]
            ids: list[int] = []
            if records:
                ids = list(
                    conn.execute(
                        insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
                        [r.row() for r in records],
                    ).scalars()
                )
                self._write_rows(conn, ids, records)
                self._write_cursors(conn, records)
            if nonce:
                row = {"name": NONCE_KEY, "value": str(nonce)}
                self._upsert(conn, state, ("name",), [row], ("value",))
        return ids

    def _write_rows(self, conn: Any, ids: list[int], records: list[RunRecord]) -> None:
        by_table: dict[str, list[dict[str, Any]]] = {}
        for run_id, record in zip(ids, records, strict=True):
            for table, rows in record.rows.items():
                by_table.setdefault(table, []).extend({**row, "run_id": run_id} for row in rows)
        for name, rows in by_table.items():
            dataset = self.datasets[name]
            self._upsert(conn, dataset.table, dataset.key, rows, dataset.update)

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
    ) -> None:
        """Insert ``rows``; a row whose ``key`` is stored already updates ``update`` (or is left)."""
        if not rows:
            return
        stmt = self._insert(table)
        if update:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
        conn.execute(stmt, rows)
