"""`collector export` of a million public trades beside the databases' own CSV dumps.

    python bench/bench_export.py                   # SQLite and PostgreSQL (initdb, as the tests)
    python bench/bench_export.py --rows 100000 --db sqlite        # a quick look
    python bench/bench_export.py --start 9 --before CHECKOUT     # the start alone, ms

The table is filled once through ``Store.write`` (as runs would write it). Each round exports it
with ``collector export trades JOBFILE -o FILE`` and with the reference, each in a process of its
own (its peak RSS and its CPU seconds are its own, from ``wait4``; the CPU moves less with
the machine's load than the wall): ``sqlite3 -csv -header`` of ``SELECT * FROM
trades``, and ``psql``'s ``\\copy trades TO FILE WITH (FORMAT csv, HEADER)``. The sides alternate
over the rounds (``bench/rounds.py``); a ratio is the median of the rounds' own ratios, with
their min-max. The reference processes are C; on PostgreSQL both sides have the server write the
CSV (COPY), collector's with every value formatted as text in the query.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, ratio, spread  # noqa: E402

from collector.records import RunRecord  # noqa: E402
from collector.store import Store  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAIRS = ("XXBTZUSD", "XETHZUSD", "SOLUSD", "XXBTZEUR")
#: GNU time (Debian's ``time`` package), for each process's own peak RSS.
TIME = "/usr/bin/time"


def fill(url: str, count: int) -> None:
    """``count`` public trades, written as Trades runs of 10,000 rows."""
    store = Store.from_url(url)
    store.upgrade()
    try:
        for start in range(0, count, 10_000):
            rows = []
            for i in range(start, min(count, start + 10_000)):
                rows.append(
                    {
                        "pair": PAIRS[i % 4],
                        "trade_id": i,
                        "time": T0 + timedelta(microseconds=i * 250_137),
                        "price": Decimal(64000 + i % 9000) + Decimal(i % 97).scaleb(-1),
                        "volume": Decimal(i % 5_000_000 + 1000).scaleb(-8),
                        "side": "buy" if i % 3 else "sell",
                        "order_type": "limit" if i % 5 else "market",
                        "misc": "",
                    }
                )
            now = T0 + timedelta(seconds=start)
            run = RunRecord("trades", "Trades", {}, now, now, now)
            run.rows = {"trades": rows}
            store.write([run])
    finally:
        store.dispose()


def measure(
    cmd: list[str], out: Path | None = None, env: dict | None = None, cwd: Path | None = None
) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB, CPU seconds) of one process. The RSS and the CPU (user + system,
    less moved by other processes on the cores than the wall; the server's own on PostgreSQL not
    in it) are GNU time's (``%M``, ``%U``, ``%S``), which forks
    ``cmd`` from itself: a child of this Python process would count this process's pages, which
    it holds until it execs, in its own peak."""
    report = Path(tempfile.mkstemp(prefix="bench-rss-")[1])
    stdout = out.open("wb") if out is not None else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        subprocess.run(
            [TIME, "-f", "%M %U %S", "-o", str(report), *cmd],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            check=True,
        )
        took = time.perf_counter() - started
        peak_kb, user, system = report.read_text().split()[-3:]
    finally:
        if out is not None:
            stdout.close()  # type: ignore[union-attr]
        report.unlink()
    return took, int(peak_kb) / 1024, float(user) + float(system)


class ServerCPU:
    """The CPU seconds a PostgreSQL server's backends spent, from its postmaster's reaped
    children (``cutime`` + ``cstime``): a side's backends end with its process, and are counted
    once the postmaster has reaped them (waited for here: its children back to those it had)."""

    def __init__(self, data: str) -> None:
        self.pid = int(Path(data, "postmaster.pid").read_text().split()[0])

    def children(self) -> set[str]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return set(path.read_text().split())

    def seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def settled(self, before: set[str]) -> float:
        deadline = time.monotonic() + 10
        while self.children() - before and time.monotonic() < deadline:
            time.sleep(0.01)  # the backends' exit is the server's, not a state we can wait on
        return self.seconds()


def lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def run(
    name: str,
    url: str,
    reference: list[str],
    count: int,
    rounds: int,
    folder: Path,
    before: Path | None = None,
    server: ServerCPU | None = None,
) -> dict:
    jobs = folder / f"{name}.yaml"
    jobs.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    mine, theirs = folder / f"{name}-collector.csv", folder / f"{name}-reference.csv"
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "export", "trades", str(jobs), "-o", str(mine)]
    rss: dict[str, list[float]] = {"collector": [], "reference": [], "before": []}
    cpu: dict[str, list[float]] = {"collector": [], "reference": [], "before": []}
    served: dict[str, list[float]] = {"collector": [], "reference": [], "before": []}

    def side(which: str) -> float:
        if server is not None:
            backends, started = server.children(), server.seconds()
        if which == "collector":
            took, peak, used = measure(cmd, env=env, cwd=ROOT)
        elif which == "before":  # the earlier checkout's collector (python -m finds it first)
            took, peak, used = measure(cmd, env=env, cwd=before)
        else:
            out = None if "psql" in reference[0] else theirs
            took, peak, used = measure(reference, out, env)
        rss[which].append(peak)
        cpu[which].append(used)
        if server is not None:
            served[which].append(server.settled(backends) - started)
        return count / took

    print(f"{name}: {count:,} trades, {rounds} rounds", flush=True)
    sides = {"collector": lambda: side("collector"), "reference": lambda: side("reference")}
    if before is not None:
        sides["before"] = lambda: side("before")
    speeds = alternate(sides, rounds)
    assert lines(mine) == count + 1 and lines(theirs) == count + 1, "row counts differ"
    found = {
        "speeds": speeds,
        "rss": rss,
        "cpu": cpu,
        "server": served,
        "ratio": ratio(speeds["collector"], speeds["reference"]),
    }
    if before is not None:
        found["before"] = ratio(speeds["before"], speeds["reference"])
        found["now/before"] = ratio(speeds["collector"], speeds["before"])
    return found


