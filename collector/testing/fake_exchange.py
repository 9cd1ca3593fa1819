"""A strict local stand-in for Kraken's REST API, for tests and for trying a job file offline.

It is as strict as the real exchange where a client can go wrong:

* ``API-Key`` and ``API-Sign`` are checked over the raw body and the requested path;
* each key's nonce must be strictly greater than the last one it accepted (``EAPI:Invalid nonce``);
* each key has Kraken's decaying call counter (``EAPI:Rate limit exceeded``, and calls made while
  over the limit still count, extending the penalty, as on Kraken); public calls can have a per-IP
  counter too (``EGeneral:Too many requests``);
* public endpoints answer GET only and private ones POST only (405 otherwise);
* state-changing methods are refused and counted, so a test can prove none was ever sent.

Answers have the shapes of ``shared/kraken-api.md``. Prices move with the data time, ``now()``
(``time.time`` unless the constructor gets another clock, so a test can drive it by hand).

**Histories.** Ledgers, TradesHistory, ClosedOrders and each pair's public Trades are real,
stable histories: every entry keeps its id, time and values once it exists, and new entries are
appended at the data time, ``growth`` entries a second (0 by default: static) or on demand with
:meth:`FakeKraken.grow`. The private three page as Kraken does: newest first, 50 a page from
``ofs``, ``count`` the size of the whole window, ``start`` exclusive and ``end`` inclusive (unix
seconds; an id-valued ``start``/``end`` is refused as ``EGeneral:Invalid arguments``). So paging
while entries arrive shifts every later page unless ``end`` is frozen, exactly Kraken's pitfall.
Several entries share a time (the two ledger entries of one trade, the fills of one order).
ClosedOrders windows and orders by ``closetm`` (``closetime=open`` windows by ``opentm``,
``both`` by either). Public Trades have sequential ``trade_id``s and strictly increasing
nanosecond times; ``since`` is exclusive, in nanoseconds, or in seconds when below 1e12.
OHLC candles and Spread rows are computed from the time alone: a closed candle is the same every
time it is served, the open candle depends on how far into it ``now()`` is and ends up with the
closed candle's values; Spread rows of a second are all there once that second has begun.

**Test hooks** (public, stable):

* ``fake.result(method, params=None)``: what ``method`` would answer now (its ``result``), without
  the HTTP layer, the checks or the counters; raises :class:`Refusal` for a Kraken error;
* ``fake.grow(history, n=1, pair=None)``: append ``n`` entries now to ``"ledger"``, ``"trades"``,
  ``"closed"`` or ``"public_trades"`` (one pair, or every pair); returns their ids;
* ground truth, as of now: ``fake.ledger()``, ``fake.my_trades()``, ``fake.closed_orders()``,
  ``fake.open_orders()`` (``{id: entry}``, newest first), ``fake.public_trades(pair)`` (rows,
  oldest first), ``fake.candle(pair, interval, t)`` (the candle starting at ``t``, final once
  closed) and ``fake.candles(pair, interval)`` (the closed candles OHLC can serve now).

**Faults** are injected on demand (:meth:`FakeKraken.inject`, or ``POST
/_fake/fault?kind=...&method=...&count=...`` from outside), every kind of ``FAULT_KINDS``:
``http_500``, ``http_502``, ``http_520`` (Cloudflare-like HTML pages), ``slow`` (``delay``
seconds, then a normal answer: long enough to be a timeout), ``reset`` (connection reset),
``truncated`` (cut JSON), ``not_json`` (an HTML page with status 200), ``kraken_error`` (any
Kraken error string, ``error=``) and ``raw`` (any ``body=`` with any ``status=``).

Run it with ``collector fake-exchange``; in Python::

    with FakeKraken(history={"ledger": 10_000}, growth={"ledger": 2.0}) as fake:
        key, secret = fake.add_key()
        api = collector.API(key, secret); api.uri = fake.url
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..methods import COSTLY_METHODS, PUBLIC_METHODS, STATE_CHANGING_METHODS, permission
from ..ratelimit import RateLimit, tier

logger = logging.getLogger(__name__)

FAULT_KINDS = frozenset(
    {
        "http_500",
        "http_502",
        "http_520",
        "slow",
        "reset",
        "truncated",
        "not_json",
        "kraken_error",
        "raw",
    }
)
PAGE_SIZE = 50
#: The histories that :meth:`FakeKraken.grow` and the ``history``/``growth`` knobs name.
HISTORIES = ("ledger", "trades", "closed", "public_trades")
DEFAULT_HISTORY = 120
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
}
# canonical name -> (altname, decimals)
ASSETS = {
    "XXBT": ("XBT", 10),
    "XETH": ("ETH", 10),
    "SOL": ("SOL", 10),
    "ZUSD": ("USD", 4),
    "ZEUR": ("EUR", 4),
    "USDT": ("USDT", 8),
}
BALANCES = {
    "ZUSD": "171288.6158",
    "XXBT": "1011.1908877900",
    "XETH": "25.0000000000",
    "ETH2.S": "198.3970800000",
    "SOL": "0.0000000000",
}

CLOUDFLARE_PAGE = """<!DOCTYPE html>
<html><head><title>api.kraken.com | {code}: {text}</title></head>
<body><div id="cf-wrapper"><h1>Error {code}</h1><p>{text}</p>
<p>Cloudflare Ray ID: 7d1c2f9a8b3e4f50</p></div></body></html>"""
CLOUDFLARE_TEXT = {
    500: "Internal server error",
    502: "Bad gateway",
    520: "Web server is returning an unknown error",
}


@dataclass
class Fault:
    """One injected fault: ``kind`` for the next ``count`` requests (of ``method`` if given)."""

    kind: str
    method: str | None = None
    count: int = 1
    error: str = "EService:Unavailable"
    delay: float = 5.0
    body: bytes = b""
    status: int = 200


class Refusal(Exception):
    """A Kraken error a method answers (e.g. ``EQuery:Unknown asset pair``); its text is the error."""


class _Counter:
    """Kraken's decaying counter, kept by the exchange."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit, self.clock = limit, clock
        self.level, self.at = 0.0, clock()

    def add(self, cost: float) -> bool:
        """Count a call; False if it took the counter over the maximum (the call is refused)."""
        now = self.clock()
        self.level = max(0.0, self.level - (now - self.at) * self.limit.decay) + cost
        self.at = now
        # A tiny tolerance for float rounding only; the client must really stay under max.
        return self.level <= self.limit.max + 1e-9


