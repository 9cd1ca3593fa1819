"""Metrics and /healthz of a running service: real HTTP on an ephemeral port, the real fake
exchange, both databases; the health rule's edges (stale, waiting, spool growing, locked out)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from collector.cli import main
from collector.errors import Status
from collector.events import Events, Reloaded, RunFinished
from collector.health import cursor_time, stale_after
from collector.jobfile import Job, load
from collector.metrics import Metrics, Monitor
from collector.records import RunRecord
from collector.schema import runs
from collector.service import Service
from collector.store import Store
from collector.writer import State

from .helpers import wait_for
from .test_service import job_file


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert service.monitor is not None
    host, port = service.monitor.address
    status, body = get(f"http://{host}:{port}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def health(service: Service) -> tuple[int, dict]:
    assert service.monitor is not None
    host, port = service.monitor.address
    status, body = get(f"http://{host}:{port}/healthz")
    return status, json.loads(body)


@pytest.fixture
def started(tmp_path, fake, keypair, database_url):
    made: list[Service] = []

    def start(jobs: str, store: Store | None = None, **kw) -> Service:
        path = job_file(tmp_path, fake, keypair, database_url, jobs, **kw)
        path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
        service = Service(load(path), workers=4, store=store)
        made.append(service)
        service.start()
        return service

    yield start
    for service in made:
        if not service.stopping.is_set():
            service.stop()


def test_metrics_of_a_running_service(started, fake, keypair) -> None:
    began = time.time()
    service = started(
        """
        t: {method: Ticker, params: {pair: XBTUSD}, every: 0.1s}
        trades: {method: Trades, params: {pair: XBTUSD}, every: 0.1s, since: 0}
        b: {method: Balance, every: 0.05s}
        """,
        # a private budget smaller than the jobs ask for: calls wait, and the waits are counted
        kraken_extra="rate_limit: {max: 2, decay: 10}\n  public_rate_limit: {max: 1000, decay: 1000}",
    )
    fake.inject("kraken_error", method="Ticker", error="EGeneral:Invalid arguments")

    def enough() -> bool:
        m = scrape(service)
        return (
            m.get(("collector_runs_total", (("job", "t"), ("status", "ok"))), 0) >= 3
            and m.get(("collector_rows_written_total", (("table", "trades"),)), 0) > 0
            # stored after they finished: the writer's batch comes a moment later
            and m.get(("collector_rows_written_total", (("table", "ticker"),)), 0) >= 3
            and m.get(("collector_rate_limit_wait_seconds_total", (("limiter", "private"),)), 0) > 0
        )

    wait_for(enough)
    m = scrape(service)
    assert m[("collector_runs_total", (("job", "t"), ("status", "kraken_error")))] == 1
    runs = sum(
        v for (n, labels), v in m.items() if n == "collector_runs_total" and ("job", "t") in labels
    )
    assert m[("collector_attempts_total", (("job", "t"),))] >= runs
    assert m[("collector_run_duration_seconds_count", (("job", "t"),))] == runs
    for job in ("t", "trades", "b"):
        last = m[("collector_last_success_timestamp_seconds", (("job", job),))]
        assert began <= last <= time.time()
    assert m[("collector_rate_limit_wait_seconds_total", (("limiter", "public"),))] == 0
    assert m[("collector_spool_runs", ())] == 0
    assert m[("collector_writer_pending_runs", ())] >= 0
    # The cursor is the fake's last trade (nanoseconds): behind now, by less than a day.
    assert 0 <= m[("collector_dataset_lag_seconds", (("job", "trades"),))] < 86400
    assert ("collector_dataset_lag_seconds", (("job", "t"),)) not in m  # no cursor, no lag
    # Nonces in ms at the clock (leased up to 5 s ahead): within a few seconds of now.
    assert -5 < m[("collector_nonce_lead_seconds", ())] < 10
    status, body = health(service)
    assert status == 200, body
    assert body["status"] == "ok" and body["problems"] == []
    assert body["jobs"]["t"]["state"] == "ok" and body["jobs"]["t"]["interval_seconds"] == 0.1
    assert body["jobs"]["t"]["stale_after_seconds"] == 60
    assert body["writer"] == "direct"
    # Nothing secret on the listener.
    host, port = service.monitor.address
    text = get(f"http://{host}:{port}/metrics")[1].decode() + json.dumps(body)
    assert keypair[1] not in text and keypair[0] not in text
    assert not [s for s in fake.signatures if s in text]
    assert get(f"http://{host}:{port}/nothing")[0] == 404


def test_healthz_503_for_a_stale_job_but_not_for_one_still_waiting(started, fake) -> None:
    fake.inject("kraken_error", method="Assets", error="EGeneral:Invalid arguments", count=10**6)
    service = started(
        """
        quick: {method: Assets, every: 0.1s, stale_after: 1s}
        patient: {method: Assets, every: 0.1s, stale_after: 1h}
        fine: {method: Time, every: 0.1s}
        """
    )
    status, body = health(service)
    assert status == 200, body  # just started: nobody had time to be stale
    assert body["jobs"]["quick"]["state"] == "waiting"
    wait_for(lambda: health(service)[0] == 503)
    status, body = health(service)
    assert body["status"] == "unhealthy"
    assert len(body["problems"]) == 1 and body["problems"][0].startswith("job quick: no success")
    assert body["jobs"]["quick"]["state"] == "stale"
    assert body["jobs"]["quick"]["last_status"] == "kraken_error"
    assert body["jobs"]["patient"]["state"] == "waiting"  # failing, but not for an hour yet
    assert body["jobs"]["fine"]["state"] == "ok"
    fake.clear_faults()
    wait_for(lambda: health(service)[0] == 200)  # a success makes it fresh again


def test_healthz_503_while_the_key_is_locked_out(started, fake) -> None:
    fake.inject("kraken_error", method="Balance", error="EGeneral:Temporary lockout")
    service = started(
        "b: {method: Balance, every: 0.1s}",
        kraken_extra="lockout: 1h\n  rate_limit: {max: 1000, decay: 1000}",
    )
    wait_for(lambda: health(service)[0] == 503)
    body = health(service)[1]
    assert body["problems"][0].startswith("Kraken locked the key out; private calls resume in")
    assert 3500 < body["locked_out_seconds"] <= 3600


def test_healthz_503_while_the_database_is_away_and_runs_spool(tmp_path, fake, keypair) -> None:
    db = tmp_path / "locked.db"
    store = Store.from_url(f"sqlite:///{db}", busy_timeout_ms=200)
    store.upgrade()
    path = job_file(tmp_path, fake, keypair, f"sqlite:///{db}", "t: {method: Time, every: 0.1s}")
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    service = Service(load(path), store=store, workers=2)
    service.start()
    try:
        wait_for(lambda: service.writer.written >= 2)
        assert health(service)[0] == 200
        blocker = sqlite3.connect(db, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")  # the database can't be written
        try:
            wait_for(lambda: health(service)[0] == 503)
            _, body = health(service)
            assert body["writer"] in (State.SPOOLING, State.DRAINING)
            assert body["spool_growing"] is True
            assert [p for p in body["problems"] if p.startswith("database unavailable")] == [
                "database unavailable (OperationalError: (sqlite3.OperationalError) database is "
                "locked): runs go to the spool"
            ]
            assert scrape(service)[("collector_spool_runs", ())] > 0
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: health(service)[0] == 200)
        assert health(service)[1]["writer"] == "direct"
    finally:
        service.stop()


def test_run_metrics_listen_flag_and_bad_addresses(tmp_path, fake, keypair) -> None:
    path = job_file(
        tmp_path, fake, keypair, f"sqlite:///{tmp_path / 'x.db'}", "t: {method: Time, every: 1h}"
    )
    result = CliRunner().invoke(main, ["run", "--metrics-listen", "nope", str(path)])
    assert result.exit_code == 2 and "--metrics-listen" in result.output
    path.write_text(path.read_text() + "metrics:\n  listen: localhost\n")
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    lines = path.read_text().splitlines()
    line = lines.index("  listen: localhost") + 1
    assert result.exit_code == 2
    assert f"{path}:{line}: metrics.listen: must be HOST:PORT" in result.output


def test_two_monitors_in_one_process_keep_their_own_registries() -> None:
    job = Job(name="a", method="Time", every=timedelta(seconds=1))

    def monitor(events: Events) -> Monitor:
        return Monitor(
            "127.0.0.1:0",
            jobs=[job],
            events=events,
            writer_state=lambda: State.DIRECT,
            pending=lambda: 0,
            spooled=lambda: 7,
            nonce=None,
            nonce_unit="ms",
            load_cursor=lambda job, dataset: None,
            datasets={},
        )

    events = Events()
    first, second = monitor(events), monitor(Events())  # the same names twice: no clash
    now = datetime.now(UTC)
    events.publish(RunFinished(RunRecord("a", "Time", {}, now, now, now)))
    assert b'collector_runs_total{job="a",status="ok"} 1.0' in first.scrape()
    assert b"collector_runs_total{" not in second.scrape()
    assert b"collector_spool_runs 7.0" in second.scrape()
    assert b"collector_nonce_lead_seconds" not in second.scrape()  # no key, no nonce


def test_cursor_time_reads_each_datasets_cursor() -> None:
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    s = t.timestamp()
    assert cursor_time("ledger", {"done": s, "window": None}) == t
    assert cursor_time("orders", {"done": None, "window": {"start": None}}) is None
    assert cursor_time("trades", str(int(s * 1e9))) == t
    assert cursor_time("ohlc", int(s)) == t
    assert cursor_time("spread", int(s)) == t
    assert cursor_time("ohlc", None) is None
    assert cursor_time("trades", "junk") is None


def test_stale_after_defaults_to_three_intervals_and_at_least_a_minute() -> None:
    every = lambda s, **kw: Job(name="j", method="Time", every=timedelta(seconds=s), **kw)  # noqa: E731
    assert stale_after(every(5)) == 60
    assert stale_after(every(3600)) == 3 * 3600
    assert stale_after(every(5, stale_after=10.0)) == 10
    hourly = Job(name="h", method="Time", cron="0 * * * *")
    assert stale_after(hourly) == pytest.approx(3 * 3600)
    weekdays = Job(name="w", method="Time", cron="0 9 * * 1-5")  # averages weekends in
    assert 3 * 86400 < stale_after(weekdays) < 3 * 2 * 86400


def test_job_series_are_exact_in_the_text_format() -> None:
    """The job series Metrics writes itself, read back by prometheus_client's own parser: types,
    cumulative buckets, sums, escaped labels, and a removed job's series gone."""
    events = Events()
    metrics = Metrics(events, pending=lambda: 3, spooled=lambda: 0)
    odd = 'odd "name" \\ with\nnewline'
    t0 = datetime(2026, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
    durations = {"a": [0.01, 0.05, 0.2, 2.0, 400.0], odd: [0.3]}
    for job, seconds in durations.items():
        for i, d in enumerate(seconds):
            status = Status.OK if i % 2 == 0 else Status.HTTP_ERROR
            record = RunRecord(job, "Time", {}, t0, t0, t0 + timedelta(seconds=d), status=status)
            record.attempts = 2
            events.publish(RunFinished(record))
    metrics.describe(
        [
            Job(name="a", method="Time", every=timedelta(seconds=1)),
            Job(name=odd, method="Ledgers", every=timedelta(seconds=1), account='a"b'),
        ]
    )
    metrics.cursor("a", datetime.now(UTC) - timedelta(seconds=30))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode("utf-8"))}
    kinds = {name: f.type for name, f in families.items() if name.startswith("collector_")}
    assert kinds == {
        "collector_runs": "counter",
        "collector_attempts": "counter",
        "collector_run_duration_seconds": "histogram",
        "collector_last_success_timestamp_seconds": "gauge",
        "collector_job_info": "gauge",
        "collector_dataset_lag_seconds": "gauge",
        "collector_rate_limit_wait_seconds": "counter",
        "collector_rows_written": "counter",
        "collector_spool_runs": "gauge",
        "collector_writer_pending_runs": "gauge",
        "collector_ledger_breaks": "gauge",
        "collector_ledger_verified_timestamp_seconds": "gauge",
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }

    def of(name: str, job: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"job": job, **labels}.items())))]

    assert of("collector_runs_total", "a", status="ok") == 3
    assert of("collector_runs_total", "a", status="http_error") == 2
    assert of("collector_runs_total", odd, status="ok") == 1
    assert of("collector_attempts_total", "a") == 10
    buckets = {
        le: of("collector_run_duration_seconds_bucket", "a", le=le)
        for le in ("0.05", "0.25", "1.0", "5.0", "30.0", "300.0", "+Inf")
    }
    assert buckets == {
        "0.05": 2,  # 0.01 and 0.05 (a bucket's bound is in it)
        "0.25": 3,
        "1.0": 3,
        "5.0": 4,
        "30.0": 4,
        "300.0": 4,
        "+Inf": 5,
    }
    assert of("collector_run_duration_seconds_count", "a") == 5
    assert of("collector_run_duration_seconds_sum", "a") == pytest.approx(402.26)
    assert of("collector_run_duration_seconds_bucket", odd, le="0.25") == 0
    assert of("collector_run_duration_seconds_bucket", odd, le="1.0") == 1
    # Set by the last ok run (a's are all t0 + their duration; 400 s was the last ok one).
    assert of("collector_last_success_timestamp_seconds", "a") == t0.timestamp() + 400
    assert of("collector_job_info", odd, account='a"b', method="Ledgers") == 1
    assert of("collector_job_info", "a", account="", method="Time") == 1
    assert 29 < of("collector_dataset_lag_seconds", "a") < 60
    assert samples[("collector_writer_pending_runs", ())] == 3
    assert ("collector_nonce_lead_seconds", ()) not in samples  # no key, no nonce

    events.publish(
        Reloaded(jobs=(Job(name="a", method="Time", every=timedelta(seconds=1)),), removed=(odd,))
    )
    body = metrics.render().decode("utf-8")
    assert "newline" not in body and 'job="a"' in body


