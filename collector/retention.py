"""Retention: runs (and dataset rows, when asked) older than the job file says are deleted.

``retention: {runs: 90d}`` keeps 90 days of ``runs``; a job's own ``jobs.NAME.retention: 30d``
applies to its runs instead. A run's ``balances`` and ``ticker`` rows go with it (their foreign
keys cascade). The prunable dataset tables (``Dataset.prunable``: ledger, my_trades, orders, trades,
ohlc, spread) are kept unless ``retention`` names them, by their ``Dataset.time_column`` (orders:
``closetm``). Without ``retention`` nothing is deleted.

A background thread prunes once shortly after start, then every hour, in batches of 500 rows per
transaction, so the writer is never held up for long (SQLite is in WAL mode: readers are never
blocked). :meth:`Retention.prune_once` is one pass, for tests and for whoever wants one now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, literal_column, select

from . import defaults
from .datasets import Dataset
from .health import utcnow
from .jobfile import Config, format_duration
from .schema import runs
from .store import Store

logger = logging.getLogger(__name__)


class Retention:
    """Deletes what the job file's ``retention`` no longer keeps. Constructing one starts nothing.

    :param stopping: when set, a pass ends after its current batch
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        stopping: threading.Event | None = None,
        batch: int = defaults.RETENTION_BATCH,
        interval: float = defaults.RETENTION_INTERVAL,
        first: float = defaults.RETENTION_FIRST,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.batch = batch
        self.interval = interval
        self.first = first
        self._clock = clock
        self._stop = stopping or threading.Event()
        self._config = config
        self._thread: threading.Thread | None = None
        self._started = False

    @property
    def active(self) -> bool:
        """Whether the job file asks for any deletion."""
        return bool(self._config.retention) or any(j.retention for j in self._config.jobs)

    def configure(self, config: Config) -> None:
        """Apply a reloaded job file's retention (the thread starts if it now has work)."""
        self._config = config
        if self._started:
            self._ensure_thread()

    def start(self) -> None:
        self._started = True
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self.active and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="collector-retention", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=defaults.WRITE_GRACE)

    def _loop(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            try:
                self.prune_once()
            except Exception as exc:  # the database may be down: the next pass tries again
                logger.warning(
                    "retention: pass failed (%s: %s); next in %s",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                    format_duration(timedelta(seconds=self.interval)),
                )
            wait = self.interval

    def prune_once(self) -> dict[str, int]:
        """One pass: delete everything older than its retention; returns rows deleted by table
        (``runs`` counts runs; their balances and ticker rows go with them)."""
        config, now = self._config, self._clock()
        deleted: dict[str, int] = {}
        own = {j.name: j.retention for j in config.jobs if j.retention is not None}
        for name, seconds in own.items():
            cut = now - timedelta(seconds=seconds)
            deleted["runs"] = deleted.get("runs", 0) + self._runs(
                (runs.c.job == name) & (runs.c.started_at < cut)
            )
        if "runs" in config.retention:
            cut = now - timedelta(seconds=config.retention["runs"])
            condition = runs.c.started_at < cut
            if own:
                condition = condition & runs.c.job.not_in(list(own))
            deleted["runs"] = deleted.get("runs", 0) + self._runs(condition)
        for table, seconds in config.retention.items():
            if table == "runs":
                continue
            cut = now - timedelta(seconds=seconds)
            deleted[table] = self._rows(self.store.datasets[table], cut)
        done = {table: n for table, n in deleted.items() if n}
        if done:
            logger.info(
                "retention: deleted %s",
                ", ".join(f"{n} {'runs' if t == 'runs' else t + ' rows'}" for t, n in done.items()),
            )
        return deleted

    def _runs(self, condition: ColumnElement[bool]) -> int:
        """Delete the runs matching ``condition``, a batch per transaction."""
        oldest = select(runs.c.id).where(condition).order_by(runs.c.id).limit(self.batch)
        return self._batches(delete(runs).where(runs.c.id.in_(oldest)))

    def _rows(self, dataset: Dataset, cut: datetime) -> int:
        """Delete a dataset table's rows older than ``cut``, a batch per transaction (by the row's
        physical id: the tables' keys are composite)."""
        rid: ColumnElement[object] = literal_column(
            "rowid" if self.store.engine.dialect.name == "sqlite" else "ctid"
        )
        table = dataset.table
        assert dataset.prunable and dataset.time_column, f"{dataset.name} is not prunable"
        column = table.c[dataset.time_column]
        batch = select(rid).select_from(table).where(column < cut).limit(self.batch)
        return self._batches(delete(table).where(rid.in_(batch)))

    def _batches(self, statement: object) -> int:
        total = 0
        while not self._stop.is_set():
            with self.store.engine.begin() as conn:  # short: one batch, then the writer's turn
                count = conn.execute(statement).rowcount  # type: ignore[call-overload]
            total += max(0, count)
            if count < self.batch:
                break
        return total
