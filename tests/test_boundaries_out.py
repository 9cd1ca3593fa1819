"""What goes out is safe where it lands (issue 25's "Out"): CSV cells no spreadsheet runs, log
lines and terminal output no value can forge or drive, exit codes that say what happened, an
``export -o`` that never replaces what is not a regular file, and read-only commands that need
only read (no key, a database they may only read)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.records import RunRecord
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken

from .test_service import job_file

FORMULA = ("=", "+", "-", "@", "\t", "\r")
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

#: Exchange text that a spreadsheet would run, one in each text column of Kraken's layouts.
LEDGER = {
    "ledger_id": "=cmd|' /C calc'!A0",
    "refid": "=1+1",
    "time": NOW,
    "type": "+cmd|'/C calc'!A0",
    "subtype": "@SUM(1+1)*cmd|' /C calc'!A0",
    "aclass": "\tcurrency",
    "asset": '=HYPERLINK("http://e.vil/",A1)',
    "amount": Decimal("-0.5"),
    "fee": Decimal("0.0001"),
    "balance": Decimal("-1.25"),
}
FILL = {
    "txid": "-2+3+cmd|' /C calc'!A0",
    "ordertxid": "=1+1",
    "postxid": "@x",
    "pair": "XXBTZUSD",
    "time": NOW,
    "type": "buy",
    "ordertype": "=ordertype()",
    "price": Decimal("64000.1"),
    "cost": Decimal("-3.5"),
    "fee": Decimal("0.1"),
    "vol": Decimal("0.001"),
    "margin": Decimal("-0.01"),
    "leverage": None,
    "misc": "\r=misc",
    "trade_id": None,
    "maker": True,
}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}


def cli(*args: str):
    return CliRunner().invoke(main, list(args), env={"COLLECTOR_DATABASE_URL": ""})


def _hostile_database(tmp_path, url: str):
    store = Store.from_url(url)
    store.upgrade()
    ledger = RunRecord("l", "Ledgers", {}, NOW, NOW, NOW, account="main")
    ledger.rows = {"ledger": [LEDGER]}
    fills = RunRecord("t", "TradesHistory", {}, NOW, NOW, NOW, account="main")
    fills.rows = {"my_trades": [FILL]}
    store.write([ledger, fills])
    store.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    return path


def _is_number(value: str) -> bool:
    try:
        Decimal(value)
    except InvalidOperation:
        return False
    return True


@pytest.mark.parametrize(
    ("table", "args"),
    [
        ("ledger", ()),
        ("ledger_named", ()),  # a view: Python's csv writer on SQLite
        ("my_trades", ()),
        ("ledger", ("--format", "kraken")),
        ("my_trades", ("--format", "kraken")),
    ],
)
def test_no_exported_csv_cell_is_a_formula_and_numbers_stay_numbers(
    tmp_path, database_url, table, args
) -> None:
    path = _hostile_database(tmp_path, database_url)
    result = cli("export", table, str(path), *args)
    assert result.exit_code == 0, result.output
    read = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert len(read) == 1
    (row,) = read
    for name, value in row.items():
        assert not value.startswith(FORMULA) or _is_number(value), (name, value)
    kraken = "kraken" in args
    if table.startswith("ledger"):
        assert row["txid" if kraken else "ledger_id"] == "'=cmd|' /C calc'!A0"
        assert row["refid"] == "'=1+1" and row["type"] == "'+cmd|'/C calc'!A0"
        assert row["asset"] == "'" + LEDGER["asset"] and row["aclass"] == "'\tcurrency"
        assert row["amount"] == "-0.5" and row["balance"] == "-1.25"  # numbers, not prefixed
    else:
        assert row["txid"] == "'-2+3+cmd|' /C calc'!A0" and row["ordertxid"] == "'=1+1"
        assert row["ordertype"] == "'=ordertype()" and row["misc"] == "'\r=misc"
        assert row["cost"] == "-3.5" and row["margin"] == "-0.01"
    if kraken:  # Kraken's quoting as its own files have it: text quoted, numbers bare
        line = result.stdout.splitlines()[1]
        assert ",-0.5,0.0001,-1.25" in line or ",-3.5,0.1,0.001,-0.01," in line


def test_a_bare_carriage_return_inside_a_cell_is_quoted(tmp_path, database_url) -> None:
    """A cell with a "\r" inside (not first: no formula prefix is due) is quoted, on every path:
    else a reader ends the line there and the cell's rest ("=1+2") starts a record of its own."""
    store = Store.from_url(database_url)
    store.upgrade()
    record = RunRecord("t", "Trades", {"pair": "XBTUSD"}, NOW, NOW, NOW)
    trade = {"pair": "XXBTZUSD", "trade_id": 1, "time": NOW, "price": Decimal("1.5")}
    trade |= {"volume": Decimal("2"), "side": "buy", "order_type": "limit", "misc": "x\r=1+2"}
    record.rows = {"trades": [trade]}
    store.write([record])
    store.dispose()
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {database_url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    for table in ("trades", "trades_named"):  # the table's SQL-made CSV; the view's csv.writer
        result = cli("export", table, str(path))
        assert result.exit_code == 0, result.output
        read = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
        assert [row["misc"] for row in read] == ["x\r=1+2"], (table, result.stdout)


def test_jsonl_keeps_the_text_as_it_is(tmp_path) -> None:
    path = _hostile_database(tmp_path, f"sqlite:///{tmp_path / 'c.db'}")
    result = cli("export", "ledger", str(path), "--format", "jsonl")
    assert json.loads(result.stdout)["refid"] == "=1+1"  # JSON is data, never a formula


# -- logs and terminals ------------------------------------------------------------------------

FORGED = "EGeneral:Internal error\n2026-12-07 18:00:00,000 CRITICAL collector.service: FORGED"
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m\u2028"
#: A record's first line in the text format.
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_kraken_error_forges_no_log_line_and_sends_no_escape(tmp_path, log_format) -> None:
    with FakeKraken(tier=None) as fake:
        path = job_file(
            tmp_path,
            fake,
            fake.add_key(),
            f"sqlite:///{tmp_path / 'c.db'}",
            # One attempt's error is what is looked at: the retries' 10 s deadline is not.
            "b: {method: Balance, every: 1h, deadline: 1s}",
            reference=False,
        )
        fake.inject("kraken_error", method="Balance", error=FORGED + ESCAPES, count=10)
        cmd = [sys.executable, "-m", "collector.cli", "run", "--once", "--log-format", log_format]
        proc = subprocess.run(
            [*cmd, str(path)], capture_output=True, text=True, env=_env(), timeout=60
        )
    log = proc.stderr
    assert "FORGED" in log, log  # the error is logged, escaped
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", log), repr(log)
    for line in log.splitlines():
        if log_format == "json":
            assert "FORGED" not in json.loads(line)["level"]
        else:  # a line at column 0 is a real record's first line; a traceback's are indented
            assert RECORD.match(line) or line.startswith("  ") or line.startswith("error: "), line
            assert not line.startswith("2026-12-07 18:00:00,000 CRITICAL"), line
    if log_format == "text":
        assert "\\n2026-12-07 18:00:00,000 CRITICAL collector.service: FORGED\\x1b]0;owned" in log


def test_a_traceback_line_is_indented_and_escaped() -> None:
    import logging

    from collector.logs import TEXT, TextFormatter

    try:
        raise ValueError("boom\n2026-12-07 18:00:00,000 CRITICAL x: FORGED\x1b[2J")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", ("a\nb",), sys.exc_info())
    out = TextFormatter(TEXT).format(record).splitlines()
    assert out[0].endswith("ERROR x: a\\nb")
    assert all(line.startswith("  ") for line in out[1:]) and "\x1b" not in "".join(out)
    assert "  2026-12-07 18:00:00,000 CRITICAL x: FORGED\\x1b[2J" in out


#: What a database row may hold that a terminal would obey: a line break (a forged line), OSC
#: (the window title), CSI (clear the screen), and C1's one-byte CSI.
HOSTILE = "Z\nOK: all verified\x1b]0;t\x07\x1b[2J\x9b1m"
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def test_verify_and_status_print_what_the_database_holds_escaped(tmp_path) -> None:
    from sqlalchemy import create_engine, text

    from .test_names import PRIVATE, once

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None, history={"ledger": 40}) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, PRIVATE, reference=False)
        once(path)
    engine = create_engine(url)
    with engine.begin() as conn:  # one asset renamed and its last balance off: a break to show
        asset = conn.execute(text("SELECT asset FROM ledger ORDER BY time DESC")).scalar()
        conn.execute(
            text("UPDATE ledger SET asset = :h WHERE asset = :a"), {"h": HOSTILE, "a": asset}
        )
        conn.execute(
            text(
                "UPDATE ledger SET balance = '123456' WHERE ledger_id = "
                "(SELECT ledger_id FROM ledger WHERE asset = :h ORDER BY time DESC LIMIT 1)"
            ),
            {"h": HOSTILE},
        )
        conn.execute(text("UPDATE runs SET status = :h WHERE job = 'l'"), {"h": HOSTILE})
    engine.dispose()
    verify = cli("verify", str(path))
    assert verify.exit_code == 1, verify.output
    assert "Z\\nOK: all verified\\x1b]0;t\\x07\\x1b[2J\\x9b1m" in verify.output
    status = cli("status", str(path))
    assert "Z\\nOK: all verified\\x1b]0;t" in status.output, status.output
    for shown in (verify.output, status.output):
        assert not CONTROLS.search(shown), repr(shown)
        assert not any(line.startswith("OK: all verified") for line in shown.splitlines())


