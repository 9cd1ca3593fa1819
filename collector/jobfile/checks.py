"""The jobs: each job's method and its parameters through the method table
(:data:`collector.methods.READ_METHODS`), its schedule (``every``, or a ``cron`` that fires), its
options, ``since``, and the account it runs as."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import defaults
from ..defaults import KEY_ENV, SECRET_ENV
from ..methods import (
    PRIVATE_READ_METHODS,
    PUBLIC_METHODS,
    READ_METHODS,
    STATE_CHANGING_METHODS,
    Param,
    params_of,
)
from .model import RESERVED_PARAMS, Account, Job, KrakenSettings
from .report import MISSING, Base
from .source import Map, show

JITTER = "jobs.NAME.jitter"


class JobChecks(Base):
    """The ``jobs:`` section (a part of the builder)."""

    def jobs(
        self, raw: Map, kraken: KrakenSettings, accounts: tuple[Account, ...]
    ) -> tuple[Job, ...]:
        """Every job; one with a mistake is left out (and the mistake noted), the others checked."""
        jobs_map = raw.get("jobs")
        if "jobs" not in raw and (raw.line, "jobs") in self.misspelt:
            return ()
        if "jobs" not in raw and "streams" in raw:
            return ()  # a file that only records streams
        if not isinstance(jobs_map, Map) or not jobs_map:
            self.errors.append(
                self.error(
                    "'jobs' must be a mapping from job name to job, with at least one job "
                    "(or streams: without jobs)",
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

    def since(self, spec: Map, path: str) -> float | None:
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

    def job(
        self, name: str, jobs: Map, kraken: KrakenSettings, accounts: tuple[Account, ...]
    ) -> Job | None:
        path = f"jobs.{name}" if name.isprintable() else f"jobs.{name!r}"
        spec = jobs[name]
        self.check_name("job", name, jobs, path)
        if not isinstance(spec, Map):
            raise self.error(
                "a job must be a mapping with method and every or cron", jobs, name, path
            )
        self.check_keys(spec, "jobs.NAME", path + ".")
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
        params = spec.get("params") or Map()
        if not isinstance(params, Map):
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
        job = Job(
            name=str(name),
            method=method,
            params=dict(params),
            # A timezone that is not text was reported by schedule(); str() of it could be an
            # alias bomb's billion items (a stand-in is never used: the load raises).
            timezone=tz if isinstance(tz := spec.get("timezone", "UTC"), str) else "UTC",
            line=jobs.lines.get(name, 0),
            **opts,
        )
        return self.account_of(job, spec, path, accounts)

    def schedule(self, name: str, jobs: Map, path: str) -> dict[str, Any]:
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
            seconds = self.declared(spec, "every", path + ".every", "jobs.NAME.every")
            opts["every"] = timedelta(seconds=seconds)
        else:
            opts["cron"] = self.cron(spec, tz, path + ".cron")
        return opts

    def job_options(
        self, method: str, spec: Map, path: str, kraken: KrakenSettings, schedule: dict[str, Any]
    ) -> dict[str, Any]:
        """A job's options but its schedule; each mistake is noted, and the next option checked."""
        opts: dict[str, Any] = {}

        def option(key: str, build: Callable[[], Any]) -> None:
            if key in spec:
                value = self.attempt(build, MISSING)
                if value is not MISSING:
                    opts[key] = value

        every = schedule.get("every")
        most = (
            defaults.JITTER_MAX
            if every is None
            else min(defaults.JITTER_MAX, every.total_seconds())
        )
        option("jitter", lambda: self.declared(spec, "jitter", path + ".jitter", JITTER, most))
        opts["timeout"] = kraken.timeout
        option(
            "timeout",
            lambda: self.declared(spec, "timeout", path + ".timeout", "jobs.NAME.timeout"),
        )
        # Retries must not run into the next run: by default they end after one interval (or a
        # minute, whichever is shorter).
        if every is not None:
            opts["deadline"] = min(every.total_seconds(), defaults.DEADLINE)
        option(
            "deadline",
            lambda: self.declared(spec, "deadline", path + ".deadline", "jobs.NAME.deadline"),
        )
        if "deadline" in spec:
            opts["deadline_set"] = True
        option("since", lambda: self.job_since(method, spec, path))
        option("raw", lambda: self.job_raw(spec, path))
        option(
            "stale_after",
            lambda: self.declared(
                spec, "stale_after", f"{path}.stale_after", "jobs.NAME.stale_after"
            ),
        )
        option(
            "retention",
            lambda: self.declared(spec, "retention", f"{path}.retention", "jobs.NAME.retention"),
        )
        return opts

    def job_since(self, method: str, spec: Map, path: str) -> float | None:
        # Only a job with ``since:`` asks the datasets (their tables, a fifth of a second).
        from ..datasets import history_methods

        if method not in history_methods():
            raise self.error(
                f"{method} keeps no history to start from; since: applies to "
                f"{', '.join(sorted(history_methods()))}",
                spec,
                "since",
                path + ".since",
            )
        return self.since(spec, path + ".since")

    def job_raw(self, spec: Map, path: str) -> bool:
        return bool(self.declared(spec, "raw", path + ".raw", "jobs.NAME.raw"))

    def check_params(self, method: str, params: Map, spec: Map, path: str) -> None:
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

    def cron(self, spec: Map, tz: str, path: str) -> str:
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
        # APScheduler's cron module only for a job that has a cron.
        from apscheduler.triggers.cron import CronTrigger

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

    def account_of(self, job: Job, spec: Map, path: str, accounts: tuple[Account, ...]) -> Job:
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
