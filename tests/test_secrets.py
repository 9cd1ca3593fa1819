"""The API secret, every API-Sign value and the otp never reach a log, the database, an error
message or `collector check` output — at any log level, with failures happening."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

import collector
from collector.cli import main

from .helpers import running, sigterm, wait_for

OTP = "otp-9Zq4"  # letters: a code that no price or id in the data can contain by chance


def dump(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    out = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                out.append(json.dumps([str(v) for v in row]))
    engine.dispose()
    return "\n".join(out)


def test_service_at_debug_level_with_failures_leaks_nothing(
    tmp_path, fake, keypair, database_url
) -> None:
    key, secret = keypair
    key_file = tmp_path / "kraken.key"
    key_file.write_text(f"{key}\n{secret}\n")
    key_file.chmod(0o600)
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database_url}\nkraken:\n  url: {fake.url}\n  key_file: kraken.key\n"
        "  rate_limit: {max: 1000, decay: 1000}\n"
        "jobs:\n"
        f"  b: {{method: Balance, every: 0.2s, timeout: 0.5s, params: {{otp: '{OTP}'}}}}\n"
        f"  l: {{method: Ledgers, every: 0.3s, params: {{otp: '{OTP}'}}}}\n"
        "  t: {method: Ticker, params: {pair: XBTUSD}, every: 0.3s}\n"
    )
    for kind, error in [
        ("http_502", ""),
        ("reset", ""),
        ("truncated", ""),
        ("not_json", ""),
        ("kraken_error", "EAPI:Invalid signature"),
        ("kraken_error", "EGeneral:Invalid arguments:otp"),
        ("slow", ""),
    ]:
        fake.inject(kind, method="Balance", error=error, delay=1.0)
    fake.inject("kraken_error", method="Ledgers", count=3, error="EAPI:Invalid nonce")
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "run", "--log-level", "debug", str(path)]
    with running(cmd, env=env) as proc:
        wait_for(lambda: fake.calls["Balance"] >= 14)
        log = sigterm(proc)
    assert proc.returncode == 0, log[-2000:]
    check = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    database = dump(database_url)
    # The spool file too, raw bytes and all (its WAL, freed pages), wherever the default put it.
    spool_files = [p for p in tmp_path.rglob("*.spool*") if p.is_file()]
    spool = "".join(p.read_bytes().decode("latin-1") for p in spool_files)

    # The run really happened, with failures, at DEBUG (urllib3's and ours), so the search means something.
    assert " DEBUG " in log and "-> HTTP 502" in log and "/0/private/Balance" in log
    # (never-retried failures, so they are stored whatever the retry timing)
    assert "EAPI:Invalid signature" in database and "bad_response" in database and "ok" in database
    assert len(fake.signatures) >= 14

    # The key's nonce state, named by a hash of the key and holding neither the key nor the secret.
    state_files = [p for p in Path(os.environ["COLLECTOR_STATE_DIR"]).rglob("*") if p.is_file()]
    state = "".join(p.read_bytes().decode("latin-1") for p in state_files)
    assert '"last"' in state  # it exists, so searching it means something
    assert key not in state and key not in "".join(p.name for p in state_files)
    for where, haystack in (
        ("log", log),
        ("database", database),
        ("check", check.output),
        ("spool", spool),
        ("state", state),
    ):
        assert secret not in haystack, where
        assert OTP not in haystack, where
        leaked = [s for s in fake.signatures if s in haystack]
        assert leaked == [], where


def test_error_messages_hold_no_secret(fake, keypair) -> None:
    key, secret = keypair
    api = collector.API(key, secret)
    api.uri = fake.url
    messages = []
    for kind in ("http_502", "reset", "truncated", "not_json"):
        fake.inject(kind, method="Balance")
        with pytest.raises(collector.RequestError) as info:
            api.call("Balance", {"otp": OTP})
        messages.append(f"{info.value!s} {info.value!r}")
    fake.inject("kraken_error", method="Balance", error="EAPI:Invalid key")
    with pytest.raises(collector.KrakenAPIError) as info:
        api.call("Balance", {"otp": OTP})
    messages.append(str(info.value))
    with pytest.raises(collector.CredentialsError) as cred:
        collector.API(key, secret + "!!")._sign({"nonce": 1}, "/0/private/Balance")
    messages.append(str(cred.value))
    text_ = "\n".join(messages)
    assert secret not in text_ and OTP not in text_
    assert not [s for s in fake.signatures if s in text_]


def test_group_or_world_readable_key_file_gets_a_warning(tmp_path, keypair) -> None:
    key_file = tmp_path / "kraken.key"
    key_file.write_text(f"{keypair[0]}\n{keypair[1]}\n")
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'k.db'}\nkraken:\n  key_file: kraken.key\n"
        "jobs:\n  b: {method: Balance, every: 1h}\n"
    )
    key_file.chmod(0o644)
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 0
    assert (
        f"warning: {path}:3: kraken.key_file: '{key_file}' is readable by group or others "
        f"(mode 0644); run: chmod 600 {key_file}"
    ) in result.output
    key_file.chmod(0o600)
    result = CliRunner().invoke(main, ["check", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert "readable by group" not in result.output


def test_job_repr_hides_params() -> None:
    from collector.jobfile import Job

    assert OTP not in repr(Job(name="b", method="Balance", params={"otp": OTP}))
