"""Nothing missed on the tape (collector/streams/gaps.py): holes in the feed's trade ids found and
filled from REST Trades, against the fake's WebSocket and REST endpoints over real sockets; what
REST cannot fill is a ``gaps`` row naming the ids on each side."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import collector
from collector.backoff import Backoff
from collector.store import Store
from collector.streams.connection import Connection, StreamFailed, Subscribed, Subscription
from collector.streams.gaps import Fill, Filler, Hole, TradeIds, trade_time
from collector.testing.fake_exchange import FakeKraken
from collector.testing.ws import rfc3339

from .helpers import wait_for

WAIT = 20.0
PAIR = "XXBTZUSD"  # the name REST Trades and the tables use; the feed says BTC/USD
FAST = Backoff(first=0.01, cap=0.02)


class Tape:
    """The stream's side as the service will wire it: the feed's trades into the tracker, its
    holes into the filler, reconnects and stalls told to the tracker."""

    def __init__(self, fake: FakeKraken, **options: Any) -> None:
        self.lock = threading.Lock()
        self.feed: list[int] = []  # new ids, in the order the feed delivered them
        self.fills: list[Fill] = []
        self.subscribed = 0
        self.api = collector.API(uri=fake.url)
        self.filler = Filler(self.api, self.deliver, job="streams:tape", backoff=FAST).start()
        self.ids = TradeIds(self.filler.submit)
        self.conn = Connection(
            fake.ws_url,
            [Subscription("trade", ("BTC/USD",))],
            self.handle,
            publish=self.publish,
            backoff=FAST,
            rate=50.0,
            **options,
        ).start()

    def deliver(self, fill: Fill) -> None:
        with self.lock:
            self.fills.append(fill)

    def publish(self, event: object) -> None:
        if isinstance(event, StreamFailed) and event.kind in ("disconnect", "stale"):
            self.ids.interrupted("reconnect" if event.kind == "disconnect" else "stall")
        if isinstance(event, Subscribed):
            with self.lock:
                self.subscribed += 1

    def handle(self, channel: str, kind: str, data: Any, received_at: datetime) -> None:
        if channel != "trade":
            return
        new = self.ids.trades(data, lambda symbol: PAIR)
        with self.lock:
            self.feed.extend(t["trade_id"] for t, n in zip(data, new, strict=True) if n)

    def close(self) -> None:
        assert self.conn.stop()
        assert self.filler.stop()
        self.api.close()


@pytest.fixture
def fake() -> Iterator[FakeKraken]:
    with FakeKraken(tier=None, ws=True) as fake:
        yield fake


@contextlib.contextmanager
def open_tape(fake: FakeKraken, **options: Any) -> Iterator[Tape]:
    t = Tape(fake, **options)
    try:
        wait_for(lambda: t.subscribed == 1 and len(t.feed) == 50, WAIT)
        yield t
    finally:
        t.close()


@pytest.fixture
def tape(fake: FakeKraken) -> Iterator[Tape]:
    with open_tape(fake) as t:
        yield t


def stored(tmp_path: Path, fill: Fill) -> tuple[list[int], list[tuple[Any, ...]]]:
    """``fill.record`` written by the store into a fresh SQLite database: the trade ids and the
    gaps rows it holds (the record is what the writer takes)."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'gaps.sqlite'}")
    store.upgrade()
    store.write([fill.record])
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT trade_id FROM trades ORDER BY trade_id"))]
        gaps = [tuple(r) for r in conn.execute(text("SELECT job, dataset, pair, reason FROM gaps"))]
    store.engine.dispose()
    return ids, gaps


def rest_ids(fake: FakeKraken, lo: int, hi: int) -> list[int]:
    """REST Trades' ids of the whole range ``lo..hi``: the ground truth."""
    return [row[6] for row in fake.public_trades("XBTUSD") if lo <= row[6] <= hi]


@pytest.mark.parametrize("cut", ["disconnect", "stall"])
def test_a_cut_s_hole_is_found_by_id_and_filled_so_every_trade_is_there_once(
    fake: FakeKraken, tmp_path: Path, cut: str
) -> None:
    assert fake.ws is not None
    # A stall is seen when the heartbeats stop for stale_after.
    fake.ws.heartbeat = 0.1
    with open_tape(fake, stale_after=1.5) as tape:
        last = tape.feed[-1]
        # Trades happen while the connection is cut: more than the 50 a snapshot brings back.
        fake.ws.inject("stall")
        fake.grow("public_trades", 60, pair="XBTUSD")
        if cut == "disconnect":
            fake.ws.inject("disconnect")
        wait_for(lambda: len(tape.fills) == 1, WAIT)
    (fill,) = tape.fills
    assert (fill.hole.pair, fill.hole.after, fill.hole.before) == (PAIR, last, last + 11)
    assert fill.hole.cause == {"disconnect": "reconnect", "stall": "stall"}[cut]
    assert fill.gap is None and fill.missing == [] and fill.record.error is None
    filled = [row["trade_id"] for row in fill.trades]
    assert filled == list(range(last + 1, last + 11))  # exactly the ten the feed never sent
    assert {row["pair"] for row in fill.trades} == {PAIR}
    # The feed and the fill together: every id of REST's whole range, each exactly once.
    union = tape.feed + filled
    assert sorted(union) == rest_ids(fake, min(union), max(union))
    assert len(union) == len(set(union))
    # Through the public client, from just before the last trade seen: one page.
    assert fill.record.method == "Trades" and fill.record.pages == 1
    assert tape.filler.filled == 10 and tape.filler.left == 0
    assert stored(tmp_path, fill) == (filled, [])


