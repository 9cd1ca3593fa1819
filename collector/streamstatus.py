"""Each stream's line in ``collector status`` and on the dashboard, from the database alone.

A stream's recorder writes its data in batch runs (a ``runs`` row per batch: job ``stream:NAME``,
method ``ws:CHANNEL``, ``pages`` the messages it holds) and a ``stream_connections`` row per
connection (:mod:`collector.datasets.connections`); REST's fills of its holes and what they could
not fill are ``gaps`` rows under the same job. From those, per configured stream: its last batch,
its last data (the newest batch holding a message), its connection (the open one, else the last),
the messages of its connections open in the last day (each connection's row counts them), its
reconnects and gaps in the last day, and its state by :func:`health.stream_verdict`.

The database cannot tell a reconnect from a restart: the grace of a stream without data yet runs
from the first connection opened since its last data (a stream whose connection keeps failing is
stale after the grace, not starting for ever); with no connection either, from the job file's last
change, as a job that never ran is measured. A connection whose row says a clean stop
(:data:`CLEAN_STOPS`) is not a reconnect. A few indexed statements a stream (at most
``STREAMS_MAX`` streams; a job file has a handful).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, inspect, select

from .datasets.connections import table as connections
from .datasets.gaps import table as gaps
from .events import STREAM_STOPPED
from .health import pairs_shown, stream_problem, stream_verdict
from .jobfile import Stream
from .schema import runs

#: A connection's ``reason`` when it closed because the collector stopped: the event's
#: (``StreamDisconnected.reason``), and the close frame's text the connection sends.
CLEAN_STOPS = frozenset({STREAM_STOPPED})
#: The length a connection's reason is cut to on a status line.
REASON_SHOWN = 80


def job_of(stream: str) -> str:
    """The ``runs.job`` (and ``gaps.job``) of a stream's batches: ``stream:NAME``."""
    return f"stream:{stream}"


def collect(
    conn: Any, streams: Sequence[Stream], now: datetime, mtime: datetime
) -> list[dict[str, Any]]:
    """Each of ``streams``' state from the database ``conn`` (None: there is none yet), in the
    job file's order; ``mtime`` is when the job file last changed."""
    if conn is None:
        return [_line(stream, now, mtime) for stream in streams]
    tables = set(inspect(conn).get_table_names())
    return [_line(stream, now, mtime, conn, tables) for stream in streams]


def _line(
    stream: Stream,
    now: datetime,
    mtime: datetime,
    conn: Any = None,
    tables: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    day = now - timedelta(days=1)
    job = job_of(stream.name)
    batch = data = None
    messages = reconnects = gap_count = 0
    connection = None
    restarted = None  # the first connection opened since the last data
    if conn is not None:
        batches = runs.c.job == job, runs.c.method.like("ws:%")
        newest = runs.c.started_at.desc()
        columns = (runs.c.started_at, runs.c.finished_at, runs.c.status, runs.c.pages)
        batch = conn.execute(select(*columns).where(*batches).order_by(newest).limit(1)).first()
        data = conn.execute(
            select(*columns).where(*batches, runs.c.pages > 0).order_by(newest).limit(1)
        ).first()
        if connections.name in tables:
            mine = connections.c.stream == stream.name
            by_opening = connections.c.opened_at.desc()
            connection = (
                conn.execute(
                    select(connections)
                    .where(mine, connections.c.closed_at.is_(None))
                    .order_by(by_opening)
                    .limit(1)
                ).first()
                or conn.execute(
                    select(connections).where(mine).order_by(by_opening).limit(1)
                ).first()
            )
            after = [mine] if data is None else [mine, connections.c.opened_at > data.finished_at]
            restarted = conn.execute(
                select(func.min(connections.c.opened_at)).where(*after)
            ).scalar()
            # Each connection's row counts its messages: summing the last day's batch runs
            # instead read ~86,000 rows a stream (a batch a second), 0.1 s each on SQLite.
            recent = connections.c.closed_at.is_(None) | (connections.c.closed_at > day)
            messages = (
                conn.execute(select(func.sum(connections.c.messages)).where(mine, recent)).scalar()
                or 0
            )
            lost = connections.c.reason.is_(None) | connections.c.reason.not_in(sorted(CLEAN_STOPS))
            reconnects = conn.execute(
                select(func.count()).where(mine, connections.c.closed_at > day, lost)
            ).scalar()
        if gaps.name in tables:
            gap_count = conn.execute(
                select(func.count()).where(gaps.c.job == job, gaps.c.end > day)
            ).scalar()
    last_data = data.finished_at if data is not None else None
    since = restarted or last_data or mtime
    state = stream_verdict(stream, last_data, since, now)
    return {
        "name": stream.name,
        "channel": stream.channel,
        "pairs": pairs_shown(stream),
        "state": state,
        "problem": stream_problem(stream, last_data, since, now) if state == "stale" else None,
        "last_batch": _iso(batch.finished_at) if batch is not None else None,
        "last_status": batch.status if batch is not None else None,
        "last_data": _iso(last_data),
        "connection": _connection(connection),
        "messages": int(messages),
        "reconnects_24h": int(reconnects),
        "gaps_24h": int(gap_count),
        "stale_after_seconds": stream.stale_after,
    }


def _connection(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "uid": row.uid,
        "url": row.url,
        "opened_at": _iso(row.opened_at),
        "closed_at": _iso(row.closed_at),
        "reason": row.reason,
        "messages": row.messages,
    }


def connection_text(line: dict[str, Any]) -> str:
    """``open since 2026-12-07 12:00:00, 1,234 messages``, ``closed 2026-12-07 12:00:00: why``,
    or ``-``."""
    c = line["connection"]
    if c is None:
        return "-"
    if c["closed_at"] is None:
        return f"open since {_short(c['opened_at'])}, {c['messages']:,} messages"
    reason = (c["reason"] or "no reason recorded")[:REASON_SHOWN]
    return f"closed {_short(c['closed_at'])}: {reason}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value is not None else None


def _short(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"
