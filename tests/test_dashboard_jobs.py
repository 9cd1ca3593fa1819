"""The page with thousands of jobs (issue 29): a page of jobs at a time behind plain links, every
job's state still in the health, and a constant number of statements for the jobs' runs, not a
few per job; the pairs a job file names found among a thousand collected without comparing
every one with every one."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, insert

from collector.dashboard import JOBS_SHOWN, PROBLEMS_SHOWN, Dashboard
from collector.jobfile import load
from collector.pairs import named, same
from collector.schema import runs
from collector.status import collect
from collector.store import Store

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def _many(tmp_path: Path, url: str, count: int) -> Path:
    """``count`` Time jobs every hour: the first half ran 30 minutes ago (ok), the second half
    last ran two days ago (stale); job 1 also failed twice today, once a partial page still
    paging (its latest run, not a failure)."""
    store = Store.from_url(url)
    store.upgrade()
    lines = []
    rows = []
    for i in range(count):
        lines.append(f"  j{i:04d}: {{method: Time, every: 1h}}")
        at = NOW - (timedelta(minutes=30) if i < count // 2 else timedelta(days=2))
        rows.append(_run(len(rows) + 1, f"j{i:04d}", "ok", at))
    rows.append(_run(len(rows) + 1, "j0001", "http_error", NOW - timedelta(minutes=20)))
    rows.append(_run(len(rows) + 1, "j0001", "partial", NOW - timedelta(minutes=10)))
    with store.engine.begin() as conn:
        conn.execute(insert(runs), rows)
    store.dispose()
    path = tmp_path / "jobs.yaml"
    secret = base64.b64encode(bytes(64)).decode()
    path.write_text(
        f"database: {url}\nkraken: {{key: k, secret: '{secret}'}}\njobs:\n" + "\n".join(lines)
    )
    return path


def _run(run_id: int, job: str, status: str, at: datetime) -> dict:
    return {
        "id": run_id,
        "job": job,
        "method": "Time",
        "params": {},
        "status": status,
        "scheduled_at": at,
        "started_at": at,
        "finished_at": at,
        "attempts": 1,
    }


def test_a_page_of_jobs_at_a_time_with_every_jobs_state_in_the_health(tmp_path) -> None:
    """600 jobs, half of them stale: the page lists the first JOBS_SHOWN, links to the others
    with ``?jobs=N``, says unhealthy and names PROBLEMS_SHOWN stale jobs and how many more;
    before, all 600 rows and 300 problem lines were on the page."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    page = Dashboard(load(_many(tmp_path, url, 600)), Store.from_url(url), clock=lambda: NOW)
    first = page.answer({"range": "day"})
    html = first.body.decode()
    listed = re.findall(r'<tr data-job="([^"]+)"', html)
    assert listed == [f"j{i:04d}" for i in range(JOBS_SHOWN)]
    assert 'data-page="1" data-pages="6"' in html
    assert 'href="?range=day&amp;jobs=2"' in html and 'href="?range=day&amp;jobs=6"' in html
    assert "unhealthy" in html
    assert html.count("no success for") == PROBLEMS_SHOWN
    assert f"and {300 - PROBLEMS_SHOWN:,} more stale jobs" in html
    assert "<script" not in html
    last = page.answer({"range": "day", "jobs": "6"}).body.decode()
    assert re.findall(r'<tr data-job="([^"]+)"', last) == [f"j{i:04d}" for i in range(500, 600)]
    assert re.findall(r'<tr data-job="(j0001)" data-state="([a-z]+)"', html) == [
        ("j0001", "paging")
    ]
    # j0001's paging run is no failure; its http_error is.
    row = html[html.index('data-job="j0001"') :]
    assert re.findall(r'data-label="failures 24h">([^<]*)<', row)[0] == "http_error 1"


@pytest.mark.parametrize("asked", ["0", "-1", "x", "1e3", "٣", "9" * 12])
def test_a_jobs_page_that_is_no_page_number_is_refused_in_one_line(tmp_path, asked) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    page = Dashboard(load(_many(tmp_path, url, 3)), Store.from_url(url), clock=lambda: NOW)
    answer = page.answer({"jobs": asked})
    assert answer.status == 400
    assert answer.body.decode().count("\n") == 1 and "a page number" in answer.body.decode()


