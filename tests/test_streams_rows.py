"""What a stream stores (collector/streams/rows.py): the fake's WebSocket v2 feed, over real
sockets, turned into the rows REST stores, in the same tables (real SQLite and PostgreSQL); the
``book`` table from Kraken's own capture."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

import collector
from collector.backoff import Backoff
from collector.datasets import DEFAULT
from collector.datasets.book import table as book_table
from collector.datasets.connections import table as connections_table
from collector.datasets.market import ohlc as ohlc_table
from collector.datasets.market import trades as trades_table
from collector.datasets.reference import pairs as pairs_table
from collector.jobfile.model import Job
from collector.records import RunRecord
from collector.runner import Runner
from collector.schema import runs
from collector.store import Store
from collector.streams.book import Book
from collector.streams.connection import Connection, Subscribed, Subscription, decoder
from collector.streams.rows import (
    TRADE_COLUMNS,
    Candles,
    Every,
    Symbols,
    batch,
    book_rows,
    connection_row,
    moment,
    ohlc_rows,
    stored_trade,
    ticker_rows,
    trade_decoder,
    trade_rows,
    trade_values,
)
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for

WAIT = 20.0
CAPTURE = Path(__file__).parent / "data" / "book-v2-btcusd-depth10.json"


class Feed:
    """The handler and publisher of one connection: every data message, every event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, str, Any, datetime]] = []
        self.events: list[object] = []

    def handle(self, channel: str, kind: str, data: Any, received_at: datetime) -> None:
        with self.lock:
            self.messages.append((channel, kind, data, received_at))

    def publish(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, channel: str) -> list[tuple[str, Any, datetime]]:
        with self.lock:
            return [(k, d, at) for c, k, d, at in self.messages if c == channel]

    def subscribed(self) -> int:
        with self.lock:
            return sum(isinstance(e, Subscribed) for e in self.events)


def open_feed(fake: FakeKraken, *subs: Subscription) -> tuple[Connection, Feed]:
    feed = Feed()
    conn = Connection(
        fake.ws_url, subs, feed.handle, publish=feed.publish, backoff=Backoff(0.05, 0.4), rate=50
    )
    conn.start()
    wait_for(lambda: feed.subscribed() == len(subs), WAIT)
    return conn, feed


def rest(fake: FakeKraken, job: Job) -> list[RunRecord]:
    """What a REST job stores: its records, from the runner over the fake's HTTP API."""
    out: list[RunRecord] = []
    api = collector.API()
    api.uri = fake.url
    with api:
        Runner(api, out.append).run(job)
    assert out and out[-1].status == "ok", [(r.status, r.error) for r in out]
    return out


def open_store(url: str) -> Store:
    store = Store.from_url(url, datasets=DEFAULT)
    store.upgrade()
    return store


def symbols_of(store: Store) -> Symbols:
    query = select(pairs_table.c.pair, pairs_table.c.altname, pairs_table.c.wsname)
    with store.engine.connect() as conn:
        return Symbols(tuple(row) for row in conn.execute(query))


def known_pairs(fake: FakeKraken, store: Store) -> Symbols:
    """The pairs table filled by a REST AssetPairs run, as the service's own job fills it."""
    store.write(rest(fake, Job("pairs", "AssetPairs", every=timedelta(days=1))))
    return symbols_of(store)


COLUMNS = ("pair", "trade_id", "time", "price", "volume", "side", "order_type", "misc")


