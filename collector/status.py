"""``collector status``: what each job has collected, from the database alone (no exchange call).

Per job: its last run and last success, failures in the last 24 hours by status, its own rows
in its dataset (its pair and interval, its account, its snapshots) and the newest of them, its
cursor (and how far a history being paged has got), its recorded gaps; per account, whether its
ledger is verified and up to when (breaks do not change the exit code: they need a person, not a
restart; ``collector_ledger_breaks`` alerts on them); and how many runs wait in the spool and
the oldest ``runs`` row kept. Healthy by the same rule as ``/healthz`` (:mod:`collector.health`):
a job is stale after ``stale_after`` without a success. A job that never succeeded is measured
from its first stored run or, when it has none, from the job file's last change (the file says it
should have run since then), so a job just added is not stale before it had its time.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from .datasets import for_method
from .health import Paging, interval, stale_after, verdict
from .jobfile import Config, Job, format_duration
from .keystate import KeyBudget
from .pairs import same
from .ratelimit import sent_level
from .sanitize import text
from .schema import cursors, ledger_verification, runs
from .store import Store
from .verify import status as verification


def exists(config: Config) -> bool:
    """False for a SQLite file that is not there yet (reading must not create it)."""
    url = make_url(config.database)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return True
    return os.path.exists(url.database or "")


def collect(
    config: Config, store: Store | None, now: datetime, spool_waiting: int | None
) -> dict[str, Any]:
    """The status of ``config``'s jobs in ``store`` (None: there is no database yet)."""
    mtime = datetime.fromtimestamp(os.path.getmtime(config.path), UTC)
    jobs: list[dict[str, Any]] = []
    ledgers: list[dict[str, Any]] = []
    oldest = None
    if store is not None:
        with store.engine.connect() as conn:
            oldest = conn.execute(select(runs.c.started_at).order_by(runs.c.id).limit(1)).scalar()
            jobs = [_job(conn, store, job, now, mtime) for job in config.jobs]
            if inspect(conn).has_table(ledger_verification.name):  # before 0007: not yet
                ledgers = verification(conn)
    else:
        jobs = [_job(None, None, job, now, mtime) for job in config.jobs]
    problems = [
        f"job {j['name']}: {j['progress'] + '; ' if j['progress'] else ''}"
        f"no success for {j['stale_for']} "
        f"(stale after {_ago(timedelta(seconds=j['stale_after_seconds']))})"
        for j in jobs
        if j["state"] == "stale"
    ]
    accounts = _accounts(config, store, now)
    return {
        "healthy": not problems,
        "problems": problems,
        "jobs": jobs,
        "ledgers": ledgers,
        "accounts": accounts,
        "spool_waiting": spool_waiting or 0,
        "oldest_run": _iso(oldest),
        "database": config.database_for_display(),
        "now": _iso(now),
    }


def _job(
    conn: Any, store: Store | None, job: Job, now: datetime, mtime: datetime
) -> dict[str, Any]:
    mine = runs.c.job == job.name
    last = success = first = None
    paging: Paging | None = None
    failures: dict[str, int] = {}
    dataset = for_method(job.method, store.datasets.values() if store else ())
    info: dict[str, Any] = {"dataset": dataset.name if dataset else None}
    if conn is not None:
        by_time = select(
            runs.c.id,
            runs.c.started_at,
            runs.c.finished_at,
            runs.c.status,
            runs.c.error,
            runs.c.pages,
            runs.c.new_rows,
        ).where(mine)
        last = conn.execute(by_time.order_by(runs.c.started_at.desc()).limit(1)).first()
        success = conn.execute(
            by_time.where(runs.c.status == "ok").order_by(runs.c.started_at.desc()).limit(1)
        ).first()
        first = conn.execute(by_time.order_by(runs.c.started_at).limit(1)).first()
        failed = [runs.c.status != "ok", runs.c.started_at > now - timedelta(days=1)]
        # A paging run's row is `partial` after each page until its last: the latest run,
        # partial without an error (one cut short says why), is still paging, not a failure.
        if last is not None and last.status == "partial" and last.error is None:
            failed.append(runs.c.id != last.id)
            paging = Paging(str(last.id), last.pages, last.new_rows, last.finished_at)
        failures = dict(
            conn.execute(
                select(runs.c.status, func.count()).where(mine, *failed).group_by(runs.c.status)
            ).all()
        )
        if dataset is not None:
            info.update(_dataset(conn, store, job, dataset.name))
        gaps = store.datasets["gaps"].table if store and "gaps" in store.datasets else None
        if gaps is not None:
            count, end = conn.execute(
                select(func.count(), func.max(gaps.c.end)).where(gaps.c.job == job.name)
            ).one()
            info.update(gaps=count, last_gap_end=_iso(end))
    reference = success.finished_at if success else first.started_at if first else mtime
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
        "last_success": _iso(success.finished_at) if success else None,
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


