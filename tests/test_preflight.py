"""Opening the database before a run: ``Store.wait_until_reachable`` waits through the injected
``wait`` (no sleeping here), for what comes back only, and the commands' one-line errors."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError

from collector.store import Store, current_revision


def test_a_database_created_while_waited_for_is_opened_and_migrated(postgres, caplog) -> None:
    """A server up before its database exists (an init script still creating it): each failure
    is logged and waited for with the given delays; once it exists the store is migrated."""
    name = "created_later"
    url = postgres.url(name)
    waited: list[float] = []

    def wait(delay: float) -> bool:
        waited.append(delay)
        if len(waited) == 2:  # the second wait: the database appears meanwhile
            engine = sqlalchemy.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
            engine.dispose()
        return False

    with caplog.at_level(logging.ERROR, logger="collector.store"):
        store = Store.wait_until_reachable(url, wait, delays=[1.5, 3.0, 6.0])
    assert store is not None
    try:
        assert waited == [1.5, 3.0]
        assert current_revision(store.engine) is not None
    finally:
        store.dispose()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith(f"database postgresql+psycopg://postgres@127.0.0.1:{postgres.port}")
    assert f'database "{name}" does not exist' in lines[0]
    assert lines[0].endswith("waiting for it, next try in 2s")


def test_waiting_ends_when_wait_says_stop() -> None:
    port = _closed_port()
    waited: list[float] = []

    def wait(delay: float) -> bool:
        waited.append(delay)
        return len(waited) == 3  # SIGTERM during the third wait

    url = f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing"
    assert Store.wait_until_reachable(url, wait, delays=[1.0, 2.0, 4.0, 8.0]) is None
    assert waited == [1.0, 2.0, 4.0]


def test_without_wait_or_for_what_waiting_cannot_cure_the_error_is_raised(tmp_path) -> None:
    port = _closed_port()
    waited: list[float] = []

    def wait(delay: float) -> bool:
        waited.append(delay)
        return False

    with pytest.raises(OperationalError):
        Store.wait_until_reachable(f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing")
    # A SQLite file whose folder does not exist: waiting would not make it.
    with pytest.raises(OperationalError, match="unable to open database file"):
        Store.wait_until_reachable(f"sqlite:///{tmp_path / 'no' / 'such.db'}", wait)
    assert waited == []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_says_a_cron_job_runs_at_start_until_it_first_succeeds() -> None:
    """Before, check showed a cron job's next time only, while the service runs one that never
    succeeded at start (a new user saw 'next 23:00' and a run at once)."""
    from datetime import UTC, datetime

    from collector.jobfile import Job
    from collector.preflight import next_run

    now = datetime(2026, 12, 7, 22, 50, tzinfo=UTC)
    hourly = Job(name="b", method="Balance", cron="0 * * * *")
    assert next_run(hourly, now) == "2026-12-07T23:00:00+00:00 (at start until it first succeeds)"
