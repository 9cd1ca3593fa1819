"""The collection service: APScheduler 3 runs every job through one shared, rate-limited client.

What happens to a run that is late or missed (the surprising part):

* **Interval jobs also run once at start**; cron jobs wait for their first time.
* **Jobs with the same interval are spread evenly across it** after that first run: with 100 jobs
  ``every: 1s``, one starts every 10 ms instead of all 100 at the same instant, which would make
  most of them late and burst past the exchange's rate limits. Each job keeps its phase for the
  life of the process (use ``cron:`` when a run must land on the clock, e.g. on the hour).
* **A late run still runs, once.** A run can be late because its call waited for rate-limit budget,
  or because the process was busy or suspended. It is never dropped for being late
  (``misfire_grace_time=None``); if several of a job's times came due meanwhile, they are folded
  into one run (coalesced), and the log says how many were folded.
* **The same job never runs twice at the same time** (``max_instances=1``). A time that comes due
  while the job's previous run is still going is skipped, and the log says so.
* Every run, success or failure, is stored with the time it was scheduled for (``scheduled_at``),
  when its call started and when it finished.

Shutdown (SIGTERM or SIGINT): scheduling stops at once, calls waiting for budget give up, calls in
flight finish (each has a timeout), every run is written, the session is closed, exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any

import requests
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .client import API
from .config import Config, Job, KrakenSettings
from .errors import RequestError
from .nonce import UNITS
from .retry import LOCKOUT, NONCE, TRANSIENT, RetryPolicy, classify
from .spool import Spool
from .storage import RunRecord, Store, Writer

logger = logging.getLogger(__name__)

#: Threads that make calls. Private calls are serialised by the client anyway; public ones overlap.
DEFAULT_WORKERS = 16
#: A run that starts this much after its time is logged as late.
LATE_AFTER = 1.0
#: How long shutdown waits for the writer, beyond the calls' own timeouts.
WRITE_GRACE = 30.0
#: Parameters never stored (the client adds the nonce; an otp is a password).
SECRET_PARAMS = frozenset({"nonce", "otp"})
BALANCE_METHODS = frozenset({"Balance", "BalanceEx"})
#: How far ahead of the last nonce used the spool's lease is kept.
NONCE_LEASE_SECONDS = 60


class ShuttingDown(Exception):
    """Raised inside a call that was waiting for budget when the service began to stop."""


def build_api(settings: KrakenSettings, *, nonce_floor: int = 0,
              stopping: threading.Event | None = None) -> API:  # fmt: skip
    """The one shared client: rate limits on, a timeout on every call."""
    api = API(settings.key, settings.secret, rate_limit=settings.tier,
              public_rate_limit=settings.public_rate_limit, nonce_unit=settings.nonce_unit,
              nonce_floor=nonce_floor, timeout=settings.timeout,
              max_response=settings.max_response)  # fmt: skip
    api.uri = settings.url
    # requests re-reads proxy variables and ~/.netrc on every request; a long-running service
    # resolves them once here (a netrc login must never be sent to Kraken anyway).
    api.session.proxies.update(requests.utils.get_environ_proxies(settings.url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        api.session.verify = bundle
    api.session.trust_env = False
    if stopping is not None:
        # A call waiting for budget must not hold up shutdown: its sleep ends when we stop.
        def sleep(seconds: float) -> None:
            if stopping.wait(seconds):
                raise ShuttingDown

        for limiter in (api.limiter, api.public_limiter):
            if limiter is not None:
                limiter._sleep = sleep
    return api


def balance_rows(method: str, result: Any) -> list[tuple[str, Decimal]]:
    """``(asset, amount)`` pairs from a Balance or BalanceEx result, exactly.

    An empty account's answer has no ``result`` at all: that is an empty snapshot.

    :raises ValueError: when the result is not a mapping of assets to decimal amounts
    """
    if result is None:
        return []
    if not isinstance(result, dict):
        raise ValueError(f"{method} result is a {type(result).__name__}, not a mapping of assets")
    rows = []
    for asset, value in result.items():
        amount = (
            value.get("balance") if method == "BalanceEx" and isinstance(value, dict) else value
        )
        if not isinstance(amount, str):
            raise ValueError(f"{method} amount of {asset!r} is not a decimal string")
        try:
            number = Decimal(amount)
        except InvalidOperation:
            raise ValueError(f"{method} amount of {asset!r} is not a number") from None
        if not number.is_finite():
            raise ValueError(f"{method} amount of {asset!r} is not a finite number")
        rows.append((str(asset)[:32], number))
    return rows


class _GridInterval(IntervalTrigger):
    """An interval trigger on a fixed grid, ``start_date + k * interval``.

    APScheduler's own trigger adds the interval to the previous run time, so a job that ran at
    start would take that instant as its phase; this one always returns to its grid.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> Any:
        if previous_fire_time is None:
            return super().get_next_fire_time(None, now)
        return super().get_next_fire_time(None, previous_fire_time + timedelta(microseconds=1))


