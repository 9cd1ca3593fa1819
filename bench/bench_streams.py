"""Kraken's WebSocket v2 messages parsed and stored per second, beside cryptofeed 3.0.1's Kraken
handler fed the same messages in the same run; RSS and lag with ~750 pairs' trade and ticker
streams replayed (issue 28, "Measured").

    python bench/bench_streams.py                 # about 3 minutes: every part
    python bench/bench_streams.py --only replay   # the RSS and lag part alone
    python bench/bench_streams.py --only parts    # where collector's time goes, part by part
    python bench/bench_streams.py --rounds 3 --replay-seconds 20   # a quick look

cryptofeed 3.0.1 needs Python >= 3.13 and is no dependency of the package: install it beside
the project in a venv of that Python (``python3.13 -m venv VENV && VENV/bin/pip install
-e . cryptofeed==3.0.1``) and run the bench with it. Without it the comparison is skipped (one
line) and collector's own figures are still taken.

**Throughput** (in this process, the sides alternating over ``--rounds``, ``bench/rounds.py``):
the same messages, as the JSON text Kraken sends (bare numbers in their own digits), handed to

* ``collector``: the recorder's own path, as ``collector run`` takes it (:func:`collector_handler`):
  a ``streams.feed.Feed`` per channel holding every pair (the recorder's default ``Tuning``: 200
  symbols a connection, a run at 5,000 rows or 20,000 messages or 1 s old), its connections
  :class:`Replayed` (no socket: each message's text goes to ``Connection.receive``, the
  connection's own parsing and refusals, then the feed's handler): ``trade``:
  ``rows.trade_rows`` and ``gaps.TradeIds`` (a repeat dropped, a hole told); ``book``: the pair's
  ``book.Book`` (every level applied, cut to depth, Kraken's CRC32 verified with the pair's
  precisions) and ``rows.book_rows`` every ``snapshot_every`` (1m); ``ticker``: the latest per
  pair per run. Each run (``rows.batch``, with its ``stream_connections`` row) goes to the
  ``Writer``, whose thread stores it through ``Store.write`` into SQLite (a fresh file each
  round). A round's time runs until the feeds are stopped and the writer has stored everything;
  the stored rows are counted against the messages' entries.
* ``collector, parsed``: the same path to the writer's hand-off, the runs made with their rows
  and given to a writer that stores nothing (:class:`Dropped`): set beside ``cryptofeed``, which
  stores nothing either.
* ``cryptofeed``: ``Kraken.message_handler(msg, conn, timestamp)``, cryptofeed's own v2 handler
  (3.0.1 speaks v2, so it gets the very same text): msgspec with ``Decimal`` floats, its
  ``Trade``/``Ticker`` objects, its C ``order_book`` kept to depth 10 with its delta; the
  callbacks append each object to a list (cleared every batch), and the book callback computes
  the book's checksum (``book.book.checksum()``), because ``checksum_validation`` has to be off:
  3.0.1 formats Kraken's checksum from ``str(Decimal)``, not the pair's precisions, and fails on
  the first message of the real capture (counted and printed each run).
* ``cryptofeed+sqlite``: the same, the callbacks' fields (text) written to SQLite with
  ``sqlite3``'s ``executemany`` every ``--batch`` messages (5,000, ``WS_BATCH_ROWS``: as many
  messages as collector's runs hold rows, so larger transactions than collector's), in the
  handler's thread (the storing a user of
  cryptofeed would add: it has no SQLite backend); books every minute of message time, as
  collector's.

**Replay** (a process of its own, so its RSS is collector's path alone): ``--pairs`` (750) pairs
with their precisions, trade and ticker messages made at ``--rate`` messages a second with the
current time as their ``timestamp`` and increasing trade ids per pair, through
:func:`collector_handler`'s trade and ticker feeds and the ``Writer`` into SQLite for
``--replay-seconds``. RSS sampled every second; lag = the time ``BatchStored`` is published for a
message's run minus each message's time as the feed hands it on (its own ``timestamp``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, ratio, spread  # noqa: E402

from collector import defaults  # noqa: E402
from collector.datasets import DEFAULT, STREAMS  # noqa: E402
from collector.events import BatchStored, Events, StreamProblem  # noqa: E402
from collector.jobfile import Stream  # noqa: E402
from collector.records import Prepared, RunRecord  # noqa: E402
from collector.store import Store  # noqa: E402
from collector.streams.book import Book  # noqa: E402
from collector.streams.connection import (  # noqa: E402
    Connection,
    Handler,
    StreamClosed,
    StreamOpened,
    Subscription,
    decoder,
)
from collector.streams.feed import Feed  # noqa: E402
from collector.streams.gaps import TradeIds  # noqa: E402
from collector.streams.rows import (  # noqa: E402
    TRADE_COLUMNS,
    Symbols,
    batch,
    trade_decoder,
    trade_rows,
    trade_values,
)
from collector.streams.tuning import Tuning  # noqa: E402
from collector.writer import Writer  # noqa: E402

#: Kraken's own book session (BTC/USD, depth 10; ../shared/kraken-ws/, copied for the tests).
CAPTURE = ROOT / "tests" / "data" / "book-v2-btcusd-depth10.json"
#: BTC/USD's precisions on the instrument channel (the capture's checksums verify with them).
BTC_PRICE_PRECISION, QTY_PRECISION = 1, 8
CONNECTION = "b3nc4" * 6 + "00"
URL = "wss://ws.kraken.com/v2"


# -- the pairs and their messages ------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One generated pair: canonical name, v2 symbol, price precision and a price of its size."""

    name: str
    symbol: str
    decimals: int
    price: Decimal


