"""The datasets' costs, each beside a reference measured in the same run.

    python bench/bench_datasets.py          # about four minutes

Timed figures come from 5 rounds (bench/rounds.py) that alternate the two sides of each ratio;
each ratio is the median of the rounds' ratios, with their min-max.

1. Backfill: 5,000 ledger entries through the service, against the fake's counter scaled up
   (starter's max 15, decay 0.33/s sped up to 20/s): the share of what the counter allowed in the
   same time that was used (target >= 95%), and rejections (target 0); a backfill a round.
2. Ingest: rows/s of public trades pages (1,000 rows each, a commit per page) through
   ``Store.write`` into SQLite and PostgreSQL (COPY and one upsert), beside a bare ``executemany``
   INSERT of the same rows into a table of the same shape (the floor: no upsert, no run row), both
   into empty tables each round. Targets: >= 50,000 rows/s on both; on PostgreSQL >= 1.0x the bare
   INSERT. Counted: the SQL statements ``Store.write`` sends per page.
3. Size (counted): bytes per stored candle with one OHLC run a minute for a day, beside what
   storing each run's raw answer costs for the same data (target: 10x smaller); the same for
   public trades.
5. Whole path (issue 29): a Trades backfill of 1,000-trade pages from the fake (in a process of its
   own) through the service (client, runner, writer, ``Store.write``: the whole path a user
   waits on), beside a bare pipeline fetching the same pages from the same fake: one keep-alive
   ``requests`` session, ``json.loads``, the same typed rows (``Decimal``, aware ``datetime``),
   ``COPY`` (PostgreSQL) or an ``executemany`` INSERT (SQLite) into a table of the same shape, a
   commit per page. Target: >= 0.8x on both. Beside the rates, each side's CPU time a row in
   this process (all its threads; not the fake's or PostgreSQL's), which the load of other
   processes moves less. ``--only whole`` runs just this (``--profile``: a ``cProfile`` of one
   whole-path backfill, its top functions).
4. Query: a year of 1-minute candles (525,600 rows): daily closes from ``ohlc`` beside the same
   question through ``json_each`` over ``runs.result`` (the same candles as raw answers, 720 to a
   run), alternated. Target < 200 ms on SQLite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402
from rounds import ROUNDS, alternate, ratio, spread  # noqa: E402
from sqlalchemy import Column, MetaData, Table, event, text  # noqa: E402

from collector.datasets import OHLC, Trades  # noqa: E402
from collector.datasets.market import TRADE_COLUMNS  # noqa: E402
from collector.jobfile import load  # noqa: E402
from collector.records import RunRecord  # noqa: E402
from collector.service import Service  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.testing.fake_exchange import FakeKraken  # noqa: E402

logging.basicConfig(level=logging.ERROR)


def backfill(workdir: Path, entries: int) -> dict[str, float]:
    """One backfill of ``entries`` ledger entries: the share of the counter's allowance used."""
    from collector.ratelimit import RateLimit

    limit = RateLimit(max=15, decay=20.0)
    with FakeKraken(tier=limit, history={"ledger": entries}) as fake:
        key, secret = fake.add_key()
        folder = Path(tempfile.mkdtemp(prefix="backfill-", dir=workdir))
        path = folder / "backfill.yaml"
        path.write_text(
            f"database: sqlite:///{folder / 'backfill.db'}\nkraken:\n  url: {fake.url}\n"
            f"  key: {key}\n  secret: {secret}\n  rate_limit: {{max: 15, decay: 20}}\n"
            "jobs:\n  l: {method: Ledgers, every: 1h}\n"
        )
        os.environ["COLLECTOR_STATE_DIR"] = str(folder / "state")
        service = Service(load(path))
        service.open()
        started = time.monotonic()
        try:
            record = service.execute(service.config.jobs[0])
        finally:
            elapsed = time.monotonic() - started
            service.stop()
        assert record is not None and record.status == "ok", record
        calls = fake.calls["Ledgers"]
        refused = fake.errors["EAPI:Rate limit exceeded"]
        stored = Store.from_url(service.config.database)
        rows = _count(stored, "ledger")
        stored.dispose()
    assert rows == entries, (rows, entries)
    used = calls * 2  # Ledgers costs 2
    allowed = limit.max + limit.decay * elapsed  # the counter's burst plus its decay meanwhile
    return {"used": used / allowed, "refused": refused, "seconds": elapsed, "pages": calls}


