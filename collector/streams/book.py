"""One pair's order book from Kraken's WebSocket v2 ``book`` channel, proven by its checksum.

Kraken sends a snapshot of the top ``depth`` levels, then updates; every message carries the CRC32
of the book as Kraken holds it after that message. The surprises, each of which breaks the checksum
of a book kept the obvious way (ccxt's "invalid checksum", cryptofeed's crossed books):

* All of a message's levels are applied first, and only then is the book cut to its depth. A level
  pushed below the depth by a better one gets no ``qty: 0``: it simply falls out.
* Prices and quantities are bare JSON numbers (``4.0`` in one capture, ``0.00550000`` in another).
  They are read as exact decimals (``connection.decoder``: a ``Decimal`` of each literal's text)
  and formatted with the pair's ``price_precision`` and ``qty_precision`` from the ``instrument``
  channel: through a float, ``0.1 + 0.2`` style digits change the string and so the checksum.
  Each level's digits are made once, when it is set; a checksum only joins twenty of them.
* The checksum covers the top 10 asks from the lowest price, then the top 10 bids from the highest,
  whatever the subscribed depth; each level is price then qty, with the ``.`` and the leading zeros
  removed.

Nothing here does I/O: the stream feeds messages in, and a mismatch raises :class:`BookMismatch`,
after which the book is unusable until the next snapshot (the stream resubscribes and records the
gap).
"""

from __future__ import annotations

import bisect
import decimal
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from .. import defaults
from ..numbers import NumberError, parse_integer, parse_rfc3339

__all__ = ["CHECKSUM_LEVELS", "DEPTHS", "Book", "BookError", "BookMismatch", "checksum_digits"]

#: The depths Kraken's v2 ``book`` channel accepts.
DEPTHS = (10, 25, 100, 500, 1000)

#: How many levels a side contributes to the checksum, whatever the subscribed depth.
CHECKSUM_LEVELS = 10

# Enough digits for any price or quantity Kraken sends (at most ~20 significant digits): quantize
# never rounds a value it is given in this context, it only pads.
_CONTEXT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Inexact])

Side = Literal["bid", "ask"]
_AHEAD = timedelta(seconds=defaults.WS_AHEAD)
_CRC_MAX = 2**32 - 1
# A price's or quantity's magnitude, at most 10**30 either way.
_DIGITS = 30
# 1, 0.1, … 1E-20: the quantum of each precision a Book takes, made once.
_QUANTA = tuple(Decimal(1).scaleb(-p) for p in range(21))


class BookError(Exception):
    """A message this book can't apply: wrong symbol, a bad level, an update before any snapshot."""


class BookMismatch(BookError):
    """The book's checksum differs from Kraken's: a message was lost or misapplied.

    ``expected`` is Kraken's, ``actual`` ours; ``verified_at`` the time of the last message whose
    checksum matched (the start of the gap), or None when the snapshot itself did not verify.
    """

    def __init__(
        self, symbol: str, expected: int, actual: int, verified_at: datetime | None
    ) -> None:
        super().__init__(
            f"{symbol}: book checksum {actual} does not match Kraken's {expected}"
            + (f" (last verified at {verified_at.isoformat()})" if verified_at else "")
        )
        self.symbol = symbol
        self.expected = expected
        self.actual = actual
        self.verified_at = verified_at


@dataclass(frozen=True)
class Level:
    """One price level of one side, as stored: its rank from the best price (0 is the best)."""

    side: Side
    rank: int
    price: Decimal
    qty: Decimal


def checksum_digits(value: Decimal, precision: int) -> str:
    """``value`` with ``precision`` decimals, the ``.`` and the leading zeros removed.

    Raises :class:`BookError` if the value has more decimals than the precision: Kraken never sends
    one, and rounding it would hide a wrong precision behind a checksum that never matches.
    """
    text = str(value)
    point = text.find(".")
    # Kraken's own digits, exactly ``precision`` of them after the point: already the text.
    if point > 0 and len(text) - point - 1 == precision and "E" not in text and text[0] != "-":
        return (text[:point] + text[point + 1 :]).lstrip("0")
    quantum = _QUANTA[precision] if 0 <= precision < len(_QUANTA) else Decimal(1).scaleb(-precision)
    try:
        fixed = value.quantize(quantum, context=_CONTEXT)
    except decimal.DecimalException as e:
        raise BookError(f"{value} does not fit {precision} decimals") from e
    return format(fixed, "f").replace(".", "").lstrip("0")


