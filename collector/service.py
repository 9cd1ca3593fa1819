"""The collection service: the wiring of client, runner, writer, spool and schedule.

Constructing a :class:`Service` opens no file, socket or database; :meth:`Service.open` does (the
nonce floor, the spool, the writer's thread), and :meth:`Service.start` opens and starts the
schedule. :meth:`Service.stop` undoes all of it, whatever failed on the way.

Shutdown (SIGTERM or SIGINT): scheduling stops at once, calls waiting for budget give up, calls in
flight finish (each has a timeout), every run is written, the session is closed, exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from . import defaults
from .allocator import limit_malloc_arenas
from .client import API
from .coordination import PUBLIC, Leases, leases_needed
from .dashboard import Dashboard
from .datasets import DEFAULT, Dataset
from .errors import Cancelled, RequestError
from .events import Events, LeaseTaken, RateLimitWaited, Reloaded, ServiceFailed
from .jobfile import Account, Config, Job, KrakenSettings
from .metrics import Monitor
from .numbers import parse_integer
from .ratelimit import RateLimiter
from .records import RunRecord
from .reload import JobChanges
from .retention import Retention
from .retry import RetryPolicy
from .runner import Runner, utcnow
from .schedule import Schedule
from .session import LEGACY_LEASE, KeySession, build_api, mark_name
from .spool import Spool
from .store import Store
from .streams.recorder import Recorder, Tuning
from .valuation import remember_quote
from .verifier import Verifier
from .writer import Writer

logger = logging.getLogger(__name__)

#: The jobs of the service's own: Kraken's assets and pairs (the ``assets`` and ``pairs`` tables,
#: which name everything else), asked for at start and daily with the public budget. Their names
#: can't be a job file's (a colon is not allowed there).
REFERENCE_JOBS = {"collector:assets": "Assets", "collector:pairs": "AssetPairs"}


def reference_jobs(settings: KrakenSettings) -> tuple[Job, ...]:
    """The service's own jobs (:data:`REFERENCE_JOBS`), run like any public job: scheduled every
    ``REFERENCE_CHECK``, they call Kraken at start and then when their last success is
    ``REFERENCE_EVERY`` old (:meth:`Service.run_job`)."""
    return tuple(
        Job(
            name=name,
            method=method,
            every=timedelta(seconds=defaults.REFERENCE_CHECK),
            timeout=settings.timeout,
            deadline=defaults.REFERENCE_DEADLINE,
            deadline_set=True,
        )
        for name, method in REFERENCE_JOBS.items()
    )


class Service:
    """Runs a job file's jobs and stores every run.

    :param config: the validated job file
    :param store: where runs go, already migrated (default: the config's database, migrated by
        :meth:`open`)
    :param api: one client for every call, its key the one account's (a seam for tests and
        tools; default: a public client and one client per account, built from the config)
    :param workers: threads making calls
    :param retry: backoff and lockout (default: from the config)
    :param clock: returns the current UTC datetime; a seam for tests
    :param datasets: the derived tables (default: all of :mod:`collector.datasets`)
    :param events: where the runner and the writer publish what happened
    :param stream_tuning: the streams' batch sizes, connection split, ... (default: the named
        defaults; tests pass smaller ones)
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        api: API | None = None,
        workers: int = defaults.WORKERS,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        datasets: Sequence[Dataset] = DEFAULT,
        events: Events | None = None,
        stream_tuning: Tuning | None = None,
    ) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.events = events or Events()
        self._owns_store = store is None  # a store passed in is migrated by whoever made it
        self.store = store or Store.from_url(config.database, datasets)
        self.spool = Spool(config.spool_path, config.spool_max_runs)
        self.writer = Writer(self.store, nonce=self._marks, spool=self.spool, events=self.events)
        #: the service's own jobs: the reference data every table's names come from
        self.reference = reference_jobs(config.kraken) if config.reference else ()
        engine = self.store.engine
        self.leases = Leases.for_database(
            engine,
            engine.url.database if engine.dialect.name == "sqlite" else None,
            config.failover,
            self.events.publish,
        )
        # A lease for each account a job uses, and the public one (which covers the reference
        # jobs and the streams too, whatever the file's jobs are).
        needed = leases_needed(config)
        if PUBLIC in needed:
            self.leases.add(PUBLIC)
        self.public_api = api or build_api(
            config.kraken,
            cancel=self.stopping,
            public_limiter=RateLimiter(config.kraken.public_rate_limit, on_wait=self._waited),
        )
        if api is not None and api.public_limiter is not None:
            api.public_limiter.on_wait = self._waited  # the seam's client, wired once here
        accounts = config.accounts
        if api is not None and not accounts and api.key:
            accounts = (Account(defaults.DEFAULT_ACCOUNT, api.key),)
        #: each account's key: its client, counter, nonces, state files and lease
        self.sessions = {
            a.name: KeySession(
                a,
                config.kraken,
                state_dir=config.state_dir,
                database=config.database_for_display(),
                events=self.events,
                leases=self.leases if a.name in needed else None,
                cancel=self.stopping,
                client=api,
            )
            for a in accounts
        }
        #: each account's client (a view of the sessions')
        self.apis = {name: s.client for name, s in self.sessions.items()}
        clients: dict[str | None, API] = {None: self.public_api}
        clients.update(self.apis)
        self.runner = Runner(
            clients,
            self.writer.submit,
            permit=lambda job: self.leases.permit(job.account or PUBLIC),
            persist=self.writer.persist,
            datasets=datasets,
            load_cursor=self.store.load_cursor,
            retry=retry or RetryPolicy(lockout=config.kraken.lockout),
            events=self.events,
            clock=clock,
            stopping=self.stopping,
        )
        #: the job file's streams, recorded beside the jobs (same process, writer, database)
        self._pairs_job = next(j for j in reference_jobs(config.kraken) if j.method == "AssetPairs")
        self.recorder = Recorder(
            config.streams,
            url=config.kraken.ws_url,
            api=self.public_api,
            submit=self.writer.submit,
            events=self.events,
            load_pairs=self.store.pair_names,
            refresh_pairs=self._refresh_pairs,
            permit=lambda: self.leases.permit(PUBLIC),
            tuning=stream_tuning,
        )
        self.workers = workers
        self._reference_ran: set[str] = set()  # the reference jobs run since this start
        self.schedule = Schedule(
            (*config.jobs, *self.reference),
            self.run_job,
            workers,
            on_death=lambda reason: self.events.publish(ServiceFailed(reason)),
            last_success=self.store.last_success,  # a cron job that never succeeded runs at once
        )
        self.events.subscribe(LeaseTaken, self._lease_taken)
        self._opened = False
        #: after :meth:`run_once`: what another process held (in words), so its jobs did not run
        self.held_elsewhere: list[str] = []
        self.retention = Retention(self.store, config)
        # Each account's ledger verified as it is collected, in a thread of its own.
        self.verifier = Verifier(
            self.store.engine, config.jobs, self.events, retention=config.retention, clock=clock
        )
        self.monitor: Monitor | None = None
        self.dashboard: Dashboard | None = None
        if config.metrics_listen:
            first = next(iter(self.sessions.values()), None)
            # The same page as `collector dashboard`, from the same database.
            self.dashboard = Dashboard(config, self.store, spooled=lambda: len(self.spool))
            self.monitor = Monitor(
                config.metrics_listen,
                jobs=config.jobs,
                streams=config.streams,
                events=self.events,
                writer_state=lambda: self.writer.state,
                pending=lambda: self.writer.pending,
                spooled=lambda: len(self.spool),
                nonce=(lambda: first.last) if first is not None else None,
                nonce_unit=(first.client if first is not None else self.public_api).nonces.unit,
                load_cursor=self.store.load_cursor,
                last_success=self.store.last_success,
                datasets=self.runner.datasets,
                keys=self._key_levels,
                dashboard=self.dashboard.answer,
                allowed_hosts=config.metrics_allowed_hosts,
            )

    def _refresh_pairs(self) -> None:
        """AssetPairs now, stored (a stream met a symbol the ``pairs`` table does not know): the
        service's own pairs job, through the public client and its budget."""
        self.runner.run(self._pairs_job)
        self.writer.flush(defaults.WRITE_GRACE)

    def _waited(self, seconds: float) -> None:
        self.events.publish(RateLimitWaited("public", seconds))

    def _key_levels(self) -> dict[str, float]:
        """Each account key's rate counter, as this process believes it."""
        levels = {name: s.level() for name, s in self.sessions.items()}
        return {name: level for name, level in levels.items() if level is not None}

    def _marks(self) -> dict[str, int]:
        """Each account's highest nonce so far, by its row in ``collector_state``."""
        return {row: mark for s in self.sessions.values() for row, mark in s.marks().items()}

    def _lease_taken(self, event: LeaseTaken) -> None:
        """This process took a lease (the key's session raised its floor already): read the
        datasets' cursors afresh (the last holder moved them) and run its jobs now."""
        self.runner.forget_cursors()
        self.schedule.run_now(
            [j.name for j in self.config.jobs if (j.account or PUBLIC) == event.name]
        )

    def apply(self, config: Config, changes: JobChanges) -> None:
        """Take a job file read again (SIGHUP; :mod:`collector.reload` checked that nothing a
        restart needs changed, and says what did): its jobs stop, start or change in the schedule,
        the runner drops the cursors it holds of jobs whose rows change, retention applies, and
        :class:`~collector.events.Reloaded` tells the rest (health, metrics)."""
        self.schedule.remove(changes.removed)
        for name in changes.forget:
            self.runner.forget(name)
        jobs = {job.name: job for job in config.jobs}
        self.schedule.put([jobs[name] for name in (*changes.added, *changes.changed)])
        self.config = config
        self.retention.configure(config)
        streams = changes.streams
        self.recorder.apply(config.streams, streams.added, streams.removed, streams.changed)
        if self.dashboard is not None:  # the page draws the jobs and streams of the file now
            self.dashboard.config = config
        if self.monitor is not None:  # the streams' health and series, after the reload
            self.monitor.configure_streams(config.streams, (*streams.added, *streams.changed))
        self.events.publish(Reloaded(config.jobs, changes.added, changes.removed, changes.changed))

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Migrate (a store of its own), set the nonce floor and lease, start the writer."""
        if self._opened:
            return
        limit_malloc_arenas()  # before the writer's and the workers' threads exist
        if self._owns_store:
            self.store.upgrade()
        self._remember_quote()
        # Each key's session starts above every mark the deployment has (its rule says which).
        legacy = self.spool.get(LEGACY_LEASE) or 0
        for name, session in self.sessions.items():
            session.open(
                self.store.load_nonce(mark_name(name)),
                legacy,
                database=self.config.database_for_display(),
            )
        self.writer.start()
        self.verifier.start()
        self.leases.start()
        self._opened = True

    def _remember_quote(self) -> None:
        """The table ``portfolio_value`` values with the job file's ``valuation`` settings."""
        try:
            with self.store.engine.begin() as conn:
                remember_quote(
                    conn, self.config.valuation_quote, self.config.valuation_max_price_age
                )
        except SQLAlchemyError as exc:  # the database is away: the next start says it again
            logger.warning(
                "cannot keep valuation.quote %s for the table portfolio_value (%s)",
                self.config.valuation_quote,
                type(exc).__name__,
            )

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """Run every job once, at the same time (within the rate limits), store them, and say
        whether all succeeded.

        :param stop: when set (Ctrl-C), calls waiting for budget give up and no new call starts;
            calls in flight finish, and every finished run is stored
        """
        self.open()
        if self.config.streams:
            logger.info(
                "run --once runs the jobs only: the %d streams are recorded by collector run",
                len(self.config.streams),
            )
        # A lease left by a process that died frees itself within failover: wait for it, then
        # run what this process holds (the log says who holds the rest).
        self.leases.wait(self.config.failover * 1.5, stop)
        public = any(not job.private for job in self.config.jobs)
        self.held_elsewhere = self.leases.elsewhere(include_public=public)
        for what in self.held_elsewhere:
            logger.error("not run: %s", what)
        # The reference data when it is a day old (a cron's every run would ask again for
        # nothing); its runs are stored, but what the exit code says is the file's jobs.
        reference = [job for job in self.reference if self._reference_due(job)]
        workers = max(1, min(self.workers, len(self.config.jobs) + len(reference)))
        with ThreadPoolExecutor(workers, thread_name_prefix="collector-once") as pool:
            futures = [pool.submit(self.runner.run, job) for job in self.config.jobs]
            futures += [pool.submit(self.runner.run, job) for job in reference]
            pending = set(futures)
            while pending:
                pending = wait(pending, timeout=0.2).not_done
                if pending and stop is not None and stop.is_set():
                    self.stopping.set()  # budget waits end; runs not started yet don't start
                    break
            results = [f.result() for f in futures[: len(self.config.jobs)]]
        self.writer.flush()
        return all(r is not None and r.status == "ok" for r in results)

    def run_job(self, job: Job, scheduled_at: datetime | None = None) -> RunRecord | None:
        """Run a scheduled ``job``. A reference job calls Kraken at its first run since start,
        then only when its last success is a day old (a check every hour costs one read)."""
        if job.name in REFERENCE_JOBS:
            first = job.name not in self._reference_ran
            self._reference_ran.add(job.name)
            if not first and not self._reference_due(job):
                return None
        return self.runner.run(job, scheduled_at)

    def _reference_due(self, job: Job) -> bool:
        """Whether ``job`` (a reference job) last succeeded ``REFERENCE_EVERY`` ago or more, or
        never (or the database can't say)."""
        try:
            last = self.store.last_success(job.name)
        except Exception as exc:  # the database is down: its run will go to the spool anyway
            logger.debug("cannot read the last %s run: %s", job.name, exc)
            return True
        return last is None or last < utcnow() - timedelta(seconds=defaults.REFERENCE_EVERY)

    def start(self) -> None:
        """Open, then start scheduling in background threads."""
        self.open()
        if self.monitor is not None:
            self.monitor.start()
        self.schedule.start()
        self.retention.start()
        self.recorder.start()
        logger.info(
            "collector started: %d jobs, %d streams, database %s, exchange %s",
            len(self.config.jobs),
            len(self.config.streams),
            self.config.database_for_display(),
            self.config.kraken.url,
        )
        threading.Thread(target=self._probe, name="collector-probe", daemon=True).start()

    def _probe(self) -> None:
        """One cheap public call, so the log says at once whether the exchange answers (the
        service runs either way; each run retries on its own)."""
        url = self.config.kraken.url
        try:
            before = time.time()
            reply = self.public_api.call("Time", timeout=min(self.config.kraken.timeout, 10.0))
            # Bounded like every number of an answer (NumberError is a ValueError): an
            # `Infinity` or a float here must not end the probe's thread with a traceback.
            unixtime = parse_integer(
                reply.result["unixtime"], field="unixtime", high=defaults.MAX_SECONDS
            )
            offset = clock_offset(unixtime, before, time.time())
        except Cancelled:
            return
        except RequestError as exc:
            logger.warning(
                "exchange %s did not answer (%s); collecting anyway, each run retries",
                url,
                exc.reason,
            )
            return
        except (KeyError, TypeError, ValueError):
            logger.warning("exchange %s answered Time with an unexpected result", url)
            return
        if offset == 0:
            logger.info("exchange %s answered (its clock agrees with ours to the second)", url)
        else:
            logger.info("exchange %s answered (its clock is %+.1fs from ours)", url, offset)

    @property
    def failed(self) -> str | None:
        """Why the service can't go on (its scheduler's thread died), or None."""
        return self.schedule.failed

    def stop(self) -> None:
        """Stop scheduling, give calls in flight a short grace, write everything, close the
        session."""
        self.stopping.set()
        for client in self._clients():
            client.cut_calls(defaults.STOP_GRACE)
        # Each step runs whatever the ones before it raised (a key's file that can't be written
        # at the end never leaves the database, the spool or the other keys' files open): the
        # stack runs the later steps, registered last first, after the body's.
        with contextlib.ExitStack() as later:
            later.callback(self.spool.close)
            later.callback(self.store.dispose)
            # The last runs are written: their verification may finish, within the grace.
            later.callback(self.verifier.stop, defaults.WRITE_GRACE)
            later.callback(self._close_keys)
            later.callback(self._close_writer)
            # First of all (close frames at once): what the streams brought goes to the writer.
            later.callback(self.recorder.stop)
            if self.monitor is not None:
                self.monitor.stop()
            self.retention.stop()
            # Waits for calls in flight; each has a timeout, and budget waits end at once.
            self.schedule.shutdown(wait=True)
        if self._opened:  # a service that never opened (its error says why) did not stop
            logger.info("collector stopped: %d runs written", self.writer.runs_written)

    def _close_writer(self) -> None:
        if not self.writer.close(defaults.WRITE_GRACE):
            logger.critical(
                "%d runs could not be written before shutdown and are lost", self.writer.pending
            )

    def _close_keys(self) -> None:
        """Give the leases back and close each key's session (in that order, each whatever the
        others raised)."""
        # Every call has returned: the last nonce issued is the last one used.
        last = {name: session.last for name, session in self.sessions.items()}
        with contextlib.ExitStack() as later:
            for name, session in reversed(self.sessions.items()):
                later.callback(session.close, self._opened, last[name])
            later.callback(self.public_api.close)
            if self._opened:
                self.leases.stop(last)

    def _clients(self) -> list[API]:
        return list({id(c): c for c in [self.public_api, *self.apis.values()]}.values())

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set (default: until SIGTERM or SIGINT), or until the service
        fails (see :attr:`failed`), then stop cleanly."""
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(stop_signals())
            try:
                self.start()
                while not stop.wait(1.0) and self.failed is None:
                    pass
            finally:
                self.stop()

    def execute(self, job: Job, scheduled_at: datetime | None = None) -> RunRecord | None:
        """Run ``job`` once now, outside its schedule (opening the service first if needed)."""
        self.open()
        return self.runner.run(job, scheduled_at)


def clock_offset(unixtime: int, before: float, after: float) -> float:
    """How far the exchange's clock is from ours, from its whole-second ``unixtime`` read between
    our ``before`` and ``after``: 0 when it fits (a whole-second clock read at 12:00:00.9 says
    12:00:00: that is not drift); else the distance beyond that second, signed."""
    if unixtime + 1 < before:  # its second ended before we asked: behind
        return unixtime + 1 - before
    if unixtime > after:  # its second began after it answered: ahead
        return unixtime - after
    return 0.0


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
