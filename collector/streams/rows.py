"""What a stream stores: Kraken's WebSocket v2 messages as the rows the REST datasets store, in the
same tables under the same canonical pair names (issue 28; docs/streams.md).

* ``trade`` → ``trades`` rows keyed ``(pair, trade_id)``, exactly as REST Trades stores them
  (``side`` ``buy``/``sell``, ``order_type`` ``market``/``limit``, ``misc`` empty: v2 sends none;
  ``time`` to the microsecond, as the feed gives it), so a trade both the feed and a REST job
  deliver is one row.
* ``ticker`` → ``ticker`` rows (REST's columns; ``open`` is ``last - change``, v2 counting no
  trades gives ``trades_24h`` 0 as REST does for an answer without a count). Their key is
  ``(run_id, pair)``: a batch run keeps one ticker a pair, the latest.
* ``ohlc`` → ``ohlc`` rows; a candle is ``final`` once its interval has closed (REST's rule: a later
  candle exists). :class:`Candles` holds each pair's open candle and hands it back final, with the
  last values the feed sent, when a later one arrives or when the caller says its interval has
  ended: Kraken sends nothing more for a closed candle.
* a :class:`~collector.streams.book.Book` → ``book`` rows (:func:`book_rows`), the top ``depth``
  levels a side, every ``snapshot_every`` (:class:`Every`).

v2 names pairs ``BTC/USD`` where AssetPairs' ``wsname`` says ``XBT/USD`` (``DOGE`` for ``XDG``):
:class:`Symbols` maps them to the canonical names of the ``pairs`` table, and back.

Everything here is pure (no I/O, no clock): numbers go through :mod:`collector.numbers` (the bounded
exact reader; messages are parsed with a ``Decimal`` for each number with a fraction), times are
RFC 3339 read as UTC. An entry that can't be read is refused on its own, as one line in
:attr:`Read.refused`, and the message's other entries are still stored: a refused trade leaves a
hole in its pair's ``trade_id`` sequence, which REST fills like any other.

Why one module of this length: every channel's reader stands on the same few value readers
(``number``, ``moment``, the bounded text) and the same refusal of one entry alone, and the
typed way for trades (:func:`trade_values`) must give exactly what the general way gives (a test
holds them side by side); split by channel, each part would import the others' private readers.

How a stream's rows are traced: each batch is a run (:func:`batch`, job ``stream:NAME``) whose
``params`` name its connection, and each connection is a ``stream_connections`` row
(:func:`connection_row`), written with the batch in its transaction.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import msgspec

from .. import defaults
from ..datasets.market import TRADE_COLUMNS, stored_trade
from ..numbers import NumberError, bounded, parse_decimal, parse_integer, parse_rfc3339
from ..records import Prepared, RunRecord
from .book import Book

__all__ = [
    "TRADE_COLUMNS",
    "Candles",
    "Every",
    "Read",
    "RowError",
    "Symbols",
    "TradeEntry",
    "TradeMessage",
    "batch",
    "book_rows",
    "connection_row",
    "moment",
    "number",
    "ohlc_rows",
    "stored_trade",
    "ticker_rows",
    "trade_decoder",
    "trade_rows",
    "trade_values",
    "v2_symbol",
]

#: v2's asset names where REST's wsname says otherwise (v2 → REST).
_TO_REST = {"BTC": "XBT", "DOGE": "XDG"}
_TO_V2 = {rest: v2 for v2, rest in _TO_REST.items()}

_EXPONENT = defaults.NUMBER_EXPONENT

# Wide enough that a difference of two bounded numbers is exact (no rounding at 28 digits).
_EXACT = decimal.Context(prec=4 * defaults.NUMBER_EXPONENT + defaults.NUMBER_DIGITS)

_SIDES = frozenset({"buy", "sell"})
_ORDER_TYPES = frozenset({"market", "limit"})


class RowError(ValueError):
    """An entry that is not what its channel sends; ``str()`` is one line naming the field."""


def v2_symbol(wsname: str) -> str:
    """A pair's v2 symbol from its AssetPairs ``wsname``: ``XBT/USD`` → ``BTC/USD``."""
    return "/".join(_TO_V2.get(part, part) for part in wsname.split("/"))


