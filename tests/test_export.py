"""`collector export`: Kraken's own ledgers.csv and trades.csv from the collected account, read back
with the csv module and compared with the fake's ground truth set for set; any table as CSV or
JSON lines, the same bytes from SQLite and PostgreSQL; one line for what can't be exported."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.export import KRAKEN_LEDGER, KRAKEN_TRADES
from collector.records import RunRecord
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken

from .test_names import PRIVATE, once
from .test_service import job_file, rows


def cli(*args: str):
    return CliRunner().invoke(main, ["export", *args], env={"COLLECTOR_DATABASE_URL": ""})


def _second(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fraction(t: float) -> str:
    """Kraken's trades.csv time: the second, and up to 4 decimals without trailing zeros."""
    exact = Decimal(repr(t))
    digits = f"{exact - int(exact):.4f}"[2:].rstrip("0")
    return _second(t) + (f".{digits}" if digits else "")


@pytest.fixture
def collected(tmp_path, database_url):
    """A job file whose database holds the fake's whole account (ledger, fills, orders), and the
    fake's ground truth."""
    with FakeKraken(tier=None, history={"ledger": 400}) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), database_url, PRIVATE)
        once(path)
        truth = {"ledger": fake.ledger(), "fills": fake.my_trades()}
    return path, truth