# -- exit codes ------------------------------------------------------------------------------


def test_run_once_exits_1_when_the_database_refused_a_run_it_got(tmp_path, postgres) -> None:
    """Kraken answered (status ok at the exchange), PostgreSQL refused the row (a NUL in an asset's
    name, which its text can't hold): the run is stored as bad_response, and cron must hear of
    it."""
    url = postgres.new_database()
    with FakeKraken(tier=None) as fake:
        path = job_file(
            tmp_path, fake, fake.add_key(), url, "b: {method: Balance, every: 1h}", reference=False
        )
        body = json.dumps({"error": [], "result": {"ZU\u0000SD": "1.0000"}})
        fake.inject("raw", method="Balance", body=body.encode())
        cmd = [sys.executable, "-m", "collector.cli", "run", "--once", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    from .test_service import rows

    assert rows(url, "SELECT job, status FROM runs") == [("b", "bad_response")]
    assert "its answer could not be stored" in proc.stderr
    assert proc.returncode == 1, proc.stderr


# -- export -o -------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path):
    """A job file whose SQLite database holds one ledger entry, and the export's CSV of it."""
    path = _hostile_database(tmp_path, f"sqlite:///{tmp_path / 'c.db'}")
    plain = cli("export", "ledger", str(path))
    assert plain.exit_code == 0
    return path, plain.stdout_bytes


def test_export_o_dash_is_stdout(tmp_path, exported, monkeypatch) -> None:
    path, csv_bytes = exported
    monkeypatch.chdir(tmp_path)
    result = cli("export", "ledger", str(path), "-o", "-")
    assert result.exit_code == 0 and result.stdout_bytes == csv_bytes
    assert not os.path.lexists(tmp_path / "-")


@pytest.mark.parametrize("kind", ["folder", "link to a file", "dangling link", "socket"])
def test_export_o_refuses_what_it_must_not_replace_before_exporting(
    tmp_path, exported, kind
) -> None:
    import socket

    path, _ = exported
    out, victim = tmp_path / "out", tmp_path / "victim.csv"
    victim.write_text("precious\n")
    if kind == "folder":
        out.mkdir()
        said = "is a folder; give a file in it"
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(out))
        said = "is neither a file, a FIFO nor a character device"
    else:
        out.symlink_to(victim if kind == "link to a file" else tmp_path / "nowhere")
        said = "is a symbolic link; an export never replaces a link"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("export", "ledger", str(path), "-o", str(out))
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: -o: ") and said in line and ".part" not in line, line
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left, nothing replaced
    assert kind != "folder" or list(out.iterdir()) == []


