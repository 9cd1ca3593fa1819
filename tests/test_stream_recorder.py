"""The job file's streams recorded by the service (collector/streams/recorder.py, feed.py), against
the fake's WebSocket and REST endpoints over real sockets, into a real database: every fault of
issue 28 (a dropped trade, a wrong checksum, a disconnect, a stall, ``Exceeded msg rate``, a pair
listed while running), each ending with the rows the fake's ground truth says."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError

from collector.backoff import Backoff
from collector.datasets.book import table as book_table
from collector.datasets.gaps import table as gaps_table
from collector.datasets.market import trades as trades_table
from collector.events import (
    StreamConnected,
    StreamDisconnected,
    StreamGap,
    StreamProblem,
    StreamStored,
)
from collector.jobfile import load
from collector.service import Service
from collector.streams.recorder import Tuning
from collector.testing.fake_exchange import FakeKraken
from collector.testing.market import PAIRS
from collector.testing.ws import checksum, v2_symbol

from .helpers import wait_for

WAIT = 20.0
FAST = Backoff(first=0.01, cap=0.05)
TUNING = Tuning(batch_seconds=0.2, pairs_refresh=0.3, backoff=FAST, gap_backoff=FAST, rate=50.0)


@pytest.fixture
def fake() -> Iterator[FakeKraken]:
    with FakeKraken(tier=None, ws=True) as fake:
        assert fake.ws is not None
        fake.ws.heartbeat = 0.1  # a stall is seen within a stream's stale_after of 1s
        yield fake


def job_file(tmp_path: Path, fake: FakeKraken, database: str, streams: str, jobs: str = "") -> Path:
    assert fake.ws is not None
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database}\nkraken:\n  url: {fake.url}\n  ws_url: {fake.ws.url}\n"
        "  public_rate_limit: {max: 1000, decay: 1000}\n"
        + (
            "jobs:\n" + textwrap.indent(textwrap.dedent(jobs).strip("\n"), "  ") + "\n"
            if jobs
            else ""
        )
        + "streams:\n"
        + textwrap.indent(textwrap.dedent(streams).strip("\n"), "  ")
        + "\n"
    )
    return path


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


class Run:
    """A service recording streams in this process, and what it published."""

    def __init__(self, service: Service, url: str) -> None:
        self.service, self.url = service, url
        self.events: list[object] = []
        self.lock = threading.Lock()
        for kind in (StreamConnected, StreamDisconnected, StreamGap, StreamProblem, StreamStored):
            service.events.subscribe(kind, self.seen)

    def seen(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    def rows(self, sql: str, **params: Any) -> list[Any]:
        return query(self.url, sql, **params)

    def acknowledged(self, stream: str) -> set[str]:
        return self.service.recorder.feeds[stream].acknowledged()


@contextlib.contextmanager
def recording(
    tmp_path: Path, fake: FakeKraken, streams: str, *, tuning: Tuning = TUNING, url: str = ""
) -> Iterator[Run]:
    url = url or f"sqlite:///{tmp_path / 'streams.db'}"
    config = load(job_file(tmp_path, fake, url, streams), keys=False)
    service = Service(config, stream_tuning=tuning)
    run = Run(service, url)
    service.start()
    try:
        yield run
    finally:
        service.stop()


def trade_ids(run: Run, pair: str = "XXBTZUSD") -> list[int]:
    return [r[0] for r in run.rows("SELECT trade_id FROM trades WHERE pair = :p", p=pair)]


def tape(fake: FakeKraken, lo: int, hi: int, pair: str = "XBTUSD") -> list[list[Any]]:
    """REST Trades' rows of ids ``lo..hi``: the ground truth."""
    return [row for row in fake.public_trades(pair) if lo <= row[6] <= hi]


def assert_tape_stored(run: Run, fake: FakeKraken, lo: int, hi: int) -> None:
    """The trades table holds exactly the tape from ``lo`` to ``hi``, each trade once, with its
    values."""
    stored = run.rows(
        "SELECT trade_id, price, volume, side FROM trades WHERE pair = 'XXBTZUSD' "
        "AND trade_id BETWEEN :lo AND :hi ORDER BY trade_id",
        lo=lo,
        hi=hi,
    )
    truth = tape(fake, lo, hi)
    assert [r[0] for r in stored] == [t[6] for t in truth]
    for row, t in zip(stored, truth, strict=True):
        assert (Decimal(str(row[1])), Decimal(str(row[2]))) == (Decimal(t[0]), Decimal(t[1]))
        assert row[3] == {"b": "buy", "s": "sell"}[t[3]]