class _Side:
    """One side's levels: prices kept sorted (ascending) beside a price → qty map, and each
    level's checksum digits (price then qty), made once when the level is set: an update changes
    one to three levels, while every checksum reads twenty."""

    def __init__(self, *, best_is_highest: bool, price_precision: int, qty_precision: int) -> None:
        self.best_is_highest = best_is_highest
        self.price_precision = price_precision
        self.qty_precision = qty_precision
        self.prices: list[Decimal] = []
        self.qty: dict[Decimal, Decimal] = {}
        self.digits: dict[Decimal, str] = {}

    def clear(self) -> None:
        self.prices.clear()
        self.qty.clear()
        self.digits.clear()

    def set(self, price: Decimal, qty: Decimal) -> None:
        if qty == 0:
            if price in self.qty:
                del self.qty[price]
                del self.digits[price]
                del self.prices[bisect.bisect_left(self.prices, price)]
            return
        old = self.digits.get(price)
        digits = checksum_digits(price, self.price_precision) + checksum_digits(
            qty, self.qty_precision
        )
        if old is None:
            bisect.insort(self.prices, price)
        self.qty[price] = qty
        self.digits[price] = digits

    def cut(self, depth: int) -> None:
        """Drop the levels beyond ``depth`` from the best: the worst prices."""
        extra = len(self.prices) - depth
        if extra <= 0:
            return
        dropped = self.prices[-extra:] if not self.best_is_highest else self.prices[:extra]
        for price in dropped:
            del self.qty[price]
            del self.digits[price]
        if self.best_is_highest:
            del self.prices[:extra]
        else:
            del self.prices[-extra:]

    def best_prices(self, n: int) -> list[Decimal]:
        """The ``n`` best prices, best first (a slice of ``n``, whatever the depth)."""
        if not self.best_is_highest:
            return self.prices[:n]
        return self.prices[: -n - 1 : -1] if n else []

    def best(self, n: int) -> list[tuple[Decimal, Decimal]]:
        qty = self.qty
        return [(p, qty[p]) for p in self.best_prices(n)]

    def checksum_text(self) -> str:
        """The top :data:`CHECKSUM_LEVELS` levels' digits, best first."""
        digits = self.digits
        return "".join([digits[p] for p in self.best_prices(CHECKSUM_LEVELS)])


