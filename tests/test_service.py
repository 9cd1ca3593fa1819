"""The service end to end: fake exchange -> scheduler -> shared client -> rows, on both backends."""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

import collector
from collector.cli import main
from collector.datasets import Balances
from collector.jobfile import Config, load
from collector.records import RunRecord
from collector.retry import RetryPolicy
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

from .helpers import running, sigterm, wait_for


def job_file(
    tmp_path: Path,
    fake: FakeKraken,
    keypair: tuple[str, str],
    database_url: str,
    jobs: str,
    kraken_extra: str = "rate_limit: {max: 1000, decay: 1000}\n"
    "  public_rate_limit: {max: 1000, decay: 1000}",
    *,
    reference: bool = True,
) -> Path:
    """A job file for ``jobs`` against the fake; ``reference=False`` turns the service's own
    Assets and AssetPairs jobs off (for a test that counts every call and run)."""
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database_url}\nkraken:\n  url: {fake.url}\n"
        f"  key: {keypair[0]}\n  secret: {keypair[1]}\n  {kraken_extra}\njobs:\n"
        + textwrap.indent(textwrap.dedent(jobs).strip("\n"), "  ")
        + "\n"
        + ("" if reference else "reference: false\n")
    )
    return path


def rows(
    url: str,
    sql: str = "SELECT job, method, status, http_status, error, params, attempts "
    "FROM runs ORDER BY id",
) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


@pytest.fixture
def service_factory(tmp_path, fake, keypair, database_url):
    made: list[Service] = []

    def make(jobs: str, retry: RetryPolicy | None = None, **kw) -> tuple[Service, Config]:
        config = load(job_file(tmp_path, fake, keypair, database_url, jobs, **kw))
        service = Service(config, workers=4, retry=retry)
        made.append(service)
        return service, config

    yield make
    for service in made:
        if not service.stopping.is_set():
            service.stop()


FAULTS = [
    ("http_500", "http_error", 500, "api.kraken.com | 500: Internal server error"),
    ("http_502", "http_error", 502, "api.kraken.com | 502: Bad gateway"),
    ("http_520", "http_error", 520, "HTTP 520: api.kraken.com | 520: Web server is returning"),
    ("slow", "timeout", None, "Balance: timed out after 0.5 s"),
    ("reset", "connection_error", None, "Connection reset by peer"),
    ("truncated", "bad_response", 200, "Balance: answer is not JSON"),
    ("not_json", "bad_response", 200, "api.kraken.com | 200: Please wait"),
    ("kraken_error", "kraken_error", 200, "EService:Unavailable"),
]


def test_each_fault_is_one_row_and_the_service_goes_on(service_factory, fake, database_url) -> None:
    service, _ = service_factory(
        "balances: {method: Balance, every: 0.1s, timeout: 0.5s}",
        retry=RetryPolicy(max_attempts=1),
        reference=False,
    )  # one row per fault
    for kind, *_ in FAULTS:
        fake.inject(kind, method="Balance", delay=1.0)
    service.start()
    wait_for(lambda: service.writer.written >= len(FAULTS) + 3)
    service.stop()
    stored = rows(database_url)
    for (kind, status, http_status, error), row in zip(FAULTS, stored, strict=False):
        assert (row.status, row.http_status) == (status, http_status), kind
        assert error in row.error, (kind, row.error)
        assert "<html" not in row.error.lower() and len(row.error) < 400
    assert {r.status for r in stored[len(FAULTS) :]} == {"ok"}
    assert fake.calls["Balance"] == len(stored)  # every call is one row, none lost or doubled
    assert fake.state_changing_calls == 0


