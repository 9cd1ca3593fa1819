"""``collector status``: what each job has collected, from the database alone (no exchange call).

Per job: its last run and last success, failures in the last 24 hours by status, its own rows
in its dataset (its pair and interval, its account, its snapshots) and the newest of them, its
cursor (and how far a history being paged has got), its recorded gaps; per account, whether its
ledger is verified and up to when (breaks do not change the exit code: they need a person, not a
restart; ``collector_ledger_breaks`` alerts on them); and how many runs wait in the spool and
the oldest ``runs`` row kept. Healthy by the same rule as ``/healthz`` (:mod:`collector.health`):
a job is stale after ``stale_after`` without a success. A job that never succeeded is measured
from its first stored run or, when it has none, from the job file's last change (the file says it
should have run since then), so a job just added is not stale before it had its time. Per stream
(``streams:``), a line from its batch runs and connections (:mod:`.streamstatus`), stale by the
same rule as ``/healthz``: no data for its ``stale_after``.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, String, func, inspect, literal, select
from sqlalchemy import text as sql
from sqlalchemy.dialects import postgresql

from .datasets import by_method
from .dburl import sqlite_file_missing
from .health import Paging, interval, stale_after, verdict
from .jobfile import Config, Job, format_duration
from .keystate import KeyBudget
from .pairs import named, same
from .ratelimit import sent_level
from .schema import cursors, ledger_verification, runs
from .store import Store
from .streamstatus import collect as stream_lines
from .verify import status as verification

#: Runs read by id in one statement (SQLite's parameters stop at 32,766).
RUNS_A_STATEMENT = 5_000


def exists(config: Config) -> bool:
    """False for a SQLite file that is not there yet (reading must not create it)."""
    return not sqlite_file_missing(config.database)


def collect(
    config: Config,
    store: Store | None,
    now: datetime,
    spool_waiting: int | None,
    detailed: Callable[[Job], bool] | None = None,
) -> dict[str, Any]:
    """The status of ``config``'s jobs in ``store`` (None: there is no database yet).

    Every job's state and runs come from a few statements for all jobs, not a few a job (5,000
    jobs: 4 statements, where 30,000 took seconds); its rows and cursor from a statement a
    dataset (:func:`_details`), only for the jobs ``detailed`` says (None: all; the dashboard's
    page of jobs)."""
    mtime = datetime.fromtimestamp(os.path.getmtime(config.path), UTC)
    jobs: list[dict[str, Any]] = []
    ledgers: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []
    oldest = None
    if store is not None:
        with store.engine.connect() as conn:
            version = conn.dialect.server_version_info or ()
            if conn.dialect.name == "postgresql" and version >= (11,):  # JIT from 11 on
                # Thousands of jobs' seeks are estimated past jit_above_cost: compiling them took
                # 200 ms of a 300 ms statement. For this transaction only.
                conn.exec_driver_sql("SET LOCAL jit = off")
            oldest = conn.execute(select(runs.c.started_at).order_by(runs.c.id).limit(1)).scalar()
            streams = stream_lines(conn, config.streams, now, mtime)
            known = _runs_of(conn, store, [job.name for job in config.jobs], now)
            methods = by_method(store.datasets.values())
            details = _details(
                conn,
                store,
                [
                    (job, methods[job.method].name)
                    for job in config.jobs
                    if job.method in methods and (detailed is None or detailed(job))
                ],
            )
            jobs = [
                _job(job, now, mtime, known, methods.get(job.method), details.get(job.name))
                for job in config.jobs
            ]
            if inspect(conn).has_table(ledger_verification.name):  # before 0007: not yet
                ledgers = verification(conn)
    else:
        jobs = [_job(job, now, mtime, _Known(), None, None) for job in config.jobs]
        streams = stream_lines(None, config.streams, now, mtime)
    problems = [
        f"job {j['name']}: {j['progress'] + '; ' if j['progress'] else ''}"
        f"no success for {j['stale_for']} "
        f"(stale after {_ago(timedelta(seconds=j['stale_after_seconds']))})"
        for j in jobs
        if j["state"] == "stale"
    ] + [s["problem"] for s in streams if s["state"] == "stale"]
    accounts = _accounts(config, store, now)
    return {
        "healthy": not problems,
        "problems": problems,
        "jobs": jobs,
        "streams": streams,
        "ledgers": ledgers,
        "accounts": accounts,
        "spool_waiting": spool_waiting or 0,
        "oldest_run": _iso(oldest),
        "database": config.database_for_display(),
        "now": _iso(now),
    }


@dataclass
class _Known:
    """What the runs and gaps say of each job, read for all jobs at once (:func:`_runs_of`):
    its last run, when its last success finished and (for a job without one) when its first run
    started, its failures in the last day by status, and its gaps (count, newest end)."""

    last: dict[str, Any] = field(default_factory=dict)
    success: dict[str, datetime] = field(default_factory=dict)
    first: dict[str, datetime] = field(default_factory=dict)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    gaps: dict[str, tuple[int, Any]] | None = None


_RUN_COLUMNS = ("id", "started_at", "finished_at", "status", "error", "pages", "new_rows")


def _runs_of(conn: Any, store: Store | None, names: Sequence[str], now: datetime) -> _Known:
    """Each job's runs (as :class:`_Known`) in a few statements for all jobs, each job's a seek
    by the index (job, started_at) in a correlated subquery over the names (one parameter): its
    last run (then read by id); for the jobs whose last run failed (mostly none: no statement),
    their last success and first run; its failures of the last day."""
    known = _Known()
    day = now - timedelta(days=1)
    unique = list(dict.fromkeys(names))
    if not unique:
        return known
    asked = _listed(conn, unique, String, "asked")

    def one(of: Any, column: str, *where: Any, newest: bool = True) -> Any:
        """The column of the job ``of.c.value``'s newest (or first) run, as ``where`` says."""
        seek = runs.alias("seek")
        order = seek.c.started_at.desc() if newest else seek.c.started_at
        return (
            select(seek.c[column])
            .where(seek.c.job == of.c.value, *(w(seek) for w in where))
            .order_by(order)
            .limit(1)
            .correlate(of)
            .scalar_subquery()
        )

    # The status through a no-op (it is never NULL): a seek by (job, started_at) per job, where
    # PostgreSQL, not knowing the job when it plans, would AND in ix_runs_status's every ok run
    # for each job (5,000 jobs: 5 s instead of 20 ms).
    def ok(seek: Any) -> Any:
        return func.coalesce(seek.c.status, "") == "ok"

    found = conn.execute(select(asked.c.value, one(asked, "id"))).all()
    # The last runs by id, the ids one parameter too (10,000 placeholders cost more than the rows
    # they read, 80 ms on PostgreSQL; joined on the seek instead, PostgreSQL hashed every run).
    wanted = _listed(conn, sorted({i for _, i in found if i is not None}), BigInteger, "wanted")
    rows = {
        r.id: r
        for r in conn.execute(
            select(*(runs.c[c] for c in _RUN_COLUMNS)).where(runs.c.id.in_(select(wanted.c.value)))
        )
    }
    for name, last in found:
        if last is not None:
            run = known.last[name] = rows[last]
            if run.status == "ok":  # its last run is its last success
                known.success[name] = run.finished_at
    # The others' last success, and their first run (measured from it if there is none).
    unsure = [name for name in known.last if name not in known.success]
    if unsure:
        them = _listed(conn, unsure, String, "unsure")
        first_ = one(them, "started_at", newest=False)
        for name, success, first in conn.execute(
            select(them.c.value, one(them, "finished_at", ok), first_)
        ):
            known.first[name] = first
            if success is not None:
                known.success[name] = success
    failed = conn.execute(
        select(runs.c.job, runs.c.status, func.count())
        .where(
            runs.c.job.in_(select(asked.c.value)),
            runs.c.started_at > day,
            runs.c.status != "ok",
        )
        .group_by(runs.c.job, runs.c.status)
    )
    for name, status, count in failed:
        known.failures.setdefault(name, {})[status] = count
    gaps = store.datasets["gaps"].table if store and "gaps" in store.datasets else None
    if gaps is not None:
        known.gaps = {
            name: (count, end)
            for name, count, end in conn.execute(
                select(gaps.c.job, func.count(), func.max(gaps.c.end))
                .where(gaps.c.job.in_(select(asked.c.value)))
                .group_by(gaps.c.job)
            )
        }
    return known


