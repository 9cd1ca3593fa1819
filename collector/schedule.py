"""When jobs run: APScheduler 3 triggers, phases, and an executor that says when a run was due.

Only public APScheduler 3 API is used, except one abstract method :class:`RunExecutor` must
define (see there); ``tests/test_schedule.py`` holds APScheduler to what this module relies on.

What happens to a run that is late or missed (the surprising part):

* **Interval jobs also run once at start**, and so do cron jobs that have **never succeeded**
  (the README's hourly ``balances`` would leave the dashboard empty for up to an hour); a cron job
  that has succeeded before waits for its time, so a restart does not add runs off its clock.
  A job added by a reload is treated the same way.
* **SIGUSR1 makes every job due now** (:class:`RunNow`; ``kill -USR1 PID``, ``docker kill -s
  USR1``): a snapshot now, without editing the job file. A job whose run is still going is
  skipped, as below.
* **Jobs with the same interval are spread evenly across it** after that first run: with 100 jobs
  ``every: 1s``, one starts every 10 ms instead of all 100 at the same instant, which would make
  most of them late and burst past the exchange's rate limits. Each job keeps its phase for the
  life of the process (use ``cron:`` when a run must land on the clock, e.g. on the hour).
* **A late run still runs, once.** A run can be late because its call waited for rate-limit budget,
  or because the process was busy or suspended. It is never dropped for being late
  (``misfire_grace_time=None``); if several of a job's times came due meanwhile, they are folded
  into one run (coalesced), stamped with the latest of them, and the log says how many.
* **The same job never runs twice at the same time** (``max_instances=1``). A time that comes due
  while the job's previous run is still going is skipped, and the log says so once (INFO; a
  budget-limited backfill skips every interval for minutes), then at DEBUG until the job runs.
"""

from __future__ import annotations

import functools
import logging
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_SUBMITTED,
    EVENT_SCHEDULER_STARTED,
    JobSubmissionEvent,
)
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import defaults
from .jobfile import Job
from .signals import SignalThread

logger = logging.getLogger(__name__)


