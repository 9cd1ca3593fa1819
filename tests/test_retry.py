"""Transient failures are retried within the run; the exchange is never hammered."""

from __future__ import annotations

import pytest

from collector.errors import (
    BadResponse,
    ConnectionFailed,
    HTTPStatusError,
    KrakenAPIError,
    RequestTimeout,
)
from collector.jobfile import load
from collector.records import RunRecord
from collector.retry import LOCKOUT, NEVER, NONCE, RATE_LIMIT, TRANSIENT, RetryPolicy, classify
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

NO_WAIT = RetryPolicy(rng=lambda low, high: 0.0)


def kraken(*errors: str) -> KrakenAPIError:
    return KrakenAPIError("x", method="Balance", http_status=200, errors=list(errors))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RequestTimeout("t"), TRANSIENT),
        (ConnectionFailed("c"), TRANSIENT),
        (HTTPStatusError("h", http_status=502), TRANSIENT),
        (HTTPStatusError("h", http_status=520), TRANSIENT),
        (HTTPStatusError("h", http_status=404), NEVER),
        (kraken("EService:Unavailable"), TRANSIENT),
        (kraken("EService:Throttled:1700000000"), TRANSIENT),
        (kraken("EGeneral:Internal error"), TRANSIENT),
        (kraken("EGeneral:Too many requests"), TRANSIENT),
        (kraken("EAPI:Rate limit exceeded"), RATE_LIMIT),
        (kraken("EAPI:Invalid nonce"), NONCE),
        (kraken("EGeneral:Temporary lockout"), LOCKOUT),
        (kraken("EAPI:Invalid key"), NEVER),
        (kraken("EAPI:Invalid signature"), NEVER),
        (kraken("EGeneral:Permission denied"), NEVER),
        (kraken("EGeneral:Invalid arguments:pair"), NEVER),
        (kraken("EQuery:Unknown asset pair"), NEVER),
        (BadResponse("b"), NEVER),
    ],
)
def test_classify(error, kind) -> None:
    assert classify(error) == kind


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    top = RetryPolicy(base=0.5, cap=3.0, rng=lambda low, high: high)
    assert [top.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(rng=lambda low, high: low).backoff(4) == 0.0


@pytest.fixture
def run(tmp_path, fake, keypair):
    """Run one job once with a retry policy; returns the stored record."""
    services = []

    def go(job: str, retry: RetryPolicy = NO_WAIT, extra: str = "") -> RunRecord:
        for service in services:  # one at a time: a second on the same file would stand by
            service.stop()
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: sqlite:///{tmp_path / 'r.db'}\nkraken:\n  url: {fake.url}\n"
            f"  key: {keypair[0]}\n  secret: {keypair[1]}\n"
            f"  rate_limit: {{max: 5, decay: 10}}\n{extra}jobs:\n  {job}\n"
        )
        service = Service(load(path), retry=retry)
        services.append(service)
        record = service.execute(service.config.jobs[0])
        assert record is not None
        return record

    yield go
    for service in services:
        service.stop()


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("http_500", {}),
        ("http_502", {}),
        ("http_520", {}),
        ("reset", {}),
        ("slow", {"delay": 1.0}),
        ("kraken_error", {"error": "EService:Busy"}),
        ("kraken_error", {"error": "EGeneral:Internal error"}),
        ("kraken_error", {"error": "EGeneral:Too many requests"}),
    ],
)
def test_transient_failures_are_retried_in_the_run(run, fake, kind, options) -> None:
    fake.inject(kind, method="Balance", count=2, **options)
    record = run("b: {method: Balance, every: 1h, timeout: 0.3s, deadline: 20s}")
    assert (record.status, record.attempts) == ("ok", 3)
    assert fake.calls["Balance"] == 3


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("kraken_error", "EAPI:Invalid key", "kraken_error"),
        ("kraken_error", "EAPI:Invalid signature", "kraken_error"),
        ("kraken_error", "EGeneral:Permission denied", "kraken_error"),
        ("kraken_error", "EGeneral:Invalid arguments:asset", "kraken_error"),
        ("truncated", "", "bad_response"),
    ],
)
def test_hopeless_failures_are_never_retried(run, fake, kind, error, status) -> None:
    fake.inject(kind, method="Balance", count=5, error=error)
    record = run("b: {method: Balance, every: 1h}")
    assert (record.status, record.attempts) == (status, 1)
    assert fake.calls["Balance"] == 1


