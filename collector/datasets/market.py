"""The public market data: trades, candles, spreads and ticker snapshots.

* ``trades`` (Trades): ``since`` is the stored ``last`` (nanoseconds, exclusive); a full page means
  more are waiting, so the run asks again from the page's ``last``. Key ``(pair, trade_id)``.
* ``ohlc`` (OHLC): ``since`` is the stored ``last`` (the last *closed* candle); the still-open
  candle comes back every time and is upserted with ``final = false``, then finalised with its
  closed values. Kraken serves only the 720 most recent candles: older ones that were asked for
  (the job's ``since``, or the time since the last run) become a recorded gap.
* ``spread`` (Spread): ``since`` is the stored ``last``. Several rows can share a second, so the key
  is ``(pair, time, bid, ask)``: a quote repeated within its second is stored once (it says
  nothing new). Kraken keeps only about the last 200 rows, so spreads are lossy by nature.
* ``ticker`` (Ticker): a snapshot per run and pair, like balances. Only the pairs the job asked
  for are stored (an answer holding others, thousands of them, is not what the job collects, and
  the page and the valuation would use them); a job with no ``pair`` asks for, and keeps, all.

Why one module of this length: Trades, OHLC and Spread answers share one shape, read by
``_series`` and ``_row``, and Trades reads its pages three ways that must store the same rows (a
usual page a column at a time, ``_usual``; a usual row alone; any other row through
``checked_trade``): kept beside each other and the codes they share, so a test can hold them
equal and none imports another module's private readers.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from itertools import repeat
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table

from .. import defaults
from ..pairs import same, split
from ..records import Prepared, RunRecord, decimal_text, time_text
from ..schema import ExactDecimal, RunId, UTCDateTime, metadata
from .base import (
    PLAIN_MAX,
    Dataset,
    Page,
    bad,
    decimal,
    epoch,
    integer,
    mapping,
    text,
    timestamp,
)

#: A public Trades page when the job does not set ``count``.
TRADES_PAGE = 1000


def _series(
    record: RunRecord, result: Any, last: type | tuple[type, ...] = int
) -> tuple[str, list[Any], Any]:
    """``(pair, rows, last)`` from a Trades/OHLC/Spread answer: one pair's rows and ``last``
    (of the type ``last``; never a bool)."""
    answer = mapping(record, result, "result")
    pairs = [k for k in answer if k != "last"]
    if len(pairs) != 1 or not isinstance(answer[pairs[0]], list):
        raise bad(record, "answer does not hold one pair's rows")
    found = answer.get("last")
    if isinstance(found, bool) or not isinstance(found, last):
        raise bad(record, "answer has no last")
    # `last` becomes the next call's `since` and the stored cursor: it must be what Kraken sends
    # (whole seconds, or nanoseconds as digits), never text that would poison the next run.
    # Seconds (OHLC, Spread) within MAX_SECONDS, nanoseconds (Trades, its text) within the same
    # time: a later `last` becomes a cursor no date can hold (status and /healthz read it).
    top = defaults.MAX_SECONDS if last is int else defaults.MAX_SECONDS * 10**9
    if isinstance(found, int) and not 0 <= found < top:
        raise bad(record, f"last {found} is out of range")
    if isinstance(found, str) and not (
        found.isascii() and found.isdigit() and len(found) <= 20 and int(found) < top
    ):
        raise bad(record, f"last {found[:40]!r} is not a number")
    return pairs[0][:32], answer[pairs[0]], found


def _row(record: RunRecord, value: Any, size: int) -> list[Any]:
    if not isinstance(value, list) or len(value) < size:
        raise bad(record, f"row {value!r:.80} is not a list of {size}")
    return value


def _since_last(job: Any, cursor: Any) -> dict[str, Any]:
    """The job's params with ``since``: the stored ``last``, else the job's own ``since``, else
    none (what Kraken keeps)."""
    params = dict(job.params)
    if cursor is not None:
        params["since"] = cursor
    elif job.since is not None:
        params["since"] = int(job.since)
    return params


trades = Table(
    "trades",
    metadata,
    Column("pair", String(32), primary_key=True),
    Column("trade_id", BigInteger, primary_key=True),
    Column("time", UTCDateTime(), nullable=False),
    Column("price", ExactDecimal(), nullable=False),
    Column("volume", ExactDecimal(), nullable=False),
    Column("side", String(4), nullable=False),
    Column("order_type", String(6), nullable=False),
    Column("misc", String(64), nullable=False),
    Column("run_id", RunId, nullable=False),
)
Index("ix_trades_pair_time", trades.c.pair, trades.c.time)

_SIDES = {"b": "buy", "s": "sell"}
_ORDER_TYPES = {"m": "market", "l": "limit"}


#: Floats of seconds from here (2001-09-09) to ``2**32`` have ten digits before the point, so
#: their shortest text (never in exponent notation there) has its sixth decimal at index 16.
_TEN_DIGITS = 1e9
_FLOAT_SECONDS = float(2**32)
_MICROS = 17


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain, unsigned decimal text (``[0-9]+(\\.[0-9]+)?``) of at most
    ``PLAIN_MAX`` characters: what :func:`.base.decimal` reads at once, the same ``Decimal``;
    string methods in C instead of a regular expression (a third of the time)."""
    return (
        type(value) is str
        and len(value) <= PLAIN_MAX
        and value.isascii()
        and value.replace(".", "", 1).isdigit()
        and value[0] != "."
        and value[-1] != "."
    )


