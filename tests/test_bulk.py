"""The store's dataset writes, exact and exactly once, on SQLite and on PostgreSQL's COPY path.

On PostgreSQL a page's rows are copied into a staging table and upserted from there in one
statement (collector.bulk); these tests hold that path to what the ``executemany`` upsert did:
every value back exactly as it went in, a row seen again stored once, ``update``/``frozen``
columns, per-run ``new_rows``, a refused value failing only its own run, a lost connection an
outage (spooled), not a refusal.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DataError, OperationalError

from collector.bulk import STAGE_PREFIX
from collector.datasets import OHLC
from collector.datasets.history import orders
from collector.datasets.market import checked_trade, ohlc, trades
from collector.errors import Status
from collector.events import Spooled
from collector.records import Prepared, RunRecord, decode, encode
from collector.schema import runs
from collector.spool import Spool
from collector.store import Store
from collector.streams.rows import TRADE_COLUMNS, stored_trade
from collector.writer import Writer

from .conftest import dataset_writes
from .helpers import wait_for

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

#: Text that COPY's format escapes (tab, newline, CR, backslash, its NULL marker, its end marker)
#: or that a careless quoting would bend.
ODD = [
    "tab\there",
    "new\nline",
    "cr\rlf\r\n",
    "back\\slash\\",
    "\\N",
    "\\.",
    "",
    "NULL",
    "quote'\"s",
    "comma,semi;pipe|",
    "unicode ✓ é 漢字 🙂",
    " spaces ",
]


@pytest.fixture
def store(database_url: str):
    s = Store.from_url(database_url)
    s.upgrade()
    yield s
    s.dispose()


def run(job: str = "t", rows: dict | None = None, **kw) -> RunRecord:
    record = RunRecord(job, "Trades", {"pair": "XBTUSD"}, T0, T0, T0, pages=1, **kw)
    record.rows = rows or {}
    return record


def trade_rows(first: int, count: int, pair: str = "XXBTZUSD") -> list[dict]:
    """Trades as the dataset reads them from Kraken's answer: 7-decimal times, long decimals
    (past a float's and Decimal's default 28 digits, within the 40 any number may have)."""
    answer = {
        pair: [
            [
                f"{i}.{'0' * 25}{i:09d}",  # 34 decimals
                f"{10**18 + i}.12345678901234567890",  # 19 digits before the point, 20 after
                f"1688669448.{i % 10_000_000:07d}",  # Kraken's 7 decimals
                "b" if i % 2 else "s",
                "l" if i % 3 else "m",
                ODD[i % len(ODD)],
                i,
            ]
            for i in range(first, first + count)
        ],
        "last": str(first + count),
    }
    record = run()
    # As dicts, the typed rows every dataset but Trades hands the store (Trades.page makes
    # their stored text, Prepared, of the same reads: test_datasets holds the two equal).
    return [checked_trade(record, pair, row) for row in answer[pair]]


def stored_trades(store: Store) -> list[tuple]:
    with store.engine.connect() as conn:
        query = select(*(c for c in trades.c if c.name != "run_id")).order_by(trades.c.trade_id)
        return [tuple(r) for r in conn.execute(query)]


def new_rows(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(runs.c.job, runs.c.new_rows)).all())


def _exact(values: tuple) -> tuple:
    """Values with their exact text: Decimal('1.50') is not Decimal('1.5') here."""
    return tuple(str(v) if isinstance(v, Decimal) else v for v in values)


def test_values_come_back_exactly(store, statements) -> None:
    rows = trade_rows(1, 60)
    # Kraken's 7th decimal is below a microsecond: 1688669448.0000059 is ...448.000005.
    assert rows[58]["time"] == datetime.fromtimestamp(1688669448, UTC).replace(microsecond=5)
    rows[7]["time"] = datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)
    store.write([run(rows={"trades": rows})])
    got = stored_trades(store)
    columns = [c.name for c in trades.c if c.name != "run_id"]
    want = [tuple(r[c] for c in columns) for r in rows]
    assert [_exact(g) for g in got] == [_exact(w) for w in want]
    assert all(g[2].tzinfo is not None and g[2].utcoffset() == timedelta(0) for g in got)
    assert {g[7] for g in got} == set(ODD)  # every odd text, byte for byte
    assert str(got[0][3]) == "1." + "0" * 25 + "000000001"
    if store.engine.dialect.name == "postgresql":
        copied, bound = dataset_writes(statements)
        assert copied == ["trades"] and bound == []


def test_a_row_seen_again_is_stored_once_and_each_run_counts_what_it_added(store) -> None:
    store.write(
        [
            run("a", {"trades": trade_rows(0, 10)}),
            run("b", {"trades": trade_rows(5, 10)}),  # 5 of them are a's, in the same batch
        ]
    )
    store.write([run("c", {"trades": trade_rows(10, 10)})])  # 5 stored, 5 new
    store.write([run("d", {"trades": trade_rows(0, 20)})])  # all stored already
    assert new_rows(store) == {"a": 10, "b": 5, "c": 5, "d": 0}
    with store.engine.connect() as conn:
        owners = dict(
            conn.execute(
                select(trades.c.trade_id, runs.c.job).join(runs, runs.c.id == trades.c.run_id)
            ).all()
        )
    assert owners == {i: "a" if i < 10 else "b" if i < 15 else "c" for i in range(20)}
    assert len(stored_trades(store)) == 20


def test_an_open_candle_is_updated_until_it_is_final_then_frozen(store) -> None:
    def candle(close: str, final: bool, minute: int = 0) -> dict:
        return {
            "pair": "XXBTZUSD",
            "interval": 1,
            "time": T0 + timedelta(minutes=minute),
            **{c: Decimal(close) for c in ("open", "high", "low", "close", "vwap", "volume")},
            "count": 7,
            "final": final,
        }

    assert OHLC.update and OHLC.frozen == "final"
    store.write([run("o1", {"ohlc": [candle("1.10", False), candle("5.00", True, 1)]})])
    store.write([run("o2", {"ohlc": [candle("1.20", True), candle("6.00", True, 1)]})])
    store.write([run("o3", {"ohlc": [candle("1.30", True)]})])
    with store.engine.connect() as conn:
        got = conn.execute(
            select(ohlc.c.time, ohlc.c.close, ohlc.c.final, runs.c.job)
            .join(runs, runs.c.id == ohlc.c.run_id)
            .order_by(ohlc.c.time)
        ).all()
    # The open candle took o2's final close and then froze; the final one never moved. Each
    # stays the row of the run that first stored it, and its update is no new row of anyone's
    # (it was counted for o1 once more, as if o1 had stored three candles).
    assert [(str(r[1]), bool(r[2]), r[3]) for r in got] == [
        ("1.20", True, "o1"),
        ("5.00", True, "o1"),
    ]
    assert new_rows(store) == {"o1": 2, "o2": 0, "o3": 0}


def test_a_value_the_database_refuses_fails_only_its_own_run(store, tmp_path) -> None:
    postgres = store.engine.dialect.name == "postgresql"
    nul = trade_rows(100, 3)
    nul[1]["misc"] = "a\x00b"  # PostgreSQL's text has no NUL
    descr = {
        "account": "default",
        "txid": "O-NUL",
        "status": "closed",
        "opentm": T0,
        "closetm": T0,
        "pair": "XBTUSD",
        "type": "buy",
        "ordertype": "limit",
        "price": Decimal("1"),
        "vol": Decimal("1"),
        "vol_exec": Decimal("1"),
        "cost": Decimal("1"),
        "fee": Decimal("0"),
        "descr": {"order": "nul \x00 inside"},  # nor does its JSONB
    }
    batch = [
        run("ok1", {"trades": trade_rows(0, 50)}),
        run("nul", {"trades": nul}),
        run("ok2", {"trades": trade_rows(50, 50)}),
        run("json", {"orders": [descr]}),
        run("ok3", {"trades": trade_rows(200, 5)}),
    ]
    if postgres:
        with pytest.raises(DataError):  # refused, not "unreachable": no spool for this
            store.write([batch[1]])
    writer = Writer(store, spool=Spool(tmp_path / "spool.db"), flush_interval=0.01)
    writer.start()
    for record in batch:
        writer.submit(record)
    assert writer.flush(30) and writer.close(30)
    assert writer.spool is not None and len(writer.spool) == 0
    with store.engine.connect() as conn:
        status = dict(conn.execute(select(runs.c.job, runs.c.status)).all())
        ids = {t for (t,) in conn.execute(select(trades.c.trade_id))}
        order_count = conn.execute(select(orders.c.txid)).all()
        misc = conn.execute(select(trades.c.misc).where(trades.c.trade_id == 101)).scalar()
    refused = {"nul", "json"} if postgres else set()
    assert status == {r.job: "bad_response" if r.job in refused else "ok" for r in batch}
    kept = set(range(100)) | set(range(200, 205)) | (set() if postgres else {100, 101, 102})
    assert ids == kept
    assert len(order_count) == (0 if postgres else 1)
    assert misc == (None if postgres else "a\x00b")  # SQLite keeps it, exactly
    assert new_rows(store) == {
        "ok1": 50,
        "nul": 0 if postgres else 3,
        "ok2": 50,
        "json": 0 if postgres else 1,
        "ok3": 5,
    }


def test_a_connection_lost_during_copy_is_an_outage_and_nothing_is_lost(postgres, tmp_path) -> None:
    """The server ends the session between the look at the page's key range and the COPY: the
    batch goes to the spool (an outage), not run by run into bad_response rows (a refusal)."""
    store = Store.from_url(postgres.new_database())
    store.upgrade()
    cut = []

    @event.listens_for(store.engine, "after_cursor_execute")
    def terminate(conn, _cursor, statement, _params, _context, _many) -> None:
        if "SELECT 1 FROM trades WHERE" in statement and not cut:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
                cut.append(admin.execute(text(f"SELECT pg_terminate_backend({pid})")).scalar())

    with pytest.raises(OperationalError):
        store.write([run("lost", {"trades": trade_rows(0, 10)})])
    assert cut == [True]
    writer = Writer(store, spool=Spool(tmp_path / "spool.db"), flush_interval=0.01)
    spooled: list[Spooled] = []
    writer.events.subscribe(Spooled, spooled.append)
    cut.clear()
    writer.start()
    writer.submit(run("a", {"trades": trade_rows(0, 40)}))
    assert writer.flush(30)
    assert cut == [True] and [e.count for e in spooled] == [1]  # an outage: to the spool
    writer.submit(run("b", {"trades": trade_rows(30, 40)}))
    assert writer.spool is not None
    wait_for(lambda: writer.flush(0) and len(writer.spool) == 0)  # replayed after the backoff
    assert writer.close(30)
    assert new_rows(store) == {"a": 40, "b": 30}
    with store.engine.connect() as conn:
        assert conn.execute(select(runs.c.status)).scalars().all() == [Status.OK] * 2
    assert [t[0] for t in stored_trades(store)] == ["XXBTZUSD"] * 70
    store.dispose()


# -- a stream's Prepared rows (issue 28): the same rows as the typed way, on both databases ---------


def prepared_of(rows: list[dict]) -> Prepared:
    return Prepared(TRADE_COLUMNS, (stored_trade(r) for r in rows))


def test_prepared_rows_are_stored_as_the_typed_rows_are(store) -> None:
    """A stream's batch hands the store its trades as text tuples (SQLite: one executemany as
    they are; PostgreSQL: read back into typed rows): the stored values, exactly, and each run's
    new rows, are what the same trades as dicts give; a trade stored before is left, as the
    dict way leaves it; and a spooled record keeps its tuples."""
    rows = trade_rows(1, 40)
    store.write([run("a", {"trades": rows[:30]}), run("b", {"trades": rows[10:]})])
    want, want_new = stored_trades(store), new_rows(store)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM trades"))
        conn.execute(text("DELETE FROM runs"))
    first = run("a", {"trades": prepared_of(rows[:30])})
    again = decode(encode(run("b", {"trades": prepared_of(rows[10:])})))  # the spool's way
    assert isinstance(again.rows["trades"], Prepared)
    store.write([first, again])
    assert [_exact(r) for r in stored_trades(store)] == [_exact(r) for r in want]
    assert new_rows(store) == want_new == {"a": 30, "b": 10}


def test_a_prepared_batch_on_sqlite_is_one_statement_and_a_nul_takes_executemany(
    tmp_path, statements
) -> None:
    """On SQLite a run's prepared rows go in as ONE statement (their JSON text through
    ``json_each``), whose single step runs without the interpreter lock, not an ``executemany``
    that takes the lock back at every row (beside a busy feed: the switch interval a row). A
    batch with a NUL in a value, which SQLite's JSON text would cut at the NUL, takes the
    ``executemany`` and keeps it; both store what the typed way stores."""
    rows = trade_rows(1, 40)
    rows[5]["misc"] = "nul\x00here"
    typed = Store.from_url(f"sqlite:///{tmp_path / 'typed.db'}")
    typed.upgrade()
    typed.write([run("a", {"trades": rows[:30]}), run("b", {"trades": rows[30:]})])
    want = [_exact(r) for r in stored_trades(typed)]
    typed.dispose()
    store = Store.from_url(f"sqlite:///{tmp_path / 'prepared.db'}")
    store.upgrade()
    statements.clear()
    store.write([run("a", {"trades": prepared_of(rows[:30])})])
    store.write([run("b", {"trades": prepared_of(rows[30:])})])
    inserts = [s for s in statements if s.startswith("INSERT INTO trades")]
    assert len(inserts) == 2
    assert "VALUES" in inserts[0] and "json_each" not in inserts[0]  # the NUL's batch
    assert "FROM json_each(?)" in inserts[1] and "VALUES" not in inserts[1]
    got = [_exact(r) for r in stored_trades(store)]
    assert got == want and got[5][7] == "nul\x00here"
    assert new_rows(store) == {"a": 30, "b": 10}
    store.write([run("c", {"trades": prepared_of(rows[25:35])})])  # stored before: left
    assert new_rows(store)["c"] == 0 and len(stored_trades(store)) == 40
    store.dispose()


def test_a_run_whose_rows_are_both_prepared_and_not_is_refused(store) -> None:
    """Never made so (a run's rows of one table are one kind or the other): refused whole, not
    mixed into one list the store would misread."""
    rows = trade_rows(1, 2)
    first = run("a", {"trades": prepared_of(rows[:1])})
    later = dataclasses.replace(first, rows={"trades": rows[1:]})
    with pytest.raises(TypeError, match="both prepared and not"):
        store.write([first, later])
    assert stored_trades(store) == []


@pytest.mark.parametrize("prepared", [False, True], ids=["typed", "prepared"])
def test_a_key_another_writer_stores_after_the_look_falls_back_to_the_upsert(
    postgres, prepared
) -> None:
    """Another collector stores one of the page's trades between this one's look at the page's
    key range (nothing stored) and its COPY into the table: the COPY meets the key, its savepoint
    is rolled back, and the same rows take the upsert in the same transaction: every trade once,
    the other's row left as it stored it, this run counting only what it added. The same for a
    page of Prepared text (a Trades page's, a stream's), which is COPYd as it is."""

    def page(first: int, count: int) -> list:
        rows = trade_rows(first, count)
        return prepared_of(rows) if prepared else rows

    url = postgres.new_database()
    store, other = Store.from_url(url), Store.from_url(url)
    store.upgrade()
    raced: list[int] = []

    @event.listens_for(store.engine, "after_cursor_execute")
    def race(_conn, _cursor, statement, _params, _context, _many) -> None:
        if "SELECT 1 FROM trades WHERE" in statement and not raced:
            raced.append(1)
            other.write([run("other", {"trades": page(7, 1)})])  # committed meanwhile

    try:
        ids = store.write([run("mine", {"trades": page(0, 20)})])
        assert raced == [1] and len(ids) == 1
        assert new_rows(store) == {"other": 1, "mine": 19}
        with store.engine.connect() as conn:
            owners = dict(
                conn.execute(
                    select(trades.c.trade_id, runs.c.job).join(runs, runs.c.id == trades.c.run_id)
                ).all()
            )
        assert owners == {i: "other" if i == 7 else "mine" for i in range(20)}
        # The next page, none of its keys stored, goes straight in again.
        store.write([run("next", {"trades": page(20, 5)})])
        assert new_rows(store)["next"] == 5 and len(stored_trades(store)) == 25
    finally:
        store.dispose()
        other.dispose()


def test_a_page_with_a_stored_key_in_its_range_takes_the_upsert(postgres, statements) -> None:
    """A stored key inside the page's range (a page fetched again) sends the page through the
    staging table: the stored row is left, the others are added and counted."""
    store = Store.from_url(postgres.new_database())
    store.upgrade()
    try:
        store.write([run("a", {"trades": trade_rows(10, 1)})])
        statements.clear()
        store.write([run("b", {"trades": trade_rows(0, 20)})])
        assert any(f"FROM {STAGE_PREFIX}trades" in s for s in statements)
        assert new_rows(store) == {"a": 1, "b": 19}
        assert len(stored_trades(store)) == 20
    finally:
        store.dispose()


def test_decimals_in_exponent_notation_are_stored_in_plain_notation(store) -> None:
    """SQLite keeps decimals as text: plain notation (0.0000000000, not 0E-10; 100000, not
    1E+5), whatever notation the Decimal had; both databases give back the same values."""
    odd = ["0E-10", "1E+5", "1.0E-7", "0.000001", "-0.00", "123.4500", "5E-40", "12345678901E+3"]
    rows = trade_rows(0, len(odd))
    for row, text_ in zip(rows, odd, strict=True):
        row["price"] = Decimal(text_)
    store.write([run(rows={"trades": rows})])
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT CAST(price AS TEXT) FROM trades ORDER BY trade_id")
        texts = [t for (t,) in stored]
    if store.engine.dialect.name == "sqlite":
        assert texts == [format(Decimal(t), "f") for t in odd]
        assert texts[:3] == ["0.0000000000", "100000", "0.00000010"]
    assert [Decimal(t) for t in texts] == [Decimal(t) for t in odd]
