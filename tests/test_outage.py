"""Nothing lost: a real PostgreSQL stopped mid-run, a process killed with SIGKILL, a full spool."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text

from collector.jobfile import load
from collector.records import RunRecord, decode, encode
from collector.service import Service
from collector.spool import Spool, peek

from .helpers import wait_for

T0 = datetime(2026, 11, 24, tzinfo=UTC)


def query(url: str, sql: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    except Exception:
        return []
    finally:
        engine.dispose()


def job_file(tmp_path, fake, keypair, url: str, jobs: str) -> str:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {url}\nkraken:\n  url: {fake.url}\n  key: {keypair[0]}\n"
        f"  secret: {keypair[1]}\n  rate_limit: {{max: 1000, decay: 1000}}\n"
        "  public_rate_limit: {max: 1000, decay: 1000}\n"
        f"spool: {{path: {tmp_path / 'runs.spool'}}}\njobs:\n{jobs}"
    )
    return str(path)


def test_postgres_down_for_ten_seconds_loses_nothing(
    tmp_path, fake, keypair, postgres, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    url = postgres.new_database()
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "  t: {method: Time, every: 0.1s}\n  b: {method: Balance, every: 0.3s}\n",
    )
    service = Service(load(path))
    service.start()
    try:
        wait_for(lambda: service.writer.written >= 10)
        postgres.halt()
        down_at = datetime.now(UTC)
        try:
            wait_for(lambda: len(service.spool) >= 20)
            time.sleep(10)  # the outage itself lasts at least ten seconds
        finally:
            up_at = datetime.now(UTC)
            postgres.start()
        wait_for(lambda: len(service.spool) == 0)
    finally:
        service.stop()
    executed = fake.calls["Time"] - 1 + fake.calls["Balance"]  # less the start-up probe
    executed += fake.calls["Assets"] + fake.calls["AssetPairs"]  # the service's own runs
    rows = query(url, "SELECT count(*), count(DISTINCT uid) FROM runs")[0]
    assert tuple(rows) == (executed, executed)  # every run stored, none twice
    during = query(
        url,
        f"SELECT count(*) FROM runs WHERE method = 'Time' AND started_at > '{down_at.isoformat()}' "
        f"AND started_at < '{up_at.isoformat()}'",
    )[0][0]
    assert during >= 90  # ~10 public runs/s through the outage window, all of them in the database
    # Private calls pause while the database that holds the account's lease is out of reach (no
    # one can prove they hold the key), and resume when it is back.
    assert "cannot renew the lease on account default" in caplog.text
    after = query(
        url,
        f"SELECT count(*) FROM runs WHERE method = 'Balance' AND started_at > '{up_at.isoformat()}'",
    )[0][0]
    assert after >= 1
    incomplete = query(
        url,
        "SELECT count(*) FROM runs r WHERE method = 'Balance' AND status = 'ok' "
        f"AND (SELECT count(*) FROM balances WHERE run_id = r.id) <> {len(fake.balances())}",
    )[0][0]
    assert incomplete == 0
    assert "database unavailable" in caplog.text and "the spool is empty" in caplog.text


def test_sigkill_mid_run_then_restart(tmp_path, fake, keypair, postgres) -> None:
    url = postgres.new_database()
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "  b: {method: Balance, every: 0.1s}\n  l: {method: Ledgers, every: 0.2s}\n",
    )
    spool = tmp_path / "runs.spool"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COLLECTOR_DATABASE_URL", "COLLECTOR_SPOOL")
    }

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", path],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start()
    try:
        wait_for(lambda: (query(url, "SELECT count(*) FROM runs") or [[0]])[0][0] >= 10)
        postgres.halt()  # runs pile up in the spool...
        wait_for(lambda: (peek(spool) or 0) >= 10)
        first.send_signal(signal.SIGKILL)  # ...and the process dies mid-run, mid-everything
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        postgres.start()
    spooled = peek(spool)
    assert spooled and spooled >= 10
    before = query(url, "SELECT count(*) FROM runs")[0][0]
    second = start()
    try:
        wait_for(lambda: peek(spool) == 0)  # replayed
        wait_for(lambda: query(url, "SELECT count(*) FROM runs")[0][0] >= before + spooled + 10)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert fake.errors["EAPI:Invalid nonce"] == 0  # no nonce reused across the kill
    total, distinct = query(url, "SELECT count(*), count(DISTINCT uid) FROM runs")[0]
    assert total == distinct  # none twice
    incomplete = query(
        url,
        "SELECT count(*) FROM runs r WHERE method = 'Balance' AND status = 'ok' "
        f"AND (SELECT count(*) FROM balances WHERE run_id = r.id) <> {len(fake.balances())}",
    )[0][0]
    assert incomplete == 0  # no half-written run


def record(job: str) -> RunRecord:
    return RunRecord(
        job=job,
        method="Balance",
        params={},
        scheduled_at=T0,
        started_at=T0,
        finished_at=T0,
        status="ok",
        http_status=200,
        result={"ZUSD": "1.50"},
        rows={
            "balances": [{"asset": "ZUSD", "amount": Decimal("1.50"), "job": job, "taken_at": T0}]
        },
    )


def test_spool_keeps_order_survives_reopening_and_keeps_the_oldest_when_full(
    tmp_path, caplog
) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, max_runs=5)
    assert spool.put([encode(record(f"j{i}")) for i in range(3)]) == 0
    spool.close()
    spool = Spool(path, max_runs=5)  # a new process finds them
    assert spool.open() and len(spool) == 3
    with caplog.at_level(logging.ERROR, logger="collector"):
        assert spool.put([encode(record(f"j{i}")) for i in range(3, 8)]) == 3
    assert "SPOOL FULL" in caplog.text and "dropped 3 new runs" in caplog.text
    oldest = [(seq, decode(item)) for seq, item in spool.oldest(10)]
    assert [r.job for _, r in oldest] == ["j0", "j1", "j2", "j3", "j4"]
    first = oldest[0][1]
    assert first.rows["balances"][0]["amount"] == Decimal("1.50") and first.scheduled_at == T0
    spool.remove_through(oldest[1][0])
    assert [decode(item).job for _, item in spool.oldest(10)] == ["j2", "j3", "j4"]
    assert peek(path) == 3 and peek(tmp_path / "none.spool") is None
    spool.close()


def test_check_shows_the_spool(tmp_path, fake, keypair) -> None:
    from click.testing import CliRunner

    from collector.cli import main

    path = job_file(
        tmp_path,
        fake,
        keypair,
        f"sqlite:///{tmp_path / 'c.db'}",
        "  t: {method: Time, every: 1s}\n",
    )
    spool = Spool(tmp_path / "runs.spool")
    spool.put([encode(record("a")), encode(record("b"))])
    spool.close()
    result = CliRunner().invoke(main, ["check", path], env={"COLLECTOR_SPOOL": ""})
    assert (
        f"spool: {tmp_path / 'runs.spool'}: 2 runs waiting (holds at most 100,000)" in result.output
    )


@pytest.mark.parametrize("url_kind", ["sqlite"])
def test_default_spool_sits_beside_the_data(tmp_path, url_kind) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'd.db'}\njobs:\n  t: {{method: Time, every: 1s}}\n"
    )
    assert load(path, environ={}).spool_path == f"{tmp_path / 'd.db'}.spool"
    path.write_text("database: postgresql://u@h/db\njobs:\n  t: {method: Time, every: 1s}\n")
    assert load(path, environ={}).spool_path == str(tmp_path / "collector.spool")
    assert load(path, environ={"COLLECTOR_SPOOL": "/data/x.spool"}).spool_path == "/data/x.spool"


def stored_jobs(store) -> list[str]:
    from sqlalchemy import select

    from collector.schema import runs

    with store.engine.connect() as conn:
        return list(conn.execute(select(runs.c.job).order_by(runs.c.id)).scalars())


def test_sqlite_locked_by_another_process_sends_runs_to_the_spool(tmp_path, caplog) -> None:
    import sqlite3

    from collector.store import Store
    from collector.writer import Writer

    db = tmp_path / "locked.db"
    store = Store.from_url(f"sqlite:///{db}", busy_timeout_ms=200)
    store.upgrade()
    spool = Spool(tmp_path / "locked.db.spool")
    writer = Writer(store, spool=spool, flush_interval=0.01)
    writer.start()
    blocker = sqlite3.connect(db, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")  # a reader's long transaction, a backup, a stuck script
    try:
        with caplog.at_level(logging.WARNING, logger="collector"):
            writer.submit(record("a"))
            writer.submit(record("b"))
            assert writer.flush(30)  # taken by the spool: the run loop is not held up
            assert len(spool) == 2 and "database unavailable" in caplog.text
            writer.submit(record("c"))  # queues behind the spooled runs
            assert writer.flush(30) and len(spool) == 3
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: len(spool) == 0)
    assert writer.close(30)
    assert stored_jobs(store) == ["a", "b", "c"]  # in order, once each
    spool.close()
    store.dispose()


def test_a_full_sqlite_disk_sends_runs_to_the_spool(tmp_path) -> None:
    """SQLite's ``max_page_count`` gives the same SQLITE_FULL a full disk gives."""
    from sqlalchemy import event

    from collector.store import Store
    from collector.writer import Writer

    store = Store.from_url(f"sqlite:///{tmp_path / 'full.db'}")
    store.upgrade()
    with store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    disk = {"pages": pages}  # no room for one more page

    @event.listens_for(store.engine, "checkout")
    def _disk_size(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {disk['pages']}")

    spool = Spool(tmp_path / "full.db.spool")
    writer = Writer(store, spool=spool, flush_interval=0.01)
    writer.start()
    big = [dataclasses.replace(record(f"r{i}"), result={"blob": "x" * 20_000}) for i in range(5)]
    for run in big:
        writer.submit(run)
    assert writer.flush(30)
    assert len(spool) == 5 and stored_jobs(store) == []
    disk["pages"] = 1_000_000  # space freed
    wait_for(lambda: len(spool) == 0)
    assert writer.close(30)
    assert stored_jobs(store) == [f"r{i}" for i in range(5)]
    spool.close()
    store.dispose()


def test_when_neither_the_database_nor_the_spool_can_take_runs_they_wait_in_memory(
    tmp_path, caplog
) -> None:
    import sqlite3

    from collector.store import Store
    from collector.writer import Writer

    db, spool_path = tmp_path / "d.db", tmp_path / "d.db.spool"
    store = Store.from_url(f"sqlite:///{db}", busy_timeout_ms=100)
    store.upgrade()
    spool = Spool(spool_path, timeout=0.1)
    writer = Writer(store, spool=spool, flush_interval=0.01, max_pending=3)
    writer.start()
    blockers = [sqlite3.connect(path, timeout=30) for path in (db, spool_path)]
    for blocker in blockers:
        blocker.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.CRITICAL, logger="collector"):
            for job in ("a", "b", "c"):
                writer.submit(record(job))
            wait_for(lambda: "they wait in memory" in caplog.text)
            assert writer.pending == 3 and len(spool) == 0
            assert not writer.flush(0.3)  # held, not dropped and not reported as written
    finally:
        for blocker in blockers:
            blocker.rollback()
            blocker.close()
    assert writer.flush(60)  # the thread survived and wrote them once the locks went
    wait_for(lambda: len(spool) == 0)
    assert writer.close(30)
    assert stored_jobs(store) == ["a", "b", "c"]
    spool.close()
    store.dispose()