_QUOTES = (("USD", "ZUSD"), ("EUR", "ZEUR"), ("USDT", "USDT"), ("USDC", "USDC"), ("BTC", "XXBT"))
_QUOTES += (("ETH", "XETH"), ("GBP", "ZGBP"), ("CAD", "ZCAD"))


def make_pairs(count: int, seed: int = 28) -> list[Pair]:
    """``count`` pairs as Kraken lists them: BTC/USD and ETH/USD first, then made-up bases over
    Kraken's quotes, each with a price precision that fits its price (1 decimal at 60,000, 8 at
    0.0002), as ``instrument`` gives them."""
    rng = random.Random(seed)
    out = [
        Pair("XXBTZUSD", "BTC/USD", 1, Decimal("64668.9")),
        Pair("XETHZUSD", "ETH/USD", 2, Decimal("3120.45")),
    ]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    used = {"BTC", "ETH"}
    while len(out) < count:
        base = "".join(rng.choice(letters) for _ in range(rng.choice((3, 4, 5))))
        if base in used:
            continue
        used.add(base)
        magnitude = rng.randint(-4, 4)  # 0.0001 .. 10,000
        decimals = max(1, min(8, 4 - magnitude))
        for v2, rest in _QUOTES[: rng.choice((1, 1, 2, 3))]:
            if len(out) == count:
                break
            mantissa = Decimal(rng.randint(10**4, 10**5 - 1)).scaleb(magnitude - 4)
            price = mantissa.quantize(Decimal(1).scaleb(-decimals))
            out.append(Pair(f"{base}{rest}", f"{base}/{v2}", decimals, price))
    return out


def wsname(pair: Pair) -> str:
    """AssetPairs' ``wsname`` of a pair: v2's symbol in REST's asset names (``XBT/USD``)."""
    rest = {"BTC": "XBT", "DOGE": "XDG"}
    return "/".join(rest.get(part, part) for part in pair.symbol.split("/"))


def symbols_of(pairs: list[Pair]) -> Symbols:
    """v2 symbols to pair names, as the service reads them from the ``pairs`` table."""
    return Symbols((p.name, wsname(p).replace("/", ""), wsname(p)) for p in pairs)


def stamp(t: float) -> str:
    """RFC 3339 to the microsecond, as Kraken's v2 ``timestamp``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Market:
    """Trade and ticker messages of ``pairs``, as Kraken's v2 feed writes them (JSON text, bare
    numbers in the pair's precision): trade ids increase per pair; a message holds one to three
    trades (split fills share a timestamp)."""

    def __init__(self, pairs: list[Pair], seed: int = 29) -> None:
        self.pairs = pairs
        self.rng = random.Random(seed)
        self.ids = {p.name: 1_000_000 + 7_919 * i for i, p in enumerate(pairs)}
        self.price = {p.name: p.price for p in pairs}
        # BTC/USD and ETH/USD trade most, as on Kraken; the tail a little each.
        self.weights = [50.0, 25.0] + [1.0] * (len(pairs) - 2)

    def pick(self) -> Pair:
        return self.rng.choices(self.pairs, self.weights)[0]

    def _move(self, p: Pair) -> Decimal:
        step = Decimal(1).scaleb(-p.decimals)
        price = self.price[p.name] + step * self.rng.randint(-3, 3)
        self.price[p.name] = price if price > step * 10 else p.price
        return self.price[p.name]

    def trade(self, p: Pair, t: float) -> tuple[str, int]:
        """A ``trade`` update's text and how many trades it holds."""
        n = self.rng.choice((1, 1, 1, 2, 3))
        when = stamp(t)
        entries = []
        for _ in range(n):
            self.ids[p.name] += 1
            qty = Decimal(self.rng.randint(1, 5_000_000_000)).scaleb(-QTY_PRECISION)
            entries.append(
                f'{{"symbol":"{p.symbol}","side":"{self.rng.choice(("buy", "sell"))}",'
                f'"price":{self._move(p)},"qty":{qty},'
                f'"ord_type":"{self.rng.choice(("limit", "market"))}",'
                f'"trade_id":{self.ids[p.name]},"timestamp":"{when}"}}'
            )
        return '{"channel":"trade","type":"update","data":[' + ",".join(entries) + "]}", n

    def ticker(self, p: Pair, t: float) -> str:
        last = self._move(p)
        step = Decimal(1).scaleb(-p.decimals)
        change = step * self.rng.randint(-500, 500)
        return (
            f'{{"channel":"ticker","type":"update","data":[{{"symbol":"{p.symbol}",'
            f'"bid":{last - step},"bid_qty":1.25000000,"ask":{last + step},'
            f'"ask_qty":0.50000000,"last":{last},"volume":1234.56789012,"vwap":{last},'
            f'"low":{last - 10 * step},"high":{last + 10 * step},"change":{change},'
            f'"change_pct":-0.7,"timestamp":"{stamp(t)}"}}]}}'
        )


