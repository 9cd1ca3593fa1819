"""Nothing missed on the tape (collector/streams/gaps.py): holes in the feed's trade ids found and
filled from REST Trades, against the fake's WebSocket and REST endpoints over real sockets; what
REST cannot fill is a ``gaps`` row naming the ids on each side."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

import collector
from collector.backoff import Backoff
from collector.streams.connection import Connection, StreamFailed, Subscribed, Subscription
from collector.streams.gaps import Fill, Filler, TradeIds
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for

WAIT = 20.0
PAIR = "XXBTZUSD"  # the name REST Trades and the tables use; the feed says BTC/USD
FAST = Backoff(first=0.01, cap=0.02)


class Tape:
    """The stream's side as the service will wire it: the feed's trades into the tracker, its
    holes into the filler, reconnects and stalls told to the tracker."""

    def __init__(self, fake: FakeKraken) -> None:
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


@pytest.fixture
def tape(fake: FakeKraken) -> Iterator[Tape]:
    t = Tape(fake)
    try:
        wait_for(lambda: t.subscribed == 1 and len(t.feed) == 50, WAIT)
        yield t
    finally:
        t.close()


def rest_ids(fake: FakeKraken, lo: int, hi: int) -> list[int]:
    """REST Trades' ids of the whole range ``lo..hi``: the ground truth."""
    return [row[6] for row in fake.public_trades("XBTUSD") if lo <= row[6] <= hi]


def test_a_disconnect_s_hole_is_found_by_id_and_filled_so_every_trade_is_there_once(
    fake: FakeKraken, tape: Tape
) -> None:
    assert fake.ws is not None
    last = tape.feed[-1]
    # Trades happen while the connection is cut: more than the 50 a snapshot brings back.
    fake.ws.inject("stall")
    fake.grow("public_trades", 60, pair="XBTUSD")
    fake.ws.inject("disconnect")
    wait_for(lambda: len(tape.fills) == 1, WAIT)
    (fill,) = tape.fills
    assert (fill.hole.pair, fill.hole.after, fill.hole.before) == (PAIR, last, last + 11)
    assert fill.hole.cause == "reconnect"
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
    fake: FakeKraken, tape: Tape
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
