"""The fake's market data: assets, pairs, prices that move, and the public methods' answers.

Prices move with the data time alone (a slow swing plus a faster wiggle), so a closed OHLC candle
is the same every time it is served and Spread rows of a second are all there once it has begun.
Each pair's public Trades is a :class:`Tape`: sequential ``trade_id``\\ s, strictly increasing
nanosecond times, grown at a rate or on demand.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from .history import History, Refusal, fmt, int_param, seconds

OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
OHLC_ROWS = 720
SPREAD_ROWS = 200
#: A public Trades ``since`` below this is in seconds, at or above it in nanoseconds.
SECONDS_BELOW = 10**12

# canonical name -> (altname, base, quote, price at t=0, price decimals)
PAIRS: dict[str, tuple[str, str, str, Decimal, int]] = {
    "XXBTZUSD": ("XBTUSD", "XXBT", "ZUSD", Decimal("64000"), 1),
    "XXBTZEUR": ("XBTEUR", "XXBT", "ZEUR", Decimal("59000"), 1),
    "XETHZUSD": ("ETHUSD", "XETH", "ZUSD", Decimal("3100"), 2),
    "XETHZEUR": ("ETHEUR", "XETH", "ZEUR", Decimal("2850"), 2),
    "SOLUSD": ("SOLUSD", "SOL", "ZUSD", Decimal("145"), 2),
    "USDTZUSD": ("USDTUSD", "USDT", "ZUSD", Decimal("1.0002"), 4),
    # A fiat pair, as on Kraken: EUR balances are valued in USD through it.
    "ZEURZUSD": ("EURUSD", "ZEUR", "ZUSD", Decimal("1.0850"), 5),
    # DOT has no USD pair here: valued through XBT (and DOT.S as DOT).
    "DOTXBT": ("DOTXBT", "DOT", "XXBT", Decimal("0.0001071"), 7),
}
# canonical name -> (altname, decimals). Staked (.S) and earn (.F) balances are assets of their
# own on Kraken, with ledger entries and running balances of their own.
ASSETS = {
    "XXBT": ("XBT", 10),
    "XETH": ("ETH", 10),
    "SOL": ("SOL", 10),
    "DOT": ("DOT", 10),
    "DOT.S": ("DOT.S", 10),
    "ETH.F": ("ETH.F", 10),
    "ZUSD": ("USD", 4),
    "ZEUR": ("EUR", 4),
    "USDT": ("USDT", 8),
}


#: Fiat currencies: shown with 2 decimals.
FIAT = frozenset({"ZUSD", "ZEUR"})


def price(pair: str, now: float, offset: float = 0.0) -> Decimal:
    """A price that moves: a slow swing plus a faster wiggle, to the pair's decimals."""
    base, decimals = PAIRS[pair][3], PAIRS[pair][4]
    t = now + offset
    factor = 1 + 0.03 * math.sin(t / 900) + 0.002 * math.sin(t / 7 + len(pair))
    return (base * Decimal(repr(factor))).quantize(Decimal(1).scaleb(-decimals))


def nanoseconds(t: float) -> int:
    return int(Decimal(repr(t)).scaleb(9))


def pairs(params: Mapping[str, str], default_all: bool = False) -> list[str]:
    """The canonical names of the ``pair`` parameter (altnames accepted)."""
    names = params.get("pair") or ""
    if not names:
        if default_all:
            return list(PAIRS)
        raise Refusal("EGeneral:Invalid arguments:pair")
    by_alt = {v[0]: k for k, v in PAIRS.items()}
    by_ws = {f"{ASSETS[v[1]][0]}/{ASSETS[v[2]][0]}": k for k, v in PAIRS.items()}
    found = []
    for name in names.split(","):
        canonical = name if name in PAIRS else by_alt.get(name.upper()) or by_ws.get(name)
        if canonical is None:
            raise Refusal("EQuery:Unknown asset pair")
        found.append(canonical)
    return found


def interval(params: Mapping[str, str]) -> int:
    minutes = int_param(params, "interval", 1)
    if minutes not in OHLC_INTERVALS:
        raise Refusal("EGeneral:Invalid arguments:interval")
    return minutes