def dumps(value: Any) -> str:
    """JSON with every Decimal a bare number in its own digits (``4.0``, ``0.00550000``)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def capture_messages() -> list[str]:
    """The real capture (BTC/USD, depth 10): the snapshot and its 509 updates, as Kraken's text."""
    with open(CAPTURE) as f:
        raw = json.load(f, parse_float=Decimal)
    return [dumps(raw["init"]), *(dumps(u) for u in raw["updates"])]


# -- collector's side ------------------------------------------------------------------------------


@dataclass
class Counts:
    """What collector's side did: messages fed and handed to the writer in runs, rows made, the
    feed's problems (a refused entry, a checksum that failed)."""

    messages: int = 0
    submitted: int = 0  # messages the feed's runs say they hold
    trades: int = 0
    tickers: int = 0
    book_rows: int = 0
    runs: int = 0
    mismatches: int = 0
    refused: list[str] = field(default_factory=list)


class Replayed(Connection):
    """A :class:`~collector.streams.connection.Connection` reading recorded text instead of a
    socket: :meth:`start` tells the feed it is open (no thread, no socket), and the bench hands
    each message to :meth:`Connection.receive`, the connection's own path (counted, parsed with
    its bounds, handed to the feed's handler in the caller's thread)."""

    def __init__(
        self,
        url: str,
        subscriptions: Iterable[Subscription],
        handler: Handler,
        *,
        publish: Callable[[object], None],
        **options: Any,
    ) -> None:
        self.subscriptions = list(subscriptions)
        super().__init__(url, self.subscriptions, handler, publish=publish, **options)
        self.tell = publish
        self.open = False

    def start(self) -> Replayed:
        self.open = True
        self.connections += 1
        self.tell(StreamOpened(self.url, self.connections))
        return self

    def stop(self, timeout: float | None = None) -> bool:
        if self.open:
            self.open = False
            self.tell(StreamClosed("the replay ended", self.messages, self.connections))
        return True


