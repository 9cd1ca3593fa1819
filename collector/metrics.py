"""Prometheus metrics and ``/healthz`` for a running service, on one small HTTP listener.

Everything is learnt from the service's events (:mod:`collector.events`) or read when scraped
(the spool's and the writer's sizes, the nonce); nothing reaches into a component. Each
:class:`Monitor` has its own ``CollectorRegistry``, never the process-wide one, so several services
(and tests) in one process don't clash. No metric holds a secret: labels are job names, table
names, statuses and ``private``/``public``; each stream's series are :mod:`.streammetrics`'.

Job file: ``metrics: {listen: "127.0.0.1:9108"}`` (or ``collector run --metrics-listen``), and
``metrics.allowed_hosts`` for the names it is reached by besides loopback's (see
:func:`collector.listener.host_allowed`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .datasets import DEFAULT, Dataset
from .errors import CollectorError
from .events import (
    BatchStored,
    Events,
    LedgerVerified,
    RateLimitRefused,
    RateLimitWaited,
    Reloaded,
    RunFinished,
)
from .health import Health, utcnow
from .jobfile import Job, Stream, parse_listen
from .listener import Answer, Listener, Route
from .nonce import UNITS
from .streammetrics import StreamMetrics
from .writer import State

logger = logging.getLogger(__name__)

#: Run durations (seconds): from a fast public call to a long backfill. Few, because each is a
#: series per job: with a thousand jobs, every bucket is a thousand lines to scrape.
DURATION_BUCKETS = (0.05, 0.25, 1, 5, 30, 300)
LIMITERS = ("private", "public")

#: The families with a series per job, rendered by :class:`Metrics` itself: (name, type, help).
_RUNS = ("collector_runs_total", "counter", "Runs finished, by job and status")
_LAST_SUCCESS = (
    "collector_last_success_timestamp_seconds",
    "gauge",
    "When the job's last successful run finished (unix seconds)",
)
_DURATION = (
    "collector_run_duration_seconds",
    "histogram",
    "A run's duration, first call to last answer, retries included",
)
_ATTEMPTS = ("collector_attempts_total", "counter", "Calls made by runs, retries included")
# Prometheus' info idiom: the job's account (and method) as labels to join on,
# e.g. collector_runs_total * on(job) group_left(account) collector_job_info.
_INFO = ("collector_job_info", "gauge", "A job's account and method (always 1)")
_LAG = (
    "collector_dataset_lag_seconds",
    "gauge",
    "How far the job's dataset cursor trails now (seconds)",
)
_LE = tuple(f'le="{floatToGoString(b)}"' for b in (*DURATION_BUCKETS, math.inf))


class _JobSeries:
    """One job's numbers: runs by status, attempts, the duration histogram, the last success."""

    __slots__ = ("attempts", "buckets", "count", "label", "last_success", "runs", "total")

    def __init__(self, job: str) -> None:
        self.label = f'job="{_escape(job)}"'
        self.runs: dict[str, int] = {}
        self.attempts = 0
        self.buckets = [0] * len(_LE)  # per bucket, not cumulative: the scrape adds them up
        self.total = 0.0
        self.count = 0
        self.last_success: float | None = None


