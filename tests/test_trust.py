"""Trusted with a key: no redirect, no hang, no poison answer, no bomb, no half migration.

Each test tries what an attacker or bad luck would: a malicious server is a few lines of
``http.server`` on 127.0.0.1 (and 127.0.0.2 as "another host"), databases are real, signals are
real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

import collector
from collector import defaults
from collector.cli import main
from collector.errors import HTTPStatusError, RequestTimeout, Status
from collector.events import RunFinished
from collector.jobfile import Job, load
from collector.records import RunRecord
from collector.service import Service
from collector.spool import Spool
from collector.store import Store, upgrade
from collector.writer import Writer

from .helpers import running, sigterm, wait_for
from .test_service import job_file, rows

ENV = {
    k: v for k, v in os.environ.items() if k not in ("COLLECTOR_DATABASE_URL", "COLLECTOR_SPOOL")
}


# -- a hostile server ------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(
    handle: Callable[[BaseHTTPRequestHandler], None], host: str = "127.0.0.1"
) -> Iterator[tuple[str, list[str]]]:
    """``handle(request)`` answers every GET and POST; yields the URL and the paths requested."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with contextlib.suppress(OSError):
                handle(self)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def answer(request: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def drip_body(request: BaseHTTPRequestHandler, stop: threading.Event | None = None) -> None:
    """Headers at once, then a byte of the body every 0.2 s: no read ever times out."""
    request.send_response(200)
    request.send_header("Content-Length", "100000")
    request.end_headers()
    for _ in range(100000):
        request.wfile.write(b" ")
        request.wfile.flush()
        if (stop or threading.Event()).wait(0.2):
            return


def drip_headers(request: BaseHTTPRequestHandler) -> None:
    """The status line and headers a byte at a time."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10000:
        request.wfile.write(bytes([byte]))
        request.wfile.flush()
        time.sleep(0.2)


OK_BALANCE = json.dumps({"error": [], "result": {"ZUSD": "1.0000"}}).encode()
SECRET = "a2V5IGZvciB0ZXN0cw=="


def hostile_job_file(tmp_path: Path, url: str, jobs: str, extra: str = "") -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'c.db'}\nkraken:\n  url: {url}\n  key: k\n"
        f"  secret: {SECRET}\n  rate_limit: {{max: 1000, decay: 1000}}\n"
        f"  public_rate_limit: {{max: 1000, decay: 1000}}\n{extra}jobs:\n"
        + textwrap.indent(textwrap.dedent(jobs).strip("\n"), "  ")
        + "\n"
    )
    return path


# -- 1. redirects ----------------------------------------------------------------------------------


def test_a_redirect_is_never_followed_by_any_call(tmp_path) -> None:
    with serve(lambda r: answer(r, OK_BALANCE), host="127.0.0.2") as (elsewhere, reached):

        def redirect(request: BaseHTTPRequestHandler) -> None:
            status = 307 if request.command == "POST" else 302
            request.send_response(status)
            request.send_header("Location", elsewhere + request.path)
            request.send_header("Content-Length", "0")
            request.end_headers()

        with serve(redirect) as (url, _):
            api = collector.API("k", SECRET, timeout=5)
            api.uri = url
            calls = [
                lambda: api.call("Balance"),
                lambda: api.call("Time"),
                lambda: api.query_private("Balance"),  # the krakenex drop-in
                lambda: api.query_public("Time"),
            ]
            for call in calls:
                with pytest.raises(HTTPStatusError) as caught:
                    call()
                assert caught.value.http_status in (302, 307)
                assert caught.value.status == Status.HTTP_ERROR
                assert "a redirect to 127.0.0.2, not followed" in str(caught.value)

            path = hostile_job_file(tmp_path, url, "b: {method: Balance, every: 1h}")
            service = Service(load(path))
            try:
                record = service.execute(service.config.jobs[0])
                service.writer.flush()
            finally:
                service.stop()
            assert record is not None and record.status == "http_error"
            assert record.http_status == 307
    assert reached == []  # nothing, signed or not, reached the other host


# -- 2. the timeout bounds the whole call ----------------------------------------------------------


@pytest.mark.parametrize("drip", [drip_body, drip_headers], ids=["body", "headers"])
def test_the_timeout_bounds_the_whole_call_not_each_read(drip) -> None:
    with serve(drip) as (url, _):
        api = collector.API("k", SECRET, timeout=1.0)
        api.uri = url
        for call in (lambda: api.call("Balance"), lambda: api.call("Time")):
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="timed out after 1 s"):
                call()
            # Before: one read per 0.2 s never timed out, and the call took as long as the peer.
            assert time.monotonic() - started < 3.0


def test_a_slow_answer_blocks_the_accounts_other_jobs_at_most_one_timeout(tmp_path) -> None:
    stop = threading.Event()

    def handle(request: BaseHTTPRequestHandler) -> None:
        if request.path.endswith("/Ledgers"):
            drip_body(request, stop)
        else:
            answer(request, OK_BALANCE)

    with serve(handle) as (url, _):
        path = hostile_job_file(
            tmp_path,
            url,
            """
            ledger: {method: Ledgers, every: 1h, timeout: 1.5s, deadline: 1s}
            balance: {method: Balance, every: 0.1s}
            """,
        )
        service = Service(load(path))
        finished: list[RunRecord] = []
        service.events.subscribe(RunFinished, lambda e: finished.append(e.record))
        service.start()
        try:
            wait_for(lambda: any(r.job == "ledger" for r in finished), timeout=20)
            ledger = next(r for r in finished if r.job == "ledger")
            wait_for(lambda: sum(r.job == "balance" and r.status == "ok" for r in finished) >= 20)
        finally:
            stop.set()
            service.stop()
    assert ledger.status == "timeout" and ledger.error and "timed out after 1.5 s" in ledger.error
    # The account's send lock was held by the slow call for one timeout, not for the 5.5 hours
    # the peer would have taken: balances ran before and after it.
    assert (ledger.finished_at - ledger.started_at).total_seconds() < 4
    after = [r for r in finished if r.job == "balance" and r.started_at > ledger.finished_at]
    assert after and all(r.status == "ok" for r in after)


def test_sigterm_ends_a_service_waiting_on_a_dripping_answer_promptly(tmp_path) -> None:
    stop = threading.Event()
    with serve(lambda r: drip_body(r, stop)) as (url, seen):
        path = hostile_job_file(tmp_path, url, "l: {method: Ledgers, every: 1h, timeout: 10m}")
        try:
            with running([sys.executable, "-m", "collector.cli", "run", str(path)], env=ENV) as p:
                wait_for(lambda: len(seen) >= 1)
                started = time.monotonic()
                out = sigterm(p)
                assert p.returncode == 0, out
                assert time.monotonic() - started < 15  # the call's own timeout is 10 minutes
        finally:
            stop.set()
    stored = rows(f"sqlite:///{tmp_path / 'c.db'}", "SELECT status FROM runs WHERE job = 'l'")
    assert stored == [("timeout",)]


# -- 3. a poisoned answer never stops storage ------------------------------------------------------


def test_a_poisoned_cursor_is_a_bad_response_and_storage_goes_on(
    tmp_path, fake, keypair, postgres
) -> None:
    url = postgres.new_database()
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        """
        trades: {method: Trades, params: {pair: XBTUSD}, every: 0.2s, since: 1700000000}
        time: {method: Time, every: 0.1s}
        """,
    )
    poison = {"error": [], "result": {"XXBTZUSD": [], "last": "1\u0000"}}
    fake.inject("raw", method="Trades", count=3, body=json.dumps(poison).encode())
    service = Service(load(path))
    service.start()
    try:
        wait_for(lambda: count_ok(url, "trades") >= 2 and count_ok(url, "time") >= 10)
    finally:
        service.stop()
    statuses = rows(url, "SELECT status, error FROM runs WHERE job = 'trades' ORDER BY id")
    assert [s for s, _ in statuses[:3]] == ["bad_response"] * 3
    assert all(e.startswith("Trades last '1\\x00' is not a number") for _, e in statuses[:3])
    # The cursor never took the poison: the next run asked from the job's since.
    params = rows(url, "SELECT params FROM runs WHERE job = 'trades' ORDER BY id")
    assert params[3][0]["since"] == str(1700000000 * 10**9)
    assert not service.writer.pending


def count_ok(url: str, job: str) -> int:
    return rows(url, f"SELECT count(*) FROM runs WHERE job = '{job}' AND status = 'ok'")[0][0]


def test_a_record_the_database_refuses_is_stored_without_it_and_never_blocks(postgres) -> None:
    url = postgres.new_database()
    store = Store.from_url(url)
    store.upgrade()
    now = datetime.now(UTC)

    def run(job: str, **fields: object) -> RunRecord:
        base = {"job": job, "method": "Trades", "params": {}}
        times = {"scheduled_at": now, "started_at": now, "finished_at": now}
        return RunRecord(**{**base, **times, **fields})  # type: ignore[arg-type]

    writer = Writer(store)
    writer.start()
    try:
        # A NUL in params (JSONB refuses it), in the error text, and in a row's text column.
        writer.submit(run("params", params={"since": "1\x00"}, dataset="trades", cursor="1\x00"))
        writer.submit(run("error", status=Status.KRAKEN_ERROR, error="E\x00"))
        writer.submit(run("after"))
        assert writer.flush(30)
    finally:
        writer.close(30)
        store.dispose()
    stored = rows(url, "SELECT job, status, params, error FROM runs ORDER BY id")
    assert [(j, s) for j, s, _, _ in stored] == [
        ("params", "bad_response"),
        ("error", "bad_response"),
        ("after", "ok"),
    ]
    assert stored[0][2] == {"since": "1"}  # without the offending character
    assert rows(url, "SELECT count(*) FROM cursors") == [(0,)]  # no poisoned cursor


# -- 4. every number is bounded --------------------------------------------------------------------

BOUNDS = [
    ("every: 3000000d", "jobs.t.every: '3000000d' is out of range"),
    ("every: 0s", "jobs.t.every: bad duration '0s'"),
    ("every: 1h\n    jitter: 3000000d", "jobs.t.jitter: '3000000d' is out of range"),
    ("every: 1h\n    jitter: .inf", "jobs.t.jitter: bad duration inf"),
    ("every: 1h\n    jitter: 2h", "jobs.t.jitter: '2h' is out of range: must be between"),
    ("every: 1h\n    timeout: .inf", "jobs.t.timeout: bad duration inf"),
    ("every: 1h\n    timeout: 1d", "jobs.t.timeout: '1d' is out of range"),
    ("every: 1h\n    deadline: 99999d", "jobs.t.deadline: '99999d' is out of range"),
    ("every: 1h\n    retention: 99999d", "jobs.t.retention: '99999d' is out of range"),
    ('cron: "0 0 31 2 *"', "jobs.t.cron: cron '0 0 31 2 *' never fires"),
]
TOP_BOUNDS = [
    ("kraken: {timeout: .inf}", "kraken.timeout: bad duration inf"),
    ("kraken: {max_response_mb: .inf}", "kraken.max_response_mb: must be a number of megabytes"),
    ("kraken: {rate_limit: {max: .inf, decay: 1}}", "kraken.rate_limit: max and decay must be"),
    ("kraken: {lockout: 99999d}", "kraken.lockout: '99999d' is out of range"),
    ("failover: 0.01s", "failover: '0.01s' is out of range"),
    ("spool: {max_runs: 1000000000000}", "spool.max_runs: must be a whole number of runs"),
    ("retention: {runs: 1000000d}", "retention.runs: '1000000d' is out of range"),
    ("metrics: {allowed_hosts: [evil host]}", "metrics.allowed_hosts: must be a list of at most"),
    (
        f"metrics: {{allowed_hosts: [{', '.join(f'h{i}' for i in range(65))}]}}",
        "metrics.allowed_hosts: must be a list of at most 64 host names",
    ),
]


@pytest.mark.parametrize(("spec", "message"), BOUNDS + TOP_BOUNDS)
def test_numbers_out_of_bounds_are_one_line_at_check(tmp_path, spec, message) -> None:
    path = tmp_path / "jobs.yaml"
    if (spec, message) in BOUNDS:
        path.write_text(f"jobs:\n  t:\n    method: Time\n    {spec}\n")
    else:
        path.write_text(f"{spec}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}:"), result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_reload_with_unbounded_numbers_changes_nothing_and_the_next_one_works(
    tmp_path, fake, keypair
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    write = lambda jobs: job_file(tmp_path, fake, keypair, url, jobs)  # noqa: E731
    path = write("a: {method: Time, every: 0.1s}")
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        wait_for(lambda: "collector started" in log.read_text())
        bad = ("every: 3000000d", "every: 1s, jitter: .inf", 'cron: "0 0 31 2 *"')
        for i, spec in enumerate(bad):
            write("a: {method: Time, " + spec + "}")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda i=i: log.read_text().count("reload refused, nothing changed") > i)
        write("a: {method: Time, every: 0.1s}\nb: {method: Assets, every: 0.1s}")
        proc.send_signal(signal.SIGHUP)  # the reload thread lived through the bad ones
        wait_for(lambda: "added b" in log.read_text())
        wait_for(lambda: rows(url, "SELECT count(*) FROM runs WHERE job = 'b'")[0][0] >= 2)
        out = sigterm(proc)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text()


def test_a_dead_scheduler_thread_makes_the_service_unhealthy_and_stop(tmp_path, fake) -> None:
    # Past the bounds a job file can't say: a job whose next time is beyond year 9999.
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'c.db'}\nkraken: {{url: {fake.url}}}\n"
        "metrics: {listen: '127.0.0.1:0'}\njobs:\n  t: {method: Time, every: 1h}\n"
    )
    job = Job(name="t", method="Time", every=timedelta(days=3_000_000))
    config = dataclasses.replace(load(path), jobs=(job,))
    service = Service(config)
    stopped = threading.Event()
    thread = threading.Thread(target=lambda: (service.run_forever(stopped), stopped.set()))
    thread.start()
    try:
        wait_for(lambda: service.failed is not None, timeout=20)
        assert service.monitor is not None
        healthy, body = service.monitor.health.report()
        assert not healthy
        assert any("scheduler's thread died" in p for p in body["problems"])
        thread.join(20)
        assert not thread.is_alive()  # run_forever returned by itself: the CLI exits 1
    finally:
        stopped.set()
        thread.join(20)
    assert "year" in (service.failed or "")


# -- 5. SIGHUP at start-up -------------------------------------------------------------------------


def test_sighup_while_waiting_for_the_database_is_applied_once_it_is_ready(
    tmp_path, fake, keypair, postgres
) -> None:
    name = f"late_{os.getpid()}_{time.monotonic_ns()}"
    url = postgres.url(name)  # a database that does not exist yet: the service waits for it
    path = job_file(tmp_path, fake, keypair, url, "a: {method: Time, every: 0.1s}")
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    admin = create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    try:
        wait_for(lambda: "waiting for it" in log.read_text())
        job_file(
            tmp_path,
            fake,
            keypair,
            url,
            "a: {method: Time, every: 0.1s}\nb: {method: Assets, every: 0.1s}",
        )
        proc.send_signal(signal.SIGHUP)  # before: the process died of it (exit 129)
        wait_for(lambda: "received SIGHUP" not in log.read_text() and proc.poll() is None)
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        wait_for(lambda: "applying it now" in log.read_text())
        wait_for(lambda: rows(url, "SELECT count(*) FROM runs WHERE job = 'b'")[0][0] >= 2)
        sigterm(proc)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        admin.dispose()


# -- 6. atomic migrations --------------------------------------------------------------------------

KILLER = """
import os, signal, sys
from sqlalchemy import Engine, event
from collector.store import make_engine, upgrade
seen = [0]
@event.listens_for(Engine, "after_cursor_execute")
def count(*_):
    seen[0] += 1
    if seen[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
upgrade(make_engine(sys.argv[1]))
"""


def test_sqlite_migration_killed_at_any_statement_leaves_a_database_the_next_start_migrates(
    tmp_path,
) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    reference = tmp_path / "reference.db"
    upgrade(create_engine(f"sqlite:///{reference}"))
    want = schema(f"sqlite:///{reference}")
    # How many statements a whole migration takes, so the kills fall across all of it.
    total = statements(f"sqlite:///{tmp_path / 'n.db'}")
    for n in sorted({3, 8, total // 4, total // 2, 3 * total // 4, total - 2}):
        url = f"sqlite:///{tmp_path / f'k{n}.db'}"
        killed = subprocess.run(
            [sys.executable, str(script), url, str(n)], capture_output=True, env=ENV
        )
        assert killed.returncode == -signal.SIGKILL
        engine = create_engine(url)
        upgrade(engine)  # before: "table runs already exists"
        engine.dispose()
        assert schema(url) == want, n


def statements(url: str) -> int:
    from sqlalchemy import event

    from collector.store import make_engine

    engine = make_engine(url, immediate=True)
    seen = [0]
    event.listen(engine, "after_cursor_execute", lambda *_: seen.__setitem__(0, seen[0] + 1))
    with engine.begin() as connection:
        from alembic import command
        from alembic.config import Config

        from collector.store import migrations_dir

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    engine.dispose()
    return seen[0]


def schema(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        found = inspect(engine)
        out = {t: sorted(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()}
        with engine.connect() as conn:
            out["revision"] = [
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            ]
        return out
    finally:
        engine.dispose()


def test_a_database_at_a_newer_revision_is_one_line(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    for command in (["check"], ["run", "--once"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, [*command, str(path)], env={"COLLECTOR_DATABASE_URL": ""})
        assert result.exit_code == 2, result.output
        assert "database: the database is at revision 0099, which this collector does not know" in (
            result.output
        ), result.output
        assert "Traceback" not in result.output


# -- 7. a database that refuses writes for a lasting reason ----------------------------------------


def test_a_missing_table_sends_runs_to_the_spool_until_it_is_back(
    tmp_path, fake, keypair, postgres, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    url = postgres.new_database()
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "trades: {method: Trades, params: {pair: XBTUSD}, every: 0.1s, since: 0}\n"
        "time: {method: Time, every: 0.1s}",
    )
    service = Service(load(path))
    service.start()
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        wait_for(lambda: count_ok(url, "trades") >= 2)
        with admin.connect() as conn:
            conn.execute(text("ALTER TABLE trades RENAME TO trades_away"))
        fake.grow("public_trades", 25, pair="XBTUSD")  # arrive while the table is away
        wait_for(lambda: service.writer.state != "direct")
        wait_for(lambda: len(service.spool) >= 5)
        assert "the database refuses writes" in caplog.text  # CRITICAL, not a blip
        with admin.connect() as conn:
            conn.execute(text("ALTER TABLE trades_away RENAME TO trades"))
        wait_for(lambda: len(service.spool) == 0 and service.writer.state == "direct")
        wait_for(lambda: stored_trades(url) == len(fake.public_trades("XBTUSD")))
    finally:
        service.stop()
        admin.dispose()
    assert [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert stored_trades(url) == len(fake.public_trades("XBTUSD"))  # every one, once
    assert rows(url, "SELECT count(*) FROM runs WHERE status = 'bad_response'") == [(0,)]


def stored_trades(url: str) -> int:
    return rows(url, "SELECT count(*) FROM trades")[0][0]


def test_revoked_privileges_send_runs_to_the_spool_until_granted_again(
    tmp_path, fake, keypair, postgres
) -> None:
    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]
    role = f"collector_{name}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"ALTER DATABASE {name} OWNER TO {role}"))
        conn.execute(text(f"GRANT ALL ON SCHEMA public TO {role}"))
    limited = url.replace("postgres@", f"{role}@")
    path = job_file(tmp_path, fake, keypair, limited, "time: {method: Time, every: 0.1s}")
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    service = Service(load(path))
    service.start()
    try:
        wait_for(lambda: count_ok(url, "time") >= 2)
        with admin.connect() as conn:
            conn.execute(text(f"REVOKE INSERT, UPDATE ON runs FROM {role}"))
        wait_for(lambda: len(service.spool) >= 5)
        assert service.monitor is not None
        healthy, body = service.monitor.health.report()
        assert not healthy and any("permission denied" in p for p in body["problems"])
        before = count_ok(url, "time")
        with admin.connect() as conn:
            conn.execute(text(f"GRANT INSERT, UPDATE ON runs TO {role}"))
        wait_for(lambda: len(service.spool) == 0)
        wait_for(lambda: count_ok(url, "time") >= before + 5)
    finally:
        service.stop()
        admin.dispose()
    total, distinct = rows(url, "SELECT count(*), count(DISTINCT uid) FROM runs")[0]
    assert total == distinct and rows(url, "SELECT count(*) FROM runs WHERE status <> 'ok'") == [
        (0,)
    ]


# -- 8. the metrics listener can't starve the service ----------------------------------------------


def test_slow_and_resetting_peers_cannot_take_the_listeners_threads_or_fds(
    tmp_path, fake, keypair
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "b: {method: Balance, every: 0.1s}")
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    service = Service(load(path))
    service.start()
    assert service.monitor is not None
    host, port = service.monitor.address
    peers: list[socket.socket] = []
    try:
        wait_for(lambda: count_ok(url, "b") >= 2)
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        for _ in range(200):  # half-sent requests, held open
            with contextlib.suppress(OSError):
                peer = socket.create_connection((host, port), timeout=5)
                peer.sendall(b"GET /metr")
                peers.append(peer)
        for peer in peers:
            peer.setblocking(False)
        # The listener reads at most LISTENER_READING heads and cuts the oldest beyond, all
        # within LISTENER_HEAD_TIMEOUT; none of them takes a thread.
        # (The service's own threads and descriptors come and go by a few: a run, a connection.)
        assert threading.active_count() <= threads + 4
        assert len(os.listdir("/proc/self/fd")) <= fds + len(peers) + defaults.LISTENER_READING + 8
        started = time.monotonic()
        wait_for(lambda: all(closed(p) for p in peers))
        assert time.monotonic() - started < defaults.LISTENER_HEAD_TIMEOUT + 2
        before = count_ok(url, "b")
        wait_for(lambda: count_ok(url, "b") >= before + 10)  # the service goes on
    finally:
        for peer in peers:
            peer.close()
        service.stop()


def probe(base: str, path: str = "/healthz", **headers: str) -> tuple[int, float]:
    """A probe's status and how long it took."""
    import requests

    started = time.monotonic()
    got = requests.get(base + path, timeout=5, headers=headers)
    return got.status_code, time.monotonic() - started


def test_idle_connections_never_keep_healthz_from_answering(tmp_path, fake, keypair) -> None:
    """100 connections that send nothing, re-opened as soon as they are cut (more than the
    listener reads at once): every /healthz probe over 3 s (past the idle cut) answers at once.
    Before, 4 such connections took every slot: 0 of 189 probes answered in 95 s."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 0.2s}")
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    service = Service(load(path))
    service.start()
    assert service.monitor is not None
    host, port = service.monitor.address
    stop = threading.Event()
    opened: list[int] = []

    def idle_crowd() -> None:
        peers: list[socket.socket] = []
        while not stop.is_set():
            for peer in [p for p in peers if closed(p)]:
                peers.remove(peer)
                peer.close()
            while len(peers) < 100:
                with contextlib.suppress(OSError):
                    peer = socket.create_connection((host, port), timeout=5)
                    peer.setblocking(False)
                    peers.append(peer)
                    opened.append(1)
            stop.wait(0.01)
        for peer in peers:
            peer.close()

    crowd = threading.Thread(target=idle_crowd, daemon=True)
    try:
        wait_for(lambda: count_ok(url, "t") >= 1)
        crowd.start()
        wait_for(lambda: len(opened) >= 100)
        probes = []
        ends = time.monotonic() + 3 * defaults.LISTENER_HEAD_TIMEOUT / 2
        while time.monotonic() < ends:
            probes.append(probe(f"http://{host}:{port}"))
        assert len(opened) > 150  # the crowd was cut after the idle time, and came back
    finally:
        stop.set()
        crowd.join()
        service.stop()
    assert len(probes) >= 20 and {status for status, _ in probes} == {200}
    assert max(took for _, took in probes) < 1, probes


def test_slow_pages_and_their_slow_readers_never_hold_up_healthz() -> None:
    """Pages that take long to draw (every slot of ``/`` busy), and readers that never read a
    big page: /healthz and /metrics answer at once, and the page's own slots are free again
    once its answers are made."""
    from collector.listener import Answer, Listener

    release = threading.Event()
    drawing: list[int] = []
    big = b"x" * 20_000_000  # far more than a socket's buffers: its sending can't finish

    def slow_page(query: dict[str, str]) -> Answer:
        if "big" in query:
            return Answer(200, big, "text/plain")
        drawing.append(1)
        release.wait(30)
        return Answer(200, b"page\n", "text/plain")

    def quick(query: dict[str, str]) -> Answer:
        return Answer(200, b"ok\n", "text/plain")

    routes = {"/": slow_page, "/healthz": quick, "/metrics": quick}
    listener = Listener(("127.0.0.1", 0), routes, "test")
    listener.start()
    host, port = listener.address
    base = f"http://{host}:{port}"
    readers: list[socket.socket] = []
    try:
        for _ in range(4):  # slow pages: 4 asked, the route's slots all taken
            peer = socket.create_connection((host, port), timeout=5)
            peer.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            readers.append(peer)
        wait_for(lambda: len(drawing) >= 2)  # every slot of the page's (before: of all)
        for _ in range(10):
            assert probe(base)[0] == 200 and probe(base, "/metrics")[0] == 200
            status, took = probe(base)
            assert took < 1
        release.set()
        for _ in range(4):  # readers that never read a 20 MB page
            peer = socket.create_connection((host, port), timeout=5)
            peer.sendall(f"GET /?big=1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            readers.append(peer)
        wait_for(lambda: probe(base, "/")[0] == 200)  # the page's slots are free again
        status, took = probe(base)
        assert (status, took < 1) == (200, True)
    finally:
        release.set()
        for peer in readers:
            peer.close()
        listener.stop()


def test_a_name_the_listener_does_not_know_is_refused_so_no_page_can_rebind_to_it(
    tmp_path, fake, keypair
) -> None:
    """DNS rebinding: a web page at a name its DNS then points to 127.0.0.1 sends that name as
    Host. The page, /metrics and /healthz answer only loopback's names, IP literals and
    ``metrics.allowed_hosts``; Docker's HEALTHCHECK, as the Dockerfile writes it, still passes."""
    import requests

    from .test_docker import instructions

    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "b: {method: Balance, every: 0.2s}")
    path.write_text(
        path.read_text() + "metrics: {listen: '127.0.0.1:0', allowed_hosts: [Collector]}\n"
    )
    service = Service(load(path))
    service.start()
    assert service.monitor is not None
    host, port = service.monitor.address
    base = f"http://{host}:{port}"
    try:
        wait_for(lambda: count_ok(url, "b") >= 2)
        for name in (
            "evil.example",
            f"evil.example:{port}",
            f"localhost.evil.example:{port}",
            f"127.0.0.1.evil.example:{port}",
            "collector.evil.example",
            f"[::1]x:{port}",
            f"localhost:{port}x",
            "localhost.",
        ):
            for route in ("/", "/metrics", "/healthz"):
                got = requests.get(base + route, headers={"Host": name}, timeout=10)
                assert (got.status_code, got.text) == (
                    421,
                    "unknown Host: add the name to metrics.allowed_hosts\n",
                ), (name, route)
        for name in (
            f"localhost:{port}",
            "LOCALHOST",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            "127.0.0.1",
            f"collector:{port}",
            "COLLECTOR",
            f"192.0.2.7:{port}",
        ):
            for route in ("/", "/metrics", "/healthz"):
                got = requests.get(base + route, headers={"Host": name}, timeout=10)
                assert got.status_code == 200, (name, route, got.text)
        # No Host: HTTP/1.1 must send one (400); HTTP/1.0 is no browser's (answered). Two: 400.
        for head, status in (
            ("GET /healthz HTTP/1.1\r\n", b"400"),
            ("GET /healthz HTTP/1.0\r\n", b"200"),
            ("GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n", b"400"),
        ):
            with socket.create_connection((host, port), timeout=10) as peer:
                peer.sendall(head.encode() + b"\r\n")
                assert peer.makefile("rb").readline().split()[1] == status, head
        # Docker's HEALTHCHECK, on this listener's port.
        health = json.loads(dict(instructions())["HEALTHCHECK"].partition(" CMD ")[2])
        health = [sys.executable, *(a.replace(":9108/", f":{port}/") for a in health[1:])]
        checked = subprocess.run(health, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
    finally:
        service.stop()


FEW_DESCRIPTORS = """
import resource, sys, threading
from collector.listener import Answer, Listener
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
listener = Listener(("127.0.0.1", 0), {"/healthz": lambda q: Answer(200, b"ok\\n", "text/plain")})
print(listener.address[1], flush=True)
listener.serve_forever()
"""


def test_out_of_descriptors_the_listener_cuts_idle_peers_for_a_probe(tmp_path) -> None:
    """A process with 40 descriptors and 100 idle connections at its listener: accepting fails
    (EMFILE), and each failure cuts the oldest idle peer, so a probe is still answered soon."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FEW_DESCRIPTORS], stdout=subprocess.PIPE, text=True, env=ENV
    )
    peers: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for _ in range(100):
            with contextlib.suppress(OSError):
                peers.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        status, took = probe(f"http://127.0.0.1:{port}")
        assert status == 200 and took < 1.5, took
        assert proc.poll() is None
    finally:
        for peer in peers:
            peer.close()
        proc.terminate()
        proc.wait(10)


def test_a_connection_that_sends_nothing_is_cut_after_the_head_timeout() -> None:
    from collector.listener import Answer, Listener

    listener = Listener(("127.0.0.1", 0), {"/": lambda q: Answer(200, b"", "text/plain")})
    listener.start()
    try:
        peer = socket.create_connection(listener.address, timeout=10)
        started = time.monotonic()
        peer.sendall(b"GET / HT")  # and no more
        assert peer.recv(100) == b""  # cut
        took = time.monotonic() - started
        assert defaults.LISTENER_HEAD_TIMEOUT - 0.2 < took < defaults.LISTENER_HEAD_TIMEOUT + 1
        peer.close()
    finally:
        listener.stop()


def test_a_failing_route_or_a_flood_of_parameters_is_answered_in_one_line(caplog) -> None:
    """Whatever a route raises (data it can't show, a bug), the peer gets a 500 and one line,
    the log one warning: never a connection dropped with nothing said."""
    import requests

    from collector.listener import MAX_QUERY_FIELDS, Answer, Listener

    def broken(query: dict[str, str]) -> Answer:
        raise ArithmeticError("cannot show 1E+30")

    def echo(query: dict[str, str]) -> Answer:
        return Answer(200, str(len(query)).encode(), "text/plain")

    listener = Listener(("127.0.0.1", 0), {"/": broken, "/echo": echo}, "test")
    listener.start()
    host, port = listener.address
    base = f"http://{host}:{port}"
    try:
        with caplog.at_level(logging.WARNING, logger="collector.listener"):
            got = requests.get(base + "/", timeout=10)
        assert (got.status_code, got.text) == (500, "ArithmeticError: see the log\n")
        (line,) = [r.getMessage() for r in caplog.records if r.name == "collector.listener"]
        assert line == "test: / failed: ArithmeticError: cannot show 1E+30"
        fields = "&".join(f"a{i}=1" for i in range(MAX_QUERY_FIELDS))
        got = requests.get(f"{base}/echo?{fields}", timeout=10)
        assert (got.status_code, got.text) == (200, str(MAX_QUERY_FIELDS))
        got = requests.get(f"{base}/echo?{fields}&one=more", timeout=10)
        assert (got.status_code, got.text) == (400, "too many query parameters\n")
    finally:
        listener.stop()


def test_a_peer_that_resets_prints_no_traceback(tmp_path, fake, keypair) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 0.5s}")
    port = free_port()
    cmd = [sys.executable, "-m", "collector.cli", "run", "--log-format", "json"]
    cmd += ["--metrics-listen", f"127.0.0.1:{port}", str(path)]
    with running(cmd, env=ENV) as proc:
        wait_for(lambda: can_connect(port))
        for _ in range(20):
            with contextlib.suppress(OSError):
                peer = socket.create_connection(("127.0.0.1", port))
                peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.close()  # a reset while the scrape is written
        out = sigterm(proc)
    assert "Traceback" not in out
    assert all(line.startswith("{") for line in out.splitlines() if line.strip()), out


def closed(peer: socket.socket) -> bool:
    try:
        return peer.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- 9. the SQLite file deleted under a running service --------------------------------------------


def test_a_sqlite_file_deleted_while_in_use_is_noticed_and_nothing_vanishes(
    tmp_path, fake, keypair, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    db = tmp_path / "c.db"
    url = f"sqlite:///{db}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 0.1s}")
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    service = Service(load(path))
    service.start()
    try:
        wait_for(lambda: count_ok(url, "t") >= 3)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{db}{suffix}")
        wait_for(lambda: len(service.spool) >= 5)
        assert service.monitor is not None
        healthy, body = service.monitor.health.report()
        assert not healthy and any("deleted or moved" in p for p in body["problems"])
        assert "the database refuses writes" in caplog.text
        assert not db.exists()  # nothing re-created it behind the user's back
        # A database appears at the path again (a backup put back, or a new one): it gets them.
        spooled = len(service.spool)
        upgrade(create_engine(url))
        wait_for(lambda: len(service.spool) == 0)
    finally:
        service.stop()
    assert rows(url, "SELECT count(*) FROM runs")[0][0] >= spooled


# -- 10. job-file bombs ----------------------------------------------------------------------------


def test_an_alias_bomb_is_one_short_line_at_once(tmp_path) -> None:
    levels = ["[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i, name in enumerate("bcdefghi"):
        levels.append(f"&{name} [" + ", ".join([f"*{'abcdefghi'[i]}"] * 9) + "]")
    bomb = ", ".join(levels) + "]"
    for where in ("every", "cron", "timezone", "jitter", "since"):
        extra = "" if where in ("every", "cron") else "every: 1s, "
        path = tmp_path / f"{where}.yaml"
        path.write_text(f"jobs:\n  t: {{method: Time, {extra}{where}: {bomb}}}\n")
        result = subprocess.run(
            [sys.executable, "-m", "collector.cli", "check", str(path)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,  # before: it hung, eating memory
        )
        assert result.returncode == 2
        assert len(result.stderr) < 400 and result.stderr.count("\n") == 1, result.stderr


def test_key_files_and_job_files_are_read_only_if_regular_and_small(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.key"
    big.write_text("k\n" + "a" * 70_000 + "\n")
    for key_file, why in (
        ("/dev/zero", "not a regular file"),
        (fifo, "not a regular file"),
        (big, "larger than 65,536 bytes"),
    ):
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"kraken: {{key_file: {key_file}}}\njobs:\n  b: {{method: Balance, every: 1h}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "collector.cli", "check", str(path)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
        assert result.returncode == 2
        assert f"kraken.key_file: cannot read key file '{key_file}': {why}" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check", str(fifo)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot read the job file: not a regular file" in result.stderr


def test_ten_thousand_jobs_load(tmp_path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "jobs:\n"
        + "".join(
            f"  j{i}: {{method: Ticker, params: {{pair: XBTUSD}}, every: 1h}}\n"
            for i in range(10_000)
        )
    )
    started = time.monotonic()
    config = load(path)
    assert len(config.jobs) == 10_000
    assert time.monotonic() - started < 30  # a hang guard; the speed is in bench/ (about 1 s)
    path.write_text(path.read_text() + "  one_more: {method: Time, every: 1h}\n")
    with pytest.raises(collector.ConfigError, match="10,001 jobs; at most 10,000 in one file"):
        load(path)


# -- 11. files are private -------------------------------------------------------------------------


def test_the_database_spool_and_locks_are_created_private(tmp_path, fake, keypair) -> None:
    db = tmp_path / "c.db"
    path = job_file(tmp_path, fake, keypair, f"sqlite:///{db}", "b: {method: Balance, every: 0.1s}")
    service = Service(load(path))
    service.start()
    try:
        wait_for(lambda: count_ok(f"sqlite:///{db}", "b") >= 2)
        spool = Spool(tmp_path / "runs.spool")
        spool.put(["x"])
        made = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), spool.path, Path(f"{spool.path}-wal")]
        made += list(tmp_path.glob("*.lock"))
        assert len(made) >= 6 and all(p.exists() for p in made)
        for p in made:  # before: 0644, readable by every local user
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        spool.close()
    finally:
        service.stop()


# -- 12. smaller ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ['"a\\nERROR forged line"', '"\\e[31mred"', '"has space"', '""'])
def test_job_names_cannot_forge_log_lines_or_escape_the_terminal(tmp_path, name) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"jobs:\n  {name}: {{method: Time, every: 1h}}\n")
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "a job name is 1 to 100 letters, digits, _ . or -" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "\x1b" not in result.output


def test_a_corrupt_nonce_state_is_one_line(tmp_path, fake, keypair, state_dir) -> None:
    from collector.keystate import KeyState

    path = job_file(
        tmp_path, fake, keypair, f"sqlite:///{tmp_path / 'c.db'}", "b: {method: Balance, every: 1h}"
    )
    state = KeyState(state_dir, keypair[0])
    state.folder.mkdir(parents=True)
    state.path.write_text('{"last": "not a number"')
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "run", "--once", str(path)],
        capture_output=True,
        text=True,
        env={**ENV, "COLLECTOR_STATE_DIR": state_dir},
        timeout=60,
    )
    assert result.returncode == 2
    assert f"error: {state.path}: cannot read the key's nonce mark" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_huge_kraken_error_is_stored_and_logged_cut(tmp_path, fake, keypair, caplog) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}")
    fake.inject(
        "kraken_error", method="Time", error="EGeneral:Invalid arguments:" + "x" * 20_000_000
    )
    service = Service(load(path))
    try:
        record = service.execute(service.config.jobs[0])
        service.writer.flush()
    finally:
        service.stop()
    assert record is not None and record.status == "kraken_error"
    (error,) = rows(url, "SELECT error FROM runs")[0]
    assert len(error) <= 2000 and error.endswith("(cut: 20,000,027 characters in all)")
    assert max(len(r.getMessage()) for r in caplog.records) < 3000


def test_the_critical_line_names_the_spool_when_both_fail(tmp_path, caplog) -> None:
    caplog.set_level(logging.CRITICAL, logger="collector")
    missing = tmp_path / "missing"  # neither the database nor the spool can be made there
    store = Store.from_url(f"sqlite:///{missing / 'c.db'}")
    spool = Spool(missing / "runs.spool")  # empty: falsy, and it failed too
    writer = Writer(store, spool=spool)
    writer.start()
    now = datetime.now(UTC)
    try:
        writer.submit(RunRecord("t", "Time", {}, now, now, now))
        wait_for(lambda: bool(caplog.records))
    finally:
        writer.close(1)
    assert caplog.records[0].getMessage().startswith(f"the database and the spool {spool.path}")
