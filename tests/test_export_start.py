"""What a read-only command's start costs: the database's revision read as one row and checked
against the migrations' file names (not Alembic's script folder), an export that imports
neither Alembic nor the status report, and read-only commands that import nothing of what
calls Kraken (``requests``, the client, the streams) nor APScheduler's cron for a file without
one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from collector.commands.base import known_revisions


def test_the_known_revisions_are_alembics_own_reading_of_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from collector.store import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    scripts = ScriptDirectory.from_config(cfg)
    assert known_revisions() == {r.revision for r in scripts.walk_revisions()}
    assert max(known_revisions()) == scripts.get_current_head()


_IMPORTED = """
import sys
from collector.commands import main
try:
    main(sys.argv[2:], standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = tuple(sys.argv[1].split(","))
print(sorted({m for m in sys.modules if m.startswith(heavy)}), file=sys.stderr)
"""

#: What calls Kraken: a command that only reads must not import it (a tenth of a second of
#: every start, docs/benchmarks.md "## Export").
_CALLERS = ("requests", "urllib3", "collector.client", "collector.auth", "collector.streams.")


def _imported(heavy: tuple[str, ...], *args: str) -> list[str]:
    """The modules starting with one of ``heavy`` that ``collector ARGS`` imported."""
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTED, ",".join(heavy), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = ast.literal_eval(done.stderr.decode().splitlines()[-1])
    return found


def test_an_export_imports_neither_alembic_nor_the_status_report(tmp_path, database_url) -> None:
    from collector.store import Store

    store = Store.from_url(database_url)
    store.upgrade()
    store.dispose()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"database: {database_url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    out = tmp_path / "trades.csv"
    heavy = ("alembic", "collector.status", "collector.verify", "apscheduler", *_CALLERS)
    assert _imported(heavy, "export", "trades", str(jobs), "-o", str(out)) == []
    assert out.read_text().startswith("pair,trade_id,time,")


@pytest.mark.parametrize(
    "command",
    [["check"], ["status"], ["verify"], ["export", "ledger", "--format", "kraken"], ["--help"]],
    ids=lambda command: command[0],
)
def test_a_read_only_command_imports_nothing_that_calls_kraken(
    command: list[str], tmp_path, database_url
) -> None:
    from collector.store import Store

    store = Store.from_url(database_url)
    store.upgrade()
    store.dispose()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"database: {database_url}\n"
        "jobs:\n  t: {method: Time, every: 1h}\n  h: {method: Trades, pair: XBTUSD, every: 1m}\n"
    )
    args = command if command == ["--help"] else [*command[:2], str(jobs), *command[2:]]
    assert _imported(_CALLERS, *args) == []


_RACE = """
import pickle, sys, threading
import collector, collector.errors as errors
assert "requests" not in sys.modules
start, found = threading.Barrier(8), []
def ask():
    start.wait()
    found.append(errors.ConnectionFailed)
threads = [threading.Thread(target=ask) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
import requests
from collector.errors import HTTPStatusError, RequestTimeout
error = pickle.loads(pickle.dumps(HTTPStatusError("Time: HTTP 502", method="Time", http_status=502)))
print(len({id(c) for c in found}), found[0] is collector.ConnectionFailed,
      issubclass(found[0], requests.ConnectionError), issubclass(RequestTimeout, requests.Timeout),
      type(error) is HTTPStatusError, error.status, repr(found[0]))
"""


def test_the_errors_that_are_requests_own_are_made_once_on_first_use() -> None:
    """``collector.errors`` imports ``requests`` only when a transport error is first asked for;
    threads asking at once get one class, the same as ``collector.ConnectionFailed``, still a
    ``requests`` exception (krakenex's ``except``), that pickles."""
    done = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split(" ", 6) == [
        "1",
        "True",
        "True",
        "True",
        "True",
        "http_error",
        "<class 'collector.errors.ConnectionFailed'>\n",
    ]


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["schema"]], ids=" ".join)
def test_what_opens_no_database_imports_no_sqlalchemy(args: list[str]) -> None:
    """The job file's URL is read without SQLAlchemy (:mod:`collector.dburl`) and its checks
    without the datasets' tables: a command that opens no database starts without either."""
    heavy = ("sqlalchemy", "collector.datasets", "collector.schema", *_CALLERS)
    assert _imported(heavy, *args) == []


@pytest.mark.parametrize(
    "args",
    [
        ["trades"],
        ["trades_named", "--since", "2026-01-01", "--until", "2026-02-01"],
        ["runs", "--account", "main"],
        ["trades", "--format", "jsonl"],
        ["my_trades", "--format", "kraken"],
    ],
    ids=lambda args: "-".join(args[:1] + args[2:3]),
)
def test_an_export_imports_no_sqlalchemy(args: list[str], tmp_path, database_url) -> None:
    """``collector export TABLE JOBFILE`` (CSV, as the other formats) reads through the driver
    alone (:mod:`collector.rawdb`) and knows its columns from :mod:`collector.exportcolumns`:
    neither SQLAlchemy nor the tables' modules are imported (0.3 s of every export's start)."""
    from collector.schema import metadata
    from collector.store import Store

    store = Store.from_url(database_url)
    store.upgrade()
    at = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
    with store.engine.begin() as conn:
        run = conn.execute(
            metadata.tables["runs"]
            .insert()
            .values(
                job="t",
                method="Trades",
                params={},
                scheduled_at=at,
                started_at=at,
                finished_at=at,
                status="ok",
            )
        ).inserted_primary_key[0]
        conn.execute(
            metadata.tables["trades"]
            .insert()
            .values(
                pair="XXBTZUSD",
                trade_id=7,
                time=at,
                price=Decimal("0.0001000"),
                volume=Decimal("2"),
                side="b",
                order_type="l",
                misc="=cmd",
                run_id=run,
            )
        )
    store.dispose()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"database: {database_url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    out = tmp_path / "out.csv"
    heavy = ("sqlalchemy", "alembic", "collector.schema", "collector.datasets", "collector.store")
    table, *options = args
    assert _imported(heavy, "export", table, str(jobs), *options, "-o", str(out)) == []
    lines = out.read_text().splitlines()
    if "jsonl" in options:
        (line,) = lines
        assert '"time":"2026-01-02 03:04:05.25+00","price":"0.0001000"' in line
        assert '"misc":"=cmd"' in line  # JSON lines are as stored
    elif "kraken" in options:  # no fills: the header alone
        assert lines == [
            '"txid","ordertxid","pair","time","type","ordertype","price","cost",'
            '"fee","vol","margin","misc","ledgers"'
        ]
    elif table != "runs":
        assert lines[1].startswith("XXBTZUSD,7,2026-01-02 03:04:05.25+00,0.0001000,2,b,l,'=cmd,")
        assert len(lines) == 2
    else:  # the run is no account's
        assert lines == [",".join(c for c, _ in _columns("runs"))]


def _columns(table: str) -> list[tuple[str, str]]:
    from collector.export import columns

    return columns(table)


def test_the_export_columns_written_out_are_the_schemas() -> None:
    """:mod:`collector.exportcolumns` (what an export knows without SQLAlchemy) is every table
    of :data:`collector.schema.metadata`, each column with the kind its type makes (a decimal
    is never text: a CSV's text cells are the sanitised ones), and the datasets' time columns."""
    import importlib

    from sqlalchemy import JSON, Boolean, Integer, Numeric

    from collector.datasets import DEFAULT, STREAMS
    from collector.exportcolumns import COLUMNS, TIME_COLUMNS
    from collector.schema import ExactDecimal, UTCDateTime, metadata

    for module in ("collector.store", "collector.valuation"):  # every table's: all in metadata
        importlib.import_module(module)

    def kind(type_: object) -> str:
        for cls, name in (
            (UTCDateTime, "time"),
            (ExactDecimal | Numeric, "decimal"),
            (Boolean, "bool"),
            (JSON, "json"),
            (Integer, "int"),
        ):
            if isinstance(type_, cls):  # type: ignore[arg-type]
                return name
        return "text"

    assert {
        name: tuple((c.name, kind(c.type)) for c in table.columns)
        for name, table in metadata.tables.items()
    } == COLUMNS
    for dataset in (*DEFAULT, *STREAMS):
        if dataset.time_column is not None:
            assert TIME_COLUMNS[dataset.name] == dataset.time_column, dataset.name
    for name, column in TIME_COLUMNS.items():
        assert (column, "time") in COLUMNS[name], name
    assert set(COLUMNS) - set(TIME_COLUMNS) == {"collector_state"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:5432/db",
        "postgresql+psycopg://u:p%40ss%2Fw@h/db?sslmode=require&application_name=x",
        "postgresql+psycopg:///db?host=/var/run/postgresql",
        "postgresql+psycopg://u@/db?host=a:5432&host=b:5433",
        "postgresql+psycopg://u@/db?host=a,b&port=5432,5433",
        "postgresql+psycopg://u@h1,h2/db",
        "postgresql+psycopg://[::1]:5433/db?connect_timeout=3",
        "postgresql+psycopg://u@h",
        # Empty parts are left out, as SQLAlchemy leaves them (libpq then reads PGPASSWORD, ...).
        "postgresql+psycopg://user:@127.0.0.1:1/kraken",
        "postgresql+psycopg://@127.0.0.1/kraken",
        "postgresql+psycopg://u@h:0/",
    ],
)
def test_the_exports_postgresql_connection_is_sqlalchemys(url: str) -> None:
    """:mod:`collector.rawdb` connects with the arguments SQLAlchemy's psycopg dialect gives
    psycopg for the same URL (its own reading of the multi-host forms)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from collector.dburl import parse
    from collector.rawdb import connect_options

    _, theirs = create_engine(url).dialect.create_connect_args(make_url(url))
    theirs.pop("context", None)
    assert connect_options(parse(url)) == theirs


def test_a_repeated_query_key_or_an_odd_multi_host_is_one_line(tmp_path) -> None:
    """``?sslmode=require&sslmode=disable`` is refused (never the last one silently: a TLS
    downgrade), and a multi-host URL SQLAlchemy's grammar refuses is the command's one line,
    exit 2, no traceback, no password."""
    from collector.dburl import parse
    from collector.rawdb import connect_options

    with pytest.raises(ValueError, match="sslmode"):
        connect_options(parse("postgresql+psycopg://u@h/db?sslmode=require&sslmode=disable"))
    job = tmp_path / "jobs.yaml"
    job.write_text("jobs:\n  t: {method: Time, every: 1m}\n")
    url = "postgresql+psycopg://u:s3cret@/db?host=h1:p1&host=h2:5432"
    done = subprocess.run(
        [sys.executable, "-m", "collector.cli", "export", "runs", str(job), "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read database" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
