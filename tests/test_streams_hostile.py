"""An attacker's afternoon against the WebSocket feed (issue 28, the boundaries of issue 25): a
hostile endpoint at ``kraken.ws_url`` (or a MITM on ``ws://`` to this machine), over real sockets.
Each test failed before its fix; docs/threat-model.md's streams section says what each tried."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from websockets.sync.server import ServerConnection, serve

from collector import defaults
from collector.backoff import Backoff
from collector.events import StreamProblem
from collector.jobfile import Stream, load
from collector.service import Service
from collector.streams.book import Book, BookError
from collector.streams.connection import Connection, StreamFailed, StreamOpened, Subscription
from collector.streams.feed import Feed
from collector.streams.gaps import Hole, TradeIds
from collector.streams.recorder import Tuning
from collector.testing.fake_exchange import FakeKraken
from collector.testing.ws import dumps, trade_time

from .helpers import wait_for

WAIT = 20.0
FAST = Backoff(first=0.05, cap=0.2)
TRADE = Subscription("trade", ("BTC/USD",))
TUNING = Tuning(batch_seconds=0.2, pairs_refresh=0.3, backoff=FAST, gap_backoff=FAST, rate=50.0)
BOOK = Subscription("book", ("BTC/USD",), {"depth": 10})


@contextmanager
def hostile(script: Callable[[ServerConnection], None]) -> Iterator[str]:
    """A WebSocket server on this machine running ``script`` on each connection; its ws:// URL."""
    server = serve(script, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v2"
    finally:
        server.shutdown()
        thread.join(10)


class Seen:
    """A connection's handler and event subscriber: what it was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[object] = []
        self.data: list[tuple[str, str, Any]] = []

    def publish(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def handle(self, channel: str, kind: str, data: Any, received_at: datetime) -> None:
        with self.lock:
            self.data.append((channel, kind, data))

    def of(self, cls: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, cls)]

    def failures(self, kind: str) -> list[StreamFailed]:
        return [e for e in self.of(StreamFailed) if e.kind == kind]


def _after_subscribe(poison: str) -> Callable[[ServerConnection], None]:
    """A server that answers the subscription with ``poison``, then sends a trade message."""

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT)
        ws.send(poison)
        ws.send(json.dumps({"channel": "trade", "type": "update", "data": [{"after": 1}]}))
        ws.recv(timeout=WAIT)  # until the client closes

    return script


# -- 1. one message ends the connection's loop for good ----------------------------------------

_ANSWER = {"method": "subscribe", "success": True, "req_id": 1}
POISONS = {
    # json's C decoder raises RecursionError (not ValueError) on deep nesting: 200 kB suffice.
    "nested arrays": "[" * 100_000 + "]" * 100_000,
    "nested objects": '{"a":' * 50_000 + "1" + "}" * 50_000,
    # An answer's symbol that is not text: (channel, symbol) is a dict key, unhashable.
    "an object as the symbol": json.dumps(
        {**_ANSWER, "result": {"channel": "trade", "symbol": {}}}
    ),
    "a list as the symbol": json.dumps(
        {**_ANSWER, "success": False, "error": "x", "result": {"channel": "trade", "symbol": [1]}}
    ),
}


@pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
def test_no_message_ends_the_connection_s_loop(poison: str) -> None:
    # Before: each of these raised out of the message loop; the thread ended ("the stream's loop
    # failed"), no reconnect ever came, and the stream recorded nothing until a restart.
    seen = Seen()
    with hostile(_after_subscribe(POISONS[poison])) as url:
        conn = Connection(url, [TRADE], seen.handle, publish=seen.publish, backoff=FAST)
        conn.start()
        try:
            wait_for(lambda: seen.data != [], WAIT)
            assert seen.data == [("trade", "update", [{"after": 1}])]
            (failure,) = seen.failures("protocol")
            assert "loop failed" not in failure.message
            assert len(failure.message) <= 400 and "\n" not in failure.message
            assert len(seen.of(StreamOpened)) == 1
        finally:
            assert conn.stop()


# -- 2. answers about symbols never asked for ------------------------------------------------


def test_an_answer_about_a_symbol_never_asked_for_is_refused_not_acted_on() -> None:
    # Before: "Already subscribed" about any symbol made the connection remember it (a 10 kB
    # symbol each: 170 MB in 3 s at the rate a server can send them) and send an unsubscribe and
    # a subscribe for it, so the server chose what the collector asked for and kept in memory.
    requests: list[dict[str, Any]] = []

    def script(ws: ServerConnection) -> None:
        requests.append(json.loads(ws.recv(timeout=WAIT)))
        for i in range(200):
            ws.send(
                json.dumps(
                    {
                        "method": "subscribe",
                        "success": False,
                        "error": "Already subscribed",
                        "result": {"channel": "trade", "symbol": f"S{i}/" + "Y" * 10_000},
                    }
                )
            )
        ws.send(json.dumps({"channel": "trade", "type": "update", "data": []}))
        while True:
            requests.append(json.loads(ws.recv(timeout=WAIT)))

    seen = Seen()
    with hostile(script) as url:
        conn = Connection(url, [TRADE], seen.handle, publish=seen.publish, backoff=FAST, rate=50)
        conn.start()
        try:
            wait_for(lambda: seen.data != [], WAIT)
            wait_for(lambda: len(seen.failures("protocol")) == 200, WAIT)
            asked = {s for r in requests for s in r.get("params", {}).get("symbol", [])}
            assert asked == {"BTC/USD"}
            failure = seen.failures("protocol")[0]
            assert "not asked for" in failure.message and len(failure.message) < 200
            assert failure.symbol is None
        finally:
            assert conn.stop()


# -- 3. failures at wire speed: a log line each --------------------------------------------------


def test_failures_at_wire_speed_are_a_log_line_a_second_counted_not_one_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: every message that was not one logged a line (a handler's failure a traceback): a
    # server sending "x" wrote 60,000 lines (5.9 MB) in 3 s, about 170 GB of log a day.
    caplog.set_level(logging.INFO, logger="collector.streams.connection")
    go = threading.Event()

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT)
        for _ in range(5_000):
            ws.send("x" * 1000)
        ws.send(json.dumps({"channel": "trade", "type": "update", "data": []}))
        go.wait(WAIT)  # the test says when the second has passed
        ws.send("y")
        ws.recv(timeout=WAIT)

    seen = Seen()
    moment = [1000.0]  # the connection's monotonic clock, moved by the test
    with hostile(script) as url:
        conn = Connection(
            url, [TRADE], seen.handle, publish=seen.publish, backoff=FAST, clock=lambda: moment[0]
        )
        conn.start()
        try:
            wait_for(lambda: seen.data != [], WAIT)
            assert len(seen.failures("protocol")) == 5_000  # each still an event (the metric)
            moment[0] += defaults.WS_FAILURE_LOG_EVERY
            go.set()
            wait_for(lambda: len(seen.failures("protocol")) == 5_001, WAIT)
        finally:
            assert conn.stop()
    lines = [r.getMessage() for r in caplog.records if "protocol" in r.getMessage()]
    assert len(lines) == 2, lines
    assert all(len(line) < 700 for line in lines)
    assert re.search(r"and \d{4} more like it", lines[-1]), lines[-1]


# -- 4. a book message of 150,000 levels ----------------------------------------------------------


def test_a_book_message_of_more_levels_than_any_depth_is_refused_at_once() -> None:
    # Before: the 140,000 bids of a 4 MB snapshot, best first, were each inserted in order (4.5 s
    # of the connection's thread a message: no heartbeat watched, a stop not answered in its
    # bound), only to be cut to the depth afterwards.
    levels = [{"price": 140_000 - i, "qty": 1} for i in range(140_000)]
    snapshot = {"symbol": "BTC/USD", "bids": levels, "asks": [], "checksum": 0}
    refused: list[str] = []
    book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)

    def handle(channel: str, kind: str, data: Any, received_at: datetime) -> None:
        try:
            book.snapshot(data[0])
        except BookError as e:
            refused.append(str(e))

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT)
        message = json.dumps({"channel": "book", "type": "snapshot", "data": [snapshot]})
        for _ in range(3):
            ws.send(message)
        ws.recv(timeout=WAIT)

    seen = Seen()
    with hostile(script) as url:
        conn = Connection(url, [BOOK], handle, publish=seen.publish, backoff=FAST)
        conn.start()
        try:
            wait_for(lambda: len(refused) >= 1, WAIT)
        finally:
            assert conn.stop(timeout=defaults.WS_CLOSE_TIMEOUT + 1)  # within its bound
    assert refused[0] == (
        f"BTC/USD: 140000 bids in one message, more than the {defaults.WS_BOOK_LEVELS} "
        "of the deepest book"
    )
    assert not book.synced and book.best_bid() is None


# -- 5. a trade_id 10**18 past the last ---------------------------------------------------------


def _server(
    fake: FakeKraken, send: Callable[[ServerConnection, Callable], None], channel: str = "trade"
) -> Callable[[ServerConnection], None]:
    """A feed that answers the subscription to BTC/USD on ``channel``, then runs ``send(ws,
    message)`` where ``message(kind, rows)`` is a v2 message of that channel."""

    def message(kind: str, rows: list[dict[str, Any]]) -> str:
        return dumps({"channel": channel, "type": kind, "data": rows})

    def script(ws: ServerConnection) -> None:
        request = json.loads(ws.recv(timeout=WAIT))
        ws.send(
            json.dumps(
                {
                    "method": "subscribe",
                    "success": True,
                    "req_id": request["req_id"],
                    "result": {"channel": channel, "symbol": "BTC/USD"},
                }
            )
        )
        send(ws, message)
        with contextlib.suppress(Exception):
            while True:
                ws.recv(timeout=1)
                ws.send(json.dumps({"channel": "heartbeat"}))

    return script


def v2_trade(row: list[Any], trade_id: int | None = None) -> dict[str, Any]:
    price, volume, t, side, kind, _, tid = row
    return {
        "symbol": "BTC/USD",
        "side": "buy" if side == "b" else "sell",
        "price": Decimal(price),
        "qty": Decimal(volume),
        "ord_type": "market" if kind == "m" else "limit",
        "trade_id": tid if trade_id is None else trade_id,
        "timestamp": trade_time(t),
    }


@contextmanager
def service(tmp_path: Path, fake: FakeKraken, ws_url: str, streams: str) -> Iterator[Service]:
    (tmp_path / "jobs.yaml").write_text(
        f"database: sqlite:///{tmp_path / 'c.db'}\nkraken:\n  url: {fake.url}\n"
        f"  ws_url: {ws_url}\n  public_rate_limit: {{max: 1000, decay: 1000}}\n"
        f"streams:\n  {streams}\n"
    )
    svc = Service(load(tmp_path / "jobs.yaml", keys=False), stream_tuning=TUNING)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def rows(tmp_path: Path, sql: str) -> list[Any]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def test_a_trade_id_far_past_the_last_is_refused_and_the_tape_goes_on(tmp_path: Path) -> None:
    # Before: one trade 10**18 past the last was a hole of 10**18 trades for REST to fill (Trades
    # asked, then a gaps row claiming them missing), and every later trade of the pair was "seen
    # already": dropped, silently, until a restart.
    with FakeKraken(tier=None) as fake:
        tape = fake.public_trades("XBTUSD")
        poison = tape[-1][6] + 10**18
        later: list[int] = []
        problems: list[StreamProblem] = []
        go = threading.Event()

        def send(ws: ServerConnection, message: Callable) -> None:
            ws.send(message("snapshot", [v2_trade(r) for r in tape[-3:]]))
            ws.send(message("update", [v2_trade(tape[-1], poison)]))
            go.wait(WAIT)  # once the collector has dealt with it
            later.extend(fake.grow("public_trades", 3, pair="XBTUSD"))
            rest = fake.public_trades("XBTUSD")
            ws.send(message("update", [v2_trade(r) for r in rest if r[6] in later]))

        def ids() -> set[int]:
            return {r[0] for r in rows(tmp_path, "SELECT trade_id FROM trades")}

        def messages() -> int:
            sql = "SELECT coalesce(sum(pages), 0) FROM runs WHERE method = 'ws:trade'"
            return int(rows(tmp_path, sql)[0][0])

        def dealt_with() -> bool:
            told = any("trade_id" in p.message for p in problems)
            return messages() >= 2 and (told or rows(tmp_path, "SELECT 1 FROM gaps") != [])

        with (
            hostile(_server(fake, send)) as url,
            service(tmp_path, fake, url, "tape: {channel: trade, pairs: [XBTUSD]}") as svc,
        ):
            svc.events.subscribe(StreamProblem, problems.append)
            wait_for(dealt_with, WAIT)
            go.set()
            wait_for(lambda: messages() >= 3, WAIT)
            assert set(later) <= ids() and poison not in ids()
            assert rows(tmp_path, "SELECT count(*) FROM gaps")[0][0] == 0
            assert fake.calls["Trades"] == 0
            (problem,) = [p for p in problems if "trade_id" in p.message]
            assert problem.message == (
                f"trade_id {poison} of XXBTZUSD is {10**18} past the last ({tape[-1][6]}), more "
                f"than {defaults.WS_TRADE_ID_JUMP}: refused"
            )
        # ...and a failed run of the stream, never only an event (rows and log lines, issue 28).
        failed = rows(tmp_path, "SELECT status, error FROM runs WHERE status <> 'ok'")
        assert failed == [("bad_response", f"entry: {problem.message}")]


def test_a_first_trade_id_far_ahead_does_not_hide_the_sequence_after_it() -> None:
    # The same poison as the first id of a pair: the real ids after it, far behind, start the
    # sequence again instead of being taken as seen already.
    holes: list[Hole] = []
    ids = TradeIds(holes.append)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert ids.seen("XXBTZUSD", 10**18, at)
    assert [ids.seen("XXBTZUSD", i, at) for i in (120, 121, 120, 123)] == [True, True, False, True]
    assert [(h.after, h.before) for h in holes] == [(121, 123)]


# -- 6. an 11-byte checksum ------------------------------------------------------------------------


def test_a_book_checksum_with_a_huge_exponent_is_refused_at_once() -> None:
    # Before: a checksum of 1E+1000000 (11 bytes, a JSON number, so a Decimal) was made an int to
    # compare: a minute holding the GIL (every thread of the service frozen: jobs, writer,
    # /healthz), no stop within its bound; 1E+99999999 far longer.
    refused: list[str] = []
    book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)

    def handle(channel: str, kind: str, data: Any, received_at: datetime) -> None:
        try:
            book.snapshot(data[0])
        except BookError as e:
            refused.append(str(e))

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT)
        level = '{"price": 100.0, "qty": 1.00000000}'
        entry = f'{{"symbol": "BTC/USD", "bids": [{level}], "asks": [], "checksum": 1E+1000000}}'
        ws.send(f'{{"channel": "book", "type": "snapshot", "data": [{entry}]}}')
        ws.recv(timeout=WAIT)

    with hostile(script) as url:
        conn = Connection(url, [BOOK], handle, backoff=FAST)
        began = time.monotonic()
        conn.start()
        try:
            wait_for(lambda: refused != [], WAIT)
            assert time.monotonic() - began < 5.0  # the GIL held: this thread waited too
        finally:
            assert conn.stop(timeout=defaults.WS_CLOSE_TIMEOUT + 1)
    assert refused == ["BTC/USD: a message without a valid checksum"]
    assert not book.synced


# -- 7. a candle from the year 4000 -------------------------------------------------------------


def _candle(begin: datetime, close: str) -> dict[str, Any]:
    return {
        "symbol": "BTC/USD",
        "open": Decimal("100.0"),
        "high": Decimal(close),
        "low": Decimal("100.0"),
        "close": Decimal(close),
        "vwap": Decimal("100.0"),
        "trades": 1,
        "volume": Decimal("1.00000000"),
        "interval_begin": begin.isoformat().replace("+00:00", "Z"),
        "interval": 1,
        "timestamp": begin.isoformat().replace("+00:00", "Z"),
    }


def test_a_message_time_far_ahead_of_its_receipt_is_refused(tmp_path: Path) -> None:
    # Before: one candle of the year 4000 was held as the pair's open one, so every real candle
    # after it was "a late word on an older candle": none was ever made final (until a restart).
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    far = datetime(4000, 1, 1, tzinfo=UTC)
    problems: list[StreamProblem] = []

    def send(ws: ServerConnection, message: Callable) -> None:
        ws.send(message("snapshot", [_candle(far, "999.0")]))
        ws.send(message("update", [_candle(minute, "101.0")]))
        ws.send(message("update", [_candle(minute + timedelta(minutes=1), "102.0")]))

    def final() -> list[Any]:
        return rows(tmp_path, "SELECT time, close FROM ohlc WHERE final")

    with (
        FakeKraken(tier=None) as fake,
        hostile(_server(fake, send, "ohlc")) as url,
        service(
            tmp_path, fake, url, "candles: {channel: ohlc, pairs: [XBTUSD], interval: 1}"
        ) as svc,
    ):
        svc.events.subscribe(StreamProblem, problems.append)
        wait_for(lambda: len(final()) == 2, WAIT)  # the first by the second, both by the clock
        assert sorted(Decimal(str(close)) for _, close in final()) == [Decimal(101), Decimal(102)]
        assert rows(tmp_path, "SELECT count(*) FROM ohlc")[0][0] == 2  # nothing of 4000
        (problem,) = [p for p in problems if "ahead" in p.message]
        assert "interval_begin" in problem.message and "4000-01-01" in problem.message
    failed = rows(tmp_path, "SELECT status, error FROM runs WHERE status <> 'ok'")
    assert failed == [("bad_response", f"entry: {problem.message}")]


# -- 8. a bad book at wire speed ------------------------------------------------------------------


def test_a_request_already_queued_is_not_queued_again() -> None:
    # Before: each bad snapshot queued one more unsubscribe of its symbol: 55,732 in 3 s left
    # 18,549 queued (BTC/USD fifty times a request), sent at 5 a second for an hour after, the
    # queue growing for as long as the feed went on.
    requests: list[dict[str, Any]] = []
    flooded = threading.Event()

    def script(ws: ServerConnection) -> None:
        ws.recv(timeout=WAIT)
        bad = {"symbol": "BTC/USD", "bids": [{"price": 1, "qty": 1}], "asks": [], "checksum": 1}
        message = json.dumps({"channel": "book", "type": "snapshot", "data": [bad]})
        for _ in range(5_000):
            ws.send(message)
        flooded.set()
        while True:
            requests.append(json.loads(ws.recv(timeout=WAIT)))

    conn: list[Connection] = []
    handled = [0]
    book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)

    def handle(channel: str, kind: str, data: Any, received_at: datetime) -> None:
        handled[0] += 1
        try:
            book.snapshot(data[0])
        except BookError:
            conn[0].resubscribe("book", "BTC/USD")  # as the feed does

    with hostile(script) as url:
        conn.append(Connection(url, [BOOK], handle, backoff=FAST, rate=1000.0))
        conn[0].start()
        try:
            wait_for(lambda: flooded.is_set() and handled[0] == 5_000, WAIT)
            wait_for(lambda: len(requests) >= 1, WAIT)
        finally:
            assert conn[0].stop()
    for request in requests:
        symbols = request["params"]["symbol"]
        assert len(symbols) == len(set(symbols)), symbols[:3]


# -- the whole process: a hostile feed's afternoon, then SIGTERM --------------------------------

FORGED = (
    '\x1b]8;;http://evil\x07=HYPERLINK("x")\n2026-01-01 00:00:00 CRITICAL collector: FORGED\u202e'
)


def test_collector_run_against_a_hostile_feed_logs_little_stops_in_its_bound(
    tmp_path: Path,
) -> None:
    # All of the above at once, through `collector run` and its text log: garbage at wire speed,
    # a message nested too deep, an answer about a symbol never asked for carrying a forged log
    # line and terminal sequences, then SIGTERM during the flood.
    flooding = threading.Event()

    def script(ws: ServerConnection) -> None:
        request = json.loads(ws.recv(timeout=WAIT))
        answer = {"method": "subscribe", "success": True, "req_id": request["req_id"]}
        ws.send(json.dumps({**answer, "result": {"channel": "trade", "symbol": "BTC/USD"}}))
        ws.send("[" * 100_000 + "]" * 100_000)
        evil = {**answer, "success": False, "error": FORGED}
        ws.send(json.dumps({**evil, "result": {"channel": "trade", "symbol": FORGED}}))
        flooding.set()
        with contextlib.suppress(Exception):
            while True:
                ws.send("x" * 100)

    with FakeKraken(tier=None) as fake, hostile(script) as url:
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: sqlite:///{tmp_path / 'c.db'}\nkraken:\n  url: {fake.url}\n"
            f"  ws_url: {url}\nstreams:\n  tape: {{channel: trade, pairs: [XBTUSD]}}\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
        log = tmp_path / "collector.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "run", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_for(flooding.is_set, WAIT)
            wait_for(lambda: "more like it" in log.read_text(), WAIT)
        finally:
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        stopped = time.monotonic() - began
    output = log.read_text()
    assert proc.returncode == 0, output[-2000:]
    assert stopped < 10.0
    assert "loop failed" not in output and "Traceback" not in output
    assert "\x1b" not in output and "\u202e" not in output and "\nFORGED" not in output
    assert not any(line.startswith("2026-01-01") for line in output.splitlines())
    protocol = [line for line in output.splitlines() if ": protocol: " in line]
    assert 2 <= len(protocol) <= 20, protocol[:5]


def test_failures_counted_between_rows_are_told_by_the_clock_and_at_the_stop() -> None:
    """A failed run a kind a second, the ones between counted in the next: when no next one
    comes, the clock tells them once their second has passed, and the stop tells the rest.
    Before, the failures after a kind's last row were only counted, and never stored."""
    now = [datetime(2026, 12, 7, 12, 0, tzinfo=UTC)]
    rows: list[str] = []
    feed = Feed(
        Stream(name="tape", channel="trade", pairs=("XBTUSD",)),
        url="ws://127.0.0.1:9/v2",
        api=None,
        submit=lambda record, *rest: rows.append(record.error or ""),
        publish=lambda event: None,
        tuning=Tuning(),
        now=lambda: now[0],
    )
    for n in range(5):
        feed.record_failure(None, "rate", "XXBTZUSD", f"refused {n}")
    assert rows == ["rate: refused 0"]
    feed.tick(now[0])  # within the second: still counted
    assert len(rows) == 1
    now[0] += timedelta(seconds=defaults.WS_FAILURE_ROW_EVERY)
    feed.tick(now[0])
    assert rows[1] == "rate: refused 4 (and 3 more like it since 12:00:00)"
    feed.record_failure(None, "rate", "XXBTZUSD", "refused 5")  # counted: a row a second
    feed.record_failure(None, "entry", None, "a bad entry")  # another kind: its own row
    feed.stop()
    assert rows[2:] == ["entry: a bad entry", "rate: refused 5"]
    told = len(rows) + sum(int(m) for e in rows for m in re.findall(r"and (\d+) more", e))
    assert told == 7  # every failure, once
