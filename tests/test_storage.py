"""The tables people query, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from collector.datasets.balances import table as balances
from collector.records import RunRecord
from collector.schema import runs
from collector.store import Store, current_revision
from collector.writer import Writer

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def record(job: str = "balances", method: str = "Balance", balances=(), **kw) -> RunRecord:
    base = dict(
        job=job,
        method=method,
        params={"asset": "ZUSD"},
        scheduled_at=T0,
        started_at=T0 + timedelta(milliseconds=3),
        finished_at=T0 + timedelta(milliseconds=9),
        status="ok",
        http_status=200,
        result={"XXBT": "1011.1908877900"},
    )
    base.update(kw)
    run = RunRecord(**base)
    if balances:
        run.rows = {
            "balances": [
                {"asset": a, "amount": x, "job": run.job, "taken_at": run.finished_at}
                for a, x in balances
            ]
        }
    return run


@pytest.fixture
def store(database_url: str):
    s = Store.from_url(database_url)
    s.upgrade()
    yield s
    s.dispose()


def test_migrations_create_the_tables_and_are_idempotent(store) -> None:
    store.upgrade()  # again: nothing to do
    assert current_revision(store.engine) == "0013"
    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "balances", "cursors", "collector_state", "alembic_version"} <= tables
    datasets = {
        "ledger",
        "my_trades",
        "orders",
        "trades",
        "ohlc",
        "spread",
        "ticker",
        "gaps",
        "book",
    }
    assert datasets <= tables
    keys = {t: inspect(store.engine).get_pk_constraint(t)["constrained_columns"] for t in datasets}
    assert sorted(keys["ledger"]) == ["account", "ledger_id"]
    assert sorted(keys["orders"]) == sorted(keys["my_trades"]) == ["account", "txid"]


def test_migrations_build_exactly_the_schema_the_code_declares(store) -> None:
    """Alembic's own comparison of the migrated database with the tables the modules declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from collector.schema import metadata

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_runs_round_trip_with_utc_aware_times_and_json(store) -> None:
    (run_id,) = store.write([record(error=None)])
    with store.engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
    assert row.scheduled_at == T0 and row.scheduled_at.tzinfo is not None
    assert row.scheduled_at.utcoffset() == timedelta(0)
    assert row.finished_at - row.started_at == timedelta(milliseconds=6)
    assert row.result == {"XXBT": "1011.1908877900"}
    assert (row.params, row.status, row.http_status, row.attempts) == (
        {"asset": "ZUSD"},
        "ok",
        200,
        1,
    )


def test_naive_datetimes_are_refused(store) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        store.write([record(scheduled_at=datetime(2026, 1, 1))])


def test_balances_are_exact_and_the_latest_snapshot_query_works(store) -> None:
    exact = Decimal("1011.190887790000000001")
    store.write([record(balances=[("XXBT", Decimal("1.5")), ("ZUSD", Decimal("10"))])])
    store.write(
        [
            record(
                finished_at=T0 + timedelta(hours=1),
                balances=[("XXBT", exact), ("ZUSD", Decimal("0.0000"))],
            )
        ]
    )
    with store.engine.connect() as conn:
        latest = conn.execute(
            text(
                "SELECT asset, amount FROM balances WHERE run_id = (SELECT max(run_id) FROM balances) "
                "ORDER BY asset"
            )
        ).all()
        typed = (
            conn.execute(
                select(balances.c.amount)
                .where(balances.c.asset == "XXBT")
                .order_by(balances.c.run_id.desc())
            )
            .scalars()
            .first()
        )
    assert [(a, Decimal(str(v))) for a, v in latest] == [("XXBT", exact), ("ZUSD", Decimal("0"))]
    assert isinstance(typed, Decimal) and typed == exact and str(typed) == str(exact)
    if store.engine.dialect.name == "sqlite":  # the text people see in SQL is plain notation
        with store.engine.connect() as conn:
            raw = (
                conn.exec_driver_sql(
                    "SELECT amount FROM balances WHERE asset = 'ZUSD' ORDER BY run_id DESC"
                )
                .scalars()
                .first()
            )
        assert raw == "0.0000"


def test_a_run_and_its_balances_commit_together(store) -> None:
    bad = record(balances=[("XXBT", Decimal("1")), ("ZUSD", "not a number")])
    with pytest.raises(Exception):  # noqa: B017 - any integrity error from the driver
        store.write([record(job="other"), bad])
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM balances")).scalar() == 0


def test_nonce_high_water_mark(store) -> None:
    assert store.load_nonce() == 0
    store.write([], nonce=1_790_000_000_123)
    store.write([record()], nonce=1_790_000_000_456)
    assert store.load_nonce() == 1_790_000_000_456


def test_result_is_jsonb_on_postgresql(store) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    with store.engine.connect() as conn:
        kinds = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'runs' AND column_name IN ('result', 'params', 'started_at')"
                )
            ).all()
        )
        amount = conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'balances' AND column_name = 'amount'"
            )
        ).scalar()
    assert kinds == {"result": "jsonb", "params": "jsonb", "started_at": "timestamp with time zone"}
    assert amount == "numeric"


def test_sqlite_is_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    s = Store.from_url(f"sqlite:///{tmp_path / 'w.db'}")
    s.upgrade()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    s.dispose()


def test_writer_batches_and_flushes(store) -> None:
    nonce = [0]
    writer = Writer(store, nonce=lambda: nonce[0], batch_max=7, flush_interval=0.05)
    writer.start()
    for i in range(30):
        writer.submit(record(job=f"j{i}"))
    nonce[0] = 1_790_000_000_999
    assert writer.flush(timeout=30)
    assert writer.close(timeout=30)
    with store.engine.connect() as conn:
        jobs = conn.execute(select(runs.c.job).order_by(runs.c.id)).scalars().all()
    assert jobs == [f"j{i}" for i in range(30)]
    assert store.load_nonce() == 1_790_000_000_999


