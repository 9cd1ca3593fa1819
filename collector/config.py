"""The job file: YAML in, frozen and validated dataclasses out, or clear :class:`ConfigError` lines.

Every error names the file, the line and the key (``jobs.yaml:14: jobs.ticker.every: ...``); a
file with several mistakes gets them all at once (:class:`ConfigErrors`, one line each, in the
file's order), as a linter reports them.
Duplicate keys are refused (plain YAML loaders silently keep the last one), unknown keys get a
did-you-mean, and ``${VAR}`` / ``${VAR:-default}`` are expanded from the environment in every string
(an unset variable without a default is an error naming it; ``${VAR:-}`` allows it to be empty). Secrets are validated but never repeated in a message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import difflib
import math
import os
import re
import reprlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import defaults
from .auth import decode_secret
from .defaults import (
    DATA_DIR_ENV,
    DATABASE_ENV,
    KEY_ENV,
    SECRET_ENV,
    SPOOL_ENV,
    STATE_DIR_ENV,
    XDG_STATE_ENV,
)
from .errors import ConfigError, ConfigErrors, CredentialsError
from .methods import (
    HISTORY_METHODS,
    PRIVATE_READ_METHODS,
    PUBLIC_METHODS,
    READ_METHODS,
    STATE_CHANGING_METHODS,
    Param,
    is_public,
    params_of,
)
from .nonce import UNITS
from .ratelimit import PUBLIC_DEFAULT, TIERS, RateLimit

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
#: A quote currency: an asset's code or altname (``USD``, ``ZUSD``, ``EUR``, ``XBT``, ``USDT``).
_QUOTE = re.compile(r"[A-Z0-9]{2,16}")
#: A host name the metrics listener answers to (``collector``, ``metrics.example.com``; a
#: container's name may hold ``_``).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
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
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


class _Map(dict):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    lines: dict[str, int]


# libyaml's parser when PyYAML has it (ten times faster: 10,000 jobs load in well under a second),
# with the safe constructor either way: no !!python tags.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigError(f"keys must be text, not {show(key)}", line=line)
        if key in out:
            raise ConfigError(
                f"duplicate key (first at line {out.lines[key]}); YAML would silently keep the last",
                line=line,
                key=key,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    """A YAML date or time; one that looks like a date but isn't (``2024-13-01``) stays text, so
    the key that holds it says what is wrong with it (PyYAML would raise a ValueError)."""
    try:
        return loader.construct_yaml_timestamp(node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


# -- loading ----------------------------------------------------------------------------------


def load(
    path: str | os.PathLike[str],
    *,
    database: str | None = None,
    environ: dict[str, str] | None = None,
    metrics_listen: str | None = None,
    keys: bool = True,
) -> Config:
    """Read and validate a job file.

    :param database: overrides the file's ``database`` (the CLI's ``--db``)
    :param metrics_listen: overrides the file's ``metrics.listen``, which is then not looked at
        (the CLI's ``--metrics-listen``)
    :param environ: the environment for ``${VAR}`` and credentials (default ``os.environ``)
    :param keys: False for the commands that only read the database (status, export, verify,
        dashboard): they send nothing, so a key file they can't read is no error (the account's
        key is then :data:`UNREAD_KEY` and its path) and no secret is checked
    :raises ConfigError: with file, line and key
    """
    name = str(path)
    env = dict(os.environ if environ is None else environ)
    try:
        text = read_small(path, defaults.JOB_FILE_MAX).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the job file: {_reason(exc)}", file=name) from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=name, line=exc.line, key=exc.key) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"not valid YAML: {exc.problem}", file=name, line=mark.line + 1 if mark else None
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"not valid YAML: {type(exc).__name__}", file=name) from None
    if not isinstance(raw, _Map):
        raise ConfigError("the job file must be a mapping with a 'jobs' key", file=name, line=1)
    try:
        return _Builder(name, env, keys=keys).config(raw, database, metrics_listen)
    except RecursionError:
        raise ConfigError("nested too deeply", file=name) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def read_small(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    A FIFO, a device (``/dev/zero``) or a huge file is refused before anything is read: opened
    without blocking, checked with ``fstat``, then read up to the limit.

    :raises OSError: with a ``strerror`` that says why
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > limit:
            raise OSError(0, f"larger than {limit:,} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(0, f"larger than {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxtuple = 2, 3, 3, 3
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 40, 40, 40


def show(value: Any) -> str:
    """``value`` for a message, cut short: a bounded walk, so a YAML alias bomb costs nothing and
    a huge value never fills a line."""
    text = _SHOW.repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _range(low: float, high: float) -> str:
    return (
        f"between {format_duration(timedelta(seconds=low))} and "
        f"{format_duration(timedelta(seconds=high))}"
    )


#: The key and secret a read-only load gives an account whose key file it can't read.
UNREAD_KEY = "(key file not read) "
#: An option whose value had a mistake (None is a value: ``since: all``).
_MISSING = object()
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _section(fallback: Any) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """A :class:`_Builder` step whose mistake does not stop the others: it is noted and
    ``fallback`` stands in, so the rest of the file is still checked and every mistake is
    reported at once (a stand-in never leaves the builder: :meth:`_Builder.config` raises)."""

    def wrap(build: Callable[_P, _T]) -> Callable[_P, _T]:
        @wraps(build)
        def step(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            builder = args[0]
            assert isinstance(builder, _Builder)
            return builder.attempt(lambda: build(*args, **kwargs), fallback)

        return step

    return wrap


class _Builder:
    def __init__(self, file: str, env: dict[str, str], *, keys: bool = True) -> None:
        self.file, self.env, self.keys = file, env, keys
        self.warnings: list[str] = []
        # Every mistake found, as a linter lists them; raised together at the end of config().
        self.errors: list[ConfigError] = []
        # Whether accounts: as a whole is wrong (not a mapping): the private jobs then are not
        # also told that they have no account. (A broken account or credentials get a stand-in.)
        self.accounts_broken = False
        # (a mapping's line, the key an unknown key there was taken for): that key is not also
        # reported missing, the did-you-mean says it.
        self.misspelt: set[tuple[int, str]] = set()
        self.unset = False  # a ${VAR} without a value or a default
        self.original = _Map()  # the file as written, before ${VAR} expansion
        self.kraken_line = 1

    def error(self, message: str, where: _Map, key: str | None, path: str) -> ConfigError:
        line = where.lines.get(key, where.line) if key is not None else where.line
        if not path.isprintable():  # a key with a newline must not forge a second line
            path = show(path)
        return ConfigError(message, file=self.file, line=line, key=path or None)

    def attempt(self, build: Callable[[], _T], fallback: Any) -> _T:
        """``build()``; its :class:`ConfigError` is noted and ``fallback`` returned instead."""
        try:
            return build()
        except ConfigErrors as exc:
            self.errors.extend(exc.errors)
        except ConfigError as exc:
            self.errors.append(exc)
        return fallback

    def raise_errors(self) -> None:
        """One :class:`ConfigError`, or :class:`ConfigErrors` in line order, if any were noted."""
        unique = list({str(e): e for e in self.errors}.values())  # each line once
        unique.sort(key=lambda e: e.line or 0)
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise ConfigErrors(unique)

    def check_keys(self, where: _Map, allowed: tuple[str, ...], prefix: str) -> None:
        """Every unknown key is a mistake of its own; the known ones are still checked."""
        for key in where:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; expected one of {', '.join(allowed)}"
                )
                if close:
                    self.misspelt.add((where.line, close[0]))
                self.errors.append(self.error(f"unknown key{hint}", where, key, prefix + key))

    def expand(
        self, value: Any, memo: dict[int, Any] | None = None, path: str = "", line: int = 0
    ) -> Any:
        """``${VAR}`` in every string; ``path`` and ``line`` are the key holding ``value``, for
        the error an unset variable gets. Containers are expanded once each (YAML aliases share
        them), so an alias bomb costs its size on disk, not its size expanded."""
        if isinstance(value, str):
            return _VAR.sub(lambda m: self.variable(m, path, line), value)
        if not isinstance(value, list | dict):
            return value
        memo = {} if memo is None else memo
        if id(value) in memo:
            return memo[id(value)]
        out: Any
        if isinstance(value, list):
            out = memo[id(value)] = []
            out.extend(self.expand(v, memo, path, line) for v in value)
        else:
            out = memo[id(value)] = _Map()
            lines = getattr(value, "lines", {})
            for k, v in value.items():
                # A key that would break the one-line message (a newline in it) is quoted.
                name = k if isinstance(k, str) and k.isprintable() else repr(k)
                out[k] = self.expand(
                    v, memo, f"{path}.{name}" if path else name, lines.get(k, line)
                )
            out.line, out.lines = getattr(value, "line", 0), lines
        return out

    def variable(self, match: re.Match[str], path: str, line: int) -> str:
        """One ``${VAR}``: its value; else its default (``${VAR:-}`` is an explicit empty one);
        an unset variable without a default is an error, not an empty string that would surface
        later as missing credentials or the default database."""
        name, default = match.group(1), match.group(2)
        value = self.env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            # Noted, and every other variable still looked at; config() stops after expanding,
            # before an empty value is taken for a missing credential or the default database.
            self.unset = True
            self.errors.append(
                ConfigError(
                    f"{match.group(0)} is not set",
                    file=self.file,
                    line=line or None,
                    key=path or None,
                )
            )
        return value or ""

    def mapping(self, parent: _Map, key: str, path: str) -> _Map:
        value = parent.get(key)
        if value is None:
            out = _Map()
            out.line, out.lines = parent.lines.get(key, parent.line), {}
            return out
        if not isinstance(value, _Map):
            raise self.error("must be a mapping", parent, key, path)
        return value

    def duration(
        self,
        where: _Map,
        key: str,
        path: str,
        low: float = 0.0,
        high: float = defaults.WAIT_MAX,
    ) -> float:
        """A duration in seconds, within ``[low, high]`` (every duration is bounded: an endless
        one would overflow the dates computed from it)."""
        value = where[key]
        seconds = parse_duration(value)
        if seconds is None:
            raise self.error(
                f"bad duration {show(value)}: use 30s, 5m, 1h, 1d or combinations such as 1h30m",
                where,
                key,
                path,
            )
        if not low <= seconds <= high:
            raise self.error(
                f"{show(value)} is out of range: must be {_range(max(low, 0.001), high)}",
                where,
                key,
                path,
            )
        return seconds

    def config(self, raw: _Map, database: str | None, listen: str | None = None) -> Config:
        self.check_keys(raw, TOP_KEYS, "")
        self.original = raw
        self.kraken_line = raw.lines.get("kraken", raw.line)
        raw = self.expand(raw)
        if self.unset:
            self.raise_errors()
        # Each section below is checked even when another has a mistake (attempt, @_section);
        # all of them are raised together at the end.
        kraken_map = self.attempt(lambda: self.mapping(raw, "kraken", "kraken"), None)
        if kraken_map is None:  # not a mapping (noted): the defaults, while the rest is checked
            kraken_map = _Map()
            kraken_map.line, kraken_map.lines = raw.lines.get("kraken", raw.line), {}
        kraken = self.kraken(kraken_map)
        accounts = self.attempt(lambda: self.accounts(raw, kraken_map, kraken), ())
        jobs = self.jobs(raw, kraken, accounts)
        failover = defaults.FAILOVER
        if "failover" in raw:
            failover = self.attempt(
                lambda: self.duration(
                    raw, "failover", "failover", defaults.FAILOVER_MIN, defaults.FAILOVER_MAX
                ),
                failover,
            )
        data_dir = self.data_dir()
        url = self.attempt(lambda: self.database(raw, database, data_dir), None)
        spool_path, max_runs = self.spool(raw, url, data_dir)
        reference = raw.get("reference", True)
        if not isinstance(reference, bool):
            self.errors.append(
                self.error(
                    "must be true (the service keeps the assets and pairs tables: two public "
                    "calls at start and daily) or false",
                    raw,
                    "reference",
                    "reference",
                )
            )
        config = Config(
            self.file,
            with_driver(url) if url is not None else "",
            kraken,
            jobs,
            spool_path,
            max_runs,
            self.state_dir(),
            tuple(self.warnings),
            accounts,
            failover,
            metrics_listen=self.metrics(raw, listen),
            metrics_allowed_hosts=self.allowed_hosts(raw),
            retention=self.retention(raw),
            reference=reference,
            valuation_quote=self.valuation(raw),
            valuation_max_price_age=self.max_price_age(raw),
        )
        self.raise_errors()
        return config

    def jobs(
        self, raw: _Map, kraken: KrakenSettings, accounts: tuple[Account, ...]
    ) -> tuple[Job, ...]:
        """Every job; one with a mistake is left out (and the mistake noted), the others checked."""
        jobs_map = raw.get("jobs")
        if "jobs" not in raw and (raw.line, "jobs") in self.misspelt:
            return ()
        if not isinstance(jobs_map, _Map) or not jobs_map:
            self.errors.append(
                self.error(
                    "'jobs' must be a mapping from job name to job, with at least one job",
                    raw,
                    "jobs" if "jobs" in raw else None,
                    "jobs",
                )
            )
            return ()
        if len(jobs_map) > defaults.JOBS_MAX:
            raise self.error(
                f"{len(jobs_map):,} jobs; at most {defaults.JOBS_MAX:,} in one file",
                raw,
                "jobs",
                "jobs",
            )
        built = (
            self.attempt(partial(self.job, name, jobs_map, kraken, accounts), None)
            for name in jobs_map
        )
        return tuple(job for job in built if job is not None)

    def database(self, raw: _Map, database: str | None, data_dir: Path) -> URL:
        """The database URL: ``--db``, else ``$COLLECTOR_DATABASE_URL``, else the file's."""
        # Paths in the job file are relative to it (or to $COLLECTOR_DATA_DIR), wherever the
        # service is started from; --db and $COLLECTOR_DATABASE_URL come from the person at the
        # shell, and are relative to where they are.
        from_file = not database and not self.env.get(DATABASE_ENV)
        db = database or self.env.get(DATABASE_ENV) or raw.get("database") or defaults.DATABASE
        if not isinstance(db, str):
            raise self.error("must be a database URL", raw, "database", "database")
        where_db = ("database", raw) if "database" in raw and not database else (None, raw)
        try:
            url = make_url(db)
        except (ArgumentError, ValueError):
            raise self.error(
                "malformed database URL; e.g. sqlite:///collector.db or "
                "postgresql+psycopg://user@host/db",
                where_db[1],
                where_db[0],
                "database",
            ) from None
        problem = database_problem(url)
        if problem:
            raise self.error(problem, where_db[1], where_db[0], "database")
        if from_file:
            url = _sqlite_under(url, data_dir)
        return url

    @_section(("", defaults.SPOOL_MAX_RUNS))
    def spool(self, raw: _Map, url: URL | None, data_dir: Path) -> tuple[str, int]:
        """``spool.path`` (else beside the SQLite file, or in the data folder) and ``max_runs``."""
        spool = self.mapping(raw, "spool", "spool")
        self.check_keys(spool, SPOOL_KEYS, "spool.")
        max_runs = spool.get("max_runs", defaults.SPOOL_MAX_RUNS)
        if (
            isinstance(max_runs, bool)
            or not isinstance(max_runs, int)
            or not 1 <= max_runs <= defaults.SPOOL_MAX_RUNS_MAX
        ):
            raise self.error(
                f"must be a whole number of runs from 1 to {defaults.SPOOL_MAX_RUNS_MAX:,}",
                spool,
                "max_runs",
                "spool.max_runs",
            )
        in_file = spool.get("path")
        if in_file is not None and not isinstance(in_file, str):
            raise self.error("must be a file path", spool, "path", "spool.path")
        # data_dir / an absolute path is that path
        spool_path = self.env.get(SPOOL_ENV) or (str(data_dir / in_file) if in_file else None)
        if not spool_path:
            # Beside the SQLite file, or in the data folder for a database on a server.
            if (
                url is not None
                and url.get_backend_name() == "sqlite"
                and url.database not in (None, "", ":memory:")
            ):
                spool_path = str(url.database) + ".spool"
            else:
                spool_path = str(data_dir / defaults.SPOOL_NAME)
        return spool_path, max_runs

    @_section(defaults.VALUATION_QUOTE)
    def valuation(self, raw: _Map) -> str:
        spec = self.mapping(raw, "valuation", "valuation")
        self.check_keys(spec, VALUATION_KEYS, "valuation.")
        quote = spec.get("quote", defaults.VALUATION_QUOTE)
        if not isinstance(quote, str) or not _QUOTE.fullmatch(quote.strip().upper()):
            raise self.error(
                f"must be the name of the currency to value balances in, such as USD, EUR or "
                f"XBT (Kraken's asset code or altname), not {show(quote)}",
                spec,
                "quote",
                "valuation.quote",
            )
        return quote.strip().upper()

    @_section(defaults.VALUATION_MAX_PRICE_AGE)
    def max_price_age(self, raw: _Map) -> float:
        spec = self.mapping(raw, "valuation", "valuation")
        if "max_price_age" not in spec:
            return defaults.VALUATION_MAX_PRICE_AGE
        return self.duration(
            spec,
            "max_price_age",
            "valuation.max_price_age",
            low=defaults.VALUATION_MAX_PRICE_AGE_MIN,
            high=defaults.VALUATION_MAX_PRICE_AGE_MAX,
        )

    @_section(None)
    def metrics(self, raw: _Map, override: str | None = None) -> str | None:
        spec = self.mapping(raw, "metrics", "metrics")
        self.check_keys(spec, METRICS_KEYS, "metrics.")
        if override is not None:  # --metrics-listen: the file's value is not used
            return override
        if "listen" not in spec:
            return None
        listen = spec["listen"]
        if parse_listen(listen) is None:
            raise self.error(
                f"must be HOST:PORT, e.g. 127.0.0.1:{defaults.METRICS_PORT}, not {show(listen)}",
                spec,
                "listen",
                "metrics.listen",
            )
        return str(listen)

    @_section(())
    def allowed_hosts(self, raw: _Map) -> tuple[str, ...]:
        spec = self.mapping(raw, "metrics", "metrics")
        hosts = spec.get("allowed_hosts", [])
        if isinstance(hosts, str):
            hosts = [hosts]
        if (
            not isinstance(hosts, list)
            or len(hosts) > defaults.ALLOWED_HOSTS_MAX
            or not all(isinstance(h, str) and _HOST.fullmatch(h) for h in hosts)
        ):
            raise self.error(
                f"must be a list of at most {defaults.ALLOWED_HOSTS_MAX} host names (without "
                f"port), e.g. [collector, metrics.example.com], not {show(hosts)}",
                spec,
                "allowed_hosts",
                "metrics.allowed_hosts",
            )
        return tuple(h.lower() for h in hosts)

    @_section({})
    def retention(self, raw: _Map) -> dict[str, float]:
        spec = self.mapping(raw, "retention", "retention")
        self.check_keys(spec, RETENTION_KEYS, "retention.")
        return {
            table: self.attempt(
                partial(
                    self.duration, spec, table, f"retention.{table}", high=defaults.RETENTION_MAX
                ),
                0.0,
            )
            for table in spec
            if table in RETENTION_KEYS
        }

    def data_dir(self) -> Path:
        """Where relative data paths in the job file resolve: ``$COLLECTOR_DATA_DIR`` (relative
        to the current folder), else the job file's folder."""
        given = self.env.get(DATA_DIR_ENV)
        return Path(os.path.abspath(given)) if given else Path(self.file).resolve().parent

    def state_dir(self) -> str:
        """``$COLLECTOR_STATE_DIR``, else ``$XDG_STATE_HOME/collector``, else
        ``~/.local/state/collector``; absolute. Nothing is created here."""
        given = self.env.get(STATE_DIR_ENV)
        if given:
            return os.path.abspath(given)
        xdg = self.env.get(XDG_STATE_ENV)
        # The XDG spec: a relative $XDG_STATE_HOME is invalid and ignored.
        if xdg and os.path.isabs(xdg):
            return os.path.join(xdg, defaults.STATE_SUBDIR)
        home = self.env.get("HOME") or str(Path.home())
        return os.path.join(os.path.abspath(home), ".local", "state", defaults.STATE_SUBDIR)

    def kraken(self, k: _Map) -> KrakenSettings:
        self.check_keys(k, KRAKEN_KEYS, "kraken.")
        opts: dict[str, Any] = self.attempt(lambda: self.kraken_options(k), {})
        opts.update(self.attempt(lambda: self.account_opts(k, "kraken."), {}))
        key, secret = self.credentials(k, "kraken.", environment=True)
        return KrakenSettings(key=key, secret=secret, **opts)

    def kraken_options(self, k: _Map) -> dict[str, Any]:
        """``kraken:``'s settings but the account's (its counter, nonce unit and credentials)."""
        opts: dict[str, Any] = {}
        if "url" in k:
            url = k["url"]
            if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s?#]+/?\S*", url):
                raise self.error("must be an http(s) URL", k, "url", "kraken.url")
            parts = urlsplit(url)
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise self.error(
                    f"must be the exchange's address without a path, e.g. "
                    f"{parts.scheme}://{parts.netloc}: the client adds /0/public/... and "
                    "/0/private/... itself",
                    k,
                    "url",
                    "kraken.url",
                )
            opts["url"] = url.rstrip("/")
        if "public_rate_limit" in k:
            opts["public_rate_limit"] = self.rate_limit(k, "public_rate_limit")
        if "timeout" in k:
            opts["timeout"] = self.duration(
                k, "timeout", "kraken.timeout", high=defaults.TIMEOUT_MAX
            )
        if "max_response_mb" in k:
            size = k["max_response_mb"]
            if (
                isinstance(size, bool)
                or not isinstance(size, int | float)
                or not 0.001 <= size <= defaults.MAX_RESPONSE_MB_MAX
            ):
                raise self.error(
                    f"must be a number of megabytes from 0.001 to {defaults.MAX_RESPONSE_MB_MAX}",
                    k,
                    "max_response_mb",
                    "kraken.max_response_mb",
                )
            opts["max_response"] = int(size * 1024 * 1024)
        if "lockout" in k:
            opts["lockout"] = self.duration(k, "lockout", "kraken.lockout", high=defaults.WAIT_MAX)
        return opts

    def account_opts(self, k: _Map, prefix: str) -> dict[str, Any]:
        """An account's counter (``tier`` or ``rate_limit``) and ``nonce_unit``."""
        opts: dict[str, Any] = {}
        if "tier" in k and "rate_limit" in k:
            raise self.error(
                "give either tier or rate_limit, not both", k, "rate_limit", prefix + "rate_limit"
            )
        if "tier" in k:
            tier = k["tier"].lower() if isinstance(k["tier"], str) else ""
            if tier not in TIERS:
                close = difflib.get_close_matches(tier, TIERS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.error(
                    f"unknown tier {show(k['tier'])} (starter, intermediate or pro){hint}",
                    k,
                    "tier",
                    prefix + "tier",
                )
            opts["tier"], opts["tier_name"] = TIERS[tier], tier
        if "rate_limit" in k:
            opts["tier"] = self.rate_limit(k, "rate_limit", prefix)
            opts["tier_name"] = f"max {opts['tier'].max:g}, decay {opts['tier'].decay:g}/s"
        if "nonce_unit" in k:
            if not isinstance(k["nonce_unit"], str) or k["nonce_unit"] not in UNITS:
                raise self.error(
                    f"must be one of {', '.join(UNITS)}", k, "nonce_unit", prefix + "nonce_unit"
                )
            opts["nonce_unit"] = k["nonce_unit"]
        return opts

    def accounts(self, raw: _Map, k: _Map, kraken: KrakenSettings) -> tuple[Account, ...]:
        """``accounts:``, or the one account ``default`` that ``kraken:``'s credentials make."""
        if "accounts" not in raw:
            if not kraken.has_credentials:
                return ()
            return (
                Account(
                    defaults.DEFAULT_ACCOUNT,
                    kraken.key,
                    kraken.secret,
                    kraken.tier,
                    kraken.tier_name,
                    kraken.nonce_unit,
                ),
            )
        found = raw["accounts"]
        if not isinstance(found, _Map) or not found:
            self.accounts_broken = True
            raise self.error(
                "must map account names to {key, secret} or {key_file}", raw, "accounts", "accounts"
            )
        for shared in ("key", "secret", "key_file"):
            if shared in k:
                self.errors.append(
                    self.error(
                        "with accounts:, credentials go under each account",
                        k,
                        shared,
                        f"kraken.{shared}",
                    )
                )
        out = [
            self.attempt(
                partial(self.account, name, found, kraken),
                # A stand-in, so that its jobs are still checked, and not told it is missing.
                Account(str(name), key=f"<account {name}>"),
            )
            for name in found
        ]
        keys = [a.key for a in out]
        for account in out:
            if keys.count(account.key) > 1:
                raise self.error(
                    "two accounts share one API key; a key is one account's (its nonces)",
                    found,
                    account.name,
                    f"accounts.{account.name}.key",
                )
        return tuple(out)

    def account(self, name: str, found: _Map, kraken: KrakenSettings) -> Account:
        """One account of ``accounts:``."""
        spec = found[name]
        path = f"accounts.{name}"
        if not isinstance(spec, _Map):
            raise self.error(
                "must be a mapping with key and secret, or key_file", found, name, path
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise self.error(
                "an account name is 1 to 64 letters, digits, _ . or -", found, name, path
            )
        self.check_keys(spec, ACCOUNT_KEYS, path + ".")
        opts = {
            "tier": kraken.tier,
            "tier_name": kraken.tier_name,
            "nonce_unit": kraken.nonce_unit,
            **self.attempt(lambda: self.account_opts(spec, path + "."), {}),
        }
        key, secret = self.credentials(spec, path + ".")
        if not key:
            raise self.error("needs key and secret, or key_file", found, name, path)
        return Account(str(name), key, secret, **opts)

    def credentials(self, k: _Map, prefix: str, *, environment: bool = False) -> tuple[str, str]:
        """``key``/``secret`` or ``key_file`` under ``k`` (and, with ``environment``, the
        ``$KRAKEN_API_KEY``/``$KRAKEN_API_SECRET`` fallback); the secret must be base64.

        A mistake is noted, and a stand-in key returned: the account still exists, so its jobs
        are checked and not also told that they have no credentials."""
        stand_in = (f"<{prefix}key>", "<secret>")
        return self.attempt(lambda: self.checked_credentials(k, prefix, environment), stand_in)

    def checked_credentials(self, k: _Map, prefix: str, environment: bool) -> tuple[str, str]:
        key, secret = self._credentials(k, prefix, environment)
        if (key or secret) and self.keys:
            try:
                decode_secret(secret)
            except CredentialsError as exc:
                where = "secret" if "secret" in k else "key_file" if "key_file" in k else None
                if where == "secret":
                    origin = self.origin(prefix + "secret")
                    source = f" from {origin}" if origin else ""
                elif where == "key_file":
                    source = " on line 2 of the key file"
                else:
                    source = f" from ${SECRET_ENV}"
                message = str(exc).replace("the API secret", f"the API secret{source}", 1)
                if any(c.isspace() for c in secret):
                    message += "; it holds a space or line break inside"
                error = self.error(message, k, where, f"{prefix}{where or 'secret'}")
                if where is None:  # from the environment: the line of the section it belongs to
                    error = ConfigError(
                        error.message, file=self.file, line=self.kraken_line, key=error.key
                    )
                raise error from None
            if _swapped(key, secret):
                where = "key_file" if "key_file" in k else "key" if "key" in k else None
                what = {
                    "key_file": "the key file holds the secret on line 1 and the key on line 2",
                    "key": f"{prefix}key holds the secret and {prefix}secret the key",
                    None: f"${KEY_ENV} holds the secret and ${SECRET_ENV} the key",
                }[where]
                error = self.error(
                    f"{what} (a secret is {_length(defaults.SECRET_BYTES)} of base64, a key "
                    f"{len(secret)}: here the other way round); swap them, or every private "
                    "call fails with EAPI:Invalid key",
                    k,
                    where,
                    f"{prefix}{where or 'key'}",
                )
                if where is None:
                    error = ConfigError(
                        error.message, file=self.file, line=self.kraken_line, key=error.key
                    )
                raise error
        return key, secret

    def origin(self, path: str) -> str | None:
        """The ``${VAR}`` references in the job file's own text at ``path`` (dotted), if any."""
        node: Any = self.original
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        names = _VAR.findall(node) if isinstance(node, str) else []
        return ", ".join(f"${{{name}}}" for name, _ in names) or None

    def _credentials(self, k: _Map, prefix: str, environment: bool) -> tuple[str, str]:
        if "key_file" in k:
            if "key" in k or "secret" in k:
                raise self.error(
                    "give key_file or key/secret, not both", k, "key_file", prefix + "key_file"
                )
            if not isinstance(k["key_file"], str) or not k["key_file"]:
                raise self.error("must be a file path", k, "key_file", prefix + "key_file")
            path = Path(k["key_file"])
            if not path.is_absolute():
                path = Path(self.file).parent / path
            try:
                # A regular file of at most 64 KB (never /dev/zero or a FIFO); a BOM, CRLF line
                # ends and spaces around the values (a key file saved by Notepad) are not part
                # of them.
                lines = read_small(path, defaults.KEY_FILE_MAX).decode("utf-8-sig").splitlines()
                key, secret, *_ = (line.strip() for line in [*lines, "", ""])
            except (OSError, UnicodeDecodeError) as exc:
                if not self.keys:
                    return UNREAD_KEY + str(path), UNREAD_KEY
                raise self.error(
                    f"cannot read key file {str(path)!r}: {_reason(exc)}{_not_ours(path, exc)}",
                    k,
                    "key_file",
                    prefix + "key_file",
                ) from None
            if not key or not secret:
                raise self.error(
                    f"key file {str(path)!r} must hold the key on line 1 and the secret on line 2",
                    k,
                    "key_file",
                    prefix + "key_file",
                )
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                line = k.lines.get("key_file", k.line)
                self.warnings.append(
                    f"{self.file}:{line}: {prefix}key_file: {str(path)!r} is "
                    f"readable by group or others (mode {mode:04o}); "
                    f"run: chmod 600 {path}"
                )
            return key, secret
        env = self.env if environment else {}
        key = k.get("key") or env.get(KEY_ENV) or ""
        secret = k.get("secret") or env.get(SECRET_ENV) or ""
        for name, value in (("key", key), ("secret", secret)):
            if not isinstance(value, str):
                raise self.error("must be text", k, name, f"{prefix}{name}")
        # Pasted or echoed values carry a newline or a space at their ends, as key files do;
        # neither is ever part of a key or a base64 secret.
        key, secret = key.strip(), secret.strip()
        if bool(key) != bool(secret):
            missing = "secret" if key else "key"
            raise self.error(
                f"an API key needs its {missing} too",
                k,
                "key" if "key" in k else "secret" if "secret" in k else None,
                f"{prefix}{missing}",
            )
        return key, secret

    def since(self, spec: _Map, path: str) -> float | None:
        """``all`` (None: from the beginning), a date, an ISO time (UTC unless it says), or unix
        seconds; never in the future (there is nothing there to start from)."""
        value = spec["since"]
        if value == "all":
            return None
        usage = "all, a date (2024-01-31), a time (2024-01-31T12:00:00Z) or unix seconds"
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            seconds = float(value) if math.isfinite(value) else None
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            value = datetime.datetime.combine(value, datetime.time(), datetime.UTC)
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value.strip())
            except ValueError as exc:
                # A date YAML could not build (2024-13-01) arrives here as text, with the reason.
                raise self.error(
                    f"{show(value)} is not a date or time ({exc}); use {usage}",
                    spec,
                    "since",
                    path,
                ) from None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            seconds = value.timestamp()
        if seconds is None:
            raise self.error(f"must be {usage}", spec, "since", path)
        if seconds > datetime.datetime.now(datetime.UTC).timestamp():
            when = datetime.datetime.fromtimestamp(min(seconds, 253402300799), datetime.UTC)
            raise self.error(
                f"{when.isoformat(timespec='seconds')} is in the future: a history starts in "
                "the past (all, or a date it has)",
                spec,
                "since",
                path,
            )
        return seconds

    def rate_limit(self, k: _Map, key: str, prefix: str = "kraken.") -> RateLimit:
        value = k[key]
        if not isinstance(value, _Map) or set(value) != {"max", "decay"}:
            raise self.error(
                "must be a mapping {max: N, decay: per-second}", k, key, f"{prefix}{key}"
            )
        numbers = [value["max"], value["decay"]]
        if not all(
            isinstance(n, int | float)
            and not isinstance(n, bool)
            and math.isfinite(n)
            and 0 < n <= defaults.RATE_MAX
            for n in numbers
        ):
            raise self.error(
                f"max and decay must be numbers above 0 and at most {defaults.RATE_MAX:,.0f}",
                k,
                key,
                f"{prefix}{key}",
            )
        return RateLimit(float(value["max"]), float(value["decay"]))

    def job(
        self, name: str, jobs: _Map, kraken: KrakenSettings, accounts: tuple[Account, ...]
    ) -> Job | None:
        path = f"jobs.{name}" if name.isprintable() else f"jobs.{name!r}"
        spec = jobs[name]
        if not re.fullmatch(rf"[A-Za-z0-9_.-]{{1,{defaults.NAME_MAX}}}", name):
            # A name is a log field, a metric label and a status column: no newline that forges
            # a log line, no terminal escape, no space that breaks a table.
            raise self.error(
                f"a job name is 1 to {defaults.NAME_MAX} letters, digits, _ . or -, "
                f"not {show(name)}",
                jobs,
                name,
                path,
            )
        if not isinstance(spec, _Map):
            raise self.error(
                "a job must be a mapping with method and every or cron", jobs, name, path
            )
        self.check_keys(spec, JOB_KEYS, path + ".")
        method = spec.get("method")
        if method is None and (spec.line, "method") in self.misspelt:
            return None  # the unknown key's did-you-mean says it; nothing else can be checked
        if not isinstance(method, str) or not method:
            raise self.error(
                "needs a method, e.g. method: Ticker",
                spec,
                "method" if "method" in spec else None,
                path + ".method",
            )
        if method in STATE_CHANGING_METHODS:
            raise self.error(
                f"{method} changes account state; collector is read-only and never calls it",
                spec,
                "method",
                path + ".method",
            )
        known = PUBLIC_METHODS | PRIVATE_READ_METHODS
        if method not in known:
            close = difflib.get_close_matches(method, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.error(
                f"unknown Kraken method {show(method)}{hint}", spec, "method", path + ".method"
            )
        params = spec.get("params") or _Map()
        if not isinstance(params, _Map):
            raise self.error(
                "must be a mapping of request parameters", spec, "params", path + ".params"
            )
        for param, value in params.items():
            values = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, str | int | float | bool) for v in values):
                raise self.error(
                    "a request parameter is a value or a list of values",
                    params,
                    param,
                    f"{path}.params.{param}",
                )
        for reserved in RESERVED_PARAMS:
            if reserved in params:
                raise self.error(
                    f"'{reserved}' is set by the client, leave it out",
                    params,
                    reserved,
                    f"{path}.params.{reserved}",
                )
        self.check_params(method, params, spec, path)
        # The schedule, then each option: a mistake in one does not hide one in the next.
        opts: dict[str, Any] = self.attempt(lambda: self.schedule(name, jobs, path), {})
        opts.update(self.job_options(method, spec, path, kraken, opts))
        # A timezone that is not text was reported by schedule(); str() of it could be an alias
        # bomb's billion items (a stand-in is never used: config() raises).
        timezone = spec.get("timezone", "UTC")
        job = Job(
            name=str(name),
            method=method,
            params=dict(params),
            timezone=timezone if isinstance(timezone, str) else "UTC",
            line=jobs.lines.get(name, 0),
            **opts,
        )
        return self.account_of(job, spec, path, accounts)

    def schedule(self, name: str, jobs: _Map, path: str) -> dict[str, Any]:
        """A job's ``every`` or ``cron`` (with its ``timezone``)."""
        spec = jobs[name]
        opts: dict[str, Any] = {}
        has_every, has_cron = "every" in spec, "cron" in spec
        if has_every and has_cron:
            raise self.error("has both every and cron; keep one", spec, "cron", path)
        if not has_every and not has_cron:
            if {(spec.line, "every"), (spec.line, "cron")} & self.misspelt:
                return {}
            raise self.error(
                "needs exactly one of every: (e.g. 30s) or cron: (5 fields)", jobs, name, path
            )
        tz = spec.get("timezone", "UTC")
        try:
            if not isinstance(tz, str):
                raise ValueError
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.error(
                f"unknown timezone {show(tz)}", spec, "timezone", path + ".timezone"
            ) from None
        if has_every:
            seconds = self.duration(
                spec, "every", path + ".every", defaults.EVERY_MIN, defaults.EVERY_MAX
            )
            opts["every"] = timedelta(seconds=seconds)
        else:
            opts["cron"] = self.cron(spec, tz, path + ".cron")
        return opts

    def job_options(
        self, method: str, spec: _Map, path: str, kraken: KrakenSettings, schedule: dict[str, Any]
    ) -> dict[str, Any]:
        """A job's options but its schedule; each mistake is noted, and the next option checked."""
        opts: dict[str, Any] = {}

        def option(key: str, build: Callable[[], Any]) -> None:
            if key in spec:
                value = self.attempt(build, _MISSING)
                if value is not _MISSING:
                    opts[key] = value

        every = schedule.get("every")
        most = (
            defaults.JITTER_MAX
            if every is None
            else min(defaults.JITTER_MAX, every.total_seconds())
        )
        option("jitter", lambda: self.duration(spec, "jitter", path + ".jitter", high=most))
        opts["timeout"] = kraken.timeout
        option(
            "timeout",
            lambda: self.duration(spec, "timeout", path + ".timeout", high=defaults.TIMEOUT_MAX),
        )
        # Retries must not run into the next run: by default they end after one interval (or a
        # minute, whichever is shorter).
        if every is not None:
            opts["deadline"] = min(every.total_seconds(), defaults.DEADLINE)
        option("deadline", lambda: self.duration(spec, "deadline", path + ".deadline"))
        if "deadline" in spec:
            opts["deadline_set"] = True
        option("since", lambda: self.job_since(method, spec, path))
        option("raw", lambda: self.job_raw(spec, path))
        option("stale_after", lambda: self.duration(spec, "stale_after", f"{path}.stale_after"))
        option(
            "retention",
            lambda: self.duration(
                spec, "retention", f"{path}.retention", high=defaults.RETENTION_MAX
            ),
        )
        return opts

    def job_since(self, method: str, spec: _Map, path: str) -> float | None:
        if method not in HISTORY_METHODS:
            raise self.error(
                f"{method} keeps no history to start from; since: applies to "
                f"{', '.join(sorted(HISTORY_METHODS))}",
                spec,
                "since",
                path + ".since",
            )
        return self.since(spec, path + ".since")

    def job_raw(self, spec: _Map, path: str) -> bool:
        if not isinstance(spec["raw"], bool):
            raise self.error("must be true or false", spec, "raw", path + ".raw")
        return spec["raw"]

    def check_params(self, method: str, params: _Map, spec: _Map, path: str) -> None:
        """``params`` against what ``method`` takes (:data:`collector.methods.READ_METHODS`): no
        unknown name, no parameter the collector sets itself, values of the right type, one pair
        where the method takes one, and the parameters it needs."""
        known = params_of(method)
        if known is None:
            return
        managed = READ_METHODS[method].managed
        # Each parameter's mistake is a line of its own.
        for name, value in params.items():
            where = f"{path}.params.{name}"
            if name in managed:
                self.errors.append(
                    self.error(f"{managed[name]}; leave it out", params, name, where)
                )
                continue
            param = known.get(name)
            if param is None:
                names = sorted(known)
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; it takes {', '.join(names)}"
                    if names
                    else "; it takes none"
                )
                self.errors.append(
                    self.error(f"{method} has no parameter {show(name)}{hint}", params, name, where)
                )
                continue
            problem = _param_problem(method, param, value)
            if problem:
                self.errors.append(self.error(problem, params, name, where))
        for name in READ_METHODS[method].required:
            if name not in params:
                example = "XBTUSD" if known[name].kind == "pair" else "..."
                raise self.error(
                    f"{method} needs params: {{{name}: {example}}}",
                    spec,
                    "params" if "params" in spec else "method",
                    f"{path}.params",
                )

    def cron(self, spec: _Map, tz: str, path: str) -> str:
        """A 5-field cron that fires within ``CRON_HORIZON`` (``0 0 31 2 *`` never does)."""
        cron = spec["cron"]
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise self.error(
                f"bad cron {show(cron)}: needs 5 fields (minute hour day month "
                "weekday), e.g. '0 * * * *'",
                spec,
                "cron",
                path,
            )
        try:
            trigger = CronTrigger.from_crontab(cron, timezone=tz)
            now = datetime.datetime.now(datetime.UTC)
            fire = trigger.get_next_fire_time(None, now)
        except (ValueError, OverflowError) as exc:
            raise self.error(f"bad cron {show(cron)}: {exc}", spec, "cron", path) from None
        if fire is None or (fire - now).total_seconds() > defaults.CRON_HORIZON:
            raise self.error(
                f"cron {show(cron)} never fires (no such date within four years)",
                spec,
                "cron",
                path,
            )
        return cron

    def account_of(self, job: Job, spec: _Map, path: str, accounts: tuple[Account, ...]) -> Job:
        """``job`` with the account it runs as: the one it names, or the only one there is."""
        names = [a.name for a in accounts]
        named = spec.get("account")
        if job.private and self.accounts_broken:
            return job  # accounts: has its own mistake; the job is not told it again
        if not job.private:
            if named is not None:
                raise self.error(
                    f"{job.method} is public: it needs no account",
                    spec,
                    "account",
                    path + ".account",
                )
            return job
        if named is None:
            if not accounts:
                raise self.error(
                    f"{job.method} is a private method and needs credentials: set kraken.key "
                    f"and kraken.secret, kraken.key_file, or {KEY_ENV} and {SECRET_ENV}",
                    spec,
                    "method",
                    path + ".method",
                )
            if len(accounts) > 1:
                raise self.error(
                    f"{job.method} is private: name its account (one of {', '.join(names)})",
                    spec,
                    "method",
                    path + ".account",
                )
            named = names[0]
        if named not in names:
            close = difflib.get_close_matches(named, names, n=1) if isinstance(named, str) else []
            hint = f"; did you mean '{close[0]}'?" if close else f" (one of {', '.join(names)})"
            raise self.error(f"no account {show(named)}{hint}", spec, "account", path + ".account")
        return dataclasses.replace(job, account=str(named))