Key = float | int  # an entry's time: float seconds (4 decimals), or int nanoseconds


class _History:
    """One history, oldest first in memory (Kraken serves the private ones newest first).

    ``keys`` are the entries' times, never decreasing (strictly increasing when ``strict``), so a
    time window is two bisections and a page is a slice: no per-request rebuilding. Entries are
    never changed once appended; requests may hand them out without copying.
    """

    def __init__(
        self,
        make: Callable[[int, Any], tuple[Any, Any]],
        *,
        to_key: Callable[[float], Key],
        t0: float,
        rate: float,
        strict: bool = False,
        shares: Callable[[int], bool] = lambda seq: False,
    ) -> None:
        self.make, self.to_key, self.t0, self.rate = make, to_key, t0, rate
        self.strict, self.shares = strict, shares
        self.keys: list[Any] = []
        self.ids: list[Any] = []
        self.entries: list[Any] = []
        self.index: dict[Any, int] = {}
        self.grown = 0  # entries appended by the growth rate so far

    def append(self, t: float) -> Any:
        """Append one entry at ``t`` (held back to the last entry's time, so time never runs
        backwards even when a test's clock does); returns its id."""
        key = self.to_key(t)
        if self.keys:
            last = self.keys[-1]
            if self.strict:
                key = max(key, last + 1)
            elif self.shares(len(self.ids)):
                key = last
            else:
                key = max(key, last)
        ident, entry = self.make(len(self.ids), key)
        self.index[ident] = len(self.ids)
        self.keys.append(key)
        self.ids.append(ident)
        self.entries.append(entry)
        return ident

    def seed(self, n: int, spacing: float) -> None:
        """``n`` entries before ``t0``, about ``spacing`` seconds apart."""
        for i in range(n):
            jitter = zlib.crc32(b"%d" % i) % 9973 / 9973 * spacing / 2
            self.append(self.t0 - (n - i) * spacing + jitter)

    def materialise(self, now: float) -> None:
        """Append what the growth rate has brought by ``now``: entry k arrives at t0 + k/rate."""
        if self.rate > 0:
            due = math.floor((now - self.t0) * self.rate)
            while self.grown < due:
                self.grown += 1
                self.append(self.t0 + self.grown / self.rate)

    def bounds(self, after: Key | None, upto: Key | None) -> tuple[int, int]:
        """Positions ``lo:hi`` of the entries with ``after < time <= upto``."""
        lo = 0 if after is None else bisect.bisect_right(self.keys, after)
        hi = len(self.keys) if upto is None else bisect.bisect_right(self.keys, upto)
        return lo, max(lo, hi)


def _kid(prefix: str, text: str) -> str:
    """A Kraken-like id (``L4UESK-KG3EQ-UFO4T5``), derived from ``text`` so it is deterministic."""
    s = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"{prefix}{s[:5]}-{s[5:10]}-{s[10:16]}"


def _fmt(value: Decimal, places: int) -> str:
    """A decimal string with exactly ``places`` decimals, never in exponent form."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def _price(pair: str, now: float, offset: float = 0.0) -> Decimal:
    """A price that moves: a slow swing plus a faster wiggle, to the pair's decimals."""
    base, decimals = PAIRS[pair][3], PAIRS[pair][4]
    t = now + offset
    factor = 1 + 0.03 * math.sin(t / 900) + 0.002 * math.sin(t / 7 + len(pair))
    return (base * Decimal(repr(factor))).quantize(Decimal(1).scaleb(-decimals))


def _seconds4(t: float) -> float:
    return round(t, 4)


def _nanoseconds(t: float) -> int:
    return int(Decimal(repr(t)).scaleb(9))


POSTXID = "TKH2SE-M7IF5-CFI7LT"  # what Kraken puts in `postxid` of a trade that opened no position


