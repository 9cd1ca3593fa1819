"""What a job file means: the frozen dataclasses a loaded file becomes (:class:`Config`,
:class:`KrakenSettings`, :class:`Account`, :class:`Job`) and the keys each section takes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import make_url

from .. import defaults
from ..methods import is_public
from ..ratelimit import PUBLIC_DEFAULT, TIERS, RateLimit

TOP_KEYS = (
    "database",
    "kraken",
    "accounts",
    "jobs",
    "spool",
    "failover",
    "metrics",
    "retention",
    "reference",
    "valuation",
)
ACCOUNT_KEYS = ("key", "secret", "key_file", "tier", "rate_limit", "nonce_unit")
METRICS_KEYS = ("listen", "allowed_hosts")
VALUATION_KEYS = ("quote", "max_price_age")
#: What ``retention:`` may name: runs (with their balances and ticker rows), and the dataset
#: tables, each by its time column.
RETENTION_KEYS = ("runs", "ledger", "my_trades", "orders", "trades", "ohlc", "spread")
SPOOL_KEYS = ("path", "max_runs")
KRAKEN_KEYS = (
    "url",
    "key",
    "secret",
    "key_file",
    "tier",
    "rate_limit",
    "public_rate_limit",
    "timeout",
    "nonce_unit",
    "lockout",
    "max_response_mb",
)
JOB_KEYS = (
    "method",
    "params",
    "every",
    "cron",
    "timezone",
    "jitter",
    "timeout",
    "deadline",
    "since",
    "raw",
    "account",
    "stale_after",
    "retention",
)
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
class KrakenSettings:
    url: str = defaults.KRAKEN_URL
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

    def database_for_display(self) -> str:
        return make_url(self.database).render_as_string(hide_password=True)


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