# -- trades -----------------------------------------------------------------------------------


def test_a_dropped_trade_message_is_filled_from_rest_and_every_trade_is_stored_once(
    tmp_path: Path, fake: FakeKraken, database_url: str
) -> None:
    assert fake.ws is not None
    streams = "tape: {channel: trade, pairs: [XBTUSD]}"
    with recording(tmp_path, fake, streams, url=database_url) as run:
        wait_for(lambda: len(trade_ids(run)) == 50, WAIT)  # the snapshot: the last 50
        first = min(trade_ids(run))
        fake.ws.inject("drop", channel="trade")
        dropped = fake.grow("public_trades", 3, pair="XBTUSD")
        later: list[int] = []

        def past() -> bool:
            if any(e.filled for e in run.of(StreamGap)):
                return True
            later.extend(fake.grow("public_trades", 1, pair="XBTUSD"))
            return False

        wait_for(past, WAIT)
        wait_for(lambda: max(trade_ids(run)) >= later[-1], WAIT)
        assert set(dropped) <= set(trade_ids(run))
        assert_tape_stored(run, fake, first, later[-1])
        (gap,) = run.of(StreamGap)
        assert (gap.stream, gap.pair, gap.left) == ("tape", "XXBTZUSD", False)
        assert gap.filled >= len(dropped)  # the dropped message, and what shared its tick
        # The feed's rows in batch runs naming their connection; the filled ones in a Trades run.
        runs = run.rows("SELECT job, method, status FROM runs WHERE job = 'stream:tape'")
        assert {(j, m) for j, m, _ in runs} == {
            ("stream:tape", "ws:trade"),
            ("stream:tape", "Trades"),
        }
        assert all(status == "ok" for _, _, status in runs)
        assert run.rows("SELECT count(*) FROM gaps")[0][0] == 0
        # Filled through the service's one public client, so on its budget.
        filler = run.service.recorder.feeds["tape"].filler
        assert filler is not None and filler.api is run.service.public_api
        feed_rows = len(trade_ids(run)) - gap.filled
        wait_for(lambda: sum(e.rows for e in run.of(StreamStored)) == feed_rows, WAIT)
        stored = run.of(StreamStored)
        assert all(e.stream == "tape" and e.channel == "trade" for e in stored)
        assert all(0 <= lag < WAIT for e in stored for lag in e.lags)


@pytest.mark.parametrize("cut", ["disconnect", "stall"])
def test_a_disconnect_or_a_stall_reconnects_and_the_trades_it_cost_are_filled(
    tmp_path: Path, fake: FakeKraken, cut: str
) -> None:
    assert fake.ws is not None
    streams = "tape: {channel: trade, pairs: [XBTUSD], stale_after: 1s}"
    with recording(tmp_path, fake, streams) as run:
        wait_for(lambda: len(trade_ids(run)) == 50, WAIT)
        first, last = min(trade_ids(run)), max(trade_ids(run))
        # Trades happen while the connection is cut: 60, more than the 50 a snapshot brings back.
        fake.ws.inject("stall")
        fake.grow("public_trades", 60, pair="XBTUSD")
        if cut == "disconnect":
            fake.ws.inject("disconnect")
        wait_for(lambda: len(run.of(StreamGap)) == 1, WAIT)
        wait_for(lambda: max(trade_ids(run)) == last + 60, WAIT)
        assert_tape_stored(run, fake, first, last + 60)
        (gap,) = run.of(StreamGap)
        assert (gap.pair, gap.filled, gap.left) == ("XXBTZUSD", 10, False)  # 60 less the 50
        wait_for(lambda: len(run.of(StreamConnected)) == 2, WAIT)
        (lost,) = run.of(StreamDisconnected)
        assert (lost.stream, lost.reason) == (
            "tape",
            {"disconnect": "disconnect", "stall": "stale"}[cut],
        )
        one, two = (e.connection for e in run.of(StreamConnected))
        assert lost.connection == one and one != two
        wait_for(lambda: len(run.rows("SELECT uid FROM stream_connections")) == 2, WAIT)
        closed = run.rows(
            "SELECT uid, reason, closed_at FROM stream_connections WHERE uid = :u", u=one
        )
        assert closed[0][2] is not None
        assert ("1006" if cut == "disconnect" else "stale") in closed[0][1]
    # The rows trace to the connection that brought them, and every connection closed.
    params = [p for (p,) in run.rows("SELECT params FROM runs WHERE method = 'ws:trade'")]
    named = {(p if isinstance(p, dict) else json.loads(p))["connection"] for p in params}
    assert named == {one, two}
    reasons = dict(run.rows("SELECT uid, reason FROM stream_connections"))
    assert reasons[two] == "stopped"
    assert (1000, "collector stopping") in fake.ws.closes