class _Ledger:
    """Makes ledger entries with a running per-asset balance (balance = previous + amount - fee).

    A cycle of 12 entries: deposits, withdrawals, staking, a transfer, and two trades whose two
    entries (quote and base) share one time and one refid.
    """

    PATTERN = [
        ("deposit", "", "ZUSD", "1000"),
        ("trade", "", "ZUSD", "-cost"),
        ("trade", "", "XXBT", "0.01"),
        ("staking", "", "XETH", "0.0012"),
        ("deposit", "", "XXBT", "0.005"),
        ("withdrawal", "", "ZUSD", "-800"),
        ("trade", "", "XXBT", "-0.01"),
        ("trade", "", "ZUSD", "cost"),
        ("withdrawal", "", "XXBT", "-0.005"),
        ("transfer", "spottostaking", "XETH", "-0.001"),
        ("deposit", "", "ZUSD", "10"),
        ("withdrawal", "", "ZUSD", "-10"),
    ]
    FEES = {5: Decimal("5"), 8: Decimal("0.0001")}

    def __init__(self) -> None:
        self.balance = {
            "ZUSD": Decimal("100000"),
            "XXBT": Decimal("10"),
            "XETH": Decimal("50"),
        }

    @staticmethod
    def shares(seq: int) -> bool:
        return seq % 12 in (2, 7)  # the second entry of a trade

    def __call__(self, seq: int, t: float) -> tuple[str, dict[str, Any]]:
        step = seq % 12
        kind, subtype, asset, amount_text = self.PATTERN[step]
        places = ASSETS[asset][1]
        fee = self.FEES.get(step, Decimal(0))
        if amount_text.endswith("cost"):
            cost = _price("XXBTZUSD", t) * Decimal("0.01")
            amount = -cost if amount_text.startswith("-") else cost
            fee = cost * Decimal("0.0026")
        else:
            amount = Decimal(amount_text)
        amount, fee = (
            amount.quantize(Decimal(1).scaleb(-places)),
            fee.quantize(Decimal(1).scaleb(-places)),
        )
        self.balance[asset] += amount - fee
        if kind == "trade":  # both entries of one trade point at it
            refid = _kid("T", f"ledger-trade:{seq // 12}:{step // 6}")
        else:
            refid = _kid("Q" if kind == "deposit" else "A", f"ledger-ref:{seq}")
        entry = {
            "refid": refid,
            "time": t,
            "type": kind,
            "subtype": subtype,
            "aclass": "currency",
            "asset": asset,
            "amount": _fmt(amount, places),
            "fee": _fmt(fee, places),
            "balance": _fmt(self.balance[asset], places),
        }
        return _kid("L", f"ledger:{seq}"), entry


def _trade_group(seq: int) -> int:
    """The first fill of the order ``seq`` belongs to: every 4th order fills twice at once."""
    return seq - 1 if seq % 4 == 1 else seq


def _my_trade(seq: int, t: float) -> tuple[str, dict[str, Any]]:
    group = _trade_group(seq)
    pair = ("XXBTZUSD", "XETHZUSD", "XXBTZEUR")[group % 3]
    ordertype = "market" if group % 8 == 4 else "limit"
    price = _price(pair, t)
    vol = Decimal("0.01") * (1 + seq % 5)
    cost = price * vol
    maker = ordertype == "limit" and seq % 3 != 0
    fee = cost * (Decimal("0.0016") if maker else Decimal("0.0026"))
    entry = {
        "ordertxid": _kid("O", f"trade-order:{group}"),
        "postxid": POSTXID,
        "pair": pair,
        "time": t,
        "type": "buy" if group % 2 == 0 else "sell",
        "ordertype": ordertype,
        "price": _fmt(price, 5),
        "cost": _fmt(cost, 5),
        "fee": _fmt(fee, 5),
        "vol": _fmt(vol, 8),
        "margin": "0.00000",
        "leverage": "0",
        "misc": "",
        "trade_id": 40_000_000 + seq,
        "maker": maker,
    }
    return _kid("T", f"trade:{seq}"), entry


def _order(seq: int, closetm: float | None, opentm: float, status: str) -> dict[str, Any]:
    """An order as OpenOrders/ClosedOrders show it; ``status`` open, closed or canceled."""
    pair = ("XXBTZUSD", "XETHZUSD", "SOLUSD")[seq % 3]
    alt, decimals = PAIRS[pair][0], PAIRS[pair][4]
    side = "buy" if seq % 2 == 0 else "sell"
    limit = _price(pair, opentm)
    vol = _fmt(Decimal("0.01") * (1 + seq % 4), 8)
    filled = status == "closed"
    cost = limit * Decimal(vol) if filled else Decimal(0)
    order = {
        "refid": None,
        "userref": seq % 3,
        "status": status,
        "opentm": opentm,
        "starttm": 0,
        "expiretm": 0,
        "descr": {
            "pair": alt,
            "type": side,
            "ordertype": "limit",
            "price": _fmt(limit, decimals),
            "price2": "0",
            "leverage": "none",
            "order": f"{side} {vol} {alt} @ limit {_fmt(limit, decimals)}",
            "close": "",
        },
        "vol": vol,
        "vol_exec": vol if filled else "0.00000000",
        "cost": _fmt(cost, 5),
        "fee": _fmt(cost * Decimal("0.0016"), 5),
        "price": _fmt(limit if filled else Decimal(0), 5),
        "stopprice": "0.00000",
        "limitprice": "0.00000",
        "misc": "",
        "oflags": "fciq" if side == "buy" else "fcib",
    }
    if status != "open":
        order["closetm"] = closetm
        order["reason"] = None if filled else "User requested"
    return order


def _closed_order(seq: int, closetm: float) -> tuple[str, dict[str, Any]]:
    opentm = round(closetm - 60 - seq % 50 * 7, 4)
    status = "canceled" if seq % 7 == 3 else "closed"
    return _kid("O", f"closed:{seq}"), _order(seq, closetm, opentm, status)


def _closed_shares(seq: int) -> bool:
    return seq % 6 == 5


def _public_trade_maker(pair: str) -> Callable[[int, int], tuple[int, list[Any]]]:
    def make(seq: int, ns: int) -> tuple[int, list[Any]]:
        mix = zlib.crc32(f"{pair}:{seq}".encode())
        volume = Decimal(mix % 5_000_000 + 1000).scaleb(-8)
        row = [
            _fmt(_price(pair, ns / 1e9), PAIRS[pair][4]),
            _fmt(volume, 8),
            ns / 1e9,
            "b" if mix & 1 else "s",
            "m" if mix & 2 else "l",
            "",
            seq + 1,
        ]
        return seq + 1, row

    return make


