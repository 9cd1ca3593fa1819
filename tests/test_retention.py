"""Retention on both databases: old runs go with their balances and ticker rows, in batches;
per-job retention wins over the file's; dataset rows stay unless their own retention says."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from click.testing import CliRunner

from collector.cli import main
from collector.jobfile import load
from collector.records import RunRecord
from collector.retention import Retention
from collector.store import Store

from .test_service import rows

NOW = datetime.now(UTC)


def run(job: str, days: float, *, balances: int = 0, trades: list[int] = ()) -> RunRecord:
    at = NOW - timedelta(days=days)
    record = RunRecord(
        job=job, method="Balance", params={}, scheduled_at=at, started_at=at, finished_at=at
    )
    if balances:
        record.rows["balances"] = [
            {"asset": f"A{i}", "amount": Decimal("1.5"), "job": job, "taken_at": at}
            for i in range(balances)
        ]
    if trades:
        record.rows["trades"] = [
            {
                "pair": "XXBTZUSD",
                "trade_id": t,
                "time": NOW - timedelta(days=t),
                "price": Decimal("100"),
                "volume": Decimal("1"),
                "side": "buy",
                "order_type": "market",
                "misc": "",
            }
            for t in trades
        ]
    return record


def config_file(tmp_path, database_url: str, retention: str):
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database_url}\n{retention}\njobs:\n"
        + textwrap.indent(
            "b: {method: Ticker, every: 1h}\n"
            "short: {method: Ticker, every: 1h, retention: 30d}\n"
            "long: {method: Ticker, every: 1h, retention: 365d}\n",
            "  ",
        )
    )
    return load(path)


def test_prune_once_deletes_old_runs_with_their_balances_and_keeps_the_rest(
    tmp_path, database_url
) -> None:
    store = Store.from_url(database_url)
    store.upgrade()
    old = [run("b", 100 + i, balances=2) for i in range(7)]  # more than a batch
    store.write(
        [
            *old,
            run("b", 10, balances=2),
            run("gone", 120),  # a job no longer in the file: the file's retention applies
            run("short", 40, balances=1),  # its own 30d, though the file keeps 90d
            run("short", 5),
            run("long", 200),  # its own 365d, though the file keeps only 90d
            run("b", 95, trades=[400, 1]),  # dataset rows outlive the run that stored them
        ]
    )
    config = config_file(tmp_path, database_url, "retention: {runs: 90d}")
    deleted = Retention(store, config, batch=3).prune_once()
    assert deleted == {"runs": 7 + 1 + 1 + 1}
    left = rows(database_url, "SELECT job FROM runs ORDER BY started_at")
    assert [j for (j,) in left] == ["long", "b", "short"]  # 200, 10 and 5 days old
    balances = rows(database_url, "SELECT job, count(*) FROM balances GROUP BY job")
    assert balances == [("b", 2)]  # the kept run's snapshot; the 14 + 1 old rows went with theirs
    trades = rows(database_url, "SELECT trade_id FROM trades ORDER BY trade_id")
    assert [t for (t,) in trades] == [1, 400]  # no trades retention: kept
    # A second pass finds nothing more; with trades' own retention, old trades go.
    assert Retention(store, config).prune_once() == {"runs": 0}
    config = config_file(tmp_path, database_url, "retention: {runs: 90d, trades: 30d}")
    assert Retention(store, config, batch=1).prune_once() == {"runs": 0, "trades": 1}
    assert rows(database_url, "SELECT trade_id FROM trades") == [(1,)]
    store.dispose()


def test_without_retention_nothing_is_deleted(tmp_path, database_url) -> None:
    store = Store.from_url(database_url)
    store.upgrade()
    store.write([run("b", 3000, balances=1), run("x", 5000)])
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {database_url}\njobs:\n  b: {{method: Ticker, every: 1h}}\n")
    retention = Retention(store, load(path))
    assert not retention.active
    assert retention.prune_once() == {}
    assert len(rows(database_url, "SELECT id FROM runs")) == 2
    assert len(rows(database_url, "SELECT run_id FROM balances")) == 1
    store.dispose()


def test_retention_keys_are_checked(tmp_path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'x.db'}\nretention:\n  runs: 90d\n  tickers: 1d\n"
        "jobs:\n  b: {method: Ticker, every: 1h, retention: 7d}\n"
    )
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert f"{path}:4: retention.tickers: unknown key" in result.output
    path.write_text(path.read_text().replace("  tickers: 1d\n", "").replace("7d", "soon"))
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert f"{path}:5: jobs.b.retention: bad duration 'soon'" in result.output