@pytest.mark.parametrize("via_link", [False, True])
def test_export_o_writes_into_a_fifo(tmp_path, exported, via_link) -> None:
    import stat
    import threading

    path, csv_bytes = exported
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = fifo
    if via_link:
        out = tmp_path / "link"
        out.symlink_to(fifo)
    got: list[bytes] = []
    # A daemon: if the export never opened the FIFO, the test fails instead of hanging.
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli("export", "ledger", str(path), "-o", str(out))
    reader.join(30)
    assert result.exit_code == 0, result.output
    assert got == [csv_bytes]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and out.is_symlink() == via_link


def test_export_o_writes_into_a_character_device_and_leaves_it_one(tmp_path, exported) -> None:
    """As root, the old export replaced /dev/null with a regular file: a null device of our own
    (mknod needs root, which the tests have; skipped where it is refused)."""
    import stat

    path, _ = exported
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod refused: not root")
    result = cli("export", "ledger", str(path), "-o", str(null))
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_the_part_file_a_killed_export_left_is_removed_by_the_next(tmp_path, exported) -> None:
    """A SIGKILLed export leaves ``.NAME.XXXX.part``, its lock gone with its process; one being
    written now (its lock held) is left alone."""
    import fcntl

    path, csv_bytes = exported
    out = tmp_path / "ledgers.csv"
    killed = tmp_path / ".ledgers.csv.k1ll3d.part"
    killed.write_bytes(b"half an export")
    live = tmp_path / ".ledgers.csv.l1v3.part"
    live.write_bytes(b"being written")
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli("export", "ledger", str(path), "-o", str(out))
        assert result.exit_code == 0, result.output
        assert not killed.exists() and live.read_bytes() == b"being written"
    assert out.read_bytes() == csv_bytes