class Metrics:
    """The service's metrics, kept from its events.

    Job series carry the ``job`` label; ``collector_job_info{job, account, method}`` says whose
    account each job runs as (public jobs: ``account=""``).

    The series per job (runs, attempts, the duration histogram, last success, info, lag: about 13
    lines a job) are plain numbers behind one lock, written straight in the text format when
    scraped: prometheus_client's generic path (a sample object, sorted and escaped labels and a
    float format per line, a ``labels()`` lookup per run) took ~100 ms of CPU, holding the GIL,
    per scrape of 1,000 jobs, and ~7 µs per run. The few other series (rate-limit waits, rows
    written, the spool's and the writer's sizes, the nonce's lead) stay prometheus_client metrics
    in :attr:`registry`, a registry of this instance's own.

    :param pending: runs waiting for the writer, read when scraped
    :param spooled: runs waiting in the spool, read when scraped
    :param nonce: the highest nonce issued, read when scraped (None: no key, no nonce metric)
    :param nonce_unit: ``ms``, ``us`` or ``ns``
    :param datasets: the datasets whose cursors stored runs carry (each reads its own as a time)
    :param streams: the job file's streams (:attr:`streams` has their series)
    """

    def __init__(
        self,
        events: Events,
        *,
        pending: Callable[[], int],
        spooled: Callable[[], int],
        nonce: Callable[[], int] | None = None,
        nonce_unit: str = "ms",
        datasets: Iterable[Dataset] = DEFAULT,
        streams: Iterable[Stream] = (),
    ) -> None:
        self._datasets = {dataset.name: dataset for dataset in datasets}
        # No `_created` series: a second series for every counter, which nothing here reads
        # (process-wide in prometheus_client; this process is ours).
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.waits = Counter(
            "collector_rate_limit_wait_seconds",
            "Seconds calls waited for rate-limit budget, by limiter",
            ["limiter"],
            registry=r,
        )
        # Each limiter's child, looked up once; 0 from the start: a rate() needs a first sample.
        self._waits = {limiter: self.waits.labels(limiter) for limiter in LIMITERS}
        self.rows = Counter(
            "collector_rows_written",
            "Dataset rows handed to the database (upserts: a row seen again counts again)",
            ["table"],
            registry=r,
        )
        self._rows: dict[str, Any] = {}
        self.ledger_breaks = Gauge(
            "collector_ledger_breaks",
            "Breaks recorded by the verification of the account's ledger (0: it verifies)",
            ["account"],
            registry=r,
        )
        self.ledger_verified = Gauge(
            "collector_ledger_verified_timestamp_seconds",
            "Up to when the account's ledger is verified (unix seconds)",
            ["account"],
            registry=r,
        )
        Gauge("collector_spool_runs", "Runs waiting in the spool", registry=r).set_function(spooled)
        Gauge(
            "collector_writer_pending_runs", "Runs waiting for the writer", registry=r
        ).set_function(pending)
        if nonce is not None:
            r.register(_NonceLead(nonce, nonce_unit))
        self.streams = StreamMetrics(events, streams)
        r.register(self.streams)
        self._lock = threading.Lock()
        self._jobs: dict[str, _JobSeries] = {}
        self._cursors: dict[str, datetime] = {}
        self._info = ""  # collector_job_info's lines, written when the jobs are described
        events.subscribe(RunFinished, self._finished)
        events.subscribe(BatchStored, self._stored)
        events.subscribe(RateLimitWaited, self._waited)
        events.subscribe(Reloaded, self._reloaded)
        events.subscribe(LedgerVerified, self._verified)

    def describe(self, jobs: Sequence[Job]) -> None:
        """The info series of ``jobs`` (again after a reload: removed jobs' series go)."""
        lines = [
            f'{_INFO[0]}{{job="{_escape(job.name)}",account="{_escape(job.account or "")}",'
            f'method="{_escape(job.method)}"}} 1.0\n'
            for job in jobs
        ]
        with self._lock:
            self._info = "".join(lines)

    def success(self, job: str, at: datetime) -> None:
        """``job``'s last success before this start (from the database), unless a run since
        has set a newer one."""
        with self._lock:
            series = self._jobs.get(job)
            if series is None:
                series = self._jobs[job] = _JobSeries(job)
            if series.last_success is None:
                series.last_success = at.timestamp()

    def cursor(self, job: str, at: datetime) -> None:
        """``job``'s dataset has collected up to ``at``."""
        with self._lock:
            self._cursors[job] = at

    def render(self) -> bytes:
        """Every series in Prometheus' text format (version 0.0.4)."""
        return generate_latest(self.registry) + self._render_jobs().encode()

    # -- events ---------------------------------------------------------------------------------

    def _finished(self, event: RunFinished) -> None:
        record = event.record
        seconds = max(0.0, (record.finished_at - record.started_at).total_seconds())
        bucket = bisect_left(DURATION_BUCKETS, seconds)
        success = record.finished_at.timestamp() if record.status == "ok" else None
        status = str(record.status)
        with self._lock:
            job = self._jobs.get(record.job)
            if job is None:
                job = self._jobs[record.job] = _JobSeries(record.job)
            job.runs[status] = job.runs.get(status, 0) + 1
            job.attempts += record.attempts
            job.buckets[bucket] += 1
            job.total += seconds
            job.count += 1
            if success is not None:
                job.last_success = success

    def _stored(self, event: BatchStored) -> None:
        for record in event.records:
            for table, rows in record.rows.items():
                if rows:
                    child = self._rows.get(table)
                    if child is None:
                        child = self._rows[table] = self.rows.labels(table)
                    child.inc(len(rows))
            dataset = self._datasets.get(record.dataset) if record.dataset else None
            if dataset is not None and record.cursor is not None:
                at = dataset.cursor_time(record.cursor)
                if at is not None:
                    self.cursor(record.job, at)

    def _verified(self, event: LedgerVerified) -> None:
        self.ledger_breaks.labels(event.account).set(event.recorded)
        if event.verified_to is not None:
            self.ledger_verified.labels(event.account).set(event.verified_to.timestamp())

    def _waited(self, event: RateLimitWaited) -> None:
        child = self._waits.get(event.limiter)
        if child is None:  # private:NAME, one per account
            child = self._waits[event.limiter] = self.waits.labels(event.limiter)
        child.inc(event.seconds)

    def _reloaded(self, event: Reloaded) -> None:
        with self._lock:
            for name in event.removed:  # a removed job's series go, or they would look stuck
                self._cursors.pop(name, None)
                self._jobs.pop(name, None)
        self.describe(event.jobs)

    # -- the scrape -----------------------------------------------------------------------------

    def _render_jobs(self) -> str:
        now = time.time()
        out: list[str] = []
        add = out.append
        with self._lock:
            jobs = list(self._jobs.values())
            _head(add, _RUNS)
            for job in jobs:
                for status, n in job.runs.items():
                    add(f'{_RUNS[0]}{{{job.label},status="{status}"}} {n}.0\n')
            _head(add, _ATTEMPTS)
            for job in jobs:
                add(f"{_ATTEMPTS[0]}{{{job.label}}} {job.attempts}.0\n")
            _head(add, _DURATION)
            name = _DURATION[0]
            for job in jobs:
                cumulative = 0
                for le, n in zip(_LE, job.buckets, strict=True):
                    cumulative += n
                    add(f"{name}_bucket{{{job.label},{le}}} {cumulative}.0\n")
                add(f"{name}_count{{{job.label}}} {job.count}.0\n")
                add(f"{name}_sum{{{job.label}}} {_number(job.total)}\n")
            _head(add, _LAST_SUCCESS)
            for job in jobs:
                if job.last_success is not None:
                    add(f"{_LAST_SUCCESS[0]}{{{job.label}}} {_number(job.last_success)}\n")
            _head(add, _INFO)
            add(self._info)
            _head(add, _LAG)
            for name, at in self._cursors.items():
                add(f'{_LAG[0]}{{job="{_escape(name)}"}} {_number(now - at.timestamp())}\n')
        return "".join(out)


