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
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, ratio  # noqa: E402
from sqlalchemy import text  # noqa: E402

from collector.dashboard import Dashboard  # noqa: E402
from collector.jobfile import load  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.testing.portfolio import fill_hourly  # noqa: E402

NOW = datetime(2026, 11, 29, tzinfo=UTC)
JOBS = """database: {url}
kraken: {{key: k, secret: '{secret}'}}
jobs:
  prices: {{method: Ticker, params: {{pair: XBTUSD}}, every: 1h}}
  balances: {{method: Balance, cron: '0 * * * *'}}
"""


def bench(name: str, url: str, hours: int, rounds: int, folder: Path) -> None:
    store = Store.from_url(url)
    try:
        store.upgrade()
        started = time.perf_counter()
        fill_hourly(store.engine, end=NOW, hours=hours, assets=10)
        print(f"{name}: filled {hours:,} snapshots in {time.perf_counter() - started:.0f}s")
        path = folder / f"{name}.yaml"
        path.write_text(JOBS.format(url=url, secret="A" * 86 + "=="))
        page = Dashboard(load(path), store, clock=lambda: NOW)
        since = NOW - timedelta(days=365)
        sizes: list[int] = []

        def render() -> float:
            began = time.perf_counter()
            html = page.render("year")
            took = time.perf_counter() - began
            sizes.append(len(html.encode()))
            return took * 1000

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

        found = alternate({"page": render, "SQL": sql}, rounds)
        r = ratio(found["page"], found["SQL"])
        med = statistics.median
        print(
            f"{name}: page (range year) {med(found['page']):,.0f} ms "
            f"({min(found['page']):,.0f}-{max(found['page']):,.0f}); the view's SQL alone "
            f"{med(found['SQL']):,.0f} ms ({min(found['SQL']):,.0f}-{max(found['SQL']):,.0f}); "
            f"page/SQL {r}; page {med(sizes) / 1e6:.2f} MB",
            flush=True,
        )
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24 * 365)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        if args.db in ("sqlite", "both"):
            bench("SQLite", f"sqlite:///{folder / 'c.db'}", args.hours, args.rounds, folder)
        if args.db in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import PostgresServer

            server = PostgresServer()
            try:
                bench("PostgreSQL", server.new_database(), args.hours, args.rounds, folder)
            finally:
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