# -- read-only commands ------------------------------------------------------------------------

#: Root as the tests run, without the capabilities that ignore file modes: a file's mode then
#: holds for it as for any user (root owns the files, so their owner bits apply).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _modes_hold(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        done = subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.SubprocessError):
        return False
    finally:
        probe.unlink()
    return done.returncode != 0


@pytest.fixture
def read_only(tmp_path):
    """A collected SQLite database the commands may only read (the file 0444, its folder 0555,
    no -wal), a job file whose key file they can't read (0000): what a reader such as a
    backup or a report user has."""
    from .test_names import PRIVATE, once

    if not _modes_hold(tmp_path):
        pytest.skip("setpriv can't drop CAP_DAC_OVERRIDE here: file modes would not hold")
    data = tmp_path / "data"
    data.mkdir()
    with FakeKraken(tier=None, history={"ledger": 30}) as fake:
        key, secret = fake.add_key()
        key_file = tmp_path / "kraken.key"
        key_file.write_text(f"{key}\n{secret}\n")
        key_file.chmod(0o600)
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: sqlite:///{data / 'c.db'}\nkraken:\n  url: {fake.url}\n"
            f"  key_file: {key_file}\n  rate_limit: {{max: 1000, decay: 1000}}\njobs:\n"
            + "".join(f"  {line}\n" for line in PRIVATE.strip().splitlines())
        )
        once(path)
    assert not (data / "c.db-wal").exists()  # nothing left in a -wal to read
    key_file.chmod(0)
    (data / "c.db").chmod(0o444)
    data.chmod(0o555)
    yield path, data
    data.chmod(0o755)