def test_migrations_ship_in_the_wheel_and_run_from_it(tmp_path) -> None:
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kraken_collector-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert "collector/migrations/env.py" in names
    assert "collector/migrations/versions/0001_initial.py" in names
    assert "collector/migrations/versions/0002_run_uid.py" in names
    db = tmp_path / "from-wheel.db"
    code = (
        "import collector.store as s; print(s.migrations_dir()); "
        f"st = s.Store.from_url('sqlite:///{db}'); st.upgrade(); "
        "print(s.current_revision(st.engine))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        check=True,
        text=True,
        capture_output=True,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    where, revision = out.stdout.split()
    assert where == str(tmp_path / "site" / "collector" / "migrations")
    assert revision == "0013"


def test_writer_makes_callers_wait_when_the_database_falls_behind(tmp_path) -> None:
    import sqlite3
    import threading

    db = tmp_path / "slow.db"
    store = Store.from_url(f"sqlite:///{db}")
    store.upgrade()
    writer = Writer(store, batch_max=1, flush_interval=0.01, max_pending=2)
    writer.start()
    blocker = sqlite3.connect(db, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database: writes wait
    try:
        writer.submit(record(job="a"))
        writer.submit(record(job="b"))
        third_done = threading.Event()
        third = threading.Thread(target=lambda: (writer.submit(record(job="c")), third_done.set()))
        third.start()
        # Two runs are pending and the database is locked: the third caller must be held back.
        assert not third_done.wait(0.5)
    finally:
        blocker.rollback()
        blocker.close()
    third.join(30)
    assert third_done.is_set()
    assert writer.flush(30) and writer.close(30)
    with store.engine.connect() as conn:
        assert conn.execute(select(runs.c.job).order_by(runs.c.id)).scalars().all() == [
            "a",
            "b",
            "c",
        ]
    store.dispose()


# -- the runs rows on SQLite: one statement a batch, not one a run ---------------------------------


def _sqlite_store(tmp_path) -> Store:
    s = Store.from_url(f"sqlite:///{tmp_path / 'runs.db'}")
    s.upgrade()
    return s


def test_sqlite_inserts_a_batch_of_runs_as_one_statement_whatever_its_size(
    tmp_path, statements
) -> None:
    s = _sqlite_store(tmp_path)
    batch = [
        record(job=f"j{i}", method="Time", status="ok" if i % 3 else "http_error")
        for i in range(300)
    ]
    statements.clear()
    ids = s.write(batch)
    inserts = [x for x in statements if x.startswith("INSERT INTO runs")]
    # One INSERT … SELECT … FROM json_each(?) for the 300 rows (before: one INSERT … RETURNING a
    # run, each step of which waited for the interpreter lock), and two reads of the ids.
    assert len(inserts) == 1 and "json_each" in inserts[0]
    assert len([x for x in statements if "runs" in x]) == 3
    with s.engine.connect() as conn:
        stored = dict(conn.execute(select(runs.c.id, runs.c.job)).all())
    assert [stored[i] for i in ids] == [f"j{i}" for i in range(300)]  # each run's own id
    # Written again (a spool replay): nothing new, the same ids.
    assert s.write(batch) == ids
    with s.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 300
    s.dispose()


def test_sqlite_runs_rows_hold_the_values_sqlalchemy_binds(tmp_path) -> None:
    s = _sqlite_store(tmp_path)
    batch = [
        record(job="a", error="Ünïcode — ✓", params={"pair": "XBT/USD", "n": 3}),
        record(job="b", result=None, http_status=None, status="connection_error", error="reset"),
        # A NUL, which SQLite's JSON text would cut: that batch takes the statements as before.
        record(job="c", error="before\x00after"),
    ]
    s.write(batch[:2])
    s.write(batch[2:])
    with s.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT job, params, scheduled_at, finished_at, http_status, typeof(http_status), "
            "error, result, attempts, typeof(attempts), pages, new_rows, uid "
            "FROM runs ORDER BY job"
        ).all()
    assert [tuple(r) for r in rows] == [
        (
            "a",
            '{"pair": "XBT/USD", "n": 3}',
            "2026-11-24 12:00:00.000000+00:00",
            "2026-11-24 12:00:00.009000+00:00",
            200,
            "integer",
            "Ünïcode — ✓",
            '{"XXBT": "1011.1908877900"}',
            1,
            "integer",
            0,
            0,
            batch[0].uid,
        ),
        (
            "b",
            '{"asset": "ZUSD"}',
            "2026-11-24 12:00:00.000000+00:00",
            "2026-11-24 12:00:00.009000+00:00",
            None,
            "null",
            "reset",
            None,
            1,
            "integer",
            0,
            0,
            batch[1].uid,
        ),
        (
            "c",
            '{"asset": "ZUSD"}',
            "2026-11-24 12:00:00.000000+00:00",
            "2026-11-24 12:00:00.009000+00:00",
            200,
            "integer",
            "before\x00after",  # all of it
            '{"XXBT": "1011.1908877900"}',
            1,
            "integer",
            0,
            0,
            batch[2].uid,
        ),
    ]
    # A lone surrogate can't be stored: refused as the record's content, as binding it was.
    with pytest.raises(UnicodeEncodeError):
        s.write([record(job="d", error="bad \ud800")])
    s.dispose()


def test_sqlite_page_cache_is_bounded(tmp_path) -> None:
    from collector import defaults

    s = _sqlite_store(tmp_path)
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -defaults.SQLITE_CACHE_KIB
    assert defaults.SQLITE_CACHE_KIB < 2000  # below SQLite's own default: level memory early
    s.dispose()
