"""Is the collector still collecting? The staleness rule, and a service's health from its events.

One rule for ``/healthz`` and ``collector status``: a job is **stale** when it has had no success
for longer than its ``stale_after`` (the job file's ``jobs.NAME.stale_after``; by default 3 of its
intervals and at least 60 s; a cron job's interval is its average). A job that has not succeeded
yet is measured from when it could first have run (the service's start, or the reload that added
it), so a service that just started is not stale.

A job whose run is still paging (a first backfill takes many minutes on the starter tier) is
measured from its last stored page too: while pages keep being stored it is not stale but
``backfilling`` (``paging``, when it has succeeded before), its progress said; a paging run that
stops storing pages is stale by the same rule. ``status`` finds the paging run in ``runs`` (the
latest row, ``partial`` without an error), :class:`Health` in its pages' ``BatchStored``.

:class:`Health` follows a running service through its events and adds what only it knows: the
database unreachable while the spool grows, and the key locked out by Kraken.

A **stream** (the job file's ``streams:``) is judged by its data, not its runs: stale when it has
had no data for its ``stale_after`` (:func:`stream_verdict`). One that has had none yet since it
started is ``starting``, healthy for ``WS_STARTING_GRACE`` (or its ``stale_after``, if longer):
connecting and subscribing every pair take a while, and a refused connect backs off first. A
reconnect does not restart that grace in :class:`Health` (a connection that keeps failing would
never be stale); ``status``, which cannot tell a reconnect from a restart in the database, counts
it from the first connection opened after the last data.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import datasets, defaults
from .errors import Status
from .events import (
    BatchStored,
    DatabaseUnavailable,
    Events,
    LockedOut,
    RateLimitRefused,
    Reloaded,
    RunFinished,
    ServiceFailed,
    SpoolDrained,
    Spooled,
    StreamConnected,
    StreamDisconnected,
    StreamStored,
    WriteStalled,
)
from .jobfile import Job, Stream
from .schedule import calls_per_second
from .writer import State


def interval(job: Job) -> float:
    """Seconds between ``job``'s runs (a cron job's average; inf for a cron that never fires)."""
    if job.every is not None:
        return job.every.total_seconds()
    rate = calls_per_second(job)
    return 1.0 / rate if rate > 0 else math.inf


@functools.lru_cache(maxsize=4096)  # a cron's average takes 50 trigger steps; jobs are frozen
def stale_after(job: Job) -> float:
    """Seconds without a success after which ``job`` is stale."""
    if job.stale_after is not None:
        return job.stale_after
    return max(defaults.STALE_MIN, defaults.STALE_INTERVALS * interval(job))


def is_stale(job: Job, reference: datetime, now: datetime) -> bool:
    """Whether ``job`` is stale at ``now``, ``reference`` being its last success (or, before one,
    when it could first have run)."""
    return (now - reference).total_seconds() > stale_after(job)


@dataclass(frozen=True)
class Paging:
    """A run still paging: its pages stored so far, the rows they brought (``status``: the new
    ones, from ``runs.new_rows``), and when the last was fetched."""

    uid: str
    pages: int
    rows: int
    last_page: datetime

    def state(self, succeeded: bool) -> str:
        return "paging" if succeeded else "backfilling"

    def progress(self, succeeded: bool, now: datetime) -> str:
        """``backfilling: 550 rows so far, last page 3s ago``."""
        ago = max(0.0, (now - self.last_page).total_seconds())
        return f"{self.state(succeeded)}: {self.rows:,} rows so far, last page {ago:.0f}s ago"


def verdict(
    job: Job, reference: datetime, paging: Paging | None, succeeded: bool, now: datetime
) -> str:
    """``job``'s state: ``ok``, ``waiting`` for a first success, ``backfilling``/``paging``, or
    ``stale``, counted from ``reference`` (its last success, or when it could first have run), or
    from its paging run's last page when that is later."""
    if paging is not None and paging.last_page > reference:
        reference = paging.last_page
    if is_stale(job, reference, now):
        return "stale"
    if paging is not None:
        return paging.state(succeeded)
    return "ok" if succeeded else "waiting"