def test_feed_trades_are_rest_trades_one_row_per_id(database_url: str) -> None:
    store = open_store(database_url)
    try:
        with FakeKraken(tier=None, ws=True) as fake:
            symbols = known_pairs(fake, store)
            assert symbols.pair("BTC/USD") == "XXBTZUSD" and symbols.symbol("XXBTZUSD") == "BTC/USD"
            opened = datetime.now(UTC)
            conn, feed = open_feed(fake, Subscription("trade", ("BTC/USD",)))
            try:
                new_ids = fake.grow("public_trades", 5, pair="XBTUSD")
                wait_for(lambda: len(feed.of("trade")) >= 2, WAIT)
            finally:
                assert conn.stop()
            read = [trade_rows(data, symbols) for _, data, _ in feed.of("trade")]
            assert all(r.refused == [] for r in read)
            streamed = [row for r in read for row in r.rows]
            ids = [row["trade_id"] for row in streamed]
            assert len(ids) == 55 and ids[-5:] == new_ids  # the snapshot's 50, then the new 5
            # A REST Trades job over the same trades: from a second before the first one streamed.
            since = (streamed[0]["time"] - timedelta(seconds=1)).timestamp()
            records = rest(fake, Job("t", "Trades", {"pair": "XBTUSD"}, since=since))
        # REST's rows are its stored text (Prepared, in COLUMNS' order), as the stream's become.
        assert all(r.rows["trades"].columns == COLUMNS == TRADE_COLUMNS for r in records)
        by_rest = {row[1]: row for r in records for row in r.rows["trades"]}
        assert set(ids) <= set(by_rest)
        for row in streamed:  # every column REST stores, to the microsecond and the digit
            assert stored_trade(row) == by_rest[row["trade_id"]]

        # The feed's batch first (with its connection's row), then the REST job's runs.
        uid = "c0ffee" * 5 + "00"
        link = connection_row(uid, "tape", "trade", fake.ws_url, opened, messages=len(read))
        run = batch(
            "tape",
            "trade",
            uid,
            {"trades": streamed, "stream_connections": [link]},
            started_at=opened,
            finished_at=datetime.now(UTC),
            messages=len(read),
        )
        (run_id,) = store.write([run])
        store.write(records)
        store.write([run])  # a spool replay of the batch: nothing twice
        with store.engine.connect() as db:
            stored = db.execute(select(trades_table)).mappings().all()
            per_id = [r["trade_id"] for r in stored]
            assert len(per_id) == len(set(per_id)) == len(by_rest)
            mine = {r["trade_id"]: r for r in stored if r["trade_id"] in set(ids)}
            assert {r["run_id"] for r in mine.values()} == {run_id}
            for row in streamed:
                assert {c: mine[row["trade_id"]][c] for c in COLUMNS} == {
                    c: row[c] for c in COLUMNS
                }
            # Each stored row traces to its connection: run → params.connection → the row.
            (params, job, pages, new_rows) = db.execute(
                select(runs.c.params, runs.c.job, runs.c.pages, runs.c.new_rows).where(
                    runs.c.id == run_id
                )
            ).one()
            assert (job, pages, new_rows) == ("stream:tape", len(read), 55 + 1)
            params = params if isinstance(params, dict) else json.loads(params)
            (connection,) = db.execute(
                select(connections_table).where(connections_table.c.uid == params["connection"])
            ).mappings()
            assert (connection["stream"], connection["channel"], connection["messages"]) == (
                "tape",
                "trade",
                len(read),
            )
            assert connection["opened_at"] == opened and connection["closed_at"] is None
        # The connection closes: its row says when and why, whatever batch says it last.
        closed = datetime.now(UTC)
        link = connection_row(
            uid,
            "tape",
            "trade",
            fake.ws_url,
            opened,
            messages=99,
            closed_at=closed,
            reason="collector stopping",
        )
        store.write(
            [
                batch(
                    "tape",
                    "trade",
                    uid,
                    {"stream_connections": [link]},
                    started_at=closed,
                    finished_at=closed,
                    messages=0,
                )
            ]
        )
        with store.engine.connect() as db:
            (row,) = db.execute(select(connections_table)).mappings()
            assert (row["closed_at"], row["reason"], row["messages"]) == (
                closed,
                "collector stopping",
                99,
            )
            assert row["run_id"] == run_id  # the batch that first stored it
    finally:
        store.dispose()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_ticker_and_ohlc_rows_are_rest_s(database_url: str) -> None:
    clock = Clock(1_790_000_000 + 20.5)  # 20 s into a minute candle; the market holds still
    store = open_store(database_url)
    try:
        with FakeKraken(tier=None, ws=True, now=clock) as fake:
            symbols = known_pairs(fake, store)
            conn, feed = open_feed(
                fake,
                Subscription("ticker", ("ETH/USD",)),
                Subscription("ohlc", ("BTC/USD",), {"interval": 1}),
            )
            try:
                ticker_rest = rest(fake, Job("q", "Ticker", {"pair": "ETHUSD"}))[-1].rows["ticker"]
                ohlc_rest = rest(fake, Job("c", "OHLC", {"pair": "XBTUSD", "interval": 1}))
                # The minute closes: the next candle's first message closes the one held.
                clock.t += 60
                wait_for(lambda: len(feed.of("ohlc")) >= 2, WAIT)
            finally:
                assert conn.stop()
        (_, data, received_at) = feed.of("ticker")[0]  # before the clock moved
        read = ticker_rows(data, symbols, received_at)
        assert read.refused == []
        (row,) = read.rows
        (want,) = ticker_rest
        assert row.keys() == want.keys()
        # The same market at the same moment: every value REST stores, but the trade count
        # (v2 sends none: 0, as REST stores for an answer without one) and the time taken.
        same = set(row) - {"taken_at", "trades_24h"}
        assert {c: row[c] for c in same} == {c: want[c] for c in same}
        assert row["pair"] == "XETHZUSD" and row["trades_24h"] == 0
        assert row["taken_at"] == received_at  # the fake's ticker has no timestamp of its own

        candles = Candles()
        (_, first, _), (_, second, _) = feed.of("ohlc")[:2]
        held = candles.update(ohlc_rows(first, symbols).rows)
        (open_rest,) = [r for r in ohlc_rest[-1].rows["ohlc"] if not r["final"]]
        assert held == [open_rest] and held[0]["pair"] == "XXBTZUSD"  # REST's open candle, exactly
        assert candles.closed(held[0]["time"] + timedelta(seconds=59)) == []
        nxt = ohlc_rows(second, symbols).rows
        out = candles.update(nxt)
        assert [(r["time"], r["final"]) for r in out] == [
            (held[0]["time"], True),
            (held[0]["time"] + timedelta(minutes=1), False),
        ]
        assert {**out[0], "final": False} == held[0]  # its values are the last the feed sent
        end = out[1]["time"] + timedelta(minutes=1)
        assert [r["final"] for r in candles.closed(end)] == [True] and candles.open == {}

        # Stored in a batch: the ticker row under the batch's run, the candles by REST's key.
        now = datetime.now(UTC)
        store.write(
            [
                batch(
                    "quotes",
                    "ticker",
                    "a" * 32,
                    {"ticker": read.rows, "ohlc": out},
                    started_at=now,
                    finished_at=now,
                    messages=3,
                )
            ]
        )
        with store.engine.connect() as db:
            stored = db.execute(select(ohlc_table.c.time, ohlc_table.c.final)).all()
            assert sorted((t, bool(f)) for t, f in stored) == [(r["time"], r["final"]) for r in out]
            (taken,) = db.execute(text("SELECT pair FROM ticker")).all()
            assert taken == ("XETHZUSD",)
    finally:
        store.dispose()


