"""Verification's cost: a million ledger entries checked beside a plain scan of the same table.

    python bench/bench_verify.py                   # SQLite and PostgreSQL (initdb, as the tests)
    python bench/bench_verify.py --entries 100000 --db sqlite      # a quick look

The data is the fake's coherent account (its fills, orders and a balance snapshot of every asset
every 1,000 entries), written through ``Store.write`` as runs would write it.

1. **The whole check** (``collector verify``): the ledger's chains with the snapshots, then also the
   fills and the orders, each beside a plain scan of the ledger (``SELECT`` of the same columns
   through the same types, every row read). Each side runs in a fresh process (its peak RSS is
   its own); the sides alternate over the rounds (``bench/rounds.py``), ratios are the medians of
   the rounds' own ratios, with their min-max.
2. **The incremental check** after a run (what the service does): with the million verified, runs
   of 100, 1,000 and 10,000 new entries; the rows it reads and the statements it runs beside the
   run's new entries.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, ratio  # noqa: E402
from sqlalchemy import select  # noqa: E402

from collector import verify  # noqa: E402
from collector.datasets import Ledger, MyTrades, Orders  # noqa: E402
from collector.datasets.history import ledger  # noqa: E402
from collector.records import RunRecord  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.testing.account import Account  # noqa: E402

logging.basicConfig(level=logging.ERROR)
T0 = 1_790_000_000.0
CHAIN = verify.Scope("default", ("l",), from_start=True)
FULL = verify.Scope("default", ("l",), ("t",), ("o",), from_start=True)
SIDES = ("scan", "raw", "chain", "full")
#: The ledger's columns verification reads.
COLUMNS = ("asset", "ledger_id", "time", "amount", "fee", "balance", "run_id")
#: With ``--before DIR`` (a checkout of an earlier commit), its own chain and full check too.
BEFORE = ("chain-before", "full-before")


# -- the data -----------------------------------------------------------------------------------


def _record(
    job: str, method: str, dataset: str | None, rows: dict, at: float, done: float | None = None
) -> RunRecord:
    when = _utc(at)
    cursor = None if done is None else {"done": done, "window": None}
    return RunRecord(
        job,
        method,
        {},
        when,
        when,
        when,
        rows=rows,
        dataset=dataset,
        cursor=cursor,
        account="default",
    )


def load(url: str, account: Account) -> None:
    """Write the account's histories as runs would, with a balance snapshot of every asset about
    every 1,000 entries (a second after a time's entries)."""
    store = Store.from_url(url)
    store.upgrade()
    history = account.ledger
    last = history.keys[-1]
    done = last + 120  # the ledger's horizon (done less a minute) is past every entry
    reader = _record("l", "Ledgers", "ledger", {}, last)
    datasets = {"ledger": Ledger(), "my_trades": MyTrades(), "orders": Orders()}
    running: dict[str, Decimal] = {}
    batch: list[dict[str, Any]] = []
    i = 0
    while i < len(history):
        j = i
        while j < len(history) and history.keys[j] == history.keys[i]:
            j += 1
        group = history.entries[i:j]
        batch.extend(
            datasets["ledger"].entry(reader, lid, e)
            for lid, e in zip(history.ids[i:j], group, strict=True)
        )
        running.update(_ends(group))
        if len(batch) >= 1000 or j == len(history):
            final = j == len(history)
            page = {"ledger": batch}
            store.write([_record("l", "Ledgers", "ledger", page, last, done if final else None)])
            taken = history.keys[i] + 1
            snapshot = [
                {"asset": a, "amount": v, "job": "b", "taken_at": _utc(taken)}
                for a, v in running.items()
            ]
            store.write([_record("b", "Balance", None, {"balances": snapshot}, taken)])
            batch = []
        i = j
    for name, hist in (("my_trades", account.trades), ("orders", account.closed)):
        job, method = ("t", "TradesHistory") if name == "my_trades" else ("o", "ClosedOrders")
        rows = [
            datasets[name].entry(reader, txid, e)
            for txid, e in zip(hist.ids, hist.entries, strict=True)
        ]
        for k in range(0, len(rows), 10_000):
            final = k + 10_000 >= len(rows)
            page = {name: rows[k : k + 10_000]}
            store.write([_record(job, method, name, page, last, done if final else None)])
    store.dispose()


def _ends(group: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Each asset's balance after a time's entries, listed in any order: where their chain ends
    (the balance that is no entry's balance before)."""
    by_asset: dict[str, list[dict[str, Any]]] = {}
    for e in group:
        by_asset.setdefault(e["asset"], []).append(e)
    out = {}
    for asset, entries in by_asset.items():
        after = {Decimal(e["balance"]) for e in entries}
        before = {Decimal(e["balance"]) - Decimal(e["amount"]) + Decimal(e["fee"]) for e in entries}
        out[asset] = min(after - before or after)
    return out


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- one side, in a process of its own ---------------------------------------------------------


def _rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, in kB. (``ru_maxrss`` would not
    do: it keeps the parent's size from before the ``exec``.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(side: str, url: str) -> None:
    store = Store.from_url(url)
    with store.engine.connect():
        pass  # connected: the baseline includes the driver
    base = _rss_kb("VmRSS")
    started = time.perf_counter()
    if side == "raw":
        # The driver alone: the same SELECT's rows as tuples of what the database gives, no
        # column types (the floor of any reading in Python).
        rows = 0
        query = select(*(ledger.c[n] for n in COLUMNS))
        raw = store.engine.raw_connection()
        try:
            sql = str(query.compile(store.engine))
            cursor = (
                raw.cursor()
                if store.engine.dialect.name == "sqlite"
                else (raw.driver_connection.cursor(name="bench_raw"))
            )
            cursor.execute(sql)
            while batch := cursor.fetchmany(verify.BATCH):
                rows += len(batch)
            cursor.close()
        finally:
            raw.close()
        checked = {"rows": rows}
    elif side == "scan":
        rows = 0
        columns = (
            ledger.c.asset,
            ledger.c.ledger_id,
            ledger.c.time,
            ledger.c.amount,
            ledger.c.fee,
            ledger.c.balance,
            ledger.c.run_id,
        )
        with store.engine.connect() as conn:
            stream = conn.execution_options(stream_results=True, yield_per=verify.BATCH)
            for _ in stream.execute(select(*columns)):
                rows += 1
        checked = {"rows": rows}
    else:
        (report,) = verify.verify(store.engine, [CHAIN if side == "chain" else FULL])
        assert report.ok, [f.line() for f in report.findings[:5]]
        checked = {"entries": report.entries, "snapshots": report.snapshots, "fills": report.fills}
    seconds = time.perf_counter() - started
    peak = _rss_kb("VmHWM")
    store.dispose()
    print(json.dumps({"seconds": seconds, "base_kb": base, "peak_kb": peak, **checked}))


#: ``--before``'s checkout, whose bench runs its sides.
_BEFORE: list[Path] = []


def measure(side: str, url: str) -> dict[str, Any]:
    script = Path(__file__)
    if side.endswith("-before"):
        side, script = side.removesuffix("-before"), _BEFORE[0] / "bench" / "bench_verify.py"
    out = subprocess.run(
        [sys.executable, str(script), "--child", side, "--url", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def whole(label: str, url: str, rounds: int) -> None:
    """The three sides in alternating rounds (``bench/rounds.py``): each side's time, its ratio
    to the scan (the median of the rounds' own ratios, with their min-max), its peak RSS."""
    sides = SIDES + (BEFORE if _BEFORE else ())
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}

    def side(name: str) -> Callable[[], float]:
        def once() -> float:
            runs[name].append(measure(name, url))
            return float(runs[name][-1]["seconds"])

        return once

    print(f"  {label}:")
    seconds = alternate({name: side(name) for name in sides}, rounds)
    first = runs["full"][0]
    print(
        f"  {label}: {first['entries']:,} entries, {first['snapshots']:,} snapshot rows, "
        f"{first['fills']:,} fills; medians (min-max) of {rounds} rounds"
    )
    for name, what in (
        ("scan", "plain scan of the ledger"),
        ("raw", "the driver's scan, no types"),
        ("chain", "chains + snapshots"),
        ("full", "+ fills and orders"),
        ("chain-before", "chains + snapshots, before"),
        ("full-before", "+ fills and orders, before"),
    ):
        if name not in runs:
            continue
        peak = statistics.median(r["peak_kb"] for r in runs[name]) / 1024
        over = statistics.median(r["peak_kb"] - r["base_kb"] for r in runs[name]) / 1024
        times = seconds[name]
        print(
            f"    {what:<26} {statistics.median(times):6.1f} s ({min(times):.1f}-{max(times):.1f})"
            f"  {ratio(times, seconds['scan']).fmt()} the scan"
            f"  {ratio(times, seconds['raw']).fmt()} the driver's"
            f"   peak RSS {peak:6.1f} MB (+{over:4.1f} MB over the process before it)"
        )
    for name in ("chain", "full") if _BEFORE else ():
        print(f"    {name} now / before: {ratio(seconds[name], seconds[name + '-before']).fmt()}")


# -- the incremental check ----------------------------------------------------------------------


def incremental(label: str, url: str, account: Account, size: int) -> None:
    store = Store.from_url(url)
    started = time.perf_counter()
    report = verify.advance(store.engine, CHAIN)
    first = time.perf_counter() - started
    assert report.ok and report.entries == size, (report.entries, size)
    print(f"  {label}: the first pass (every entry): {first:.1f} s, {report.rows:,} rows read")
    t = account.ledger.keys[size - 1]
    for n in (100, 1000, 10_000):
        before = len(account.ledger)
        for _ in range(n):
            t += 2.0  # an entry every 2 s
            account.take_ledger(1, t)
        new = account.ledger.entries[before:]
        reader = _record("l", "Ledgers", "ledger", {}, t)
        rows = [
            Ledger().entry(reader, i, e)
            for i, e in zip(account.ledger.ids[before:], new, strict=True)
        ]
        store.write([_record("l", "Ledgers", "ledger", {"ledger": rows}, t, done=t + 120)])
        began = time.perf_counter()
        report = verify.advance(store.engine, CHAIN)
        took = time.perf_counter() - began
        assert report.ok, [f.line() for f in report.findings]
        print(
            f"    a run of {n:>6,} new entries: the pass read {report.rows:>6,} rows in "
            f"{report.statements} statements, {took * 1000:7.1f} ms "
            f"({report.rows / n:.2f} rows read per new entry)"
        )
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-incremental", dest="incremental", action="store_false")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--before", type=Path, help="a checkout of an earlier commit: its checks as sides too"
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url)
        return
    if args.before:
        _BEFORE.append(args.before.resolve())
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, piped
    began = time.perf_counter()
    account = Account(t0=T0, size=args.entries, rates={})
    print(
        f"the fake's account: {args.entries:,} ledger entries, {len(account.trades):,} fills, "
        f"{len(account.closed):,} orders (made in {time.perf_counter() - began:.0f} s)"
    )
    server = None
    urls = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    if args.db in ("sqlite", "both"):
        urls.append(("SQLite", f"sqlite:///{workdir / 'verify.db'}"))
    if args.db in ("postgresql", "both"):
        from tests.conftest import PostgresServer

        server = PostgresServer()
        urls.append(("PostgreSQL", server.new_database()))
    try:
        for label, url in urls:
            began = time.perf_counter()
            load(url, account)
            print(f"{label}: loaded in {time.perf_counter() - began:.0f} s")
        print("1. the whole check (collector verify), beside a plain scan of the ledger")
        for label, url in urls:
            whole(label, url, args.rounds)
        print(
            "2. the incremental check after a run (the service's), with the whole ledger verified"
        )
        for label, url in urls:
            if args.incremental:
                incremental(label, url, Account(t0=T0, size=args.entries, rates={}), args.entries)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
