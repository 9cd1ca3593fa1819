"""A first afternoon's runs, as a user meets them: a first backfill healthy while it stores pages
and stale once it stops (the README's failure query doesn't list it); the README's hourly
balances taken at once, and on SIGUSR1; a long run's skipped times said once. The real fake
exchange, real services and processes, /healthz over HTTP, `collector status` from the database.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from collector.cli import main
from collector.events import RunFinished
from collector.jobfile import Job, load
from collector.ratelimit import RateLimit
from collector.schedule import Schedule
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

from .helpers import running, sigterm, wait_for
from .test_metrics import health
from .test_readme import sql_blocks

#: A page a second (Ledgers costs 2): a backfill of 40 pages lasts longer than `stale_after`.
SLOW = RateLimit(4, 2)
ENV = {"COLLECTOR_DATABASE_URL": ""}


def scalar(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)
    except Exception:
        return 0
    finally:
        engine.dispose()


def status(path: Path) -> tuple[int, str, dict]:
    text_ = CliRunner().invoke(main, ["status", str(path)], env=ENV)
    as_json = CliRunner().invoke(main, ["status", "--json", str(path)], env=ENV)
    return text_.exit_code, text_.output, json.loads(as_json.output)


def test_a_first_backfill_is_healthy_while_it_stores_pages_and_stale_when_they_stop(
    tmp_path, database_url
) -> None:
    """Before: `status` said `UNHEALTHY: job ledger: no success for ...` and /healthz was 503 all
    through a first backfill, and the README's failure query listed the paging run."""
    with FakeKraken(tier=SLOW, history={"ledger": 2000}) as fake:
        key = fake.add_key()
        url = database_url
        path = tmp_path / "b.yaml"
        path.write_text(
            f"database: {url}\n"
            f"kraken:\n  url: {fake.url}\n  key: '{key[0]}'\n  secret: '{key[1]}'\n"
            "  rate_limit: {max: 4, decay: 2}\n"
            "reference: false\nmetrics: {listen: '127.0.0.1:0'}\n"
            "jobs:\n"
            "  ledger: {method: Ledgers, every: 1h, stale_after: 3s, timeout: 30s, deadline: 30s}\n"
        )
        service = Service(load(path))
        finished: list[RunFinished] = []
        service.events.subscribe(RunFinished, finished.append)
        started = time.monotonic()
        service.start()
        try:
            # Longer than stale_after into the backfill, pages still coming.
            wait_for(
                lambda: (
                    time.monotonic() - started > 5
                    and scalar(url, "SELECT count(*) FROM ledger") >= 250
                )
            )
            code, body = health(service)
            assert not finished  # still paging
            assert code == 200, body
            job = body["jobs"]["ledger"]
            assert job["state"] == "backfilling", body
            assert re.fullmatch(
                r"backfilling: [\d,]+ rows so far, last page \d+s ago", job["progress"]
            )
            exit_code, out, report = status(path)
            assert exit_code == 0, out
            assert "UNHEALTHY" not in out and out.rstrip().endswith("healthy"), out
            (row,) = report["jobs"]
            assert row["state"] == "backfilling" and row["failures_24h"] == {}, row
            line = next(x for x in out.splitlines() if x.startswith("job ledger: backfilling: "))
            rows = int(line.split(": ")[2].split()[0].replace(",", ""))
            assert rows >= 250, line
            # The README's own failure query lists no failure: the run is paging, not failed.
            dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
            (failures,) = [s for s in sql_blocks(dialect) if "What failed" in s]
            engine = create_engine(url)
            with engine.connect() as conn:
                assert conn.execute(text(failures)).all() == []
            engine.dispose()
            # Now the exchange stops answering in time: no page is stored, the job is stale.
            fake.inject("slow", method="Ledgers", count=100, delay=20)
            wait_for(lambda: health(service)[0] == 503, timeout=30)
            code, body = health(service)
            assert body["jobs"]["ledger"]["state"] == "stale"
            (problem,) = body["problems"]
            assert re.fullmatch(
                r"job ledger: backfilling: [\d,]+ rows so far, last page \d+s ago; "
                r"no success for \d+s \(stale after 3s\)",
                problem,
            ), problem
            exit_code, out, report = status(path)
            assert exit_code == 1 and report["jobs"][0]["state"] == "stale", out
            assert re.search(
                r"UNHEALTHY: job ledger: backfilling: [\d,]+ rows so far, last page \d+s ago; "
                r"no success for \d+s \(stale after 3s\)",
                out,
            ), out
            fake.clear_faults()
        finally:
            service.stop()


