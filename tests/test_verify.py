"""`collector verify` and the service's verification, end to end on the coherent fake account,
SQLite and PostgreSQL: a complete backfill verifies; a hidden ledger entry and an offset balance
are caught, recorded as gaps, shown by status and counted in /metrics; a live service never
records a false break, not even while a window is half paged."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from collector import verify
from collector.cli import main
from collector.jobfile import load
from collector.service import Service
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for
from .test_service import job_file, rows

FAST = "rate_limit: {max: 1000, decay: 1000}\n  public_rate_limit: {max: 1000, decay: 1000}"
JOBS = """
l: {method: Ledgers, every: 1h}
t: {method: TradesHistory, every: 1h}
o: {method: ClosedOrders, every: 1h}
b: {method: Balance, every: 1h}
"""


def cli(*args: str):
    return CliRunner().invoke(main, list(args), env={"COLLECTOR_DATABASE_URL": ""})


def once(path, jobs: tuple[str, ...] | None = None, **service) -> Service:
    """Run the file's jobs (or some of them) once in this process; the verifier included."""
    config = load(path)
    if jobs is not None:
        config = dataclasses.replace(config, jobs=tuple(j for j in config.jobs if j.name in jobs))
    svc = Service(config, **service)
    try:
        assert svc.run_once()
        assert svc.verifier.wait(60)
    finally:
        svc.stop()
    return svc


def backfill(tmp_path, fake, database_url, *, kill: bool) -> object:
    """The jobs file; the balance snapshot taken 100 s ago (so the ledger's horizon is past it),
    the ledger backfilled (killed with SIGKILL in the middle first, when ``kill``), the fills
    and the orders."""
    keypair = fake.add_key()
    path = job_file(tmp_path, fake, keypair, database_url, JOBS, kraken_extra=FAST)
    path.write_text(path.read_text() + "failover: 1s\n")
    earlier = lambda: datetime.now(UTC) - timedelta(seconds=100)  # noqa: E731
    once(path, ("b",), clock=earlier)
    if kill:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: fake.calls["Ledgers"] >= 8)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        (cursor,) = rows(database_url, "SELECT value FROM cursors WHERE job = 'l'")
        value = cursor[0] if isinstance(cursor[0], dict) else json.loads(cursor[0])
        assert value["window"] is not None  # killed in the middle of the backfill
    once(path, ("l", "t", "o"))
    return path


