"""A strict local stand-in for Kraken's REST API, for tests and for trying a job file offline.

It is as strict as the real exchange where a client can go wrong:

* ``API-Key`` and ``API-Sign`` are checked over the raw body and the requested path;
* each key's nonce must be strictly greater than the last one it accepted (``EAPI:Invalid nonce``);
* each key has Kraken's decaying call counter (``EAPI:Rate limit exceeded``, and calls made while
  over the limit still count, extending the penalty, as on Kraken); public calls can have a per-IP
  counter too (``EGeneral:Too many requests``);
* public endpoints answer GET only and private ones POST only (405 otherwise);
* state-changing methods are refused and counted, so a test can prove none was ever sent.

Answers have the shapes of ``shared/kraken-api.md`` with prices that move with time. Faults are
injected on demand (:meth:`FakeKraken.inject`, or ``POST /_fake/fault?kind=...`` from outside):
HTTP 500/502/520 with Cloudflare-like HTML bodies, a slow answer (long enough to be a timeout), a
connection reset, truncated JSON, a non-JSON 200, and any Kraken error string.

Run it with ``collector fake-exchange``; in Python::

    with FakeKraken() as fake:
        key, secret = fake.add_key()
        api = collector.API(key, secret); api.uri = fake.url
"""

from __future__ import annotations

import base64
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
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..methods import COSTLY_METHODS, PUBLIC_METHODS, STATE_CHANGING_METHODS
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

# canonical name -> (altname, base, quote, price at t=0, price decimals)
PAIRS: dict[str, tuple[str, str, str, Decimal, int]] = {
    "XXBTZUSD": ("XBTUSD", "XXBT", "ZUSD", Decimal("64000"), 1),
    "XXBTZEUR": ("XBTEUR", "XXBT", "ZEUR", Decimal("59000"), 1),
    "XETHZUSD": ("ETHUSD", "XETH", "ZUSD", Decimal("3100"), 2),
    "XETHZEUR": ("ETHEUR", "XETH", "ZEUR", Decimal("2850"), 2),
    "SOLUSD": ("SOLUSD", "SOL", "ZUSD", Decimal("145"), 2),
    "USDTZUSD": ("USDTUSD", "USDT", "ZUSD", Decimal("1.0002"), 4),
}
ASSETS = {"XXBT": ("XBT", 10), "XETH": ("ETH", 10), "SOL": ("SOL", 10), "ZUSD": ("USD", 4),
          "ZEUR": ("EUR", 4), "USDT": ("USDT", 8)}  # fmt: skip
BALANCES = {"ZUSD": "171288.6158", "XXBT": "1011.1908877900", "XETH": "25.0000000000",
            "ETH2.S": "198.3970800000", "SOL": "0.0000000000"}  # fmt: skip

CLOUDFLARE_PAGE = """<!DOCTYPE html>
<html><head><title>api.kraken.com | {code}: {text}</title></head>
<body><div id="cf-wrapper"><h1>Error {code}</h1><p>{text}</p>
<p>Cloudflare Ray ID: 7d1c2f9a8b3e4f50</p></div></body></html>"""
CLOUDFLARE_TEXT = {500: "Internal server error", 502: "Bad gateway",
                   520: "Web server is returning an unknown error"}  # fmt: skip


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


