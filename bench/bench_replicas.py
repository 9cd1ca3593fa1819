"""How far one PostgreSQL goes: rows/s with several collectors writing into it at once.

    python bench/bench_replicas.py          # about two minutes; needs initdb (as the tests do)

Each collector is a process of its own (one account each, as "one active collector per account"
makes them), writing pages of 1,000 public trades through ``Store.write`` (COPY and one upsert, a
run row per page, the new-row count), a commit per page, into empty tables. 1, 2 and 4 collectors
alternate over 5 rounds (bench/rounds.py); reported: the total rows/s of each, and the ratios to
one collector, each the median of the rounds' own ratios with their min-max. The machine has 2
cores, shared by the collectors and PostgreSQL, so this is a floor for a real server.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_datasets import trade_pages  # noqa: E402
from rounds import ROUNDS, alternate, ratio, spread  # noqa: E402

from collector.records import Prepared  # noqa: E402
from collector.store import Store  # noqa: E402


def collector(url: str, pair: str, pages: int, ready, start, out) -> None:  # type: ignore[no-untyped-def]
    records = trade_pages(pages)
    for record in records:  # each collector its own pair: no key is shared
        record.job = f"t-{pair}"
        rows = record.rows["trades"]  # a Trades page: Prepared tuples of stored text
        at = rows.columns.index("pair")
        record.rows["trades"] = Prepared(
            rows.columns, ((*r[:at], pair, *r[at + 1 :]) for r in rows)
        )
    store = Store.from_url(url)
    store.write([])  # connected before the clock starts
    ready.put(pair)
    start.wait()
    began = time.perf_counter()
    for record in records:
        store.write([record])
    out.put((sum(len(r.rows["trades"]) for r in records), began, time.perf_counter()))
    store.dispose()


def run(url: str, count: int, pages: int) -> float:
    """Total rows/s of ``count`` collectors writing ``pages`` pages each into empty tables."""
    store = Store.from_url(url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE trades, cursors, runs CASCADE")
    store.dispose()
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=collector, args=(url, f"BENCH{count}X{i}", pages, ready, start, out))
        for i in range(count)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every process has built its pages and connected
        ready.get(timeout=120)
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    rows = sum(r[0] for r in results)
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return rows / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=40, help="pages per collector")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    from tests.conftest import PostgresServer

    server = PostgresServer()
    try:
        url = server.new_database()
        store = Store.from_url(url)
        store.upgrade()
        store.dispose()
        print(
            f"{args.pages} pages of 1,000 trades per collector, one PostgreSQL, 2-core machine, "
            f"{args.rounds} rounds (rows/s)"
        )
        sides = alternate(
            {f"{n} collector(s)": lambda n=n: run(url, n, args.pages) for n in (1, 2, 4)},
            args.rounds,
        )
    finally:
        server.stop()
    one = sides["1 collector(s)"]
    for name, rates in sides.items():
        print(f"  {name}: {spread(rates)} rows/s   {ratio(rates, one)} one collector")


if __name__ == "__main__":
    main()