def _length(size: int) -> str:
    """How many base64 characters ``size`` bytes are."""
    return f"{4 * ((size + 2) // 3)} characters"


def _decoded_size(text: str) -> int | None:
    try:
        return len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None


def _swapped(key: str, secret: str) -> bool:
    """Whether ``key`` is shaped as Kraken's secrets are and ``secret`` is not: the two swapped.
    A key of any other shape (a test's ``KEY``) is not judged."""
    return (
        _decoded_size(key) == defaults.SECRET_BYTES
        and _decoded_size(secret) != defaults.SECRET_BYTES
    )


def _not_ours(path: Path, exc: BaseException) -> str:
    """Why a key file this process may not read is so, and what to do: in a container, one
    mounted from the host keeps the host user's owner and ``chmod 600``, which the image's user
    (uid 10001) is not."""
    if not isinstance(exc, PermissionError) or not hasattr(os, "geteuid"):
        return ""
    try:
        info = path.stat()
    except OSError:
        return ""
    me = os.geteuid()
    if info.st_uid == me:
        return ""
    return (
        f"; it belongs to uid {info.st_uid} (mode {info.st_mode & 0o777:04o}) and collector runs "
        f"as uid {me}: give it to uid {me} (chown {me} {path.name}; on the host for a Docker "
        "mount) or pass the key as ${KRAKEN_API_KEY} and ${KRAKEN_API_SECRET}"
    )


