"""The order book against a real Kraken session: every checksum verifies, and a lost message shows."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from collector.streams.book import Book, BookError, BookMismatch, checksum_digits

CAPTURE = Path(__file__).parent / "data" / "book-v2-btcusd-depth10.json"


@pytest.fixture(scope="module")
def session() -> dict[str, Any]:
    return json.loads(CAPTURE.read_text(), parse_float=Decimal)


def _book() -> Book:
    return Book("BTC/USD", depth=10, price_precision=1, qty_precision=8)


def _entries(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [u["data"][0] for u in session["updates"]]


def test_every_checksum_of_the_real_session_verifies(session: dict[str, Any]) -> None:
    book = _book()
    book.snapshot(session["init"]["data"][0])
    entries = _entries(session)
    for entry in entries:
        book.update(entry)
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is not None and ask is not None and bid < ask
        assert len(book.bids.prices) <= 10 and len(book.asks.prices) <= 10
    assert book.updates == len(entries) == 509
    assert book.checksum() == entries[-1]["checksum"]
    assert book.verified_at is not None and book.verified_at.isoformat().startswith("2023-07-30")


def test_a_lost_update_is_a_mismatch_naming_the_last_verified_time(
    session: dict[str, Any],
) -> None:
    book = _book()
    book.snapshot(session["init"]["data"][0])
    entries = _entries(session)
    lost = 7
    for entry in entries[:lost]:
        book.update(entry)
    verified = book.verified_at
    # The message after the lost one already shows it.
    with pytest.raises(BookMismatch) as caught:
        book.update(entries[lost + 1])
    assert caught.value.verified_at == verified is not None
    assert "does not match Kraken's" in str(caught.value)
    # Unusable until the next snapshot: an update is refused, a snapshot starts it again.
    with pytest.raises(BookError, match="before a snapshot"):
        book.update(entries[-1])
    book.snapshot(session["init"]["data"][0])
    assert book.synced


def test_a_changed_quantity_is_a_mismatch(session: dict[str, Any]) -> None:
    book = _book()
    book.snapshot(session["init"]["data"][0])
    entry = copy.deepcopy(_entries(session)[0])
    entry["asks"][2]["qty"] += Decimal("0.00000001")
    with pytest.raises(BookMismatch):
        book.update(entry)


def test_padded_numbers_give_the_same_checksum(session: dict[str, Any]) -> None:
    # Kraken has sent both 4.0 and 4.00000000: the checksum is of the value at the pair's precision.
    padded = copy.deepcopy(session["init"]["data"][0])
    for side in ("bids", "asks"):
        for level in padded[side]:
            level["qty"] = level["qty"].quantize(Decimal("0.00000001"))
    book = _book()
    book.snapshot(padded)
    assert book.checksum() == session["init"]["data"][0]["checksum"]


def test_floats_are_refused(session: dict[str, Any]) -> None:
    # A message parsed without parse_float=Decimal carries binary floats, whose digits are not
    # Kraken's: refused rather than checksummed.
    floats = json.loads(json.dumps(session["init"]["data"][0], default=float))
    with pytest.raises(BookError, match="float where an exact number belongs"):
        _book().snapshot(floats)


def _checksum(bids: list[int | str], asks: list[int | str]) -> int:
    """The checksum of a book holding these prices at qty 1."""
    book = Book("X/Y", depth=10, price_precision=1, qty_precision=1)
    for side, prices in ((book.bids, bids), (book.asks, asks)):
        for price in prices:
            side.set(Decimal(price), Decimal(1))
    return book.checksum()


def _side(prices: list[int | str]) -> list[dict[str, Decimal]]:
    return [{"price": Decimal(p), "qty": Decimal(1)} for p in prices]


def test_levels_cut_to_depth_after_the_message_is_applied() -> None:
    # Two better bids arrive in one message: the two worst fall out without a qty 0, and Kraken's
    # checksum is of the book after the cut.
    bids: list[int | str] = list(range(100, 90, -1))
    asks: list[int | str] = list(range(200, 210))
    book = Book("X/Y", depth=10, price_precision=1, qty_precision=1)
    book.snapshot(
        {
            "symbol": "X/Y",
            "bids": _side(bids),
            "asks": _side(asks),
            "checksum": _checksum(bids, asks),
        }
    )
    after: list[int | str] = [101, "100.5", *range(100, 92, -1)]
    book.update(
        {
            "symbol": "X/Y",
            "bids": _side([101, "100.5"]),
            "asks": [],
            "checksum": _checksum(after, asks),
        }
    )
    assert [lv.price for lv in book.levels() if lv.side == "bid"] == [Decimal(p) for p in after]
    assert [lv.rank for lv in book.levels() if lv.side == "ask"] == list(range(10))


def test_most_lost_messages_show_at_the_next_one(session: dict[str, Any]) -> None:
    # A lost message whose levels all fall outside the top 10, or are overwritten before they
    # count, changes nothing Kraken checksums: that is the checksum's reach, measured on the real
    # session. Of the first 100 updates, 84 lost alone show at the very next message (388 of 509
    # over the whole session, each at the next message too); the trade-id sequence and the periodic
    # snapshot bound what remains.
    entries = _entries(session)
    seen = 0
    for lost in range(100):
        book = _book()
        book.snapshot(session["init"]["data"][0])
        for entry in entries[:lost]:
            book.update(entry)
        try:
            book.update(entries[lost + 1])
        except BookMismatch:
            seen += 1
    assert seen == 84


def test_checksum_digits() -> None:
    assert checksum_digits(Decimal("0.00550000"), 8) == "550000"
    assert checksum_digits(Decimal("4.0"), 8) == "400000000"
    assert checksum_digits(Decimal("29430.2"), 1) == "294302"
    with pytest.raises(BookError, match="does not fit"):
        checksum_digits(Decimal("1.25"), 1)


@pytest.mark.parametrize(
    ("stamp", "why"),
    [
        ("2023-07-30T12:00:00.000001", "is not an RFC 3339 time"),  # no zone: whose noon?
        ("9999-01-01T00:00:00.000000Z", "is out of range"),
        ("2023-13-30T12:00:00.000001Z", "is not a time"),
    ],
)
def test_a_book_time_is_read_by_the_one_reader_of_feed_times(
    session: dict[str, Any], stamp: str, why: str
) -> None:
    """Before, a book read its timestamp with fromisoformat: one without a zone became a naive
    time that failed the feed's handler later, and the year 9999 was a row's taken_at."""
    book = _book()
    book.snapshot(session["init"]["data"][0])
    entry = copy.deepcopy(_entries(session)[0])
    entry["timestamp"] = stamp
    with pytest.raises(BookError, match=f"BTC/USD: timestamp {why}"):
        book.update(entry)
    good = _entries(session)[0]
    book = _book()
    book.snapshot(session["init"]["data"][0])
    book.update(good)
    assert book.updated_at is not None and book.updated_at.utcoffset() is not None


def test_a_book_time_an_hour_past_its_receipt_is_refused_before_any_level(
    session: dict[str, Any],
) -> None:
    """As every feed time: one far ahead would be the stored snapshot's taken_at."""
    from datetime import UTC, datetime, timedelta

    book = _book()
    book.snapshot(session["init"]["data"][0])
    before = book.levels()
    entry = copy.deepcopy(_entries(session)[0])
    received = datetime(2023, 7, 30, tzinfo=UTC)
    entry["timestamp"] = (received + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    with pytest.raises(BookError, match="is 7200 s ahead of its receipt"):
        book.update(entry, received)
    assert book.levels() == before  # refused before a level was applied
    entry["timestamp"] = (received + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    book.update(entry, received)
    assert book.updated_at == received + timedelta(minutes=1)
