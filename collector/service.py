"""The collection service: the wiring of client, runner, writer, spool and schedule.

Constructing a :class:`Service` opens no file, socket or database; :meth:`Service.open` does (the
nonce floor, the spool, the writer's thread), and :meth:`Service.start` opens and starts the
schedule. :meth:`Service.stop` undoes all of it, whatever failed on the way.

Shutdown (SIGTERM or SIGINT): scheduling stops at once, calls waiting for budget give up, calls in
flight finish (each has a timeout), every run is written, the session is closed, exit code 0.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from types import FrameType

import requests
from sqlalchemy.exc import SQLAlchemyError

from . import defaults, statefile
from .client import API
from .coordination import PUBLIC, Leases
from .dashboard import Dashboard
from .datasets import DEFAULT, Dataset
from .errors import Cancelled, RequestError
from .events import Events, RateLimitRefused, RateLimitWaited, ServiceFailed
from .jobfile import Account, Config, Job, KrakenSettings
from .keystate import KeyBudget, KeyState
from .metrics import Monitor
from .nonce import UNITS
from .numbers import parse_integer
from .ratelimit import RateLimiter, ceiling
from .records import RunRecord
from .retention import Retention
from .retry import RetryPolicy
from .runner import Runner, utcnow
from .schedule import Schedule
from .spool import Spool
from .store import NONCE_KEY, Store
from .valuation import remember_quote
from .verifier import Verifier
from .writer import Writer

logger = logging.getLogger(__name__)

#: Where versions before the per-key state kept the nonce lease (in the spool file); still read,
#: so an upgrade right after a crash starts above it.
LEGACY_LEASE = "nonce_lease"


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


def build_api(
    settings: KrakenSettings,
    account: Account | None = None,
    *,
    cancel: threading.Event | None = None,
) -> API:
    """A shared client: rate limits on, a timeout on every call, proxies resolved once. With an
    ``account``, its key, counter and nonce unit; without, a public client (no credentials)."""
    api = API(
        account.key if account else "",
        account.secret if account else "",
        rate_limit=account.tier if account else settings.tier,
        public_rate_limit=settings.public_rate_limit,
        nonce_unit=account.nonce_unit if account else settings.nonce_unit,
        timeout=settings.timeout,
        max_response=settings.max_response,
        cancel=cancel,
    )
    api.uri = settings.url
    # requests re-reads proxy variables and ~/.netrc on every request; a long-running service
    # resolves them once here (a netrc login must never be sent to Kraken anyway).
    api.session.proxies.update(requests.utils.get_environ_proxies(settings.url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        api.session.verify = bundle
    api.session.trust_env = False
    return api


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
    ) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.events = events or Events()
        self._owns_store = store is None  # a store passed in is migrated by whoever made it
        self.store = store or Store.from_url(config.database, datasets)
        if api is not None:
            self.public_api = api
            names = [a.name for a in config.accounts] or (
                [defaults.DEFAULT_ACCOUNT] if api.key else []
            )
            self.apis = {name: api for name in names}
        else:
            self.public_api = build_api(config.kraken, cancel=self.stopping)
            self.apis = {
                a.name: build_api(config.kraken, a, cancel=self.stopping) for a in config.accounts
            }
        #: the first account's client (the only one, in a file with credentials under kraken:)
        self.api = next(iter(self.apis.values()), self.public_api)
        self.spool = Spool(config.spool_path, config.spool_max_runs)
        self.writer = Writer(self.store, nonce=self._marks, spool=self.spool, events=self.events)
        #: the service's own jobs: the reference data every table's names come from
        self.reference = reference_jobs(config.kraken) if config.reference else ()
        # The public lease covers the reference jobs too, whatever the file's jobs are.
        needed = {job.account or PUBLIC for job in (*config.jobs, *self.reference)}
        self.leases = Leases.for_database(
            sorted(needed),
            self.store.engine,
            self.store.engine.url.database if self.store.engine.dialect.name == "sqlite" else None,
            config.failover,
            self._taken,
        )
        for name, client in self.apis.items():
            client.permit = lambda name=name: self.leases.permit(name)
            lease = self.leases.leases.get(name)
            if lease is not None:  # what the row may hold is bounded by the key's unit and tier
                lease.nonce_unit = client.nonces.unit
            if lease is not None and client.limiter is not None:
                # The lease row carries the key's counter to the next holder (another machine).
                lease.counter = functools.partial(_sent_level, client.limiter)
                lease.level_ceiling = ceiling(client.limiter.limit, config.kraken.lockout)
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
        self.workers = workers
        self._reference_ran: set[str] = set()  # the reference jobs run since this start
        self.schedule = Schedule(
            (*config.jobs, *self.reference),
            self.run_job,
            workers,
            on_death=lambda reason: self.events.publish(ServiceFailed(reason)),
            last_success=self.store.last_success,  # a cron job that never succeeded runs at once
        )
        self.keystates = {
            name: KeyState(config.state_dir, client.key, client.nonces.unit)
            for name, client in self.apis.items()
        }
        # Each key's counter and nonce sequence, shared with every process using the key here.
        for name, client in self.apis.items():
            client.shared = KeyBudget(
                config.state_dir,
                client.key,
                client.nonces.unit,
                database=config.database_for_display(),
                lockout=config.kraken.lockout,
            )
            if client.limiter is not None:
                client.limiter.on_refused = lambda s, n, name=name: self.events.publish(
                    RateLimitRefused(name, s, n)
                )
        self._opened = False
        #: after :meth:`run_once`: what another process held (in words), so its jobs did not run
        self.held_elsewhere: list[str] = []
        # Metrics count the waits (the clients stay metrics-free): the public budget, and each
        # account's counter ("private" for the one account of a file without accounts:).
        limiters = [("public", self.public_api.public_limiter)] + [
            ("private" if name == defaults.DEFAULT_ACCOUNT else f"private:{name}", client.limiter)
            for name, client in self.apis.items()
        ]
        for name, limiter in limiters:
            if limiter is not None:
                limiter.on_wait = lambda s, n=name: self.events.publish(RateLimitWaited(n, s))
        self.retention = Retention(self.store, config)
        # Each account's ledger verified as it is collected, in a thread of its own.
        self.verifier = Verifier(
            self.store.engine, config.jobs, self.events, retention=config.retention, clock=clock
        )
        self.monitor: Monitor | None = None
        if config.metrics_listen:
            self.monitor = Monitor(
                config.metrics_listen,
                jobs=config.jobs,
                events=self.events,
                writer_state=lambda: self.writer.state,
                pending=lambda: self.writer.pending,
                spooled=lambda: len(self.spool),
                nonce=(lambda: self.api.nonces.last) if self.api.key else None,
                nonce_unit=self.api.nonces.unit,
                load_cursor=self.store.load_cursor,
                last_success=self.store.last_success,
                datasets=self.runner.datasets,
                keys=self._key_levels,
                # The same page as `collector dashboard`, from the same database.
                dashboard=Dashboard(config, self.store, spooled=lambda: len(self.spool)).answer,
                allowed_hosts=config.metrics_allowed_hosts,
            )

    def _key_levels(self) -> dict[str, float]:
        """Each account key's rate counter, as this process believes it."""
        return {n: c.limiter.level() for n, c in self.apis.items() if c.limiter is not None}

    def _marks(self) -> dict[str, int]:
        """Each account's highest nonce so far, by its row in ``collector_state``."""
        return {mark_name(name): client.nonces.last for name, client in self.apis.items()}

    def _taken(self, name: str, mark: int) -> None:
        """This process took ``name``'s lease: start above the last holder's nonces, and read
        the datasets' cursors afresh (the last holder moved them)."""
        if name in self.apis:
            client = self.apis[name]
            client.nonces.raise_floor(mark)
            lease = self.leases.leases.get(name)
            inherited = lease.inherited if lease is not None else None
            if inherited is not None and client.limiter is not None:
                # The last holder's counter: exact from a clean release; after one that died,
                # full as of the last moment its fence let it send. Decayed since.
                level = inherited.level if inherited.released else client.limiter.limit.max
                client.limiter.restore(level, inherited.ago, inherited.refusals)
        self.runner.forget_cursors()
        self.schedule.run_now([j.name for j in self.config.jobs if (j.account or PUBLIC) == name])

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Migrate (a store of its own), set the nonce floor and lease, start the writer."""
        if self._opened:
            return
        if self._owns_store:
            self.store.upgrade()
        self._remember_quote()
        # Start above every nonce each key may have been used with: the database's mark, and the
        # key's own state (the last nonce of a clean stop, the lease of a crashed process), which
        # every process using the key shares whatever its database. The last holder's mark in
        # the account's lease row comes when the lease is taken (_taken).
        legacy_value = statefile.integer_text(self.spool.get(LEGACY_LEASE) or 0)
        for name, client in self.apis.items():
            state, lease = self.keystates[name], self.leases.leases.get(name)
            # The database's mark is an outside value too: bounded as the state files' are.
            where = f"{self.config.database_for_display()}: collector_state {mark_name(name)}"
            stored = self.store.load_nonce(mark_name(name))
            stored = statefile.floor(stored, client.nonces.unit, where, time.time_ns()) or 0
            legacy = statefile.floor(
                legacy_value, client.nonces.unit, f"the spool's {LEGACY_LEASE}", time.time_ns()
            )
            floor = max(stored, legacy or 0, state.start())
            if client.shared is not None:
                client.shared.check()  # a budget file that can't be used: one line, now
            client.nonces.lease(
                defaults.NONCE_LEASE_SECONDS * 10**9 // UNITS[client.nonces.unit],
                state.lease if lease is None else _both(state.lease, lease.save_mark),
                slack=defaults.NONCE_LEASE_SLACK,
            )
            client.nonces.raise_floor(floor)
            if client.shared is not None and client.limiter is not None and state.crashed:
                # A process died with the key: its last calls may have filled the counter.
                client.shared.assume_full(client.limiter.limit.max)
            for owner in state.live_owners():
                logger.warning(
                    "another process uses the API key of account %s: %s; they share one budget "
                    "and one nonce sequence: give each collector a key of its own",
                    name,
                    owner.replace(":", " pid "),
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
        logger.info(
            "collector started: %d jobs, database %s, exchange %s",
            len(self.config.jobs),
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
        if self.monitor is not None:
            self.monitor.stop()
        self.retention.stop()
        try:
            # Waits for calls in flight; each has a timeout, and budget waits end at once.
            self.schedule.shutdown(wait=True)
        finally:
            try:
                if not self.writer.close(defaults.WRITE_GRACE):
                    logger.critical(
                        "%d runs could not be written before shutdown and are lost",
                        self.writer.pending,
                    )
            finally:
                # Every call has returned: the last nonce issued is the last one used.
                last = {name: client.nonces.last for name, client in self.apis.items()}
                if self._opened:
                    self.leases.stop(last)
                for client in self._clients():
                    client.close()
                if self._opened:
                    for name, state in self.keystates.items():
                        state.stop(last[name])
                for client in self.apis.values():
                    if client.shared is not None:
                        client.shared.close()
                # The last runs are written: their verification may finish, within the grace.
                self.verifier.stop(defaults.WRITE_GRACE)
                self.store.dispose()
                self.spool.close()
        if self._opened:  # a service that never opened (its error says why) did not stop
            logger.info("collector stopped: %d runs written", self.writer.runs_written)

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


def mark_name(account: str) -> str:
    """The ``collector_state`` row of an account's nonce mark (``default`` keeps the old name)."""
    return NONCE_KEY if account == defaults.DEFAULT_ACCOUNT else f"{NONCE_KEY}:{account}"


def _sent_level(limiter: RateLimiter) -> tuple[float, int]:
    """The counter as the exchange can have it: the limiter's level counts the calls waiting for
    budget too (a stop cancels them), and our calls alone never take Kraken's counter over its
    maximum; after a refusal the level over the maximum is the penalty's wait, and is kept."""
    level, refusals = limiter.snapshot()
    return (level if refusals else min(level, limiter.limit.max)), refusals


def _both(first: Callable[[int], None], second: Callable[[int], None]) -> Callable[[int], None]:
    def save(mark: int) -> None:
        first(mark)
        second(
            mark
        )  # raises NotPermitted when the lease is no longer ours: the nonce is not issued

    return save


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