class GridInterval(IntervalTrigger):
    """An interval trigger on a fixed grid, ``start_date + k * interval``.

    APScheduler's own trigger adds the interval to the previous run time, so a job that ran at
    start would take that instant as its phase; this one always returns to its grid.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> Any:
        if previous_fire_time is None:
            return super().get_next_fire_time(None, now)
        return super().get_next_fire_time(None, previous_fire_time + timedelta(microseconds=1))


def phases(jobs: Sequence[Job]) -> dict[str, timedelta]:
    """Offsets that spread the jobs sharing an interval evenly across it."""
    groups: dict[timedelta, list[str]] = {}
    for job in jobs:
        if job.every is not None:
            groups.setdefault(job.every, []).append(job.name)
    return {
        name: every * k / len(names)
        for every, names in groups.items()
        for k, name in enumerate(names)
    }


def trigger(job: Job, start: datetime | None = None) -> BaseTrigger:
    """``job``'s trigger; an interval job's grid starts at ``start``."""
    if job.every is not None:
        return GridInterval(
            seconds=job.every.total_seconds(),
            jitter=job.jitter,
            start_date=start or datetime.now(UTC),
            timezone=job.timezone,
        )
    assert job.cron is not None
    cron = CronTrigger.from_crontab(job.cron, timezone=job.timezone)
    cron.jitter = job.jitter  # from_crontab takes no jitter; the trigger uses it as seconds
    return cron


def calls_per_second(job: Job, now: datetime | None = None) -> float:
    """The average rate at which ``job`` fires (cron jobs: over their next 50 times)."""
    if job.every is not None:
        return 1.0 / job.every.total_seconds()
    assert job.cron is not None
    if now is None:
        return _cron_rate(job.cron, job.timezone)
    return _cron_rate_at(job.cron, job.timezone, now)


@functools.lru_cache(maxsize=4096)
def _cron_rate(cron: str, timezone: str) -> float:
    """A cron's average rate, computed once per process: 50 trigger steps cost milliseconds, and
    a job file of thousands of jobs shares a few crons."""
    return _cron_rate_at(cron, timezone, datetime.now(UTC))


def _cron_rate_at(expression: str, timezone: str, now: datetime) -> float:
    cron = CronTrigger.from_crontab(expression, timezone=timezone)
    t, previous, times = now, None, []
    for _ in range(50):
        fire = cron.get_next_fire_time(previous, t)
        if fire is None:
            break
        times.append(fire)
        previous, t = fire, fire + timedelta(microseconds=1)
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0]).total_seconds()


class RunExecutor(BaseExecutor):
    """The one adapter between APScheduler 3 and a run: a thread pool that calls each due job as
    ``func(*args, scheduled_at=<its due time>)``.

    APScheduler 3 never hands a job its due time; it hands every due time of a job to the
    executor, through the executor's public ``submit_job(job, run_times)``. This executor takes
    them there (overriding that public method whole, instance counting included), so no private
    method of APScheduler is called or overridden. The one private name is
    ``BaseExecutor._do_submit_job``: abstract, so it must be defined, and never called.
    ``tests/test_schedule.py`` fails the day an APScheduler release changes any of this.

    It also does the coalescing itself (the jobs are added with ``coalesce=False``) so that it can
    log how many due times were folded into one run.
    """

    def __init__(self, workers: int) -> None:
        super().__init__()
        self._threads = _Workers(workers, "collector-run")
        self._running: dict[str, int] = {}  # runs in flight by job id (``max_instances``)
        self._running_lock = threading.Lock()

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:
        """Run ``job`` once, stamped with the latest of its ``run_times``; a job already running
        ``max_instances`` times raises, and the scheduler publishes ``EVENT_JOB_MAX_INSTANCES``."""
        with self._running_lock:
            if self._running.get(job.id, 0) >= job.max_instances:
                raise MaxInstancesReachedError(job)
            self._running[job.id] = self._running.get(job.id, 0) + 1
        if len(run_times) > 1:
            logger.warning(
                "job %s: %d runs came due while it was late; running once (coalesced)",
                job.id,
                len(run_times),
            )
        try:
            self._threads.submit(
                functools.partial(self._run, job.id, job.func, job.args, run_times[-1])
            )
        except BaseException:  # the pool is shut down: the run never starts
            self._release(job.id)
            raise

    def _release(self, job_id: str) -> None:
        with self._running_lock:
            left = self._running.get(job_id, 0) - 1
            if left > 0:
                self._running[job_id] = left
            else:
                self._running.pop(job_id, None)

    def _run(
        self, job_id: str, func: Callable[..., Any], args: Sequence[Any], scheduled_at: datetime
    ) -> None:
        """One run, in a worker thread; the job's instance is released when it ends."""
        try:
            func(*args, scheduled_at=scheduled_at)
        except BaseException as exc:  # a run records its own failures: one that raises is a bug
            logger.error(
                "job %s: its run raised", job_id, exc_info=(type(exc), exc, exc.__traceback__)
            )
        finally:
            self._release(job_id)

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        """Abstract in ``BaseExecutor``; never called, :meth:`submit_job` does the submitting."""
        raise NotImplementedError("RunExecutor.submit_job submits")

    def shutdown(self, wait: bool = True) -> None:
        self._threads.shutdown(wait)


