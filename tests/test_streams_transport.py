"""The WebSocket v2 transport (collector/streams/connection.py) against the fake's endpoint, over
real sockets: subscriptions and their answers, books proven by their checksums, reconnects,
stalls, Kraken's message rate, a clean stop."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from collector.backoff import Backoff
from collector.streams.book import Book, BookMismatch
from collector.streams.connection import (
    Connection,
    Reconnecting,
    StreamClosed,
    StreamFailed,
    StreamOpened,
    Subscribed,
    Subscription,
    check_url,
)
from collector.testing.fake_exchange import FakeKraken
from collector.testing.ws import dumps

from .helpers import wait_for

WAIT = 20.0
FAST = Backoff(first=0.05, cap=0.4)  # no jitter: the delays are the test's to check


class Recorder:
    """The handler and the event subscriber of one connection: everything it was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[object] = []
        self.messages: list[tuple[str, str, Any, datetime]] = []

    def publish(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def handle(self, channel: str, kind: str, data: Any, received_at: datetime) -> None:
        with self.lock:
            self.messages.append((channel, kind, data, received_at))

    def of(self, cls: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, cls)]

    def failures(self, kind: str) -> list[StreamFailed]:
        return [e for e in self.of(StreamFailed) if e.kind == kind]

    def channel(self, channel: str, kind: str | None = None) -> list[Any]:
        with self.lock:
            return [
                data
                for c, k, data, _ in self.messages
                if c == channel and (kind is None or k == kind)
            ]

    def subscribed(self, channel: str) -> set[str | None]:
        return {e.symbol for e in self.of(Subscribed) if e.channel == channel}


class Books(Recorder):
    """A handler keeping each book and proving it, as the stream will: a mismatch resubscribes."""

    def __init__(self) -> None:
        super().__init__()
        self.books: dict[str, Book] = {}
        self.verified = 0
        self.mismatches: list[BookMismatch] = []
        self.connection: Connection | None = None

    def handle(self, channel: str, kind: str, data: Any, received_at: datetime) -> None:
        super().handle(channel, kind, data, received_at)
        if channel != "book":
            return
        for entry in data:
            symbol = entry["symbol"]
            if kind == "snapshot":
                self.books[symbol] = Book(symbol, depth=10, price_precision=1, qty_precision=8)
                self.books[symbol].snapshot(entry)
            elif self.books[symbol].synced:
                try:
                    self.books[symbol].update(entry)
                except BookMismatch as e:
                    self.mismatches.append(e)
                    assert self.connection is not None
                    self.connection.resubscribe("book", symbol)
                    continue
            else:
                continue  # waiting for the fresh snapshot
            self.verified += 1


@pytest.fixture
def fake() -> Iterator[FakeKraken]:
    with FakeKraken(tier=None, ws=True) as fake:
        yield fake


def connect(
    fake: FakeKraken, recorder: Recorder, *subs: Subscription, **options: Any
) -> Connection:
    options.setdefault("backoff", FAST)
    options.setdefault("rate", 50.0)
    conn = Connection(fake.ws_url, subs, recorder.handle, publish=recorder.publish, **options)
    if isinstance(recorder, Books):
        recorder.connection = conn
    return conn.start()


BOOK = Subscription("book", ("BTC/USD",), {"depth": 10})