def test_a_trade_both_the_feed_and_a_rest_trades_job_deliver_is_one_row(
    tmp_path: Path, fake: FakeKraken
) -> None:
    url = f"sqlite:///{tmp_path / 'both.db'}"
    path = job_file(
        tmp_path,
        fake,
        url,
        "tape: {channel: trade, pairs: [BTC/USD]}",
        jobs="rest: {method: Trades, params: {pair: XBTUSD}, every: 0.2s}",
    )
    service = Service(load(path, keys=False), stream_tuning=TUNING)
    run = Run(service, url)
    service.start()
    try:
        wait_for(lambda: len(trade_ids(run)) >= 50, WAIT)
        wait_for(lambda: run.rows("SELECT count(*) FROM runs WHERE job = 'rest'")[0][0] >= 2, WAIT)
        new = fake.grow("public_trades", 5, pair="XBTUSD")

        def both() -> bool:  # each new trade came from the feed and from REST
            feed = run.rows("SELECT count(*) FROM runs WHERE method = 'ws:trade' AND pages > 0")
            rest = run.rows("SELECT count(*) FROM runs WHERE job = 'rest' AND status = 'ok'")
            return set(new) <= set(trade_ids(run)) and feed[0][0] >= 2 and rest[0][0] >= 4

        wait_for(both, WAIT)
        before = run.rows("SELECT count(*) FROM runs WHERE job = 'rest'")[0][0]
        wait_for(
            lambda: run.rows("SELECT count(*) FROM runs WHERE job = 'rest'")[0][0] > before + 1
        )
    finally:
        service.stop()
    ids = trade_ids(run)
    assert len(ids) == len(set(ids))
    assert_tape_stored(run, fake, min(ids), max(ids))
    # The feed's time is REST's, to the microsecond: one row, whichever stored it first, and
    # some were stored first by each.
    engine = create_engine(url)
    with engine.connect() as conn:
        got = conn.execute(select(trades_table).where(trades_table.c.trade_id.in_(new))).all()
        firsts = conn.execute(
            text("SELECT DISTINCT r.method FROM trades t JOIN runs r ON r.id = t.run_id")
        ).all()
    engine.dispose()
    times = {row.trade_id: row.time for row in got}
    for row in tape(fake, min(new), max(new)):
        whole, micro = divmod(int(Decimal(repr(row[2])) * 1_000_000), 1_000_000)
        assert times[row[6]] == datetime.fromtimestamp(whole, UTC).replace(microsecond=micro)
    assert {m for (m,) in firsts} == {"ws:trade", "Trades"}


# -- books ------------------------------------------------------------------------------------