def collector_handler(
    writer: Writer | Dropped,
    symbols: Symbols,
    *,
    precisions: dict[str, int],
    channels: tuple[str, ...] = ("trade", "ticker", "book"),
    stamps: dict[str, list[float]] | None = None,
) -> tuple[Callable[[str, str, str], None], Callable[[], None], Counts, dict[str, Feed]]:
    """Collector's handling of a message as ``collector run`` does it, from its text to a run
    handed to the ``writer``: a :class:`~collector.streams.feed.Feed` per channel (the
    recorder's, with its default :class:`~collector.streams.tuning.Tuning`: 200 symbols a
    connection, a run at 5,000 rows or 20,000 messages or 1 s old) holding every symbol of
    ``symbols``, its connections :class:`Replayed`. Returns ``(on_message(raw, channel, symbol), finish(),
    counts, feeds)``: ``on_message`` gives the text to the connection holding ``symbol`` (as
    Kraken's socket for it would); ``finish`` stops the feeds (their last runs to the writer).

    The recorder's clock (``Feed.tick``, every 0.25 s in its own thread) is ticked here between
    messages. ``stamps``, when given, collects each run's messages' own times (epoch seconds)
    under the run's ``uid``, as the recorder keeps them for ``StreamStored``'s lags."""
    counts = Counts()
    tuning = Tuning()
    routes: dict[tuple[str, str], Replayed] = {}

    def connect(
        url: str, subscriptions: list[Subscription], handler: Handler, **kw: Any
    ) -> Replayed:
        conn = Replayed(url, subscriptions, handler, **kw)
        for sub in conn.subscriptions:
            routes.update(dict.fromkeys(((sub.channel, s) for s in sub.symbols), conn))
        return conn

    def submit(
        record: RunRecord, channel: str, messages: int, rows: int, times: list[datetime]
    ) -> None:
        counts.submitted += messages
        counts.runs += 1
        counts.trades += len(record.rows.get("trades", ()))
        counts.tickers += len(record.rows.get("ticker", ()))
        counts.book_rows += len(record.rows.get("book", ()))
        if stamps is not None and messages:
            stamps[record.uid] = [t.timestamp() for t in times]
        writer.submit(record)

    def publish(event: object) -> None:
        if isinstance(event, StreamProblem):
            if event.kind == "checksum":
                counts.mismatches += 1
            else:
                counts.refused.append(f"{event.kind}: {event.message}")

    feeds: dict[str, Feed] = {}
    for channel in channels:
        book = channel == "book"
        stream = Stream(
            name=f"bench-{channel}",
            channel=channel,
            all_pairs=True,
            depth=defaults.WS_DEPTH if book else None,
            snapshot_every=defaults.WS_SNAPSHOT_EVERY if book else None,
        )
        feed = Feed(
            stream,
            url=URL,
            api=None,  # the gap filler's REST client: the bench's trade ids make no hole
            submit=submit,
            publish=publish,
            tuning=tuning,
            connect=connect,
        )
        feed.symbols = symbols
        wanted: dict[str, tuple[int, int] | None] = {
            symbol: (precision, QTY_PRECISION) if book else None
            for symbol, precision in precisions.items()
        }
        feed.hold(wanted)
        feeds[channel] = feed
    step = min(tuning.batch_seconds / 2, 0.25)
    ticked = [time.monotonic()]

    def on_message(raw: str, channel: str, symbol: str) -> None:
        routes[channel, symbol].receive(raw)
        counts.messages += 1
        if (clock := time.monotonic()) - ticked[0] >= step:
            ticked[0] = clock
            now = datetime.now(UTC)
            for feed in feeds.values():
                feed.tick(now)

    def finish() -> None:
        for feed in feeds.values():
            feed.stop()

    return on_message, finish, counts, feeds


class Dropped:
    """A writer that stores nothing: collector's path up to the writer's hand-off (the runs
    made, with their rows), to set beside cryptofeed's handler, which stores nothing either."""

    def submit(self, record: RunRecord) -> None:
        pass


def fresh_store(folder: str, pairs: list[Pair]) -> Store:
    """A migrated SQLite store in a file of its own, its ``pairs`` table holding ``pairs`` (as
    the service's AssetPairs job fills it: stored rows are under canonical names)."""
    path = tempfile.mkstemp(suffix=".sqlite", dir=folder)[1]
    store = Store.from_url(f"sqlite:///{path}", datasets=(*DEFAULT, *STREAMS))
    store.upgrade()
    now = datetime.now(UTC)
    rows = [
        {
            "pair": p.name,
            "altname": wsname(p).replace("/", ""),
            "wsname": wsname(p),
            "base": wsname(p).split("/")[0],
            "quote": wsname(p).split("/")[1],
            "pair_decimals": p.decimals,
            "lot_decimals": QTY_PRECISION,
            "cost_decimals": 5,
            "ordermin": Decimal("0.0001"),
            "costmin": Decimal("0.5"),
            "status": "online",
            "updated_at": now,
        }
        for p in pairs
    ]
    store.write(
        [
            RunRecord(
                job="bench:pairs",
                method="AssetPairs",
                params={},
                scheduled_at=now,
                started_at=now,
                finished_at=now,
                rows={"pairs": rows},
            )
        ]
    )
    return store


def stored_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            name: conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()
            for name in ("trades", "ticker", "book")
        }


# -- cryptofeed's side -----------------------------------------------------------------------------


def cryptofeed_version() -> str | None:
    try:
        from importlib.metadata import version

        import cryptofeed  # noqa: F401
    except ImportError:
        return None
    return version("cryptofeed")