def cursor_time(dataset: str, cursor: Any) -> datetime | None:
    """Up to when a dataset's stored cursor says it has collected (None: not known yet), as the
    dataset of that name reads its cursor (:meth:`collector.datasets.Dataset.cursor_time`)."""
    return datasets.cursor_time(dataset, cursor)


def starting_grace(stream: Stream) -> float:
    """Seconds a stream without data yet since it started is ``starting`` rather than stale."""
    return max(stream.stale_after, defaults.WS_STARTING_GRACE)


def stream_verdict(
    stream: Stream, last_data: datetime | None, since: datetime, now: datetime
) -> str:
    """``stream``'s state: ``ok`` (data within its ``stale_after``), ``starting`` (no data since
    ``since``, when it started, for :func:`starting_grace`), or ``stale``. ``last_data`` is when
    its newest data was stored (None: never)."""
    if last_data is not None and last_data >= since:
        return "stale" if (now - last_data).total_seconds() > stream.stale_after else "ok"
    return "starting" if (now - since).total_seconds() <= starting_grace(stream) else "stale"


def stream_problem(
    stream: Stream, last_data: datetime | None, since: datetime, now: datetime
) -> str:
    """The line saying why a stale ``stream`` is stale."""
    if last_data is not None and last_data >= since:
        ago = (now - last_data).total_seconds()
        return (
            f"stream {stream.name}: no data for {ago:.0f}s (stale after {stream.stale_after:.0f}s)"
        )
    ago = (now - since).total_seconds()
    return (
        f"stream {stream.name}: no data since it started {ago:.0f}s ago "
        f"(stale after {starting_grace(stream):.0f}s without a first)"
    )


def pairs_shown(stream: Stream) -> str:
    """``all``, or how many pairs the stream names: ``2``."""
    return "all" if stream.all_pairs else str(len(stream.pairs))