def _phases(jobs: tuple[Job, ...]) -> dict[str, timedelta]:
    """Offsets that spread the jobs sharing an interval evenly across it."""
    groups: dict[timedelta, list[str]] = {}
    for job in jobs:
        if job.every is not None:
            groups.setdefault(job.every, []).append(job.name)
    return {name: every * k / len(names)
            for every, names in groups.items() for k, name in enumerate(names)}  # fmt: skip


class _Executor(ThreadPoolExecutor):
    """APScheduler's thread pool, telling each run the time it was scheduled for.

    It also does the coalescing itself (the jobs are added with ``coalesce=False``) so that it can
    log how many due times were folded into one run.
    """

    def __init__(self, service: Service, max_workers: int) -> None:
        super().__init__(max_workers)
        self._service = service

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        if len(run_times) > 1:
            logger.warning("job %s: %d runs came due while it was late; running once (coalesced)",
                           job.id, len(run_times))  # fmt: skip
            run_times = run_times[-1:]

        def done(future: Any) -> None:
            exc = future.exception()
            if exc is not None:
                self._run_job_error(job.id, exc, getattr(exc, "__traceback__", None))
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(self._run, job, run_times).add_done_callback(done)

    def _run(self, job: Any, run_times: list[datetime]) -> Any:
        self._service._scheduled.at = run_times[-1]
        return run_job(job, job._jobstore_alias, run_times, self._logger.name)