def test_each_channel_is_subscribed_and_received_with_exact_numbers(fake: FakeKraken) -> None:
    rec = Books()
    conn = connect(
        fake,
        rec,
        Subscription("instrument"),
        BOOK,
        Subscription("trade", ("BTC/USD",)),
        Subscription("ticker", ("ETH/USD",)),
        Subscription("ohlc", ("BTC/USD",), {"interval": 1}),
    )
    try:
        wait_for(lambda: len(rec.of(Subscribed)) == 5, WAIT)
        assert conn.acknowledged() == {
            ("instrument", None),
            ("book", "BTC/USD"),
            ("trade", "BTC/USD"),
            ("ticker", "ETH/USD"),
            ("ohlc", "BTC/USD"),
        }
        (instrument,) = rec.channel("instrument", "snapshot")
        pairs = {p["symbol"]: p for p in instrument["pairs"]}
        # v2's own symbols: BTC where AssetPairs' wsname says XBT.
        assert "BTC/USD" in pairs and "XBT/USD" not in pairs
        assert (pairs["BTC/USD"]["price_precision"], pairs["BTC/USD"]["qty_precision"]) == (1, 8)

        # Trades: the snapshot's ids are REST Trades' ids, and new trades come as updates.
        (snapshot,) = rec.channel("trade", "snapshot")
        rest = fake.result("Trades", {"pair": "XBTUSD"})["XXBTZUSD"]
        assert [t["trade_id"] for t in snapshot] == [row[6] for row in rest[-50:]]
        assert all(
            isinstance(t["price"], Decimal) and isinstance(t["qty"], Decimal) for t in snapshot
        )
        assert snapshot[-1]["timestamp"].endswith("Z")
        new_ids = fake.grow("public_trades", 3, pair="XBTUSD")
        wait_for(lambda: len(rec.channel("trade", "update")) >= 1, WAIT)
        updates = [t for batch in rec.channel("trade", "update") for t in batch]
        assert [t["trade_id"] for t in updates] == new_ids

        (ticker,) = rec.channel("ticker", "snapshot")[0]
        assert ticker["symbol"] == "ETH/USD" and ticker["bid"] < ticker["ask"]
        (candle,) = rec.channel("ohlc", "snapshot")[0]
        assert candle["interval"] == 1 and candle["low"] <= candle["close"] <= candle["high"]

        # Books: every update the fake sends verifies with Kraken's checksum rule.
        wait_for(lambda: rec.verified >= 20, WAIT)
        assert rec.mismatches == []
        book = rec.books["BTC/USD"]
        assert len(book.levels()) == 20 and book.best_bid() < book.best_ask()  # type: ignore[operator]
    finally:
        assert conn.stop()


@pytest.mark.parametrize("fault", ["drop", "checksum"])
def test_a_lost_book_message_resubscribes_for_a_fresh_snapshot(
    fake: FakeKraken, fault: str
) -> None:
    rec = Books()
    conn = connect(fake, rec, BOOK)
    try:
        wait_for(lambda: rec.verified >= 3, WAIT)
        fake.ws.inject(fault, channel="book")  # type: ignore[union-attr]
        wait_for(lambda: len(rec.mismatches) == 1, WAIT)
        # Unsubscribe, then subscribe: a fresh snapshot, and updates that verify after it.
        wait_for(lambda: len(rec.channel("book", "snapshot")) == 2, WAIT)
        verified = rec.verified
        wait_for(lambda: rec.verified >= verified + 5, WAIT)
        assert len(rec.mismatches) == 1 and rec.books["BTC/USD"].synced
        methods = [r["method"] for r in fake.ws.requests if r.get("method") != "ping"]  # type: ignore[union-attr]
        assert methods == ["subscribe", "unsubscribe", "subscribe"]
        assert len(rec.of(StreamOpened)) == 1  # the same connection throughout
    finally:
        assert conn.stop()


def test_already_subscribed_unsubscribes_then_subscribes(fake: FakeKraken) -> None:
    rec = Books()
    assert fake.ws is not None
    fake.ws.inject("drop", channel="subscribe")  # the ack is lost; the subscription stands
    conn = connect(fake, rec, BOOK)
    try:
        wait_for(lambda: len(rec.channel("book", "snapshot")) == 1, WAIT)
        assert rec.of(Subscribed) == []
        conn.subscribe(BOOK)  # asked again: Kraken says "Already subscribed", and no snapshot
        wait_for(lambda: rec.of(Subscribed) == [Subscribed("book", "BTC/USD")], WAIT)
        assert [r["method"] for r in fake.ws.requests] == [
            "subscribe",
            "subscribe",
            "unsubscribe",
            "subscribe",
        ]
        wait_for(lambda: len(rec.channel("book", "snapshot")) == 2, WAIT)
        assert rec.failures("refused") == []
    finally:
        assert conn.stop()