def _listed(conn: Any, values: Sequence[Any], kind: Any, name: str = "listed") -> Any:
    """``values`` as a table of one column, ``value``, from one parameter: a JSON array on SQLite
    (``json_each``), an array on PostgreSQL (``unnest``); SQLite's parameters stop at 32,766."""
    if conn.dialect.name == "sqlite":
        return func.json_each(json.dumps(list(values))).table_valued("value").alias(name)
    array = literal(list(values), postgresql.ARRAY(kind))
    return func.unnest(array).table_valued("value").render_derived(name=name)


def _job(
    job: Job,
    now: datetime,
    mtime: datetime,
    known: _Known,
    dataset: Any,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    """One job's report: its runs from ``known``, its rows and cursor from ``details`` (None:
    not counted), ``dataset`` the one its method fills (None: none)."""
    paging: Paging | None = None
    info: dict[str, Any] = {"dataset": dataset.name if dataset else None}
    last = known.last.get(job.name)
    success = known.success.get(job.name)
    first = known.first.get(job.name)
    failures = dict(known.failures.get(job.name, {}))
    # A paging run's row is `partial` after each page until its last: the latest run, partial
    # without an error (one cut short says why), is still paging, not a failure.
    if last is not None and last.status == "partial" and last.error is None:
        paging = Paging(str(last.id), last.pages, last.new_rows, last.finished_at)
        if last.started_at > now - timedelta(days=1):
            failures["partial"] -= 1
            if not failures["partial"]:
                del failures["partial"]
    if details is not None:
        info.update(details)
    if known.gaps is not None:
        count, end = known.gaps.get(job.name, (0, None))
        info.update(gaps=count, last_gap_end=_iso(end))
    reference = success or first or mtime
    state = verdict(job, reference, paging, success is not None, now)
    stale = state == "stale"
    return {
        "name": job.name,
        "method": job.method,
        "account": job.account,
        "state": state,
        # A run still paging (a first backfill): how far it got, and when it stored a page.
        "progress": paging.progress(success is not None, now) if paging else None,
        "last_run": _iso(last.started_at) if last else None,
        "last_status": last.status if last else None,
        "last_success": _iso(success),
        "failures_24h": failures,
        "interval_seconds": _finite(interval(job)),
        "stale_after_seconds": _finite(stale_after(job)),
        "stale_for": _ago(now - reference) if stale else None,
        "rows": None,
        "newest": None,
        "cursor": None,
        "gaps": 0,
        "last_gap_end": None,
        **info,
    }


def _details(conn: Any, store: Store, jobs: Sequence[tuple[Job, str]]) -> dict[str, dict[str, Any]]:
    """Each job's own rows in its dataset (``jobs``: each with its dataset's name), counted with
    the newest entry: balances and ticker, this job's snapshots; the private histories, its
    account's entries; trades, candles and spreads, its pair's (and its interval's); and the
    job's cursor, with how far a history window being paged has got.

    A statement a dataset and kind, grouped by job, account or pair (a page of 100 Ticker jobs
    was 100 joins of ticker and runs, 1.8 s on PostgreSQL; grouped, one scan)."""
    out: dict[str, dict[str, Any]] = {}
    # (dataset, kind) -> {job: what it is counted by}
    asked: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for job, name in jobs:
        table = store.datasets[name].table
        if name == "balances":
            asked[(name, "job")][job.name] = job.name
        elif "account" in table.c and job.account:  # the private histories: this account's rows
            asked[(name, "account")][job.name] = job.account
        elif name == "ticker":
            asked[(name, "run")][job.name] = job.name
        elif "pair" in table.c and isinstance(job.params.get("pair"), str):
            interval = int(job.params.get("interval") or 1) if "interval" in table.c else None
            asked[(name, "pair")][job.name] = (job.params["pair"], interval)
        else:
            asked[(name, "all")][job.name] = None
    for (name, kind), keys in asked.items():
        found = _counted(conn, store.datasets[name], kind, keys)
        column = store.datasets[name].time_column
        for job_name, (count, newest) in found.items():
            out[job_name] = {"rows": count, "newest": _iso(newest) if column else None}
    them = _listed(conn, sorted({j.name for j, n in jobs if store.datasets[n].incremental}), String)
    values = {
        (job, dataset): value
        for job, dataset, value in conn.execute(
            select(cursors.c.job, cursors.c.dataset, cursors.c.value).where(
                cursors.c.job.in_(select(them.c.value))
            )
        )
    }
    for job, name in jobs:
        dataset = store.datasets[name]
        if not dataset.incremental:
            continue
        value = values.get((job.name, name))
        info = out[job.name]
        info["cursor"] = _iso(dataset.cursor_time(value))
        window = value.get("window") if isinstance(value, dict) else None
        info["paging"] = window is not None
        if isinstance(window, dict) and isinstance(window.get("count"), int):
            info["paged"] = {"entries": window.get("ofs", 0), "of": window["count"]}
    return out


def _counted(
    conn: Any, dataset: Any, kind: str, keys: dict[str, Any]
) -> dict[str, tuple[int, Any]]:
    """Each job's ``(rows, newest)`` in ``dataset``, counted by ``kind`` (:func:`_details`):
    one grouped statement (a statement a chunk of keys)."""
    table, column = dataset.table, dataset.time_column
    newest = func.max(table.c[column]) if column else func.count()
    if kind == "all":
        found = conn.execute(select(func.count(), newest)).one()
        return {job: (found[0], found[1]) for job in keys}
    if kind == "pair":
        collected = pairs_in(conn, table)
        spelt = named([pair for pair, _ in keys.values()], collected)
        mine = {job: [p for p in spelt if same(pair, p)] for job, (pair, _) in keys.items()}
        by: Any = table.c.pair
        wanted: list[Any] = sorted({p for found in mine.values() for p in found})
    else:
        by = runs.c.job if kind == "run" else table.c[kind]
        wanted = sorted(set(keys.values()))
    extra = [table.c.interval] if kind == "pair" and "interval" in table.c else []
    counts: dict[Any, tuple[int, Any]] = {}
    for start in range(0, len(wanted), RUNS_A_STATEMENT):
        query = select(by, *extra, func.count(), newest).where(
            by.in_(wanted[start : start + RUNS_A_STATEMENT])
        )
        if kind == "run":
            query = query.select_from(table.join(runs, runs.c.id == table.c.run_id))
        for *group, count, last in conn.execute(query.group_by(by, *extra)):
            counts[tuple(group) if extra else group[0]] = (count, last)
    if kind != "pair":
        return {job: counts.get(key, (0, None)) for job, key in keys.items()}
    out = {}
    for job, (_, minutes) in keys.items():
        parts = [counts.get((p, minutes) if extra else p) for p in mine[job]]
        seen = [part for part in parts if part is not None]
        lasts = [last for _, last in seen if last is not None]
        out[job] = (sum(count for count, _ in seen), max(lasts) if lasts else None)
    return out


def _accounts(config: Config, store: Store | None, now: datetime) -> list[dict[str, Any]]:
    """Each account's key: its rate counter as the last process left it (the key's budget file
    in the state folder), and Kraken's rate-limit refusals in the last hour (from ``runs``)."""
    out = []
    since = now - timedelta(hours=1)
    for account in config.accounts:
        budget = KeyBudget(config.state_dir, account.key, account.nonce_unit).read()
        counter = None
        if "level" in budget:
            ago = max(0.0, now.timestamp() - float(budget["at"]))
            level = max(0.0, float(budget["level"]) - ago * account.tier.decay)
            level = sent_level(level, int(budget.get("refusals", 0)), account.tier.max)
            counter = round(level, 1)
        refused, last = 0, None
        if store is not None:
            with store.engine.connect() as conn:
                refused, last = conn.execute(
                    select(func.count(), func.max(runs.c.started_at)).where(
                        runs.c.account == account.name,
                        runs.c.started_at > since,
                        runs.c.error.like("%Rate limit exceeded%"),
                    )
                ).one()
        out.append(
            {
                "name": account.name,
                "counter": counter,
                "counter_max": account.tier.max,
                "rate_limit_refusals_1h": refused,
                "last_refusal": _iso(last),
            }
        )
    return out


def pairs_in(conn: Any, table: Any, most: int = 10_000) -> list[str]:
    """The distinct pairs of a table keyed by pair first: one index seek each, not a scan, all
    in one recursive statement (a thousand pairs were a thousand statements)."""
    name = table.name
    assert name.isidentifier()  # a table of ours, not text from outside
    query = sql(
        f"WITH RECURSIVE seen(pair) AS (SELECT min(pair) FROM {name} UNION ALL "
        f"SELECT (SELECT min(pair) FROM {name} WHERE pair > seen.pair) FROM seen "
        "WHERE seen.pair IS NOT NULL) "
        "SELECT pair FROM seen WHERE pair IS NOT NULL LIMIT :most"
    )
    return list(conn.execute(query, {"most": most}).scalars())


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def _ago(delta: timedelta) -> str:
    return format_duration(timedelta(seconds=int(delta.total_seconds())))