def book_snapshots(url: str) -> dict[datetime, dict[str, list[tuple[Decimal, Decimal]]]]:
    """The stored book rows, by ``taken_at``: each side's (price, qty), best first."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(book_table).order_by(book_table.c.level)).all()
    finally:
        engine.dispose()
    out: dict[datetime, dict[str, list[tuple[Decimal, Decimal]]]] = {}
    for row in rows:
        out.setdefault(row.taken_at, {"bid": [], "ask": []})[row.side].append((row.price, row.qty))
    return out


def test_a_wrong_checksum_resubscribes_the_pair_records_a_gap_and_the_books_stay_right(
    tmp_path: Path, fake: FakeKraken, database_url: str
) -> None:
    assert fake.ws is not None
    url = database_url
    streams = "books: {channel: book, pairs: [XBTUSD], depth: 10, snapshot_every: 1s}"
    with recording(tmp_path, fake, streams, url=url) as run:
        wait_for(lambda: len(book_snapshots(url)) >= 1, WAIT)
        fake.ws.inject("checksum", channel="book", symbol="BTC/USD")
        wait_for(lambda: run.rows("SELECT count(*) FROM gaps")[0][0] == 1, WAIT)
        engine = create_engine(url)
        with engine.connect() as conn:
            (gap,) = conn.execute(select(gaps_table)).all()
        engine.dispose()
        wait_for(lambda: any(t > gap.end for t in book_snapshots(url)), WAIT)
    (problem,) = [e for e in run.of(StreamProblem) if e.kind == "checksum"]
    assert (problem.stream, problem.pair) == ("books", "XXBTZUSD")
    assert "does not match" in problem.message
    assert (gap.job, gap.dataset, gap.pair) == ("stream:books", "book", "XXBTZUSD")
    assert "checksum" in gap.reason and gap.start < gap.end
    assert [e for e in run.of(StreamGap)] == [StreamGap("books", "XXBTZUSD", 0, True)]
    # Resubscribed: an unsubscribe, then a subscribe (only that brings a fresh snapshot).
    asked = [
        r["method"] for r in list(fake.ws.requests) if r.get("params", {}).get("channel") == "book"
    ]
    assert asked == ["subscribe", "unsubscribe", "subscribe"]
    # Every stored book is the fake's own at its time (its true checksum), none from the gap.
    truth = {stamp: digest for symbol, stamp, digest in fake.ws.book_checksums}
    snapshots = book_snapshots(url)
    assert gap.end in snapshots  # the fresh snapshot, stored at once
    for taken_at, sides in snapshots.items():
        assert not gap.start < taken_at < gap.end
        assert len(sides["bid"]) == len(sides["ask"]) == 10
        stamp = taken_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert checksum("XXBTZUSD", sides["ask"], sides["bid"]) == truth[stamp], stamp


# -- subscriptions ----------------------------------------------------------------------------


def test_symbols_are_split_across_connections_at_the_limit_and_each_traces_its_rows(
    tmp_path: Path, fake: FakeKraken
) -> None:
    tuning = dataclasses.replace(TUNING, per_connection=3)
    with recording(tmp_path, fake, "quotes: {channel: ticker, pairs: all}", tuning=tuning) as run:
        everything = {v2_symbol(p) for p in PAIRS}
        wait_for(lambda: run.acknowledged("quotes") == everything, WAIT)
        feed = run.service.recorder.feeds["quotes"]
        assert sorted(len(link.symbols) for link in feed.links) == [2, 3, 3]
        assert set().union(*(link.symbols for link in feed.links)) == everything
        wait_for(lambda: len(run.rows("SELECT DISTINCT pair FROM ticker")) == len(PAIRS), WAIT)
        wait_for(lambda: len(run.of(StreamConnected)) == 3, WAIT)
    uids = {e.connection for e in run.of(StreamConnected)}
    assert set(dict(run.rows("SELECT uid, stream FROM stream_connections"))) == uids
    # Each batch's rows as stored: a pair's tickers in one batch are one row (the latest).
    assert (
        sum(e.rows for e in run.of(StreamStored)) == run.rows("SELECT count(*) FROM ticker")[0][0]
    )
    # Each connection's tickers are its own symbols' (the rows trace to their connection).
    by_run = run.rows(
        "SELECT r.params, t.pair, t.ask, t.bid FROM ticker t JOIN runs r ON r.id = t.run_id"
    )
    pairs_of: dict[str, set[str]] = {}
    for params, pair, ask, bid in by_run:
        p = params if isinstance(params, dict) else json.loads(params)
        pairs_of.setdefault(p["connection"], set()).add(pair)
        assert Decimal(str(ask)) > Decimal(str(bid)) > 0
    assert set(pairs_of) == uids
    assert sorted(len(p) for p in pairs_of.values()) == [2, 3, 3]
    assert set().union(*pairs_of.values()) == set(PAIRS)


def test_exceeded_msg_rate_on_a_burst_is_backed_off_and_every_pair_subscribed(
    tmp_path: Path, fake: FakeKraken
) -> None:
    assert fake.ws is not None
    fake.ws.msg_rate = (3, 0.5)  # a fourth request within half a second is refused
    # One symbol a request, fifty a second: a burst, as a resubscribe storm would be.
    tuning = dataclasses.replace(TUNING, request_symbols=1, backoff=Backoff(first=0.3, cap=1.0))
    with recording(tmp_path, fake, "tape: {channel: trade, pairs: all}", tuning=tuning) as run:
        everything = {v2_symbol(p) for p in PAIRS}
        wait_for(lambda: run.acknowledged("tape") == everything, WAIT)
        wait_for(lambda: len(run.rows("SELECT DISTINCT pair FROM trades")) == len(PAIRS), WAIT)
    refused = [e for e in run.of(StreamProblem) if e.kind == "rate"]
    assert refused and all(e.stream == "tape" for e in refused)
    assert all("Exceeded msg rate" in e.message for e in refused)
    assert {e.pair for e in refused} <= set(PAIRS)  # named by the canonical pair
    # ...and each is a failed run of the stream, never only a log line: one a second at most,
    # the ones between counted in it.
    failed = run.rows("SELECT status, error FROM runs WHERE job = 'stream:tape' AND status <> 'ok'")
    assert failed and {status for status, _ in failed} == {"kraken_error"}
    assert all(error.startswith("rate: ") and "Exceeded msg rate" in error for _, error in failed)
    told = len(failed) + sum(int(m) for _, e in failed for m in re.findall(r"and (\d+) more", e))
    assert told == len(refused)
    # Each pair's snapshot of 50 trades, stored once.
    counts = dict(run.rows("SELECT pair, count(*) FROM trades GROUP BY pair"))
    assert counts == dict.fromkeys(PAIRS, 50)


def test_a_pair_listed_while_running_is_subscribed_and_a_delisted_one_dropped(
    tmp_path: Path, fake: FakeKraken
) -> None:
    assert fake.ws is not None
    fake.delist("SOLUSD")  # not in AssetPairs nor the instrument channel at start
    with recording(tmp_path, fake, "tape: {channel: trade, pairs: all}") as run:
        feed = run.service.recorder.feeds["tape"]
        before = {v2_symbol(p) for p in PAIRS if p != "SOLUSD"}
        wait_for(lambda: run.acknowledged("tape") == before, WAIT)
        assert not run.rows("SELECT pair FROM pairs WHERE pair = 'SOLUSD'")
        fake.ws.list_pair("SOLUSD")
        wait_for(lambda: "SOL/USD" in run.acknowledged("tape"), WAIT)
        wait_for(lambda: len(trade_ids(run, "SOLUSD")) == 50, WAIT)
        assert run.rows("SELECT status FROM pairs WHERE pair = 'SOLUSD'") == [("online",)]
        assert feed.ids is not None and feed.ids.last("SOLUSD") is not None
        # Delisted: unsubscribed, and nothing kept of it.
        fake.ws.list_pair("SOLUSD", listed=False)
        wait_for(lambda: "SOL/USD" not in feed.held(), WAIT)
        assert feed.ids.last("SOLUSD") is None
        wait_for(
            lambda: any(
                r.get("method") == "unsubscribe" and r["params"].get("symbol") == ["SOL/USD"]
                for r in list(fake.ws.requests)
            ),
            WAIT,
        )
        assert run.acknowledged("tape") == before


def test_candles_become_final_when_the_next_interval_begins(tmp_path: Path) -> None:
    # The fake's data ten minutes ahead of our clock: the candle is made final by the feed's next
    # one, never by our clock (WS_CANDLE_GRACE after its interval) while the test runs.
    clock = [float(int(time.time()) // 60 * 60 + 600 + 10)]
    with FakeKraken(tier=None, ws=True, now=lambda: clock[0]) as fake:
        streams = "candles: {channel: ohlc, pairs: [XBTUSD], interval: 1}"
        with recording(tmp_path, fake, streams) as run:
            first = int(clock[0]) // 60 * 60
            wait_for(lambda: run.rows("SELECT count(*) FROM ohlc")[0][0] == 1, WAIT)
            assert run.rows("SELECT final FROM ohlc") == [(0,)] or run.rows(
                "SELECT final FROM ohlc"
            ) == [(False,)]
            # The minute's last moment: the feed's last word on the candle is its closing one.
            clock[0] = first + 59.999
            closing = fake.candle("XBTUSD", 1, first)
            last_word = [Decimal(v) for v in closing[1:5]] + [closing[7]]
            wait_for(lambda: candle_values(run)[0] == last_word, WAIT)
            clock[0] = first + 70  # the next minute: the fake sends its candle
            wait_for(lambda: run.rows("SELECT count(*) FROM ohlc")[0][0] == 2, WAIT)
            wait_for(lambda: bool(run.rows("SELECT final FROM ohlc WHERE final")), WAIT)
        finals = [bool(f) for (f,) in run.rows("SELECT final FROM ohlc ORDER BY time")]
        values = candle_values(run)
    # Final with the last values the feed sent (Kraken sends no word after the interval); the
    # new minute's candle open.
    assert finals == [True, False]
    assert values[0] == last_word


def candle_values(run: Run) -> list[list[Any]]:
    """Each stored candle's open, high, low, close and count, oldest first."""
    rows = run.rows('SELECT open, high, low, close, "count" FROM ohlc ORDER BY time')
    return [[Decimal(str(v)) for v in row[:4]] + [row[4]] for row in rows]


