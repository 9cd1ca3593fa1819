"""`collector run --log-format json`: one JSON object per line, job and status on the run lines,
and never a secret, an otp or a signature, at DEBUG with failures happening."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime

from collector.logs import JsonFormatter

from .helpers import running, sigterm, wait_for

OTP = "otp-7Kw2"


def test_json_log_of_a_run_with_faults_holds_no_secret(tmp_path, fake, keypair) -> None:
    key, secret = keypair
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'c.db'}\nkraken:\n  url: {fake.url}\n"
        f"  key: {key}\n  secret: {secret}\n  rate_limit: {{max: 1000, decay: 1000}}\n"
        "metrics: {listen: '127.0.0.1:0'}\njobs:\n"
        f"  b: {{method: Balance, every: 0.2s, deadline: 5s, params: {{otp: '{OTP}'}}}}\n"
        "  t: {method: Ticker, params: {pair: XBTUSD}, every: 0.3s}\n"
    )
    for kind, error in [
        ("http_502", ""),
        ("reset", ""),
        ("kraken_error", "EAPI:Invalid signature"),
        ("kraken_error", "EGeneral:Invalid arguments:otp"),
    ]:
        fake.inject(kind, method="Balance", error=error)
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "run", "--log-level", "debug"]
    cmd += ["--log-format", "json", str(path)]
    with running(cmd, env=env) as proc:
        wait_for(lambda: fake.calls["Balance"] >= 8)
        log = sigterm(proc)
    assert proc.returncode == 0, log[-2000:]
    records = [json.loads(line) for line in log.splitlines()]  # every line is one object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
    levels = {r["level"] for r in records}
    assert {"DEBUG", "INFO", "WARNING"} <= levels
    failed = [r for r in records if r.get("status") == "kraken_error"]
    assert failed and all(r["job"] == "b" and r["logger"] == "collector.runner" for r in failed)
    retries = [r for r in records if "retrying in" in r["message"]]
    assert retries and all(r["job"] == "b" and "status" not in r for r in retries)
    assert any(r["message"].startswith("metrics on http://127.0.0.1:") for r in records)
    assert secret not in log and OTP not in log
    assert [s for s in fake.signatures if s in log] == []


def test_json_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed here" and "ValueError: boom" in data["exc"]
    assert "job" not in data