class Tape(History):
    """One pair's public trades: strictly increasing nanosecond keys; ``rate`` trades a second of
    data time after ``t0`` (appended when due), or ``grow`` on demand."""

    def __init__(self, pair: str, *, t0: float, rate: float) -> None:
        super().__init__()
        self.pair, self.t0, self.rate = pair, t0, rate
        self.grown = 0  # trades appended by the growth rate so far

    def append(self, t: float) -> int:
        """Append one trade at ``t`` (after the last one, even when a test's clock runs backwards);
        returns its trade id."""
        key = nanoseconds(t)
        last = self.last()
        if last is not None:
            key = max(key, int(last) + 1)
        seq = len(self)
        mix = zlib.crc32(f"{self.pair}:{seq}".encode())
        volume = Decimal(mix % 5_000_000 + 1000).scaleb(-8)
        row = [
            fmt(price(self.pair, key / 1e9), PAIRS[self.pair][4]),
            fmt(volume, 8),
            key / 1e9,
            "b" if mix & 1 else "s",
            "m" if mix & 2 else "l",
            "",
            seq + 1,
        ]
        self.add(key, seq + 1, row)
        return seq + 1

    def seed(self, n: int, spacing: float) -> None:
        """``n`` trades before ``t0``, about ``spacing`` seconds apart."""
        for i in range(n):
            jitter = zlib.crc32(b"%d" % i) % 9973 / 9973 * spacing / 2
            self.append(self.t0 - (n - i) * spacing + jitter)

    def materialise(self, now: float) -> None:
        """Append what the growth rate has brought by ``now``: trade k arrives at t0 + k/rate."""
        if self.rate > 0:
            due = math.floor((now - self.t0) * self.rate)
            while self.grown < due:
                self.grown += 1
                self.append(self.t0 + self.grown / self.rate)


def candle(pair: str, step: int, t: int, now: float) -> list[Any]:
    """The OHLC row of the candle starting at ``t``, as of ``now``.

    Values depend on the time alone: once ``now`` reaches ``t + step`` the candle is closed and
    always the same; before, it is that same formula cut at ``now`` (so the open candle's close,
    high, low, volume and count move as the candle fills, and end at the closed values).
    """
    upto = min(now, t + step)
    samples = [t + step * k / 4 for k in range(5) if t + step * k / 4 <= upto] + [upto]
    prices = [price(pair, s) for s in samples]
    decimals = PAIRS[pair][4]
    mix = zlib.crc32(f"{pair}:{step}:{t}".encode())
    fraction = Decimal(repr((upto - t) / step))
    volume = Decimal(mix % 5000 + 100).scaleb(-2) * fraction
    count = int((mix % 300 + 1) * fraction)
    vwap = (prices[0] + prices[-1] + max(prices) + min(prices)) / 4
    return [
        t,
        fmt(prices[0], decimals),
        fmt(max(prices), decimals),
        fmt(min(prices), decimals),
        fmt(prices[-1], decimals),
        fmt(vwap, decimals),
        fmt(volume, 8),
        count,
    ]


def spread_rows(pair: str, second: int) -> list[list[Any]]:
    """The 0 to 3 Spread rows of one second, the same whenever asked."""
    mix = zlib.crc32(f"{pair}:{second}".encode())
    step = Decimal(1).scaleb(-PAIRS[pair][4])
    rows = []
    for i in range(mix % 4):
        bid = price(pair, second + i / 4)
        rows.append([second, str(bid), str(bid + step * (1 + (mix >> 8 + i) % 3))])
    return rows


def _since_ns(params: Mapping[str, str]) -> int | None:
    """Public Trades' ``since`` in nanoseconds: a number below 1e12 is taken as seconds."""
    text = params.get("since", "")
    if text == "":
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise Refusal("EGeneral:Invalid arguments:since") from None
    if not value.is_finite() or value < 0:
        raise Refusal("EGeneral:Invalid arguments:since")
    return int(value * 10**9) if value < SECONDS_BELOW else int(value)