def test_invalid_nonce_is_retried_once_with_a_fresh_nonce(run, fake, keypair) -> None:
    fake.inject("kraken_error", method="Balance", count=1, error="EAPI:Invalid nonce")
    first = run("b: {method: Balance, every: 1h}")
    assert (first.status, first.attempts) == ("ok", 2)
    fake.inject("kraken_error", method="Balance", count=5, error="EAPI:Invalid nonce")
    second = run("b: {method: Balance, every: 1h}")
    assert (second.status, second.attempts, second.error) == (
        "kraken_error",
        2,
        "EAPI:Invalid nonce",
    )
    assert fake.calls["Balance"] == 4


def test_rate_limit_refusal_waits_for_budget_instead_of_adding_calls(run, fake) -> None:
    fake.inject("kraken_error", method="Balance", error="EAPI:Rate limit exceeded")
    record = run("b: {method: Balance, every: 1h}")
    assert (record.status, record.attempts) == ("ok", 2)
    assert fake.calls["Balance"] == 2
    # The refusal filled the counter (max 5, decay 10/s, 0.5 headroom): the retry waited
    # (5 + 1 - 4.5) / 10 = 0.15 s for budget.
    assert (record.finished_at - record.started_at).total_seconds() >= 0.14


def test_temporary_lockout_is_recorded_not_retried(run, fake) -> None:
    fake.inject("kraken_error", method="Balance", error="EGeneral:Temporary lockout")
    record = run("b: {method: Balance, every: 1h}", extra="  lockout: 1s\n")
    assert (record.status, record.attempts) == ("kraken_error", 1)
    assert fake.calls["Balance"] == 1


def test_lockout_pause_on_the_shared_client(tmp_path, fake, keypair) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'l.db'}\nkraken:\n  url: {fake.url}\n"
        f"  key: {keypair[0]}\n  secret: {keypair[1]}\n  rate_limit: {{max: 5, decay: 10}}\n"
        "  lockout: 1s\njobs:\n  b: {method: Balance, every: 1h}\n"
        "  t: {method: Time, every: 1h}\n"
    )
    probe = Service(load(path))
    assert probe.runner.retry.lockout == 1.0  # kraken.lockout sets the default policy
    probe.stop()
    service = Service(load(path), retry=RetryPolicy(rng=lambda low, high: 0.0, lockout=1.0))
    try:
        balance, public = service.config.jobs
        fake.inject("kraken_error", method="Balance", error="EGeneral:Temporary lockout")
        assert service.execute(balance).status == "kraken_error"
        t = service.execute(public)
        assert (t.finished_at - t.started_at).total_seconds() < 0.5  # public calls go on
        b = service.execute(balance)
        assert b.status == "ok"
        assert (b.finished_at - b.started_at).total_seconds() >= 0.95  # waited out the lockout
    finally:
        service.stop()


def test_deadline_bounds_the_retries(run, fake) -> None:
    fake.inject("http_500", method="Balance", count=1000)
    slowest = RetryPolicy(base=0.5, rng=lambda low, high: high)  # waits 0.5, 1.0, 2.0, ...
    record = run("b: {method: Balance, every: 1h, deadline: 1s}", retry=slowest)
    # t=0 fails, waits 0.5; t=0.5 fails; waiting 1.0 more would pass the deadline: give up.
    assert (record.status, record.http_status, record.attempts) == ("http_error", 500, 2)
    assert (record.finished_at - record.started_at).total_seconds() < 1.0


def test_interval_jobs_retry_at_most_until_their_next_run(tmp_path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "jobs:\n  t: {method: Time, every: 5s}\n  c: {method: Time, cron: '* * * * *'}\n"
    )
    t, c = load(path, environ={}).jobs
    assert (t.deadline, c.deadline) == (5, 60)


def test_retries_are_logged(run, fake, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="collector")
    fake.inject("http_502", method="Balance")
    run("b: {method: Balance, every: 1h}")
    assert "job b: attempt 1 failed (HTTP 502); retrying in 0.00s" in caplog.text


def test_the_exchange_counts_no_extra_calls_over_a_failing_run(tmp_path, keypair) -> None:
    with FakeKraken(tier=None) as fake:
        fake.add_key(*keypair)
        fake.inject("kraken_error", method="Balance", count=100, error="EAPI:Invalid key")
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: sqlite:///{tmp_path / 'x.db'}\nkraken: {{url: '{fake.url}', "
            f"key: '{keypair[0]}', secret: '{keypair[1]}'}}\n"
            "jobs:\n  b: {method: Balance, every: 0.1s}\n"
        )
        service = Service(load(path))
        try:
            for _ in range(3):
                service.execute(service.config.jobs[0])
        finally:
            service.stop()
        assert fake.calls["Balance"] == 3