def test_run_once_ignores_the_streams_and_says_so(
    tmp_path: Path, fake: FakeKraken, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'once.db'}"
    path = job_file(
        tmp_path,
        fake,
        url,
        "tape: {channel: trade, pairs: [XBTUSD]}",
        jobs="t: {method: Time, every: 1h}",
    )
    service = Service(load(path, keys=False))
    caplog.set_level("INFO")
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert (
        "run --once runs the jobs only: the 1 streams are recorded by collector run" in caplog.text
    )
    assert fake.ws is not None and fake.ws.connections == 0
    assert query(url, "SELECT count(*) FROM trades") == [(0,)]


# -- the command: SIGHUP and SIGTERM ------------------------------------------------------------


def test_sighup_adds_and_removes_streams_and_sigterm_closes_each_with_a_close_frame(
    tmp_path: Path, fake: FakeKraken
) -> None:
    assert fake.ws is not None
    url = f"sqlite:///{tmp_path / 'run.db'}"
    path = job_file(tmp_path, fake, url, "tape: {channel: trade, pairs: [XBTUSD]}")
    log = tmp_path / "collector.log"
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_DATABASE_URL"}
    cmd = [sys.executable, "-m", "collector.cli", "run", str(path)]

    def count(sql: str) -> int:
        try:
            return int(query(url, sql)[0][0])
        except OperationalError:  # no table yet: the service migrates the database first
            return 0

    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: count("SELECT count(*) FROM trades") >= 50, WAIT)
        job_file(tmp_path, fake, url, "books: {channel: book, pairs: [ETHUSD], snapshot_every: 1s}")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: count("SELECT count(*) FROM book") >= 20, WAIT)
        # The removed stream's connection closed cleanly; its row says so.
        wait_for(lambda: (1000, "collector stopping") in fake.ws.closes, WAIT)
        wait_for(
            lambda: (
                count(
                    "SELECT count(*) FROM stream_connections WHERE stream = 'tape' "
                    "AND closed_at IS NOT NULL AND reason = 'stopped'"
                )
                == 1
            ),
            WAIT,
        )
        closes = len(fake.ws.closes)
        # One line says what the reload applied, the streams with the jobs.
        (line,) = [x for x in log.read_text().splitlines() if "reloaded:" in x]
        assert "streams; streams added books; removed tape" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    # SIGTERM: the book stream's and the instrument channel's connections, each a close frame.
    assert fake.ws.closes[closes:] == [(1000, "collector stopping")] * 2
    assert fake.ws.open_connections() == 0
    assert count("SELECT count(*) FROM stream_connections WHERE closed_at IS NULL") == 0
    assert count("SELECT count(*) FROM stream_connections WHERE stream = 'books'") == 1