def _param_problem(method: str, param: Param, value: Any) -> str | None:
    """What is wrong with ``value`` for ``param`` of ``method``, or None."""
    if param.kind == "pair":
        if isinstance(value, list) or (isinstance(value, str) and "," in value):
            return f"{method} takes one pair, not {show(value)}: give each pair a job of its own"
        if not isinstance(value, str) or not value.strip():
            return f"must be one pair, e.g. XBTUSD, not {show(value)}"
        return None
    if param.kind in ("pairs", "list"):
        if value == "":  # as if not given: all of them
            return None
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int) and str(v).strip() for v in values):
            return f"must be a name or a list of names, not {show(value)}"
        return None
    if param.kind == "integer":
        number: Any = value
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        unit = " (minutes)" if method == "OHLC" else ""
        if isinstance(number, bool) or not isinstance(number, int):
            if param.choices:
                allowed = ", ".join(map(str, param.choices))
                return f"must be one of {allowed}{unit}, not {show(value)}"
            return f"must be a whole number, not {show(value)}"
        if param.choices and number not in param.choices:
            return (
                f"{show(value)} is not one Kraken takes: use one of "
                f"{', '.join(map(str, param.choices))}{unit}"
            )
        if (param.low is not None and number < param.low) or (
            param.high is not None and number > param.high
        ):
            top = f"to {param.high}" if param.high is not None else "or more"
            return f"must be from {param.low} {top}, not {show(value)}"
        return None
    if param.kind == "boolean":
        if not isinstance(value, bool) and value not in ("true", "false"):
            return f"must be true or false, not {show(value)}"
        return None
    if param.kind == "time":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"must be unix seconds or an id, not {show(value)}"
        return None
    if isinstance(value, list | bool) or value is None:
        return f"must be a single value, not {show(value)}"
    if param.choices and value not in param.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in param.choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"must be one of {', '.join(map(str, param.choices))}, not {show(value)}{hint}"
    return None


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