def _named(names: Mapping[str, str], code: str) -> str:
    """Kraken's one-letter code by its name (``b``: ``buy``); another code as it came."""
    return names.get(code) or code


class Trades(Dataset):
    name = "trades"
    table = trades
    methods = frozenset({"Trades"})
    key = ("pair", "trade_id")
    pair_column = "pair"
    incremental = True
    history = True
    prunable = True
    time_column = "time"

    def cursor_time(self, cursor: Any) -> datetime | None:
        """The cursor is Kraken's ``last`` in nanoseconds (as text)."""
        if cursor is None or isinstance(cursor, bool):
            return None
        try:
            return epoch(int(cursor) / 1e9)
        except (TypeError, ValueError, OverflowError):
            return None

    def first(self, job: Any, cursor: Any, now: datetime) -> tuple[dict[str, Any], Any]:
        if cursor is None:
            since = job.since if job.since is not None else now.timestamp()
            cursor = str(int(since * 1_000_000_000))  # "now" by default: from here on
        return {**job.params, "since": cursor}, cursor

    def decode(self, body: bytes) -> dict[str, Any] | None:
        """The answer's envelope with its rows as typed tuples, decoded in C (:data:`TradesAnswer`),
        or None for any other shape: the client then decodes the body the general way."""
        return typed_answer(body)

    def page(self, record: RunRecord, sent: Mapping[str, Any], result: Any, cursor: Any) -> Page:
        """The page's rows as :class:`~collector.records.Prepared` tuples of their stored text
        (:data:`TRADE_COLUMNS`): no dict a row, nothing for the writer to convert.

        A row of Kraken's usual shape (a decimal's own plain text, a float time from 2001 to
        2106, the one-letter codes, a short misc) becomes its tuple here, from the typed
        tuples :meth:`decode` makes or from the lists ``json`` makes alike; any other row takes
        :func:`checked_trade` (the checks of :func:`.base.decimal`, :func:`.base.timestamp`,
        :func:`.base.integer` and :func:`.base.text`) and :func:`stored_trade`, so every value is
        bounded, a bad one fails the page the same way, and both ways store the same rows."""
        pair, rows, last = _series(record, result, (str, int))
        blocks: dict[str, str] = {}  # "YYYY-MM-DD HH:MM:S" of a ten-second block: see _usual
        out = _usual(pair, rows, blocks)
        if out is None:  # some row is not of the usual shape: each row on its own
            out = Prepared(TRADE_COLUMNS)
            append, stored = out.append, _stored_text
            top, sides, kinds = defaults.MAX_BIGINT, _SIDES, _ORDER_TYPES
            for value in rows:
                kind_ = type(value)
                if kind_ is tuple or (kind_ is list and len(value) >= 7):
                    price, volume, when, side, kind, misc, trade_id = value[:7]
                    if (
                        type(trade_id) is int
                        and 0 <= trade_id <= top
                        and type(when) is float
                        and _TEN_DIGITS <= when < _FLOAT_SECONDS
                        and type(side) is str
                        and side in sides
                        and type(kind) is str
                        and kind in kinds
                        and type(misc) is str
                        and len(misc) <= 64
                        and "\x00" not in misc
                        and stored(price)
                        and stored(volume)
                    ):
                        shortest = repr(when)
                        day = blocks.get(shortest[:9]) or _block(blocks, shortest[:9])
                        when = f"{day}{shortest[9:17]:0<8}+00:00"
                        append(
                            (pair, trade_id, when, price, volume, sides[side], kinds[kind], misc)
                        )
                        continue
                append(stored_trade(checked_trade(record, pair, value)))
        last = str(last)
        full = len(rows) >= int(sent.get("count") or TRADES_PAGE)
        more = {**sent, "since": last} if full and rows and last != str(sent.get("since")) else None
        return Page(out, last, more)