def test_the_jobs_runs_are_read_in_a_constant_number_of_statements(tmp_path) -> None:
    """status.collect of 50 and of 500 jobs runs the same number of statements (before: about
    six a job), and says the same of each job as one job at a time would."""
    counts = []
    reports = []
    for n in (50, 500):
        folder = tmp_path / str(n)
        folder.mkdir()
        url = f"sqlite:///{folder / 'c.db'}"
        config = load(_many(folder, url, n))
        store = Store.from_url(url)
        statements: list[str] = []
        event.listen(
            store.engine, "before_cursor_execute", lambda *a, seen=statements: seen.append(a[2])
        )
        report = collect(config, store, NOW, 0)
        counts.append(len(statements))
        reports.append(report)
        store.dispose()
    assert counts[0] == counts[1] < 12, counts
    jobs = {j["name"]: j for j in reports[1]["jobs"]}
    assert jobs["j0000"]["state"] == "ok" and jobs["j0000"]["failures_24h"] == {}
    assert jobs["j0001"]["state"] == "paging"
    assert jobs["j0001"]["failures_24h"] == {"http_error": 1}
    assert jobs["j0499"]["state"] == "stale"
    assert len(reports[1]["problems"]) == 250


def test_the_pairs_named_are_the_ones_same_says() -> None:
    """named() is same() over every pair: a thousand asked of a thousand collected, and the
    spellings a job file uses (altname, wsname, lower case, the old X/Z codes)."""
    collected = [f"AAA{i:04d}USD" for i in range(1000)]
    collected += ["XXBTZUSD", "XETHZEUR", "SOLUSD", "XETHXXBT", "DOT.SUSD", "ZUSDZCAD"]
    asked = [f"AAA{i:04d}USD" for i in range(0, 2000, 3)]
    asked += ["XBTUSD", "eth/eur", "SOL-USD", "ETHXBT", "USDCAD", "NOPE"]
    want = {p for p in collected if any(same(a, p) for a in asked)}
    assert named(asked, collected) == want
    assert {"XXBTZUSD", "XETHZEUR", "SOLUSD", "XETHXXBT", "ZUSDZCAD"} <= want


def test_the_pairs_collected_are_one_statement(tmp_path) -> None:
    """pairs_in: the distinct pairs of the ticker in order, one statement however many (before:
    one a pair, a thousand statements for the page of a thousand pairs)."""
    from collector.datasets.market import ticker
    from collector.status import pairs_in

    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.from_url(url)
    store.upgrade()
    at = NOW - timedelta(hours=1)
    price = {k: "1.5" for k in ("ask", "bid", "last", "vwap_24h", "open")}
    price |= {"low_24h": "1", "high_24h": "2", "volume_24h": "9", "trades_24h": 1}
    with store.engine.begin() as conn:
        conn.execute(insert(runs), [_run(1, "t", "ok", at), _run(2, "t", "ok", NOW)])
        conn.execute(
            insert(ticker),
            [
                {"run_id": r, "pair": f"P{i:03d}USD", "taken_at": at} | price
                for r in (1, 2)
                for i in range(299, -1, -1)
            ],
        )
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with store.engine.connect() as conn:
        assert pairs_in(conn, ticker) == [f"P{i:03d}USD" for i in range(300)]
        assert pairs_in(conn, ticker, most=5) == [f"P{i:03d}USD" for i in range(5)]
    assert len(statements) == 2
    store.dispose()


def _counted_jobs(folder: Path, url: str, tickers: int) -> Path:
    """``tickers`` Ticker jobs (job i: i + 1 runs of a row each), two OHLC jobs of one pair
    spelled as a user does (intervals 1 and 5, beside candles of another pair and interval), a
    Balance job and a Time job."""
    from collector.datasets.balances import table as balances
    from collector.datasets.market import ohlc, ticker

    store = Store.from_url(url)
    store.upgrade()
    lines, run_rows, ticker_rows = [], [], []
    price = {k: "1.5" for k in ("ask", "bid", "last", "vwap_24h", "open")}
    price |= {"low_24h": "1", "high_24h": "2", "volume_24h": "9", "trades_24h": 1}
    for i in range(tickers):
        lines.append(f"  t{i:03d}: {{method: Ticker, params: {{pair: P{i:03d}USD}}, every: 1h}}")
        for k in range(i + 1):
            run_rows.append(_run(len(run_rows) + 1, f"t{i:03d}", "ok", NOW - timedelta(hours=k)))
            ticker_rows.append(
                {
                    "run_id": len(run_rows),
                    "pair": f"P{i:03d}USD",
                    "taken_at": NOW - timedelta(hours=k),
                }
                | price
            )
    lines += [
        "  c1: {method: OHLC, params: {pair: XBTUSD}, every: 1h}",
        "  c5: {method: OHLC, params: {pair: xbt/usd, interval: 5}, every: 1h}",
        "  b: {method: Balance, every: 1h}",
        "  clock: {method: Time, every: 1h}",
    ]
    run_rows.append(_run(len(run_rows) + 1, "c1", "ok", NOW))
    candle = {k: "2" for k in ("open", "high", "low", "close", "vwap", "volume")}
    candles = [
        {"pair": pair, "interval": minutes, "time": NOW - timedelta(minutes=minutes * k)}
        | candle
        | {"count": 1, "final": True, "run_id": len(run_rows)}
        for pair, minutes, many in (("XXBTZUSD", 1, 7), ("XXBTZUSD", 5, 3), ("XETHZUSD", 1, 4))
        for k in range(many)
    ]
    run_rows.append(_run(len(run_rows) + 1, "b", "ok", NOW))
    held = [
        {"run_id": len(run_rows), "asset": a, "job": "b", "taken_at": NOW, "amount": "1"}
        for a in ("XXBT", "ZUSD")
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(runs), run_rows)
        conn.execute(insert(ticker), ticker_rows)
        conn.execute(insert(ohlc), candles)
        conn.execute(insert(balances), held)
    store.dispose()
    path = folder / "jobs.yaml"
    secret = base64.b64encode(bytes(64)).decode()
    path.write_text(
        f"database: {url}\nkraken: {{key: k, secret: '{secret}'}}\njobs:\n" + "\n".join(lines)
    )
    return path