@dataclass
class _StreamSeen:
    """What :class:`Health` knows of one stream: when it started (or was last changed), its last
    data (stored, and the data's own newest time), its connections open, its messages since."""

    since: datetime
    last_data: datetime | None = None
    newest: datetime | None = None
    messages: int = 0
    open: set[str] = field(default_factory=set)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Health:
    """A running service's health, kept from its events. Thread-safe; constructing one starts
    nothing, :meth:`start` marks the moment the jobs could first run.

    :param writer_state: the writer's :class:`~collector.writer.State`, read when asked
    """

    def __init__(
        self,
        jobs: Iterable[Job],
        events: Events,
        writer_state: Callable[[], State],
        clock: Callable[[], datetime] = utcnow,
        streams: Iterable[Stream] = (),
    ) -> None:
        self._jobs = {job.name: job for job in jobs}
        self._streams = {stream.name: stream for stream in streams}
        self._seen: dict[str, _StreamSeen] = {}
        self._writer_state = writer_state
        self._clock = clock
        self._lock = threading.Lock()
        self._since: dict[str, datetime] = {}
        self._last_success: dict[str, datetime] = {}
        self._remembered: set[str] = set()  # last successes from before this start
        self._last_run: dict[str, tuple[datetime, str]] = {}
        self._paging: dict[str, Paging] = {}  # runs still paging, from their stored pages
        self._spooling = False  # runs went to the spool since it was last empty
        self._stalled: str | None = None  # neither database nor spool takes runs
        self._locked_until = 0.0  # monotonic
        self._unavailable: str | None = None  # why the database takes no writes, until drained
        self._refused: dict[str, tuple[float, int]] = {}  # account: (monotonic until, in a row)
        self._failed: str | None = None
        events.subscribe(RunFinished, self._finished)
        events.subscribe(Spooled, self._spooled)
        events.subscribe(SpoolDrained, self._drained)
        events.subscribe(WriteStalled, self._write_stalled)
        events.subscribe(BatchStored, self._stored)
        events.subscribe(LockedOut, self._locked_out)
        events.subscribe(Reloaded, self._reloaded)
        events.subscribe(DatabaseUnavailable, self._database_unavailable)
        events.subscribe(ServiceFailed, self._service_failed)
        events.subscribe(RateLimitRefused, self._rate_refused)
        events.subscribe(StreamStored, self._stream_stored)
        events.subscribe(StreamConnected, self._stream_connected)
        events.subscribe(StreamDisconnected, self._stream_disconnected)

    def start(self) -> None:
        now = self._clock()
        with self._lock:
            self._since = dict.fromkeys(self._jobs, now)
            self._seen = {name: _StreamSeen(now) for name in self._streams}

    def configure_streams(self, streams: Iterable[Stream], restarted: Iterable[str] = ()) -> None:
        """The streams configured now (after a reload): those named in ``restarted`` (added or
        changed: resubscribed) get their starting grace again; a removed one is forgotten."""
        now = self._clock()
        with self._lock:
            self._streams = {stream.name: stream for stream in streams}
            fresh = set(restarted)
            seen: dict[str, _StreamSeen] = {}
            for name in self._streams:
                before = self._seen.get(name)
                if before is None or name in fresh:  # its connections stay what they are
                    seen[name] = _StreamSeen(now, open=before.open if before else set())
                else:
                    seen[name] = before
            self._seen = seen

    def remember(self, job: str, success: datetime) -> None:
        """``job``'s last success before this start, from the database: shown as its last
        success (as ``collector status`` shows it), while staleness still counts from the start
        at the earliest, so a service back from a long outage gets its jobs' time to run."""
        with self._lock:
            if job not in self._last_success:
                self._last_success[job] = success
                self._remembered.add(job)

    # -- events ---------------------------------------------------------------------------------

    def _finished(self, event: RunFinished) -> None:
        record = event.record
        with self._lock:
            self._last_run[record.job] = (record.finished_at, str(record.status))
            self._paging.pop(record.job, None)
            if record.status == "ok":
                self._last_success[record.job] = record.finished_at
                self._remembered.discard(record.job)

    def _spooled(self, _event: Spooled) -> None:
        with self._lock:
            self._spooling = True

    def _drained(self, _event: SpoolDrained) -> None:
        with self._lock:
            self._spooling = False
            self._unavailable = None

    def _database_unavailable(self, event: DatabaseUnavailable) -> None:
        with self._lock:
            self._unavailable = event.reason

    def _rate_refused(self, event: RateLimitRefused) -> None:
        with self._lock:
            self._refused[event.account] = (time.monotonic() + event.seconds, event.refusals)

    def _service_failed(self, event: ServiceFailed) -> None:
        with self._lock:
            self._failed = event.reason

    def _write_stalled(self, event: WriteStalled) -> None:
        with self._lock:
            self._stalled = event.reason

    def _stored(self, event: BatchStored) -> None:
        with self._lock:
            self._stalled = None
            if event.replayed:  # pages of a run that may have ended since: not news of progress
                return
            for record in event.records:
                # A page stored on the way (partial, no error: one cut short says why).
                if record.status != Status.PARTIAL or record.error is not None:
                    continue
                rows = sum(len(v) for k, v in record.rows.items() if k != "gaps")
                before = self._paging.get(record.job)
                if before is not None and before.uid == record.uid:
                    rows += before.rows
                self._paging[record.job] = Paging(
                    record.uid, record.pages, rows, record.finished_at
                )

    def _stream_stored(self, event: StreamStored) -> None:
        if event.messages <= 0:  # a batch of the connection's row alone: no data
            return
        now = self._clock()
        with self._lock:
            seen = self._seen.get(event.stream)
            if seen is not None:
                seen.last_data = now
                seen.newest = event.newest
                seen.messages += event.messages

    def _stream_connected(self, event: StreamConnected) -> None:
        with self._lock:
            seen = self._seen.get(event.stream)
            if seen is not None:
                seen.open.add(event.connection)

    def _stream_disconnected(self, event: StreamDisconnected) -> None:
        with self._lock:
            seen = self._seen.get(event.stream)
            if seen is not None:
                seen.open.discard(event.connection)

    def _locked_out(self, event: LockedOut) -> None:
        with self._lock:
            self._locked_until = time.monotonic() + event.seconds

    def _reloaded(self, event: Reloaded) -> None:
        now = self._clock()
        with self._lock:
            self._jobs = {job.name: job for job in event.jobs}
            for name in (*event.added, *event.changed):
                self._since[name] = now  # its new schedule gets its own time to run
            for name in event.removed:
                self._since.pop(name, None)
                self._paging.pop(name, None)

    # -- the verdict ----------------------------------------------------------------------------

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)``: the body says, per job, its last success, its interval, when it
        counts as stale, and its state (``ok``, ``waiting`` for a first success, ``backfilling``
        or ``paging`` while its run stores pages, with its ``progress``, or ``stale``); per
        stream, its state (``ok``, ``starting``, ``stale``), last data and connections open; and
        lists the problems in words."""
        now = self._clock()
        state = self._writer_state()
        with self._lock:
            problems: list[str] = []
            jobs: dict[str, Any] = {}
            for name, job in self._jobs.items():
                success = self._last_success.get(name)
                since = self._since.get(name, now)
                counted = success or since
                if name in self._remembered and success is not None:
                    counted = max(success, since)
                paging = self._paging.get(name)
                job_state = verdict(job, counted, paging, success is not None, now)
                stale = job_state == "stale"
                last = self._last_run.get(name)
                jobs[name] = {
                    "state": job_state,
                    "progress": paging.progress(success is not None, now) if paging else None,
                    "last_success": _iso(success),
                    "last_run": _iso(last[0]) if last else None,
                    "last_status": last[1] if last else None,
                    "interval_seconds": _finite(interval(job)),
                    "stale_after_seconds": _finite(stale_after(job)),
                }
                if stale:
                    ago = (now - counted).total_seconds()
                    what = "no success" if success is None else "last success"
                    if paging is not None:  # it pages, but stopped storing pages
                        what = f"{paging.progress(success is not None, now)}; {what}"
                    problems.append(
                        f"job {name}: {what} for {ago:.0f}s (stale after {stale_after(job):.0f}s)"
                    )
            streams: dict[str, Any] = {}
            for name, stream in self._streams.items():
                seen = self._seen.get(name) or _StreamSeen(now)
                stream_state = stream_verdict(stream, seen.last_data, seen.since, now)
                streams[name] = {
                    "state": stream_state,
                    "channel": stream.channel,
                    "pairs": pairs_shown(stream),
                    "last_data": _iso(seen.last_data),
                    "newest": _iso(seen.newest),
                    "messages": seen.messages,
                    "connections_open": len(seen.open),
                    "stale_after_seconds": stream.stale_after,
                }
                if stream_state == "stale":
                    problems.append(stream_problem(stream, seen.last_data, seen.since, now))
            if self._failed:
                problems.append(f"the scheduler's thread died ({self._failed}); stopping")
            spool_growing = (self._spooling or bool(self._unavailable)) and (
                state is not State.DIRECT
            )
            if spool_growing:
                why = f" ({self._unavailable})" if self._unavailable else ""
                problems.append(f"database unavailable{why}: runs go to the spool")
            if self._stalled:
                problems.append(f"neither the database nor the spool takes runs ({self._stalled})")
            locked = max(0.0, self._locked_until - time.monotonic())
            if locked > 0:
                problems.append(f"Kraken locked the key out; private calls resume in {locked:.0f}s")
            keys = {}
            for account, (until, refusals) in sorted(self._refused.items()):
                left = until - time.monotonic()
                if left <= 0:
                    continue
                keys[account] = {"refused_for_seconds": round(left, 1), "refusals": refusals}
                # One refusal is a blip the client recovers from; a streak means something else
                # keeps the key over its limit.
                if refusals >= defaults.REFUSALS_UNHEALTHY:
                    problems.append(
                        f"Kraken refuses account {account}'s key (EAPI:Rate limit exceeded, "
                        f"{refusals} in a row): is another program using it? Private calls "
                        f"resume in {left:.0f}s"
                    )
        healthy = not problems
        return healthy, {
            "status": "ok" if healthy else "unhealthy",
            "problems": problems,
            "jobs": jobs,
            "streams": streams,
            "writer": str(state),
            "spool_growing": spool_growing,
            "locked_out_seconds": round(locked, 1),
            "refused_keys": keys,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
