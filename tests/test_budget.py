"""The rate budget belongs to the key: one drain after a refusal, across restarts and processes.

The fake keeps Kraken's counter and its penalty rule (a refused call still counts). Counters here
are Kraken's shape sped up (max 15, decay 5/s instead of 0.33/s), so a drain takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import krakenex
import pytest

import collector
from collector.events import RunFinished
from collector.jobfile import load
from collector.ratelimit import RateLimit
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for
from .test_service import rows

LIMIT = RateLimit(15, 5)
REFUSED = "EAPI:Rate limit exceeded"
ENV = {
    k: v for k, v in os.environ.items() if k not in ("COLLECTOR_DATABASE_URL", "COLLECTOR_SPOOL")
}


def jobs_file(
    tmp_path: Path, fake: FakeKraken, key: tuple[str, str], jobs: str, name="jobs"
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / name}.db\n"
        f"kraken:\n  url: {fake.url}\n  key: '{key[0]}'\n  secret: '{key[1]}'\n"
        "  rate_limit: {max: 15, decay: 5}\n  public_rate_limit: {max: 100, decay: 100}\n"
        f"jobs:\n{jobs}"
    )
    return path


def burst(fake: FakeKraken, key: tuple[str, str], calls: int = 25) -> None:
    """Another program (krakenex) makes ``calls`` private calls at once with the same key."""
    other = krakenex.API(*key)
    other.uri = fake.url
    for _ in range(calls):
        other.query_private("Balance")
        time.sleep(0.002)  # krakenex's nonce is the millisecond: two in one would be refused


def test_after_another_programs_burst_the_collector_recovers_in_one_drain(tmp_path) -> None:
    with FakeKraken(tier=LIMIT, history={"ledger": 300}) as fake:
        key = fake.add_key()
        burst(fake, key)
        before = fake.errors[REFUSED]
        assert before == 25 - 15  # the burst went 10 over: the counter is at 25
        path = jobs_file(
            tmp_path,
            fake,
            key,
            "  ledger: {method: Ledgers, every: 1h}\n  balance: {method: Balance, every: 0.2s}\n",
        )
        service = Service(load(path))
        finished: list[tuple[float, collector.errors.Status, str]] = []
        service.events.subscribe(
            RunFinished,
            lambda e: finished.append((time.monotonic(), e.record.status, e.record.job)),
        )
        started = time.monotonic()
        service.start()
        try:
            wait_for(lambda: any(j == "ledger" and s == "ok" for _, s, j in finished), timeout=60)
        finally:
            service.stop()
        refused = fake.errors[REFUSED] - before
    first = min(t for t, s, _ in finished if s == "ok") - started
    drain = 25 / LIMIT.decay  # the counter's level over its decay: 5 s
    # Before: each retry probed at the decay rate, extending the penalty; minutes, dozens refused.
    assert first <= drain + 3, first
    assert refused <= 5, refused


def test_kill_9_mid_backfill_then_restart_is_never_refused(tmp_path) -> None:
    with FakeKraken(tier=LIMIT, history={"ledger": 800}) as fake:
        key = fake.add_key()
        path = jobs_file(tmp_path, fake, key, "  ledger: {method: Ledgers, every: 1h}\n")
        url = f"sqlite:///{tmp_path / 'jobs'}.db"
        cmd = [sys.executable, "-m", "collector.cli", "run", str(path)]
        first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: ledger_rows(url) >= 150)  # three pages in, the counter near full
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        second = subprocess.Popen(
            cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: ledger_rows(url) == 800, timeout=60)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            if second.poll() is None:
                second.kill()
        # Before: the new process started with an empty counter while Kraken's was full.
        assert fake.errors[REFUSED] == 0
        assert fake.errors["EAPI:Invalid nonce"] == 0


def ledger_rows(url: str) -> int:
    try:
        return rows(url, "SELECT count(*) FROM ledger")[0][0]
    except Exception:
        return 0


def test_a_clean_stop_then_run_once_of_a_dozen_private_jobs_is_never_refused(tmp_path) -> None:
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        busy = "".join(f"  b{i}: {{method: Balance, every: 0.05s}}\n" for i in range(6))
        service = Service(load(jobs_file(tmp_path, fake, key, busy)))
        service.start()
        try:
            wait_for(lambda: fake.accepted[key[0]] >= 15)  # the counter is full now
        finally:
            service.stop()
        dozen = "".join(
            f"  j{i}: {{method: {m}, every: 1h}}\n"
            for i, m in enumerate(["Balance", "TradeBalance", "OpenOrders", "BalanceEx"] * 3)
        )
        once = Service(load(jobs_file(tmp_path, fake, key, dozen, name="once")))
        try:
            assert once.run_once()
        finally:
            once.stop()
        assert fake.errors[REFUSED] == 0  # before: 3-4 right after each restart


def test_two_processes_on_one_key_share_its_budget_and_nonces(tmp_path) -> None:
    with FakeKraken(tier=LIMIT, history={"ledger": 200}) as fake:
        key = fake.add_key()
        jobs = "  ledger: {method: Ledgers, every: 1h}\n" + "".join(
            f"  b{i}: {{method: Balance, every: 0.1s}}\n" for i in range(3)
        )
        procs, logs = [], []
        for name in ("one", "two"):
            path = jobs_file(tmp_path, fake, key, jobs, name=name)
            log = tmp_path / f"{name}.log"
            logs.append(log)
            with open(log, "w") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "collector.cli", "run", str(path)],
                        env=ENV,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        try:
            for name in ("one", "two"):
                url = f"sqlite:///{tmp_path / name}.db"
                wait_for(lambda u=url: ok_private(u) >= 10, timeout=60)  # both collect
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            assert [p.wait(30) for p in procs] == [0, 0]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    # Before: 6-8 invalid nonces in 40 s, and both looped on refusals.
    assert fake.errors["EAPI:Invalid nonce"] == 0
    assert fake.errors[REFUSED] <= 2
    text = [log.read_text() for log in logs]
    pids = [p.pid for p in procs]
    assert any(
        "another process uses" in t and f"pid {pids[1 - i]}" in t for i, t in enumerate(text)
    ), text


def ok_private(url: str) -> int:
    try:
        return rows(url, "SELECT count(*) FROM runs WHERE status = 'ok' AND account IS NOT NULL")[
            0
        ][0]
    except Exception:
        return 0


def test_the_drop_in_stops_after_a_refusal_instead_of_hammering() -> None:
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        burst(fake, key)
        before = fake.errors[REFUSED]
        api = collector.API(*key, rate_limit=LIMIT)
        api.uri = fake.url
        answers = [api.query_private("Balance")["error"] for _ in range(4)]
        refused = fake.errors[REFUSED] - before
    # Before: four calls in a row, all refused at once. Now each refusal waits out a drain that
    # doubles, and the key is taken again once its counter is under the maximum.
    assert answers[-1] == []
    assert refused == sum(a == [REFUSED] for a in answers) <= 3


def test_the_penalty_rule_of_the_fake_is_krakens() -> None:
    with FakeKraken(tier=RateLimit(3, 0.001)) as fake:
        key = fake.add_key()
        api = collector.API(*key)  # no limiter: it sends what it is asked to
        api.uri = fake.url
        answers = [api.query_private("Balance")["error"] for _ in range(6)]
    # Three fit; the rest are refused, and each refusal counts: the counter is at 6, not 3.
    assert answers == [[]] * 3 + [[REFUSED]] * 3
    assert fake.counter_level(key[0]) >= 6 - 0.01


def test_status_and_metrics_say_a_key_is_refused(tmp_path) -> None:
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        burst(fake, key, 40)
        path = jobs_file(tmp_path, fake, key, "  b: {method: Balance, every: 0.1s}\n")
        path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
        service = Service(load(path))
        service.start()
        try:
            monitor = service.monitor
            assert monitor is not None
            seen: list[dict] = []

            def unhealthy() -> bool:  # the refusal's event reaches health after the fake counts it
                healthy, body = monitor.health.report()
                seen[:] = [body]
                return not healthy and fake.errors[REFUSED] >= 25 + 3

            wait_for(unhealthy)  # three of ours refused in a row
            (body,) = seen
            assert body["refused_keys"]["default"]["refusals"] >= 3
            assert any("refuses account default's key" in p for p in body["problems"])
            scrape = service.monitor.scrape().decode()
            assert 'collector_rate_limit_refusals_total{account="default"}' in scrape
            assert 'collector_key_counter{account="default"}' in scrape
            wait_for(
                lambda: (
                    rows(
                        f"sqlite:///{tmp_path / 'jobs'}.db",
                        "SELECT count(*) FROM runs WHERE status = 'ok'",
                    )[0][0]
                    >= 3
                ),
                timeout=30,
            )
        finally:
            service.stop()
    from click.testing import CliRunner

    from collector.cli import main

    result = CliRunner().invoke(main, ["status", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert "account default: key counter" in result.output
    assert "Kraken refused it for the rate limit" in result.output


def test_refusals_wait_a_drain_that_doubles_then_the_budget_is_used_fully() -> None:
    from collector.ratelimit import RateLimiter

    now = [0.0]
    limiter = RateLimiter(RateLimit(15, 0.33), clock=lambda: now[0], sleep=lambda s: None)
    waits = [limiter.refused(2) for _ in range(5)]
    # (cost + margin) / decay, doubling on each refusal in a row, at most a full drain
    assert waits == pytest.approx([3 / 0.33, 6 / 0.33, 12 / 0.33, 15 / 0.33, 15 / 0.33])
    now[0] += waits[-1]
    assert limiter.wait_time(2) == pytest.approx(0, abs=1e-9)  # the same call goes at the end
    limiter.acquire(2)
    limiter.accepted()
    assert limiter.refusals == 0
    # ...and the ones after it at the decay rate: the budget is used fully, not backed off.
    assert limiter.wait_time(1) == pytest.approx(1 / 0.33)


def pg_jobs(tmp_path: Path, fake: FakeKraken, key: tuple[str, str], url: str, jobs: str, name: str):
    """A job file on the PostgreSQL database ``url`` (the lease rows), failover 2 s."""
    path = jobs_file(tmp_path, fake, key, jobs, name=name)
    text = path.read_text().replace(f"sqlite:///{tmp_path / name}.db", url)
    path.write_text(text + "failover: 2s\n")
    return path


BUSY = "".join(f"  b{i}: {{method: Balance, every: 0.05s}}\n" for i in range(6))
DOZEN = "".join(
    f"  j{i}: {{method: {m}, every: 1h}}\n"
    for i, m in enumerate(["Balance", "TradeBalance", "OpenOrders", "BalanceEx"] * 3)
)


def test_another_machine_taking_the_lease_starts_from_the_counter_its_holder_left(
    tmp_path, postgres, monkeypatch
) -> None:
    """Two machines (two state folders, one PostgreSQL): the lease row carries the key's counter,
    so the standby that takes over after a clean stop is not refused (before: the counter it
    started with was empty while Kraken's was full)."""
    url = postgres.new_database()
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        first = Service(load(pg_jobs(tmp_path, fake, key, url, BUSY, "first")))
        first.start()
        try:
            wait_for(lambda: fake.counter_level(key[0]) >= 14)  # the counter is (nearly) full
        finally:
            first.stop()
        # The row has the counter as Kraken can have it: near full, never over the maximum
        # (the calls still waiting for budget at the stop were never sent).
        ((level, refusals),) = rows(
            url,
            "SELECT counter_level, counter_refusals FROM account_leases WHERE account = 'default'",
        )
        assert 10 <= level <= LIMIT.max and refusals == 0, level
        monkeypatch.setenv("COLLECTOR_STATE_DIR", str(tmp_path / "other-machine"))
        second = Service(load(pg_jobs(tmp_path, fake, key, url, DOZEN, "second")))
        try:
            assert second.run_once()
        finally:
            second.stop()
        assert fake.errors[REFUSED] == 0
        assert fake.errors["EAPI:Invalid nonce"] == 0


def test_after_a_holder_dies_the_machine_taking_over_assumes_its_counter_full(
    tmp_path, postgres, monkeypatch
) -> None:
    """kill -9 of the holder: its calls after its last renewal are unknown, so the next holder
    (another machine) takes the counter as full as of that renewal, and is not refused."""
    url = postgres.new_database()
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        path = pg_jobs(tmp_path, fake, key, url, BUSY, "first")
        env = {**ENV, "COLLECTOR_STATE_DIR": str(tmp_path / "first-machine")}
        cmd = [sys.executable, "-m", "collector.cli", "run", str(path)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: fake.accepted[key[0]] >= 40)  # at the counter's pace for a while
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        monkeypatch.setenv("COLLECTOR_STATE_DIR", str(tmp_path / "other-machine"))
        second = Service(load(pg_jobs(tmp_path, fake, key, url, DOZEN, "second")))
        try:
            assert second.run_once()  # waits for the dead holder's lease to run out (2 s)
        finally:
            second.stop()
        assert fake.errors[REFUSED] == 0
        assert fake.errors["EAPI:Invalid nonce"] == 0


def test_a_closed_orders_backfill_on_the_starter_tier_is_never_refused(
    tmp_path, database_url
) -> None:
    """ClosedOrders costs 2 on a strict exchange (ccxt counts it so, and so does the fake): a
    backfill's burst of pages counted 1 each left our counter a unit a page below the exchange's,
    which refused the 8th page (before: 2-3 refusals a backfill, on both databases)."""
    with FakeKraken(tier="starter", history={"ledger": 1400}) as fake:
        key = fake.add_key()
        total = len(fake.closed_orders())
        assert total > 8 * 50  # more pages than the starter counter's 15 holds at 1 a page
        path = tmp_path / "orders.yaml"
        path.write_text(
            f"database: {database_url}\n"
            f"kraken:\n  url: {fake.url}\n  key: '{key[0]}'\n  secret: '{key[1]}'\n"
            "  tier: starter\n  public_rate_limit: {max: 100, decay: 100}\n"
            "reference: false\n"
            "jobs:\n  orders: {method: ClosedOrders, every: 1h}\n"
        )
        service = Service(load(path))
        done: list[RunFinished] = []
        service.events.subscribe(RunFinished, done.append)
        service.start()
        try:
            wait_for(lambda: bool(done), timeout=120)
        finally:
            service.stop()
        assert [(e.record.status, e.record.error) for e in done] == [("ok", None)]
        assert rows(database_url, "SELECT count(*) FROM orders")[0][0] == total
        assert fake.errors[REFUSED] == 0
        assert fake.spent[key[0]] == 2 * done[0].record.pages


def test_the_counter_shown_is_capped_at_the_maximum_unless_refused(tmp_path) -> None:
    """Calls waiting for budget are counted in the limiter's level but were never sent: `status`
    and `collector_key_counter` showed "16.3 of 15". Shown capped at the maximum; over it only
    after a refusal (the penalty's wait)."""
    from click.testing import CliRunner

    from collector.cli import main
    from collector.keystate import KeyBudget
    from collector.nonce import NonceSource
    from collector.ratelimit import RateLimiter

    now = [1000.0]
    starter = RateLimit(15, 0.33)  # slow decay: the seconds `status` takes to start don't matter
    limiter = RateLimiter(starter, clock=lambda: now[0], sleep=lambda s: None)
    limiter.reserve(15)
    assert limiter.reserve(1.3) > 0  # a call waits for budget: counted, not sent
    assert limiter.level() == 15  # before: 16.3 (metrics' collector_key_counter)
    with FakeKraken(tier=LIMIT) as fake:
        key = fake.add_key()
        path = jobs_file(tmp_path, fake, key, "  b: {method: Balance, every: 1h}\n")
        path.write_text(path.read_text().replace("decay: 5}", "decay: 0.33}"))
        config = load(path)
        budget = KeyBudget(config.state_dir, key[0], clock=time.time)
        with budget.turn(limiter, NonceSource()):
            pass
        budget.close()
        assert float(budget.read()["level"]) == pytest.approx(16.3)  # the file keeps what it counts
        env = {"COLLECTOR_DATABASE_URL": ""}
        result = CliRunner().invoke(main, ["status", str(path)], env=env)
        assert "account default: key counter 15 of 15" in result.output, result.output
        limiter.refused(1)
        assert limiter.level() > 15  # after a refusal: the penalty's wait, kept
        with budget.turn(limiter, NonceSource()):
            pass
        budget.close()
        result = CliRunner().invoke(main, ["status", str(path)], env=env)
        line = next(x for x in result.output.splitlines() if "key counter" in x)
        assert float(line.split("key counter ")[1].split(" of")[0]) > 15, line