#: A ``trades`` row's columns as :meth:`Trades.page` makes its tuples (the stream's too).
TRADE_COLUMNS = ("pair", "trade_id", "time", "price", "volume", "side", "order_type", "misc")

#: A Trades row as Kraken sends it: price, volume, time, side, order type, misc, trade id. The
#: time stays an int when it came as one (as ``json`` keeps it), so the checked path sees it so.
TradeRow = tuple[str, str, int | float, str, str, str, int]


class TradesAnswer(msgspec.Struct, gc=False):
    """A Trades answer whose every row has :data:`TradeRow`'s types (an E-error, a number where
    text was, a row of another length, NaN, invalid UTF-8: a ``msgspec`` error, and the general
    way)."""

    error: list[str]
    result: dict[str, list[TradeRow] | str | int]


# One decoder a thread: the runner's threads read pages at once.
_decoders = threading.local()


def typed_answer(body: bytes) -> dict[str, Any] | None:
    """A Trades answer's body as ``{"error": ..., "result": ...}`` with each row a tuple, or None
    when it is not of :class:`TradesAnswer`'s shape."""
    decode = getattr(_decoders, "decode", None)
    if decode is None:
        decode = _decoders.decode = msgspec.json.Decoder(TradesAnswer).decode
    try:
        answer = decode(body)
    except msgspec.DecodeError:  # ValidationError is one: any other shape
        return None
    return {"error": answer.error, "result": answer.result}


#: A page's decimal texts joined by commas, each plain, unsigned and without a leading zero that
#: ``Decimal`` would drop: then each is its own stored text (what :func:`_stored_text` says of
#: one). A comma inside a value is caught by counting them.
_STORED_TEXTS = re.compile(r"(?:(?:0|[1-9][0-9]*)(?:\.[0-9]+)?,)*")
_ROW_TYPES = frozenset({list, tuple})