def _head(add: Callable[[str], None], family: tuple[str, str, str]) -> None:
    name, kind, doc = family
    add(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")


def _escape(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    """A sample value: Python's shortest repr, which the text format (Go's ParseFloat) reads."""
    return repr(value) if math.isfinite(value) else floatToGoString(value)


class _NonceLead:
    """A gauge computed when scraped: the nonce's lead over the clock."""

    def __init__(self, nonce: Callable[[], int], unit: str) -> None:
        self._nonce, self._per = nonce, UNITS[unit]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "collector_nonce_lead_seconds",
            "How far the key's last nonce is ahead of the clock (seconds; negative: behind)",
            value=self._nonce() * self._per / 1e9 - time.time(),
        )


class _Keys:
    """Each account key's rate counter, read when scraped, and Kraken's refusals of it, counted
    from :class:`~collector.events.RateLimitRefused`."""

    def __init__(self, levels: Callable[[], dict[str, float]], events: Events) -> None:
        self._levels = levels
        self._refusals: dict[str, int] = dict.fromkeys(levels(), 0)
        self._lock = threading.Lock()
        events.subscribe(RateLimitRefused, self._refused)

    def _refused(self, event: RateLimitRefused) -> None:
        with self._lock:
            self._refusals[event.account] = self._refusals.get(event.account, 0) + 1

    def collect(self) -> Iterator[Metric]:
        level = GaugeMetricFamily(
            "collector_key_counter",
            "The key's rate counter as the collector believes it (Kraken's units; over its "
            "maximum while a refusal drains)",
            labels=["account"],
        )
        for account, value in sorted(self._levels().items()):
            level.add_metric([account], value)
        yield level
        refused = CounterMetricFamily(
            "collector_rate_limit_refusals",
            "Calls Kraken refused with EAPI:Rate limit exceeded, by account",
            labels=["account"],
        )
        with self._lock:
            for account, count in sorted(self._refusals.items()):
                refused.add_metric([account], count)
        yield refused


class Monitor:
    """Metrics and health of one service, served on ``listen`` (``HOST:PORT``; port 0 picks a free
    one, see :attr:`address`). Constructing one binds nothing; :meth:`start` does.

    :param load_cursor: ``(job, dataset) -> cursor`` from the store, read once at start so the
        lag is known before a job's first run
    :param datasets: the datasets by method (the runner's)
    :param last_success: ``job -> when its newest successful run finished`` from the store, read
        once at start, so ``/healthz`` and ``collector_last_success_timestamp_seconds`` say what
        ``collector status`` says before each job's first run of this start
    :param dashboard: the page at ``/`` (:mod:`collector.dashboard`), or None
    :param allowed_hosts: host names a request may give besides loopback's and ``listen``'s
    :param streams: the job file's streams (``config.streams``): judged by ``/healthz``, a series
        each; after a reload, :meth:`configure_streams`
    """

    def __init__(
        self,
        listen: str,
        *,
        jobs: Sequence[Job],
        events: Events,
        writer_state: Callable[[], State],
        pending: Callable[[], int],
        spooled: Callable[[], int],
        nonce: Callable[[], int] | None,
        nonce_unit: str,
        load_cursor: Callable[[str, str], Any],
        datasets: Mapping[str, Dataset],
        clock: Callable[[], datetime] = utcnow,
        keys: Callable[[], dict[str, float]] | None = None,
        dashboard: Route | None = None,
        last_success: Callable[[str], datetime | None] | None = None,
        allowed_hosts: Sequence[str] = (),
        streams: Sequence[Stream] = (),
    ) -> None:
        address = parse_listen(listen)
        if address is None:
            raise ValueError(f"metrics listen address must be HOST:PORT, not {listen!r}")
        self.listen = address
        self.jobs = tuple(jobs)
        self.metrics = Metrics(
            events,
            pending=pending,
            spooled=spooled,
            nonce=nonce,
            nonce_unit=nonce_unit,
            datasets=datasets.values(),
            streams=streams,
        )
        self.metrics.describe(jobs)
        if keys is not None:
            self.metrics.registry.register(_Keys(keys, events))
        self.health = Health(jobs, events, writer_state, clock, streams)
        self._load_cursor = load_cursor
        self._last_success = last_success
        self._datasets = datasets
        self._dashboard = dashboard
        self._hosts = tuple(allowed_hosts)
        self._server: Listener | None = None

    def _remember(self, last_success: Callable[[str], datetime | None]) -> None:
        for job in self.jobs:
            try:
                success = last_success(job.name)
            except Exception as exc:  # the database may be down: each job's next success says
                logger.warning("metrics: cannot read the last successes (%s)", type(exc).__name__)
                return
            if success is not None:
                self.health.remember(job.name, success)
                self.metrics.success(job.name, success)

    def configure_streams(self, streams: Sequence[Stream], restarted: Sequence[str] = ()) -> None:
        """The streams a reload left (``config.streams``), ``restarted`` the names it added or
        changed (``JobChanges.streams.added + .changed``): they get their starting grace again;
        a removed stream's series and health go."""
        self.metrics.streams.configure(streams)
        self.health.configure_streams(streams, restarted)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when ``listen`` said 0); only after :meth:`start`."""
        assert self._server is not None, "not started"
        return self._server.address

    def start(self) -> None:
        """Read the stored cursors and last successes, then listen (a port in use is an
        :class:`OSError`)."""
        self.health.start()
        if self._last_success is not None:
            self._remember(self._last_success)
        for job in self.jobs:
            dataset = self._datasets.get(job.method)
            if dataset is None or not dataset.incremental:
                continue
            try:
                at = dataset.cursor_time(self._load_cursor(job.name, dataset.name))
            except Exception as exc:  # the database may be down; the first run sets it then
                logger.warning(
                    "metrics: cannot read %s's cursor (%s)", job.name, type(exc).__name__
                )
                continue
            if at is not None:
                self.metrics.cursor(job.name, at)
        routes: dict[str, Route] = {"/metrics": self._metrics, "/healthz": self._healthz}
        if self._dashboard is not None:
            routes["/"] = self._dashboard
        try:
            self._server = Listener(self.listen, routes, "metrics", hosts=self._hosts)
        except OSError as exc:
            host, port = self.listen
            raise CollectorError(
                f"metrics.listen: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._server.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "metrics on http://%s:%d/metrics, health on /healthz%s",
            shown,
            port,
            ", the dashboard on /" if self._dashboard is not None else "",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def scrape(self) -> bytes:
        return self.metrics.render()

    def _metrics(self, _query: dict[str, str]) -> Answer:
        return Answer(200, self.scrape(), CONTENT_TYPE_LATEST)

    def _healthz(self, _query: dict[str, str]) -> Answer:
        healthy, body = self.health.report()
        data = json.dumps(body, indent=1).encode() + b"\n"
        return Answer(200 if healthy else 503, data, "application/json")