def test_a_restarted_service_knows_each_jobs_last_success_from_the_database(
    tmp_path, started, fake, keypair, database_url
) -> None:
    """Before a job's first run of this start, /healthz and collector_last_success say what
    `collector status` says (not `waiting`, no series); a success from before a long outage
    counts from the start, so the jobs get their time to run before they are stale."""
    jobs = """
yearly: {method: Time, cron: "0 0 1 1 *", stale_after: 60s}
never: {method: SystemStatus, cron: "0 0 1 1 *"}
"""
    first = Service(load(job_file(tmp_path, fake, keypair, database_url, jobs, reference=False)))
    try:
        first.run_once()
    finally:
        first.stop()
    store = Store.from_url(database_url)
    try:
        with store.engine.begin() as conn:  # that success was two days ago
            conn.execute(
                runs.update()
                .where(runs.c.job == "never")
                .values(status="kraken_error", error="EGeneral:Internal error")
            )
            ran = conn.execute(
                select(runs.c.finished_at).where(runs.c.job == "yearly")
            ).scalar_one()
            finished = ran - timedelta(days=2)
            conn.execute(runs.update().where(runs.c.job == "yearly").values(finished_at=finished))
    finally:
        store.dispose()
    # A cron job that never succeeded runs at start: it fails here, so it is still waiting.
    fake.inject("kraken_error", method="SystemStatus", count=1000, error="EGeneral:Internal error")
    service = started(jobs, reference=False)
    status, body = health(service)
    assert status == 200, body
    assert body["jobs"]["yearly"]["state"] == "ok"
    assert datetime.fromisoformat(body["jobs"]["yearly"]["last_success"]) == finished.replace(
        microsecond=0
    )
    assert (body["jobs"]["never"]["state"], body["jobs"]["never"]["last_success"]) == (
        "waiting",
        None,
    )
    series = scrape(service)
    key = ("collector_last_success_timestamp_seconds", (("job", "yearly"),))
    assert series[key] == pytest.approx(finished.timestamp(), abs=1e-3)
    assert ("collector_last_success_timestamp_seconds", (("job", "never"),)) not in series