def _wsname(symbol: str) -> str:
    return "/".join(_TO_REST.get(part, part) for part in symbol.split("/"))


class Symbols:
    """v2 symbols ↔ canonical pair names, from the ``pairs`` table's ``(pair, altname, wsname)``
    rows (a pair without a wsname, a dark pool, has no stream)."""

    def __init__(self, rows: Iterable[tuple[str, str | None, str | None]] = ()) -> None:
        self.by_symbol: dict[str, str] = {}
        self.by_pair: dict[str, str] = {}
        for pair, _, wsname in rows:
            if wsname:
                symbol = v2_symbol(wsname)
                self.by_symbol[symbol] = pair
                self.by_pair[pair] = symbol

    def __len__(self) -> int:
        return len(self.by_pair)

    def pair(self, symbol: str) -> str | None:
        """The canonical name of v2's ``symbol`` (``BTC/USD`` → ``XXBTZUSD``; the wsname
        ``XBT/USD`` too), or None when no known pair has it."""
        return self.by_symbol.get(symbol) or self.by_symbol.get(v2_symbol(_wsname(symbol)))

    def symbol(self, pair: str) -> str | None:
        """The v2 symbol of the canonical ``pair`` (``XXBTZUSD`` → ``BTC/USD``), or None."""
        return self.by_pair.get(pair)