def test_balances_are_stored_exactly(service_factory, fake, database_url) -> None:
    service, _ = service_factory("""
        balance: {method: Balance, cron: "0 0 1 1 *"}
        balance_ex: {method: BalanceEx, cron: "0 0 1 1 *"}
    """)
    assert service.run_once()
    snapshot = rows(database_url, "SELECT job, asset, amount FROM balances ORDER BY job, asset")
    expected = sorted(_live_balance(fake).items())
    for job in ("balance", "balance_ex"):
        got = [(a, Decimal(str(v))) for j, a, v in snapshot if j == job]
        assert got == [(a, Decimal(v)) for a, v in expected]
    latest = rows(
        database_url,
        "SELECT asset, amount FROM balances WHERE run_id = "
        "(SELECT max(run_id) FROM balances) ORDER BY asset",
    )
    assert [a for a, _ in latest] == [a for a, _ in expected]


def _live_balance(fake: FakeKraken) -> dict[str, str]:
    return fake.result("Balance")


def test_empty_account_is_an_empty_snapshot_and_junk_amounts_a_failure(
    service_factory, fake, database_url
) -> None:
    service, _ = service_factory('b: {method: Balance, cron: "0 0 1 1 *"}', reference=False)
    fake.balance = None
    assert service.run_once()
    fake.balance = {"XXBT": "lots"}
    assert not service.run_once()
    stored = rows(database_url)
    assert [r.status for r in stored] == ["ok", "bad_response"]
    assert "amount of 'XXBT' is not a number" in stored[1].error
    assert rows(database_url, "SELECT count(*) FROM balances")[0][0] == 0


def balance_rows(method: str, result: object) -> list[tuple[str, Decimal]]:
    now = datetime.now(UTC)
    run = RunRecord("b", method, {}, scheduled_at=now, started_at=now, finished_at=now)
    return [(r["asset"], r["amount"]) for r in Balances().rows(run, result)]


def test_balance_rows_reject_floats_and_odd_shapes() -> None:
    assert balance_rows("Balance", {"ZUSD": "1.10"}) == [("ZUSD", Decimal("1.10"))]
    assert balance_rows("BalanceEx", {"ZUSD": {"balance": "2.5", "hold_trade": "0"}}) == [
        ("ZUSD", Decimal("2.5"))
    ]
    for bad in ({"ZUSD": 1.1}, {"ZUSD": "NaN"}, ["ZUSD"], {"ZUSD": None}):
        with pytest.raises(ValueError):
            balance_rows("Balance", bad)


def test_params_never_hold_otp(service_factory, fake, database_url) -> None:
    service, _ = service_factory(
        'b: {method: TradeBalance, cron: "0 0 1 1 *", params: {otp: "918273", asset: ZUSD}}',
        reference=False,
    )
    assert service.run_once()
    (row,) = rows(database_url)
    assert row.params in ({"asset": "ZUSD"}, '{"asset": "ZUSD"}')
    dump = repr(rows(database_url, "SELECT * FROM runs"))
    assert "918273" not in dump


def test_nonce_high_water_survives_a_restart_with_the_clock_behind(
    service_factory, fake, keypair, database_url
) -> None:
    service, config = service_factory('b: {method: Balance, cron: "0 0 1 1 *"}')
    assert service.run_once()
    service.stop()
    used = fake.last_nonce[keypair[0]]
    assert rows(database_url, "SELECT value FROM collector_state WHERE name = 'nonce_high_water'")[
        0
    ][0] == str(used)
    # A new process whose clock is a day behind: without the stored floor, Kraken would refuse it.
    behind = collector.API(*keypair, clock=lambda: (used - 86_400_000) * 10**6)
    behind.uri = fake.url
    restarted = Service(config, api=behind)
    try:
        assert restarted.run_once()
    finally:
        restarted.stop()
    # The first process stopped cleanly and recorded the last nonce it used: right above it.
    assert fake.last_nonce[keypair[0]] == used + 1