class CryptofeedSide:
    """cryptofeed's Kraken feed, fed raw messages through ``message_handler`` (no network: its
    symbol map is set from the generated pairs). ``sqlite``: the callbacks' fields go to a SQLite
    file every ``batch_messages`` messages, as a user of cryptofeed would store them."""

    def __init__(self, pairs: list[Pair], *, sqlite: str | None, batch_messages: int) -> None:
        from cryptofeed.defines import L2_BOOK, TICKER, TRADES
        from cryptofeed.exchanges.kraken import Kraken
        from cryptofeed.symbols import Symbols as CfSymbols

        CfSymbols.set(Kraken.id, {p.symbol.replace("/", "-"): p.symbol for p in pairs}, {})
        self.trades: list[Any] = []
        self.tickers: dict[str, Any] = {}
        self.books: list[tuple[str, float, Any]] = []
        self.checksums = 0
        self.seen = 0  # trades handed to the callback
        self.batch_messages = batch_messages
        self.slots: dict[str, int] = {}
        self.db = sqlite3.connect(sqlite) if sqlite else None
        if self.db is not None:
            self.db.executescript(
                "CREATE TABLE trades (pair TEXT, trade_id INTEGER, time TEXT, price TEXT,"
                " volume TEXT, side TEXT, order_type TEXT, PRIMARY KEY (pair, trade_id));"
                "CREATE TABLE ticker (pair TEXT, taken_at TEXT, bid TEXT, ask TEXT);"
                "CREATE TABLE book (pair TEXT, taken_at TEXT, side TEXT, level INTEGER,"
                " price TEXT, qty TEXT, PRIMARY KEY (pair, taken_at, side, level));"
            )
        self.feed = Kraken(
            symbols=[p.symbol.replace("/", "-") for p in pairs[:1]],
            channels=[TRADES, TICKER, L2_BOOK],
            callbacks={TRADES: self._trade, TICKER: self._ticker, L2_BOOK: self._book},
            max_depth=10,
            checksum_validation=False,
        )

    async def _trade(self, trade: Any, receipt: float) -> None:
        self.trades.append(trade)
        self.seen += 1

    async def _ticker(self, ticker: Any, receipt: float) -> None:
        self.tickers[ticker.symbol] = ticker

    async def _book(self, book: Any, receipt: float) -> None:
        book.book.checksum()  # what checksum_validation would compute (see the module's text)
        self.checksums += 1
        if book.timestamp is None:  # a snapshot has no time: as collector's, no rows for it
            return
        slot = int(book.timestamp // defaults.WS_SNAPSHOT_EVERY)
        if self.slots.get(book.symbol) != slot:  # a snapshot a minute, as collector's
            self.slots[book.symbol] = slot
            self.books.append((book.symbol, book.timestamp, book.book.to_dict()))

    def store(self) -> None:
        if self.db is not None:
            self.db.executemany(
                "INSERT OR IGNORE INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        t.symbol,
                        int(t.id),
                        stamp(t.timestamp),
                        str(t.price),
                        str(t.amount),
                        t.side,
                        t.type,
                    )
                    for t in self.trades
                ],
            )
            self.db.executemany(
                "INSERT INTO ticker VALUES (?, ?, ?, ?)",
                [
                    (t.symbol, stamp(t.timestamp), str(t.bid), str(t.ask))
                    for t in self.tickers.values()
                ],
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO book VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (symbol, stamp(at), side, level, str(price), str(qty))
                    for symbol, at, levels in self.books
                    for side in ("bid", "ask")
                    for level, (price, qty) in enumerate(levels[side].items())
                ],
            )
            self.db.commit()
        self.trades.clear()
        self.tickers.clear()
        self.books.clear()

    async def run(self, messages: list[str]) -> None:
        handler = self.feed.message_handler
        for n, raw in enumerate(messages, 1):
            await handler(raw, None, time.time())
            if n % self.batch_messages == 0:
                self.store()
        self.store()


def cryptofeed_checksums(messages: list[str]) -> tuple[int, int]:
    """How many of the capture's messages cryptofeed 3.0.1's own checksum validation passes:
    ``(passed, messages)``; after a failure it is fed the rest as it would be after a resync."""
    from cryptofeed.defines import L2_BOOK
    from cryptofeed.exceptions import BadChecksum
    from cryptofeed.exchanges.kraken import Kraken
    from cryptofeed.symbols import Symbols as CfSymbols

    CfSymbols.set(Kraken.id, {"BTC-USD": "BTC/USD"}, {})

    async def nothing(book: Any, receipt: float) -> None:
        return None

    feed = Kraken(
        symbols=["BTC-USD"], channels=[L2_BOOK], callbacks={L2_BOOK: nothing}, max_depth=10
    )
    passed = 0

    async def go() -> None:
        nonlocal passed
        for raw in messages:
            try:
                await feed.message_handler(raw, None, time.time())
                passed += 1
            except BadChecksum:
                pass

    asyncio.run(go())
    return passed, len(messages)


# -- part 1: throughput ----------------------------------------------------------------------------


def trade_workload(pairs: list[Pair], count: int) -> tuple[list[str], list[str], int]:
    """``count`` trade messages: their text, each one's symbol, and the trades they hold."""
    market = Market(pairs)
    t0 = datetime(2026, 8, 10, 14, 0, tzinfo=UTC).timestamp()
    out, symbols, trades = [], [], 0
    for i in range(count):
        p = market.pick()
        raw, n = market.trade(p, t0 + i * 0.01)
        out.append(raw)
        symbols.append(p.symbol)
        trades += n
    return out, symbols, trades


