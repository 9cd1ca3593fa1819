"""The fake's WebSocket v2 endpoint: Kraken's public feed over the same market as its REST API.

:class:`FakeKrakenWS` serves ``ws://127.0.0.1:<port>/v2`` (websockets' asyncio server, in a thread
of its own) from a :class:`~.market.Market`:

* ``instrument``: the listed pairs with v2 symbols (``BTC/USD`` where AssetPairs' wsname says
  ``XBT/USD``, ``DOGE`` for ``XDG``), ``price_precision`` (the pair's decimals) and
  ``qty_precision`` (8); a pair listed while running (:meth:`FakeKrakenWS.list_pair`) is an
  ``update``;
* ``trade``: each pair's :class:`~.market.Tape`, so a trade's ``trade_id`` is the id REST Trades
  gives it; a snapshot of the last 50, then every new trade (``fake.grow("public_trades")`` or the
  growth rate), ``timestamp`` in RFC 3339;
* ``book``: one book per pair, at REST Depth's prices when first asked for (its own quantities)
  and changed a few levels every ``tick``; from then on REST Depth answers that same book: a snapshot of the top ``depth``, then updates with Kraken's rules
  (levels pushed below the depth just fall out; a deleted level is ``qty: 0``) and the CRC32
  ``checksum`` computed here from the fake's own decimal strings, not with the collector's code;
* ``ticker`` and ``ohlc`` (``interval`` minutes) from the prices and candles REST serves;
* ``heartbeat`` once a second on a subscribed connection otherwise quiet; ``ping`` → ``pong``;
* an acknowledgement per symbol (``Currency pair not supported X``, ``Already subscribed``), and
  ``Exceeded msg rate`` when a connection sends more than ``msg_rate`` requests in a window.

Faults (:meth:`FakeKrakenWS.inject`): ``drop`` (the next ``count`` messages of a channel are not
sent: the fake's book moves on without the client; ``channel="subscribe"`` drops an
acknowledgement, the subscription still made), ``checksum`` (a wrong checksum), ``disconnect``
(every connection's TCP dropped, no close frame: Cloudflare's 1006), ``stall`` (nothing more sent
on the open connections, not even heartbeats), ``rate`` (the next ``count`` requests answered
``Exceeded msg rate``). Close frames the clients sent are kept in :attr:`FakeKrakenWS.closes`,
their requests in :attr:`FakeKrakenWS.requests`, each book message's true checksum in
:attr:`FakeKrakenWS.book_checksums`.

Why one module of this length: the fake's endpoint is one server whose channels and faults share
its connections and the market they serve; it is test equipment, loaded only by tests and
``collector fake-exchange``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .history import fmt
from .market import ASSETS, OHLC_INTERVALS, PAIRS, Market, candle, price

logger = logging.getLogger(__name__)

__all__ = ["WS_FAULT_KINDS", "FakeKrakenWS", "v2_symbol"]

WS_FAULT_KINDS = frozenset({"drop", "checksum", "disconnect", "stall", "rate"})
DEPTHS = (10, 25, 100, 500, 1000)
QTY_PRECISION = 8
TRADE_SNAPSHOT = 50
# v2 names a few assets differently from REST's altnames.
_V2_ASSET = {"XBT": "BTC", "XDG": "DOGE"}


def v2_symbol(pair: str) -> str:
    """The v2 symbol of a canonical pair: ``XXBTZUSD`` → ``BTC/USD``."""
    _, base, quote, _, _ = PAIRS[pair]
    b, q = ASSETS[base][0], ASSETS[quote][0]
    return f"{_V2_ASSET.get(b, b)}/{_V2_ASSET.get(q, q)}"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def trade_time(t: float) -> str:
    """A trade's time as the feed sends it: the microsecond REST's ``time`` (the float ``t``)
    reads as, cut, not rounded (``fromtimestamp`` rounds: a trade at .7503376 would be .750338
    on the feed and .750337 from REST, two rows' worth of one trade)."""
    micros = int((Decimal(repr(t)) * 1_000_000).to_integral_value(rounding=ROUND_DOWN))
    whole, micro = divmod(micros, 1_000_000)
    stamp = datetime.fromtimestamp(whole, UTC).replace(microsecond=micro)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps(value: Any) -> str:
    """JSON with every Decimal a bare number in its own digits (``4.0``, ``0.00550000``), as Kraken
    writes them: the stdlib encoder would need floats."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


class _PairBook:
    """One pair's full book (deeper than any client's window): price → qty, as decimal strings'
    values. Changed a few levels a tick, deterministically."""

    LEVELS = 60

    def __init__(self, pair: str, mid: Decimal) -> None:
        self.pair = pair
        self.step = Decimal(1).scaleb(-PAIRS[pair][4])
        self.seq = 0
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        for i in range(self.LEVELS):
            self.asks[mid + (i + 1) * self.step] = self._qty(f"a{i}")
            self.bids[mid - i * self.step] = self._qty(f"b{i}")

    def _qty(self, salt: str) -> Decimal:
        mix = zlib.crc32(f"{self.pair}:{self.seq}:{salt}".encode())
        return Decimal(mix % 400_000_000 + 1000).scaleb(-QTY_PRECISION)

    def top(self, side: str, n: int) -> list[tuple[Decimal, Decimal]]:
        levels = self.bids if side == "bids" else self.asks
        prices = sorted(levels, reverse=side == "bids")[:n]
        return [(p, levels[p]) for p in prices]

    def move(self) -> None:
        """One tick: a quantity changes on each side (a different rank each tick), every third
        tick the best bid is taken (deleted) and a new bid enters at the bottom, every fifth a
        better ask appears when the spread allows (pushing the worst out of a client's window)."""
        self.seq += 1
        rank = self.seq % 10
        for side, levels in (("bids", self.bids), ("asks", self.asks)):
            prices = [p for p, _ in self.top(side, rank + 1)]
            if prices:
                levels[prices[-1]] = self._qty(f"{side}{rank}")
        if self.seq % 3 == 0 and len(self.bids) > 20:
            del self.bids[max(self.bids)]
            self.bids[min(self.bids) - self.step] = self._qty("new-bid")
        if self.seq % 5 == 0:
            best_bid, best_ask = max(self.bids), min(self.asks)
            if best_ask - best_bid > self.step:
                self.asks[best_ask - self.step] = self._qty("new-ask")
                del self.asks[max(self.asks)]


def checksum(pair: str, asks: list[tuple[Decimal, Decimal]], bids: list[tuple[Decimal, Decimal]]):
    """Kraken's book checksum, written from its documentation: top 10 asks ascending, then top 10
    bids descending; price then qty at the pair's precisions, ``.`` and leading zeros removed."""
    decimals = PAIRS[pair][4]
    text = "".join(
        fmt(p, decimals).replace(".", "").lstrip("0")
        + fmt(q, QTY_PRECISION).replace(".", "").lstrip("0")
        for p, q in asks[:10] + bids[:10]
    )
    return zlib.crc32(text.encode())


@dataclass(eq=False)  # one per connection, kept in a set by identity
class _Client:
    ws: ServerConnection
    subs: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    books: dict[str, tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]] = field(
        default_factory=dict
    )
    trades: dict[str, int] = field(default_factory=dict)  # symbol -> trades of its tape sent
    tickers: dict[str, Any] = field(default_factory=dict)
    candles: dict[tuple[str, int], Any] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)
    last_sent: float = 0.0
    stalled: bool = False
    requests: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class FakeKrakenWS:
    """The WebSocket endpoint. Start with ``with`` or :meth:`start`; its address is :attr:`url`.

    :param market: the REST fake's market (``FakeKraken(ws=True)`` passes its own)
    :param lock: the lock the market is read under (the REST side's)
    :param now: wall-clock seconds of the data
    :param tick: seconds between pushes (book changes, new trades, tickers)
    :param heartbeat: seconds of quiet before a heartbeat
    :param msg_rate: ``(n, seconds)``: more than ``n`` requests in ``seconds`` on one connection
        are answered ``Exceeded msg rate`` (None: no limit)
    """

    def __init__(
        self,
        market: Market,
        *,
        lock: threading.Lock | None = None,
        now: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        tick: float = 0.05,
        heartbeat: float = 1.0,
        msg_rate: tuple[int, float] | None = None,
    ) -> None:
        self.market = market
        self.lock = lock or threading.Lock()
        self.now = now
        self.host, self.port = host, port
        self.tick, self.heartbeat, self.msg_rate = tick, heartbeat, msg_rate
        self.books: dict[str, _PairBook] = {}
        #: the close frames clients sent, ``(code, reason)``, and every request received
        self.closes: list[tuple[int, str]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        #: every book message's true checksum as sent (a ``checksum`` fault sends another):
        #: ``(symbol, timestamp, checksum)``, the ground truth of a stored book
        self.book_checksums: deque[tuple[str, str, int]] = deque(maxlen=100_000)
        #: connections accepted so far
        self.connections = 0
        self._faults: list[dict[str, Any]] = []
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: OSError | None = None
        self._done: asyncio.Event | None = None
        self._by_symbol = {v2_symbol(p): p for p in PAIRS}

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2"

    def start(self) -> FakeKrakenWS:
        self._thread = threading.Thread(target=self._run, name="fake-kraken-ws", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake's WebSocket endpoint did not start")
        if self._failed is not None:  # its port taken, say: the caller's one line
            raise self._failed
        return self

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._done.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeKrakenWS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except OSError as exc:
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        async with serve(self._serve, self.host, self.port, compression=None) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            pusher = asyncio.ensure_future(self._pusher())
            self._ready.set()
            await self._done.wait()
            pusher.cancel()
            server.close(close_connections=True)

    # -- test hooks -------------------------------------------------------------------------------

    def inject(
        self, kind: str, *, count: int = 1, channel: str = "book", symbol: str | None = None
    ) -> None:
        """Inject a fault (one of ``WS_FAULT_KINDS``); ``drop`` and ``checksum`` apply to the next
        ``count`` messages of ``channel`` (of ``symbol`` if given), ``rate`` to the next ``count``
        requests; ``disconnect`` and ``stall`` at once, to every open connection."""
        if kind not in WS_FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(sorted(WS_FAULT_KINDS))}")
        if kind in ("disconnect", "stall"):
            self._call(self._act, kind)
            return
        fault = {"kind": kind, "count": count, "channel": channel, "symbol": symbol}
        self._call(self._faults.append, fault)

    def list_pair(self, pair: str, listed: bool = True) -> None:
        """List (or delist) a pair while running: subscribers of ``instrument`` get an update."""
        with self.lock:
            (self.market.delisted.discard if listed else self.market.delisted.add)(pair)

    def open_connections(self) -> int:
        return len(self._clients)

    def _call(self, fn: Callable[[Any], None], arg: Any) -> None:
        assert self._loop is not None, "start the endpoint first"
        done = threading.Event()

        def run() -> None:
            try:
                fn(arg)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _act(self, kind: str) -> None:
        for client in list(self._clients):
            if kind == "disconnect":
                client.ws.transport.abort()  # no close frame: what Cloudflare's 1006 looks like
            else:
                client.stalled = True

    def _take_fault(self, kind: str, channel: str, symbol: str | None) -> bool:
        for fault in self._faults:
            if fault["kind"] != kind or fault["count"] <= 0:
                continue
            if kind != "rate" and (
                fault["channel"] != channel or fault["symbol"] not in (None, symbol)
            ):
                continue
            fault["count"] -= 1
            if fault["count"] == 0:
                self._faults.remove(fault)
            return True
        return False

    # -- a connection -----------------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        client = _Client(ws)
        self._clients.add(client)
        self.connections += 1
        try:
            async for raw in ws:
                await self._on_request(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            frame = ws.protocol.close_rcvd
            if frame is not None:
                self.closes.append((frame.code, frame.reason))

    async def _send(self, client: _Client, message: dict[str, Any]) -> None:
        if client.stalled:
            return
        client.last_sent = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send(dumps(message))

    async def _on_request(self, client: _Client, raw: str | bytes) -> None:
        time_in = rfc3339(self.now())
        try:
            request = json.loads(raw)
        except ValueError:
            await self._send(client, {"error": "Malformed request", "success": False})
            return
        if not isinstance(request, dict):
            await self._send(client, {"error": "Malformed request", "success": False})
            return
        self.requests.append(request)
        method, req_id = request.get("method"), request.get("req_id")
        head = {"method": method, "req_id": req_id} if req_id is not None else {"method": method}
        if method == "ping":
            await self._send(client, {"method": "pong", **head, "time_in": time_in})
            return
        raw_params = request.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        channel = params.get("channel")
        if method not in ("subscribe", "unsubscribe"):
            await self._send(client, {**head, "error": "Method not found", "success": False})
            return
        symbols = params.get("symbol") if channel != "instrument" else [None]
        if not isinstance(symbols, list) or not symbols:
            await self._send(client, {**head, "error": "Missing symbol", "success": False})
            return
        limited = self._take_fault("rate", "", None) or self._over_rate(client)
        for symbol in symbols:
            base = {**head, "time_in": time_in, "time_out": rfc3339(self.now())}
            if limited:
                await self._send(client, {**base, "error": "Exceeded msg rate", "success": False})
                continue
            error = self._check(channel, symbol, params)
            if error is None and method == "subscribe" and (channel, symbol) in client.subs:
                error = "Already subscribed"
            if error is None and method == "unsubscribe" and (channel, symbol) not in client.subs:
                error = "Subscription Not Found"
            if error is not None:
                answer = {**base, "error": error, "success": False}
                if symbol is not None:
                    answer["symbol"] = symbol
                await self._send(client, answer)
                continue
            result: dict[str, Any] = {"channel": channel}
            if symbol is not None:
                result["symbol"] = symbol
            result.update({k: v for k, v in params.items() if k in ("depth", "interval")})
            if not self._take_fault("drop", str(method), symbol):
                await self._send(client, {**base, "result": result, "success": True})
            if method == "subscribe":
                client.subs[(str(channel), symbol)] = dict(params)
                await self._snapshot(client, str(channel), symbol, params)
            else:
                client.subs.pop((str(channel), symbol), None)
                if channel == "book" and symbol is not None:
                    client.books.pop(symbol, None)

    def _over_rate(self, client: _Client) -> bool:
        now = time.monotonic()
        client.requests.append(now)
        if self.msg_rate is None:
            return False
        n, window = self.msg_rate
        return sum(1 for t in client.requests if t > now - window) > n

    def _check(self, channel: Any, symbol: Any, params: dict[str, Any]) -> str | None:
        if channel not in ("instrument", "book", "trade", "ticker", "ohlc"):
            return f"Channel {str(channel)[:40]} not found"
        if channel == "instrument":
            return None
        pair = self._by_symbol.get(symbol) if isinstance(symbol, str) else None
        with self.lock:
            listed = pair is not None and pair not in self.market.delisted
        if not listed:
            return f"Currency pair not supported {str(symbol)[:40]}"
        if channel == "book" and params.get("depth", 10) not in DEPTHS:
            return "Invalid depth"
        if channel == "ohlc" and params.get("interval", 1) not in OHLC_INTERVALS:
            return "Invalid interval"
        return None

    # -- what is sent -----------------------------------------------------------------------------

    async def _snapshot(
        self, client: _Client, channel: str, symbol: str | None, params: dict[str, Any]
    ) -> None:
        now = self.now()
        if channel == "instrument":
            with self.lock:
                listed = [p for p in PAIRS if p not in self.market.delisted]
            client.listed = set(listed)
            data: Any = {"assets": self._assets(), "pairs": [self._instrument(p) for p in listed]}
            await self._send(client, {"channel": "instrument", "type": "snapshot", "data": data})
            return
        assert symbol is not None
        pair = self._by_symbol[symbol]
        if channel == "book":
            await self._book(client, symbol, pair, int(params.get("depth", 10)), snapshot=True)
        elif channel == "trade":
            with self.lock:
                self.market.materialise(now)
                tape = self.market.tapes[pair]
                rows = list(tape.entries[-TRADE_SNAPSHOT:]) if params.get("snapshot", True) else []
                client.trades[symbol] = len(tape)
            trades = [self._trade(symbol, pair, row) for row in rows]
            await self._send(client, {"channel": "trade", "type": "snapshot", "data": trades})
        elif channel == "ticker":
            data = self._ticker(symbol, pair, now)
            client.tickers[symbol] = data
            await self._send(client, {"channel": "ticker", "type": "snapshot", "data": [data]})
        elif channel == "ohlc":
            minutes = int(params.get("interval", 1))
            data = self._candle(symbol, pair, minutes, now)
            client.candles[(symbol, minutes)] = data
            await self._send(client, {"channel": "ohlc", "type": "snapshot", "data": [data]})

    async def _pusher(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = self.now()
            with self.lock:
                self.market.materialise(now)
            for book in {
                self._by_symbol[s]
                for c in self._clients
                for (ch, s) in c.subs
                if ch == "book" and s and not c.stalled
            }:
                with self.lock:
                    self._pair_book(book).move()
            for client in list(self._clients):
                try:
                    await self._push(client, now)
                except ConnectionClosed:
                    continue

    async def _push(self, client: _Client, now: float) -> None:
        if client.stalled:
            return
        for (channel, symbol), params in list(client.subs.items()):
            if channel == "instrument":
                await self._instrument_update(client)
                continue
            assert symbol is not None
            pair = self._by_symbol[symbol]
            if channel == "book":
                await self._book(client, symbol, pair, int(params.get("depth", 10)), snapshot=False)
            elif channel == "trade":
                with self.lock:
                    tape = self.market.tapes[pair]
                    sent = client.trades.get(symbol, len(tape))
                    rows = list(tape.entries[sent:])
                    client.trades[symbol] = len(tape)
                if rows:
                    trades = [self._trade(symbol, pair, row) for row in rows]
                    await self._update(client, "trade", symbol, trades)
            elif channel == "ticker":
                data = self._ticker(symbol, pair, now)
                if data != client.tickers.get(symbol):
                    client.tickers[symbol] = data
                    await self._update(client, "ticker", symbol, [data])
            elif channel == "ohlc":
                minutes = int(params.get("interval", 1))
                data = self._candle(symbol, pair, minutes, now)
                if data != client.candles.get((symbol, minutes)):
                    client.candles[(symbol, minutes)] = data
                    await self._update(client, "ohlc", symbol, [data])
        if client.subs and time.monotonic() - client.last_sent >= self.heartbeat:
            await self._send(client, {"channel": "heartbeat"})

    async def _update(self, client: _Client, channel: str, symbol: str, data: Any) -> None:
        if self._take_fault("drop", channel, symbol):
            return
        await self._send(client, {"channel": channel, "type": "update", "data": data})

    async def _instrument_update(self, client: _Client) -> None:
        with self.lock:
            listed = {p for p in PAIRS if p not in self.market.delisted}
        if listed == client.listed:
            return
        changed = [self._instrument(p) for p in sorted(listed - client.listed)] + [
            {**self._instrument(p), "status": "delisted"} for p in sorted(client.listed - listed)
        ]
        client.listed = listed
        data = {"assets": [], "pairs": changed}
        await self._send(client, {"channel": "instrument", "type": "update", "data": data})

    def depth(self, answer: dict[str, Any], now: float) -> dict[str, Any]:
        """REST Depth's ``answer`` for a pair, with the levels of the book this endpoint serves
        when it has one (the same book on both APIs), up to as many levels as were asked for."""
        ((pair, levels),) = answer.items()
        with self.lock:
            book = self.books.get(pair)
            if book is None:
                return answer
            count = len(levels["asks"])
            sides = {side: book.top(side, count) for side in ("asks", "bids")}
        decimals = PAIRS[pair][4]
        return {
            pair: {
                side: [[fmt(p, decimals), fmt(q, QTY_PRECISION), int(now)] for p, q in top]
                for side, top in sides.items()
            }
        }

    def _pair_book(self, pair: str) -> _PairBook:
        """The pair's book (the caller holds the lock)."""
        if pair not in self.books:
            # At the prices REST Depth answers now, so the two agree on where the market is.
            self.books[pair] = _PairBook(pair, price(pair, self.now()))
        return self.books[pair]

    async def _book(
        self, client: _Client, symbol: str, pair: str, depth: int, *, snapshot: bool
    ) -> None:
        with self.lock:
            book = self._pair_book(pair)
            bids, asks = book.top("bids", depth), book.top("asks", depth)
            full = (set(book.bids), set(book.asks))
        new = (dict(bids), dict(asks))
        entry: dict[str, Any] = {"symbol": symbol}
        if snapshot:
            entry["bids"] = [{"price": p, "qty": q} for p, q in bids]
            entry["asks"] = [{"price": p, "qty": q} for p, q in asks]
        else:
            old = client.books.get(symbol)
            if old is None:
                return
            sides = []
            for (was, now), present in zip(zip(old, new, strict=True), full, strict=True):
                changes = [{"price": p, "qty": q} for p, q in now.items() if was.get(p) != q]
                # A level gone from the book is sent as qty 0; one merely pushed below the
                # depth by a better one is not sent at all (Kraken's rule).
                changes += [
                    {"price": p, "qty": Decimal(0)}
                    for p in was
                    if p not in now and p not in present
                ]
                sides.append(changes)
            if not sides[0] and not sides[1]:
                return
            entry["bids"], entry["asks"] = sides
        client.books[symbol] = new
        digest = checksum(pair, asks, bids)
        if self._take_fault("checksum", "book", symbol):
            digest = (digest + 1) % 2**32
        entry["checksum"] = digest
        entry["timestamp"] = rfc3339(self.now())
        self.book_checksums.append((symbol, entry["timestamp"], checksum(pair, asks, bids)))
        kind = "snapshot" if snapshot else "update"
        if not snapshot and self._take_fault("drop", "book", symbol):
            return
        await self._send(client, {"channel": "book", "type": kind, "data": [entry]})

    def _assets(self) -> list[dict[str, Any]]:
        return [
            {"id": _V2_ASSET.get(alt, alt), "status": "enabled", "precision": dec}
            for alt, dec in ASSETS.values()
        ]

    def _instrument(self, pair: str) -> dict[str, Any]:
        decimals = PAIRS[pair][4]
        symbol = v2_symbol(pair)
        return {
            "symbol": symbol,
            "base": symbol.split("/")[0],
            "quote": symbol.split("/")[1],
            "status": "online",
            "price_precision": decimals,
            "qty_precision": QTY_PRECISION,
            "price_increment": Decimal(1).scaleb(-decimals),
            "qty_increment": Decimal(1).scaleb(-QTY_PRECISION),
        }

    def _trade(self, symbol: str, pair: str, row: list[Any]) -> dict[str, Any]:
        price_text, volume, t, side, kind, _, trade_id = row
        return {
            "symbol": symbol,
            "side": "buy" if side == "b" else "sell",
            "price": Decimal(price_text),
            "qty": Decimal(volume),
            "ord_type": "market" if kind == "m" else "limit",
            "trade_id": trade_id,
            "timestamp": trade_time(t),
        }

    def _ticker(self, symbol: str, pair: str, now: float) -> dict[str, Any]:
        with self.lock:
            rest = self.market.Ticker({"pair": pair}, now)[pair]
        return {
            "symbol": symbol,
            "bid": Decimal(rest["b"][0]),
            "bid_qty": Decimal(rest["b"][2]),
            "ask": Decimal(rest["a"][0]),
            "ask_qty": Decimal(rest["a"][2]),
            "last": Decimal(rest["c"][0]),
            "volume": Decimal(rest["v"][1]),
            "vwap": Decimal(rest["p"][1]),
            "low": Decimal(rest["l"][1]),
            "high": Decimal(rest["h"][1]),
            "change": Decimal(rest["c"][0]) - Decimal(rest["o"]),
        }

    def _candle(self, symbol: str, pair: str, minutes: int, now: float) -> dict[str, Any]:
        step = minutes * 60
        begin = int(now // step * step)
        t, o, h, low, c, vwap, volume, count = candle(pair, step, begin, now)
        return {
            "symbol": symbol,
            "open": Decimal(o),
            "high": Decimal(h),
            "low": Decimal(low),
            "close": Decimal(c),
            "vwap": Decimal(vwap),
            "trades": count,
            "volume": Decimal(volume),
            "interval_begin": rfc3339(t),
            "interval": minutes,
            "timestamp": rfc3339(now),
        }