def test_a_job_never_overlaps_itself_and_skips_are_logged(
    service_factory, fake, database_url, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    service, _ = service_factory("t: {method: Time, every: 0.2s, timeout: 5s}", reference=False)
    fake.inject("slow", method="Time", count=2, delay=0.7)
    service.start()
    wait_for(lambda: service.writer.written >= 5)
    service.stop()
    spans = rows(database_url, "SELECT started_at, finished_at FROM runs ORDER BY id")
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert _utc(start) >= _utc(end)
    assert "its previous run is still going" in caplog.text


def _utc(value):  # SQLite hands raw text back through plain SQL
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def test_private_jobs_wait_for_budget_and_are_never_refused(
    tmp_path, keypair, database_url
) -> None:
    tight = collector.RateLimit(max=3, decay=4)
    with FakeKraken(tier=tight, history={"ledger": 120}) as fake:  # Ledgers runs of 3 pages
        fake.add_key(*keypair)
        path = job_file(
            tmp_path,
            fake,
            keypair,
            database_url,
            """
            a: {method: Balance, every: 0.1s}
            b: {method: Ledgers, every: 0.1s}
            c: {method: TradeBalance, every: 0.1s}
        """,
            kraken_extra="rate_limit: {max: 3, decay: 4}",
        )
        service = Service(load(path), workers=4)
        service.start()
        wait_for(lambda: service.writer.written >= 12)
        service.stop()
    stored = rows(database_url)
    assert {r.status for r in stored} == {"ok"}
    assert fake.errors["EAPI:Rate limit exceeded"] == 0
    assert fake.calls["Ledgers"] >= 2


def test_run_once_exit_codes(tmp_path, fake, keypair, database_url) -> None:
    good = job_file(
        tmp_path,
        fake,
        keypair,
        database_url,
        """
        t: {method: Ticker, params: {pair: XBTUSD}, every: 1h}
        b: {method: Balance, cron: "0 * * * *"}
    """,
        reference=False,
    )
    result = CliRunner().invoke(
        main, ["run", "--once", str(good)], env={"COLLECTOR_DATABASE_URL": ""}
    )
    assert result.exit_code == 0, result.output
    bad = job_file(
        tmp_path,
        fake,
        keypair,
        database_url,
        "t: {method: Ticker, params: {pair: NOPE}, every: 1h}",
        reference=False,
    )
    result = CliRunner().invoke(
        main, ["run", "--once", str(bad)], env={"COLLECTOR_DATABASE_URL": ""}
    )
    assert result.exit_code == 1
    stored = [(r.job, r.status) for r in rows(database_url)]
    # The first two ran at the same time: either may be stored first.
    assert sorted(stored[:2]) == [("b", "ok"), ("t", "ok")]
    assert stored[2:] == [("t", "kraken_error")]
    assert rows(database_url)[-1].error == "EQuery:Unknown asset pair"


def test_sigterm_lets_the_call_in_flight_finish_and_writes_everything(
    tmp_path, fake, keypair, database_url
) -> None:
    path = job_file(
        tmp_path,
        fake,
        keypair,
        database_url,
        """
        t: {method: Ticker, params: {pair: XBTUSD}, every: 0.2s}
        b: {method: Balance, every: 0.3s, timeout: 10s}
    """,
        reference=False,
    )
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    with running([sys.executable, "-m", "collector.cli", "run", str(path)], env=env) as proc:
        wait_for(lambda: fake.calls["Balance"] >= 3)
        fake.inject("slow", method="Balance", delay=1.5)
        before = fake.calls["Balance"]
        wait_for(lambda: fake.calls["Balance"] > before)  # the slow call has reached the exchange
        output = sigterm(proc)
    assert proc.returncode == 0, output
    assert "received SIGTERM, stopping" in output and "collector stopped" in output
    assert "Traceback" not in output
    stored = rows(database_url)
    assert len(stored) == fake.calls["Balance"] + fake.calls["Ticker"]
    assert {r.status for r in stored} == {"ok"}  # the slow call finished and was written


def test_check_prints_schedules_and_warns_over_budget(tmp_path, fake, keypair) -> None:
    path = job_file(
        tmp_path,
        fake,
        keypair,
        f"sqlite:///{tmp_path / 'c.db'}",
        """
        b: {method: Balance, every: 1s}
        l: {method: Ledgers, every: 5s}
        h: {method: Ticker, cron: "*/10 * * * *", timezone: Europe/Berlin}
    """,
        kraken_extra="tier: starter",
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    out = result.output  # stdout and stderr, interleaved (click >= 8.2)
    assert result.exit_code == 0, out
    assert "b  Balance" in out and "every 1s" in out and "next at start" in out
    assert "cron '*/10 * * * *' (Europe/Berlin)" in out
    assert "warning: needs 1.4 private calls/s, starter allows 0.33/s" in out
    assert keypair[1] not in out


def test_due_times_missed_while_the_scheduler_was_held_are_folded_into_one_run(
    service_factory, fake, database_url, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    service, _ = service_factory("t: {method: Time, every: 0.1s}")
    service.start()
    wait_for(lambda: service.writer.written >= 2)
    service.schedule.pause()  # the process is held (a suspended laptop, a stopped container)
    caplog.clear()  # a run late under load before the pause folded its own; only the hold's counts
    time.sleep(0.55)  # the outage being simulated: five or so due times pass unserved
    calls = fake.calls["Time"]
    resumed_at = datetime.now(UTC)
    service.schedule.resume()
    wait_for(lambda: "running once (coalesced)" in caplog.text)
    wait_for(lambda: fake.calls["Time"] >= calls + 1)
    service.stop()
    folded = int(re.search(r"job t: (\d+) runs came due while it was late", caplog.text)[1])
    assert folded >= 4
    spans = [
        (_utc(a), _utc(b))
        for a, b in rows(database_url, "SELECT scheduled_at, started_at FROM runs ORDER BY id")
    ]
    backlog = [
        scheduled
        for scheduled, started in spans
        if started >= resumed_at and scheduled < resumed_at
    ]
    # One run for all of them, stamped with the latest due time, not the oldest.
    assert len(backlog) == 1
    assert resumed_at - backlog[0] < timedelta(seconds=0.1)


# -- glibc's malloc arenas -----------------------------------------------------------------------

ARENAS = """
import ctypes, os, sys, threading
from collector.allocator import limit_malloc_arenas
if len(sys.argv) > 1:  # as `collector run` does it: a service opened from a job file
    from collector.jobfile import load
    from collector.service import Service
    service = Service(load(sys.argv[1]))
    service.open()
    print(True, flush=True)
else:
    print(limit_malloc_arenas(), flush=True)
ready, go = threading.Barrier(9), threading.Event()
kept = []

def work():
    ready.wait()
    kept.append(bytearray(100_000))  # malloc'd (below the mmap threshold) in this thread's arena

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()
for t in threads:
    t.join()
os.dup2(1, 2)
ctypes.CDLL(None).malloc_stats()  # "Arena N:" lines, on stderr
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's arenas",
)
@pytest.mark.parametrize(
    ("environ", "done", "most"), [({}, "True", 2), ({"MALLOC_ARENA_MAX": "4"}, "False", 4)]
)
def test_the_service_caps_glibcs_malloc_arenas_unless_the_variable_says(
    environ, done, most
) -> None:
    """Each thread glibc finds contending gets an arena of its own (up to 8 a core), which keeps
    what the thread freed: RSS kept growing for ~120,000 runs at 1,000 jobs. The service caps
    them at ``defaults.MALLOC_ARENAS`` as the image's ``MALLOC_ARENA_MAX=2`` does; a variable set
    by the person running it wins."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | environ
    out = subprocess.run(
        [sys.executable, "-c", ARENAS], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    arenas = [line for line in lines if line.startswith("Arena ")]
    assert lines[0] == done
    assert 1 <= len(arenas) <= most, out


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's arenas",
)
def test_opening_the_service_caps_glibcs_malloc_arenas_before_its_threads(tmp_path) -> None:
    import subprocess

    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'c.db'}\nkraken:\n  url: http://127.0.0.1:9\n"
        "reference: false\njobs:\n  t: {method: Time, every: 1h}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", ARENAS, str(path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    arenas = [line for line in out.splitlines() if line.startswith("Arena ")]
    assert 1 <= len(arenas) <= 2, out