def throughput(args: argparse.Namespace, folder: str, version: str | None) -> dict[str, Any]:
    pairs = make_pairs(args.pairs)
    symbols = symbols_of(pairs)
    precisions = {p.symbol: p.decimals for p in pairs}
    trades, trade_symbols, trade_count = trade_workload(pairs, args.trade_messages)
    capture = capture_messages()
    books = capture * args.book_passes
    workloads = {
        "trade": (trades, trade_symbols, trade_count),
        "book": (books, ["BTC/USD"] * len(books), len(books)),
    }
    results: dict[str, Any] = {}
    for channel, (messages, routes, entries) in workloads.items():
        print(f"{channel}: {len(messages):,} messages ({entries:,} entries) a round", flush=True)

        def collector_side(
            channel: str = channel,
            messages: list[str] = messages,
            routes: list[str] = routes,
            entries: int = entries,
        ) -> float:
            store = fresh_store(folder, pairs)
            writer = Writer(store, batch_max=defaults.BATCH_MAX)
            writer.start()
            try:
                on_message, finish, counts, feeds = collector_handler(
                    writer, symbols, precisions=precisions, channels=(channel,)
                )
                start = time.perf_counter()
                for raw, symbol in zip(messages, routes, strict=True):
                    on_message(raw, channel, symbol)
                finish()
                writer.flush()
                took = time.perf_counter() - start
            finally:
                writer.close()
            stored = stored_counts(store)
            store.dispose()
            assert not counts.refused, counts.refused[:3]
            assert counts.mismatches == 0, f"{counts.mismatches} checksums failed"
            assert counts.submitted == counts.messages == len(messages), counts
            if channel == "trade":  # every trade stored, once
                assert stored["trades"] == counts.trades == entries, (stored, counts)
            else:  # every update applied and verified (each pass begins with its snapshot)
                book = feeds["book"].books["BTC/USD"]
                assert book.synced and book.updates == entries - args.book_passes, book.updates
                assert stored["book"] == counts.book_rows > 0, (stored, counts)
            return len(messages) / took

        def cryptofeed_side(
            messages: list[str] = messages, sqlite: bool = False, entries: int = entries
        ) -> float:
            path = tempfile.mkstemp(suffix=".sqlite", dir=folder)[1] if sqlite else None
            if path:
                os.unlink(path)
            side = CryptofeedSide(pairs, sqlite=path, batch_messages=args.batch)
            start = time.perf_counter()
            asyncio.run(side.run(messages))
            took = time.perf_counter() - start
            # Every entry handled: each trade to the callback (and stored), each book checked.
            assert (side.seen if messages is trades else side.checksums) == entries
            if side.db is not None:
                (n,) = side.db.execute("SELECT count(*) FROM trades").fetchone()
                side.db.close()
                assert messages is books or n == entries, (n, entries)
            return len(messages) / took

        def parsed_side(
            channel: str = channel,
            messages: list[str] = messages,
            routes: list[str] = routes,
            entries: int = entries,
        ) -> float:
            on_message, finish, counts, _ = collector_handler(
                Dropped(), symbols, precisions=precisions, channels=(channel,)
            )
            start = time.perf_counter()
            for raw, symbol in zip(messages, routes, strict=True):
                on_message(raw, channel, symbol)
            finish()
            took = time.perf_counter() - start
            assert counts.submitted == counts.messages == len(messages), counts
            assert channel != "trade" or counts.trades == entries, counts
            return len(messages) / took

        sides: dict[str, Callable[[], float]] = {"collector": collector_side}
        sides["collector, parsed"] = parsed_side
        if version is not None:
            sides["cryptofeed"] = cryptofeed_side
            sides["cryptofeed+sqlite"] = lambda m=messages: cryptofeed_side(m, sqlite=True)
        results[channel] = alternate(sides, args.rounds)
    return results