class Service:
    """Runs a job file's jobs and stores every run.

    :param config: the validated job file
    :param store: where runs go, already migrated (default: the config's database, migrated here)
    :param api: the shared client (default: built from the config, its nonce floor from the store)
    :param workers: threads making calls
    :param retry: backoff and lockout (default: from the config)
    :param clock: returns the current UTC datetime; a seam for tests
    """

    def __init__(self, config: Config, *, store: Store | None = None, api: API | None = None,
                 workers: int = DEFAULT_WORKERS, retry: RetryPolicy | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:  # fmt: skip
        self.config = config
        self.stopping = threading.Event()
        if store is None:  # a store passed in is already migrated (the CLI does it, waiting)
            store = Store.from_url(config.database)
            store.upgrade()
        self.store = store
        self.api = api or build_api(config.kraken, stopping=self.stopping)
        self.spool = Spool(config.spool_path, config.spool_max_runs)
        if len(self.spool):
            logger.warning("%d runs wait in the spool %s; they are written first",
                           len(self.spool), self.spool.path)  # fmt: skip
        # A restart starts above every nonce the last process may have used, even after kill -9
        # and with the clock gone back: the stored high-water mark and the spool's lease.
        self.api.nonces.raise_floor(max(self.store.load_nonce(), self.spool.load_nonce()))
        self.api.nonces.lease(NONCE_LEASE_SECONDS * 10**9 // UNITS[self.api.nonces.unit],
                              self.spool.save_nonce)  # fmt: skip
        self.writer = Writer(self.store, nonce=lambda: self.api.nonces.last, spool=self.spool)
        self.workers = workers
        self.clock = clock
        self.retry = retry or RetryPolicy(lockout=config.kraken.lockout)
        self._scheduled = threading.local()
        self._scheduler: BackgroundScheduler | None = None

    # -- one run ------------------------------------------------------------------------------

    def execute(self, job: Job, scheduled_at: datetime | None = None) -> RunRecord | None:
        """Call ``job``'s method once and hand the run to the writer. Never raises.

        Returns None when the service began stopping before the call was sent.
        """
        started = self.clock()
        scheduled = scheduled_at or getattr(self._scheduled, "at", None) or started
        late = (started - scheduled).total_seconds()
        if late > LATE_AFTER:
            logger.info("job %s started %.1fs after its time", job.name, late)
        record = RunRecord(job=job.name, method=job.method,
                           params={k: v for k, v in job.params.items() if k not in SECRET_PARAMS},
                           scheduled_at=scheduled, started_at=started, finished_at=started,
                           status="ok")  # fmt: skip
        deadline = time.monotonic() + job.deadline
        attempt = nonce_retries = 0
        while True:
            attempt += 1
            kind = None
            try:
                reply = self.api.call(job.method, job.params, timeout=job.timeout)
                record.status, record.http_status, record.result = (
                    "ok",
                    reply.http_status,
                    reply.result,
                )
                record.error = ", ".join(reply.warnings) or None
                if job.method in BALANCE_METHODS:
                    record.balances = balance_rows(job.method, reply.result)
            except ShuttingDown:
                logger.info("job %s: not run, the service is stopping", job.name)
                return None
            except RequestError as exc:
                record.status, record.http_status = exc.status, exc.http_status
                record.error = ", ".join(exc.errors) if exc.errors else str(exc)
                kind = classify(exc)
            except ValueError as exc:  # a result we cannot store as promised (e.g. balances)
                record.status, record.error, record.balances = "bad_response", str(exc), []
            except Exception as exc:  # a bug must not kill the service; it becomes a stored row
                logger.exception("job %s: unexpected error", job.name)
                record.status, record.error = "bad_response", f"{type(exc).__name__}: {exc}"
            if kind is None or not self._retry_after(job, kind, attempt, nonce_retries, deadline):
                break
            nonce_retries += kind == NONCE
        record.attempts = attempt
        record.finished_at = self.clock()
        if record.status != "ok":
            logger.warning("job %s: %s %s", job.name, record.status, record.error)
        self.writer.submit(record)
        return record

    def _retry_after(self, job: Job, kind: str, attempt: int, nonce_retries: int,
                     deadline: float) -> bool:  # fmt: skip
        """Wait before the next attempt if ``kind`` deserves one in time; False to give up."""
        if kind == LOCKOUT and job.private and self.api.limiter is not None:
            logger.error("Kraken locked the key out; private calls pause for %.0fs",
                         self.retry.lockout)  # fmt: skip
            self.api.limiter.pause(self.retry.lockout)
        if not self.retry.should_retry(kind, attempt, nonce_retries):
            return False
        # A nonce retry takes a fresh nonce at once; a rate-limit retry waits in the limiter,
        # which the refusal has filled; transient failures back off.
        wait = self.retry.backoff(attempt) if kind == TRANSIENT else 0.0
        if time.monotonic() + wait >= deadline:
            return False
        logger.info(
            "job %s: attempt %d failed (%s); retrying in %.2fs", job.name, attempt, kind, wait
        )
        return not self.stopping.wait(wait)

    def _run_scheduled(self, job: Job) -> None:
        self.execute(job)

    # -- modes --------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Run every job once, in file order, store them, and say whether all succeeded."""
        results = [self.execute(job) for job in self.config.jobs]
        self.writer.flush()
        return all(r is not None and r.status == "ok" for r in results)

    def start(self) -> None:
        """Start scheduling in background threads."""
        scheduler = BackgroundScheduler(
            executors={"default": _Executor(self, self.workers)},
            job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        now = datetime.now(UTC)
        phases = _phases(self.config.jobs)
        for job in self.config.jobs:
            trigger: Any
            if job.every is not None:
                trigger = _GridInterval(seconds=job.every.total_seconds(), jitter=job.jitter,
                                        start_date=now + phases[job.name], timezone=job.timezone)  # fmt: skip
                first = now  # interval jobs also run once at start
            else:
                assert job.cron is not None
                trigger = CronTrigger.from_crontab(job.cron, timezone=job.timezone)
                if job.jitter:
                    trigger.jitter = int(job.jitter)
                first = None
            options = {"next_run_time": first} if first is not None else {}
            scheduler.add_job(self._run_scheduled, trigger, args=[job], id=job.name,
                              name=job.name, **options)  # fmt: skip
        self._scheduler = scheduler
        scheduler.start()
        logger.info("collector started: %d jobs, database %s, exchange %s",
                    len(self.config.jobs), self.config.database_for_display(),
                    self.config.kraken.url)  # fmt: skip

    def _skipped(self, event: JobSubmissionEvent) -> None:
        logger.warning("job %s: skipped the run due at %s, its previous run is still going",
                       event.job_id, event.scheduled_run_times[0].isoformat())  # fmt: skip

    def stop(self) -> None:
        """Stop scheduling, let calls in flight finish, write everything, close the session."""
        self.stopping.set()
        try:
            if self._scheduler is not None and self._scheduler.running:
                # Waits for calls in flight; each has a timeout, and budget waits end at once.
                self._scheduler.shutdown(wait=True)
        finally:
            try:
                if not self.writer.close(WRITE_GRACE):
                    logger.critical("%d runs could not be written before shutdown and are lost",
                                    self.writer.pending)  # fmt: skip
            finally:
                self.api.close()
                self.store.dispose()
                self.spool.close()
        logger.info("collector stopped: %d runs written", self.writer.written)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set (default: until SIGTERM or SIGINT), then stop cleanly."""
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(stop_signals())
            try:
                self.start()
                while not stop.wait(1.0):
                    pass
            finally:
                self.stop()


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM or SIGINT sets while inside; the previous handlers return after."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second Ctrl-C must not abort the writing of what we have
            logger.info("received %s again; still stopping", name)
        else:
            logger.info("received %s, stopping", name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def calls_per_second(job: Job, now: datetime | None = None) -> float:
    """The average rate at which ``job`` fires (cron jobs: over their next 50 times)."""
    if job.every is not None:
        return 1.0 / job.every.total_seconds()
    assert job.cron is not None
    trigger = CronTrigger.from_crontab(job.cron, timezone=job.timezone)
    t, previous, times = now or datetime.now(UTC), None, []
    for _ in range(50):
        fire = trigger.get_next_fire_time(previous, t)
        if fire is None:
            break
        times.append(fire)
        previous, t = fire, fire + timedelta(microseconds=1)
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0]).total_seconds()
