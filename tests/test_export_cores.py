"""`collector export` of a large SQLite table on two cores: the bytes one core writes, in rowid
order, from one snapshot however the table is written meanwhile (a real forked worker, a real
writer committing as fast as it can)."""

from __future__ import annotations

import csv
import io
import logging
import os
import resource
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from collector.export import CHUNK, TWO_CORES_FROM, Request, export
from collector.rawdb import Database
from collector.records import RunRecord
from collector.store import Store

ROWS = TWO_CORES_FROM + 3 * CHUNK // 2  # the last chunk a part one
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

#: The writer: both rows to ``v0`` (one state), then both to ``v1``, ``v2``… a commit each, until
#: its stdin is closed; prints how many commits.
_FLIP = """
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
rows = (int(sys.argv[2]), int(sys.argv[3]))
flips = 0
conn.execute("UPDATE trades SET misc = 'v0' WHERE rowid IN (?, ?)", rows)
print("flipping", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    flips += 1
    conn.execute("UPDATE trades SET misc = ? WHERE rowid IN (?, ?)", (f"v{flips}", *rows))
print(flips)
"""

two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="this process may use one core only"
)


#: Texts a CSV must quote or neutralise, each in one trade of ``every`` (the rest empty).
HOSTILE = {997: 'a "b", c', 1009: "=1+1", 1013: "line\nbreak", 1019: "cr\rhere", 1021: "\\."}


def write_trades(url: str) -> None:
    """``ROWS`` trades written as Trades runs write them, with the :data:`HOSTILE` texts in
    ``misc`` (a chunk that holds one is asked again, quoted)."""
    store = Store.from_url(url)
    store.upgrade()
    try:
        for start in range(0, ROWS, 10_000):
            rows = [
                {
                    "pair": "XXBTZUSD" if i % 2 else "XETHZUSD",
                    "trade_id": i,
                    "time": T0 + timedelta(microseconds=i * 250_137),
                    "price": Decimal(64000 + i % 9000) + Decimal(i % 97).scaleb(-1),
                    "volume": Decimal(i % 5_000_000 + 1000).scaleb(-8),
                    "side": "buy" if i % 3 else "sell",
                    "order_type": "limit",
                    "misc": next((t for every, t in HOSTILE.items() if i % every == 0), ""),
                }
                for i in range(start, min(ROWS, start + 10_000))
            ]
            run = RunRecord("trades", "Trades", {}, T0, T0, T0)
            run.rows = {"trades": rows}
            store.write([run])
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def trades_db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cores') / 'trades.db'}"
    write_trades(url)
    return url


#: An export in a process of its own (a test session has threads of its fixtures: no worker is
#: forked beside them), its debug lines on stderr.
_EXPORT = """
import logging, sys
from collector.export import Request, export
from collector.rawdb import Database
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
print(export(Database(sys.argv[1]), Request("trades"), sys.stdout.buffer), file=sys.stderr)
"""


def _export(url: str, cores: set[int] | None = None, limit: int | None = None) -> tuple[bytes, str]:
    """The CSV, and what was logged, of an export in a process allowed ``cores`` (all: None)
    and files of ``limit`` bytes (no limit: None)."""

    def limits() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-c", _EXPORT, url],
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # stdout buffered
        capture_output=True,
        check=True,
        timeout=120,
        preexec_fn=limits,
    )
    said = done.stderr.decode()
    assert said.splitlines()[-1] == str(ROWS), said
    return done.stdout, said