def _capture() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    capture = json.loads(CAPTURE.read_text(), parse_float=Decimal)
    return capture["init"], capture["updates"]


def test_book_rows_from_kraken_s_capture_are_exact(database_url: str) -> None:
    init, updates = _capture()
    book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)
    book.snapshot(init["data"][0])
    first = book_rows(book, "XXBTZUSD", datetime(2023, 7, 30, tzinfo=UTC))
    # The snapshot's own levels, digit for digit (4.0 stays 4.0, 0.00011621 its eight places).
    snap = init["data"][0]
    assert [(r["side"], r["level"], r["price"], r["qty"]) for r in first] == [
        ("bid", i, level["price"], level["qty"]) for i, level in enumerate(snap["bids"])
    ] + [("ask", i, level["price"], level["qty"]) for i, level in enumerate(snap["asks"])]
    assert str(first[3]["qty"]) == "4.0" and str(first[1]["qty"]) == "0.00011621"

    for message in updates:
        book.update(message["data"][0])
    rows = book_rows(book, "XXBTZUSD")
    assert len(rows) == 20
    assert rows[0]["taken_at"] == moment(updates[-1]["data"][0]["timestamp"], "timestamp")
    bids = [r["price"] for r in rows if r["side"] == "bid"]
    asks = [r["price"] for r in rows if r["side"] == "ask"]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert [r["level"] for r in rows] == list(range(10)) * 2
    assert [(r["price"], r["qty"]) for r in rows] == [(lv.price, lv.qty) for lv in book.levels()]

    store = open_store(database_url)
    try:
        now = datetime.now(UTC)
        run = batch(
            "books",
            "book",
            "b" * 32,
            {"book": first + rows},
            started_at=now,
            finished_at=now,
            messages=len(updates) + 1,
        )
        store.write([run])
        store.write([run])
        with store.engine.connect() as db:
            stored = db.execute(
                select(book_table).order_by(
                    book_table.c.taken_at, book_table.c.side.desc(), book_table.c.level
                )
            ).mappings()
            got = [(r["taken_at"], r["side"], r["level"], r["price"], r["qty"]) for r in stored]
        want = [(r["taken_at"], r["side"], r["level"], r["price"], r["qty"]) for r in first + rows]
        assert got == want and len(got) == 40
        assert [str(q) for *_, q in got[:4]] == [str(r["qty"]) for r in first[:4]]
    finally:
        store.dispose()