class _Workers:
    """Up to ``size`` threads running, in order, the calls handed to :meth:`submit`: the
    scheduler's hand-off of each run, without a ``Future``.

    ``ThreadPoolExecutor`` makes a ``Future`` (a condition, its lock, a list of callbacks) for
    every call and takes a semaphore and two locks to hand it over: a third of the scheduler
    thread's time at a thousand runs a second, in a profile. Here a call is a plain callable on
    a queue. As the executor does, a thread is started when a call is handed over and no thread
    is idle, up to ``size``; :meth:`shutdown` lets every call handed over run, then ends the
    threads (daemons: a process that never stops the schedule still exits)."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads done with their call and not yet claimed by a new one
        self._shut = False

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` in a worker thread; RuntimeError after :meth:`shutdown`."""
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot run a job after the schedule was shut down")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._queue.put(call)

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            call()  # RunExecutor._run: it catches what a run raises
            del call
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True) -> None:
        """No call is taken any more; those handed over run; with ``wait``, until they end."""
        with self._lock:
            threads = list(self._threads)
            if not self._shut:
                self._shut = True
                for _ in threads:
                    self._queue.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class Schedule:
    """The jobs on an APScheduler scheduler in a thread of its own, each run handed to ``run``.

    :param run: called as ``run(job, scheduled_at=...)`` in a worker thread
    :param on_death: called with the reason if the scheduler's thread ever dies
    :param last_success: a job's last success (None: never), asked when a cron job is added: one
        that never succeeded runs at once (without it, cron jobs wait for their time)
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        run: Callable[..., Any],
        workers: int = defaults.WORKERS,
        on_death: Callable[[str], None] | None = None,
        last_success: Callable[[str], datetime | None] | None = None,
    ) -> None:
        self.jobs = tuple(jobs)
        self._run = run
        self._workers = workers
        self._on_death = on_death or (lambda reason: None)
        self._last_success = last_success
        self._scheduler: BlockingScheduler | None = None
        self._thread: threading.Thread | None = None
        self._skipping: set[str] = set()  # jobs whose skipped runs were said since they ran
        self._skip_lock = threading.Lock()
        #: why the scheduler's thread died, or None while it lives
        self.failed: str | None = None

    def _died(self, reason: str) -> None:
        self.failed = reason
        self._on_death(reason)

    def start(self) -> None:
        """Add the jobs and start the scheduler thread; interval jobs run once now.

        The scheduler is APScheduler's ``BlockingScheduler``, whose public ``start()`` runs its loop
        in the calling thread: called in a thread of ours, the loop's death is an exception we
        catch (``on_death``), which no public hook of the background scheduler tells."""
        scheduler = BlockingScheduler(
            executors={"default": RunExecutor(self._workers)},
            job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)
        started = threading.Event()
        scheduler.add_listener(lambda _event: started.set(), EVENT_SCHEDULER_STARTED)
        now = datetime.now(UTC)
        offsets = phases(self.jobs)
        for job in self.jobs:
            self._add(scheduler, job, now, offsets.get(job.name, timedelta(0)))
        self._scheduler = scheduler
        refused: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._loop, args=(scheduler, started, refused), name="APScheduler", daemon=True
        )
        self._thread.start()
        started.wait()
        if refused:  # it did not start (a job it could not add): the caller's error, as before
            self._thread.join()
            self._scheduler = None
            raise refused[0]

    def _loop(
        self, scheduler: BlockingScheduler, started: threading.Event, refused: list[BaseException]
    ) -> None:
        """The scheduler's thread: its loop until :meth:`shutdown`. If the loop ever raises (a
        trigger computing a date out of range, a bug), ``on_death`` is told, so the service stops
        and exits non-zero instead of living on with no job running."""
        try:
            scheduler.start()
        except BaseException as exc:
            if not started.is_set():
                refused.append(exc)
                started.set()
                return
            reason = f"{type(exc).__name__}: {exc}"
            logger.critical("the scheduler's thread died (%s); no job runs: stopping", reason)
            self._died(reason)

    def _add(
        self, scheduler: BlockingScheduler, job: Job, now: datetime, offset: timedelta
    ) -> None:
        options = {}
        if self._due_at_start(job):
            options["next_run_time"] = now
        scheduler.add_job(
            self._run,
            trigger(job, now + offset),
            args=[job],
            id=job.name,
            name=job.name,
            replace_existing=True,
            **options,
        )

    def _due_at_start(self, job: Job) -> bool:
        """Interval jobs run once at start; cron jobs too when they never succeeded (the first
        snapshot now, not at the next hour)."""
        if job.every is not None or self._last_success is None:
            return job.every is not None
        try:
            return self._last_success(job.name) is None
        except Exception as exc:  # the database is away: its run goes to the spool anyway
            logger.debug("job %s: its last success can't be read (%s)", job.name, exc)
            return True

    def put(self, jobs: Sequence[Job]) -> None:
        """Add ``jobs``, or replace the jobs of the same names (a reload): each starts as at
        start (an interval job runs once now, then on its grid). A replaced job's run in flight
        finishes, and the job still never runs twice at once (APScheduler counts its instances
        by name)."""
        now = datetime.now(UTC)
        names = {job.name for job in jobs}
        self.jobs = (*(j for j in self.jobs if j.name not in names), *jobs)
        offsets = phases(self.jobs)
        if self._scheduler is not None:
            for job in jobs:
                self._add(self._scheduler, job, now, offsets.get(job.name, timedelta(0)))

    def remove(self, names: Sequence[str]) -> None:
        """Stop scheduling the jobs ``names``; their runs in flight finish."""
        self.jobs = tuple(j for j in self.jobs if j.name not in set(names))
        if self._scheduler is not None:
            for name in names:
                if self._scheduler.get_job(name) is not None:
                    self._scheduler.remove_job(name)

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def pause(self) -> None:
        """Hold every job (as a suspended process would be held); due times pile up."""
        if self._scheduler is not None:
            self._scheduler.pause()

    def resume(self) -> None:
        if self._scheduler is not None:
            self._scheduler.resume()

    def run_now(self, names: Sequence[str] | None = None, *, every: bool = False) -> None:
        """Make the named jobs (None: all) due now: those that run at start (a standby that just
        took their account over starts as a fresh start would), or ``every`` one (SIGUSR1). Each
        then goes back to its own schedule."""
        if self._scheduler is None:
            return
        now = datetime.now(UTC)
        for job in self.jobs:
            if names is not None and job.name not in names:
                continue
            if (every or self._due_at_start(job)) and self._scheduler.get_job(job.name):
                self._scheduler.modify_job(job.name, next_run_time=now)

    def next_run(self, name: str) -> datetime | None:
        """When job ``name`` runs next (None: not scheduled)."""
        found = self._scheduler.get_job(name) if self._scheduler is not None else None
        return found.next_run_time if found is not None else None

    def _submitted(self, event: JobSubmissionEvent) -> None:
        with self._skip_lock:
            self._skipping.discard(event.job_id)

    def _skipped(self, event: JobSubmissionEvent) -> None:
        with self._skip_lock:
            said = event.job_id in self._skipping
            self._skipping.add(event.job_id)
        logger.log(
            logging.DEBUG if said else logging.INFO,
            "job %s: skipped the run due at %s, its previous run is still going%s",
            event.job_id,
            event.scheduled_run_times[0].isoformat(),
            "" if said else " (said once until it runs again)",
        )

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let the runs in flight finish."""
        if self.running:
            assert self._scheduler is not None
            self._scheduler.shutdown(wait=wait)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class RunNow:
    """SIGUSR1 makes every job of ``schedule`` due now, in a thread of its own (the signal handler
    only wakes it). :meth:`install` from the main thread, at once (SIGUSR1's default ends the
    process); ``schedule`` is set when the service exists, and one asked before it runs is
    moot (its jobs run at start). :meth:`uninstall` puts the previous handler back."""

    def __init__(self, schedule: Schedule | None = None) -> None:
        self.schedule = schedule
        self._signal = SignalThread(
            signal.SIGUSR1,
            self._run_now,
            name="collector-run-now",
            failure="SIGUSR1: the jobs could not be made due",
        )

    def install(self) -> None:
        self._signal.install()

    def uninstall(self) -> None:
        self._signal.uninstall()

    def _run_now(self) -> None:
        if self.schedule is None or not self.schedule.running:
            logger.info("received SIGUSR1 before the jobs started: they run at start")
            return
        logger.info("received SIGUSR1: every job runs now")
        self.schedule.run_now(every=True)