class FakeKraken:
    """The fake exchange. Start it with ``with`` or :meth:`start`; its address is :attr:`url`.

    :param tier: the private counter (a tier name or :class:`RateLimit`), ``None`` for no limit
    :param public_limit: a per-IP counter for public calls, ``None`` (default) for no limit
    :param history: entries in each history at start, one number for all or a mapping from
        names of ``HISTORIES`` (the others keep 120); ``public_trades`` is per pair
    :param growth: entries appended per second of data time, likewise (default 0: static)
    :param ledger_size: the old name: entries in Ledgers, TradesHistory and ClosedOrders
    :param clock: monotonic seconds for the counters
    :param now: wall-clock seconds for the data (prices, candles, history times, growth)
    """

    def __init__(
        self,
        *,
        tier: str | RateLimit | None = "starter",
        public_limit: RateLimit | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int | Mapping[str, int] = DEFAULT_HISTORY,
        growth: float | Mapping[str, float] = 0.0,
        ledger_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        sizes = _per_history(history, DEFAULT_HISTORY, "history")
        if ledger_size is not None:
            sizes.update(ledger=ledger_size, trades=ledger_size, closed=ledger_size)
        rates = _per_history(growth, 0.0, "growth")
        if min(sizes.values()) < 0 or min(rates.values()) < 0:
            raise ValueError("history sizes and growth rates cannot be negative")
        self.limit = _tier_or_none(tier)
        self.public_limit = public_limit
        self.clock = clock
        self.now = now
        self.keys: dict[str, bytes] = {}
        #: the permissions of each key added with some (the others have all)
        self.permissions: dict[str, frozenset[str]] = {}
        self.last_nonce: dict[str, int] = {}
        self.balance: dict[str, str] | None = dict(BALANCES)
        self.calls: Counter[str] = Counter()  # every request, by method
        self.errors: Counter[str] = Counter()  # every Kraken error string answered
        self.accepted: Counter[str] = Counter()  # private calls that passed every check, by key
        self.spent: Counter[str] = Counter()  # their cost on the key's counter (Ledgers: 2)
        self.state_changing_calls = 0
        #: the last API-Sign values received (so tests can prove they never leak)
        self.signatures: deque[str] = deque(maxlen=10_000)
        self._counters: dict[str, _Counter] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._histories = self._make_histories(now(), sizes, rates)
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    def _make_histories(
        self, t0: float, sizes: dict[str, int], rates: dict[str, float]
    ) -> dict[str, _History]:
        found = {
            "ledger": _History(
                _Ledger(), to_key=_seconds4, t0=t0, rate=rates["ledger"], shares=_Ledger.shares
            ),
            "trades": _History(
                _my_trade,
                to_key=_seconds4,
                t0=t0,
                rate=rates["trades"],
                shares=lambda seq: seq % 4 == 1,
            ),
            "closed": _History(
                _closed_order, to_key=_seconds4, t0=t0, rate=rates["closed"], shares=_closed_shares
            ),
        }
        for name, spacing in (("ledger", 300.0), ("trades", 600.0), ("closed", 600.0)):
            found[name].seed(sizes[name], spacing)
        for pair in PAIRS:
            tape = _History(
                _public_trade_maker(pair),
                to_key=_nanoseconds,
                t0=t0,
                rate=rates["public_trades"],
                strict=True,
            )
            tape.seed(sizes["public_trades"], 2.0)
            found["public_trades:" + pair] = tape
        # Open orders don't grow: two resting limit orders placed an hour before the start.
        self._open = {
            _kid("O", f"open:{i}"): _order(i, None, round(t0 - 3600 + 600 * i, 4), "open")
            for i in range(2)
        }
        return found

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKraken:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-kraken", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        """Release the listening socket (after :meth:`serve_forever` has returned)."""
        self._stopping.set()
        self._server.server_close()

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a slow fault
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> FakeKraken:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ------------------------------------------------------------------------------

    def add_key(
        self,
        key: str | None = None,
        secret: str | None = None,
        *,
        permissions: Iterable[str] | None = None,
    ) -> tuple[str, str]:
        """Register an API key (a fresh random pair when none is given); returns (key, secret).

        :param permissions: the key's permissions, as Kraken names them (``"Query Funds"``,
            ``"Query Ledger Entries"``, ... see :data:`collector.methods.COLLECTOR_PERMISSIONS`);
            a private method that needs another is answered ``EGeneral:Permission denied``, as
            Kraken does. None (default): every permission.
        """
        key = key or base64.b64encode(os.urandom(42)).decode()
        secret = secret or base64.b64encode(os.urandom(64)).decode()
        with self._lock:
            self.keys[key] = base64.b64decode(secret)
            if permissions is None:
                self.permissions.pop(key, None)
            else:
                self.permissions[key] = frozenset(permissions)
        return key, secret

    def inject(
        self, kind: str, *, method: str | None = None, count: int = 1, **options: Any
    ) -> None:
        """Make the next ``count`` requests (of ``method``, if given) fail with ``kind``.

        Kinds: ``http_500``, ``http_502``, ``http_520`` (HTML pages), ``slow`` (``delay`` seconds,
        default 5, then a normal answer), ``reset`` (connection reset, no answer), ``truncated``
        (cut JSON), ``not_json`` (HTML with status 200), ``kraken_error`` (``error=`` any string),
        ``raw`` (``body=`` any bytes, with ``status=``, default 200).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(sorted(FAULT_KINDS))}")
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        with self._lock:
            self._faults.append(Fault(kind, method, count, **options))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in (None, method):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- test hooks: growth and ground truth --------------------------------------------------

    def grow(self, history: str, n: int = 1, *, pair: str | None = None) -> list[Any]:
        """Append ``n`` entries to ``history`` (one of ``HISTORIES``) at the data time now.

        All ``n`` private entries share that one time; public trades get strictly increasing
        nanoseconds. ``pair`` picks one pair's public trades (default: every pair's). Returns the
        new ids (trade ids, ints, for public trades).
        """
        if history not in HISTORIES:
            raise ValueError(f"unknown history {history!r}; one of {', '.join(HISTORIES)}")
        if history == "public_trades":
            names = [f"public_trades:{p}" for p in (_pairs({"pair": pair}) if pair else PAIRS)]
        elif pair is not None:
            raise ValueError("pair= is for public_trades only")
        else:
            names = [history]
        now = self.now()
        with self._lock:
            self._sync(now)
            return [self._histories[name].append(now) for name in names for _ in range(n)]

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Every ledger entry as of now, ``{ledger_id: entry}``, newest first."""
        return self._truth("ledger")

    def my_trades(self) -> dict[str, dict[str, Any]]:
        """Every TradesHistory trade as of now, ``{txid: trade}``, newest first."""
        return self._truth("trades")

    def closed_orders(self) -> dict[str, dict[str, Any]]:
        """Every ClosedOrders order as of now, ``{txid: order}``, newest close first."""
        return self._truth("closed")

    def open_orders(self) -> dict[str, dict[str, Any]]:
        """The open orders, ``{txid: order}`` (they never change)."""
        return _copy(self._open)

    def public_trades(self, pair: str) -> list[list[Any]]:
        """Every public trade of ``pair`` as of now, rows as Trades serves them, oldest first."""
        (canonical,) = _pairs({"pair": pair})
        now = self.now()
        with self._lock:
            self._sync(now)
            return [list(row) for row in self._histories["public_trades:" + canonical].entries]

    def candle(self, pair: str, interval: int, t: int) -> list[Any]:
        """The OHLC row of the candle starting at ``t``: final once closed, else as of now."""
        (canonical,) = _pairs({"pair": pair})
        step = _interval({"interval": str(interval)}) * 60
        if t % step:
            raise ValueError(f"{t} is not the start of a {interval}-minute candle")
        return _candle(canonical, step, t, self.now())

    def candles(self, pair: str, interval: int) -> list[list[Any]]:
        """The closed candles OHLC can serve now (the 719 before the open one), oldest first."""
        (canonical,) = _pairs({"pair": pair})
        step = _interval({"interval": str(interval)}) * 60
        now = self.now()
        open_at = int(now // step * step)
        first = open_at - (OHLC_ROWS - 1) * step
        return [_candle(canonical, step, t, now) for t in range(first, open_at, step)]

    def counter_level(self, key: str) -> float:
        """The key's call counter now, as the exchange keeps it (0 before its first call)."""
        with self._lock:
            counter = self._counters.get(key)
            if counter is None:
                return 0.0
            elapsed = self.clock() - counter.at
            return max(0.0, counter.level - elapsed * counter.limit.decay)

    def result(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """What ``method`` would answer now: the envelope's ``result`` (``None`` where Kraken
        omits it), as a client decodes it. No HTTP, no key, counter or fault: a look at the data.

        Raises :class:`Refusal` with the Kraken error the call would get.
        """
        if method in STATE_CHANGING_METHODS:
            raise Refusal("EGeneral:Permission denied")
        text = {k: str(v) for k, v in (params or {}).items()}
        return json.loads(json.dumps(self._compute(method, text, method not in PUBLIC_METHODS)))

    def _truth(self, name: str) -> dict[str, dict[str, Any]]:
        now = self.now()
        with self._lock:
            self._sync(now)
            history = self._histories[name]
            pairs = list(zip(history.ids, history.entries, strict=True))
        return _copy(dict(reversed(pairs)))

    def _sync(self, now: float) -> None:
        """Materialise the growth due by ``now`` in every history (the caller holds the lock)."""
        for history in self._histories.values():
            history.materialise(now)

    # -- the exchange -------------------------------------------------------------------------

    def check_private(
        self, key: str | None, sign: str | None, path: str, body: bytes
    ) -> str | None:
        """The error a private request earns before its method runs, or None."""
        form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        secret = self.keys.get(key or "")
        if secret is None:
            return "EAPI:Invalid key"
        try:
            nonce = int(form.get("nonce", ""))
        except ValueError:
            return "EAPI:Invalid nonce"
        digest = hashlib.sha256(form["nonce"].encode() + body).digest()
        expected = base64.b64encode(
            hmac.new(secret, path.encode() + digest, hashlib.sha512).digest()
        ).decode()
        if sign:
            self.signatures.append(sign)
        if not sign or not hmac.compare_digest(expected, sign):
            return "EAPI:Invalid signature"
        assert key is not None
        with self._lock:
            if not 0 < nonce < 2**64 or nonce <= self.last_nonce.get(key, 0):
                return "EAPI:Invalid nonce"
            self.last_nonce[key] = nonce
            method = path.rsplit("/", 1)[-1]
            units = 2 if method in COSTLY_METHODS else 1
            if self.limit is not None:
                counter = self._counters.get(key)
                if counter is None:
                    counter = self._counters[key] = _Counter(self.limit, self.clock)
                if not counter.add(units):
                    return "EAPI:Rate limit exceeded"
            # A key without the method's permission (the key of a rehearsal of going live).
            allowed = self.permissions.get(key)
            needed = permission(path.split("/private/", 1)[-1])
            if allowed is not None and needed is not None and needed not in allowed:
                return "EGeneral:Permission denied"
            self.accepted[key] += 1
            self.spent[key] += units
        return None

    def check_public(self, client_ip: str) -> str | None:
        if self.public_limit is None:
            return None
        with self._lock:
            counter = self._counters.get("ip:" + client_ip)
            if counter is None:
                counter = self._counters["ip:" + client_ip] = _Counter(
                    self.public_limit, self.clock
                )
            return None if counter.add(1) else "EGeneral:Too many requests"

    def answer(self, method: str, params: dict[str, str], private: bool) -> dict[str, Any]:
        """The JSON envelope for a call that passed the checks."""
        if method in STATE_CHANGING_METHODS:
            with self._lock:
                self.state_changing_calls += 1
            return {"error": ["EGeneral:Permission denied"]}
        try:
            result = self._compute(method, params, private)
        except Refusal as refusal:
            return {"error": [str(refusal)]}
        if result is None:  # an empty account's Balance: Kraken omits `result`
            return {"error": []}
        return {"error": [], "result": result}

    def _compute(self, method: str, params: dict[str, str], private: bool) -> Any:
        handler = getattr(_Data, method.replace("/", "_"), None)
        if handler is None or (method in PUBLIC_METHODS) == private:
            raise Refusal("EGeneral:Unknown method")
        now = self.now()
        if method not in _HISTORY_METHODS:
            return handler(self, params, now)
        # One consistent look: growth due by `now` is appended and the page cut under the lock.
        with self._lock:
            self._sync(now)
            return handler(self, params, now)


def _per_history(value: float | Mapping[str, Any], default: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return dict.fromkeys(HISTORIES, value)
    unknown = set(value) - set(HISTORIES)
    if unknown:
        raise ValueError(f"{what}: unknown histories {sorted(unknown)}; use {', '.join(HISTORIES)}")
    return {name: value.get(name, default) for name in HISTORIES}


def _copy(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Copies the caller may change without changing the fake (orders nest ``descr``)."""
    return {
        k: {f: dict(v) if isinstance(v, dict) else v for f, v in e.items()}
        for k, e in entries.items()
    }


def _tier_or_none(value: str | RateLimit | None) -> RateLimit | None:
    return None if value is None else tier(value)


def _pairs(params: Mapping[str, str], default_all: bool = False) -> list[str]:
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


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(params.get(name, default))
    except ValueError:
        raise Refusal(f"EGeneral:Invalid arguments:{name}") from None


def _interval(params: Mapping[str, str]) -> int:
    interval = _int(params, "interval", 1)
    if interval not in OHLC_INTERVALS:
        raise Refusal("EGeneral:Invalid arguments:interval")
    return interval


def _seconds(params: Mapping[str, str], name: str) -> float | None:
    """A time parameter in unix seconds (int or float), or None when absent.

    Kraken also takes a ledger or trade id for ``start``/``end``; the fake refuses ids as
    ``EGeneral:Invalid arguments:<name>`` so a client that relies on them is caught.
    """
    text = params.get(name, "")
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise Refusal(f"EGeneral:Invalid arguments:{name}") from None
    if not math.isfinite(value) or value < 0:
        raise Refusal(f"EGeneral:Invalid arguments:{name}")
    return value


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


Window = Callable[[dict[str, Any], float | None, float | None], bool]


def _within(value: float, start: float | None, end: float | None) -> bool:
    return (start is None or value > start) and (end is None or value <= end)


def _window_page(
    history: _History,
    params: Mapping[str, str],
    *,
    match: Callable[[dict[str, Any]], bool] | None = None,
    window: Window | None = None,
) -> tuple[dict[str, Any], int]:
    """Kraken's paging: the entries with ``start < time <= end`` (or ``window``) that ``match``,
    newest first, 50 from ``ofs``; and ``count``, how many there are in all."""
    start, end = _seconds(params, "start"), _seconds(params, "end")
    ofs = _int(params, "ofs", 0)
    if ofs < 0:
        raise Refusal("EGeneral:Invalid arguments:ofs")
    if match is None and window is None:  # the common case: bisect and slice, whatever the size
        lo, hi = history.bounds(start, end)
        top = hi - ofs
        chosen: Any = range(top - 1, max(lo, top - PAGE_SIZE) - 1, -1)
        count = hi - lo
    else:
        if window is None:
            lo, hi = history.bounds(start, end)
        else:  # another time than the history's own: it is never earlier, so start still bounds
            lo, hi = history.bounds(start, None)
        positions = [
            i
            for i in range(hi - 1, lo - 1, -1)
            if (window is None or window(history.entries[i], start, end))
            and (match is None or match(history.entries[i]))
        ]
        chosen, count = positions[ofs : ofs + PAGE_SIZE], len(positions)
    return {history.ids[i]: history.entries[i] for i in chosen}, count


def _ledger_filter(params: Mapping[str, str]) -> Callable[[dict[str, Any]], bool] | None:
    by_alt = {alt: name for name, (alt, _) in ASSETS.items()}
    assets = params.get("asset") or "all"
    kind = params.get("type") or "all"
    aclass = params.get("aclass") or "currency"
    if assets == "all" and kind == "all" and aclass == "currency":
        return None
    wanted = None if assets == "all" else {by_alt.get(a, a) for a in assets.split(",")}
    return lambda e: (
        (wanted is None or e["asset"] in wanted)
        and kind in ("all", e["type"])
        and aclass == e["aclass"]
    )


def _candle(pair: str, step: int, t: int, now: float) -> list[Any]:
    """The OHLC row of the candle starting at ``t``, as of ``now``.

    Values depend on the time alone: once ``now`` reaches ``t + step`` the candle is closed and
    always the same; before, it is that same formula cut at ``now`` (so the open candle's close,
    high, low, volume and count move as the candle fills, and end at the closed values).
    """
    upto = min(now, t + step)
    samples = [t + step * k / 4 for k in range(5) if t + step * k / 4 <= upto] + [upto]
    prices = [_price(pair, s) for s in samples]
    decimals = PAIRS[pair][4]
    mix = zlib.crc32(f"{pair}:{step}:{t}".encode())
    fraction = Decimal(repr((upto - t) / step))
    volume = Decimal(mix % 5000 + 100).scaleb(-2) * fraction
    count = int((mix % 300 + 1) * fraction)
    vwap = (prices[0] + prices[-1] + max(prices) + min(prices)) / 4
    return [
        t,
        _fmt(prices[0], decimals),
        _fmt(max(prices), decimals),
        _fmt(min(prices), decimals),
        _fmt(prices[-1], decimals),
        _fmt(vwap, decimals),
        _fmt(volume, 8),
        count,
    ]


def _spread_rows(pair: str, second: int) -> list[list[Any]]:
    """The 0 to 3 Spread rows of one second, the same whenever asked."""
    mix = zlib.crc32(f"{pair}:{second}".encode())
    step = Decimal(1).scaleb(-PAIRS[pair][4])
    rows = []
    for i in range(mix % 4):
        bid = _price(pair, second + i / 4)
        rows.append([second, str(bid), str(bid + step * (1 + (mix >> 8 + i) % 3))])
    return rows


_HISTORY_METHODS = frozenset({"Ledgers", "TradesHistory", "ClosedOrders", "Trades"})
_TRADE_TYPES = ("all", "any position", "closed position", "closing position", "no position")


class _Data:
    """One function per method: ``(fake, params, now) -> result``. The history methods run under
    the fake's lock, after the growth due by ``now`` has been appended."""

    @staticmethod
    def Time(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        stamp = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))
        return {"unixtime": int(now), "rfc1123": stamp}

    @staticmethod
    def SystemStatus(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"status": "online", "timestamp": stamp}

    @staticmethod
    def Assets(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {
            name: {
                "aclass": "currency",
                "altname": alt,
                "decimals": dec,
                "display_decimals": min(dec, 5),
                "status": "enabled",
            }
            for name, (alt, dec) in ASSETS.items()
        }

    @staticmethod
    def AssetPairs(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {
            p: {
                "altname": alt,
                "wsname": f"{ASSETS[b][0]}/{ASSETS[q][0]}",
                "base": b,
                "quote": q,
                "pair_decimals": dec,
                "lot_decimals": 8,
                "ordermin": "0.0001",
                "status": "online",
            }
            for p in _pairs(params, default_all=True)
            for alt, b, q, _, dec in [PAIRS[p]]
        }

    @staticmethod
    def Ticker(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        out = {}
        for p in _pairs(params, default_all=True):
            last, step = _price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
            low, high = _price(p, now, -3600) - 20 * step, _price(p, now, -1800) + 20 * step
            out[p] = {
                "a": [str(last + step), "1", "1.000"],
                "b": [str(last), "2", "2.000"],
                "c": [str(last), "0.00100000"],
                "v": ["812.3", "2409.7"],
                "p": [str(last), str(_price(p, now, -600))],
                "t": [5120, 17001],
                "l": [str(min(low, last)), str(min(low, last))],
                "h": [str(max(high, last)), str(max(high, last))],
                "o": str(_price(p, now, -43200)),
            }
        return out

    @staticmethod
    def OHLC(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        step = _interval(params) * 60
        open_at = int(now // step * step)
        first = open_at - (OHLC_ROWS - 1) * step
        since = _seconds(params, "since")
        if since is not None:  # exclusive: the first candle starting after `since`
            first = max(first, math.floor(since / step) * step + step)
        first = min(first, open_at)  # the open candle is always there
        rows = [_candle(p, step, t, now) for t in range(first, open_at + 1, step)]
        return {p: rows, "last": open_at - step}

    @staticmethod
    def Depth(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        count = _int(params, "count", 100)
        if not 1 <= count <= 500:
            raise Refusal("EGeneral:Invalid arguments:count")
        mid, step = _price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
        asks = [[str(mid + (i + 1) * step), "0.500", int(now)] for i in range(count)]
        bids = [[str(mid - i * step), "0.750", int(now)] for i in range(count)]
        return {p: {"asks": asks, "bids": bids}}

    @staticmethod
    def Trades(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        count = _int(params, "count", 1000)
        if not 1 <= count <= 1000:
            raise Refusal("EGeneral:Invalid arguments:count")
        since = _since_ns(params)
        tape = fake._histories["public_trades:" + p]
        # Without `since`, the most recent `count`.
        lo = max(0, len(tape.keys) - count) if since is None else tape.bounds(since, None)[0]
        rows = tape.entries[lo : lo + count]
        if rows:
            last = str(tape.keys[lo + len(rows) - 1])
        else:
            last = str(since if since is not None else 0)
        return {p: rows, "last": last}

    @staticmethod
    def Spread(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        since = _seconds(params, "since")
        chunks: list[list[list[Any]]] = []
        total, second = 0, int(now)
        # Whole seconds, newest first, until about SPREAD_ROWS rows (an hour at most).
        while total < SPREAD_ROWS and second > int(now) - 3600:
            if since is not None and second <= since:
                break
            chunk = _spread_rows(p, second)
            chunks.append(chunk)
            total += len(chunk)
            second -= 1
        rows = [row for chunk in reversed(chunks) for row in chunk]
        if not rows:
            return {p: rows, "last": int(since) if since is not None else int(now)}
        last = rows[-1][0]
        return {p: rows, "last": last}

    @staticmethod
    def Balance(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        if fake.balance is None:
            return None
        # ZUSD moves a little each minute, so snapshots differ over time.
        out = dict(fake.balance)
        if "ZUSD" in out:
            out["ZUSD"] = str(Decimal(out["ZUSD"]) + Decimal(int(now) // 60 % 100) / 10000)
        return out

    @staticmethod
    def BalanceEx(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        balance = _Data.Balance(fake, params, now) or {}
        return {a: {"balance": v, "hold_trade": "0.0000"} for a, v in balance.items()}

    @staticmethod
    def TradeBalance(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        eb = (Decimal("171288.6158") + _price("XXBTZUSD", now) * 10).quantize(Decimal("0.0001"))
        zero = "0.0000"
        return {
            **dict.fromkeys(("eb", "tb", "e", "mf"), str(eb)),
            **dict.fromkeys(("m", "n", "c", "v", "uv"), zero),
        }

    @staticmethod
    def OpenOrders(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        userref = params.get("userref")
        return {
            "open": {
                txid: order
                for txid, order in fake._open.items()
                if userref is None or str(order["userref"]) == userref
            }
        }

    @staticmethod
    def ClosedOrders(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        # Kraken documents "both" as the default; the fake windows by close time unless told,
        # which is what a collector keyed on closetm must ask for anyway.
        closetime = params.get("closetime") or "close"
        windows: dict[str, Window | None] = {
            "close": None,
            "open": lambda e, start, end: _within(e["opentm"], start, end),
            "both": lambda e, start, end: (
                _within(e["opentm"], start, end) or _within(e["closetm"], start, end)
            ),
        }
        if closetime not in windows:
            raise Refusal("EGeneral:Invalid arguments:closetime")
        userref = params.get("userref")
        match = None if userref is None else (lambda e: str(e["userref"]) == userref)
        page, count = _window_page(
            fake._histories["closed"], params, match=match, window=windows[closetime]
        )
        return {"closed": page, "count": count}

    @staticmethod
    def TradesHistory(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        kind = params.get("type") or "all"
        if kind not in _TRADE_TYPES:
            raise Refusal("EGeneral:Invalid arguments:type")
        # None of the fake's trades touches a position.
        match = None if kind in ("all", "no position") else (lambda e: False)
        page, count = _window_page(fake._histories["trades"], params, match=match)
        return {"trades": page, "count": count}

    @staticmethod
    def Ledgers(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        # `without_count` is accepted and ignored: counting costs the fake nothing.
        match = _ledger_filter(params)
        page, count = _window_page(fake._histories["ledger"], params, match=match)
        return {"ledger": page, "count": count}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fake: FakeKraken


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet; the tests read counters
        logger.debug("fake: " + format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, verb: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if split.path == "/_fake/fault" and verb == "POST":
            return self._control(dict(parse_qsl(split.query or body.decode())))
        parts = split.path.split("/", 3)
        if len(parts) != 4 or parts[1] != "0" or parts[2] not in ("public", "private"):
            return self._send(404, b"Not Found", "text/plain")
        private = parts[2] == "private"
        method = parts[3]
        with fake._lock:
            fake.calls[method] += 1
        if verb != ("POST" if private else "GET"):
            return self._send(405, b"Method Not Allowed", "text/plain")
        fault = fake._take_fault(method)
        if fault is not None and self._fault(fault):
            return
        if private:
            error = fake.check_private(
                self.headers.get("API-Key"), self.headers.get("API-Sign"), split.path, body
            )
            params = dict(parse_qsl(body.decode("latin-1")))
        else:
            error = fake.check_public(self.client_address[0])
            params = dict(parse_qsl(split.query))
        envelope = {"error": [error]} if error else fake.answer(method, params, private)
        for e in envelope["error"]:
            with fake._lock:
                fake.errors[e] += 1
        self._send(200, json.dumps(envelope).encode())

    def _fault(self, fault: Fault) -> bool:
        """Answer with ``fault``; False when the request should go on normally afterwards."""
        kind = fault.kind
        if kind.startswith("http_"):
            code = int(kind[5:])
            page = CLOUDFLARE_PAGE.format(code=code, text=CLOUDFLARE_TEXT[code])
            self._send(code, page.encode(), "text/html; charset=UTF-8")
        elif kind == "not_json":
            page = CLOUDFLARE_PAGE.format(code=200, text="Please wait")
            self._send(200, page.encode(), "text/html; charset=UTF-8")
        elif kind == "raw":
            self._send(fault.status, fault.body)
        elif kind == "truncated":
            self._send(200, b'{"error":[],"result":{"XXBTZUSD":{"a":["6400')
        elif kind == "kraken_error":
            with self.server.fake._lock:
                self.server.fake.errors[fault.error] += 1
            self._send(200, json.dumps({"error": [fault.error]}).encode())
        elif kind == "slow":
            self.server.fake._stopping.wait(fault.delay)
            return False
        elif kind == "reset":
            # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        return True

    def _control(self, query: dict[str, str]) -> None:
        try:
            options: dict[str, Any] = {k: query[k] for k in ("method", "error") if k in query}
            if "delay" in query:
                options["delay"] = float(query["delay"])
            if "status" in query:
                options["status"] = int(query["status"])
            if "body" in query:
                options["body"] = query["body"].encode()
            self.server.fake.inject(
                query.get("kind", ""), count=int(query.get("count", 1)), **options
            )
        except (ValueError, TypeError) as exc:
            return self._send(400, str(exc).encode(), "text/plain")
        self._send(200, b'{"ok": true}')

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (a timed-out caller); nothing to answer
            self.close_connection = True


def new_key_file(path: str) -> tuple[str, str]:
    """Write a random key pair in krakenex's key-file format (mode 0600); returns it."""
    key = base64.b64encode(secrets.token_bytes(42)).decode()
    secret = base64.b64encode(secrets.token_bytes(64)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key}\n{secret}\n")
    return key, secret