def test_a_book_that_lost_its_checksum_has_no_rows() -> None:
    init, updates = _capture()
    book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)
    book.snapshot(init["data"][0])
    wrong = {**updates[0]["data"][0], "checksum": (updates[0]["data"][0]["checksum"] + 1) % 2**32}
    with pytest.raises(Exception, match="does not match"):
        book.update(wrong)
    assert book_rows(book, "XXBTZUSD") == []


def test_an_entry_that_cannot_be_read_is_refused_alone() -> None:
    symbols = Symbols([("XXBTZUSD", "XBTUSD", "XBT/USD"), ("XDGUSD", "XDGUSD", "XDG/USD")])
    assert symbols.pair("DOGE/USD") == "XDGUSD" and symbols.pair("XBT/USD") == "XXBTZUSD"
    good = {
        "symbol": "BTC/USD",
        "side": "buy",
        "price": Decimal("29430.2"),
        "qty": Decimal("0.001"),
        "ord_type": "limit",
        "trade_id": 7,
        "timestamp": "2023-07-30T08:00:00.1234567Z",
    }
    data = [
        good,
        {**good, "trade_id": 8, "price": 29430.2},  # a float: its digits are not Kraken's
        {**good, "trade_id": 9, "timestamp": "2023-07-30 08:00:00"},
        {**good, "trade_id": 10, "symbol": "BTC/XYZ"},
        {**good, "trade_id": 11, "qty": Decimal("1E+999")},
        {**good, "trade_id": 12, "side": "b"},
        "not an object",
    ]
    read = trade_rows(data, symbols)
    assert [r["trade_id"] for r in read.rows] == [7]
    # Beyond the microsecond: cut, as REST's times are.
    assert read.rows[0]["time"] == datetime(2023, 7, 30, 8, 0, 0, 123456, tzinfo=UTC)
    assert read.refused == [
        "trade BTC/USD: price is not a decimal string",
        "trade BTC/USD: timestamp is not an RFC 3339 time: '2023-07-30 08:00:00'",
        "trade BTC/XYZ: symbol 'BTC/XYZ' is no known pair's",
        "trade BTC/USD: qty is out of range (at most 40 digits, within 1E-40 to 1E+40): '1E+999'",
        "trade BTC/USD: side is 'b', not one of buy, sell",
        "trade: an entry is a str, not an object",
    ]
    assert trade_rows({"not": "a list"}, symbols).refused == ["trade: data is a dict, not a list"]
    assert moment("2023-07-30T10:00:00+02:00", "t") == datetime(2023, 7, 30, 8, tzinfo=UTC)


def test_every_takes_one_snapshot_a_slot() -> None:
    every = Every(60)
    t = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    seen = [every.due("XXBTZUSD", t + timedelta(seconds=s)) for s in (0, 1, 59.9, 60, 61, 200)]
    assert seen == [True, False, False, True, False, True]
    assert every.due("XETHZUSD", t + timedelta(seconds=1))  # each pair its own
    with pytest.raises(ValueError):
        Every(0)