# -- part 2: the replay ----------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Lags:
    """Lags in 1 ms buckets up to a minute (one for anything longer): memory fixed at the start,
    so the measuring does not grow the RSS it measures."""

    def __init__(self, buckets: int = 60_000) -> None:
        self.buckets = array("q", bytes(8 * (buckets + 1)))
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.buckets[min(len(self.buckets) - 1, max(0, int(seconds * 1000)))] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding the ``q`` quantile, in seconds."""
        rank, seen = q * self.count, 0
        for ms, n in enumerate(self.buckets):
            seen += n
            if n and seen >= rank:
                return (ms + 1) / 1000
        return self.max


def replay(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """~750 pairs' trade and ticker streams at ``args.rate`` messages a second for
    ``args.replay_seconds``, in this process: RSS every second, lag of every message."""
    pairs = make_pairs(args.pairs)
    symbols = symbols_of(pairs)
    precisions = {p.symbol: p.decimals for p in pairs}
    market = Market(pairs)
    store = fresh_store(folder, pairs)
    events = Events()
    lags = Lags()
    stamps: dict[str, list[float]] = {}

    def stored(event: BatchStored) -> None:
        now = time.time()
        for record in event.records:
            for t in stamps.pop(record.uid, ()):
                lags.add(now - t)

    events.subscribe(BatchStored, stored)
    writer = Writer(store, events=events)
    writer.start()
    on_message, finish, counts, _ = collector_handler(
        writer, symbols, precisions=precisions, channels=("trade", "ticker"), stamps=stamps
    )
    # Every pair's ticker once first (as the snapshots after subscribing), then the mix.
    for p in pairs:
        on_message(market.ticker(p, time.time()), "ticker", p.symbol)
    rss: list[tuple[float, float]] = [(0.0, rss_mb())]
    sent, start, cpu_start = 0, time.monotonic(), time.process_time()
    tick = 0.01
    try:
        while (elapsed := time.monotonic() - start) < args.replay_seconds:
            due = int(elapsed * args.rate)
            while sent < due:
                p = market.pick()
                now = time.time()
                if market.rng.random() < 0.4:
                    on_message(market.trade(p, now)[0], "trade", p.symbol)
                else:
                    on_message(market.ticker(p, now), "ticker", p.symbol)
                sent += 1
            if elapsed - rss[-1][0] >= 1.0:
                rss.append((elapsed, rss_mb()))
            time.sleep(max(0.0, start + (sent + 1) / args.rate - time.monotonic(), tick / 10))
        finish()
        writer.flush()
    finally:
        writer.close()
    rss.append((time.monotonic() - start, rss_mb()))
    cpu = time.process_time() - cpu_start
    total = stored_counts(store)
    store.dispose()
    assert not counts.refused, counts.refused[:3]
    assert total["trades"] == counts.trades, (total, counts)
    return {
        "pairs": len(pairs),
        "messages": counts.messages,
        "seconds": args.replay_seconds,
        "trades": counts.trades,
        "tickers": counts.tickers,
        "stored": total,
        "rss": rss,
        "cpu": cpu,
        "lag_p50": lags.quantile(0.5),
        "lag_p99": lags.quantile(0.99),
        "lag_max": lags.max,
        "lags": lags.count,
    }


# -- where collector's time goes --------------------------------------------------------------------


def parts(args: argparse.Namespace, folder: str) -> dict[str, float]:
    """Collector's path in pieces, each timed alone over the throughput part's messages (best of
    3): microseconds a message. Not a sum of the rounds' time (the writer's thread overlaps the
    handler's there), but where it goes."""
    pairs = make_pairs(args.pairs)
    symbols = symbols_of(pairs)
    trades, _, _ = trade_workload(pairs, args.trade_messages)
    books = capture_messages() * args.book_passes

    def best(fn: Callable[[], object], count: int) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1e6 / count

    out: dict[str, float] = {}
    decode, typed = decoder(), trade_decoder()
    parsed = [decode(raw) for raw in trades]
    now = datetime.now(UTC)
    out["trade: rows.trade_decoder (msgspec into TradeMessage: what the feed takes)"] = best(
        lambda: [typed(raw) for raw in trades], len(trades)
    )
    out["trade: streams.connection.decoder (msgspec, Decimal; the general way)"] = best(
        lambda: [decode(raw) for raw in trades], len(trades)
    )
    out["trade: json.loads(parse_float=Decimal) (a reference)"] = best(
        lambda: [json.loads(raw, parse_float=Decimal) for raw in trades], len(trades)
    )
    entries = [typed(raw).data for raw in trades]
    out["trade: rows.trade_values (the stored text tuples)"] = best(
        lambda: [trade_values(data, symbols, now) for data in entries], len(trades)
    )
    rows = [row for message in parsed for row in trade_rows(message["data"], symbols).rows]
    out["trade: rows.trade_rows (dicts: the general way)"] = best(
        lambda: [trade_rows(message["data"], symbols) for message in parsed], len(trades)
    )

    def ids() -> None:
        seen = TradeIds(lambda hole: None)
        for row in rows:
            seen.seen(row["pair"], row["trade_id"], row["time"])

    out["trade: gaps.TradeIds"] = best(ids, len(trades))
    per_run = max(1, round(len(rows) / len(trades) * args.batch))
    stores = [fresh_store(folder, pairs) for _ in range(3)]

    values = [v for data in entries for v, _ in trade_values(data, symbols, now)[0]]

    def write() -> None:
        store = stores.pop()
        now = datetime.now(UTC)
        for i in range(0, len(values), per_run):
            chunk = {"trades": Prepared(TRADE_COLUMNS, values[i : i + per_run])}
            store.write(
                [
                    batch(
                        "bench",
                        "trade",
                        CONNECTION,
                        chunk,
                        started_at=now,
                        finished_at=now,
                        messages=args.batch,
                    )
                ]
            )
        store.dispose()

    out[
        f"trade: Store.write of Prepared tuples, SQLite, a run of {per_run} trades a transaction"
    ] = best(write, len(trades))
    parsed_books = [decode(raw) for raw in books]

    def apply() -> Book:
        book = Book("BTC/USD", depth=10, price_precision=1, qty_precision=QTY_PRECISION)
        for message in parsed_books:
            entry = message["data"][0]
            (book.snapshot if message["type"] == "snapshot" else book.update)(entry)
        return book

    out["book: streams.connection.decoder (msgspec, Decimal)"] = best(
        lambda: [decode(raw) for raw in books], len(books)
    )
    out["book: Book.snapshot/update (apply, cut, checksum)"] = best(apply, len(books))
    book = apply()
    out["book: Book.checksum alone, as often"] = best(
        lambda: [book.checksum() for _ in books], len(books)
    )
    return out