def test_a_trade_the_feed_skips_at_one_timestamp_is_found_by_the_id_jump_and_filled(
    fake: FakeKraken, tape: Tape
) -> None:
    assert fake.ws is not None
    last = tape.feed[-1]
    # Kraken's known behaviour: several fills at one time, one of them never sent by the feed.
    fake.ws.inject("drop", channel="trade")
    skipped = fake.grow("public_trades", 3, pair="XBTUSD")  # one timestamp: one message
    later: list[int] = []

    def found() -> bool:
        # Trades go on until one reaches the feed past the dropped message (the fake sends a
        # tick's new trades as one message, so the next trade may share the dropped one).
        if tape.fills:
            return True
        later.extend(fake.grow("public_trades", 1, pair="XBTUSD"))
        return False

    wait_for(found, WAIT)
    (fill,) = tape.fills
    assert (fill.hole.after, fill.hole.cause) == (last, "jump")
    assert fill.hole.before in later
    filled = [row["trade_id"] for row in fill.trades]
    assert set(skipped) <= set(filled) and filled == list(range(last + 1, fill.hole.before))
    assert fill.gap is None
    wait_for(lambda: later[-1] in tape.feed, WAIT)
    union = tape.feed + [row["trade_id"] for row in fill.trades]
    assert sorted(union) == rest_ids(fake, min(union), max(union))
    assert len(union) == len(set(union))


def test_what_rest_cannot_fill_is_a_gaps_row_naming_the_ids_on_each_side(
    fake: FakeKraken, tape: Tape, tmp_path: Path
) -> None:
    assert fake.ws is not None
    last = tape.feed[-1]
    fake.inject("http_502", method="Trades", count=3)  # every attempt (WS_GAP_ATTEMPTS)
    fake.ws.inject("drop", channel="trade", count=1)
    fake.grow("public_trades", 4, pair="XBTUSD")

    def found() -> bool:
        if tape.fills:
            return True
        fake.grow("public_trades", 1, pair="XBTUSD")
        return False

    wait_for(found, WAIT)
    (fill,) = tape.fills
    after = fill.hole.before
    assert fill.hole.after == last and after >= last + 5
    assert fill.trades == [] and fill.missing == [(last + 1, after - 1)]
    assert fill.record.attempts == 3 and fill.record.status == "http_error"
    gap = fill.gap
    assert gap is not None
    assert (gap["job"], gap["dataset"], gap["pair"]) == ("streams:tape", "trades", PAIR)
    assert (gap["start"], gap["end"]) == (fill.hole.after_time, fill.hole.before_time)
    assert gap["start"] < gap["end"]
    assert gap["reason"] == (
        f"trades {last + 1}-{after - 1} ({after - last - 1} trades) missing between trade {last} and trade {after}"
        " (jump); REST Trades did not serve them: HTTP 502"
    )
    assert tape.filler.left == 1 and tape.filler.filled == 0
    assert stored(tmp_path, fill) == ([], [("streams:tape", "trades", PAIR, gap["reason"])])


# -- bounds, with the filler driven directly against the fake's REST Trades ---------------------


def _hole(fake: FakeKraken, after: int, before: int, cause: str = "jump") -> Hole:
    """A hole between two of the tape's real trades, their times as the feed gives them
    (microseconds)."""
    rows = {row[6]: row for row in fake.public_trades("XBTUSD")}
    when = {i: trade_time(rfc3339(rows[i][2])) for i in (after, before)}
    return Hole(PAIR, after, when[after], before, when[before], cause)


def test_a_hole_longer_than_the_page_bound_is_filled_as_far_as_it_goes_and_the_rest_a_gap() -> None:
    with (
        FakeKraken(tier=None, history={"public_trades": 1500}) as fake,
        collector.API(uri=fake.url) as api,
    ):
        filler = Filler(api, lambda fill: None, max_pages=1)
        fill = filler.fill(_hole(fake, 1, 1500))
    # One page of 1000 from just before trade 1: trades 2..1000 found, 1001..1499 left.
    assert [row["trade_id"] for row in fill.trades] == list(range(2, 1001))
    assert fill.record.pages == 1 and fill.missing == [(1001, 1499)]
    assert fill.record.status == "ok" and fill.record.error is None  # a bound, not a failure
    assert fill.gap is not None and fill.gap["reason"] == (
        "trades 1001-1499 (499 trades) missing between trade 1 and trade 1500 (jump); REST "
        "Trades did not serve them: 1 pages did not reach trade 1500"
    )


