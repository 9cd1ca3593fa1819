"""The README's SQL works as written, on SQLite and on PostgreSQL, over data the service collected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from collector.config import load
from collector.service import Service

from .test_service import job_file

README = Path(__file__).resolve().parent.parent / "README.md"


def sql_blocks(dialect: str) -> list[str]:
    """The statements of the README's ```sql blocks whose first line is ``-- <dialect>``."""
    statements = []
    for block in re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL):
        first, _, body = block.partition("\n")
        if first.strip().lower() == f"-- {dialect}":
            statements += [s.strip() for s in body.split(";") if s.strip(" \n")]
    return statements


@pytest.mark.usefixtures("copy_path")
def test_every_readme_query_runs_on_collected_data(tmp_path, fake, keypair, database_url) -> None:
    jobs = """
ticker: {method: Ticker, params: {pair: "XBTUSD,ETHUSD"}, every: 1h}
candles: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}
balances: {method: Balance, every: 1h}
ledgers: {method: Ledgers, every: 1h}
fills: {method: TradesHistory, every: 1h}
broken: {method: Ticker, params: {pair: NOPE}, every: 1h}
"""
    service = Service(load(job_file(tmp_path, fake, keypair, database_url, jobs)))
    try:
        service.run_once()
        service.run_once()
    finally:
        service.stop()
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    statements = sql_blocks(dialect)
    assert len(statements) >= 5  # the blocks are found, so running them means something
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            for statement in statements:
                found = conn.execute(text(statement.replace(":", r"\:"))).all()
                assert found, statement  # every example has data to show here
                if "FROM ticker" in statement:
                    assert all(row[1] for row in found), found  # a price on every row
    finally:
        engine.dispose()


def test_the_readme_fault_example_makes_a_failure_row(tmp_path, fake, keypair) -> None:
    import requests

    (curl,) = re.findall(
        r"curl -X POST '(http://127\.0\.0\.1:8765/_fake/fault\?[^']*)'", _offline()
    )
    requests.post(curl.replace("http://127.0.0.1:8765", fake.url), timeout=10).raise_for_status()
    url = f"sqlite:///{tmp_path / 'f.db'}"
    jobs = 'ticker: {method: Ticker, params: {pair: "XBTUSD,ETHUSD"}, every: 5s}'
    service = Service(load(job_file(tmp_path, fake, keypair, url, jobs)))
    try:
        assert not service.run_once()  # the failure the README promises
        assert service.run_once()  # and the service carries on
    finally:
        service.stop()
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job, status, error FROM runs WHERE status <> 'ok'")).all()
    engine.dispose()
    assert [(job, status) for job, status, _ in rows] == [("ticker", "kraken_error")]


def _offline() -> str:
    """The README's "Try it offline" section."""
    text_ = README.read_text()
    return text_[text_.index("### Try it offline") : text_.index("## The job file")]


def test_help_shows_examples_and_every_fault_kind() -> None:
    from click.testing import CliRunner

    from collector.cli import main
    from collector.testing.fake_exchange import FAULT_KINDS

    for command in (["db"], ["db", "upgrade"], ["run"], ["check"], ["fake-exchange"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output, command
    help_ = CliRunner().invoke(main, ["fake-exchange", "--help"]).output
    assert FAULT_KINDS and all(kind in help_ for kind in FAULT_KINDS)