class Book:
    """One symbol's book at one depth, with the pair's precisions.

    Feed it each ``book`` message's entry for its symbol (``data[i]`` of a snapshot or update): it
    applies the levels, cuts to depth and verifies the checksum. After a :class:`BookMismatch` only a
    snapshot is accepted.
    """

    def __init__(
        self, symbol: str, *, depth: int, price_precision: int, qty_precision: int
    ) -> None:
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, not {depth}")
        if not (0 <= price_precision <= 20 and 0 <= qty_precision <= 20):
            raise ValueError("precisions are between 0 and 20 decimals")
        self.symbol = symbol
        self.depth = depth
        self.price_precision = price_precision
        self.qty_precision = qty_precision
        precisions = {"price_precision": price_precision, "qty_precision": qty_precision}
        self.bids = _Side(best_is_highest=True, **precisions)
        self.asks = _Side(best_is_highest=False, **precisions)
        self.synced = False
        #: The time of the last message applied (its own ``timestamp``), and of the last verified.
        self.updated_at: datetime | None = None
        self.verified_at: datetime | None = None
        self.updates = 0

    # -- messages -------------------------------------------------------------------------------

    def snapshot(self, entry: Mapping[str, Any], received_at: datetime | None = None) -> None:
        """Replace the book with a snapshot's levels and verify them. With ``received_at``, a
        ``timestamp`` more than ``WS_AHEAD`` past it is refused, as every feed time is."""
        self._check_symbol(entry)
        stamp = self._stamp(entry, received_at)
        self.bids.clear()
        self.asks.clear()
        self.synced = False
        self.verified_at = None
        self._apply(entry, stamp)
        self._verify(entry)

    def update(self, entry: Mapping[str, Any], received_at: datetime | None = None) -> None:
        """Apply an update's levels, cut to depth, verify. Raises BookMismatch on a wrong checksum."""
        self._check_symbol(entry)
        if not self.synced:
            raise BookError(f"{self.symbol}: an update before a snapshot that verified")
        self._apply(entry, self._stamp(entry, received_at))
        self.updates += 1
        self._verify(entry)

    # -- reading --------------------------------------------------------------------------------

    def checksum(self) -> int:
        """Kraken's CRC32 of this book's top 10 levels a side (asks first), from the digits each
        level got when it was set (:func:`checksum_digits`)."""
        text = self.asks.checksum_text() + self.bids.checksum_text()
        return zlib.crc32(text.encode("ascii"))

    def levels(self) -> list[Level]:
        """The top ``depth`` levels of each side, bids then asks, best first: the rows to store."""
        sides: tuple[tuple[Side, _Side], ...] = (("bid", self.bids), ("ask", self.asks))
        return [
            Level(name, rank, price, qty)
            for name, side in sides
            for rank, (price, qty) in enumerate(side.best(self.depth))
        ]

    def best_bid(self) -> Decimal | None:
        return self.bids.prices[-1] if self.bids.prices else None

    def best_ask(self) -> Decimal | None:
        return self.asks.prices[0] if self.asks.prices else None

    # -- internals ------------------------------------------------------------------------------

    def _check_symbol(self, entry: Mapping[str, Any]) -> None:
        if entry.get("symbol") != self.symbol:
            raise BookError(f"{self.symbol}: a message for {entry.get('symbol')!r}")

    def _stamp(self, entry: Mapping[str, Any], received_at: datetime | None) -> datetime | None:
        """The message's own time, read before any level is applied (the one reader of a feed's
        times: a zone, a bounded range, UTC; not an hour ahead of its receipt)."""
        stamp = entry.get("timestamp")
        if stamp is None:
            return None
        what = f"{self.symbol}: timestamp"
        try:
            t = parse_rfc3339(stamp, field=what)
        except NumberError as e:
            raise BookError(str(e)) from None
        if received_at is not None and t > received_at + _AHEAD:
            ahead = (t - received_at).total_seconds()
            raise BookError(f"{what} {stamp[:40]!r} is {ahead:.0f} s ahead of its receipt")
        return t

    def _apply(self, entry: Mapping[str, Any], stamp: datetime | None) -> None:
        symbol = self.symbol
        for key, side in (("bids", self.bids), ("asks", self.asks)):
            for price, qty in _levels(symbol, entry.get(key, ()), key):
                side.set(price, qty)
        self.bids.cut(self.depth)
        self.asks.cut(self.depth)
        if stamp is not None:
            self.updated_at = stamp

    def _verify(self, entry: Mapping[str, Any]) -> None:
        raw = entry.get("checksum")
        if type(raw) is int and 0 <= raw <= _CRC_MAX:  # as Kraken sends it
            expected = raw
        else:
            try:  # the bounded reader: int() of a Decimal 1E+1000000 holds the GIL for a minute
                expected = parse_integer(
                    str(raw) if isinstance(raw, Decimal) else raw, field="checksum", high=_CRC_MAX
                )
            except NumberError:
                raise BookError(f"{self.symbol}: a message without a valid checksum") from None
        actual = self.checksum()
        if actual != expected:
            self.synced = False
            raise BookMismatch(self.symbol, expected, actual, self.verified_at)
        self.synced = True
        self.verified_at = self.updated_at


def _levels(symbol: str, raw: Iterable[Any], side: str) -> Iterable[tuple[Decimal, Decimal]]:
    if not isinstance(raw, list):
        raise BookError(f"{symbol}: levels are not a list")
    if len(raw) > defaults.WS_BOOK_LEVELS:  # before any is read: each costs an insertion
        raise BookError(
            f"{symbol}: {len(raw)} {side} in one message, more than the "
            f"{defaults.WS_BOOK_LEVELS} of the deepest book"
        )
    for level in raw:
        if type(level) is not dict and not isinstance(level, Mapping):
            raise BookError(f"{symbol}: a level is not an object")
        price, qty = level.get("price"), level.get("qty")
        if type(price) is not Decimal or type(qty) is not Decimal:  # else: checked, as Decimals
            price, qty = _exact(symbol, price), _exact(symbol, qty)
        elif (
            not (price.is_finite() and qty.is_finite())
            or max(abs(price.adjusted()), abs(qty.adjusted())) > _DIGITS
        ):
            price, qty = _exact(symbol, price), _exact(symbol, qty)  # says which, and why
        if price <= 0 or qty < 0:
            raise BookError(f"{symbol}: level {price} x {qty} is out of range")
        yield price, qty


def _exact(symbol: str, value: Any) -> Decimal:
    # bool is an int: refuse it before the int case. Floats are refused: they mean the message was
    # parsed without Decimal for floats, and their digits are not Kraken's.
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise BookError(f"{symbol}: {type(value).__name__} where an exact number belongs")
    number = value if type(value) is Decimal else Decimal(value)  # a Decimal is immutable
    if not number.is_finite() or abs(number.adjusted()) > _DIGITS:
        raise BookError(f"{symbol}: {number!s:.40} is out of range")
    return number