def test_a_disconnect_reconnects_resubscribes_and_the_trade_ids_bound_the_gap(
    fake: FakeKraken,
) -> None:
    assert fake.ws is not None
    rec = Recorder()
    conn = connect(fake, rec, Subscription("trade", ("BTC/USD",)), BOOK)
    try:
        wait_for(lambda: len(rec.of(Subscribed)) == 2, WAIT)
        before = max(t["trade_id"] for t in rec.channel("trade", "snapshot")[0])
        # Trades happen while the connection is cut (more than the 50 a snapshot brings back).
        fake.ws.inject("stall")
        fake.grow("public_trades", 60, pair="XBTUSD")
        fake.ws.inject("disconnect")
        wait_for(lambda: len(rec.of(Subscribed)) == 4, WAIT)
        assert [e.connection for e in rec.of(StreamOpened)] == [1, 2]
        (closed,) = rec.of(StreamClosed)
        assert "1006" in closed.reason and closed.messages > 0
        assert [f.kind for f in rec.failures("disconnect")] == ["disconnect"]
        assert rec.of(Reconnecting) == [Reconnecting(1, 0.05)]
        after = min(t["trade_id"] for t in rec.channel("trade", "snapshot")[1])
        assert after == before + 11  # the first 10 of the 60 never reached the feed
        # Both sides of the gap are known, so REST Trades can fill it: since the last trade seen.
        last_seen = next(t for t in rec.channel("trade", "snapshot")[0] if t["trade_id"] == before)
        rows = fake.result("Trades", {"pair": "XBTUSD", "since": _ns(last_seen["timestamp"])})
        filled = [row[6] for row in rows["XXBTZUSD"]]
        # From just before the last trade seen (the feed's times are microseconds; Kraken's
        # nanoseconds): the boundary again, then exactly the ten the feed never sent.
        assert filled[:11] == list(range(before, after))
    finally:
        assert conn.stop()


def _ns(stamp: str) -> int:
    """An RFC 3339 time in nanoseconds, exactly (microseconds are all the feed gives)."""
    t = datetime.fromisoformat(stamp)
    return int(Decimal(int(t.timestamp())) * 10**9) + t.microsecond * 1000 - 1000


def test_a_stall_is_stale_after_stale_after_and_replaced(fake: FakeKraken) -> None:
    assert fake.ws is not None
    fake.ws.heartbeat = 0.1
    rec = Recorder()
    conn = connect(fake, rec, Subscription("trade", ("BTC/USD",)), stale_after=0.8)
    try:
        wait_for(lambda: len(rec.of(Subscribed)) == 1, WAIT)
        wait_for(lambda: rec.of(StreamClosed) == [] and conn.messages >= 5, WAIT)  # heartbeats
        assert rec.failures("stale") == []
        fake.ws.inject("stall")
        wait_for(lambda: len(rec.of(Subscribed)) == 2, WAIT)
        (stale,) = rec.failures("stale")
        assert stale.message.startswith("stale: no message for")
        assert rec.of(StreamClosed)[0].reason == stale.message
        assert [e.connection for e in rec.of(StreamOpened)] == [1, 2]
    finally:
        assert conn.stop()


def test_exceeded_msg_rate_backs_off_until_every_symbol_is_acknowledged(fake: FakeKraken) -> None:
    assert fake.ws is not None
    fake.ws.msg_rate = (2, 0.5)  # more than 2 requests in half a second: refused
    symbols = ("BTC/USD", "ETH/USD", "SOL/USD", "USDT/USD", "EUR/USD", "BTC/EUR")
    rec = Recorder()
    conn = connect(
        fake,
        rec,
        Subscription("trade", symbols),
        rate=100.0,
        batch=1,
        backoff=Backoff(first=0.3, cap=1.0),
    )
    try:
        wait_for(lambda: rec.subscribed("trade") == set(symbols), WAIT)
        rated = rec.failures("rate")
        assert rated and {f.symbol for f in rated} <= set(symbols)
        assert "Exceeded msg rate" in rated[0].message
        assert rec.failures("refused") == [] and len(rec.of(StreamOpened)) == 1
    finally:
        assert conn.stop()


def test_a_refused_symbol_is_a_failure_naming_it(fake: FakeKraken) -> None:
    rec = Recorder()
    conn = connect(fake, rec, Subscription("trade", ("BTC/USD", "BTC/XYZ")))
    try:
        wait_for(lambda: rec.subscribed("trade") == {"BTC/USD"} and rec.failures("refused"), WAIT)
        (refused,) = rec.failures("refused")
        assert refused.symbol == "BTC/XYZ"
        assert refused.message == "subscribe trade BTC/XYZ: Currency pair not supported BTC/XYZ"
        assert conn.refused == {("trade", "BTC/XYZ"): "Currency pair not supported BTC/XYZ"}
    finally:
        assert conn.stop()