def report_parts(figures: dict[str, float]) -> None:
    print("\nwhere collector's time goes, each part alone (best of 3), microseconds a message:")
    for name, us in figures.items():
        print(f"  {us:7.1f}  {name}")


# -- the report ------------------------------------------------------------------------------------


def report_throughput(results: dict[str, Any]) -> None:
    for channel, sides in results.items():
        print(f"\n{channel} messages/s, median (min-max) of {len(sides['collector'])} rounds:")
        for name, values in sides.items():
            print(f"  {name:18} {spread(values)}")
        for ref in ("cryptofeed", "cryptofeed+sqlite"):
            if ref in sides:
                print(f"  collector / {ref}: {ratio(sides['collector'], sides[ref])}")
        if "cryptofeed" in sides:
            parsed = ratio(sides["collector, parsed"], sides["cryptofeed"])
            print(f"  collector, parsed / cryptofeed (neither stores): {parsed}")


def report_replay(r: dict[str, Any]) -> None:
    values = [mb for _, mb in r["rss"]]
    tenth = values[max(1, len(values) // 10)]
    print(
        f"\nreplay: {r['pairs']} pairs' trade and ticker streams, {r['messages']:,} messages in "
        f"{r['seconds']:.0f} s ({r['trades']:,} trades, {r['tickers']:,} tickers; stored "
        f"{r['stored']['trades']:,} trades, {r['stored']['ticker']:,} ticker rows)"
    )
    print(
        f"  RSS MB: start {values[0]:.1f}, at 10% {tenth:.1f}, max {max(values):.1f}, "
        f"end {values[-1]:.1f} ({len(values)} samples, one a second)"
    )
    step = max(1, len(values) // 10)
    print("  RSS MB every tenth: " + ", ".join(f"{mb:.1f}" for mb in values[::step]))
    print(f"  CPU: {r['cpu'] / r['seconds'] * 100:.0f}% of a core (all threads)")
    print(
        f"  lag (own timestamp -> stored), {r['lags']:,} messages: p50 {r['lag_p50'] * 1e3:.0f} ms, "
        f"p99 {r['lag_p99'] * 1e3:.0f} ms, max {r['lag_max'] * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("throughput", "parts", "replay"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=750)
    parser.add_argument("--trade-messages", type=int, default=20_000)
    parser.add_argument("--book-passes", type=int, default=10, help="of the capture's 510")
    parser.add_argument(
        "--batch",
        type=int,
        default=defaults.WS_BATCH_ROWS,
        help="cryptofeed+sqlite's messages a transaction (collector's runs: its own tuning)",
    )
    parser.add_argument("--rate", type=float, default=1_000.0, help="replay's messages/s")
    parser.add_argument("--replay-seconds", type=float, default=120.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as folder:
        if args.child:
            print(json.dumps(replay(args, folder)))
            return
        print(f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
        if args.only in (None, "throughput"):
            version = cryptofeed_version()
            if version is None:
                print("cryptofeed not installed (3.0.1 needs Python >= 3.13): comparison skipped")
            else:
                passed, total = cryptofeed_checksums(capture_messages())
                print(
                    f"cryptofeed {version}: its checksum passes {passed} of the capture's {total}"
                )
            report_throughput(throughput(args, folder, version))
        if args.only in (None, "parts"):
            report_parts(parts(args, folder))
        if args.only in (None, "replay"):
            child = [sys.executable, __file__, "--child", *sys.argv[1:]]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            report_replay(json.loads(out.splitlines()[-1]))
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