#: The drivers each database is used through (psycopg 3 is the ``postgres`` extra).
_DRIVERS = {
    "sqlite": ("sqlite", "sqlite+pysqlite"),
    "postgresql": ("postgresql", "postgresql+psycopg", "postgres"),
    "postgres": ("postgres",),
}


def database_problem(url: URL) -> str | None:
    """What is wrong with a database URL that parsed, or None."""
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        return f"unsupported database {backend!r}: use sqlite or postgresql"
    if url.drivername not in _DRIVERS[backend]:
        if backend == "sqlite":
            return f"use sqlite:///FILE, not {url.drivername}://"
        return (
            f"collector talks to PostgreSQL through psycopg 3: write postgresql+psycopg:// "
            f"(or postgresql://), not {url.drivername}://"
        )
    if backend == "sqlite" and (url.host or url.port or url.username or url.password):
        # sqlite://m.db puts the file where a host goes; SQLAlchemy refuses it only when connecting.
        name = url.host or ""
        return (
            f"{url.drivername}://{name} names a host, not a file: a file beside the job file is "
            f"sqlite:///{name or 'collector.db'} (three slashes), an absolute path "
            "sqlite:////var/lib/collector/collector.db (four)"
        )
    return None


def _sqlite_under(url: URL, folder: Path) -> URL:
    """A relative SQLite file as a path under ``folder``; other URLs as they are."""
    name = url.database
    if (
        url.get_backend_name() != "sqlite"
        or name in (None, "", ":memory:")
        or name.startswith("file:")  # a SQLite URI (?uri=true): its own rules
        or os.path.isabs(name)
    ):
        return url
    return url.set(database=str(folder / name))


def with_driver(url: URL) -> str:
    """``postgresql://`` (and ``postgres://``, as hosting providers write it) means psycopg 3
    here (the ``postgres`` extra), not psycopg2."""
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)
