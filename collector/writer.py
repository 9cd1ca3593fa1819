"""A thread that stores runs in batches, so no run waits on the database, and that loses none.

Its states (:class:`State`):

* **direct** — each batch is committed to the database.
* **spooling** — the database can't be reached (down, locked, full): batches go to the spool, a
  durable file on local disk, until the next try (backoff up to 30 s).
* **draining** — the spool is replayed into the database, oldest first; new batches queue behind
  it so the order holds. When it is empty, back to direct.

Without a spool, a batch the database can't take is retried with backoff in memory. When neither
the database nor the spool can take a batch (the disk under both is full, the spool is locked),
the thread does not die: the batch waits in memory and is retried with backoff (logged as CRITICAL),
and callers are held back by ``max_pending``. Only those runs are lost if the process then dies.

A batch the database *refuses* because of a record's content (a NUL character PostgreSQL's JSONB
rejects, a value out of range) is stored run by run; a run that still can't be stored is kept as
a ``bad_response`` row without its answer, rows and cursor (and :class:`RecordRefused` tells the
runner, which then continues from the stored cursor, not past the refused rows). It never stalls
the runs around it. A refusal that is about the database itself (a table missing, no permission,
read-only, disk full, the SQLite file deleted) is an outage: the runs wait in the spool, with a
CRITICAL line, until writes work again.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any

from . import defaults
from .backoff import Backoff
from .errors import Status, cut
from .events import (
    BatchStored,
    DatabaseUnavailable,
    Events,
    RecordRefused,
    SpoolDrained,
    Spooled,
    WriteStalled,
)
from .records import RunRecord, decode, encode
from .spool import Spool
from .store import NONCE_KEY, DatabaseGone, Store, is_outage

logger = logging.getLogger(__name__)


class State(StrEnum):
    DIRECT = "direct"
    SPOOLING = "spooling"
    DRAINING = "draining"


class Unavailable(Exception):
    """The database can't take writes now (as opposed to refusing one record's content).

    :ivar lasting: it answers but refuses (no permission, a table missing, read-only, its file
        deleted): a person must act, so it is CRITICAL, not a blip
    """

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class Writer:
    """Batches runs into the store. Constructing one starts nothing; :meth:`start` does.

    :param nonce: returns the highest nonce used so far (or ``{mark name: nonce}``, one per
        account); it is saved with the next batch whenever it moved
    :param spool: where runs wait while the database can't be reached (None: wait in memory)
    :param events: where :class:`~collector.events.BatchStored` and friends are published
    """

    def __init__(
        self,
        store: Store,
        *,
        nonce: Callable[[], int | dict[str, int]] | None = None,
        spool: Spool | None = None,
        events: Events | None = None,
        batch_max: int = defaults.BATCH_MAX,
        flush_interval: float = defaults.FLUSH_INTERVAL,
        max_pending: int = defaults.MAX_PENDING,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.events = events or Events()
        self.state = State.DIRECT
        #: records stored or spooled (each page of a paging run is one)
        self.written = 0
        #: runs stored or spooled: the final record of each (a paging run's pages not counted)
        self.runs_written = 0
        self._nonce = nonce
        self._saved: dict[str, int] = {}
        self._batch_max = batch_max
        self._interval = flush_interval
        self._max_pending = max_pending
        self._backoff = backoff or Backoff()
        self._delays: Iterator[float] | None = None  # the current outage's backoff
        self._next_try = 0.0
        self._queue: queue.SimpleQueue[RunRecord | None] = queue.SimpleQueue()
        self._pending = 0
        self._waiters: dict[int, threading.Event] = {}
        self._refused: set[int] = set()  # ids of persisted records stored without their rows
        self._checked = time.monotonic()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="collector-writer", daemon=True)

    # -- the callers' side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; runs left in the spool by an earlier process are replayed first."""
        if self.spool is not None and self.spool.open() and len(self.spool):
            logger.warning(
                "%d runs wait in the spool %s; they are written first",
                len(self.spool),
                self.spool.path,
            )
            self.state = State.SPOOLING
        self._thread.start()

    def submit(self, record: RunRecord) -> None:
        """Queue a run; waits while ``max_pending`` runs are already waiting."""
        with self._cond:
            while self._pending >= self._max_pending and self._thread.is_alive():
                self._cond.wait(1.0)
            self._pending += 1
        self._queue.put(record)

    def persist(self, record: RunRecord, timeout: float | None = None) -> bool:
        """Queue a run and wait until it is in the database or the spool (durable either way).
        A paging run waits so for each page, so that a page it has moved past is never fetched
        again after a crash.

        :returns: True when it was stored as given; False when the database refused its content
            (it was stored without its rows and cursor) or ``timeout`` passed first
        """
        done = threading.Event()
        with self._cond:
            self._waiters[id(record)] = done
        self.submit(record)
        if not done.wait(timeout):
            return False
        with self._cond:
            refused = id(record) in self._refused
            self._refused.discard(id(record))
        return not refused

    @property
    def pending(self) -> int:
        """Runs submitted and not yet in the database or the spool."""
        with self._cond:
            return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is stored or spooled; False on timeout."""
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
        if not self._thread.is_alive():
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread -----------------------------------------------------------------------------

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
            self._persist(batch)  # an empty batch still saves a newer nonce, or drains the spool

    def _persist(self, batch: list[RunRecord]) -> None:
        """Put ``batch`` in the database or the spool, retrying in memory until one takes it."""
        delays = self._backoff.delays()
        while True:
            try:
                self._take(batch)
                break
            except Exception as exc:
                delay = next(delays)
                reason = f"{type(exc).__name__}: {_first_line(exc)}"
                where = (  # `is not None`: an empty spool is falsy, and it failed too
                    f"the database and the spool {self.spool.path}"
                    if self.spool is not None
                    else "the database"
                )
                logger.critical(
                    "%s can't take %d runs (%s); they wait in memory, next try in %.1fs",
                    where,
                    len(batch),
                    reason,
                    delay,
                )
                self.events.publish(WriteStalled(len(batch), reason))
                time.sleep(delay)  # writes are idempotent: what was stored is not stored twice
        self.written += len(batch)
        with self._cond:
            self._pending -= len(batch)
            self._cond.notify_all()
            for record in batch:
                waiter = self._waiters.pop(id(record), None)
                if waiter is not None:  # a page, persisted on the way to its run's end
                    waiter.set()
                else:
                    self.runs_written += 1

    def _take(self, batch: list[RunRecord]) -> None:
        if self.state is State.DIRECT:
            nonce = self._new_nonce()
            if not batch and nonce is None:
                self._check_idle()
                return
            try:
                self._store(batch, nonce)
            except Unavailable as exc:
                if self.spool is None:
                    raise
                went = exc
            else:
                self._saved.update(nonce or {})
                if batch:
                    self.events.publish(BatchStored(batch))
                return
            assert self.spool is not None
            if batch:  # in the spool before anyone is told it is there
                self.spool.put([encode(r) for r in batch])
                self.events.publish(Spooled(len(batch), len(self.spool)))
            self._unavailable(went, len(batch))
            return
        assert self.spool is not None
        if batch:
            self.spool.put([encode(r) for r in batch])  # behind the runs waiting, in order
            self.events.publish(Spooled(len(batch), len(self.spool)))
        if time.monotonic() >= self._next_try:
            self._drain()

    def _drain(self) -> None:
        """Replay the spool into the database, oldest first, while it answers."""
        assert self.spool is not None
        self.state = State.DRAINING
        replayed = 0
        while len(self.spool):
            chunk = self.spool.oldest(self._batch_max)
            records = [decode(item) for _, item in chunk]
            nonce = self._new_nonce()
            try:
                self._store(records, nonce)
            except Unavailable as exc:
                self._unavailable(exc, 0)
                return
            self._saved.update(nonce or {})
            self.spool.remove_through(chunk[-1][0])
            replayed += len(records)
            self.events.publish(BatchStored(records, replayed=True))
        self.state, self._delays = State.DIRECT, None
        logger.warning("database is back: %d spooled runs written, the spool is empty", replayed)
        self.events.publish(SpoolDrained(replayed))

    def _check_idle(self) -> None:
        """While nothing is written, look at the SQLite file now and then anyway, so that one
        deleted under an idle service is noticed (and said) within a minute, not at the next
        write."""
        if time.monotonic() - self._checked < defaults.FILE_CHECK_INTERVAL:
            return
        self._checked = time.monotonic()
        try:
            self.store.check_file()
        except DatabaseGone as exc:
            if self.spool is None:
                raise Unavailable(str(exc), lasting=True) from exc
            self._unavailable(Unavailable(str(exc), lasting=True), 0)

    def _unavailable(self, exc: Unavailable, count: int) -> None:
        """Enter (or stay in) the spooling state, with the next try after a backoff."""
        assert self.spool is not None
        first = self.state is State.DIRECT
        if self._delays is None:
            self._delays = self._backoff.delays()
        delay = next(self._delays)
        self.state, self._next_try = State.SPOOLING, time.monotonic() + delay
        self.events.publish(DatabaseUnavailable(str(exc), exc.lasting))
        if first and exc.lasting:
            logger.critical(
                "the database refuses writes (%s); %d runs went to the spool %s (%d waiting) "
                "until it takes them again",
                exc,
                count,
                self.spool.path,
                len(self.spool),
            )
        elif first:
            logger.error(
                "database unavailable (%s); %d runs went to the spool %s (%d waiting)",
                exc,
                count,
                self.spool.path,
                len(self.spool),
            )
        else:
            logger.warning(
                "database still unavailable (%s); %d runs wait in the spool %s, next try in %.0fs",
                exc,
                len(self.spool),
                self.spool.path,
                delay,
            )

    def _store(self, batch: list[RunRecord], nonce: dict[str, int] | None) -> None:
        """Write ``batch``; :class:`Unavailable` when the database can't take writes. A batch it
        refuses for a record's content is stored run by run, and a run it still refuses is kept
        without its answer, rows and cursor; if even that is refused, without its params too.
        Nothing a record holds can stall the records behind it."""
        try:
            _available(self.store.write, batch, nonce)
            return
        except Unavailable:
            raise
        except Exception as exc:
            logger.error(
                "a batch of %d runs was refused (%s: %s); storing them one by one",
                len(batch),
                type(exc).__name__,
                _first_line(exc),
            )
        for record in batch:
            try:
                _available(self.store.write, [record])
                continue
            except Unavailable:
                raise
            except Exception as exc:
                logger.error(
                    "job %s: its answer could not be stored (%s: %s); kept as bad_response "
                    "without it, its cursor not moved",
                    record.job,
                    type(exc).__name__,
                    _first_line(exc),
                )
                reason = exc
            with self._cond:
                if id(record) in self._waiters:
                    self._refused.add(id(record))
            self.events.publish(RecordRefused(record, f"{type(reason).__name__}"))
            try:
                _available(self.store.write, [_unstorable(record, reason)])
            except Unavailable:
                raise
            except Exception as exc:  # its params or error text: the bare run, then nothing
                try:
                    _available(self.store.write, [_unstorable(record, reason, bare=True)])
                except Unavailable:
                    raise
                except Exception:
                    logger.error(
                        "job %s: a run could not be stored at all (%s); dropped",
                        record.job,
                        _first_line(exc),
                    )
        _available(self.store.write, [], nonce)

    def _new_nonce(self) -> dict[str, int] | None:
        """The nonce marks to save with the next write: those that moved since the last one."""
        marks = self._nonce() if self._nonce else {}
        if isinstance(marks, int):
            marks = {NONCE_KEY: marks}
        moved = {k: v for k, v in marks.items() if v > self._saved.get(k, 0)}
        return moved or None


def _available(write: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Call ``write``, turning "the database can't take writes" into :class:`Unavailable`."""
    try:
        write(*args, **kwargs)
    except Exception as exc:
        if not is_outage(exc):
            raise
        lasting = isinstance(exc, DatabaseGone) or _answered(exc)
        raise Unavailable(f"{type(exc).__name__}: {_first_line(exc)}", lasting=lasting) from exc


def _answered(exc: BaseException) -> bool:
    """Whether the database answered with a refusal of its own (it has a code), as opposed to
    not being reachable at all."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state and not state.startswith(("08", "57P")):
        return True  # not a connection failure, not a shutdown in progress
    name = getattr(orig, "sqlite_errorname", None)
    return isinstance(name, str) and not name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _unstorable(record: RunRecord, exc: BaseException, *, bare: bool = False) -> RunRecord:
    """``record`` without what could not be stored, marked as a bad response; ``bare``: without
    its params too (a cursor value from a hostile answer can sit in them)."""
    reason = f"{type(exc).__name__}: {_first_line(exc)[:200]}"
    before = f"{record.error}; " if record.error else ""
    return dataclasses.replace(
        record,
        status=Status.BAD_RESPONSE,
        result=None,
        rows={},
        cursor=None,
        params={} if bare else _clean(record.params),
        error=cut(_clean(f"{before}the answer could not be stored ({reason})")),
    )


def _clean(value: Any) -> Any:
    """``value`` without what a database refuses in text: NUL characters and lone surrogates."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