def test_a_pair_listed_while_running_is_an_instrument_update(fake: FakeKraken) -> None:
    assert fake.ws is not None
    fake.delist("SOLUSD")
    rec = Recorder()
    conn = connect(fake, rec, Subscription("instrument"))
    try:
        wait_for(lambda: len(rec.channel("instrument", "snapshot")) == 1, WAIT)
        (snapshot,) = rec.channel("instrument", "snapshot")
        assert "SOL/USD" not in {p["symbol"] for p in snapshot["pairs"]}
        fake.ws.list_pair("SOLUSD")
        wait_for(lambda: len(rec.channel("instrument", "update")) == 1, WAIT)
        (update,) = rec.channel("instrument", "update")
        assert [p["symbol"] for p in update["pairs"]] == ["SOL/USD"]
        conn.subscribe(Subscription("trade", ("SOL/USD",)))
        wait_for(lambda: rec.subscribed("trade") == {"SOL/USD"}, WAIT)
    finally:
        assert conn.stop()


def test_stop_sends_a_close_frame(fake: FakeKraken) -> None:
    assert fake.ws is not None
    rec = Recorder()
    conn = connect(fake, rec, BOOK)
    wait_for(lambda: len(rec.of(Subscribed)) == 1, WAIT)
    assert conn.stop(timeout=5)
    wait_for(lambda: fake.ws.closes == [(1000, "collector stopping")], WAIT)  # type: ignore[union-attr]
    (closed,) = rec.of(StreamClosed)
    assert closed.reason == "stopped" and closed.messages > 0
    assert rec.failures("disconnect") == []


def test_only_wss_or_this_machine() -> None:
    assert check_url("wss://ws.kraken.com/v2") == "wss://ws.kraken.com/v2"
    assert check_url("ws://127.0.0.1:8080/v2") and check_url("ws://localhost/v2")
    for url in ("ws://ws.kraken.com/v2", "https://ws.kraken.com/v2", "ws://10.0.0.1/v2", "wss://"):
        with pytest.raises(ValueError, match="use wss://"):
            check_url(url)


def test_a_redirect_is_not_followed(fake: FakeKraken) -> None:
    assert fake.ws is not None
    target = fake.ws_url

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # websockets reads only HTTP/1.1 answers

        def do_GET(self) -> None:
            self.send_response(301)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec = Recorder()
    url = f"ws://127.0.0.1:{server.server_address[1]}/v2"
    conn = Connection(url, [BOOK], rec.handle, publish=rec.publish, backoff=Backoff(5.0, 5.0))
    try:
        conn.start()
        wait_for(lambda: rec.failures("connect") != [], WAIT)
        assert "301" in rec.failures("connect")[0].message
        assert fake.ws.connections == 0 and rec.of(StreamOpened) == []
    finally:
        assert conn.stop()
        server.shutdown()
        server.server_close()


def test_a_quiet_connection_is_pinged_not_replaced(fake: FakeKraken) -> None:
    # Kraken sends heartbeats only to a connection with a subscription: with its one symbol
    # refused, the connection asks for a pong before stale_after instead of going stale.
    assert fake.ws is not None
    rec = Recorder()
    conn = connect(fake, rec, Subscription("trade", ("BTC/XYZ",)), stale_after=0.8)
    try:
        wait_for(lambda: rec.failures("refused") != [], WAIT)
        pings = lambda: [r for r in fake.ws.requests if r.get("method") == "ping"]  # type: ignore[union-attr]  # noqa: E731
        wait_for(lambda: len(pings()) >= 3, WAIT)
        assert rec.failures("stale") == [] and len(rec.of(StreamOpened)) == 1
    finally:
        assert conn.stop()


def test_rest_depth_answers_the_book_the_feed_serves() -> None:
    fake = FakeKraken(tier=None, ws=True)
    assert fake.ws is not None
    fake.ws.tick = 3600.0  # the book holds still: the two answers are compared at one moment
    with fake:
        rec = Books()
        conn = connect(fake, rec, BOOK)
        try:
            wait_for(lambda: "BTC/USD" in rec.books, WAIT)
        finally:
            assert conn.stop()
        book = rec.books["BTC/USD"]
        depth = fake.result("Depth", {"pair": "XBTUSD", "count": 10})["XXBTZUSD"]
        rest = [("bid", Decimal(p), Decimal(q)) for p, q, _ in depth["bids"]]
        rest += [("ask", Decimal(p), Decimal(q)) for p, q, _ in depth["asks"]]
        assert rest == [(level.side, level.price, level.qty) for level in book.levels()]


CAPTURE = Path(__file__).parent / "data" / "book-v2-btcusd-depth10.json"


