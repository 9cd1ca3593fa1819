"""The dashboard on a year of hourly snapshots of 10 assets, beside a read of the table portfolio_value.

    python bench/bench_dashboard.py                  # SQLite and PostgreSQL (initdb, as the tests)
    python bench/bench_dashboard.py --db sqlite --hours 2160        # a quick look

The database is filled once (``collector.testing.portfolio.fill_hourly``: 8,760 Balance runs of
10 assets, a Ticker run of their 8 pairs before each, one asset through XBT, one staked). Each
round times, in turn (``bench/rounds.py``), the page of the range ``year`` as ``collector
dashboard`` renders it (every job's state, the portfolio's values and a price chart per pair, all
from the database) and the SQL a user would run for the same chart (a table since 0011, kept by
the store, so this reads what was valued when the rows were stored): ``SELECT taken_at, value,
unpriced FROM portfolio_value WHERE taken_at >= now - 1 year``. The page's size and the points
its chart draws are counted, not timed. Targets (issue 20): render <= 1 s, page <= 2 MB.

``--jobs`` and ``--pairs`` (issue 29: 5,000 and 1,000) add to the job file that many jobs
beside the two above, one Ticker job a pair for ``--pairs`` of them (each a run a week over the
year, its pair's ticker row in it: a thousand pairs priced) and ``Time`` jobs for the rest
(a run each), as a large service's database holds them. The tables are then analyzed (``ANALYZE``),
as autovacuum keeps a database in use: a page read right after a bulk load would be planned
without statistics.

``--before DIR`` (a checkout of an earlier commit, e.g. ``git archive <commit> | tar -x -C DIR``)
renders the same page with that checkout's collector as a third side, in a process of its own
kept for the run (its render timed there, as this one's is here), and says whether both pages
are the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, ratio, spread  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402

from collector.dashboard import Dashboard  # noqa: E402
from collector.datasets.market import ticker  # noqa: E402
from collector.jobfile import load  # noqa: E402
from collector.schema import runs  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.testing.portfolio import fill_hourly  # noqa: E402

NOW = datetime(2026, 11, 29, tzinfo=UTC)
JOBS = """database: {url}
kraken: {{key: k, secret: '{secret}'}}
jobs:
  prices: {{method: Ticker, params: {{pair: XBTUSD}}, every: 1h}}
  balances: {{method: Balance, cron: '0 * * * *'}}
"""


def many(url: str, jobs: int, pairs: int) -> str:
    """``jobs`` more jobs in the database (and their lines for the job file): ``pairs`` Ticker
    jobs of a pair each, a run a week with its ticker row; ``Time`` jobs for the rest."""
    engine = Store.from_url(url).engine
    lines = []
    price = {k: "1.5" for k in ("ask", "bid", "last", "vwap_24h", "open")}
    price |= {"low_24h": "1", "high_24h": "2", "volume_24h": "9", "trades_24h": 1}
    run_id = 10_000_000
    with engine.begin() as conn:
        run_rows: list[dict] = []
        ticker_rows: list[dict] = []
        for i in range(jobs):
            name = f"j{i:05d}"
            if i < pairs:
                lines.append(
                    f"  {name}: {{method: Ticker, params: {{pair: AAA{i:04d}USD}}, every: 168h}}"
                )
                times = [NOW - timedelta(weeks=w, hours=1) for w in range(52)]
            else:
                lines.append(f"  {name}: {{method: Time, every: 1h}}")
                times = [NOW - timedelta(minutes=30)]
            for at in times:
                run_id += 1
                run_rows.append(
                    {
                        "id": run_id,
                        "job": name,
                        "method": "Ticker" if i < pairs else "Time",
                        "params": {},
                        "status": "ok",
                        "scheduled_at": at,
                        "started_at": at,
                        "finished_at": at,
                        "attempts": 1,
                        "pages": 1,
                        "new_rows": int(i < pairs),
                    }
                )
                if i < pairs:
                    ticker_rows.append(
                        {"run_id": run_id, "pair": f"AAA{i:04d}USD", "taken_at": at} | price
                    )
        for k in range(0, len(run_rows), 5000):
            conn.execute(insert(runs), run_rows[k : k + 5000])
        for k in range(0, len(ticker_rows), 5000):
            conn.execute(insert(ticker), ticker_rows[k : k + 5000])
    engine.dispose()
    return "\n".join(lines) + "\n" if lines else ""


#: The earlier checkout's page, rendered in a process of its own (``--before``): a line in (the
#: range), a line out (milliseconds, bytes, the page's SHA-256, its statements, its CPU ms).
BEFORE = """
import hashlib, sys, time
from datetime import datetime
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import collector
from sqlalchemy import event
from collector.dashboard import Dashboard
from collector.jobfile import load
from collector.store import Store
assert collector.__file__.startswith(sys.argv[1]), collector.__file__
now = datetime.fromisoformat(sys.argv[4])
store = Store.from_url(sys.argv[2])
seen = []
event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(1))
page = Dashboard(load(Path(sys.argv[3])), store, clock=lambda: now)
for line in sys.stdin:
    seen.clear()
    began, cpu = time.perf_counter(), time.process_time()
    html = page.render(line.strip()).encode()
    took, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(took * 1000, len(html), hashlib.sha256(html).hexdigest(), len(seen), cpu * 1000, flush=True)
