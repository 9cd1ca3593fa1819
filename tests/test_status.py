"""`collector status` on both databases: what each job collected, read from the database alone,
and an exit code by the same staleness rule as /healthz."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from collector.cli import main
from collector.errors import Status
from collector.jobfile import load
from collector.records import RunRecord
from collector.service import Service
from collector.store import Store

from .test_service import job_file

JOBS = """
t: {method: Ticker, params: {pair: XBTUSD}, every: 1h}
trades: {method: Trades, params: {pair: XBTUSD}, every: 1h, since: 0}
b: {method: Balance, every: 1h}
"""


def status(path: Path, *args: str):
    return CliRunner().invoke(
        main, ["status", *args, str(path)], env={"COLLECTOR_DATABASE_URL": ""}
    )


def test_status_shows_each_job_and_is_healthy(tmp_path, fake, keypair, database_url) -> None:
    path = job_file(tmp_path, fake, keypair, database_url, JOBS)
    service = Service(load(path), workers=2)
    assert service.run_once()
    fake.inject("kraken_error", method="Ticker", error="EGeneral:Invalid arguments")
    service.runner.run(service.config.jobs[0])  # one failure, after the success
    service.writer.flush()
    gap = datetime(2024, 1, 1, tzinfo=UTC)
    service.stop()
    store = Store.from_url(database_url)
    now = datetime.now(UTC)
    store.write(
        [
            RunRecord(
                job="trades",
                method="Trades",
                params={},
                scheduled_at=now,
                started_at=now,
                finished_at=now,
                rows={
                    "gaps": [
                        {
                            "job": "trades",
                            "dataset": "trades",
                            "pair": "XXBTZUSD",
                            "start": gap,
                            "end": gap + timedelta(hours=1),
                            "reason": "test",
                        }
                    ]
                },
            )
        ]
    )
    store.dispose()

    result = status(path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    jobs = {j["name"]: j for j in report["jobs"]}
    assert report["healthy"] is True and report["problems"] == []
    assert report["spool_waiting"] == 0
    assert report["oldest_run"] is not None
    t = jobs["t"]
    assert t["last_status"] == "kraken_error" and t["last_success"] is not None
    assert t["failures_24h"] == {"kraken_error": 1}
    assert t["dataset"] == "ticker" and t["rows"] == 1 and t["state"] == "ok"
    trades = jobs["trades"]
    assert trades["rows"] == len(fake.public_trades("XXBTZUSD")) > 0
    assert trades["cursor"] is not None and trades["newest"] is not None
    assert trades["cursor"][:16] == trades["newest"][:16]  # the cursor is the last trade's time
    assert trades["gaps"] == 1 and trades["last_gap_end"].startswith("2024-01-01T01:00:00")
    assert jobs["b"]["dataset"] == "balances" and jobs["b"]["rows"] > 0
    assert jobs["b"]["cursor"] is None  # balances keep no cursor

    table = status(path)
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "job",
        "method",
        "account",
        "last",
        "run",
        "status",
        "last",
        "success",
        "failures",
        "24h",
        "rows",
        "newest",
        "cursor",
        "gaps",
        "state",
    ]
    assert lines[1].startswith("t ") and "kraken_error 1" in lines[1] and lines[1].endswith("ok")
    assert "spool: empty" in lines and lines[-1] == "healthy"
    assert any(line.startswith("oldest run kept: 20") for line in lines)
    assert keypair[1] not in table.output + result.output


def test_status_exit_1_when_a_job_is_stale(tmp_path, fake, keypair, database_url) -> None:
    path = job_file(
        tmp_path,
        fake,
        keypair,
        database_url,
        "old: {method: Time, every: 1h}\nnever: {method: Time, every: 1h}\n"
        "fresh: {method: Time, every: 1h}\n",
    )
    store = Store.from_url(database_url)
    store.upgrade()
    now = datetime.now(UTC)

    def ok(job: str, hours: float) -> RunRecord:
        at = now - timedelta(hours=hours)
        return RunRecord(
            job=job, method="Time", params={}, scheduled_at=at, started_at=at, finished_at=at
        )

    store.write([ok("old", 5), ok("fresh", 1)])  # 5 h > 3 intervals of 1 h; 1 h is fine
    store.dispose()
    result = status(path)
    assert result.exit_code == 1, result.output
    assert "UNHEALTHY: job old: no success for 5h (stale after 3h)" in result.output
    assert "job never" not in result.output  # the file just changed: it has had no time yet
    # A file unchanged for a day says `never` should have run by now.
    day_ago = time.time() - 86400
    os.utime(path, (day_ago, day_ago))
    report = json.loads(status(path, "--json").output)
    assert {j["name"]: j["state"] for j in report["jobs"]} == {
        "old": "stale",
        "never": "stale",
        "fresh": "ok",
    }


def test_status_without_a_database_creates_none(tmp_path, fake, keypair) -> None:
    db = tmp_path / "not-yet.db"
    path = job_file(tmp_path, fake, keypair, f"sqlite:///{db}", "t: {method: Time, every: 1h}")
    result = status(path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jobs"][0]["state"] == "waiting"
    assert not db.exists()
    path.write_text("jobs: {t: {method: Time, evry: 1h}}\n")
    assert status(path).exit_code == 2


def test_a_run_still_paging_is_not_a_failure(tmp_path, fake, keypair, database_url) -> None:
    """A paging run's row is `partial` after each page until its last; status and the dashboard
    counted a first backfill still paging as `failures 24h: partial 1`."""
    path = job_file(tmp_path, fake, keypair, database_url, "l: {method: Ledgers, every: 1h}\n")
    store = Store.from_url(database_url)
    store.upgrade()
    now = datetime.now(UTC)

    def run(minutes: int, status: Status, error: str | None = None) -> RunRecord:
        at = now - timedelta(minutes=minutes)
        return RunRecord(
            job="l",
            method="Ledgers",
            params={},
            scheduled_at=at,
            started_at=at,
            finished_at=at,
            status=status,
            error=error,
            pages=1,
            account="default",
        )

    cut_short = "stopped before the last page: stopped while waiting for rate-limit budget"
    store.write([run(30, Status.OK), run(20, Status.PARTIAL, cut_short), run(1, Status.PARTIAL)])
    store.dispose()
    result = status(path, "--json")
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.output)["jobs"]
    assert job["last_status"] == "partial"
    assert job["failures_24h"] == {"partial": 1}  # the run cut short, not the one paging now
    line = status(path).output.splitlines()[1]
    assert line.startswith("l ") and "partial 1 " in line, line
