"""Where each job's cursor came from: the exchange (public jobs) or the API key (private ones).

A cursor says where a job's history continues. One written while collecting from the fake
exchange, or from another account's key, means nothing for the real account: continuing from it
would skip that account's history before it, and ignore the job's ``since:``. So each job with a
cursor has a row in ``collector_state`` saying where its data comes from (the exchange's URL for
public jobs, a hash of the API key for private ones: never the key itself), and a job file that
would continue a cursor from somewhere else is refused with one line, at ``collector check`` and
at the start of ``collector run``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .datasets import for_method
from .errors import ConfigError
from .jobfile import Config, Job
from .schema import cursors, state


def source(config: Config, job: Job) -> str:
    """What ``job``'s data comes from, in words that hold no secret."""
    if job.account is None:
        return config.kraken.url
    key = config.account(job.account).key
    return f"API key {hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _name(job: str) -> str:
    # collector_state.name holds 64 characters; a job's name can be longer.
    return "source:" + hashlib.sha256(job.encode()).hexdigest()[:32]


def check(engine: Engine, config: Config, *, record: bool) -> None:
    """Refuse a job whose stored cursor came from another exchange or key; with ``record``, note
    where each job's data comes from now (a database without the tables yet holds no cursor).

    :raises ConfigError: naming the job, where its cursor came from, and what to do
    """
    jobs = [j for j in config.jobs if (d := for_method(j.method)) is not None and d.incremental]
    if not jobs:
        return
    if not inspect(engine).has_table(state.name):
        return
    with engine.begin() as conn:
        names = {_name(j.name): j for j in jobs}
        stored: dict[str, Any] = dict(
            conn.execute(select(state.c.name, state.c.value).where(state.c.name.in_(names))).all()
        )
        with_cursor = set(
            conn.execute(
                select(cursors.c.job).where(cursors.c.job.in_([j.name for j in jobs]))
            ).scalars()
        )
        fresh = []
        for name, job in names.items():
            now = source(config, job)
            before = _read(stored.get(name))
            if before is not None and before != now and job.name in with_cursor:
                raise ConfigError(
                    f"this database's cursor for the job came from {before}, and the job now "
                    f"collects from {now}: continuing would skip that history. Use a new "
                    "database (or give the job a new name) for the new source",
                    file=config.path,
                    line=job.line or None,
                    key=f"jobs.{job.name}",
                )
            if before != now:
                fresh.append({"name": name, "value": json.dumps({"job": job.name, "source": now})})
        if record and fresh:
            insert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
            stmt = insert(state)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[state.c.name], set_={"value": stmt.excluded.value}
                ),
                fresh,
            )


def _read(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        found = json.loads(value).get("source")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None
