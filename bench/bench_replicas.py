"""How far one PostgreSQL goes: rows/s with several collectors writing into it at once.

    python bench/bench_replicas.py          # about a minute; needs initdb (as the tests do)

Each collector is a process of its own (one account each, as "one active collector per account"
makes them), writing pages of 1,000 public trades through ``Store.write`` (upserts, a run row per
page, the new-row count), a commit per page. Reported for 1, 2 and 4 collectors: the total rows/s
and the ratio to one collector measured in the same run. The machine has 2 cores, shared by the
collectors and PostgreSQL, so this is a floor for a real server.
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

from collector.store import Store  # noqa: E402


def collector(url: str, pair: str, pages: int, start: multiprocessing.Event, out) -> None:
    records = trade_pages(pages)
    for record in records:  # each collector its own pair: no key is shared
        record.job = f"t-{pair}"
        for row in record.rows["trades"]:
            row["pair"] = pair
    store = Store.from_url(url)
    start.wait()
    began = time.perf_counter()
    for record in records:
        store.write([record])
    out.put((sum(len(r.rows["trades"]) for r in records), began, time.perf_counter()))
    store.dispose()


def run(url: str, count: int, pages: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=collector, args=(url, f"BENCH{count}X{i}", pages, start, out))
        for i in range(count)
    ]
    for p in procs:
        p.start()
    time.sleep(3)  # let every process build its pages before the clock starts
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
    args = parser.parse_args()
    from tests.conftest import PostgresServer

    server = PostgresServer()
    try:
        url = server.new_database()
        store = Store.from_url(url)
        store.upgrade()
        store.dispose()
        print(f"{args.pages} pages of 1,000 trades per collector, one PostgreSQL, 2-core machine")
        one = None
        for count in (1, 2, 4):
            rate = run(url, count, args.pages)
            one = one or rate
            print(f"  {count} collector(s): {rate:>9,.0f} rows/s   {rate / one:.2f}x one collector")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
