"""`run --once` runs its jobs at the same time, and Ctrl-C keeps what finished; start-up says
whether the exchange answers."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from collector.jobfile import load
from collector.service import Service

from .helpers import running, wait_for
from .test_service import _utc, job_file, rows


def test_once_runs_the_jobs_at_the_same_time(tmp_path, fake, keypair, database_url) -> None:
    fake.inject("slow", method="Ticker", delay=1.0, count=4)
    jobs = "".join(
        f"t{i}: {{method: Ticker, params: {{pair: XBTUSD}}, every: 1h}}\n" for i in range(4)
    )
    service = Service(load(job_file(tmp_path, fake, keypair, database_url, jobs)))
    try:
        assert service.run_once()
    finally:
        service.stop()
    spans = [
        (_utc(a), _utc(b))
        for a, b in rows(
            database_url, "SELECT started_at, finished_at FROM runs WHERE method = 'Ticker'"
        )
    ]
    assert len(spans) == 4
    # Each call took a second; they overlapped instead of queueing one after another.
    latest_start, earliest_end = max(a for a, _ in spans), min(b for _, b in spans)
    assert latest_start < earliest_end, spans


def test_ctrl_c_during_once_keeps_what_finished_and_exits_130(tmp_path, fake, keypair) -> None:
    db = tmp_path / "once.db"
    # One public job answers at once; the private ones queue for a budget that refills in minutes.
    jobs = "t: {method: Time, every: 1h}\n" + "".join(
        f"b{i}: {{method: Balance, every: 1h}}\n" for i in range(4)
    )
    path = job_file(
        tmp_path,
        fake,
        keypair,
        f"sqlite:///{db}",
        jobs,
        kraken_extra="rate_limit: {max: 1.5, decay: 0.01}",
    )
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "run", "--once", str(path)]
    with running(cmd, env=env) as proc:
        wait_for(lambda: fake.calls["Time"] >= 1 and fake.calls["Balance"] >= 1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "Aborted" not in output and "Traceback" not in output
    # (the service's own Assets and AssetPairs runs aside: public, they answered at once)
    stored = rows(
        f"sqlite:///{db}",
        "SELECT job, status FROM runs WHERE job NOT LIKE 'collector:%' ORDER BY job",
    )
    assert ("t", "ok") in stored
    assert [status for job, status in stored if job.startswith("b")] == ["ok"]
    assert len(stored) == 2  # the runs that waited for budget were never sent, nor stored
    assert fake.calls["Balance"] == 1


def test_start_says_whether_the_exchange_answers(tmp_path, fake, keypair, caplog) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    service = Service(load(job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}")))
    service.start()
    try:
        wait_for(lambda: "answered (its clock " in caplog.text)
    finally:
        service.stop()
    closed = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}")
    closed.write_text(closed.read_text().replace(fake.url, "http://127.0.0.1:9"))
    service = Service(load(closed))
    service.start()
    try:
        wait_for(lambda: "did not answer" in caplog.text)
    finally:
        service.stop()
    assert "collecting anyway" in caplog.text


def test_a_database_that_never_went_down_gets_no_spool_file(tmp_path, fake, keypair) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'c.db'}"
    (tmp_path / "data").mkdir()
    path = job_file(tmp_path, fake, keypair, url, "b: {method: Balance, every: 1h}")
    service = Service(load(path))
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if "spool" in p.name) == []
    assert not list(tmp_path.rglob("*.spool"))


def test_a_credentials_error_inside_a_run_is_a_config_error(tmp_path, fake, keypair) -> None:
    import collector

    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = Service(
        load(job_file(tmp_path, fake, keypair, url, "b: {method: Balance, every: 1h}")),
        api=collector.API(keypair[0], "not base64!"),  # e.g. a key file edited by hand
    )
    try:
        record = service.execute(service.config.jobs[0])
    finally:
        service.stop()
    assert record is not None
    assert (record.status, record.attempts) == ("config_error", 1)
    assert "not valid base64" in record.error and "not base64!" not in record.error
    assert rows(url, "SELECT status FROM runs")[0][0] == "config_error"
    assert fake.calls["Balance"] == 0


def test_ctrl_c_while_a_failed_run_waits_to_retry_still_stores_it(tmp_path, fake, keypair) -> None:
    """A run whose call failed and whose retry waits for budget is a failed run, not nothing."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fake.inject("http_502", method="Balance", count=1)
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "b: {method: Balance, every: 1h}",
        kraken_extra="rate_limit: {max: 1.5, decay: 0.01}",
    )
    service = Service(load(path))
    service.open()
    record = []
    thread = threading.Thread(target=lambda: record.append(service.execute(service.config.jobs[0])))
    thread.start()
    wait_for(lambda: fake.calls["Balance"] == 1)  # failed; its retry now waits ~100 s for budget
    service.stopping.set()  # what Ctrl-C does
    thread.join(30)
    service.stop()
    assert record and record[0] is not None
    assert (record[0].status, record[0].attempts) == ("http_error", 1)
    assert rows(url, "SELECT status, attempts FROM runs") == [("http_error", 1)]