@dataclass
class Read:
    """A message's rows, and one line for each entry that was not stored (and why)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


# -- reading one value --------------------------------------------------------------------------


def number(value: Any, what: str) -> Decimal:
    """An exact, bounded number from a message parsed with Decimal for floats (a ``Decimal``
    or an int; a float means the message lost its digits and is refused)."""
    if isinstance(value, Decimal):
        # What parse_decimal would make of its text: this very number, when bounded. Its text's
        # length bounds its digits, so a usual price or qty is checked without as_tuple().
        short = len(str(value)) <= defaults.NUMBER_DIGITS and value.is_finite()
        if (short and -_EXPONENT <= value.adjusted() <= _EXPONENT) or bounded(value):
            return value
        # Its own text (1E+5 stays short): parse_decimal says what is wrong with it.
        value = str(value)
    try:
        return parse_decimal(value, field=what)
    except NumberError as e:
        raise RowError(str(e)) from None


def _whole(value: Any, what: str, high: int = defaults.MAX_BIGINT) -> int:
    if type(value) is int and 0 <= value <= high:  # the usual case, as parse_integer takes it
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value) if abs(value.adjusted()) <= 20 else value  # 12.0 is 12; 1E+99 is not
    try:
        return parse_integer(value, field=what, high=high)
    except NumberError as e:
        raise RowError(str(e)) from None


def moment(value: Any, what: str, received_at: datetime | None = None) -> datetime:
    """An RFC 3339 time (``2023-09-25T07:49:37.708706Z``) as a UTC datetime, cut to the
    microsecond as REST's times are (:func:`collector.numbers.parse_time`). With
    ``received_at``, a time more than ``WS_AHEAD`` past it is refused: data from the future is
    no data, and one such candle or trade would stand before every real one after it."""
    t = _moment(value, what)
    if received_at is not None and t > received_at + timedelta(seconds=defaults.WS_AHEAD):
        ahead = (t - received_at).total_seconds()
        raise RowError(f"{what} {_shown(value)} is {ahead:.0f} s ahead of its receipt")
    return t


def _moment(value: Any, what: str) -> datetime:
    try:
        return parse_rfc3339(value, field=what)
    except NumberError as e:
        raise RowError(str(e)) from None


def _shown(value: Any) -> str:
    """A value as a refusal shows it: short text quoted, anything else by its type (a hostile
    entry's list may be megabytes)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:37]!r}..."
    return type(value).__name__


def _text(value: Any, what: str, allowed: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise RowError(f"{what} is {_shown(value)}, not one of {', '.join(sorted(allowed))}")
    return value


def _entries(data: Any, channel: str, read: Read) -> Iterable[Mapping[str, Any]]:
    if not isinstance(data, list):
        read.refused.append(f"{channel}: data is a {type(data).__name__}, not a list")
        return
    for entry in data:
        if isinstance(entry, Mapping):
            yield entry
        else:
            read.refused.append(f"{channel}: an entry is a {type(entry).__name__}, not an object")


def _pair(entry: Mapping[str, Any], symbols: Symbols) -> str:
    symbol = entry.get("symbol")
    pair = symbols.pair(symbol) if isinstance(symbol, str) else None
    if pair is None:
        raise RowError(f"symbol {_shown(symbol)} is no known pair's")
    return pair


def _each(
    data: Any,
    channel: str,
    symbols: Symbols,
    row: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> Read:
    """``row(entry, pair)`` for each entry of ``data``; an entry it refuses is a line."""
    read = Read()
    for entry in _entries(data, channel, read):
        try:
            read.rows.append(row(entry, _pair(entry, symbols)))
        except RowError as e:
            symbol = entry.get("symbol")
            name = symbol[:40] if isinstance(symbol, str) else _shown(symbol)
            read.refused.append(f"{channel} {name}: {e}")
    return read


# -- the channels -------------------------------------------------------------------------------


def trade_rows(data: Any, symbols: Symbols, received_at: datetime | None = None) -> Read:
    """``trades`` rows from a ``trade`` message's ``data`` (a snapshot's or an update's); with
    ``received_at``, a time too far past it is refused (:func:`moment`)."""

    def row(t: Mapping[str, Any], pair: str) -> dict[str, Any]:
        return {
            "pair": pair,
            "trade_id": _whole(t.get("trade_id"), "trade_id"),
            "time": moment(t.get("timestamp"), "timestamp", received_at),
            "price": number(t.get("price"), "price"),
            "volume": number(t.get("qty"), "qty"),
            "side": _text(t.get("side"), "side", _SIDES),
            "order_type": _text(t.get("ord_type"), "ord_type", _ORDER_TYPES),
            "misc": "",  # REST's misc flags; v2 sends none
        }

    return _each(data, "trade", symbols, row)


class TradeEntry(msgspec.Struct, gc=False):
    """One entry of a ``trade`` message as Kraken sends it, typed by :func:`trade_decoder`.
    Untracked by the garbage collector (``gc=False``): text and numbers make no cycle, and a
    feed makes thousands a second, each one otherwise counted toward the next collection."""

    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    ord_type: str
    trade_id: int
    timestamp: str


class TradeMessage(msgspec.Struct, gc=False):
    """A ``trade`` message whose every entry has :class:`TradeEntry`'s fields and types."""

    channel: str
    type: str
    data: list[TradeEntry]


def trade_decoder() -> Callable[[str], TradeMessage]:
    """A ``trade`` message's JSON straight into :class:`TradeMessage` (in C: no dict, no
    ``float_hook`` call per number; a number becomes a ``Decimal`` of its own digits, as
    :func:`~collector.streams.connection.decoder` makes it). Anything else (a heartbeat, an
    answer, an entry missing a field or of another type) is a ``msgspec.ValidationError`` or
    ``msgspec.DecodeError``, and goes the general way. One a connection: not thread-safe."""
    return msgspec.json.Decoder(TradeMessage).decode


def trade_values(
    data: list[TradeEntry], symbols: Symbols, received_at: datetime
) -> tuple[list[tuple[tuple[Any, ...], datetime]], list[str]]:
    """A typed ``trade`` message's entries as ``trades`` tuples in their stored text
    (:data:`TRADE_COLUMNS`, for :class:`~collector.records.Prepared`), each with its time, and
    the refusal lines of the entries not stored: what :func:`trade_rows` makes of them, without
    a dict a row. The usual entry (a known symbol, plain numbers of at most ``NUMBER_DIGITS``
    characters, Kraken's own time shape) is read here; any other takes :func:`trade_rows`, its
    checks and its refusals, so both ways store the same rows."""
    out: list[tuple[tuple[Any, ...], datetime]] = []
    refused: list[str] = []
    by_symbol = symbols.by_symbol
    latest = received_at + timedelta(seconds=defaults.WS_AHEAD)
    limit = defaults.NUMBER_DIGITS
    last: tuple[str, datetime, str] | None = None  # split fills share their timestamp: read once
    for e in data:
        pair = by_symbol.get(e.symbol)
        price, qty, stamp = str(e.price), str(e.qty), e.timestamp
        if (
            pair is not None
            and e.side in _SIDES
            and e.ord_type in _ORDER_TYPES
            and 0 <= e.trade_id <= defaults.MAX_BIGINT
            and len(price) <= limit
            and len(qty) <= limit
            and "E" not in price
            and "E" not in qty
            and e.price.is_finite()
            and e.qty.is_finite()
            and len(stamp) == 27  # 2023-09-25T07:49:37.708706Z
            and stamp[10] == "T"
            and stamp[26] == "Z"
        ):
            if last is not None and last[0] == stamp:
                t, text = last[1], last[2]
            else:
                try:
                    t = parse_rfc3339(stamp, field="timestamp")
                except NumberError:
                    t = latest + timedelta(1)  # the general way says why
                # Plain digits as they came are their stored text; the time's, as time_text
                # writes it (UTC, to the microsecond: the shape tested above).
                text = f"{stamp[:10]} {stamp[11:26]}+00:00"
                last = (stamp, t, text)
            if t <= latest:
                out.append(((pair, e.trade_id, text, price, qty, e.side, e.ord_type, ""), t))
                continue
        read = trade_rows([msgspec.structs.asdict(e)], symbols, received_at)
        refused += read.refused
        out += [(stored_trade(row), row["time"]) for row in read.rows]
    return out, refused


def ticker_rows(data: Any, symbols: Symbols, received_at: datetime) -> Read:
    """``ticker`` rows from a ``ticker`` message's ``data``; ``taken_at`` is the entry's own
    ``timestamp`` when it has one, else ``received_at``."""

    def row(t: Mapping[str, Any], pair: str) -> dict[str, Any]:
        last = number(t.get("last"), "last")
        stamp = t.get("timestamp")
        return {
            "pair": pair,
            "taken_at": received_at if stamp is None else moment(stamp, "timestamp", received_at),
            "ask": number(t.get("ask"), "ask"),
            "bid": number(t.get("bid"), "bid"),
            "last": last,
            "volume_24h": number(t.get("volume"), "volume"),
            "vwap_24h": number(t.get("vwap"), "vwap"),
            "trades_24h": 0,  # v2 counts no trades; REST stores 0 for an answer without a count
            "low_24h": number(t.get("low"), "low"),
            "high_24h": number(t.get("high"), "high"),
            # The price 24 hours ago: REST's ``o`` is today's opening, v2 gives the 24h change.
            "open": number(str(_EXACT.subtract(last, number(t.get("change"), "change"))), "open"),
        }

    return _each(data, "ticker", symbols, row)


def ohlc_rows(data: Any, symbols: Symbols, received_at: datetime | None = None) -> Read:
    """``ohlc`` rows from an ``ohlc`` message's ``data``: ``time`` is the interval's beginning,
    never ``final``: no message says a candle is closed (v2's ``timestamp`` is not the time of the
    data), and a final candle is never updated again, so only :class:`Candles` makes one final,
    from the feed's own data (a later candle), not from this machine's clock."""

    def row(c: Mapping[str, Any], pair: str) -> dict[str, Any]:
        interval = _whole(c.get("interval"), "interval", defaults.MAX_INTEGER)
        if interval == 0:
            raise RowError("interval is 0")
        begin = moment(c.get("interval_begin"), "interval_begin", received_at)
        return {
            "pair": pair,
            "interval": interval,
            "time": begin,
            "open": number(c.get("open"), "open"),
            "high": number(c.get("high"), "high"),
            "low": number(c.get("low"), "low"),
            "close": number(c.get("close"), "close"),
            "vwap": number(c.get("vwap"), "vwap"),
            "volume": number(c.get("volume"), "volume"),
            "count": _whole(c.get("trades"), "trades", defaults.MAX_INTEGER),
            "final": False,
        }

    return _each(data, "ohlc", symbols, row)


class Candles:
    """Each pair's and interval's open candle as the feed last gave it. Kraken sends nothing more
    for a candle once its interval is over (the next trade opens the next one), so the stream
    itself makes it final: :meth:`update` hands back a held candle final when a later one
    arrives, :meth:`closed` those whose interval has ended by a time (a quiet pair)."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, int], dict[str, Any]] = {}

    def update(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` (from :func:`ohlc_rows`), preceded by the held candles they close."""
        out: list[dict[str, Any]] = []
        for row in rows:
            key = (row["pair"], row["interval"])
            held = self.open.get(key)
            if held is not None and held["time"] < row["time"]:
                out.append({**held, "final": True})
                del self.open[key]
            if held is not None and held["time"] > row["time"]:
                out.append(row)  # a late word on an older candle: stored, not held
                continue
            self.open[key] = row
            out.append(row)
        return out

    def closed(self, now: datetime) -> list[dict[str, Any]]:
        """The held candles whose interval had ended by ``now``, final (and no longer held).
        ``now`` is the caller's: its clock, less a margin for a late update (a candle made final
        is never updated again)."""
        done = [
            key
            for key, row in self.open.items()
            if row["time"] + timedelta(minutes=row["interval"]) <= now
        ]
        return [{**self.open.pop(key), "final": True} for key in done]


def book_rows(book: Book, pair: str, taken_at: datetime | None = None) -> list[dict[str, Any]]:
    """``book`` rows: the top ``book.depth`` levels of each side of a book whose last message
    verified, at ``taken_at`` (default: the time of the last update applied, the message's own).
    A book waiting for a fresh snapshot (its checksum failed) has no rows: it is not known."""
    when = taken_at or book.updated_at
    if not book.synced or when is None:
        return []
    if when.tzinfo is None:  # a message's time without a zone: no UTC time to store
        raise RowError(f"{book.symbol}: the book's time {when.isoformat()} has no time zone")
    return [
        {
            "pair": pair,
            "taken_at": when.astimezone(UTC),
            "side": level.side,
            "level": level.rank,
            "price": number(level.price, "price"),
            "qty": number(level.qty, "qty"),
        }
        for level in book.levels()
    ]


class Every:
    """When a snapshot is due: once in each ``seconds``-long slot of the clock (slots from the
    epoch, so every collector's minute snapshots fall in the same minutes), for each key."""

    def __init__(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError("snapshot_every must be a positive number of seconds")
        self.seconds = seconds
        self.slots: dict[Any, int] = {}

    def due(self, key: Any, at: datetime) -> bool:
        """Whether ``key`` (a pair) takes a snapshot at ``at``: the first time in its slot."""
        slot = math.floor(at.timestamp() / self.seconds)
        if self.slots.get(key) == slot:
            return False
        self.slots[key] = slot
        return True


# -- tracing rows to their connection -----------------------------------------------------------


def connection_row(
    uid: str,
    stream: str,
    channel: str,
    url: str,
    opened_at: datetime,
    *,
    messages: int = 0,
    closed_at: datetime | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A ``stream_connections`` row: written with each batch of the connection, its
    ``closed_at``, ``reason`` and ``messages`` updated as they change."""
    return {
        "uid": uid,
        "stream": stream,
        "channel": channel,
        "url": url,
        "opened_at": opened_at,
        "closed_at": closed_at,
        "reason": reason,
        "messages": messages,
    }


def batch(
    stream: str,
    channel: str,
    connection: str,
    rows: Mapping[str, list[Any]],
    *,
    started_at: datetime,
    finished_at: datetime,
    messages: int,
) -> RunRecord:
    """One batch of a stream's rows as a run: job ``stream:NAME`` (never a job's name: those
    have no colon), method ``ws:CHANNEL``, ``params`` naming the ``connection`` (its
    ``stream_connections`` uid), ``pages`` the messages the batch holds. The store gives every
    row the batch's ``run_id``; a row stored before (a trade a REST run stored) keeps its own."""
    return RunRecord(
        job=f"stream:{stream}",
        method=f"ws:{channel}",
        params={"stream": stream, "channel": channel, "connection": connection},
        scheduled_at=started_at,
        started_at=started_at,
        finished_at=finished_at,
        pages=messages,
        # A Prepared list stays one (the store's fast way); RunRecord types rows as dicts.
        rows={
            name: cast(Any, table_rows) if isinstance(table_rows, Prepared) else list(table_rows)
            for name, table_rows in rows.items()
        },
    )