def test_the_deadline_is_on_the_injected_clock_and_ends_the_hole_as_a_gap(
    fake: FakeKraken,
) -> None:
    ticks = iter([0.0, 121.0])  # the hole taken up, then past the deadline before any call
    with collector.API(uri=fake.url) as api:
        filler = Filler(api, lambda fill: None, deadline=120.0, clock=lambda: next(ticks))
        fill = filler.fill(_hole(fake, 10, 14))
    assert fill.record.attempts == 0 and fill.trades == [] and fill.missing == [(11, 13)]
    assert fill.record.status == "timeout"
    assert fill.gap is not None
    assert fill.gap["reason"].endswith("did not serve them: the deadline of 120 s passed")


def test_holes_past_the_queue_bound_widen_the_newest_and_none_is_lost(fake: FakeKraken) -> None:
    fills: list[Fill] = []
    with collector.API(uri=fake.url) as api:
        filler = Filler(api, fills.append, max_queued=2)
        for a, b in [(10, 12), (20, 23), (30, 32), (40, 45)]:
            filler.submit(_hole(fake, a, b))
        assert filler.pending() == 2 and filler.widened == 2
        filler.start()
        wait_for(lambda: len(fills) == 2, WAIT)
        assert filler.stop()
    assert [(f.hole.after, f.hole.before) for f in fills] == [(10, 12), (20, 45)]
    assert [row["trade_id"] for row in fills[0].trades] == [11]
    # The widened hole brings back what the feed had too (stored once by key): nothing missing.
    assert [row["trade_id"] for row in fills[1].trades] == list(range(21, 45))
    assert all(f.gap is None for f in fills)


def test_holes_queued_at_stop_are_delivered_as_gaps(fake: FakeKraken) -> None:
    fills: list[Fill] = []
    with collector.API(uri=fake.url) as api:
        filler = Filler(api, fills.append)
        filler.submit(_hole(fake, 10, 13, "reconnect"))
        assert filler.stop()
    (fill,) = fills
    assert fill.missing == [(11, 12)] and fill.gap is not None
    assert fill.record.status == "partial" and fill.record.attempts == 0
    assert fill.gap["reason"] == (
        "trades 11-12 (2 trades) missing between trade 10 and trade 13 (reconnect); REST Trades "
        "did not serve them: the collector stopped first"
    )


def test_the_tracker_reads_the_feed_s_ids_strictly() -> None:
    holes: list[Hole] = []
    ids = TradeIds(holes.append)
    t = trade_time("2026-12-07T19:00:00.123456Z")
    assert ids.seen(PAIR, 5, t) and not ids.seen(PAIR, 5, t) and not ids.seen(PAIR, 3, t)
    assert ids.seen(PAIR, 6, t) and holes == []
    ids.interrupted("stall")
    assert ids.seen(PAIR, 7, t) and holes == []  # the cut cost nothing
    ids.interrupted("reconnect", PAIR)
    assert ids.seen(PAIR, 9, t)
    assert holes == [Hole(PAIR, 7, t, 9, t, "reconnect")] and ids.holes["reconnect"] == 1
    for bad in (True, "10", 10.0, -1, None):
        with pytest.raises(ValueError, match="is not a whole number"):
            ids.seen(PAIR, bad, t)
    # Read by rows.moment, the one reader of a feed's time: a zone is required, text only.
    with pytest.raises(ValueError, match="is not an RFC 3339 time: '2026-12-07T19:00:00'"):
        trade_time("2026-12-07T19:00:00")
    with pytest.raises(ValueError, match=r"is not an RFC 3339 time: 1\.5"):
        ids.trades([{"symbol": "BTC/USD", "trade_id": 10, "timestamp": 1.5}], lambda s: PAIR)
    assert ids.last(PAIR) == (9, t)


def test_two_unfilled_holes_at_one_timestamp_are_two_gaps_rows(
    fake: FakeKraken, tmp_path: Path
) -> None:
    # Split fills at one time, the feed skipping two that are not next to each other, and REST
    # failing for both: the gaps key (job, dataset, pair, start) must not fold them into one.
    fake.inject("http_502", method="Trades", count=2)
    first = _hole(fake, 10, 12)
    second = replace(_hole(fake, 12, 14), after_time=first.after_time)
    with collector.API(uri=fake.url) as api:
        filler = Filler(api, lambda fill: None, attempts=1)
        fills = [filler.fill(first), filler.fill(second)]
    starts = [f.gap["start"] for f in fills if f.gap]
    assert starts == [first.after_time, first.after_time + timedelta(microseconds=1)]
    store = Store.from_url(f"sqlite:///{tmp_path / 'gaps.sqlite'}")
    store.upgrade()
    store.write([f.record for f in fills])
    with store.engine.connect() as conn:
        reasons = [r[0] for r in conn.execute(text("SELECT reason FROM gaps ORDER BY start"))]
    store.engine.dispose()
    assert [r.split(" (")[0] for r in reasons] == ["trades 11", "trades 13"]