@pytest.mark.parametrize("fault", ["none", "hidden", "offset"])
def test_verify_proves_a_backfill_and_catches_a_hidden_entry_or_an_offset_balance(
    tmp_path, database_url, fault
) -> None:
    with FakeKraken(tier=None, history={"ledger": 1500}) as fake:
        truth = fake.ledger()
        if fault == "hidden":  # a deposit in the middle of the history
            victim = [k for k, e in truth.items() if e["type"] == "deposit"][20]
            fake.hide(victim)
        if fault == "offset":
            fake.offset_balance("XXBT", "0.5")
        path = backfill(tmp_path, fake, database_url, kill=fault == "none")
        fills, closed = len(fake.my_trades()), len(fake.closed_orders())
    result = cli("verify", str(path))
    assets = len({e["asset"] for e in truth.values()})
    lines = result.output.splitlines()
    entries = len(truth) - (fault == "hidden")
    assert lines[-1].startswith(
        f"account default: {'verified' if fault == 'none' else '1 break in'} {assets} assets, "
        f"{entries:,} ledger entries to "
    ), result.output
    # (the killed service took snapshots too, too recent to be verifiable)
    snapshots = f" UTC, {assets} snapshot balances (an asset of a snapshot each), "
    assert snapshots in lines[-1], result.output
    if fault == "none":
        assert f"{snapshots}{assets} newer ones not yet verifiable (the newest taken " in lines[-1]
    assert lines[-1].endswith(f", {fills} fills, {closed} closed orders"), result.output
    gaps = rows(database_url, "SELECT dataset, pair, amount, reason FROM gaps")
    report = cli("status", str(path)).output
    if fault == "none":
        assert result.exit_code == 0 and len(lines) == 1, result.output
        assert gaps == []
        assert "ledger of account default: verified to " in report
        assert f"({assets} assets, {entries:,} entries)" in report
        return
    assert result.exit_code == 1 and len(lines) == 2, result.output
    if fault == "hidden":
        hidden = truth[victim]
        missing = Decimal(hidden["amount"]) - Decimal(hidden["fee"])
        assert lines[0].startswith(f"account default: {hidden['asset']}: between ")
        assert lines[0].endswith(f": {missing:f} unaccounted"), lines[0]
        assert [(d, p, Decimal(str(a))) for d, p, a, _ in gaps] == [
            ("ledger", hidden["asset"], missing)
        ]
    else:
        assert lines[0].startswith("account default: snapshot of job b (run "), lines[0]
        assert lines[0].endswith(": difference 0.5000000000"), lines[0]
        assert ": XXBT " in lines[0]
        assert [(d, p, Decimal(str(a))) for d, p, a, _ in gaps] == [
            ("balances", "XXBT", Decimal("0.5"))
        ]
    assert gaps[0][3] == lines[0].removeprefix("account default: ")
    assert "ledger of account default: UNVERIFIED: 1 break recorded up to " in report
    (ledger,) = json.loads(cli("status", "--json", str(path)).output)["ledgers"]
    assert (ledger["account"], ledger["verified"], ledger["breaks"]) == ("default", False, 1)
    assert (ledger["assets"], ledger["entries"]) == (assets, entries)
    as_json = json.loads(cli("verify", "--json", str(path)).output)
    (account,) = as_json["accounts"]
    assert as_json["ok"] is False and account["ok"] is False
    assert [b["dataset"] for b in account["breaks"]] == [gaps[0][0]]


def test_the_service_counts_breaks_in_its_metrics(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None, history={"ledger": 200}) as fake:
        fake.hide([k for k, e in fake.ledger().items() if e["type"] == "withdrawal"][2])
        path = job_file(tmp_path, fake, fake.add_key(), url, JOBS, kraken_extra=FAST)
        path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
        service = once(path, ("l",))
    assert service.monitor is not None
    text = service.monitor.scrape().decode()
    assert 'collector_ledger_breaks{account="default"} 1.0' in text
    assert 'collector_ledger_verified_timestamp_seconds{account="default"}' in text


