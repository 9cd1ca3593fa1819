"""A bounded, durable queue of runs on local disk, for while the database can't be reached.

When PostgreSQL restarts, the disk under the database fills up or SQLite stays locked, the writer
puts runs here instead (a SQLite file written with ``synchronous=FULL``, so a run in the spool
survives a crash or power loss) and replays them, oldest first, once the database answers again.
Each run carries a ``uid``; a replay skips runs the database already has, so a crash between
"stored" and "removed from the spool" never stores a run twice.

The spool is bounded (``max_runs``). When it is full, the oldest runs are kept and new ones are
dropped, loudly: the log says how many.

The file also holds the nonce *lease*: before the client issues a nonce past the leased mark, the
mark moves a minute ahead and is written here, so a restart after ``kill -9`` starts above every
nonce the dead process may have used, whatever the clock did meanwhile.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .storage import RunRecord

logger = logging.getLogger(__name__)

#: Runs the spool holds at most.
MAX_RUNS = 100_000
#: Seconds a spool write waits for a lock another process holds on the file.
BUSY_TIMEOUT = 10.0
DEFAULT_PATH = "collector.spool"


def _encode(record: RunRecord) -> str:
    data = asdict(record)
    for name in ("scheduled_at", "started_at", "finished_at"):
        data[name] = data[name].isoformat()
    data["balances"] = [[asset, str(amount)] for asset, amount in record.balances]
    return json.dumps(data)


def _decode(text: str) -> RunRecord:
    data: dict[str, Any] = json.loads(text)
    for name in ("scheduled_at", "started_at", "finished_at"):
        data[name] = datetime.fromisoformat(data[name])
    data["balances"] = [(asset, Decimal(amount)) for asset, amount in data["balances"]]
    return RunRecord(**data)


class Spool:
    """The spool file. Thread-safe.

    :param path: the SQLite file (created if missing)
    :param max_runs: the bound
    :param timeout: seconds a write waits for another process's lock on the file
    """

    def __init__(self, path: str | Path = DEFAULT_PATH, max_runs: int = MAX_RUNS, *,
                 timeout: float = BUSY_TIMEOUT) -> None:  # fmt: skip
        self.path = Path(path)
        self.max_runs = max_runs
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                                   isolation_level=None)  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a spooled run must survive power loss
        self._db.execute("CREATE TABLE IF NOT EXISTS runs (seq INTEGER PRIMARY KEY, record TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT)")
        self._count = self._db.execute("SELECT count(*) FROM runs").fetchone()[0]

    def __len__(self) -> int:
        return self._count

    def put(self, records: list[RunRecord]) -> int:
        """Append runs, oldest first; returns how many were dropped because the spool is full."""
        with self._lock:
            room = max(0, self.max_runs - self._count)
            kept, dropped = records[:room], len(records) - min(room, len(records))
            if kept:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT INTO runs (record) VALUES (?)",
                                         [(_encode(r),) for r in kept])  # fmt: skip
                self._count += len(kept)
            if dropped:
                self.dropped += dropped
                logger.error("SPOOL FULL (%d runs in %s): dropped %d new runs, %d so far; the "
                             "database has been unreachable too long", self._count, self.path,
                             dropped, self.dropped)  # fmt: skip
            return dropped

    def oldest(self, limit: int) -> list[tuple[int, RunRecord]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, record FROM runs ORDER BY seq LIMIT ?", (limit,))
            return [(seq, _decode(text)) for seq, text in rows.fetchall()]

    def remove_through(self, seq: int) -> None:
        """Forget every run up to and including ``seq`` (they are in the database now)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM runs WHERE seq <= ?", (seq,))
            self._count = self._db.execute("SELECT count(*) FROM runs").fetchone()[0]

    def load_nonce(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE name = 'nonce_lease'").fetchone()
        return int(row[0]) if row else 0

    def save_nonce(self, nonce: int) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO state VALUES ('nonce_lease', ?) ON CONFLICT(name) "
                             "DO UPDATE SET value = excluded.value", (str(nonce),))  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
