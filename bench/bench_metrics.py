"""What the metrics cost, counted in CPU instructions (valgrind's callgrind), not timed.

    python bench/bench_metrics.py          # about two minutes; needs valgrind

An instruction count does not depend on what else runs on the machine: it repeats to a fraction
of a percent, where a timing on this shared machine moves by tens. Each figure is the difference
between two runs of the same script under callgrind that differ only in what is counted (N more
runs, or S more scrapes), divided by N or S, so start-up and set-up cancel.

1. Per run: a RunFinished and a BatchStored event through the metrics subscriber, 1,000 jobs.
2. Per scrape: the text of 1,000 jobs' series, each job having run (the scrape's work, without
   the HTTP around it).

Beside each, in the same run: the same job series kept the generic prometheus_client way
(labelled Counter, Histogram and Gauge children looked up per job, ``generate_latest``), as the
metrics were kept before.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOBS = 1000
RUNS = 20_000
SCRAPES = 5


class Generic:
    """The job series as prometheus_client's labelled metrics keep them (the reference)."""

    def __init__(self, events: object) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from collector.events import BatchStored, RunFinished
        from collector.metrics import DURATION_BUCKETS

        self.registry = r = CollectorRegistry()
        self.runs = Counter("collector_runs", "Runs", ["job", "status"], registry=r)
        self.last = Gauge("collector_last_success_timestamp_seconds", "Last", ["job"], registry=r)
        self.duration = Histogram(
            "collector_run_duration_seconds",
            "Duration",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.attempts = Counter("collector_attempts", "Calls", ["job"], registry=r)
        self.rows = Counter("collector_rows_written", "Rows", ["table"], registry=r)
        self.series: dict[str, tuple] = {}
        events.subscribe(RunFinished, self.finished)  # type: ignore[attr-defined]
        events.subscribe(BatchStored, self.stored)  # type: ignore[attr-defined]

    def finished(self, event) -> None:  # type: ignore[no-untyped-def]
        record = event.record
        series = self.series.get(record.job)
        if series is None:
            series = self.series[record.job] = (
                self.attempts.labels(record.job),
                self.duration.labels(record.job),
                self.last.labels(record.job),
            )
        attempts, duration, last = series
        self.runs.labels(record.job, str(record.status)).inc()
        attempts.inc(record.attempts)
        duration.observe(max(0.0, (record.finished_at - record.started_at).total_seconds()))
        if record.status == "ok":
            last.set(record.finished_at.timestamp())

    def stored(self, event) -> None:  # type: ignore[no-untyped-def]
        for record in event.records:
            for table, rows in record.rows.items():
                if rows:
                    self.rows.labels(table).inc(len(rows))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def worker(side: str, runs: int, scrapes: int) -> None:
    """Set up ``side`` with 1,000 jobs that each ran once, then count ``runs`` and ``scrapes``."""
    from prometheus_client import disable_created_metrics

    from collector.events import BatchStored, Events, RunFinished
    from collector.metrics import Metrics
    from collector.records import RunRecord

    disable_created_metrics()
    events = Events()
    metrics: Metrics | Generic = (
        Metrics(events, pending=lambda: 0, spooled=lambda: 0) if side == "ours" else Generic(events)
    )
    now = datetime.now(UTC)
    records = [
        RunRecord(f"j{i}", "Time", {}, now, now, now + timedelta(milliseconds=3 + i % 500))
        for i in range(JOBS)
    ]
    finished = [RunFinished(r) for r in records]
    stored = [BatchStored([r]) for r in records]
    for i in range(JOBS):
        events.publish(finished[i])
        events.publish(stored[i])
    for i in range(runs):
        events.publish(finished[i % JOBS])
        events.publish(stored[i % JOBS])
    for _ in range(scrapes):
        metrics.render()


def count(side: str, runs: int, scrapes: int) -> int:
    """Instructions of one worker run under callgrind."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--worker",
            side,
            str(runs),
            str(scrapes),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr[-2000:]
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "RUNS", "SCRAPES"))
    args = parser.parse_args()
    if args.worker:
        side, runs, scrapes = args.worker
        worker(side, int(runs), int(scrapes))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    plan = [
        (side, n, s) for side in ("ours", "generic") for n, s in ((0, 0), (RUNS, 0), (0, SCRAPES))
    ]
    with ThreadPoolExecutor(2) as pool:
        got = dict(zip(plan, pool.map(lambda p: count(*p), plan), strict=True))
    print(f"metrics' cost in CPU instructions (callgrind), {JOBS:,} jobs")
    print(f"{'':34}{'ours':>14}{'generic':>14}  generic/ours")
    per = {}
    for what, key, n in (
        ("per run (RunFinished + BatchStored)", (RUNS, 0), RUNS),
        ("per scrape", (0, SCRAPES), SCRAPES),
    ):
        per[what] = {
            side: (got[(side, *key)] - got[(side, 0, 0)]) / n for side in ("ours", "generic")
        }
        ours, generic = per[what]["ours"], per[what]["generic"]
        print(f"  {what:<32}{ours:>14,.0f}{generic:>14,.0f}  {generic / ours:.1f}x")


if __name__ == "__main__":
    main()