def test_a_live_service_records_no_false_break_while_the_ledger_grows(tmp_path) -> None:
    """Growth between runs, snapshots between them, a window half paged when a run fails: the
    service verifies what is final and nothing else, and everything verifies in the end."""
    t = [1_800_000_000.0]
    clock = lambda: t[0]  # noqa: E731
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None, history={"ledger": 400}, now=clock) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, JOBS, kraken_extra=FAST)
        config = load(path)
        service = Service(config, clock=lambda: datetime.fromtimestamp(t[0], UTC))
        jobs = {j.name: j for j in config.jobs}
        service.open()
        try:

            def run(name: str) -> None:
                service.execute(jobs[name])
                service.writer.flush()
                assert service.verifier.wait(30)

            run("l")  # the backfill
            report = verify.advance(service.store.engine, verify.scopes(config.jobs)[0])
            first = report.verified_to
            assert first == datetime.fromtimestamp(t[0] - 5 - 60, UTC) and report.ok
            for _ in range(3):  # a snapshot, growth, and a run that verifies both
                run("b")
                t[0] += 7
                fake.grow("ledger", 40)
                fake.grow("trades", 5)
                t[0] += 70
                run("l")
            run("b")
            first = verify.advance(service.store.engine, verify.scopes(config.jobs)[0]).verified_to
            # A window of 400 new entries, of which the run stores the newest pages and fails:
            # what it stored is the newest end of the window, with a hole below it.
            fake.grow("ledger", 400)
            t[0] += 100
            pages = fake.calls["Ledgers"]
            stopper = threading.Thread(
                target=lambda: (
                    wait_for(lambda: fake.calls["Ledgers"] >= pages + 3),
                    fake.inject(
                        "kraken_error", method="Ledgers", error="EGeneral:Invalid arguments"
                    ),
                )
            )
            stopper.start()
            service.execute(jobs["l"])
            stopper.join(30)
            service.writer.flush()
            assert service.verifier.wait(30)
            (cursor,) = rows(url, "SELECT value FROM cursors WHERE job = 'l'")
            value = cursor[0] if isinstance(cursor[0], dict) else json.loads(cursor[0])
            assert value["window"] is not None and value["window"]["ofs"] >= 100
            half = verify.advance(service.store.engine, verify.scopes(config.jobs)[0])
            assert half.verified_to == first and half.ok  # nothing of the half window claimed...
            (newest,) = rows(url, "SELECT max(time) FROM ledger")[0]
            assert _epoch(newest) > first.timestamp() + 60  # ...though its newest end is stored
            run("l")  # the window finished
            t[0] += 100
            run("b")
            run("l")
        finally:
            service.stop()
    assert rows(url, "SELECT * FROM gaps") == []
    result = cli("verify", str(path))
    assert result.exit_code == 0, result.output
    # 4 snapshots of 7 assets; the 5th (after the horizon) not yet verifiable: the line says
    # when it will be (the ledger read past it and the minute read again), after which job
    (newest,) = rows(url, "SELECT max(taken_at) FROM balances")[0]
    newest = datetime.fromisoformat(str(newest)).replace(tzinfo=UTC)
    ready = newest + verify.WINDOW + verify.OVERLAP
    assert (
        "28 snapshot balances (an asset of a snapshot each), 7 newer ones not yet verifiable "
        f"(the newest taken {newest:%Y-%m-%d %H:%M:%S} UTC; the ledger is complete to "
        in result.output
    )
    # The job runs every hour: the next run after that is its last start plus an hour.
    (last,) = rows(url, "SELECT max(started_at) FROM runs WHERE job = 'l'")[0]
    due = datetime.fromisoformat(str(last)).replace(tzinfo=UTC) + timedelta(hours=1)
    assert due > ready
    assert (
        "they will be after the first run of the Ledgers job l (every 1h) that starts after "
        f"{ready:%Y-%m-%d %H:%M:%S} UTC, due {due:%Y-%m-%d %H:%M:%S} UTC" in result.output
    ), result.output
    (found,) = json.loads(cli("verify", "--json", str(path)).output)["accounts"]
    assert found["snapshots_not_yet_verifiable"] == 7
    assert datetime.fromisoformat(found["verifiable_after"]) == ready
    states = rows(url, "SELECT verified_to, breaks FROM ledger_verification")
    assert {s.breaks for s in states} == {0}


def _epoch(value) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).timestamp()


def test_verify_refuses_what_it_cannot_read_in_one_line(tmp_path, fake, keypair) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    path = job_file(tmp_path, fake, keypair, url, JOBS)
    result = cli("verify", str(path))
    assert result.exit_code == 2
    assert result.output == (
        f"error: {path}: database: cannot read database {url}: it does not exist yet\n"
    )
    result = cli("verify", "--account", "nobody", str(path))
    assert (result.exit_code, result.output) == (
        2,
        "error: --account: no account 'nobody' (one of default)\n",
    )
    Store.from_url(url).upgrade()  # an empty database: nothing is verifiable yet, nothing broke
    result = cli("verify", str(path))
    assert result.exit_code == 0
    assert result.output == (
        "account default: nothing verifiable yet (the ledger's first backfill has not finished)\n"
        "account default: the ledger's first backfill has not finished\n"
    )