def _as_reader(*args: str) -> subprocess.CompletedProcess:
    cmd = [*NO_DAC, sys.executable, "-m", "collector.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)


def test_read_only_commands_need_no_key_and_only_read(read_only) -> None:
    path, data = read_only
    assert "cannot read key file" in _as_reader("check", str(path)).stderr  # run would need it
    status = _reads_the_database(path, data)
    assert "account default: key counter -" in status  # its budget file is named by the key


def test_a_database_this_user_may_only_read_is_read(read_only) -> None:
    path, data = read_only
    (path.parent / "kraken.key").chmod(0o600)  # the key is readable: the database alone
    assert "account default: key counter 0" in _reads_the_database(path, data)


def _reads_the_database(path, data) -> str:
    """status, verify and export as this reader, and status's output."""
    status = _as_reader("status", str(path))
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "healthy"
    verify = _as_reader("verify", str(path))
    assert verify.returncode == 0, verify.stderr
    assert "account default: verified" in verify.stdout
    export = _as_reader("export", "ledger", str(path), "--format", "kraken")
    assert export.returncode == 0, export.stderr
    assert len(export.stdout.splitlines()) == 31
    _dashboard_answers(path)
    assert not [p.name for p in data.iterdir() if p.name.endswith(("-wal", "-shm"))]
    return status.stdout


def _dashboard_answers(path) -> None:
    """``collector dashboard`` as this reader serves its page from the database."""
    import signal
    import urllib.request

    cmd = [*NO_DAC, sys.executable, "-m", "collector.cli", "dashboard", "--listen"]
    proc = subprocess.Popen(
        [*cmd, "127.0.0.1:0", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()  # printed once it listens
        url = re.search(r"http://[^/]+/", first)
        assert url, first + proc.stderr.read().decode() if proc.stderr else first
        with urllib.request.urlopen(url.group(), timeout=30) as page:
            assert page.status == 200 and b"default" in page.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_read_only_commands_read_a_wal_they_may_not_write(read_only) -> None:
    """Rows still in the -wal (a collector writing now) are read, through a database file and
    a folder this user may not write."""
    import sqlite3

    path, data = read_only
    (path.parent / "kraken.key").chmod(0o600)
    data.chmod(0o755)
    writer = sqlite3.connect(data / "c.db")  # root with its capabilities: the collector
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(
            "UPDATE ledger SET refid = 'FROM-THE-WAL' WHERE ledger_id = "
            "(SELECT min(ledger_id) FROM ledger)"
        )
        writer.commit()
        for name in ("c.db-wal", "c.db-shm"):  # the reader may read them, not write them
            (data / name).chmod(0o444)
        data.chmod(0o555)
        export = _as_reader("export", "ledger", str(path))
        assert export.returncode == 0, export.stderr
        assert "FROM-THE-WAL" in export.stdout
    finally:
        writer.close()
        data.chmod(0o755)


def test_a_read_only_postgresql_session_refuses_writes(postgres) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    url = postgres.new_database()
    Store.from_url(url).upgrade()
    store = Store.from_url(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
            with pytest.raises(DBAPIError, match="read-only transaction"):
                conn.execute(text("DELETE FROM runs"))
    finally:
        store.dispose()


def test_the_exports_own_connections_refuse_writes(database_url) -> None:
    """``collector export`` reads through the driver alone (:mod:`collector.rawdb`), opened as
    ``read_only_engine`` opens it: SQLite ``mode=ro``, PostgreSQL's every transaction read-only,
    a second transaction included."""
    from collector.rawdb import Database

    Store.from_url(database_url).upgrade()
    database = Database(database_url)
    refusal = "read-only transaction" if database_url.startswith("postgresql") else "readonly"
    for _ in range(2):
        raw = database.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone()[0] == 0
            with pytest.raises(database.dialect.loaded_dbapi.Error, match=refusal):
                cursor.execute("DELETE FROM runs")
            raw.rollback()
        finally:
            raw.close()


def test_a_sqlite_uri_is_opened_as_sqlalchemy_opens_it(tmp_path) -> None:
    """``sqlite:///file:PATH?mode=ro&uri=true``: the export's connection is the URI SQLAlchemy
    makes of it, its ``mode=ro`` kept (not a plain file named ``file:PATH``)."""
    from collector.rawdb import Database

    db = tmp_path / "c.db"
    Store.from_url(f"sqlite:///{db}").upgrade()
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    raw = Database(url).raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            cursor.execute("DELETE FROM runs")
    finally:
        raw.close()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  t: {method: Time, every: 1h}\n")
    result = cli("export", "runs", str(jobs), "--db", url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("id,job,method,params,")


@pytest.mark.parametrize("mode", ["", "&mode=rw", "&mode=rwc"])
def test_a_sqlite_uri_read_by_a_read_only_command_is_read_only_whatever_its_mode(
    tmp_path, mode
) -> None:
    """``sqlite:///file:PATH?uri=true`` without ``mode=ro`` (or with ``rw``) would open the file
    read-write: what only reads opens it ``mode=ro`` all the same (the export's driver
    connection, ``read_only_engine``), and ``status`` finds the file there."""
    from sqlalchemy import text

    from collector.rawdb import Database
    from collector.store import read_only_engine

    db = tmp_path / "c.db"
    Store.from_url(f"sqlite:///{db}").upgrade()
    url = f"sqlite:///file:{db}?uri=true{mode}"
    raw = Database(url).raw_connection()
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            raw.cursor().execute("DELETE FROM runs")
    finally:
        raw.close()
    engine = read_only_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(Exception, match="readonly"):
            conn.execute(text("DELETE FROM runs"))
    finally:
        engine.dispose()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  t: {method: Time, every: 1h}\n")
    result = cli("status", str(jobs), "--db", url)
    assert result.exit_code == 0, result.output
    assert "does not exist" not in result.output


@pytest.mark.parametrize("command", ["status", "verify", "export"])
def test_a_newer_collectors_database_is_the_one_line_run_gives(tmp_path, command) -> None:
    from sqlalchemy import create_engine, text

    from .test_names import PRIVATE, once

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None, history={"ledger": 5}) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, PRIVATE, reference=False)
        once(path)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        engine.dispose()
        run = cli("run", "--once", str(path))
    args = ["export", "ledger", str(path)] if command == "export" else [command, str(path)]
    result = cli(*args)
    (said,) = run.output.splitlines()
    assert "the database is at revision 9999, which this collector does not know" in said
    assert (result.exit_code, result.output.splitlines()) == (2, [said])


def test_an_export_killed_mid_way_leaves_a_part_the_next_export_removes(tmp_path, postgres) -> None:
    """A real SIGKILL: the export waits on a table another session holds locked (its partial
    file made, nothing written yet), is killed there, and the next export cleans up after it."""
    import signal

    from sqlalchemy import create_engine, text

    from .helpers import wait_for

    url = postgres.new_database()
    path = _hostile_database(tmp_path, url)
    out = tmp_path / "ledgers.csv"
    holder = create_engine(url).connect()
    try:
        holder.execute(text("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE"))
        cmd = [sys.executable, "-m", "collector.cli", "export", "ledger", str(path), "-o", str(out)]
        proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE)

        def waiting() -> bool:  # the export's query is queued behind the lock
            return bool(
                holder.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
            )

        wait_for(waiting)
        parts = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        assert len(parts) == 1 and parts[0].name.startswith(".ledgers.csv.")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()
    finally:
        holder.rollback()
        holder.close()
    assert parts[0].exists() and not out.exists()  # what a SIGKILL leaves
    result = cli("export", "ledger", str(path), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert "'=1+1" in out.read_text()