def test_a_cron_job_that_never_succeeded_runs_at_start_and_sigusr1_runs_every_job_now(
    tmp_path, fake, keypair
) -> None:
    """The README's `balances: {cron: "0 * * * *"}` left the dashboard empty for up to an hour,
    and nothing took a snapshot now (before: no run at start; SIGUSR1 ended the process)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "c.yaml"
    path.write_text(
        f"database: {url}\nkraken:\n  url: {fake.url}\n  key: '{keypair[0]}'\n"
        f"  secret: '{keypair[1]}'\nreference: false\n"
        'jobs:\n  balances: {method: Balance, cron: "0 0 1 1 *"}\n'  # next: New Year
    )
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    runs = "SELECT count(*) FROM runs WHERE job = 'balances' AND status = 'ok'"
    snapshots = "SELECT count(DISTINCT run_id) FROM balances"
    with running([sys.executable, "-m", "collector.cli", "run", str(path)], env=env) as proc:
        wait_for(lambda: scalar(url, runs) == 1 or proc.poll() is not None, timeout=30)
        assert scalar(url, snapshots) == 1
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: scalar(url, runs) == 2 or proc.poll() is not None, timeout=30)
        assert proc.poll() is None  # alive, and it took a second snapshot now
        assert scalar(url, snapshots) == 2
        output = sigterm(proc)
    assert proc.returncode == 0, output
    assert "received SIGUSR1: every job runs now" in output
    # Once it has succeeded, a restart leaves it on its clock: no extra run off the hour.
    service = Service(load(path))
    service.start()
    try:
        next_run = service.schedule.next_run("balances")
        assert next_run is not None
        assert next_run.astimezone(UTC) == datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
    finally:
        service.stop()


def test_a_run_still_going_has_its_skipped_times_said_once(caplog) -> None:
    """A budget-limited backfill skipped a time every interval, each a WARNING for minutes: said
    once at INFO, then at DEBUG until the job runs again (then once more)."""
    release = threading.Event()
    calls: list[datetime] = []

    def run(job: Job, scheduled_at: datetime | None = None) -> None:
        calls.append(datetime.now(UTC))
        release.wait(30)

    job = Job(name="long", method="Time", every=timedelta(seconds=0.05))
    schedule = Schedule([job], run, workers=2)
    caplog.set_level(logging.DEBUG, logger="collector.schedule")

    def skipped() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "skipped the run" in r.getMessage()]

    schedule.start()
    try:
        wait_for(lambda: len(skipped()) >= 4)
        release.set()
        wait_for(lambda: len(calls) >= 2)
        release.clear()
        wait_for(lambda: len([r for r in skipped() if r.levelno == logging.INFO]) >= 2)
        levels = [r.levelno for r in skipped()]
    finally:
        release.set()
        schedule.shutdown()
    assert logging.WARNING not in levels
    assert levels[0] == logging.INFO and levels[1:4] == [logging.DEBUG] * 3, levels
    # A second run, a second streak: said once more (at INFO), then quiet again.
    assert levels.count(logging.INFO) == 2, levels


def test_an_open_candle_updated_by_later_runs_is_no_new_row(
    tmp_path, fake, keypair, database_url
) -> None:
    """Each candle is a new row of the run that first stored it, once: the open candle replaced
    by a later run's update is no new row (before: the first run's new_rows grew by one at every
    later run, 720, 721, 722)."""
    path = tmp_path / "o.yaml"
    path.write_text(
        f"database: {database_url}\nkraken: {{url: {fake.url}}}\nreference: false\n"
        "jobs:\n  c: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}\n"
    )
    firsts = []
    for _ in range(3):
        service = Service(load(path))
        try:
            assert service.run_once()
        finally:
            service.stop()
        firsts.append(scalar(database_url, "SELECT new_rows FROM runs ORDER BY id LIMIT 1"))
    assert firsts == [720] * 3
    added = scalar(database_url, "SELECT sum(new_rows) FROM runs")
    assert added == scalar(database_url, "SELECT count(*) FROM ohlc")
    assert scalar(database_url, "SELECT count(*) FROM ohlc WHERE NOT final") == 1  # updated twice
