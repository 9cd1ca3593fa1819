"""Soak: the service against the fake with faults on and fast intervals, for 50,000+ runs.

    python bench/bench_soak.py            # about a minute
    python bench/bench_soak.py --jobs 1000 --every 10000   # issue 29's: 1,000 jobs, 50k runs
    PYTHONPATH=CHECKOUT python bench/bench_soak.py ...     # another checkout's collector

Reports RSS, open file descriptors and threads at the start and every 10,000 runs (``--every``),
the seconds since the start, the memory SQLite holds (its page caches, which fill as the database
grows: bounded, 2 MB a connection by default), and the SQLite database's size per 10,000 runs. ``--jobs`` sets the
public jobs (100 by default); their interval grows with them, ``jobs`` ms, so about 1,000 runs a
second are offered whatever their number. All of them should stay flat, apart from the data itself.
Faults (HTTP 500/502/520, resets, truncated JSON, slow answers, Kraken errors) are injected ten
times a second through the fake's control endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import RAISED, job_file, rss_mb, start_fake

import collector
from collector.jobfile import load
from collector.service import Service

#: RSS growth (MB) after the first --every runs under which a soak counts as flat: what is left
#: once the database's caches and the allocator's arenas are at their bounds is noise.
FLAT_MB = 2.0

FAULTS = [
    "kind=http_500",
    "kind=http_502",
    "kind=http_520",
    "kind=reset",
    "kind=truncated",
    "kind=not_json",
    "kind=slow&delay=0.3",
    "kind=kraken_error&error=EService:Busy",
    "kind=kraken_error&error=EAPI:Invalid%20nonce",
    "kind=kraken_error&error=EGeneral:Invalid%20arguments",
]


def threads() -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))  # type: ignore[union-attr]


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sqlite_mb() -> float | None:
    """The memory SQLite holds in this process (its page caches: up to ``cache_size``, 2 MB by
    default, per connection), from the library the ``sqlite3`` module uses; None where that
    library can't be loaded by name."""
    import ctypes
    import sqlite3  # noqa: F401 - the library loaded by the module is the one asked

    try:
        library = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return library.sqlite3_memory_used() / 1e6


def sqlite_text() -> str:
    used = sqlite_mb()
    return "-" if used is None else f"{used:.1f}"


def db_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=100, help="public jobs (Time), 1 to 10,000")
    parser.add_argument("--every", type=int, default=10_000, help="a line every this many runs")
    args = parser.parse_args()
    if not 1 <= args.jobs <= 10_000 or not 1_000 <= args.every <= args.runs:
        parser.error("--jobs must be 1 to 10000, --every 1000 to --runs")
    logging.basicConfig(level=logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="collector-soak-"))
    os.chdir(workdir)
    proc, url, key_file = start_fake(workdir, "none")
    stop = threading.Event()

    def inject() -> None:
        while not stop.wait(0.1):
            req = urllib.request.Request(
                f"{url}/_fake/fault?{random.choice(FAULTS)}", method="POST"
            )
            with contextlib.suppress(OSError):  # a fault we could not inject is not the service's
                urllib.request.urlopen(req, timeout=2).read()

    injector = threading.Thread(target=inject, daemon=True)
    db = workdir / "soak.db"
    jobs = [f"p{i}: {{method: Time, every: {args.jobs / 1000:g}s}}" for i in range(args.jobs)]
    jobs += [
        f"b{i}: {{method: {m}, every: 0.5s}}"
        for i, m in enumerate(["Balance", "Ledgers", "TradeBalance", "BalanceEx", "OpenOrders"])
    ]
    try:
        service = Service(load(job_file(workdir, url, key_file, f"sqlite:///{db}", jobs, RAISED)))
        injector.start()
        loaded = rss_mb()
        service.start()
        while service.writer.written < 1000:
            time.sleep(0.1)
        start = {
            "rss": rss_mb(),
            "fds": fds(),
            "threads": threads(),
            "db": db_mb(db),
            "t": time.time(),
        }
        print(f"{len(jobs)} jobs; RSS {loaded:.1f} MB with them loaded, before the first run")
        print(
            f"{'runs':>8} {'seconds':>8} {'RSS MB':>7} {'SQLite MB':>10} {'fds':>5} "
            f"{'threads':>8} {'DB MB':>7} {'MB/10k runs':>12}"
        )
        print(
            f"{service.writer.written:8,} {0:8.0f} {start['rss']:7.1f} {sqlite_text():>10} "
            f"{start['fds']:5} {start['threads']:8} {start['db']:7.1f} {'':>12}"
        )
        mark, last_db, last_runs = args.every, start["db"], service.writer.written
        marks: list[tuple[int, float]] = []  # (runs, RSS MB) at each line
        while mark <= args.runs:
            while service.writer.written < mark:
                time.sleep(0.2)
            size, written, rss = db_mb(db), service.writer.written, rss_mb()
            per = (size - last_db) / (written - last_runs) * 10_000
            marks.append((written, rss))
            print(
                f"{written:8,} {time.time() - start['t']:8.0f} {rss:7.1f} "
                f"{sqlite_text():>10} {fds():5} {threads():8} {size:7.1f} {per:12.2f}"
            )
            mark, last_db, last_runs = mark + args.every, size, written
        elapsed = time.time() - start["t"]
        stop.set()
        service.stop()
    finally:
        stop.set()
        proc.terminate()
        proc.wait()
    import sqlite3

    c = sqlite3.connect(db)
    statuses = dict(c.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    retried = c.execute("SELECT count(*) FROM runs WHERE attempts > 1").fetchone()[0]
    total = sum(statuses.values())
    print(
        f"\n{total:,} runs in {elapsed:.0f} s; by status: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items()))
        + f"; {retried:,} needed a retry"
    )
    # Flat (docs/benchmarks.md, "Soak"): RSS grows less than FLAT_MB from the first line after
    # the start to the last, i.e. over the last 40,000 runs of 50,000 at the default --every.
    (first_runs, first_rss), (last_runs, last_rss) = marks[0], marks[-1]
    grew = last_rss - first_rss
    print(
        f"RSS {first_rss:.1f} -> {last_rss:.1f} MB from {first_runs:,} to {last_runs:,} runs: "
        f"{grew:+.1f} MB ({'flat' if grew < FLAT_MB else 'NOT flat'}: < {FLAT_MB:g} MB); "
        f"the collector of {Path(collector.__file__).parent.parent}"
    )


if __name__ == "__main__":
    main()