def test_one_collector_of_a_deployment_records_the_streams_the_public_lease_s_holder(
    tmp_path: Path, fake: FakeKraken
) -> None:
    assert fake.ws is not None
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    path = job_file(tmp_path, fake, url, "tape: {channel: trade, pairs: [XBTUSD]}")
    path.write_text(path.read_text() + "failover: 1s\n")
    first = Service(load(path, keys=False), stream_tuning=TUNING)
    first.start()
    second = Service(load(path, keys=False), stream_tuning=TUNING)
    try:
        wait_for(lambda: first.recorder.feeds["tape"].acknowledged() == {"BTC/USD"}, WAIT)
        second.start()
        wait_for(lambda: second.recorder.recording is False, WAIT)
        assert second.recorder.feeds["tape"].held() == set()
        assert fake.ws.open_connections() == 1  # the first's only
        first.stop()
        # The lease is free: the second takes it over, and the streams with it.
        wait_for(lambda: second.recorder.feeds["tape"].acknowledged() == {"BTC/USD"}, WAIT)
        assert second.recorder.recording is True
    finally:
        first.stop()
        second.stop()
    assert fake.ws.connections == 2


def test_a_quiet_pair_s_candle_becomes_final_by_our_clock_once_its_interval_ended(
    tmp_path: Path,
) -> None:
    # The fake's data two minutes behind our clock, and no later candle: our clock says the
    # interval ended (less the grace), so the candle is final with the last values sent.
    clock = [float(int(time.time()) // 60 * 60 - 120 + 10)]
    with FakeKraken(tier=None, ws=True, now=lambda: clock[0]) as fake:
        streams = "candles: {channel: ohlc, pairs: [XBTUSD], interval: 1}"
        with recording(tmp_path, fake, streams) as run:
            wait_for(lambda: bool(run.rows("SELECT final FROM ohlc WHERE final")), WAIT)
            sent = fake.candle("XBTUSD", 1, int(clock[0]) // 60 * 60)
        rows = run.rows('SELECT open, high, low, close, "count", final FROM ohlc')
    assert len(rows) == 1 and bool(rows[0][5]) is True
    assert [Decimal(str(v)) for v in rows[0][:4]] == [Decimal(v) for v in sent[1:5]]
    assert rows[0][4] == sent[7]


def test_a_lost_connection_is_a_gap_in_each_book_it_carried_until_the_fresh_snapshot(
    tmp_path: Path, fake: FakeKraken
) -> None:
    assert fake.ws is not None
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    streams = "books: {channel: book, pairs: [XBTUSD, ETHUSD], snapshot_every: 1s}"
    with recording(tmp_path, fake, streams, url=url) as run:
        wait_for(lambda: len(run.rows("SELECT DISTINCT pair FROM book")) == 2, WAIT)
        fake.ws.inject("disconnect")
        wait_for(lambda: run.rows("SELECT count(*) FROM gaps")[0][0] == 2, WAIT)
        engine = create_engine(url)
        with engine.connect() as conn:
            gaps = conn.execute(select(gaps_table).order_by(gaps_table.c.pair)).all()
        engine.dispose()
        wait_for(lambda: all(g.end in book_snapshots(url) for g in gaps), WAIT)
    assert [(g.dataset, g.pair) for g in gaps] == [("book", "XETHZUSD"), ("book", "XXBTZUSD")]
    assert all("connection lost" in g.reason and g.start < g.end for g in gaps)
    assert run.of(StreamDisconnected)[0].reason == "disconnect"  # then STREAM_STOPPED at the end
    assert not [e for e in run.of(StreamProblem) if e.kind == "checksum"]


def test_a_pair_no_table_knows_is_a_failed_run_and_the_others_are_recorded(
    tmp_path: Path, fake: FakeKraken
) -> None:
    """Before, a stream's pair that neither the pairs table nor AssetPairs knows was a log line
    and an event only: status stayed healthy, nothing in the database said so."""
    streams = "tape: {channel: trade, pairs: [XBTUSD, FOOBAR]}"
    failed = "SELECT status, error, params FROM runs WHERE job = 'stream:tape' AND status <> 'ok'"
    with recording(tmp_path, fake, streams) as run:
        wait_for(lambda: len(trade_ids(run)) >= 50, WAIT)
        wait_for(lambda: run.rows(failed) != [], WAIT)
    rows = run.rows(failed)
    status, error, params = rows[0]
    assert status == "kraken_error"
    assert error == "refused: pair FOOBAR is not a pair the pairs table knows (yet); not subscribed"
    # Told again after each AssetPairs: a repeat within the second is a row at the stop.
    assert {row[:2] for row in rows} == {(status, error)}
    assert (params if isinstance(params, dict) else json.loads(params))["pair"] == "FOOBAR"
