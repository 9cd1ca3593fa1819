"""Several accounts in one service; one active collector per account across processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.jobfile import load
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for
from .test_service import rows


def accounts_file(tmp_path: Path, fake: FakeKraken, url: str, main_key, savings_key, extra=""):
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {url}\n"
        f"kraken:\n  url: {fake.url}\n  public_rate_limit: {{max: 100, decay: 100}}\n"
        "accounts:\n"
        f"  main: {{key: '{main_key[0]}', secret: '{main_key[1]}', "
        "rate_limit: {max: 50, decay: 50}}\n"
        f"  savings: {{key: '{savings_key[0]}', secret: '{savings_key[1]}', "
        "rate_limit: {max: 50, decay: 50}}\n"
        "jobs:\n"
        "  main_balance: {method: Balance, account: main, every: 0.2s}\n"
        "  savings_ledger: {method: Ledgers, account: savings, every: 0.2s}\n"
        "  savings_balance: {method: Balance, account: savings, every: 0.2s}\n"
        "  ticker: {method: Ticker, params: {pair: XBTUSD}, every: 0.2s}\n" + extra
    )
    return path


@pytest.mark.usefixtures("copy_path")
def test_two_accounts_land_with_their_names_and_one_lockout_stops_only_its_own(
    tmp_path, database_url
) -> None:
    with FakeKraken(tier="pro", history={"ledger": 80}) as fake:
        main_key, savings_key = fake.add_key(), fake.add_key()
        path = accounts_file(tmp_path, fake, database_url, main_key, savings_key)
        config = load(path)
        assert [a.name for a in config.accounts] == ["main", "savings"]
        service = Service(config)
        service.start()
        try:
            wait_for(lambda: fake.accepted[main_key[0]] >= 3 and fake.accepted[savings_key[0]] >= 3)
            # Kraken locks one key out: only that account's private calls pause.
            fake.inject(
                "kraken_error", method="Balance", error="EGeneral:Temporary lockout", count=1
            )
            wait_for(lambda: fake.errors["EGeneral:Temporary lockout"] == 1)
            locked = [k for k in (main_key, savings_key) if _locked(fake, k)]
            before = {k[0]: fake.accepted[k[0]] for k in (main_key, savings_key)}
            wait_for(lambda: sum(fake.accepted.values()) >= sum(before.values()) + 10)
        finally:
            service.stop()
    assert fake.errors["EAPI:Invalid nonce"] == 0
    by_account = dict(rows(database_url, "SELECT account, count(*) FROM runs GROUP BY account"))
    assert by_account["main"] > 0 and by_account["savings"] > 0 and by_account[None] > 0
    ledger_accounts = {r[0] for r in rows(database_url, "SELECT account FROM ledger")}
    assert ledger_accounts == {"savings"}
    balance_accounts = {r[0] for r in rows(database_url, "SELECT DISTINCT account FROM balances")}
    assert balance_accounts == {"main", "savings"}
    assert len(locked) == 1  # the one whose Balance got the lockout
    (locked_key,) = locked
    other = savings_key if locked_key is main_key else main_key
    assert fake.accepted[other[0]] > before[other[0]]  # the other account went on...
    assert fake.accepted[locked_key[0]] == before[locked_key[0]]  # ...the locked one did not


def _locked(fake: FakeKraken, key) -> bool:
    """Whether ``key`` got the lockout: its counter of accepted calls stops moving."""
    seen = fake.accepted[key[0]]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        if fake.accepted[key[0]] != seen:
            return False
        time.sleep(0.05)
    return True


def test_an_invalid_key_stops_only_its_account(tmp_path, fake, database_url) -> None:
    good = fake.add_key()
    path = accounts_file(tmp_path, fake, database_url, good, ("bm90IGEga2V5", good[1]))
    service = Service(load(path))
    try:
        service.run_once()
    finally:
        service.stop()
    status = dict(rows(database_url, "SELECT job, status FROM runs WHERE account IS NOT NULL"))
    assert status["main_balance"] == "ok" and status["savings_balance"] == "kraken_error"


def test_private_jobs_must_name_an_account_when_there_are_several(tmp_path, fake) -> None:
    a, b = fake.add_key(), fake.add_key()
    path = accounts_file(tmp_path, fake, "sqlite:///x.db", a, b)
    path.write_text(path.read_text().replace("method: Balance, account: main,", "method: Balance,"))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    assert (
        "jobs.main_balance.account: Balance is private: name its account (one of main, savings)"
        in result.output
    )
    path.write_text(
        path.read_text()
        .replace("method: Balance,", "method: Balance, account: main,", 1)
        .replace("method: Ledgers, account: savings,", "method: Ledgers, account: savigns,")
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    assert "no account 'savigns'; did you mean 'savings'?" in result.output


def test_check_shows_the_budget_of_each_account(tmp_path, fake) -> None:
    a, b = fake.add_key(), fake.add_key()
    path = accounts_file(tmp_path, fake, f"sqlite:///{tmp_path / 'b.db'}", a, b)
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert re.search(r"budget: account main: private 5 calls/s of 50/s", result.output), (
        result.output
    )
    assert re.search(r"budget: account savings: private 15 calls/s of 50/s", result.output)
    assert a[1] not in result.output and b[1] not in result.output


# -- one active collector per account, across processes -----------------------------------------


def _job_file(tmp_path: Path, fake: FakeKraken, keypair, url: str, failover: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {url}\nfailover: {failover}\n"
        f"kraken:\n  url: {fake.url}\n  key: '{keypair[0]}'\n  secret: '{keypair[1]}'\n"
        "  rate_limit: {max: 100, decay: 100}\n  public_rate_limit: {max: 100, decay: 100}\n"
        "jobs:\n  b: {method: Balance, every: 0.1s}\n  l: {method: Ledgers, every: 0.3s}\n"
        "  t: {method: Ticker, params: {pair: XBTUSD}, every: 0.3s}\n"
    )
    return path


@contextlib.contextmanager
def collector(path: Path, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _when(log: Path, pattern: str) -> datetime | None:
    for line in log.read_text().splitlines():
        if re.search(pattern, line):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return None


def test_two_replicas_one_sends_kill_9_fails_over(tmp_path, postgres) -> None:
    url = postgres.new_database()
    with FakeKraken(tier=None, history={"ledger": 300}, growth={"ledger": 5.0}) as fake:
        keypair = fake.add_key()
        path = _job_file(tmp_path, fake, keypair, url, "3s")
        a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
        with collector(path, a_log) as a:
            wait_for(lambda: "holding the lease on account default" in a_log.read_text())
            with collector(path, b_log):
                wait_for(lambda: "standing by: account default is held by" in b_log.read_text())
                assert "pid" in b_log.read_text() and "since" in b_log.read_text()
                calls = fake.accepted[keypair[0]]
                wait_for(lambda: fake.accepted[keypair[0]] >= calls + 10)
                assert "holding the lease on account default" not in b_log.read_text()
                a.send_signal(signal.SIGKILL)
                a.wait(10)
                killed = time.monotonic()
                wait_for(lambda: "holding the lease on account default" in b_log.read_text(), 20)
                took_over = time.monotonic() - killed
                calls = fake.accepted[keypair[0]]
                wait_for(lambda: fake.accepted[keypair[0]] >= calls + 10)
        assert took_over < 3 + 5  # failover, and a renewal period to notice
        assert fake.errors["EAPI:Invalid nonce"] == 0
        stored = [r[0] for r in rows(url, "SELECT ledger_id FROM ledger")]
        done = _cursor_done(url)
        assert len(stored) == len(set(stored))  # no duplicate rows
        assert set(stored) >= {k for k, e in fake.ledger().items() if e["time"] <= done}  # no gap
        tickers = rows(
            url, "SELECT run_id, count(*) FROM ticker GROUP BY run_id HAVING count(*) > 1"
        )
        assert tickers == []


def _cursor_done(url: str) -> float:
    import json

    (value,) = rows(url, "SELECT value FROM cursors WHERE job = 'l'")[0]
    return (value if isinstance(value, dict) else json.loads(value))["done"]


def test_a_holder_cut_from_its_database_stops_before_the_standby_starts(tmp_path, postgres) -> None:
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    role = f"holder_{database}"
    with contextlib.closing(_pg(postgres)) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    with FakeKraken(tier=None, history={"ledger": 100}) as fake:
        keypair = fake.add_key()
        direct = _job_file(tmp_path, fake, keypair, url, "3s")
        cut = tmp_path / "cut"
        cut.mkdir()
        as_role = _job_file(cut, fake, keypair, url.replace("//postgres@", f"//{role}@"), "3s")
        a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
        with collector(as_role, a_log) as a:
            wait_for(lambda: "holding the lease on account default" in a_log.read_text())
            with collector(direct, b_log):
                wait_for(lambda: "standing by" in b_log.read_text())
                # pg_terminate_backend on the holder's connections: it reconnects, its lease row
                # is still its own, and nothing changes hands.
                assert _terminate(postgres, role) >= 1
                calls = fake.accepted[keypair[0]]
                wait_for(lambda: fake.accepted[keypair[0]] >= calls + 10)
                assert "holding the lease on account default" not in b_log.read_text()
                # Now the holder can't reach its database at all (cut off: no login, no session).
                with contextlib.closing(_pg(postgres)) as admin:
                    admin.execute(f"ALTER ROLE {role} NOLOGIN")
                _terminate(postgres, role)
                wait_for(lambda: "holding the lease on account default" in b_log.read_text(), 30)
                calls = fake.accepted[keypair[0]]
                wait_for(lambda: fake.accepted[keypair[0]] >= calls + 10)
            assert a.poll() is None  # the cut-off holder is still alive, standing by
        stopped = _when(a_log, r"(cannot renew|lost) the lease on account default")
        started = _when(b_log, r"holding the lease on account default")
        assert stopped is not None and started is not None and stopped < started
        assert fake.errors["EAPI:Invalid nonce"] == 0


def _pg(postgres):
    import psycopg

    return psycopg.connect(
        f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres", autocommit=True
    )


def _terminate(postgres, role: str) -> int:
    with contextlib.closing(_pg(postgres)) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        ).fetchone()[0]


def test_two_processes_on_one_sqlite_file_never_both_send(tmp_path, fake, keypair) -> None:
    path = _job_file(tmp_path, fake, keypair, f"sqlite:///{tmp_path / 'one.db'}", "2s")
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with collector(path, a_log) as a:
        wait_for(lambda: "holding the lease on account default" in a_log.read_text())
        with collector(path, b_log):
            wait_for(lambda: "standing by: account default is held by" in b_log.read_text())
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            wait_for(lambda: "holding the lease on account default" in b_log.read_text(), 20)
            calls = fake.accepted[keypair[0]]
            wait_for(lambda: fake.accepted[keypair[0]] >= calls + 5)
    assert fake.errors["EAPI:Invalid nonce"] == 0


def test_status_and_metrics_say_each_jobs_account(tmp_path, database_url) -> None:
    import json

    from prometheus_client.parser import text_string_to_metric_families

    with FakeKraken(tier=None, history={"ledger": 60}) as fake:
        main_key, savings_key = fake.add_key(), fake.add_key()
        path = accounts_file(
            tmp_path,
            fake,
            database_url,
            main_key,
            savings_key,
            "metrics: {listen: '127.0.0.1:0'}\n",
        )
        service = Service(load(path))
        try:
            assert service.run_once()
            assert service.monitor is not None
            body = service.monitor.scrape().decode()
        finally:
            service.stop()
        result = CliRunner().invoke(main, ["status", "--json", str(path)])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    info = {
        dict(labels)["job"]: dict(labels)["account"]
        for (name, labels), _ in samples.items()
        if name == "collector_job_info"
    }
    assert info == {
        "main_balance": "main",
        "savings_ledger": "savings",
        "savings_balance": "savings",
        "ticker": "",
    }
    report = json.loads(result.output)
    accounts = {j["name"]: j["account"] for j in report["jobs"]}
    assert accounts["savings_ledger"] == "savings" and accounts["ticker"] is None
    (ledger,) = [j for j in report["jobs"] if j["name"] == "savings_ledger"]
    assert ledger["rows"] == 60  # the account's rows