def test_sigkill_before_the_nonce_is_committed_reuses_none_even_with_the_clock_behind(
    tmp_path, fake, keypair, state_dir
) -> None:
    """The database's nonce high-water mark trails the calls (here by a whole stuck write); the
    key's lease, saved before a nonce past it is issued, does not."""
    import sqlite3

    import collector

    db = tmp_path / "k.db"
    jobs = "".join(f"  b{i}: {{method: Balance, every: 0.05s}}\n" for i in range(5))
    path = job_file(tmp_path, fake, keypair, f"sqlite:///{db}", jobs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["COLLECTOR_STATE_DIR"] = os.environ["COLLECTOR_STATE_DIR"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blocker = None
    try:
        wait_for(
            lambda: bool(
                query(
                    f"sqlite:///{db}",
                    "SELECT value FROM collector_state WHERE name = 'nonce_high_water'",
                )
            )
        )
        blocker = sqlite3.connect(db, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer's next commit waits out its busy timeout
        calls = fake.calls["Balance"]
        wait_for(lambda: fake.calls["Balance"] >= calls + 20)  # ...while calls go on
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if blocker is not None:
            blocker.rollback()
            blocker.close()
    stored = int(
        query(
            f"sqlite:///{db}", "SELECT value FROM collector_state WHERE name = 'nonce_high_water'"
        )[0][0]
    )
    used = fake.last_nonce[keypair[0]]
    assert used > stored  # the dead process used nonces the database never heard of
    # A new process whose clock is an hour behind the nonces the dead one used.
    behind = collector.API(*keypair, clock=lambda: (used - 3_600_000) * 10**6)
    behind.uri = fake.url
    restarted = Service(load(path, environ={"COLLECTOR_STATE_DIR": state_dir}), api=behind)
    try:
        assert restarted.run_once()
    finally:
        restarted.stop()
    assert fake.errors["EAPI:Invalid nonce"] == 0
    assert fake.last_nonce[keypair[0]] > used


def test_run_started_before_its_database_waits_for_it(tmp_path, fake, keypair, postgres) -> None:
    """docker compose starts both at once: the collector waits for PostgreSQL, it doesn't exit."""
    url = postgres.new_database()
    path = job_file(tmp_path, fake, keypair, url, "  t: {method: Time, every: 0.2s}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["COLLECTOR_STATE_DIR"] = os.environ["COLLECTOR_STATE_DIR"]
    log = tmp_path / "run.log"
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "collector.cli", "run", path],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        return procs[-1]

    try:
        postgres.halt()
        try:
            # Stopped while it waits: a clean exit, no traceback.
            proc = start()
            wait_for(lambda: "unavailable at start" in log.read_text())
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
            assert "stopped while waiting for the database" in log.read_text()
            assert "Traceback" not in log.read_text()

            proc = start()
            wait_for(lambda: "unavailable at start" in log.read_text())
            assert proc.poll() is None and fake.calls["Time"] == 0
        finally:
            postgres.start()
        wait_for(lambda: (query(url, "SELECT count(*) FROM runs") or [[0]])[0][0] >= 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text_ = log.read_text()
    assert "waiting for it, next try in" in text_ and "collector started" in text_
    assert "Traceback" not in text_ and query(url, "SELECT count(*) FROM runs")[0][0] >= 3
