"""The README's SQL works as written, on SQLite and on PostgreSQL, over data the service collected."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from collector.cli import main
from collector.jobfile import load
from collector.service import Service

from .helpers import wait_for
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
                    # ...but today's, before 01:00 UTC, whose only candle is still open.
                    closed = found if datetime.now(UTC).hour else found[:-1]
                    assert all(row[1] is not None for row in closed), found
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
    from collector.statustext import render

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


# -- the README's afternoon, as one script --------------------------------------------------------


def _section(start: str, end: str) -> str:
    text_ = README.read_text()
    return text_[text_.index(start) : text_.index(end)]


def _commands(section: str) -> list[str]:
    """The shell lines of ``section``'s ```sh blocks, their trailing comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Shell:
    """A new user's terminal: the README's lines run by bash in their checkout."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env

    def run(self, line: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, line: str, timeout: float = 120) -> str:
        done = self.run(line, timeout)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        return done.stdout

    @contextlib.contextmanager
    def background(self, line: str) -> Iterator[subprocess.Popen[str]]:
        """``line`` running until Ctrl-C (SIGINT), which must stop it cleanly."""
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield proc
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=60)
            assert proc.returncode in (0, 130), (line, output)
            assert "Traceback" not in output, output
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _rows(url: str, query: str) -> list[Any]:
    """``query``'s rows; none while the service has not made the database or its tables (a
    SQLite file is never created here: the service makes it, with its own mode)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query)).all())
    except DBAPIError:
        return []
    finally:
        engine.dispose()


#: The afternoon's counter: the starter tier's size (15), draining at 5 a second instead of 0.33.
_FAST = "15/5"
_FAST_LIMIT = "rate_limit: {max: 15, decay: 5}"