def _usual(pair: str, rows: list[Any], blocks: dict[str, str]) -> Prepared | None:
    """The page's rows as :data:`TRADE_COLUMNS` tuples of their stored text when every row is of
    Kraken's usual shape, else None. Checked a column at a time in C (the types, the bounds of
    ids, times and texts, the codes, one regular expression over the prices and one over the
    volumes), so the one Python step a row is its time's text: the float's shortest text cut at
    the microsecond, exactly what :func:`.base.timestamp` and :func:`time_text` make of it.

    A float time from 2001 to 2106 has ten digits before its point, and a block of ten seconds
    starting at a multiple of ten lies within one minute: its "YYYY-MM-DD HH:MM:S" is made once
    (``blocks``), and a time's text is that, its last digit of seconds, and its microsecond."""
    if not rows or not set(map(type, rows)) <= _ROW_TYPES:
        return None
    try:
        prices, volumes, times, sides, kinds, miscs, ids = zip(*rows, strict=False)
        usual = (
            set(map(type, ids)) == _INT
            and min(ids) >= 0
            and max(ids) <= defaults.MAX_BIGINT
            and set(map(type, times)) == _FLOAT
            and math.isfinite(sum(times))  # not NaN, which min() and max() would pass over
            and min(times) >= _TEN_DIGITS
            and max(times) < _FLOAT_SECONDS
            and set(sides) <= _SIDES.keys()
            and set(kinds) <= _ORDER_TYPES.keys()
            and set(map(type, miscs)) == _STR
            and max(map(len, miscs)) <= 64
            and "\x00" not in "".join(miscs)
            and _texts(prices)
            and _texts(volumes)
        )
    except (ValueError, TypeError):  # rows shorter than seven, a list where a code was, ...
        return None
    if not usual:
        return None
    get = blocks.get
    texts = [f"{get(t[:9]) or _block(blocks, t[:9])}{t[9:17]:0<8}+00:00" for t in map(repr, times)]
    return Prepared(
        TRADE_COLUMNS,
        zip(
            repeat(pair),
            ids,
            texts,
            prices,
            volumes,
            map(_SIDES.__getitem__, sides),
            map(_ORDER_TYPES.__getitem__, kinds),
            miscs,
            strict=False,  # repeat() is endless; the columns are of one length (zip above)
        ),
    )


_INT, _FLOAT, _STR = frozenset({int}), frozenset({float}), frozenset({str})


def _texts(values: tuple[Any, ...]) -> bool:
    """Whether every one of ``values`` is decimal text that is its own stored text, of at most
    ``PLAIN_MAX`` characters (:func:`_stored_text` of each, in C)."""
    if set(map(type, values)) != _STR or max(map(len, values)) > PLAIN_MAX:
        return False
    joined = ",".join(values) + ","
    return joined.count(",") == len(values) and _STORED_TEXTS.fullmatch(joined) is not None


def _block(blocks: dict[str, str], first: str) -> str:
    """The "YYYY-MM-DD HH:MM:S" of the ten seconds whose first nine digits are ``first``."""
    text = blocks[first] = datetime.fromtimestamp(int(first) * 10, UTC).isoformat(" ")[:18]
    return text


def _stored_text(value: Any) -> bool:
    """Whether ``value`` is plain decimal text that is its own stored text
    (:func:`~collector.records.decimal_text` of its ``Decimal``): :func:`_plain`, and no
    leading zero ``Decimal`` would drop (``0.5`` and ``0`` keep theirs; ``012`` does not)."""
    return _plain(value) and (value[0] != "0" or len(value) == 1 or value[1] == ".")