def test_a_ticker_s_open_is_exact_and_a_bad_entry_is_refused_alone() -> None:
    symbols = Symbols([("XXBTZUSD", "XBTUSD", "XBT/USD"), ("XETHZUSD", "ETHUSD", "ETH/USD")])
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    one = {
        k: Decimal(v)
        for k, v in dict(bid="1", ask="2", volume="3", vwap="4", low="5", high="6").items()
    }
    data = [
        # 32 digits: Python's default 28-digit context would round the difference.
        {
            **one,
            "symbol": "BTC/USD",
            "last": Decimal("12345678901234567890.123456789012"),
            "change": Decimal("0.000000000001"),
        },
        {
            **one,
            "symbol": "ETH/USD",
            "last": Decimal("3100.5"),
            "change": Decimal("-0.5"),
            "timestamp": "2026-12-07T11:59:59.5Z",
        },
        {**one, "symbol": "ETH/USD", "last": "NaN", "change": Decimal("1")},
    ]
    read = ticker_rows(data, symbols, at)
    assert [(r["pair"], r["open"], r["taken_at"]) for r in read.rows] == [
        ("XXBTZUSD", Decimal("12345678901234567890.123456789011"), at),
        ("XETHZUSD", Decimal("3101.0"), datetime(2026, 12, 7, 11, 59, 59, 500000, tzinfo=UTC)),
    ]
    assert read.refused == ["ticker ETH/USD: last is not a finite number"]


def test_the_typed_way_stores_what_the_general_way_stores() -> None:
    """A ``trade`` message typed in C (``trade_decoder``, ``trade_values``) gives the very
    tuples, times and refusals the general reader gives (``decoder``, ``trade_rows``), entry by
    entry: the usual shapes read there, every other one handed to the general checks."""
    symbols = Symbols([("XXBTZUSD", "XBTUSD", "XBT/USD"), ("XDGUSD", "XDGUSD", "XDG/USD")])
    received = datetime(2023, 7, 30, 8, 0, 1, tzinfo=UTC)
    good = (
        '"symbol":"BTC/USD","side":"buy","price":29430.2,"qty":0.00100000,'
        '"ord_type":"limit","trade_id":7,"timestamp":"2023-07-30T08:00:00.123456Z"'
    )
    odd = [
        "",  # as Kraken sends it
        '"qty":0.00000001',  # str() says 1E-8: stored 0.00000001
        '"qty":1e5',  # an exponent: 100000
        '"price":"29430.2"',  # text: a number still
        '"price":"NaN"',
        '"price":-1.5',
        f'"price":{"9" * 41}.5',  # past 40 digits
        '"symbol":"XBT/USD"',  # the wsname's spelling
        '"symbol":"DOGE/USD"',
        '"symbol":"BTC/XYZ"',
        '"side":"short"',
        '"ord_type":"iceberg"',
        '"trade_id":-3',
        '"timestamp":"2023-07-30T08:00:00.123456789Z"',  # nanoseconds: cut
        '"timestamp":"2023-07-30T10:00:00.123456+02:00"',
        '"timestamp":"2023-13-30T08:00:00.123456Z"',  # month 13, Kraken's shape
        '"timestamp":"2023-W31-1T08:00:00.000000Z"',  # an ISO week date: not RFC 3339
        '"timestamp":"2023-07-30T10:00:00.123456Z"',  # two hours past its receipt
    ]
    entries = [f"{{{good}{',' + o if o else ''}}}" for o in odd]
    messages = [f'{{"channel":"trade","type":"update","data":[{e}]}}' for e in entries]
    messages.append('{"channel":"trade","type":"update","data":[' + ",".join(entries) + "]}")
    typed, general = trade_decoder(), decoder()
    for message in messages:
        read = trade_rows(general(message)["data"], symbols, received)
        want = [(stored_trade(r), r["time"]) for r in read.rows]
        got, refused = trade_values(typed(message).data, symbols, received)
        assert (got, refused) == (want, read.refused), message
    every = trade_values(typed(messages[-1]).data, symbols, received)
    assert [values[3:5] for values, _ in every[0]] == [
        ("29430.2", "0.00100000"),
        ("29430.2", "0.00000001"),
        ("29430.2", "100000"),
        ("29430.2", "0.00100000"),
        ("-1.5", "0.00100000"),
        ("29430.2", "0.00100000"),
        ("29430.2", "0.00100000"),
        ("29430.2", "0.00100000"),
        ("29430.2", "0.00100000"),
    ]
    assert [values[2] for values, _ in every[0]][-2:] == [
        "2023-07-30 08:00:00.123456+00:00",
        "2023-07-30 08:00:00.123456+00:00",
    ]
    assert len(every[1]) == 9  # NaN, 41 digits, BTC/XYZ, side, ord_type, -3, month 13, week, ahead