def _dataset(conn: Any, store: Store | None, job: Job, name: str) -> dict[str, Any]:
    """The job's own rows in its dataset, counted with the newest entry: balances and ticker,
    this job's snapshots; the private histories, its account's entries; trades, candles and
    spreads, its pair's (and its interval's); and the job's cursor, with how far a history
    window being paged has got."""
    assert store is not None
    dataset = store.datasets[name]
    table, column = dataset.table, dataset.time_column
    query = select(func.count(), func.max(table.c[column]) if column else func.count())
    if name == "balances":
        query = query.where(table.c.job == job.name)
    elif "account" in table.c and job.account:  # the private histories: this account's rows
        query = query.where(table.c.account == job.account)
    elif name == "ticker":
        query = query.select_from(table.join(runs, runs.c.id == table.c.run_id)).where(
            runs.c.job == job.name
        )
    elif "pair" in table.c and isinstance(job.params.get("pair"), str):
        asked = job.params["pair"]
        query = query.where(table.c.pair.in_([p for p in pairs_in(conn, table) if same(asked, p)]))
        if "interval" in table.c:
            query = query.where(table.c.interval == int(job.params.get("interval") or 1))
    count, newest = conn.execute(query).one()
    out: dict[str, Any] = {"rows": count, "newest": _iso(newest) if column else None}
    if dataset.incremental:
        value = conn.execute(
            select(cursors.c.value).where(cursors.c.job == job.name, cursors.c.dataset == name)
        ).scalar()
        out["cursor"] = _iso(dataset.cursor_time(value))
        window = value.get("window") if isinstance(value, dict) else None
        out["paging"] = window is not None
        if isinstance(window, dict) and isinstance(window.get("count"), int):
            out["paged"] = {"entries": window.get("ofs", 0), "of": window["count"]}
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
    """The distinct pairs of a table keyed by pair first: one index seek each, not a scan."""
    found: list[str] = []
    while len(found) < most:
        query = select(func.min(table.c.pair))
        if found:
            query = query.where(table.c.pair > found[-1])
        pair = conn.execute(query).scalar()
        if pair is None:
            break
        found.append(pair)
    return found


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


def _short(iso: str | None) -> str:
    """``2024-05-01 12:00:00`` (UTC) from an ISO time; ``-`` for none."""
    return iso[:19].replace("T", " ") if iso else "-"


def _paging(job: dict[str, Any]) -> str:
    """`` (paging 600 of 10,000)`` while a history window is being paged."""
    if not job.get("paging"):
        return ""
    paged = job.get("paged")
    return f" (paging {paged['entries']:,} of {paged['of']:,})" if paged else " (paging)"


def render(report: dict[str, Any]) -> str:
    """The report as a table, then the spool, the oldest run kept and the verdict. Each line is
    one line whatever the database holds: every value is escaped (:func:`sanitize.text`)."""
    header = (
        "job",
        "method",
        "account",
        "last run",
        "status",
        "last success",
        "failures 24h",
        "rows",
        "newest",
        "cursor",
        "gaps",
        "state",
    )
    lines: list[tuple[str, ...]] = [header]
    for j in report["jobs"]:
        failures = ", ".join(f"{s} {n}" for s, n in sorted(j["failures_24h"].items())) or "-"
        lines.append(
            (
                j["name"],
                j["method"],
                j.get("account") or "-",
                _short(j["last_run"]),
                j["last_status"] or "-",
                _short(j["last_success"]),
                failures,
                "-" if j["rows"] is None else f"{j['rows']:,}",
                _short(j["newest"]),
                _short(j["cursor"]) + _paging(j),
                str(j["gaps"]),
                j["state"],
            )
        )
    lines = [tuple(text(c) for c in row) for row in lines]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    for j in report["jobs"]:
        if j.get("progress") and j["state"] != "stale":  # a stale one says it in its problem
            out.append(f"job {j['name']}: {j['progress']}")
    for a in report.get("accounts", []):
        counter = "-" if a["counter"] is None else f"{a['counter']:g} of {a['counter_max']:g}"
        line = f"account {a['name']}: key counter {counter}"
        if a["rate_limit_refusals_1h"]:
            line += (
                f"; Kraken refused it for the rate limit {a['rate_limit_refusals_1h']} times in "
                f"the last hour (last {_short(a['last_refusal'])}): is another program using it?"
            )
        out.append(text(line))
    for ledger in report.get("ledgers", []):
        who = f"ledger of account {text(ledger['account'])}"
        size = f"{ledger['assets']} assets, {ledger['entries']:,} entries"
        if ledger["verified"]:
            out.append(f"{who}: verified to {_short(ledger['verified_to'])} ({size})")
        else:
            n = ledger["breaks"]
            out.append(
                f"{who}: UNVERIFIED: {n} break{'s' if n > 1 else ''} recorded up to "
                f"{_short(ledger['verified_to'])} ({size}); collector verify shows them"
            )
    waiting = report["spool_waiting"]
    out.append(f"spool: {f'{waiting:,} runs waiting' if waiting else 'empty'}")
    out.append(f"oldest run kept: {_short(report['oldest_run'])} (times in UTC)")
    if report["healthy"]:
        out.append("healthy")
    else:
        out.extend(f"UNHEALTHY: {text(p)}" for p in report["problems"])
    return "\n".join(out)