def stored_trade(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A checked row (:func:`checked_trade`) as the tuple of its stored text
    (:data:`TRADE_COLUMNS`)."""
    return (
        row["pair"],
        row["trade_id"],
        time_text(row["time"]),
        decimal_text(row["price"]),
        decimal_text(row["volume"]),
        row["side"],
        row["order_type"],
        row["misc"],
    )


def checked_trade(record: RunRecord, pair: str, value: Any) -> dict[str, Any]:
    """One row of any shape through the checked reads; raises BadResponse for a bad one."""
    value = _row(record, list(value) if type(value) is tuple else value, 7)
    price, volume, when, side, kind, misc, trade_id = value[:7]
    if isinstance(trade_id, bool) or not isinstance(trade_id, int):
        raise bad(record, f"trade_id {trade_id!r:.40} is not an integer")
    side = _SIDES.get(side) if type(side) is str else None
    kind = _ORDER_TYPES.get(kind) if type(kind) is str else None
    return {
        "pair": pair,
        "trade_id": integer(record, trade_id, "trade_id"),
        "time": timestamp(record, when, "trade time"),
        "price": Decimal(price) if _plain(price) else decimal(record, price, "price"),
        "volume": Decimal(volume) if _plain(volume) else decimal(record, volume, "volume"),
        # Read as text first: a list or a mapping there is a bad answer, not a TypeError
        # from the lookup.
        "side": side or _named(_SIDES, text(record, value[3], "side", 4)),
        "order_type": kind or _named(_ORDER_TYPES, text(record, value[4], "order type", 6)),
        "misc": text(record, misc, "misc", 64),
    }


ohlc = Table(
    "ohlc",
    metadata,
    Column("pair", String(32), primary_key=True),
    Column("interval", Integer, primary_key=True),
    Column("time", UTCDateTime(), primary_key=True),
    Column("open", ExactDecimal(), nullable=False),
    Column("high", ExactDecimal(), nullable=False),
    Column("low", ExactDecimal(), nullable=False),
    Column("close", ExactDecimal(), nullable=False),
    Column("vwap", ExactDecimal(), nullable=False),
    Column("volume", ExactDecimal(), nullable=False),
    Column("count", Integer, nullable=False),
    Column("final", Boolean, nullable=False),
    Column("run_id", RunId, nullable=False),
)

_VALUES = ("open", "high", "low", "close", "vwap", "volume", "count", "final")


class OHLC(Dataset):
    name = "ohlc"
    table = ohlc
    methods = frozenset({"OHLC"})
    key = ("pair", "interval", "time")
    pair_column = "pair"
    update = _VALUES
    frozen = "final"
    incremental = True
    history = True
    prunable = True
    time_column = "time"

    def first(self, job: Any, cursor: Any, now: datetime) -> tuple[dict[str, Any], Any]:
        return _since_last(job, cursor), cursor

    def page(self, record: RunRecord, sent: Mapping[str, Any], result: Any, cursor: Any) -> Page:
        pair, rows, last = _series(record, result)
        interval = int(sent.get("interval") or 1)
        out, times = [], []
        for value in rows:
            t, o, h, low, c, vwap, volume, count = _row(record, value, 8)[:8]
            if isinstance(t, bool) or not isinstance(t, int):
                raise bad(record, f"candle time {t!r:.40} is not an integer")
            when = timestamp(record, t, "candle time")
            out.append(
                {
                    "pair": pair,
                    "interval": interval,
                    "time": when,
                    "open": decimal(record, o, "open"),
                    "high": decimal(record, h, "high"),
                    "low": decimal(record, low, "low"),
                    "close": decimal(record, c, "close"),
                    "vwap": decimal(record, vwap, "vwap"),
                    "volume": decimal(record, volume, "volume"),
                    # Not every answer counts its trades (0 then), but a count is what INTEGER holds.
                    "count": integer(record, count, "count", defaults.MAX_INTEGER)
                    if isinstance(count, int)
                    else 0,
                    "final": t <= last,
                }
            )
            times.append(t)
        gaps = []
        asked = sent.get("since")
        if asked is not None and out:
            step = interval * 60
            expected = (int(asked) // step + 1) * step  # since is exclusive
            first_served = times[0]
            if first_served > expected:
                gaps.append(
                    {
                        "job": record.job,
                        "dataset": self.name,
                        "pair": pair,
                        "start": datetime.fromtimestamp(expected, UTC),
                        "end": datetime.fromtimestamp(first_served, UTC),
                        "reason": f"Kraken serves only the 720 most recent {interval}m candles",
                    }
                )
        return Page(out, last, None, gaps)


spread = Table(
    "spread",
    metadata,
    Column("pair", String(32), primary_key=True),
    Column("time", UTCDateTime(), primary_key=True),
    Column("bid", ExactDecimal(), primary_key=True),
    Column("ask", ExactDecimal(), primary_key=True),
    Column("run_id", RunId, nullable=False),
)


class Spread(Dataset):
    name = "spread"
    table = spread
    methods = frozenset({"Spread"})
    key = ("pair", "time", "bid", "ask")
    pair_column = "pair"
    incremental = True
    history = True
    prunable = True
    time_column = "time"

    def first(self, job: Any, cursor: Any, now: datetime) -> tuple[dict[str, Any], Any]:
        return _since_last(job, cursor), cursor

    def page(self, record: RunRecord, sent: Mapping[str, Any], result: Any, cursor: Any) -> Page:
        pair, rows, last = _series(record, result)
        out = {}
        for value in rows:
            t, bid, ask = _row(record, value, 3)[:3]
            row = {
                "pair": pair,
                "time": timestamp(record, t, "spread time"),
                "bid": decimal(record, bid, "bid"),
                "ask": decimal(record, ask, "ask"),
            }
            out[(row["time"], row["bid"], row["ask"])] = row  # the same quote twice: once
        return Page(list(out.values()), last)


ticker = Table(
    "ticker",
    metadata,
    # A snapshot belongs to its run (like balances): it goes when the run is deleted.
    Column("run_id", RunId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("pair", String(32), primary_key=True),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("ask", ExactDecimal(), nullable=False),
    Column("bid", ExactDecimal(), nullable=False),
    Column("last", ExactDecimal(), nullable=False),
    Column("volume_24h", ExactDecimal(), nullable=False),
    Column("vwap_24h", ExactDecimal(), nullable=False),
    Column("trades_24h", BigInteger, nullable=False),
    Column("low_24h", ExactDecimal(), nullable=False),
    Column("high_24h", ExactDecimal(), nullable=False),
    Column("open", ExactDecimal(), nullable=False),
)
Index("ix_ticker_pair_taken_at", ticker.c.pair, ticker.c.taken_at)


class Ticker(Dataset):
    name = "ticker"
    table = ticker
    methods = frozenset({"Ticker"})
    key = ("run_id", "pair")
    pair_column = "pair"
    time_column = "taken_at"  # a snapshot: its rows go with their run (not prunable)

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        out = []
        asked = split(record.params["pair"]) if record.params.get("pair") else None
        for pair, t in mapping(record, result, "result").items():
            if asked is not None and not _asked(pair, asked):
                continue  # not what the job collects: never stored, priced or drawn
            t = mapping(record, t, pair)

            def first(field: str, index: int, t: dict[str, Any] = t, pair: str = pair) -> Any:
                value = t.get(field)
                if not isinstance(value, list) or len(value) <= index:
                    raise bad(record, f"{pair}.{field} is missing")
                return value[index]

            trades_24h = first("t", 1)
            out.append(
                {
                    "pair": pair[:32],
                    "taken_at": record.finished_at,
                    "ask": decimal(record, first("a", 0), f"{pair} ask"),
                    "bid": decimal(record, first("b", 0), f"{pair} bid"),
                    "last": decimal(record, first("c", 0), f"{pair} last"),
                    "volume_24h": decimal(record, first("v", 1), f"{pair} volume"),
                    "vwap_24h": decimal(record, first("p", 1), f"{pair} vwap"),
                    "trades_24h": integer(record, trades_24h, f"{pair} trades")
                    if isinstance(trades_24h, int)
                    else 0,
                    "low_24h": decimal(record, first("l", 1), f"{pair} low"),
                    "high_24h": decimal(record, first("h", 1), f"{pair} high"),
                    "open": decimal(record, t.get("o"), f"{pair} open"),
                }
            )
        return out


def _asked(pair: str, asked: list[str]) -> bool:
    """Whether the answer's key ``pair`` (Kraken's canonical name, ``XXBTZUSD``) is one of the
    job's ``asked`` names, in any of Kraken's spellings (``XBTUSD``, ``xbtusd``, ``XBT/USD``)."""
    return any(same(name, pair) for name in asked)