def test_the_kraken_ledger_is_the_accounts_ledger_set_for_set(tmp_path, collected) -> None:
    path, truth = collected
    out = tmp_path / "ledgers.csv"
    result = cli("ledger", str(path), "--format", "kraken", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"{len(truth['ledger']):,} rows of ledger written to {out}" in result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text(encoding="utf-8")
    header, first = text.splitlines()[:2]
    # Kraken's quoting: every header and text field quoted, the numbers bare.
    assert header == ",".join(f'"{c}"' for c in KRAKEN_LEDGER)
    assert first.count('"') == 14 and ',"currency",' in first
    with out.open(newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(KRAKEN_LEDGER)
    assert len(read) == len(truth["ledger"])  # one row per ledger entry
    got = {tuple(r.values()) for r in read}
    want = {
        (
            lid,
            e["refid"],
            _second(e["time"]),
            e["type"],
            e["subtype"],
            e["aclass"],
            e["asset"],
            e["amount"],  # Kraken's decimal text, exactly
            e["fee"],
            e["balance"],
        )
        for lid, e in truth["ledger"].items()
    }
    assert got == want
    # Oldest first, and each trade's two legs share its txid as refid.
    assert [r["time"] for r in read] == sorted(r["time"] for r in read)
    legs = defaultdict(list)
    for r in read:
        if r["type"] == "trade":
            legs[r["refid"]].append(r)
    assert set(legs) == set(truth["fills"])
    for txid, pair in legs.items():
        fill = truth["fills"][txid]
        assert len(pair) == 2 and {r["time"] for r in pair} == {_second(fill["time"])}
        assert sum(Decimal(r["amount"]) < 0 for r in pair) == 1


def test_the_kraken_trades_are_the_accounts_fills_with_their_ledger_entries(
    tmp_path, collected
) -> None:
    path, truth = collected
    result = cli("my_trades", str(path), "--format", "kraken")
    assert result.exit_code == 0, result.output
    read = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(read[0]) == list(KRAKEN_TRADES)
    ledgers = defaultdict(set)
    for lid, e in truth["ledger"].items():
        ledgers[e["refid"]].add(lid)
    got = {r["txid"]: r for r in read}
    assert set(got) == set(truth["fills"])
    for txid, fill in truth["fills"].items():
        row = got[txid]
        assert row["time"] == _fraction(fill["time"]), (row["time"], fill["time"])
        for name in ("ordertxid", "pair", "type", "ordertype", "price", "cost", "fee", "vol"):
            assert row[name] == fill[name], name
        assert row["margin"] == fill["margin"] and row["misc"] == fill["misc"]
        assert set(row["ledgers"].split(",")) == ledgers[txid]


def test_any_table_as_csv_is_the_same_bytes_from_sqlite_and_postgresql(tmp_path, postgres) -> None:
    urls = [f"sqlite:///{tmp_path / 'x.db'}", postgres.new_database()]
    now = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    trades = [
        {
            "pair": "XXBTZUSD",
            "trade_id": i,
            "time": now + timedelta(seconds=i, microseconds=7),
            "price": Decimal("64000.10000") + i,
            "volume": Decimal("0.00000001") * (i + 1),
            "side": "buy" if i % 2 else "sell",
            "order_type": "limit",
            "misc": "" if i % 3 else 'a "quoted", text',
        }
        for i in range(50)
    ]
    run = RunRecord("tr", "Trades", {}, now, now, now)
    run.rows = {"trades": trades}
    outputs = []
    for i, url in enumerate(urls):
        store = Store.from_url(url)
        store.upgrade()
        store.write([run])
        store.dispose()
        path = tmp_path / f"jobs{i}.yaml"
        path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
        result = cli(
            "trades", str(path), "--since", "2026-11-24T12:00:10Z", "--until", "1795521640"
        )
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout_bytes)
    assert outputs[0] == outputs[1]
    read = list(csv.DictReader(io.StringIO(outputs[0].decode())))
    assert [int(r["trade_id"]) for r in read] == list(range(10, 40))  # since <= t < until
    assert read[0]["time"] == "2026-11-24 12:00:10.123463+00"  # PostgreSQL's own text
    assert read[1]["time"] == "2026-11-24 12:00:11.123463+00"
    assert read[0]["volume"] == "0.00000011" and read[5]["misc"] == 'a "quoted", text'


def test_jsonl_keeps_decimals_exact_and_types_typed(tmp_path, collected, database_url) -> None:
    path, truth = collected
    result = cli("orders_named", str(path), "--format", "jsonl", "--account", "default")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == rows(database_url, "SELECT count(*) FROM orders")[0][0]
    order = next(o for o in lines if o["status"] == "closed")
    assert isinstance(order["cost"], str) and Decimal(order["cost"]) > 0
    assert isinstance(order["descr"], dict) and order["descr"]["pair"] in (
        order["pair"],
        "ETHUSD",
        "XBTUSD",
        "ETHEUR",
        "XBTEUR",
    )
    assert isinstance(order["run_id"], int) and order["symbol"] and "/" in order["symbol"]
    assert order["closetm"].endswith("+00") and datetime.fromisoformat(order["closetm"])
    fills = cli("my_trades", str(path), "--format", "jsonl").stdout.splitlines()
    assert {type(json.loads(f)["maker"]) for f in fills} == {bool}
    assert len(fills) == len(truth["fills"])


def test_what_cannot_be_exported_is_one_line_and_loses_nothing(tmp_path, collected) -> None:
    path, _ = collected
    out = tmp_path / "ledgers.csv"
    out.write_text("what was there\n")
    for args, said in [
        (["nope"], "no table 'nope'; one of: "),
        (["trade"], "no table 'trade'; did you mean 'trades'?"),
        (["trades", "--format", "kraken"], "--format kraken writes Kraken's ledgers.csv"),
        (["ledger", "--since", "last tuesday"], "'last tuesday' is not a date, a time or unix"),
        (["ledger", "--since", "2025-01-02", "--until", "2025-01-01"], "--since must be before"),
        (["pairs", "--account", "x"], "pairs has no account column"),
        (["collector_state", "--since", "2025-01-01"], "collector_state has no time to filter"),
    ]:
        result = cli(*args, str(path), "-o", str(out))
        assert result.exit_code == 2, (args, result.output)
        (line,) = result.output.splitlines()
        assert line.startswith("error: ") and said in line, line
    assert out.read_text() == "what was there\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_kraken_files_are_one_accounts(tmp_path, database_url) -> None:
    with FakeKraken(tier=None, history={"ledger": 60}) as fake:
        (k1, s1), (k2, s2) = fake.add_key(), fake.add_key()
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: {database_url}\nkraken: {{url: {fake.url}}}\naccounts:\n"
            f"  a: {{key: {k1}, secret: {s1}, rate_limit: {{max: 1000, decay: 1000}}}}\n"
            f"  b: {{key: {k2}, secret: {s2}, rate_limit: {{max: 1000, decay: 1000}}}}\n"
            "jobs:\n  la: {method: Ledgers, account: a, every: 1h}\n"
            "  lb: {method: Ledgers, account: b, every: 1h}\nreference: false\n"
        )
        once(path)
    result = cli("ledger", str(path), "--format", "kraken")
    assert result.exit_code == 2
    assert "several accounts' rows (a, b, ...)" in result.output and "--account" in result.output
    result = cli("ledger", str(path), "--format", "kraken", "--account", "b")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 61
    mixed = cli("ledger", str(path)).stdout.splitlines()  # a plain CSV says whose each row is
    assert mixed[0].startswith("account,ledger_id,") and len(mixed) == 121


def test_a_reader_that_stops_early_is_no_error(collected) -> None:
    """`collector export ... | head -1`: the export stops quietly, exit 0, nothing on stderr."""
    import subprocess
    import sys

    path, truth = collected
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "export", "ledger", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()  # more than a pipe's 64 KB is still to come: the export meets EPIPE
    assert proc.wait(30) == 0 and proc.stderr.read() == b""
    assert first["ledger_id"] in truth["ledger"] and len(truth["ledger"]) * 200 > 65_536


