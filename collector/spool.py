"""A bounded, durable queue of encoded runs on local disk, for while the database can't be reached.

When PostgreSQL restarts, the disk under the database fills up or SQLite stays locked, the writer
puts runs here instead (a SQLite file written with ``synchronous=FULL``, so a run in the spool
survives a crash or power loss) and replays them, oldest first, once the database answers again.
The spool holds text (the writer encodes and decodes runs); it knows nothing of what a run is.

The spool is bounded (``max_runs``). When it is full, the oldest runs are kept and new ones are
dropped, loudly: the log says how many.

The file is created only when it is first needed. Beside the queue it keeps a few named values
(:meth:`get` / :meth:`set`), written durably.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path

from . import defaults

logger = logging.getLogger(__name__)


class Spool:
    """The spool file. Thread-safe. Constructing one touches no file.

    :param path: the SQLite file (created when first written)
    :param max_runs: the bound
    :param timeout: seconds a write waits for another process's lock on the file
    """

    def __init__(
        self,
        path: str | Path = defaults.SPOOL_NAME,
        max_runs: int = defaults.SPOOL_MAX_RUNS,
        *,
        timeout: float = defaults.SPOOL_BUSY_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self.max_runs = max_runs
        self.timeout = timeout
        self.dropped = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._count = 0

    def open(self, create: bool = False) -> bool:
        """Open the file if it exists (or, with ``create``, make it); True when it is open."""
        with self._lock:
            return self._open(create)

    def _open(self, create: bool) -> bool:
        if self._db is not None:
            return True
        if not create and not self.path.exists():
            return False
        with contextlib.suppress(OSError):  # runs hold balances and ledgers: the owner's only
            # (SQLite would make it 0644; its -wal and -shm take the file's mode)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(
            self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a spooled run must survive power loss
            db.execute("CREATE TABLE IF NOT EXISTS runs (seq INTEGER PRIMARY KEY, record TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT)")
            self._count = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self._db = db
        return True

    def __len__(self) -> int:
        """Runs waiting (0 when the file was never opened)."""
        return self._count

    def put(self, items: list[str]) -> int:
        """Append encoded runs, oldest first; returns how many were dropped because it is full."""
        with self._lock:
            self._open(create=True)
            assert self._db is not None
            room = max(0, self.max_runs - self._count)
            kept, dropped = items[:room], len(items) - min(room, len(items))
            if kept:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT INTO runs (record) VALUES (?)", [(item,) for item in kept]
                    )
                self._count += len(kept)
            if dropped:
                self.dropped += dropped
                logger.error(
                    "SPOOL FULL (%d runs in %s): dropped %d new runs, %d so far; the database "
                    "has been unreachable too long",
                    self._count,
                    self.path,
                    dropped,
                    self.dropped,
                )
            return dropped

    def oldest(self, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` of the oldest runs, as ``(seq, item)``."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute("SELECT seq, record FROM runs ORDER BY seq LIMIT ?", (limit,))
            return rows.fetchall()

    def remove_through(self, seq: int) -> None:
        """Forget every run up to and including ``seq`` (they are in the database now)."""
        with self._lock:
            if self._db is None:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM runs WHERE seq <= ?", (seq,))
                self._count = self._db.execute("SELECT count(*) FROM runs").fetchone()[0]

    def get(self, name: str) -> str | None:
        """A named value kept in the file (None if unset or the file does not exist)."""
        with self._lock:
            if not self._open(create=False):
                return None
            assert self._db is not None
            row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name``, durably (the file is created if needed)."""
        with self._lock:
            self._open(create=True)
            assert self._db is not None
            with self._db:
                self._db.execute(
                    "INSERT INTO state VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def peek(path: str | Path) -> int | None:
    """Runs waiting in the spool at ``path`` (None if there is no spool), without creating one."""
    if not Path(path).exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        db.close()
