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