def test_kraken_s_own_book_session_verifies_through_the_transport() -> None:
    # The real capture, sent with its own digits (4.0, 0.001, 0.00011621): the transport parses
    # them as exact decimals and all 510 messages verify.
    capture = json.loads(CAPTURE.read_text(), parse_float=Decimal)
    messages = [capture["init"], *capture["updates"]]

    def replay(ws: ServerConnection) -> None:
        request = json.loads(ws.recv())
        result = {"channel": "book", "symbol": "BTC/USD", "depth": 10, "snapshot": True}
        ws.send(
            json.dumps(
                {
                    "method": "subscribe",
                    "req_id": request["req_id"],
                    "success": True,
                    "result": result,
                }
            )
        )
        for message in messages:
            ws.send(dumps(message))
        ws.recv()  # until the client closes

    with serve(replay, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        rec = Books()
        port = server.socket.getsockname()[1]
        conn = Connection(f"ws://127.0.0.1:{port}/v2", [BOOK], rec.handle, publish=rec.publish)
        rec.connection = conn
        try:
            conn.start()
            wait_for(lambda: rec.verified == len(messages), WAIT)
            assert rec.mismatches == [] and conn.messages == len(messages) + 1
        finally:
            assert conn.stop()
            server.shutdown()


def test_a_message_over_the_bound_closes_the_connection(fake: FakeKraken) -> None:
    rec = Recorder()
    # The instrument snapshot is a few kB: over a 1,000-byte bound.
    conn = connect(fake, rec, Subscription("instrument"), max_message=1000)
    try:
        wait_for(lambda: rec.failures("disconnect") != [], WAIT)
        assert "1009" in rec.failures("disconnect")[0].message
        assert rec.channel("instrument") == []
    finally:
        assert conn.stop()


def test_a_handler_that_raises_is_a_failure_and_the_stream_goes_on(fake: FakeKraken) -> None:
    rec = Recorder()
    calls: list[str] = []

    def handler(channel: str, kind: str, data: Any, received_at: datetime) -> None:
        calls.append(kind)
        if len(calls) == 1:
            raise KeyError("bids")
        rec.handle(channel, kind, data, received_at)

    conn = Connection(
        fake.ws_url, [BOOK], handler, publish=rec.publish, backoff=FAST, rate=50.0
    ).start()
    try:
        wait_for(lambda: len(rec.channel("book", "update")) >= 3, WAIT)
        (failure,) = rec.failures("handler")
        assert failure.message == "book: 'bids'"
        assert len(rec.of(StreamOpened)) == 1
    finally:
        assert conn.stop()


def test_messages_keep_krakens_digits_and_bad_ones_are_one_line_each() -> None:
    """The connection's own reading (msgspec, a Decimal from each literal's text): Kraken's
    ``4.00000000`` and ``4.0`` keep their digits; NaN, a cut message, a list, trailing text, an
    integer of 5,000 digits and 100,000 levels of nesting are each one ``protocol`` failure,
    nothing handed on."""
    got: list[tuple[str, str, Any, datetime]] = []
    told: list[object] = []
    conn = Connection(
        "wss://ws.kraken.com/v2",
        [],
        lambda *message: got.append(message),
        publish=told.append,
    )
    conn.receive(
        '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD",'
        '"bids":[{"price":4.0,"qty":4.00000000}],"asks":[],"checksum":3010699830,"x":1E+3}]}'
    )
    ((channel, kind, data, _),) = got
    assert (channel, kind) == ("book", "update")
    level = data[0]["bids"][0]
    assert [str(level["price"]), str(level["qty"]), str(data[0]["x"])] == [
        "4.0",
        "4.00000000",
        "1E+3",
    ]
    assert isinstance(level["qty"], Decimal) and level["qty"] == Decimal("4.00000000")
    assert data[0]["checksum"] == 3010699830 and type(data[0]["checksum"]) is int
    bad = [
        '{"channel":"trade","type":"update","data":[{"price":NaN}]}',
        '{"channel":"trade","type":',
        '[{"channel":"trade"}]',
        '{"channel":"heartbeat"} and more',
        '{"channel":"trade","type":"update","data":[{"trade_id":1' + "0" * 5000 + "}]}",
        '{"channel":"trade","type":"update","data":' + "[" * 100_000,
    ]
    for raw in bad:
        conn.receive(raw)
    assert len(got) == 1 and conn.messages == 1 + len(bad)
    failed = [e for e in told if isinstance(e, StreamFailed)]
    not_json = ("protocol", "not JSON (or nested too deep)")
    assert [(e.kind, e.message.split(":")[0]) for e in failed] == [
        not_json,
        not_json,
        ("protocol", "not a JSON object"),
        not_json,
        not_json,
        not_json,
    ]
    assert all("\n" not in e.message and len(e.message) < 120 for e in failed)