def test_each_jobs_rows_are_counted_in_a_statement_a_dataset(tmp_path) -> None:
    """The rows and newest entry of each job in its dataset (a Ticker job's own snapshots, an
    OHLC job's pair and interval, a Balance job's snapshots) from a statement a dataset, not
    one a job: 10 and 60 Ticker jobs run the same statements (the page of 100 Ticker jobs was
    100 joins of ticker and runs, 1.8 s on PostgreSQL)."""
    counts = []
    for n in (10, 60):
        folder = tmp_path / str(n)
        folder.mkdir()
        url = f"sqlite:///{folder / 'c.db'}"
        config = load(_counted_jobs(folder, url, n))
        store = Store.from_url(url)
        statements: list[str] = []
        event.listen(
            store.engine, "before_cursor_execute", lambda *a, seen=statements: seen.append(a[2])
        )
        report = collect(config, store, NOW, 0)
        store.dispose()
        counts.append(len(statements))
        jobs = {j["name"]: j for j in report["jobs"]}
        for i in range(n):
            assert (jobs[f"t{i:03d}"]["rows"], jobs[f"t{i:03d}"]["newest"]) == (
                i + 1,
                NOW.isoformat(),
            )
        assert jobs["c1"]["rows"] == 7 and jobs["c5"]["rows"] == 3
        assert jobs["c5"]["newest"] == jobs["c1"]["newest"] == NOW.isoformat()
        assert jobs["c1"]["cursor"] is None and jobs["c1"]["paging"] is False
        assert (jobs["b"]["rows"], jobs["b"]["newest"]) == (2, NOW.isoformat())
        assert jobs["clock"]["rows"] is None and jobs["clock"]["dataset"] is None
    assert counts[0] == counts[1] < 20, counts


def test_a_job_that_never_succeeded_is_measured_from_its_first_run(tmp_path) -> None:
    """Without a success, a job's staleness counts from its first run (read only for such
    jobs): failing for five days is stale, failing since ten minutes ago is waiting; a success
    an hour ago is ok whatever failed after it."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.from_url(url)
    store.upgrade()
    rows = [
        _run(1, "old", "http_error", NOW - timedelta(days=5)),
        _run(2, "old", "http_error", NOW - timedelta(minutes=10)),
        _run(3, "new", "http_error", NOW - timedelta(minutes=10)),
        _run(4, "fine", "ok", NOW - timedelta(hours=1)),
        _run(5, "fine", "http_error", NOW - timedelta(minutes=5)),
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(runs), rows)
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {url}\njobs:\n"
        + "".join(f"  {n}: {{method: Time, every: 1h}}\n" for n in ("old", "new", "fine", "idle"))
    )
    report = collect(load(path), store, NOW, 0)
    store.dispose()
    jobs = {j["name"]: j for j in report["jobs"]}
    assert jobs["old"]["state"] == "stale" and jobs["old"]["stale_for"].startswith("5d")
    assert jobs["old"]["last_status"] == "http_error" and jobs["old"]["last_success"] is None
    assert jobs["new"]["state"] == "waiting"
    assert jobs["fine"]["state"] == "ok" and jobs["fine"]["last_status"] == "http_error"
    assert jobs["fine"]["last_success"] == (NOW - timedelta(hours=1)).isoformat()
    assert jobs["idle"]["state"] == "waiting" and jobs["idle"]["last_run"] is None
    assert [p.split(":")[0] for p in report["problems"]] == ["job old"]
