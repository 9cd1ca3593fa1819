"""What a job file means: every key declared once (:data:`KEYS`), and the frozen dataclasses a
loaded file becomes (:class:`Config`, :class:`KrakenSettings`, :class:`Account`, :class:`Job`).

Why a table of our own and not msgspec or pydantic: the job file's messages are a contract
(``file:line: key: problem``, a did-you-mean, one line per mistake and every mistake at once, the
exact words tests, scripts and the README rely on). msgspec stops at the first error and names no
line; pydantic collects errors, but in its own words and without YAML lines, so every message
would go through a translation layer keyed by error type and field: larger than this table, and a
second place to touch for a new key. Neither knows ``${VAR}``, the key files, or the either-or
rules (``every``/``cron``, ``tier``/``rate_limit``, ``key_file``/``key``). So each key is one
:class:`Key` (its kind, bounds from :mod:`collector.defaults`, description, its own words for a
bad value), which drives the unknown-key checks and their did-you-mean, the generic checks of
durations, booleans, numbers and choices (``report.Base.declared``), ``collector schema``'s JSON
Schema (:mod:`.describe`) and the test of the README's table of keys; no dependency is added.

Why one module of this length: it is the job file's declaration table (every key, its kind,
bounds and description) beside the frozen dataclasses it fills; a table split in two would let a
key be declared in one half and forgotten in the other.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .. import defaults
from ..dburl import parse as parse_url
from ..methods import OHLC_INTERVALS, is_public
from ..nonce import UNITS
from ..ratelimit import PUBLIC_DEFAULT, TIERS, RateLimit

#: What ``retention:`` may name: runs (with their balances and ticker rows), and the dataset
#: tables, each by its time column. Written out, not read from :mod:`collector.datasets`: the
#: datasets bring their SQLAlchemy tables (a fifth of a second), which loading a job file does
#: not otherwise need; ``tests/test_datasets.py`` holds it equal to
#: :func:`collector.datasets.retention_tables`, in the same order.
RETENTION_KEYS = (
    "runs",
    "ledger",
    "my_trades",
    "orders",
    "trades",
    "ohlc",
    "spread",
    "book",
    "stream_connections",
)


@dataclass(frozen=True)
class Key:
    """One key of the job file, declared once: what it holds, its bounds, what it means.

    The table of them (:data:`KEYS`) drives the unknown-key checks and their did-you-mean, the
    bounds of the generic checks (:meth:`~collector.jobfile.report.Base.declared`), the JSON
    Schema of ``collector schema`` and the test that keeps the README's table of keys true.
    """

    #: dotted; ``NAME`` stands for a name the file chooses (a job's, an account's)
    path: str
    #: ``section`` (a mapping of declared keys), ``names`` (a mapping from names the file chooses
    #: to sections), ``duration``, ``boolean``, ``integer``, ``integer_choice`` (one of
    #: ``choices``), ``number``, ``choice``, ``text``, or a
    #: key of its own checked in :mod:`.checks`/:mod:`.resolve` (``rate_limit``, ``since``, ...)
    kind: str
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    #: what a value of the wrong kind or out of bounds is told, when not the kind's own words
    problem: str = ""

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]


def _credentials(at: str, whose: str) -> tuple[Key, ...]:
    return (
        Key(f"{at}.key", "text", f"{whose} API key (${{VAR}} from the environment)"),
        Key(f"{at}.secret", "text", f"{whose} API secret, base64 (never repeated in a message)"),
        Key(
            f"{at}.key_file",
            "text",
            f"a file holding {whose} key on line 1 and its secret on line 2 (krakenex's "
            "format), relative to the job file; instead of key and secret",
        ),
        Key(
            f"{at}.tier",
            "tier",
            f"{whose} verification tier, the private counter to stay under "
            f"(default {defaults.TIER}); or rate_limit",
            choices=tuple(TIERS),
        ),
        Key(
            f"{at}.rate_limit",
            "rate_limit",
            "the private counter as {max: N, decay: per-second}, instead of tier",
            high=defaults.RATE_MAX,
        ),
    )


def format_seconds(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


#: The v2 channels a stream may name (``instrument`` and the private ones are the collector's own
#: business or not read at all).
CHANNELS = ("book", "trade", "ticker", "ohlc")
#: The keys that apply to one channel only (``depth`` on a trade stream is a mistake).
CHANNEL_KEYS = {"depth": "book", "snapshot_every": "book", "interval": "ohlc"}

_NONCE = "the nonce unit: ms (default, as krakenex and ccxt), us or ns for a key already used at it"

#: Every key of the job file, in the order the README and the did-you-mean list them.
KEYS: tuple[Key, ...] = (
    Key(
        "database",
        "database",
        "SQLAlchemy URL (sqlite:///FILE beside the job file, postgresql+psycopg://...); "
        f"--db and $COLLECTOR_DATABASE_URL override it. Default {defaults.DATABASE}",
    ),
    Key("kraken", "section", "the exchange, and the one account's key when there is no accounts:"),
    Key(
        "kraken.url",
        "url",
        f"the exchange's address without a path (default {defaults.KRAKEN_URL})",
    ),
    Key(
        "kraken.ws_url",
        "ws_url",
        f"the streams' WebSocket v2 address (default {defaults.WS_URL}); ws:// only for this "
        "machine",
    ),
    *_credentials("kraken", "the"),
    Key(
        "kraken.public_rate_limit",
        "rate_limit",
        "the public budget as {max: N, decay: per-second} (Kraken limits public calls per IP)",
        high=defaults.RATE_MAX,
    ),
    Key(
        "kraken.timeout",
        "duration",
        f"per call (default {defaults.TIMEOUT:g}s)",
        high=defaults.TIMEOUT_MAX,
    ),
    Key("kraken.nonce_unit", "choice", _NONCE, choices=tuple(UNITS)),
    Key(
        "kraken.lockout",
        "duration",
        "the pause after EGeneral:Temporary lockout (default 15m)",
        high=defaults.WAIT_MAX,
    ),
    Key(
        "kraken.max_response_mb",
        "number",
        f"the largest answer read, in megabytes (default {defaults.MAX_RESPONSE >> 20})",
        low=0.001,
        high=defaults.MAX_RESPONSE_MB_MAX,
        problem=f"must be a number of megabytes from 0.001 to {defaults.MAX_RESPONSE_MB_MAX}",
    ),
    Key("accounts", "names", "several accounts, by name; private jobs name theirs"),
    *_credentials("accounts.NAME", "the account's"),
    Key("accounts.NAME.nonce_unit", "choice", _NONCE, choices=tuple(UNITS)),
    Key("jobs", "names", "the jobs, by name (letters, digits, _ . -)", high=defaults.JOBS_MAX),
    Key(
        "jobs.NAME.method",
        "method",
        "a read method (collector methods lists them); state-changing ones are refused",
    ),
    Key(
        "jobs.NAME.params",
        "params",
        "the method's parameters (lists are comma-joined); OHLC, Trades and Spread take one pair",
    ),
    Key(
        "jobs.NAME.every",
        "duration",
        "how often; exactly one of every and cron",
        low=defaults.EVERY_MIN,
        high=defaults.EVERY_MAX,
    ),
    Key("jobs.NAME.cron", "cron", "5 cron fields, e.g. '0 * * * *'; exactly one of every and cron"),
    Key("jobs.NAME.timezone", "timezone", "the cron's timezone (default UTC)"),
    Key(
        "jobs.NAME.jitter",
        "duration",
        "a random delay up to this (never more than the interval)",
        high=defaults.JITTER_MAX,
    ),
    Key("jobs.NAME.timeout", "duration", "the job's call timeout", high=defaults.TIMEOUT_MAX),
    Key(
        "jobs.NAME.deadline",
        "duration",
        "when a call's retries end (default: its interval, at most 60s)",
        high=defaults.WAIT_MAX,
    ),
    Key(
        "jobs.NAME.since",
        "since",
        "where a history starts: all, a date, a time or unix seconds",
    ),
    Key(
        "jobs.NAME.raw",
        "boolean",
        "true keeps the raw answers in runs.result too (default false)",
        problem="must be true or false",
    ),
    Key("jobs.NAME.account", "text", "the account a private job runs as"),
    Key(
        "jobs.NAME.stale_after",
        "duration",
        "no success for this long makes the job stale (default 3 intervals, at least 60s)",
        high=defaults.WAIT_MAX,
    ),
    Key(
        "jobs.NAME.retention",
        "duration",
        "how long this job's runs are kept (default: retention.runs)",
        high=defaults.RETENTION_MAX,
    ),
    Key(
        "streams",
        "names",
        "Kraken's WebSocket v2 feeds, by name (letters, digits, _ . -)",
        high=defaults.STREAMS_MAX,
    ),
    Key(
        "streams.NAME.channel",
        "choice",
        "the feed: book, trade, ticker or ohlc",
        choices=CHANNELS,
    ),
    Key(
        "streams.NAME.pairs",
        "stream_pairs",
        "a list of pairs in any spelling a job accepts (XBTUSD, XBT/USD, BTC/USD), or all",
    ),
    Key(
        "streams.NAME.depth",
        "integer_choice",
        f"book only: the levels kept (default {defaults.WS_DEPTH})",
        choices=tuple(str(d) for d in defaults.WS_DEPTHS),
        problem=f"must be one of {', '.join(map(str, defaults.WS_DEPTHS))}",
    ),
    Key(
        "streams.NAME.snapshot_every",
        "duration",
        f"book only: how often the top levels are stored (default {defaults.WS_SNAPSHOT_EVERY:g}s)",
        low=defaults.WS_SNAPSHOT_EVERY_MIN,
        high=defaults.WS_SNAPSHOT_EVERY_MAX,
    ),
    Key(
        "streams.NAME.interval",
        "integer_choice",
        "ohlc only: minutes per candle (default 1), as the REST OHLC job",
        choices=tuple(str(i) for i in OHLC_INTERVALS),
        problem=f"must be one of {', '.join(map(str, OHLC_INTERVALS))} (minutes)",
    ),
    Key(
        "streams.NAME.stale_after",
        "duration",
        f"no data for this long makes the stream stale (default {defaults.WS_STALE_AFTER:g}s)",
        low=defaults.WS_STALE_AFTER_MIN,
        high=defaults.WS_STALE_AFTER_MAX,
    ),
    Key("spool", "section", "where runs wait while the database can't be reached"),
    Key("spool.path", "text", "the spool's file (default beside the SQLite file)"),
    Key(
        "spool.max_runs",
        "integer",
        f"how many runs at most (default {defaults.SPOOL_MAX_RUNS:,})",
        low=1,
        high=defaults.SPOOL_MAX_RUNS_MAX,
        problem=f"must be a whole number of runs from 1 to {defaults.SPOOL_MAX_RUNS_MAX:,}",
    ),
    Key(
        "failover",
        "duration",
        f"how soon a standby takes over an account whose holder is gone "
        f"(default {defaults.FAILOVER:g}s)",
        low=defaults.FAILOVER_MIN,
        high=defaults.FAILOVER_MAX,
    ),
    Key("metrics", "section", "the /metrics and /healthz listener"),
    Key("metrics.listen", "listen", "HOST:PORT serving /metrics and /healthz"),
    Key(
        "metrics.allowed_hosts",
        "hosts",
        "host names the listener answers to besides localhost and IP addresses",
        high=defaults.ALLOWED_HOSTS_MAX,
    ),
    Key("retention", "section", "how long runs and dataset rows are kept; nothing without it"),
    *(
        Key(
            f"retention.{table}",
            "duration",
            "how long runs are kept"
            if table == "runs"
            else f"how long {table} rows are kept, by their time",
            high=defaults.RETENTION_MAX,
        )
        for table in RETENTION_KEYS
    ),
    Key(
        "reference",
        "boolean",
        "false: the service does not keep the assets and pairs tables itself (default true)",
        problem="must be true (the service keeps the assets and pairs tables: two public "
        "calls at start and daily) or false",
    ),
    Key("valuation", "section", "the currency portfolio values are in"),
    Key(
        "valuation.quote",
        "quote",
        f"the currency balances are valued in (default {defaults.VALUATION_QUOTE})",
    ),
    Key(
        "valuation.max_price_age",
        "duration",
        "an older price values nothing (default 1d)",
        low=defaults.VALUATION_MAX_PRICE_AGE_MIN,
        high=defaults.VALUATION_MAX_PRICE_AGE_MAX,
    ),
)
#: Each key by its path.
DECLARED: dict[str, Key] = {key.path: key for key in KEYS}


@functools.cache
def keys_of(section: str) -> tuple[str, ...]:
    """The names ``section`` (a dotted path, ``""`` for the top) takes, in declared order."""
    return tuple(key.name for key in KEYS if key.parent == section)


TOP_KEYS = keys_of("")
KRAKEN_KEYS = keys_of("kraken")
ACCOUNT_KEYS = keys_of("accounts.NAME")
JOB_KEYS = keys_of("jobs.NAME")
STREAM_KEYS = keys_of("streams.NAME")
SPOOL_KEYS = keys_of("spool")
METRICS_KEYS = keys_of("metrics")
VALUATION_KEYS = keys_of("valuation")
#: Parameters the client sets itself and which are never stored.
RESERVED_PARAMS = ("nonce",)

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")


@dataclass(frozen=True)
class Job:
    """One scheduled query. Exactly one of ``every`` and ``cron`` is set."""

    name: str
    method: str
    # repr=False: params may hold an otp, and a Job's repr can end up in a log.
    params: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)
    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: float | None = None
    timeout: float = defaults.TIMEOUT
    #: retries of one call end this many seconds after it started
    deadline: float = defaults.DEADLINE
    #: whether the job file sets ``deadline`` (``run --once`` shortens only the default one)
    deadline_set: bool = field(default=False, compare=False)
    #: where a dataset's history starts (unix seconds), None for its default (``all`` for the
    #: private histories, now for public trades, what Kraken keeps for candles and spreads)
    since: float | None = None
    #: keep the raw answers in ``runs.result`` too (datasets store rows instead)
    raw: bool = False
    #: the account a private job runs as (None for public jobs)
    account: str | None = None
    line: int = 0
    #: seconds without a success after which the job counts as stale (None: 3 intervals, >= 60 s)
    stale_after: float | None = None
    #: seconds this job's runs are kept (None: the file's ``retention.runs``, if any)
    retention: float | None = None

    @property
    def private(self) -> bool:
        return not is_public(self.method)

    def describe(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron '{self.cron}' ({self.timezone})"


@dataclass(frozen=True)
class Stream:
    """One WebSocket v2 feed of the job file: a channel over some pairs (or every listed one)."""

    name: str
    channel: str
    #: the pairs as the file spells them (resolved to canonical names against the ``pairs``
    #: table when subscribing); empty when ``all``
    pairs: tuple[str, ...] = ()
    #: every listed pair, kept current as pairs are listed and delisted
    all_pairs: bool = False
    #: book only: the levels kept and checksummed (None on other channels)
    depth: int | None = None
    #: book only: seconds between stored snapshots of the top ``depth`` levels
    snapshot_every: float | None = None
    #: ohlc only: minutes per candle
    interval: int | None = None
    #: seconds without data after which the stream counts as stale
    stale_after: float = defaults.WS_STALE_AFTER
    line: int = 0

    def describe(self) -> str:
        """The options of ``check``'s line: ``depth 10, snapshot every 1m, stale after 10s``."""
        parts = []
        if self.depth is not None:
            parts.append(f"depth {self.depth}")
        if self.snapshot_every is not None:
            parts.append(f"snapshot every {format_seconds(self.snapshot_every)}")
        if self.interval is not None:
            parts.append(f"interval {self.interval}m")
        parts.append(f"stale after {format_seconds(self.stale_after)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class KrakenSettings:
    url: str = defaults.KRAKEN_URL
    #: the streams' WebSocket v2 endpoint (``kraken.ws_url``)
    ws_url: str = defaults.WS_URL
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    tier: RateLimit = TIERS[defaults.TIER]
    tier_name: str = defaults.TIER
    public_rate_limit: RateLimit = PUBLIC_DEFAULT
    timeout: float = defaults.TIMEOUT
    nonce_unit: str = defaults.NONCE_UNIT
    lockout: float = defaults.LOCKOUT_PAUSE
    max_response: int = defaults.MAX_RESPONSE

    @property
    def has_credentials(self) -> bool:
        return bool(self.key and self.secret)


@dataclass(frozen=True)
class Account:
    """One Kraken account: its key, and the counter and nonce unit that go with the key."""

    name: str
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    tier: RateLimit = TIERS[defaults.TIER]
    tier_name: str = defaults.TIER
    nonce_unit: str = defaults.NONCE_UNIT


@dataclass(frozen=True)
class Config:
    path: str
    database: str
    kraken: KrakenSettings
    jobs: tuple[Job, ...]
    #: where runs wait while the database can't be reached, and how many at most
    spool_path: str = defaults.SPOOL_NAME
    spool_max_runs: int = defaults.SPOOL_MAX_RUNS
    #: the folder for per-key state (nonce marks), absolute; resolved only, never created at load
    state_dir: str = ""
    #: things worth saying that do not stop the file from loading
    warnings: tuple[str, ...] = ()
    #: the accounts private jobs use (``default`` from ``kraken:`` when there is no ``accounts:``)
    accounts: tuple[Account, ...] = ()
    #: how soon a standby takes an account over when its holder is gone (seconds)
    failover: float = defaults.FAILOVER

    def account(self, name: str) -> Account:
        (found,) = [a for a in self.accounts if a.name == name]
        return found

    #: ``HOST:PORT`` serving /metrics and /healthz, or None (off)
    metrics_listen: str | None = None
    #: host names the metrics listener answers to besides loopback's and its address's own
    #: (``metrics.allowed_hosts``: a deployment reached by a name, such as a container's)
    metrics_allowed_hosts: tuple[str, ...] = ()
    #: seconds to keep by table (``runs`` and the dataset tables); empty: nothing is deleted
    retention: dict[str, float] = field(default_factory=dict, hash=False)
    #: whether the service keeps the ``assets`` and ``pairs`` tables itself (Assets and
    #: AssetPairs at start and daily, with the public budget)
    reference: bool = True
    #: the currency balance snapshots are valued in (``valuation.quote``): the view
    #: ``portfolio_value`` and the dashboard
    valuation_quote: str = defaults.VALUATION_QUOTE
    #: seconds a price values a snapshot for (``valuation.max_price_age``); older, it is unpriced
    valuation_max_price_age: float = defaults.VALUATION_MAX_PRICE_AGE
    #: the WebSocket feeds (``streams:``), in the file's order
    streams: tuple[Stream, ...] = ()

    def database_for_display(self) -> str:
        return parse_url(self.database).render(hide_password=True)


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{int(seconds // size)}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds:g}s")
    return "".join(parts)


# -- YAML with lines and without silent duplicates ----------------------------------------------


def parse_duration(value: Any) -> float | None:
    """Seconds in ``30s``, ``5m``, ``1h30m``, ``1d`` or a plain positive number; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 and math.isfinite(value) else None
    if not isinstance(value, str) or not value:
        return None
    match = _DURATION.fullmatch(value.strip())
    if not match or not any(match.groups()):
        return None
    d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = d * 86400 + h * 3600 + m * 60 + s
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def parse_listen(value: Any) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9108`` for IPv6) as ``(host, port)``; None if it is not one."""
    if not isinstance(value, str):
        return None
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)