@pytest.mark.timeout(600)
def test_the_readmes_afternoon_runs_as_written(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    """A new user's afternoon from the README alone, its commands parsed from its own text and
    run by bash, against the README's own fake exchange: the quick start, the offline tour with
    its fault, going live (the key file, check --online, run), then the tax file, the chart and
    verify; the live database on SQLite and on PostgreSQL."""
    on_postgres = database_url.startswith("postgresql")
    root = README.parent
    home = tmp_path / "checkout"
    (home / "examples").mkdir(parents=True)
    port, ws_port = _free_port(), _free_port()
    fake_url = f"http://127.0.0.1:{port}"
    # The job files as shipped, but for the exchange's address: this fake, on a port of its own.
    (home / "jobs.yaml").write_text(
        (root / "jobs.yaml").read_text().replace("https://api.kraken.com", fake_url)
    )
    (home / "examples" / "offline.yaml").write_text(
        (root / "examples" / "offline.yaml")
        .read_text()
        .replace("http://127.0.0.1:8765", fake_url)
        .replace("ws://127.0.0.1:8766/v2", f"ws://127.0.0.1:{ws_port}/v2")
    )
    assert fake_url in (home / "jobs.yaml").read_text()
    assert fake_url in (home / "examples" / "offline.yaml").read_text()
    assert f"ws://127.0.0.1:{ws_port}/v2" in (home / "examples" / "offline.yaml").read_text()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
    }
    shell = _Shell(home, env)

    # -- Quick start ------------------------------------------------------------------------------
    quick = _commands(_section("## Quick start", "## Try it offline"))
    assert quick[0] == "python3 -m venv .venv && . .venv/bin/activate"  # before any pip
    install, run = quick[1].split(" && ")
    assert install == "python -m pip install ." and run == "collector run jobs.yaml"
    if not on_postgres:
        # The install as written, into a venv of the checkout (what the Dockerfile COPYs); every
        # command below then runs the collector installed there.
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, home)
        for name in ("collector", "migrations"):
            shutil.copytree(root / name, home / name, ignore=shutil.ignore_patterns("__pycache__"))
        shell.ok(f"{quick[0]} && {install} && collector --version", timeout=600)
        shell.env["PATH"] = f"{home / '.venv' / 'bin'}:{env['PATH']}"
        assert shell.ok("command -v collector").strip() == str(home / ".venv" / "bin" / "collector")
    (query,) = [line for line in quick if line.startswith("sqlite3 collector.db")]
    assert quick[3].startswith("python -m pip install -e '.[dev]' && python -m pytest")

    offline = _commands(_section("## Try it offline", "## Going live"))
    serve = offline[0].removesuffix("&").strip()
    assert serve == "collector fake-exchange --key-file examples/fake.key --ws-port 8766"
    serve = serve.replace("--ws-port 8766", f"--ws-port {ws_port}")
    # The counter decays 15x faster than the starter tier's, in the fake and in live.yaml alike:
    # the same pacing code, in seconds instead of minutes (the real tiers are test_budget.py's).
    with shell.background(f"{serve} --port {port} --tier {_FAST}"):
        wait_for(lambda: (home / "examples" / "fake.key").exists() and _listening(port))
        if not on_postgres:
            with shell.background(run):
                wait_for(lambda: shell.run(query).stdout.count("\n") >= 2)  # both pairs priced
            # -- Try it offline ---------------------------------------------------------------
            assert offline[1] == "collector run examples/offline.yaml"
            curl = offline[3].replace("http://127.0.0.1:8765", fake_url)
            failures = offline[4]
            assert curl.startswith("curl -X POST") and failures.startswith("sqlite3 examples/")
            with shell.background(offline[1]):
                wait_for(lambda: "ticker|ok" in shell.run(_ok_runs("examples/offline.db")).stdout)
                offline_db = f"sqlite:///{home / 'examples' / 'offline.db'}"
                streamed = (
                    "SELECT count(DISTINCT job) FROM runs WHERE job LIKE 'stream:%' AND pages > 0"
                )
                wait_for(lambda: (_rows(offline_db, streamed) or [(0,)])[0][0] == 2)  # both streams
                shell.ok(curl)
                wait_for(lambda: "ticker|kraken_error|" in shell.run(failures).stdout)
        else:
            pg = offline[2]
            assert pg.startswith("collector run --db postgresql+psycopg://you@localhost/kraken ")
            pg = pg.replace("postgresql+psycopg://you@localhost/kraken", database_url)
            with shell.background(pg):
                wait_for(lambda: _rows(database_url, "SELECT 1 FROM ledger LIMIT 1") != [])
            # Step 4 of going live: a fresh database.
            database_url = request.getfixturevalue("postgres").new_database()

        # -- Going live: the key file, check --online, run ----------------------------------------
        live_text = _section("## Going live", "## The job file")
        (live_yaml,) = [
            b for b in re.findall(r"```yaml\n(.*?)```", live_text, re.DOTALL) if "# live.yaml" in b
        ]
        live_yaml = live_yaml.replace("kraken:\n", f"kraken:\n  url: {fake_url}\n", 1)
        live_yaml, paced = re.subn(r"tier: starter[^\n]*", _FAST_LIMIT, live_yaml)
        assert paced == 1, live_yaml
        if on_postgres:
            live_yaml = live_yaml.replace("sqlite:///kraken.db", database_url)
        else:
            database_url = f"sqlite:///{home / 'kraken.db'}"
        (home / "live.yaml").write_text(live_yaml)
        # The fake's key stands in for the one made on Kraken, saved as the README says.
        (home / "kraken.key").write_text((home / "examples" / "fake.key").read_text())
        steps = re.findall(
            r"`((?:chmod|collector) [^`]*live\.yaml|chmod 600 kraken\.key)`", live_text
        )
        assert steps == [
            "chmod 600 kraken.key",
            "collector check --online live.yaml",
            "collector run live.yaml",
        ]
        shell.ok(steps[0])
        assert (home / "kraken.key").stat().st_mode & 0o777 == 0o600
        checked = shell.run(steps[1])
        assert checked.returncode == 0 and "warning" not in checked.stderr, checked
        history = ("ledger", "fills", "orders")
        with shell.background(steps[2]):
            wait_for(
                lambda: (
                    {job for (job,) in _rows(database_url, _OK_JOBS)}
                    >= {*history, "candles", "prices"}
                ),
                timeout=180,
            )
        # A snapshot now (balances runs hourly): the commands table's `run --once`.
        commands = _section("## Commands", "## Operations")
        assert "`collector run --once jobs.yaml`" in commands
        shell.ok("collector run --once live.yaml", timeout=180)
        assert _rows(database_url, "SELECT count(*) FROM balances")[0][0] > 0

    # -- The tax file, the chart, verify ----------------------------------------------------------
    names = _section("### Names, views and exports", "### Portfolio value")
    (tax,) = re.findall(
        r"^(collector export ledger jobs\.yaml --format kraken -o ledgers\.csv)",
        names,
        re.MULTILINE,
    )
    shell.ok(tax.replace("jobs.yaml", "live.yaml"))
    exported = (home / "ledgers.csv").read_text().splitlines()
    (stored,) = _rows(database_url, "SELECT count(*) FROM ledger")[0]
    assert stored > 0 and len(exported) == stored + 1
    assert exported[0].startswith('"txid","refid","time"'), exported[0]

    dashboard = _section("### Dashboard", "### Metrics and health")
    assert "`collector dashboard jobs.yaml`" in dashboard and "--listen HOST:PORT" in commands
    page_port = _free_port()
    with shell.background(f"collector dashboard --listen 127.0.0.1:{page_port} live.yaml"):
        wait_for(lambda: _listening(page_port))
        page = requests.get(f"http://127.0.0.1:{page_port}/", timeout=30)
    assert page.status_code == 200
    portfolio = page.text.split('<section id="portfolio">', 1)[1].split("</section>", 1)[0]
    assert "<svg" in portfolio, portfolio

    assert "`collector verify [--json] [--account NAME] jobs.yaml`" in commands
    verified = shell.run("collector verify live.yaml", timeout=180)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


_OK_JOBS = "SELECT DISTINCT job FROM runs WHERE status = 'ok'"


def _ok_runs(db: str) -> str:
    return f"sqlite3 {db} \"SELECT job, status FROM runs WHERE status = 'ok' AND job = 'ticker' LIMIT 1\""


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