def trade_pages(count: int) -> list[RunRecord]:
    """``count`` pages of 1,000 public trades each, as the runner hands them to the store."""
    with FakeKraken(tier=None, history={"public_trades": count * 1000 + 10}) as fake:
        since = "0"
        records = []
        dataset = Trades()
        now = datetime.now(UTC)
        for _ in range(count):
            sent = {"pair": "XBTUSD", "since": since, "count": 1000}
            answer = fake.result("Trades", sent)
            record = RunRecord("t", "Trades", sent, now, now, now, dataset="trades")
            page = dataset.page(record, sent, answer, since)
            record.rows, record.cursor, record.pages = {"trades": page.rows}, page.cursor, 1
            records.append(record)
            since = page.cursor
    return records


def ingest(url: str, records: list[RunRecord], label: str, rounds: int) -> None:
    """``Store.write`` beside a bare ``executemany`` INSERT of the same rows, alternated."""
    from collector.datasets.market import trades

    store = Store.from_url(url)
    store.upgrade()
    rows = sum(len(r.rows["trades"]) for r in records)
    # The floor's typed rows (the page hands the store its stored text: read back here, untimed).
    typed = [
        [
            {
                **dict(zip(TRADE_COLUMNS, t, strict=True)),
                "time": datetime.fromisoformat(t[2]),
                "price": Decimal(t[3]),
                "volume": Decimal(t[4]),
            }
            for t in record.rows["trades"]
        ]
        for record in records
    ]
    # The floor: the same columns and primary key, its one index too (under another name), and
    # bare INSERTs of the same rows, one page a commit.
    bare = Table(
        "bare_trades",
        MetaData(),
        *(Column(c.name, c.type, primary_key=c.primary_key) for c in trades.columns),
    )
    bare.create(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX ix_bare_pair_time ON bare_trades (pair, time)")
    postgres = store.engine.dialect.name == "postgresql"

    def empty(*tables: str) -> None:
        with store.engine.begin() as conn:
            for name in tables:
                if postgres:
                    conn.exec_driver_sql(f"TRUNCATE {name} CASCADE")
                else:
                    conn.exec_driver_sql(f"DELETE FROM {name}")

    def ours() -> float:
        empty("trades", "cursors", "runs")  # the records' runs are new again
        started = time.perf_counter()
        for record in records:
            store.write([record])
        return rows / (time.perf_counter() - started)

    def floor() -> float:
        empty("bare_trades")
        started = time.perf_counter()
        for page in typed:
            with store.engine.begin() as conn:
                conn.execute(bare.insert(), [{**r, "run_id": 1} for r in page])
        return rows / (time.perf_counter() - started)

    print(f"  {label}: {rounds} rounds of Store.write and the bare INSERT (rows/s)")
    sides = alternate({"Store.write": ours, "bare INSERT": floor}, rounds)
    empty("trades", "cursors", "runs")  # counted on a page of new rows, as the rounds wrote them
    statements = _statements(store, records[0])
    store.dispose()
    target = ">= 1.0x" if postgres else "(no ratio target)"
    print(
        f"  {label:<10} Store.write {spread(sides['Store.write'])} rows/s (target >= 50,000); "
        f"bare INSERT {spread(sides['bare INSERT'])} rows/s; "
        f"ratio {ratio(sides['Store.write'], sides['bare INSERT'])} {target}"
    )
    print(f"  {label:<10} statements per page (counted): {statements}")


#: The fake in a process of its own (its answers' encoding on the other core, as Kraken's are
#: elsewhere): prints its URL, serves until its stdin closes.
FAKE = """
import sys
from collector.testing.fake_exchange import FakeKraken
with FakeKraken(tier=None, public_limit=None, history={"public_trades": int(sys.argv[1])}) as fake:
    print(fake.url, flush=True)
    sys.stdin.read()
"""

#: The whole path's job file: one Trades backfill from the first trade, no rate limit in the way.
WHOLE_JOBS = """database: {db}
kraken:
  url: {url}
  public_rate_limit: {{max: 1000000, decay: 1000000}}
jobs:
  t: {{method: Trades, params: {{pair: XBTUSD}}, since: '2000-01-01', every: 1h}}
"""


#: The whole path of another checkout (``--before DIR``), in a process of its own: empties the
#: tables, runs the backfill and prints its rows/s (the same job file, database and fake).
BEFORE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from sqlalchemy import create_engine
from collector.jobfile import load
from collector.service import Service
jobs, url, expected = sys.argv[2], sys.argv[3], int(sys.argv[4])
engine = create_engine(url)
with engine.begin() as conn:
    for name in ("trades", "cursors", "runs"):
        conn.exec_driver_sql(
            f"TRUNCATE {name} CASCADE" if url.startswith("postgresql") else f"DELETE FROM {name}"
        )
engine.dispose()
service = Service(load(jobs))
service.open()
try:
    started = time.perf_counter()
    record = service.execute(service.config.jobs[0])
    assert service.writer.flush(timeout=60)
    elapsed = time.perf_counter() - started
finally:
    service.stop()
assert record is not None and record.status == "ok", record
print(expected / elapsed)
"""


def whole(
    workdir: Path,
    url: str,
    label: str,
    pages: int,
    rounds: int,
    profile: bool = False,
    before: str | None = None,
) -> None:
    """The whole path (service: client, runner, writer, store) beside the bare pipeline; with
    ``before`` (another checkout's folder), that checkout's whole path too."""
    import subprocess

    from collector.datasets.market import trades

    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE, str(pages * 1000 + 10)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert fake.stdout is not None
    fake_url = fake.stdout.readline().strip()
    store = Store.from_url(url)
    store.upgrade()
    postgres = store.engine.dialect.name == "postgresql"
    bare = Table(
        "bare_whole",
        MetaData(),
        *(Column(c.name, c.type, primary_key=c.primary_key) for c in trades.columns),
    )
    bare.create(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX ix_bare_whole_pair_time ON bare_whole (pair, time)")
    folder = Path(tempfile.mkdtemp(prefix="whole-", dir=workdir))
    jobs = folder / "whole.yaml"
    jobs.write_text(WHOLE_JOBS.format(db=url, url=fake_url))
    os.environ["COLLECTOR_STATE_DIR"] = str(folder / "state")
    expected = pages * 1000 + 10

    def empty(*tables: str) -> None:
        with store.engine.begin() as conn:
            for name in tables:
                conn.exec_driver_sql(
                    f"TRUNCATE {name} CASCADE" if postgres else f"DELETE FROM {name}"
                )

    def ours(writer: Any = None) -> float:
        """The whole path; with ``writer`` (a ``cProfile.Profile``), its writer thread's
        ``Store.write`` calls profiled in it."""
        empty("trades", "cursors", "runs")
        service = Service(load(jobs))
        service.open()
        if writer is not None:
            write = service.writer.store.write

            def profiled(*args: Any, **kwargs: Any) -> Any:
                writer.enable()
                try:
                    return write(*args, **kwargs)
                finally:
                    writer.disable()

            service.writer.store.write = profiled  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            record = service.execute(service.config.jobs[0])
            assert service.writer.flush(timeout=60)  # the last page's record, stored
            elapsed = time.perf_counter() - started
        finally:
            service.stop()
        assert record is not None and record.status == "ok", record
        assert _count(store, "trades") == expected, _count(store, "trades")
        return expected / elapsed

    def floor() -> float:
        empty("bare_whole")
        raw = store.engine.raw_connection()
        db = raw.driver_connection
        assert db is not None
        session = requests.Session()
        since, n = "0", 0
        insert = (
            "INSERT INTO bare_whole (pair, trade_id, time, price, volume, side, order_type, misc,"
            " run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        copy = (
            "COPY bare_whole (pair, trade_id, time, price, volume, side, order_type, misc, run_id)"
            " FROM STDIN"
        )
        started = time.perf_counter()
        try:
            while True:
                answer = session.get(
                    fake_url + "/0/public/Trades", params={"pair": "XBTUSD", "since": since}
                )
                result = json.loads(answer.content)["result"]
                (pair,) = (k for k in result if k != "last")
                rows = [
                    (
                        pair,
                        r[6],
                        datetime.fromtimestamp(r[2], UTC),
                        Decimal(r[0]),
                        Decimal(r[1]),
                        "buy" if r[3] == "b" else "sell",
                        "market" if r[4] == "m" else "limit",
                        r[5],
                        1,
                    )
                    for r in result[pair]
                ]
                if postgres:
                    with db.cursor() as cursor, cursor.copy(copy) as out:
                        for row in rows:
                            out.write_row(row)
                else:
                    db.execute("BEGIN IMMEDIATE")  # as the store's (autocommit otherwise)
                    db.executemany(
                        insert,
                        [
                            (p, i, t.isoformat(sep=" "), str(a), str(b), s, o, m, r)
                            for p, i, t, a, b, s, o, m, r in rows
                        ],
                    )
                db.commit()
                n += len(rows)
                since = str(result["last"])
                if len(rows) < 1000:
                    break
        finally:
            elapsed = time.perf_counter() - started
            session.close()
            raw.close()
        assert n == expected, (n, expected)
        return n / elapsed

    try:
        if profile:
            import cProfile
            import pstats

            floor(), ours()  # warm both
            profiler, writer = cProfile.Profile(), cProfile.Profile()
            profiler.enable()
            ours(writer)
            profiler.disable()
            print(f"  {label}: profile of one whole-path backfill ({expected:,} rows), the runner")
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
            print(f"  {label}: the writer thread's Store.write")
            stats = pstats.Stats(writer)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(25)
            return

        def then() -> float:
            out = subprocess.run(
                [sys.executable, "-c", BEFORE, str(before), str(jobs), url, str(expected)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "COLLECTOR_STATE_DIR": str(folder / "state-before")},
            )
            return float(out.stdout.split()[-1])

        cpu: dict[str, list[float]] = {"whole path": [], "bare pipeline": []}

        def charged(name: str, side: Any) -> Any:
            """``side``, its CPU time in this process (every thread of it: the service's runner
            and writer; not the fake's or PostgreSQL's) a row kept in ``cpu``: what the load of
            other processes moves less than the elapsed time."""

            def run() -> float:
                started = time.process_time()
                rate = side()
                cpu[name].append((time.process_time() - started) / expected * 1e6)
                return float(rate)

            return run

        print(f"  {label}: {rounds} rounds of the whole path and the bare pipeline (rows/s)")
        runs: dict[str, Any] = {
            "whole path": charged("whole path", ours),
            "bare pipeline": charged("bare pipeline", floor),
        }
        if before:
            runs["before"] = then
        sides = alternate(runs, rounds)
        print(
            f"  {label:<10} whole path {spread(sides['whole path'])} rows/s; bare pipeline "
            f"{spread(sides['bare pipeline'])} rows/s; ratio "
            f"{ratio(sides['whole path'], sides['bare pipeline'])} (target >= 0.8x)"
        )
        print(
            f"  {label:<10} CPU a row in this process: whole path "
            f"{statistics.median(cpu['whole path']):.1f} us ({min(cpu['whole path']):.1f}-"
            f"{max(cpu['whole path']):.1f}); bare pipeline "
            f"{statistics.median(cpu['bare pipeline']):.1f} us ({min(cpu['bare pipeline']):.1f}-"
            f"{max(cpu['bare pipeline']):.1f}); bare / whole "
            f"{ratio(cpu['bare pipeline'], cpu['whole path'])}"
        )
        if before:
            print(
                f"  {label:<10} before {spread(sides['before'])} rows/s, "
                f"{ratio(sides['before'], sides['bare pipeline'])} of the bare pipeline; "
                f"now / before {ratio(sides['whole path'], sides['before'])}"
            )
    finally:
        store.dispose()
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(timeout=30)


def _statements(store: Store, record: RunRecord) -> str:
    """What ``Store.write`` sends for one page, counted by a ``before_cursor_execute`` listener
    (BEGIN and COMMIT are the driver's, not counted; an executemany counts once)."""
    sent: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement.split(None, 1)[0].upper())

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        store.write([record])
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    # Each staging table's CREATE ... IF NOT EXISTS is followed by its COPY, which the listener
    # can't see (it goes through the driver's copy()).
    copies = sent.count("CREATE")
    return f"{len(sent)} ({', '.join(sent)})" + (f" + {copies} COPY" if copies else "")


def sizes(workdir: Path) -> None:
    """A day of one OHLC run a minute, and of public trades pages: rows against raw answers, each
    in a database file of its own (runs rows included, as a user's file would hold them)."""
    clock = [time.time() - 86_400]
    names = ("ohlc_rows", "ohlc_raw", "trades_rows", "trades_raw")
    stores = {n: Store.from_url(f"sqlite:///{workdir / (n + '.db')}") for n in names}
    for store in stores.values():
        store.upgrade()
    empty = _bytes(stores["ohlc_rows"])
    with FakeKraken(tier=None, now=lambda: clock[0], history={"public_trades": 10}) as fake:
        ohlc, trades = OHLC(), Trades()
        cursor: object = None
        trade_cursor = str(int(clock[0] * 1e9))
        for _ in range(1440):
            now = datetime.fromtimestamp(clock[0], UTC)
            sent = {"pair": "XBTUSD", "interval": 1, **({"since": cursor} if cursor else {})}
            answer = fake.result("OHLC", sent)
            record = RunRecord("c", "OHLC", sent, now, now, now, pages=1, dataset="ohlc")
            page = ohlc.page(record, sent, answer, cursor)
            record.rows, record.cursor = {"ohlc": page.rows}, page.cursor
            cursor = page.cursor
            stores["ohlc_rows"].write([record])
            # Before datasets: every run asked for (and kept) the whole answer, 720 candles.
            whole = fake.result("OHLC", {"pair": "XBTUSD", "interval": 1})
            raw = RunRecord("c", "OHLC", {"pair": "XBTUSD"}, now, now, now, result=whole)
            stores["ohlc_raw"].write([raw])
            fake.grow("public_trades", 20, pair="XBTUSD")  # 20 trades a minute
            sent = {"pair": "XBTUSD", "since": trade_cursor}
            answer = fake.result("Trades", sent)
            record = RunRecord("t", "Trades", sent, now, now, now, pages=1, dataset="trades")
            page = trades.page(record, sent, answer, trade_cursor)
            record.rows, record.cursor = {"trades": page.rows}, page.cursor
            trade_cursor = page.cursor
            stores["trades_rows"].write([record])
            stores["trades_raw"].write(
                [RunRecord("t", "Trades", sent, now, now, now, result=answer)]
            )
            clock[0] += 60
    candles = _count(stores["ohlc_rows"], "ohlc")
    trade_rows = _count(stores["trades_rows"], "trades")
    size = {n: _bytes(store) - empty for n, store in stores.items()}
    for store in stores.values():
        store.dispose()
    print("size: a day of one OHLC run a minute (1-minute candles) and 20 trades a minute, SQLite")
    print(
        f"  candles: {candles:,} rows, {size['ohlc_rows'] / candles:,.0f} bytes per candle (runs "
        f"rows included); each run's raw answer instead: {size['ohlc_raw'] / candles:,.0f} bytes "
        f"per candle: {size['ohlc_raw'] / size['ohlc_rows']:.0f}x smaller (target 10x)"
    )
    print(
        f"  trades: {trade_rows:,} rows, {size['trades_rows'] / trade_rows:,.0f} bytes per trade; "
        f"raw answers (with since, so no repeats): {size['trades_raw'] / trade_rows:,.0f} bytes "
        f"per trade ({size['trades_raw'] / size['trades_rows']:.2f}x)"
    )


def _count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)


def _bytes(store: Store) -> int:
    with store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
        size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
    return int(pages) * int(size)


def query(workdir: Path, rounds: int) -> None:
    """A year of 1-minute candles: daily closes from ohlc, beside json_each over raw answers."""
    minutes = 525_600
    path = workdir / "year.db"
    store = Store.from_url(f"sqlite:///{path}")
    store.upgrade()
    store.dispose()
    db = sqlite3.connect(path)
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")

    run_at = iso(start)
    db.execute(
        "INSERT INTO runs (job, method, params, scheduled_at, started_at, finished_at, status, "
        "attempts, pages, new_rows, uid) VALUES ('c', 'OHLC', '{}', ?, ?, ?, 'ok', 1, 1, 0, 'x')",
        (run_at, run_at, run_at),
    )
    candles = []
    for m in range(minutes):
        t = start + timedelta(minutes=m)
        price = f"{60000 + (m % 1440) / 10:.1f}"
        candles.append(
            (iso(t), int(t.timestamp()), price, price, price, price, price, "1.25000000", 42)
        )
    db.executemany(
        "INSERT INTO ohlc (pair, interval, time, open, high, low, close, vwap, volume, count, "
        "final, run_id) VALUES ('XXBTZUSD', 1, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1)",
        [(c[0], *c[2:]) for c in candles],
    )
    # The same candles as raw answers, 720 to a run (what runs.result held before datasets).
    raw = []
    for i in range(0, minutes, 720):
        rows = [[c[1], *c[2:]] for c in candles[i : i + 720]]
        result = json.dumps({"XXBTZUSD": rows, "last": rows[-1][0]})
        raw.append((iso(start + timedelta(minutes=i)), result, uuid.uuid4().hex))
    db.executemany(
        "INSERT INTO runs (job, method, params, scheduled_at, started_at, finished_at, status, "
        "result, attempts, pages, new_rows, uid) VALUES ('raw', 'OHLC', '{}', ?1, ?1, ?1, 'ok', "
        "?2, 1, 1, 0, ?3)",
        raw,
    )
    db.commit()
    readme = _readme_daily_closes()
    via_json = (
        "SELECT date(json_extract(c.value, '$[0]'), 'unixepoch') AS day, "
        "json_extract(c.value, '$[4]') AS close, max(json_extract(c.value, '$[0]')) "
        "FROM runs, json_each(runs.result, '$.XXBTZUSD') AS c "
        "WHERE runs.job = 'raw' AND runs.status = 'ok' GROUP BY day ORDER BY day"
    )
    answers: dict[str, list] = {}

    def timed(name: str, sql: str) -> float:
        started = time.perf_counter()
        answers[name] = db.execute(sql).fetchall()
        return (time.perf_counter() - started) * 1000

    print(f"query: daily closes over a year of 1-minute candles ({minutes:,} rows), SQLite")
    print(f"  {rounds} rounds of ohlc and json_each (ms)")
    ms = alternate(
        {"ohlc": lambda: timed("ohlc", readme), "json_each": lambda: timed("json_each", via_json)},
        rounds,
    )
    db.close()
    same = [tuple(r[:2]) for r in answers["ohlc"]] == [tuple(r[:2]) for r in answers["json_each"]]
    print(
        f"  from ohlc {statistics.median(ms['ohlc']):.1f} ms ({min(ms['ohlc']):.1f}-"
        f"{max(ms['ohlc']):.1f}; target < 200 ms); through json_each over runs.result "
        f"{spread(ms['json_each'])} ms: {ratio(ms['json_each'], ms['ohlc'])} slower; "
        f"{len(answers['ohlc'])} days, same answers: {same}"
    )


def _readme_daily_closes() -> str:
    """The README's SQLite daily-closes statement, as written there (so the figure is its own)."""
    import re

    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```sql\n(.*?)```", readme, re.DOTALL):
        if block.startswith("-- SQLite"):
            for statement in block.split(";"):
                if "Daily closes" in statement:
                    return statement.strip()
    raise SystemExit("the README has no SQLite daily-closes statement")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5_000, help="ledger entries to backfill")
    parser.add_argument("--pages", type=int, default=100, help="trades pages to ingest")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--only", choices=("whole", "ingest"), help="run only this part")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="with --only whole: profile it")
    parser.add_argument("--before", help="the whole path of this checkout too (a folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        work = Path(tmp)
        if args.only == "whole":
            whole_path(work, args)
            return
        if args.only == "ingest":
            ingest_both(work, args)
            return
        print(
            f"backfill: {args.entries:,} ledger entries, counter max 15 decay 20/s, "
            f"{args.rounds} rounds"
        )
        runs = []
        for i in range(args.rounds):
            runs.append(backfill(work, args.entries))
            print(f"  round {i + 1}/{args.rounds}: used {runs[-1]['used']:.1%}", flush=True)
        used = [r["used"] for r in runs]
        print(
            f"  used {statistics.median(used):.1%} ({min(used):.1%}-{max(used):.1%}) of the units "
            f"the counter allowed in the same time (target >= 95%); refused "
            f"{sum(r['refused'] for r in runs)} in all (target 0); "
            f"{runs[0]['pages']} pages in {statistics.median(r['seconds'] for r in runs):.1f} s"
        )
        ingest_both(work, args)
        sizes(work)
        query(work, args.rounds)
        whole_path(work, args)


def ingest_both(work: Path, args: argparse.Namespace) -> None:
    records = trade_pages(args.pages)
    print(f"ingest: {len(records)} pages of 1,000 public trades, a commit per page")
    ingest(f"sqlite:///{work / 'ingest.db'}", records, "SQLite", args.rounds)
    try:
        from tests.conftest import PostgresServer

        server = PostgresServer()
    except Exception as exc:  # no initdb here: say so, measure the rest
        print(f"  PostgreSQL   skipped ({exc})")
    else:
        try:
            ingest(server.new_database(), trade_pages(args.pages), "PostgreSQL", args.rounds)
        finally:
            server.stop()


def whole_path(work: Path, args: argparse.Namespace) -> None:
    print(f"whole path: {args.pages} pages of 1,000 public trades from the fake, a commit per page")
    if args.db in ("sqlite", "both"):
        sqlite_url = f"sqlite:///{work / 'whole.db'}"
        whole(work, sqlite_url, "SQLite", args.pages, args.rounds, args.profile, args.before)
    if args.db in ("postgresql", "both"):
        from tests.conftest import PostgresServer

        server = PostgresServer()
        try:
            whole(
                work,
                server.new_database(),
                "PostgreSQL",
                args.pages,
                args.rounds,
                args.profile,
                args.before,
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