def report(name: str, reference: str, found: dict) -> None:
    def fig(values: list[float], unit: str = "") -> str:
        return f"{statistics.median(values):,.0f}{unit} ({min(values):,.0f}-{max(values):,.0f})"

    s, r = found["speeds"], found["rss"]
    print(f"\n{name}")
    print(
        f"  collector export: {fig(s['collector'])} rows/s, peak RSS {fig(r['collector'], ' MB')}"
    )
    print(f"  {reference}: {fig(s['reference'])} rows/s, peak RSS {fig(r['reference'], ' MB')}")
    print(f"  collector / reference: {found['ratio']}")
    c = found["cpu"]
    print(
        f"  CPU seconds of each process: collector {statistics.median(c['collector']):.2f} "
        f"({min(c['collector']):.2f}-{max(c['collector']):.2f}), reference "
        f"{statistics.median(c['reference']):.2f}"
        + (f", before {statistics.median(c['before']):.2f}" if c["before"] else "")
    )
    if found["server"]["collector"]:
        v = found["server"]
        print(
            "  the server's CPU seconds for each: "
            + ", ".join(
                f"{side} {statistics.median(v[side]):.2f} ({min(v[side]):.2f}-{max(v[side]):.2f})"
                for side in ("collector", "reference", "before")
                if v[side]
            )
        )
    if "before" in found:
        print(f"  before: {fig(s['before'])} rows/s; before / reference: {found['before']}")
        print(f"  collector / before: {found['now/before']}")


def start(rounds: int, before: Path | None) -> None:
    """The start alone, in milliseconds of wall and of CPU (GNU time's, as above): ``collector
    export`` of an empty SQLite table, and ``collector --help``, each side a process of its own,
    alternating (this checkout, and ``before``'s when given)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-export-start-"))
    try:
        url = f"sqlite:///{folder / 'empty.db'}"
        store = Store.from_url(url)
        store.upgrade()
        store.dispose()
        jobs = folder / "jobs.yaml"
        jobs.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
        env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
        python = [sys.executable, "-m", "collector.cli"]
        cases = {
            "export of an empty table": ["export", "trades", str(jobs), "-o", str(folder / "o")],
            "--help": ["--help"],
        }
        checkouts = {"collector": ROOT, **({"before": before} if before else {})}
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        for case, args in cases.items():
            cpu: dict[str, list[float]] = {side: [] for side in checkouts}

            def side(where: Path, args: list[str] = args, cpu: list[float] = cpu) -> float:
                took, _, used = measure([*python, *args], env=env, cwd=where)
                cpu.append(used * 1000)
                return took * 1000

            print(case, flush=True)
            walls = alternate(
                {
                    name: functools.partial(side, where, cpu=cpu[name])
                    for name, where in checkouts.items()
                },
                rounds,
            )
            for name in checkouts:
                print(f"  {name}: wall {spread(walls[name])} ms, CPU {spread(cpu[name])} ms")
            if before:
                print(f"  collector / before, wall: {ratio(walls['collector'], walls['before'])}")
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--before", type=Path, help="an earlier checkout: its export as a side")
    parser.add_argument(
        "--start", type=int, metavar="ROUNDS", help="only the start: an empty export, --help"
    )
    args = parser.parse_args()
    # Each side's bytecode compiled first, as pip compiles an installed package's: a checkout
    # run with PYTHONDONTWRITEBYTECODE (this machine's shells) compiles every module each start.
    for checkout in (ROOT, args.before):
        if checkout is not None:
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", str(checkout / "collector")],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    if args.start:
        start(args.start, args.before)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        if args.db in ("sqlite", "both"):
            db = folder / "trades.db"
            url = f"sqlite:///{db}"
            started = time.perf_counter()
            fill(url, args.rows)
            print(f"filled SQLite in {time.perf_counter() - started:.0f}s", flush=True)
            cmd = [shutil.which("sqlite3") or "sqlite3", "-csv", "-header", str(db)]
            cmd.append("SELECT * FROM trades")
            report(
                "SQLite",
                "sqlite3 -csv",
                run("sqlite", url, cmd, args.rows, args.rounds, folder, args.before),
            )
        if args.db in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import PostgresServer, _pg_bin

            server = PostgresServer()
            try:
                url = server.new_database()
                started = time.perf_counter()
                fill(url, args.rows)
                print(f"filled PostgreSQL in {time.perf_counter() - started:.0f}s", flush=True)
                out = folder / "postgresql-reference.csv"
                psql = _pg_bin("psql") or "psql"
                dsn = url.replace("postgresql+psycopg://", "postgresql://")
                cmd = [psql, "-q", "-X", dsn, "-c"]
                cmd.append(f"\\copy trades TO '{out}' WITH (FORMAT csv, HEADER)")
                found = run(
                    "postgresql",
                    url,
                    cmd,
                    args.rows,
                    args.rounds,
                    folder,
                    args.before,
                    ServerCPU(server.data),
                )
                report("PostgreSQL", "psql \\copy", found)
            finally:
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
