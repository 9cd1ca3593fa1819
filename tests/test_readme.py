"""The README's SQL works as written, on SQLite and on PostgreSQL, over data the service collected."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from collector.cli import main
from collector.config import load
from collector.service import Service

from .test_service import job_file

README = Path(__file__).resolve().parent.parent / "README.md"


def sql_blocks(dialect: str) -> list[str]:
    """The statements of the README's ```sql blocks whose first line is ``-- <dialect>`` (or
    ``-- SQLite and PostgreSQL``)."""
    statements = []
    for block in re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL):
        first, _, body = block.partition("\n")
        if first.strip().lower() in (f"-- {dialect}", "-- sqlite and postgresql"):
            statements += [s.strip() for s in body.split(";") if s.strip(" \n")]
    return statements


@pytest.mark.usefixtures("copy_path")
def test_every_readme_query_runs_on_collected_data(tmp_path, fake, keypair, database_url) -> None:
    # The candles are the README's own job's (its daily closes read that interval).
    (candles,) = re.findall(r"^  (candles: \{method: OHLC.*\})$", README.read_text(), re.MULTILINE)
    jobs = f"""
ticker: {{method: Ticker, params: {{pair: "XBTUSD,ETHUSD"}}, every: 1h}}
{candles}
balances: {{method: Balance, every: 1h}}
ledgers: {{method: Ledgers, every: 1h}}
fills: {{method: TradesHistory, every: 1h}}
orders: {{method: ClosedOrders, every: 1h}}
broken: {{method: Ticker, params: {{pair: NOPE}}, every: 1h}}
"""
    service = Service(load(job_file(tmp_path, fake, keypair, database_url, jobs)))
    try:
        service.run_once()
        service.run_once()
    finally:
        service.stop()
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    statements = sql_blocks(dialect)
    if dialect == "sqlite":  # and the shell examples' `sqlite3 FILE "..."`
        statements += re.findall(r'^sqlite3 \S+ "([^"]+)"', README.read_text(), re.MULTILINE)
    assert len(statements) >= 7  # the blocks are found, so running them means something
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            for statement in statements:
                found = conn.execute(text(statement.replace(":", r"\:"))).all()
                assert found, statement  # every example has data to show here
                if "FROM ticker" in statement:
                    assert all(row[1] for row in found), found  # a price on every row
                if "Daily closes" in statement:  # of the candles the job file collects
                    assert all(row[1] is not None for row in found), found
    finally:
        engine.dispose()
    # The exports, then the Python that reads a table and an export (pandas, DuckDB).
    path = tmp_path / "jobs.yaml"
    names = README.read_text().split("### Names, views and exports", 1)[1]
    exports = re.findall(r"^(collector export .+?)\s+#", names, re.MULTILINE)
    assert len(exports) == 2
    env = {"COLLECTOR_DATABASE_URL": ""}
    for line in exports:
        args = line.replace("jobs.yaml", str(path)).split()[1:]
        args = [str(tmp_path / a) if a.endswith(".csv") else a for a in args]
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, (line, result.output)
    (python,) = re.findall(r"```python\n(.*?)```", names, re.DOTALL)
    candles = tmp_path / "candles.csv"
    code = python.replace("sqlite:///collector.db", database_url)
    scope: dict = {}
    exec(compile(code.replace("'candles.csv'", repr(str(candles))), "README.md", "exec"), scope)
    fills = scope["fills"]
    assert len(fills) > 0 and str(fills["time"].dtype).startswith("datetime64")
    read = scope["duckdb"].sql(f"SELECT count(*), min(symbol) FROM '{candles}'").fetchall()
    assert read == [(len(candles.read_text().splitlines()) - 1, "XBT/USD")] and read[0][0] > 0


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
    return text_[text_.index("## Try it offline") : text_.index("## Going live")]


def test_the_readme_is_for_users_in_their_order() -> None:
    text_ = README.read_text()
    assert len(text_.splitlines()) <= 400  # a user reads it through; details go to docs/
    sections = re.findall(r"^## (.+)$", text_, re.MULTILINE)
    assert sections == [
        "Quick start",
        "Try it offline",
        "Going live",
        "The job file",
        "The tables",
        "Commands",
        "Operations",
        "More",
    ]
    live = text_[text_.index("## Going live") : text_.index("## The job file")]
    for needed in (
        "Query Funds",
        "Query Open Orders & Trades",
        "Query Closed Orders & Trades",
        "Query Ledger Entries",
        "One key per collector",
        "A fresh database",
        "chmod 600 kraken.key",
        "collector check --online",
    ):
        assert needed in live, needed
    # Stop the first offline run before the PostgreSQL one (they would share the fake's key).
    offline = _offline()
    assert offline.index("Stop that run") < offline.index("collector run --db postgresql")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_link_of_the_readme_and_docs_leads_somewhere() -> None:
    root = README.parent
    for page in [README, *sorted((root / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(path), f"{page.name}: {target}#{anchor}"


def test_every_yaml_example_of_the_readme_loads(tmp_path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 4
    secret = base64.b64encode(b"s" * 64).decode()
    for name in ("kraken.key", "savings.key"):
        (tmp_path / name).write_text(f"key-{name}\n{secret}\n")
        (tmp_path / name).chmod(0o600)
    env = {"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": secret, "MAIN_KEY": "m"}
    env["MAIN_SECRET"] = secret
    for block in blocks:
        body = block if "jobs:" in block else block + "jobs:\n  t: {method: Time, every: 1m}\n"
        path = tmp_path / "jobs.yaml"
        path.write_text(body)
        config = load(path, environ=env)
        assert config.jobs, block


def test_the_status_example_has_the_columns_status_prints() -> None:
    from collector.status import render

    text_ = README.read_text()
    example = text_[text_.index("$ collector status jobs.yaml") :].splitlines()[1]
    printed = render({"jobs": [], "spool_waiting": 0, "oldest_run": None, "healthy": True})
    assert re.split(r"\s{2,}", example.strip()) == re.split(r"\s{2,}", printed.splitlines()[0])


def test_the_commands_table_has_every_command() -> None:
    from collector.cli import main

    table = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name in main.commands:
        assert f"`collector {name}" in table, name


def test_the_readmes_rehearsal_key_starts(tmp_path) -> None:
    import sys

    from .helpers import running, sigterm, wait_for

    (args,) = re.findall(
        r"`collector fake-exchange (--key-file \S+ --permissions \S+)`", README.read_text()
    )
    args = args.replace("examples/fake.key", str(tmp_path / "fake.key"))
    cmd = [sys.executable, "-m", "collector.cli", "fake-exchange", "--port", "0", *args.split()]
    with running(cmd) as proc:
        said: list[str] = []
        wait_for(lambda: bool(said.append(proc.stdout.readline()) or "may only" in said[-1]))
        sigterm(proc)
    assert "Query Ledger Entries" not in said[-1] and "Query Funds" in said[-1]


def test_help_shows_examples_and_every_fault_kind() -> None:
    from click.testing import CliRunner

    from collector.cli import main
    from collector.testing.fake_exchange import FAULT_KINDS

    for command in (["db"], ["db", "upgrade"], ["run"], ["check"], ["fake-exchange"], ["methods"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output, command
    help_ = CliRunner().invoke(main, ["fake-exchange", "--help"]).output
    assert FAULT_KINDS and all(kind in help_ for kind in FAULT_KINDS)