class FakeKraken:
    """The fake exchange. Start it with ``with`` or :meth:`start`; its address is :attr:`url`.

    :param tier: the private counter (a tier name or :class:`RateLimit`), ``None`` for no limit
    :param public_limit: a per-IP counter for public calls, ``None`` (default) for no limit
    :param ledger_size: entries in each paginated history (Ledgers, TradesHistory, ClosedOrders)
    :param clock: monotonic seconds for the counters; wall time for the data is ``time.time``
    """

    def __init__(
        self,
        *,
        tier: str | RateLimit | None = "starter",
        public_limit: RateLimit | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ledger_size: int = 120,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = _tier_or_none(tier)
        self.public_limit = public_limit
        self.clock = clock
        self.keys: dict[str, bytes] = {}
        self.last_nonce: dict[str, int] = {}
        self.balance: dict[str, str] | None = dict(BALANCES)
        self.ledger_size = ledger_size
        self.calls: Counter[str] = Counter()  # every request, by method
        self.errors: Counter[str] = Counter()  # every Kraken error string answered
        self.accepted: Counter[str] = Counter()  # private calls that passed every check, by key
        self.state_changing_calls = 0
        #: the last API-Sign values received (so tests can prove they never leak)
        self.signatures: deque[str] = deque(maxlen=10_000)
        self._counters: dict[str, _Counter] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

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

    def add_key(self, key: str | None = None, secret: str | None = None) -> tuple[str, str]:
        """Register an API key (a fresh random pair when none is given); returns (key, secret)."""
        key = key or base64.b64encode(os.urandom(42)).decode()
        secret = secret or base64.b64encode(os.urandom(64)).decode()
        with self._lock:
            self.keys[key] = base64.b64decode(secret)
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
            if self.limit is not None:
                counter = self._counters.get(key)
                if counter is None:
                    counter = self._counters[key] = _Counter(self.limit, self.clock)
                method = path.rsplit("/", 1)[-1]
                if not counter.add(2 if method in COSTLY_METHODS else 1):
                    return "EAPI:Rate limit exceeded"
            self.accepted[key] += 1
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
        handler = getattr(_Data, method.replace("/", "_"), None)
        if handler is None or (method in PUBLIC_METHODS) == private:
            return {"error": ["EGeneral:Unknown method"]}
        try:
            result = handler(self, params, time.time())
        except _Refusal as refusal:
            return {"error": [str(refusal)]}
        if result is None:  # an empty account's Balance: Kraken omits `result`
            return {"error": []}
        return {"error": [], "result": result}


def _tier_or_none(value: str | RateLimit | None) -> RateLimit | None:
    return None if value is None else tier(value)


class _Refusal(Exception):
    """A Kraken error answered by a method (e.g. ``EQuery:Unknown asset pair``)."""


def _price(pair: str, now: float, offset: float = 0.0) -> Decimal:
    """A price that moves: a slow swing plus a faster wiggle, to the pair's decimals."""
    base, decimals = PAIRS[pair][3], PAIRS[pair][4]
    t = now + offset
    factor = 1 + 0.03 * math.sin(t / 900) + 0.002 * math.sin(t / 7 + len(pair))
    return (base * Decimal(repr(factor))).quantize(Decimal(1).scaleb(-decimals))


def _pairs(params: dict[str, str], default_all: bool = False) -> list[str]:
    names = params.get("pair", "")
    if not names:
        if default_all:
            return list(PAIRS)
        raise _Refusal("EGeneral:Invalid arguments:pair")
    by_alt = {v[0]: k for k, v in PAIRS.items()}
    found = []
    for name in names.split(","):
        canonical = name if name in PAIRS else by_alt.get(name.upper())
        if canonical is None:
            raise _Refusal("EQuery:Unknown asset pair")
        found.append(canonical)
    return found


def _int(params: dict[str, str], name: str, default: int) -> int:
    try:
        return int(params.get(name, default))
    except ValueError:
        raise _Refusal(f"EGeneral:Invalid arguments:{name}") from None


class _Data:
    """One function per method: ``(fake, params, now) -> result``."""

    @staticmethod
    def Time(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {"unixtime": int(now),
                "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))}  # fmt: skip

    @staticmethod
    def SystemStatus(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"status": "online", "timestamp": stamp}

    @staticmethod
    def Assets(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {name: {"aclass": "currency", "altname": alt, "decimals": dec,
                       "display_decimals": min(dec, 5), "status": "enabled"}
                for name, (alt, dec) in ASSETS.items()}  # fmt: skip

    @staticmethod
    def AssetPairs(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {p: {"altname": alt, "wsname": f"{ASSETS[b][0]}/{ASSETS[q][0]}", "base": b,
                    "quote": q, "pair_decimals": dec, "lot_decimals": 8, "ordermin": "0.0001",
                    "status": "online"}
                for p in _pairs(params, default_all=True)
                for alt, b, q, _, dec in [PAIRS[p]]}  # fmt: skip

    @staticmethod
    def Ticker(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        out = {}
        for p in _pairs(params, default_all=True):
            last, step = _price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
            low, high = _price(p, now, -3600) - 20 * step, _price(p, now, -1800) + 20 * step
            out[p] = {"a": [str(last + step), "1", "1.000"], "b": [str(last), "2", "2.000"],
                      "c": [str(last), "0.00100000"], "v": ["812.3", "2409.7"],
                      "p": [str(last), str(_price(p, now, -600))], "t": [5120, 17001],
                      "l": [str(min(low, last)), str(min(low, last))],
                      "h": [str(max(high, last)), str(max(high, last))],
                      "o": str(_price(p, now, -43200))}  # fmt: skip
        return out

    @staticmethod
    def OHLC(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        interval = _int(params, "interval", 1)
        if interval not in (1, 5, 15, 30, 60, 240, 1440, 10080, 21600):
            raise _Refusal("EGeneral:Invalid arguments:interval")
        step = interval * 60
        open_candle = int(now) // step * step
        since = _int(params, "since", 0)
        first = max(open_candle - 719 * step, (since // step + 1) * step if since else 0)
        rows = []
        for t in range(first, open_candle + 1, step):
            o, c = _price(p, t), _price(p, t + step - 1)
            rows.append([t, str(o), str(max(o, c)), str(min(o, c)), str(c), str(c), "1.25", 42])
        return {p: rows, "last": open_candle - step}

    @staticmethod
    def Depth(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        count = _int(params, "count", 100)
        if not 1 <= count <= 500:
            raise _Refusal("EGeneral:Invalid arguments:count")
        mid, step = _price(p, now), Decimal(1).scaleb(-PAIRS[p][4])
        asks = [[str(mid + (i + 1) * step), "0.500", int(now)] for i in range(count)]
        bids = [[str(mid - i * step), "0.750", int(now)] for i in range(count)]
        return {p: {"asks": asks, "bids": bids}}

    @staticmethod
    def Trades(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        count = min(_int(params, "count", 100), 1000)
        rows = []
        for i in range(count, 0, -1):
            t = now - i
            side = "b" if i % 2 else "s"
            rows.append([str(_price(p, t)), "0.01000000", round(t, 4), side, "l", "", int(t * 10)])
        return {p: rows, "last": str(int(now * 1e9))}

    @staticmethod
    def Spread(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        (p,) = _pairs(params)[:1]
        step = Decimal(1).scaleb(-PAIRS[p][4])
        rows = [[int(now) - i, str(_price(p, now - i)), str(_price(p, now - i) + step)]
                for i in range(10, 0, -1)]  # fmt: skip
        return {p: rows, "last": int(now)}

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
        return {"eb": str(eb), "tb": str(eb), "m": "0.0000", "n": "0.0000", "c": "0.0000",
                "v": "0.0000", "e": str(eb), "mf": str(eb), "uv": "0.0000"}  # fmt: skip

    @staticmethod
    def OpenOrders(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        return {"open": {"OQCLML-BW3P3-BUCMWZ": _order("open", now - 3600, 0)}}

    @staticmethod
    def ClosedOrders(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        items = [(f"O{i:05d}-CLOSE-{i:06d}", _order("closed", now - 600 * (i + 1), i))
                 for i in range(fake.ledger_size)]  # fmt: skip
        page, count = _page(items, params)
        return {"closed": page, "count": count}

    @staticmethod
    def TradesHistory(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        items = []
        for i in range(fake.ledger_size):
            t = now - 600 * (i + 1)
            price = _price("XXBTZUSD", t)
            items.append((f"T{i:05d}-TRADE-{i:06d}", {
                "ordertxid": f"O{i:05d}-CLOSE-{i:06d}", "pair": "XXBTZUSD", "time": round(t, 4),
                "type": "buy" if i % 2 else "sell", "ordertype": "limit", "price": str(price),
                "cost": str(price / 100), "fee": "0.16000", "vol": "0.01000000", "margin": "0.00000",
                "misc": ""}))  # fmt: skip
        page, count = _page(items, params)
        return {"trades": page, "count": count}

    @staticmethod
    def Ledgers(fake: FakeKraken, params: dict[str, str], now: float) -> Any:
        items = []
        balance = Decimal("1000.0000")
        for i in range(fake.ledger_size):
            amount = Decimal(i % 7 - 3) * Decimal("1.2500")
            items.append((f"L{i:05d}-LEDGR-{i:06d}", {
                "refid": f"R{i:05d}", "time": round(now - 300 * (i + 1), 4),
                "type": "trade" if i % 3 else "deposit", "subtype": "", "aclass": "currency",
                "asset": "ZUSD", "amount": str(amount), "fee": "0.0000",
                "balance": str(balance - i * Decimal("0.5000"))}))  # fmt: skip
        page, count = _page(items, params)
        return {"ledger": page, "count": count}


def _order(status: str, t: float, i: int) -> dict[str, Any]:
    return {"refid": None, "userref": 0, "status": status, "opentm": round(t, 4),
            "closetm": round(t + 60, 4) if status == "closed" else None, "starttm": 0,
            "expiretm": 0, "descr": {"pair": "XBTUSD", "type": "buy" if i % 2 else "sell",
            "ordertype": "limit", "price": "60000.0", "order": "buy 0.01 XBTUSD @ limit 60000.0"},
            "vol": "0.01000000", "vol_exec": "0.01000000" if status == "closed" else "0.00000000",
            "cost": "600.00000", "fee": "0.96000", "price": "60000.0", "misc": "",
            "oflags": "fciq"}  # fmt: skip


def _page(items: list[tuple[str, Any]], params: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Kraken's pagination: newest first, 50 a page from ``ofs``, ``count`` across all pages."""
    ofs = max(0, _int(params, "ofs", 0))
    return dict(items[ofs : ofs + PAGE_SIZE]), len(items)


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