@two_cores
def test_a_large_table_on_two_cores_is_the_bytes_one_core_writes(trades_db) -> None:
    both, said = _export(trades_db)
    assert f"trades: {ROWS} rows made on two cores" in said
    one, said = _export(trades_db, {min(os.sched_getaffinity(0))})
    assert "two cores" not in said
    assert both == one
    read = list(csv.DictReader(io.StringIO(both.decode())))
    assert [int(r["trade_id"]) for r in read] == list(range(ROWS))
    assert [read[every]["misc"] for every in HOSTILE] == [
        'a "b", c',
        "'=1+1",
        "line\nbreak",
        "cr\rhere",
        "\\.",
    ]
    assert read[ROWS // 2]["time"] == "2026-12-07 14:15:29.4525+00"  # the worker's first row


@two_cores
def test_a_worker_that_cannot_write_its_half_leaves_it_to_the_export(trades_db) -> None:
    """The worker's half waits in a temporary file; a process that may write files of 1 MB only
    (``RLIMIT_FSIZE``: the temporary folder as good as full) still writes every row, the
    worker's half made by the export itself."""
    both, _ = _export(trades_db)
    limited, said = _export(trades_db, limit=1 << 20)
    assert "the export's worker failed" in said and "its half on one core" in said
    assert limited == both


@two_cores
def test_a_table_written_while_exported_is_one_snapshot(trades_db) -> None:
    """A writer flips the ``misc`` of a row of the export's half and of one of the worker's,
    together, a commit at a time as fast as it can: every export holds one of the two
    states, never one row's old and the other's new (the worker's snapshot proven the first
    process's, or the export made on one core)."""
    path = trades_db.removeprefix("sqlite:///")
    pair = (1, ROWS - 5)  # rowids: the first half's (this process), the second's (the worker)
    with sqlite3.connect(path) as conn:
        before = conn.execute(
            "SELECT rowid, misc FROM trades WHERE rowid IN (?, ?)", pair
        ).fetchall()
    flips = 0
    writer = subprocess.Popen(  # another process, as the service is: commits until stdin ends
        [sys.executable, "-c", _FLIP, path, *map(str, pair)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"flipping\n"
        for _ in range(5):
            read = list(csv.DictReader(io.StringIO(_export(trades_db)[0].decode())))
            assert read[pair[0] - 1]["misc"] == read[pair[1] - 1]["misc"]
            assert read[pair[0] - 1]["misc"].startswith("v")
    finally:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.close()
        flips = int(writer.stdout.read() or 0)
        writer.wait(60)
    assert flips > 5
    with sqlite3.connect(path) as conn:  # the fixture's rows as they were
        conn.executemany("UPDATE trades SET misc = ? WHERE rowid = ?", [(m, r) for r, m in before])


@pytest.fixture(scope="module")
def trades_pg(postgres) -> str:
    url = postgres.new_database()
    write_trades(url)
    return url


def _export_here(url: str, request: Request, caplog) -> bytes:
    engine = Database(url)  # as `collector export` reads it
    out = io.BytesIO()
    caplog.clear()
    try:
        with caplog.at_level(logging.DEBUG, logger="collector.export"):
            export(engine, request, out)
    finally:
        engine.dispose()
    return out.getvalue()


def test_a_large_postgresql_table_in_chunks_is_the_bytes_sqlite_writes(
    trades_db, trades_pg, caplog
) -> None:
    """The server's chunks, two server processes in one snapshot, each chunk's lines joined by
    the server: the bytes SQLite's export writes of the same rows (and so the one COPY's,
    ``test_export.py``), with ``--since`` and ``--until`` too."""
    windows = [Request("trades"), Request("trades", since=T0 + timedelta(seconds=1_000))]
    windows.append(Request("trades", until=T0 + timedelta(seconds=13_000), account=None))
    for request in windows:
        found = [_export_here(each, request, caplog) for each in (trades_db, trades_pg)]
        assert "in chunks by two server processes" in caplog.text
        assert found[0] == found[1]
        assert len(found[0].splitlines()) > 10_000


def test_a_server_that_gives_one_connection_gets_one_copy(trades_pg, caplog) -> None:
    """A role the server gives one connection (``CONNECTION LIMIT 1``, as a server at its
    ``max_connections``): the export is the one COPY of the rows, the same bytes, not an
    error."""
    from sqlalchemy import create_engine

    role = "lone_" + trades_pg.rsplit("/", 1)[1]
    admin = create_engine(trades_pg, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
            conn.exec_driver_sql(f"GRANT SELECT ON trades TO {role}")
    finally:
        admin.dispose()
    chunked = _export_here(trades_pg, Request("trades"), caplog)
    alone = _export_here(trades_pg.replace("postgres@", f"{role}@"), Request("trades"), caplog)
    assert "no second connection in the export's snapshot" in caplog.text
    assert "too many connections" in caplog.text
    assert "in chunks" not in caplog.text
    assert alone == chunked