def test_a_database_an_older_collector_migrated_is_one_line_that_says_how(
    tmp_path, database_url
) -> None:
    """Revision 0007 has no names views yet: one line naming the fix, never the driver's
    traceback (the export reads through the raw connection)."""
    from collector.store import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine, "0007")
    engine.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {database_url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    result = cli("balances_named", str(path))
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: ") and "has no balances_named yet (at revision 0007" in line
    assert "`collector db upgrade jobs.yaml` adds it" in line
    assert cli("balances", str(path)).output == "run_id,asset,job,taken_at,amount,account\n"


def test_postgresql_gone_while_exporting_is_the_databases_error_not_the_drivers(
    tmp_path, postgres
) -> None:
    """The export reads through the raw connection: a server that stops half-way is SQLAlchemy's
    error, as everywhere else (the command's one line), never psycopg's traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from collector.export import Request, export

    url = postgres.new_database()
    store = Store.from_url(url)
    store.upgrade()

    class Halting(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if not self.tell():
                postgres.halt()  # after the header, before the rows
            return super().write(data)

    try:
        with pytest.raises(SQLAlchemyError) as raised:
            export(store.engine, Request("runs"), Halting())
    finally:
        postgres.start()
        store.dispose()
    import psycopg

    assert isinstance(getattr(raised.value, "orig", None), psycopg.OperationalError)


def test_since_and_until_filter_on_each_datasets_own_time_column(tmp_path, database_url) -> None:
    """``--since`` reads the dataset's ``time_column`` (a stream's ``book`` by ``taken_at``, its
    connections by ``opened_at``), not a list of its own that a new table was missing from."""
    from collector.datasets import DEFAULT, STREAMS
    from collector.export import time_column
    from collector.streams.rows import batch, connection_row

    for dataset in (*DEFAULT, *STREAMS):
        if dataset.time_column is not None:
            assert time_column(dataset.name) == dataset.time_column, dataset.name
    assert time_column("book") == "taken_at" and time_column("stream_connections") == "opened_at"
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    levels = [
        {
            "pair": "XXBTZUSD",
            "taken_at": t0 + timedelta(minutes=minute),
            "side": side,
            "level": 0,
            "price": Decimal("64000.1") + minute,
            "qty": Decimal("0.5"),
        }
        for minute in range(3)
        for side in ("bid", "ask")
    ]
    link = connection_row("c" * 32, "books", "book", "wss://ws.kraken.com/v2", t0)
    store = Store.from_url(database_url, datasets=(*DEFAULT, *STREAMS))
    store.upgrade()
    try:
        rows = {"book": levels, "stream_connections": [link]}
        store.write(
            [batch("books", "book", link["uid"], rows, started_at=t0, finished_at=t0, messages=3)]
        )
    finally:
        store.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database_url}\nstreams:\n  books: {{channel: book, pairs: [XBTUSD]}}\n"
    )
    result = cli(
        "book", str(path), "--since", "2026-12-07T12:01:00Z", "--until", "2026-12-07T12:02:00Z"
    )
    assert result.exit_code == 0, result.output
    read = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted((r["side"], Decimal(r["price"])) for r in read) == [
        ("ask", Decimal("64001.1")),
        ("bid", Decimal("64001.1")),
    ]  # since <= taken_at < until: the middle minute's two levels
    result = cli("stream_connections", str(path), "--since", "2026-12-07T13:00:00Z")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == []  # the header alone: opened before


@pytest.mark.parametrize("table", ["runs", "runs_by_cursor"], ids=["copy", "jsonl"])
def test_a_connection_cut_while_exporting_is_the_commands_one_line(
    tmp_path, postgres, table
) -> None:
    """``collector export`` reads through psycopg itself (:mod:`collector.rawdb`): its
    connection ended by the server half-way (the export queued behind another session's lock,
    then terminated, as an administrator or a failover does) is ``cannot read database …``, one
    line and exit 2, in the CSV's COPY and in JSON lines' server-side cursor alike."""
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    from .helpers import wait_for

    url = postgres.new_database()
    store = Store.from_url(url)
    store.upgrade()
    store.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "export", "runs", str(path)]
    if table == "runs_by_cursor":
        cmd += ["--format", "jsonl"]
    holder = create_engine(url).connect()
    try:
        holder.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def waiting() -> bool:  # the export's query is queued behind the lock
            return bool(
                holder.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
            )

        wait_for(waiting)
        holder.execute(
            text("SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE NOT l.granted")
        )
        _, err = proc.communicate(timeout=60)
    finally:
        holder.rollback()
        holder.close()
    (line,) = err.decode().splitlines()
    assert proc.returncode == 2, line
    assert line.startswith("error: ") and "cannot read database postgresql" in line, line
    assert "terminating connection due to administrator command" in line, line


def test_a_table_the_role_may_not_read_is_the_servers_refusal_not_missing(
    tmp_path, postgres
) -> None:
    """A reporting role that may read the revision but not the ledger: the export says the
    server's ``permission denied``, not that the table is missing (its presence is read from
    the catalogue, as SQLAlchemy's inspector reads it, not from what the role may see)."""
    from sqlalchemy import create_engine

    url = postgres.new_database()
    Store.from_url(url).upgrade()
    role = "reporter_" + url.rsplit("/", 1)[1]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
            conn.exec_driver_sql(f"GRANT SELECT ON alembic_version TO {role}")
    finally:
        admin.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {url.replace('postgres@', f'{role}@')}\njobs:\n  t: {{method: Time, every: 1h}}\n"
    )
    result = cli("ledger", str(path))
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert "permission denied for table ledger" in line, line