"""


def bench(
    name: str,
    url: str,
    hours: int,
    rounds: int,
    folder: Path,
    jobs: int = 0,
    pairs: int = 0,
    before: Path | None = None,
) -> None:
    store = Store.from_url(url)
    try:
        store.upgrade()
        started = time.perf_counter()
        fill_hourly(store.engine, end=NOW, hours=hours, assets=10)
        more = many(url, jobs, pairs)
        with store.engine.begin() as conn:  # as autovacuum would have, in a database in use
            conn.exec_driver_sql("ANALYZE")
        print(
            f"{name}: filled {hours:,} snapshots, {jobs:,} more jobs ({pairs:,} pairs priced) "
            f"in {time.perf_counter() - started:.0f}s"
        )
        path = folder / f"{name}.yaml"
        path.write_text(JOBS.format(url=url, secret="A" * 86 + "==") + more)
        page = Dashboard(load(path), store, clock=lambda: NOW)
        since = NOW - timedelta(days=365)
        sizes: list[int] = []
        digests: dict[str, set[str]] = {"page": set(), "before": set()}
        before_sizes: list[int] = []
        statements: dict[str, list[int]] = {"page": [], "before": []}
        cpus: dict[str, list[float]] = {"page": [], "before": []}
        seen: list[int] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(1))

        def render() -> float:
            seen.clear()
            began, cpu = time.perf_counter(), time.process_time()
            html = page.render("year").encode()
            took = time.perf_counter() - began
            cpus["page"].append((time.process_time() - cpu) * 1000)
            sizes.append(len(html))
            digests["page"].add(hashlib.sha256(html).hexdigest())
            statements["page"].append(len(seen))
            return took * 1000

        worker = None
        if before is not None:
            worker = subprocess.Popen(
                [sys.executable, "-c", BEFORE, str(before), url, str(path), NOW.isoformat()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=before,
            )

        def earlier() -> float:
            assert worker is not None and worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("year\n")
            worker.stdin.flush()
            took, size, digest, count, cpu = worker.stdout.readline().split()
            cpus["before"].append(float(cpu))
            before_sizes.append(int(size))
            statements["before"].append(int(count))
            digests["before"].add(digest)
            return float(took)

        def sql() -> float:
            began = time.perf_counter()
            with store.engine.connect() as conn:
                got = conn.execute(
                    text(
                        "SELECT taken_at, value, unpriced FROM portfolio_value "
                        "WHERE taken_at >= :since ORDER BY taken_at"
                    ),
                    {"since": since if name == "PostgreSQL" else since.isoformat(" ")},
                ).all()
            took = time.perf_counter() - began
            assert len(got) == min(hours, 365 * 24), len(got)
            return took * 1000

        sides = {"page": render, "SQL": sql}
        if worker is not None:
            sides = {"page": render, "before": earlier, "SQL": sql}
        try:
            found = alternate(sides, rounds)
        finally:
            if worker is not None:
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait(timeout=60)
        r = ratio(found["page"], found["SQL"])
        med = statistics.median
        print(
            f"{name}: page (range year) {spread(found['page'])} ms; the view's SQL alone "
            f"{spread(found['SQL'])} ms; page/SQL {r}; page {med(sizes) / 1e6:.2f} MB, "
            f"{max(statements['page'])} statements, CPU {spread(cpus['page'])} ms",
            flush=True,
        )
        if worker is not None:
            same = digests["page"] == digests["before"] and len(digests["page"]) == 1
            print(
                f"{name}: before ({before}) {spread(found['before'])} ms, "
                f"{med(before_sizes) / 1e6:.2f} MB, {max(statements['before'])} statements, CPU "
                f"{spread(cpus['before'])} ms; "
                "before/SQL "
                f"{ratio(found['before'], found['SQL'])}; now/before "
                f"{ratio(found['page'], found['before'])}; "
                f"{'the same page' if same else 'THE PAGES DIFFER'}",
                flush=True,
            )
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24 * 365)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=0, help="more jobs (issue 29: 5000)")
    parser.add_argument("--pairs", type=int, default=0, help="of them, Ticker jobs (1000)")
    parser.add_argument(
        "--before", type=Path, help="a checkout of an earlier commit: its page as a side too"
    )
    args = parser.parse_args()
    before = args.before.resolve() if args.before else None
    more = (args.jobs, args.pairs, before)
    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        if args.db in ("sqlite", "both"):
            bench("SQLite", f"sqlite:///{folder / 'c.db'}", args.hours, args.rounds, folder, *more)
        if args.db in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import PostgresServer

            server = PostgresServer()
            try:
                bench("PostgreSQL", server.new_database(), args.hours, args.rounds, folder, *more)
            finally:
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
