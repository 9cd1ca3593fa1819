"""One run of a job: call, retry what deserves it, turn the answer into rows, hand the record over.

:meth:`Runner.run` never raises: every outcome, a bug included, becomes a stored run. Retries stay
within the job's ``deadline``; ``EGeneral:Temporary lockout`` pauses the client's private calls
for the lockout period (public calls go on).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from . import defaults
from .client import API
from .datasets import DEFAULT, Dataset, Page, by_method
from .errors import (
    BadResponse,
    Cancelled,
    ConfigError,
    CredentialsError,
    NotPermitted,
    RequestError,
    Status,
    cut,
)
from .events import Events, LockedOut, RecordRefused, RunFinished
from .jobfile import Job
from .methods import cost, permission
from .records import Prepared, RunRecord
from .retry import Kind, RetryPolicy, classify

logger = logging.getLogger(__name__)

#: Parameters never stored (the client adds the nonce; an otp is a password).
SECRET_PARAMS = frozenset({"nonce", "otp"})


def utcnow() -> datetime:
    return datetime.now(UTC)


_TIME = itemgetter("time")


class _Progress:
    """What a long paging run has fetched so far, said in the log every ``PROGRESS_EVERY``
    seconds (a backfill of thousands of entries takes minutes) and once at its end."""

    def __init__(self, job: str, every: float = defaults.PROGRESS_EVERY) -> None:
        self.job, self.every = job, every
        self.started = self.said = time.monotonic()
        self.pages = self.rows = 0
        self.oldest: datetime | None = None
        self.newest: datetime | None = None
        self.told = False

    def add(self, rows: Sequence[Any]) -> None:
        self.pages += 1
        self.rows += len(rows)
        if isinstance(rows, Prepared):  # times as their stored text, which sorts as they do
            self._span_of(rows)
        else:
            self._times(rows)
        self._said()

    def _times(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:  # every row's time an aware datetime, as a history's rows have: in C
            times = list(map(_TIME, rows))
            oldest, newest = min(times), max(times)
            if type(oldest) is not datetime or type(newest) is not datetime:
                raise TypeError("not times")
        except (KeyError, TypeError, ValueError):  # not every row has one (or none does)
            times = [t for r in rows if isinstance(t := r.get("time"), datetime)]
            oldest, newest = (min(times), max(times)) if times else (None, None)
        self._extend(oldest, newest)

    def _span_of(self, rows: Prepared) -> None:
        if "time" in rows.columns and rows:
            texts = list(map(itemgetter(rows.columns.index("time")), rows))
            self._extend(datetime.fromisoformat(min(texts)), datetime.fromisoformat(max(texts)))

    def _extend(self, oldest: datetime | None, newest: datetime | None) -> None:
        if oldest is not None and newest is not None:
            self.oldest = oldest if self.oldest is None else min(oldest, self.oldest)
            self.newest = newest if self.newest is None else max(newest, self.newest)

    def _said(self) -> None:
        now = time.monotonic()
        if now - self.said >= self.every:
            self.said, self.told = now, True
            logger.info(
                "job %s: paging: %d pages, %d rows so far%s",
                self.job,
                self.pages,
                self.rows,
                self._span(),
                extra={"job": self.job},
            )

    def done(self, status: str) -> None:
        if self.told:  # a run long enough to have said how it went says how it ended
            logger.info(
                "job %s: %s after %d pages, %d rows%s, in %.0fs",
                self.job,
                status,
                self.pages,
                self.rows,
                self._span(),
                time.monotonic() - self.started,
                extra={"job": self.job},
            )

    def _span(self) -> str:
        if self.oldest is None or self.newest is None:
            return ""
        return (
            f", from {self.oldest.isoformat(sep=' ', timespec='seconds')} "
            f"to {self.newest.isoformat(sep=' ', timespec='seconds')}"
        )


class Runner:
    """Runs jobs through one shared client.

    :param clients: the client of each account, and the public one under ``None`` (or one client
        for everything)
    :param submit: where finished runs go (the writer's ``submit``)
    :param persist: where a paging run's pages go, waiting until each is stored (the writer's
        ``persist``; default ``submit``)
    :param datasets: the derived tables; a job whose method one of them reads fills it
    :param load_cursor: ``(job, dataset) -> cursor`` from the store, for incremental datasets
    :param events: :class:`~collector.events.RunFinished` is published here after each run
    :param clock: the current UTC datetime; a seam for tests
    :param stopping: when set, waits between attempts end and no new attempt starts
    :param progress_every: a paging run logs how far it got at most this often (seconds)
    """

    def __init__(
        self,
        clients: API | Mapping[str | None, API],
        submit: Callable[[RunRecord], None],
        *,
        persist: Callable[[RunRecord], object] | None = None,
        permit: Callable[[Job], bool] | None = None,
        datasets: Sequence[Dataset] = DEFAULT,
        load_cursor: Callable[[str, str], Any] | None = None,
        retry: RetryPolicy | None = None,
        events: Events | None = None,
        clock: Callable[[], datetime] = utcnow,
        stopping: threading.Event | None = None,
        progress_every: float = defaults.PROGRESS_EVERY,
    ) -> None:
        # A job runs through its account's client; public jobs through the one under None.
        self.clients: dict[str | None, API] = (
            {None: clients} if isinstance(clients, API) else dict(clients)
        )
        self.submit = submit
        self.permit = permit
        self.persist = persist or submit
        self.datasets = by_method(datasets)
        self.retry = retry or RetryPolicy()
        self.events = events or Events()
        self.clock = clock
        self.stopping = stopping or threading.Event()
        self.progress_every = progress_every
        self._load_cursor = load_cursor
        self._cursors: dict[tuple[str, str], Any] = {}
        self._cursor_lock = threading.Lock()
        # A run the database refused was stored without its cursor: its job continues from the
        # stored one, not from the one held here (which is past the refused rows).
        self.events.subscribe(RecordRefused, lambda e: self.forget(e.record.job))

    def run(self, job: Job, scheduled_at: datetime | None = None) -> RunRecord | None:
        """Call ``job``'s method (each call retried within the job's deadline), page through what
        its dataset asks for, and submit the run. Never raises.

        A paging run submits a record per page as it goes (the page's rows and cursor, status
        ``partial``), so a run cut short anywhere keeps every page it stored. Returns None when the
        service began stopping before anything was received.
        """
        if self.stopping.is_set():
            logger.info("job %s: not run, the service is stopping", job.name)
            return None
        if self.permit is not None and not self.permit(job):
            logger.debug("job %s: not run, another process holds its lease", job.name)
            return None
        started = self.clock()
        scheduled = scheduled_at or started
        late = (started - scheduled).total_seconds()
        if late > defaults.LATE_AFTER:
            logger.info("job %s started %.1fs after its time", job.name, late)
        dataset = self.datasets.get(job.method)
        keep = job.raw or dataset is None or dataset.keep_result
        record = RunRecord(
            job=job.name,
            method=job.method,
            params={},
            scheduled_at=scheduled,
            started_at=started,
            finished_at=started,
            dataset=dataset.name if dataset and dataset.incremental else None,
            attempts=0,
            account=job.account,
        )
        try:
            cursor = self._cursor(job, dataset)
        except Exception as exc:  # the database is down and this process has no cursor yet
            logger.warning(
                "job %s: not run, its cursor can't be read (%s)", job.name, str(exc).splitlines()[0]
            )
            return None
        params = dict(job.params)
        if dataset is not None:
            params, cursor = dataset.first(job, cursor, started)
        record.params = {k: v for k, v in params.items() if k not in SECRET_PARAMS}
        answers: list[Any] = []
        progress = _Progress(job.name, self.progress_every)
        while True:
            try:
                ok, result = self._call(job, params, record)
            except (Cancelled, NotPermitted) as exc:
                record.attempts -= 1  # the call that gave up waiting was never sent
                if record.pages == 0 and record.attempts == 0:
                    logger.info("job %s: not run (%s)", job.name, exc)
                    return None
                if record.pages:
                    record.status = Status.PARTIAL
                    record.error = f"stopped before the last page: {exc}"
                else:  # calls were made and failed: the run is the last failure, stored
                    record.error = f"{record.error}; not retried: {exc}"
                break
            record.finished_at = self.clock()
            if not ok:
                break
            record.pages += 1
            if keep:
                answers.append(result)
            if dataset is None:
                break
            try:
                page = dataset.page(record, params, result, cursor)
            except Exception as exc:  # an answer that doesn't hold what it should
                if not isinstance(exc, BadResponse | ValueError):
                    logger.exception("job %s: unexpected error reading the answer", job.name)
                record.status, record.error = Status.BAD_RESPONSE, cut(str(exc))
                answers = answers or [result]  # the answer that could not be read is kept
                keep = True
                break
            result = None  # read (or kept in answers): not held through the wait for the writer
            self._take(record, dataset, page)
            progress.add(page.rows)
            if page.cursor is not None:
                cursor = page.cursor
            if page.next is None:
                break
            if self.stopping.is_set():  # a long backfill must not hold up shutdown
                record.status, record.error = Status.PARTIAL, "stopped before the last page"
                break
            # More to fetch: this page is stored now with its cursor (and we wait for that), so a
            # run cut short continues from here; the run's final record follows the last page.
            stored = self.persist(dataclasses.replace(record, status=Status.PARTIAL, result=None))
            record.rows = {}
            if stored is False:
                self._refused(record)
                break
            params = page.next
        if keep and answers:
            record.result = answers[0] if len(answers) == 1 else {"pages": answers}
        progress.done(record.status)
        if record.status != Status.OK:
            hint = ""
            needed = permission(job.method)
            if needed and record.error and "Permission denied" in record.error:
                hint = f" (the API key needs the permission {needed!r} for {job.method})"
            logger.warning(
                "job %s: %s %s%s",
                job.name,
                record.status,
                record.error,
                hint,
                extra={"job": job.name, "status": str(record.status)},
            )
        self.events.publish(RunFinished(record))
        self.submit(record)
        return record

    def _refused(self, record: RunRecord) -> None:
        """A page was refused for its content (stored without rows and cursor): the run ends
        there, and the job continues from the stored cursor (the one this process holds is past
        the refused rows)."""
        record.status = Status.BAD_RESPONSE
        record.error = "a page could not be stored; the next run asks for it again"
        record.rows, record.cursor = {}, None
        self.forget(record.job)

    def _call(self, job: Job, params: dict[str, Any], record: RunRecord) -> tuple[bool, Any]:
        """One call with its retries; the outcome goes into ``record``. (True, result) on success.

        :raises Cancelled: the service is stopping
        """
        deadline = time.monotonic() + job.deadline
        attempt = nonce_retries = 0
        dataset = self.datasets.get(job.method)
        decode = dataset.decode if dataset is not None else None  # its typed read, if it has one
        while True:
            attempt += 1
            record.attempts += 1
            kind, reason = None, ""
            try:
                reply = self.client(job).call(
                    job.method, params, timeout=job.timeout, decode=decode
                )
                record.status, record.http_status = Status.OK, reply.http_status
                record.error = ", ".join(reply.warnings) or None
                return True, reply.result
            except RequestError as exc:
                record.status, record.http_status = exc.status, exc.http_status
                record.error = cut(", ".join(exc.errors) if exc.errors else str(exc))
                kind, reason = classify(exc), exc.reason
            except (Cancelled, NotPermitted):
                raise
            except (ConfigError, CredentialsError) as exc:  # a person must fix it; no retry helps
                record.status, record.error = exc.status, str(exc)
            except Exception as exc:  # a bug must not kill the service; it becomes a stored row
                logger.exception("job %s: unexpected error", job.name)
                record.status, record.error = (
                    Status.BAD_RESPONSE,
                    cut(f"{type(exc).__name__}: {exc}"),
                )
            if kind is None or not self._retry_after(
                job, kind, attempt, nonce_retries, deadline, reason
            ):
                return False, None
            nonce_retries += kind == Kind.NONCE

    def _take(self, record: RunRecord, dataset: Dataset, page: Page) -> None:
        """Put a page's rows, gaps and cursor into ``record``."""
        rows = record.rows.get(dataset.name)
        if rows is None:  # a Prepared stays one: its tuples are the store's as they are
            record.rows[dataset.name] = (
                page.rows if isinstance(page.rows, Prepared) else list(page.rows)
            )
        else:
            rows.extend(page.rows)
        if page.gaps:
            record.rows.setdefault("gaps", []).extend(page.gaps)
            for gap in page.gaps:
                logger.warning(
                    "job %s: no data from %s to %s (%s); recorded in gaps",
                    record.job,
                    gap["start"].isoformat(),
                    gap["end"].isoformat(),
                    gap["reason"],
                )
        if page.cursor is not None:
            record.cursor = page.cursor
            with self._cursor_lock:
                self._cursors[(record.job, dataset.name)] = page.cursor

    def client(self, job: Job) -> API:
        """The client ``job`` runs through: its account's, or the public one."""
        return self.clients.get(job.account) or self.clients[None]

    def forget_cursors(self) -> None:
        """Read every cursor from the store again at the next run (another process moved them)."""
        with self._cursor_lock:
            self._cursors.clear()

    def _cursor(self, job: Job, dataset: Dataset | None) -> Any:
        """The job's cursor: the last one this process made, else the stored one."""
        if dataset is None or not dataset.incremental:
            return None
        key = (job.name, dataset.name)
        with self._cursor_lock:
            if key in self._cursors:
                return self._cursors[key]
        stored = self._load_cursor(*key) if self._load_cursor else None
        with self._cursor_lock:
            return self._cursors.setdefault(key, stored)

    def forget(self, job: str) -> None:
        """Drop ``job``'s cursors held in memory, so its next run starts from the stored ones
        (a reload that removed the job, or changed what it asks)."""
        with self._cursor_lock:
            for key in [k for k in self._cursors if k[0] == job]:
                del self._cursors[key]

    def _retry_after(
        self,
        job: Job,
        kind: Kind,
        attempt: int,
        nonce_retries: int,
        deadline: float,
        reason: str = "",
    ) -> bool:
        """Wait before the next attempt if ``kind`` deserves one in time; False to give up."""
        limiter = self.client(job).limiter
        if kind == Kind.LOCKOUT and job.private and limiter is not None:
            logger.error(
                "Kraken locked out the key of account %s; its private calls pause for %.0fs",
                job.account,
                self.retry.lockout,
            )
            limiter.pause(self.retry.lockout)
            self.events.publish(LockedOut(self.retry.lockout, job.account))
        if not self.retry.should_retry(kind, attempt, nonce_retries):
            return False
        # A nonce retry takes a fresh nonce at once; transient failures back off; a rate-limit
        # retry waits in the limiter (with every other call of the key) until the refusal's
        # drain is over, so it is made only when that ends within the job's deadline.
        wait = 0.0
        if kind == Kind.TRANSIENT:
            wait = self.retry.backoff(attempt)
        elif kind == Kind.RATE_LIMIT and limiter is not None:
            wait = limiter.wait_time(cost(job.method))
        if time.monotonic() + wait >= deadline:
            return False
        logger.info(
            "job %s: attempt %d failed (%s); retrying in %.2fs",
            job.name,
            attempt,
            reason,
            wait,
            extra={"job": job.name},
        )
        if kind == Kind.RATE_LIMIT:
            return not self.stopping.is_set()  # the limiter does the waiting
        return not self.stopping.wait(wait)