class Market:
    """The public side of the exchange: every pair's trade tape, and the public methods' answers
    (``answer(method, params, now)``). Not thread-safe: the fake calls it under its lock."""

    #: the methods it answers
    METHODS = frozenset(
        {
            "Time",
            "SystemStatus",
            "Assets",
            "AssetPairs",
            "Ticker",
            "OHLC",
            "Depth",
            "Trades",
            "Spread",
        }
    )

    def __init__(self, *, t0: float, size: int, rate: float) -> None:
        self.tapes = {pair: Tape(pair, t0=t0, rate=rate) for pair in PAIRS}
        #: pairs Kraken no longer lists: AssetPairs leaves them out (and refuses them by name)
        self.delisted: set[str] = set()
        for tape in self.tapes.values():
            tape.seed(size, 2.0)

    def materialise(self, now: float) -> None:
        for tape in self.tapes.values():
            tape.materialise(now)

    def answer(self, method: str, params: Mapping[str, str], now: float) -> Any:
        handler: Callable[[Mapping[str, str], float], Any] = getattr(self, method)
        return handler(params, now)

    # -- the public methods -------------------------------------------------------------------

    def Time(self, params: Mapping[str, str], now: float) -> Any:
        stamp = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))
        return {"unixtime": int(now), "rfc1123": stamp}

    def SystemStatus(self, params: Mapping[str, str], now: float) -> Any:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"status": "online", "timestamp": stamp}

    def Assets(self, params: Mapping[str, str], now: float) -> Any:
        return {
            name: {
                "aclass": "currency",
                "altname": alt,
                "decimals": dec,
                # As Kraken: fiat shown with 2 decimals (ZUSD: decimals 4, display 2).
                "display_decimals": 2 if name in FIAT else min(dec, 5),
                "status": "enabled",
            }
            for name, (alt, dec) in ASSETS.items()
        }

    def AssetPairs(self, params: Mapping[str, str], now: float) -> Any:
        listed = [p for p in pairs(params, default_all=True) if p not in self.delisted]
        if params.get("pair") and len(listed) < len(pairs(params)):
            raise Refusal("EQuery:Unknown asset pair")
        return {
            p: {
                "altname": alt,
                "wsname": f"{ASSETS[b][0]}/{ASSETS[q][0]}",
                "base": b,
                "quote": q,
                "pair_decimals": dec,
                "cost_decimals": 5,
                "lot_decimals": 8,
                "ordermin": "0.0001",
                "status": "online",
            }
            for p in listed
            for alt, b, q, _, dec in [PAIRS[p]]
        }

    def Ticker(self, params: Mapping[str, str], now: float) -> Any:
        out = {}
        for p in pairs(params, default_all=True):
            last, step = price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
            low, high = price(p, now, -3600) - 20 * step, price(p, now, -1800) + 20 * step
            out[p] = {
                "a": [str(last + step), "1", "1.000"],
                "b": [str(last), "2", "2.000"],
                "c": [str(last), "0.00100000"],
                "v": ["812.3", "2409.7"],
                "p": [str(last), str(price(p, now, -600))],
                "t": [5120, 17001],
                "l": [str(min(low, last)), str(min(low, last))],
                "h": [str(max(high, last)), str(max(high, last))],
                "o": str(price(p, now, -43200)),
            }
        return out

    def OHLC(self, params: Mapping[str, str], now: float) -> Any:
        (p,) = pairs(params)[:1]
        step = interval(params) * 60
        open_at = int(now // step * step)
        first = open_at - (OHLC_ROWS - 1) * step
        since = seconds(params, "since")
        if since is not None:  # exclusive: the first candle starting after `since`
            first = max(first, math.floor(since / step) * step + step)
        first = min(first, open_at)  # the open candle is always there
        rows = [candle(p, step, t, now) for t in range(first, open_at + 1, step)]
        return {p: rows, "last": open_at - step}

    def Depth(self, params: Mapping[str, str], now: float) -> Any:
        (p,) = pairs(params)[:1]
        count = int_param(params, "count", 100)
        if not 1 <= count <= 500:
            raise Refusal("EGeneral:Invalid arguments:count")
        mid, step = price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
        asks = [[str(mid + (i + 1) * step), "0.500", int(now)] for i in range(count)]
        bids = [[str(mid - i * step), "0.750", int(now)] for i in range(count)]
        return {p: {"asks": asks, "bids": bids}}

    def Trades(self, params: Mapping[str, str], now: float) -> Any:
        (p,) = pairs(params)[:1]
        count = int_param(params, "count", 1000)
        if not 1 <= count <= 1000:
            raise Refusal("EGeneral:Invalid arguments:count")
        since = _since_ns(params)
        tape = self.tapes[p]
        # Without `since`, the most recent `count`.
        lo = max(0, len(tape) - count) if since is None else tape.bounds(since, None)[0]
        rows = tape.entries[lo : lo + count]
        if rows:
            last = str(tape.keys[lo + len(rows) - 1])
        else:
            last = str(since if since is not None else 0)
        return {p: rows, "last": last}

    def Spread(self, params: Mapping[str, str], now: float) -> Any:
        (p,) = pairs(params)[:1]
        since = seconds(params, "since")
        chunks: list[list[list[Any]]] = []
        total, second = 0, int(now)
        # Whole seconds, newest first, until about SPREAD_ROWS rows (an hour at most).
        while total < SPREAD_ROWS and second > int(now) - 3600:
            if since is not None and second <= since:
                break
            chunk = spread_rows(p, second)
            chunks.append(chunk)
            total += len(chunk)
            second -= 1
        rows = [row for chunk in reversed(chunks) for row in chunk]
        if not rows:
            return {p: rows, "last": int(since) if since is not None else int(now)}
        return {p: rows, "last": rows[-1][0]}
