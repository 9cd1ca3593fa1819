"""One stream of the job file, recorded: its connections, each message made rows, rows stored in
batch runs (issue 28; docs/streams.md). :class:`~collector.streams.recorder.Recorder` keeps a
:class:`Feed` per stream and tells it which symbols to hold (:meth:`Feed.hold`).

* **Connections.** A stream's symbols are split across :class:`Connection`\\ s of at most
  ``per_connection`` symbols each (a link each); a symbol added goes to the first link with room,
  else to a new one; a link left with no symbol is closed.
* **Messages → rows** (:mod:`collector.streams.rows`), in the connection's thread:
  ``trade`` rows new by :class:`~collector.streams.gaps.TradeIds` (a reconnect's snapshot repeats
  the last 50), each hole handed to the stream's :class:`~collector.streams.gaps.Filler` (REST
  ``Trades`` through the shared public client); ``book`` entries into each pair's
  :class:`~collector.streams.book.Book` (every checksum verified; a mismatch is a
  ``StreamProblem(kind="checksum")``, the pair resubscribed, and a ``gaps`` row from the last
  verified update to the fresh snapshot), its top levels every ``snapshot_every``; ``ticker``
  the latest a pair; ``ohlc`` through :class:`~collector.streams.rows.Candles`.
* **Batches.** Each link's rows wait in one batch, a run when stored (``stream:NAME``, ``params``
  naming the connection, the ``stream_connections`` row with it), handed to the writer when it
  holds ``batch_rows`` rows or ``batch_messages`` messages, when it is ``batch_seconds`` old (:meth:`Feed.tick`), and
  when its connection opens or closes. Rows are keyed in the batch as in their table, so a batch
  holds one of each (the latest ticker, the latest word on a candle).

The surprise: a lost connection is a gap in every book it carried too. Such books wait for their
fresh snapshot like one whose checksum failed, and get the same ``gaps`` row.

Why one module of this length: the links, the per-pair state and the batches are one stream's,
changed together from its connections' threads under one set of locks; split, each part would
reach into the others'.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import defaults
from ..errors import Status
from ..events import STREAM_STOPPED, StreamConnected, StreamDisconnected, StreamGap, StreamProblem
from ..jobfile import Stream
from ..records import Prepared, RunRecord
from . import rows as rowlib
from .book import Book, BookError, BookMismatch
from .connection import (
    Connection,
    StreamClosed,
    StreamFailed,
    StreamOpened,
    Subscribed,
    Subscription,
)
from .gaps import Fill, Filler, Hole, TradeIds
from .rows import Candles, Every, Symbols
from .tuning import Tuning

logger = logging.getLogger(__name__)

__all__ = ["Feed", "Submit"]

#: ``(record, channel, messages, rows, times)``: a batch for the writer, with each message's time.
Submit = Callable[[RunRecord, str, int, int, list[datetime]], None]

# How a row is keyed within a batch: as in its table (ticker's run_id is the batch's own).
_KEYS: dict[str, tuple[str, ...]] = {
    "trades": ("pair", "trade_id"),
    "book": ("pair", "taken_at", "side", "level"),
    "ticker": ("pair",),
    "ohlc": ("pair", "interval", "time"),
    "gaps": ("job", "dataset", "pair", "start"),
}
# Failure kinds that end a connection: told as StreamDisconnected's reason, not as a problem.
_ENDINGS = ("disconnect", "stale")
#: A failure that ends no connection is a failed run of the stream (``runs``), with this status:
#: Kraken's refusals as its errors, what could not be read as a bad answer.
_FAILURE_STATUS = {
    "connect": Status.CONNECTION_ERROR,
    "refused": Status.KRAKEN_ERROR,
    "rate": Status.KRAKEN_ERROR,
    "resubscribe": Status.KRAKEN_ERROR,
    "protocol": Status.BAD_RESPONSE,
    "handler": Status.BAD_RESPONSE,
}


@dataclass
class _Batch:
    started_at: datetime
    tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    trades: list[tuple[Any, ...]] = field(default_factory=list)  # the Prepared tuples
    messages: int = 0
    rows: int = 0
    times: list[datetime] = field(default_factory=list)

    def add(self, table: str, row: dict[str, Any]) -> None:
        key = tuple(row[c] for c in _KEYS[table])
        rows = self.tables.setdefault(table, {})
        self.rows += key not in rows  # a later word on a row replaces it: still one row
        rows[key] = row


_FAILURE_EVERY = defaults.WS_FAILURE_ROW_EVERY


@dataclass(eq=False)
class _Failures:
    """One kind of failure: when its last row was written, how many came since (only counted),
    and the latest of those (``uid, pair, message, log``)."""

    at: datetime
    since: int = 0
    latest: tuple[str | None, str | None, str, bool] | None = None


@dataclass(eq=False)
class _Link:
    """One connection of the stream: its symbols, the session it is in, its batch."""

    number: int
    symbols: set[str] = field(default_factory=set)
    conn: Connection | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    uid: str | None = None
    url: str = ""
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    reason: str | None = None
    data: int = 0  # data messages of this session
    failure: str | None = None  # the kind that ended it (disconnect, stale)
    changed: bool = False  # the stream_connections row changed since the last batch
    stopping: bool = False
    started: bool = False
    acked: set[str] = field(default_factory=set)
    batch: _Batch | None = None


class Feed:
    """One :class:`~collector.jobfile.Stream`: constructing it does no I/O; :meth:`hold` opens
    connections for the symbols it is given, :meth:`stop` closes them (close frames) and stores
    what is left.

    :param api: the shared public client (the gap filler's REST calls, on its budget)
    :param submit: hands a batch to the writer (and remembers its times for ``StreamStored``)
    :param publish: the service's events
    :param connect: makes each link's :class:`Connection` (its signature); a replay passes one
        that reads recorded text instead of a socket
    """

    def __init__(
        self,
        stream: Stream,
        *,
        url: str,
        api: Any,
        submit: Submit,
        publish: Callable[[object], None],
        tuning: Tuning,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        connect: Callable[..., Connection] = Connection,
    ) -> None:
        self.stream = stream
        self.name = stream.name
        self.channel = stream.channel
        self.job = f"stream:{stream.name}"
        self.url = url
        self._submit = submit
        self._publish = publish
        self.tuning = tuning
        self._now = now
        self._connect = connect
        self.symbols = Symbols()  # the recorder's current names (replaced whole, never changed)
        self.links: list[_Link] = []
        self._owner: dict[str, _Link] = {}  # symbol -> its link
        self._lock = threading.RLock()  # links, owners and per-pair state
        self._numbers = 0
        self.stopping = False
        self._failed: dict[str, _Failures] = {}  # kind -> its last row, the failures since
        # per pair, only while subscribed
        self.books: dict[str, Book] = {}
        self._resync: dict[str, tuple[datetime | None, str]] = {}  # symbol -> gap start, why
        self._gap_starts: dict[str, datetime] = {}
        self._every = Every(stream.snapshot_every or 60.0)
        self._candles = Candles()
        self.filler: Filler | None = None
        self._filling = False
        self.ids: TradeIds | None = None
        if self.channel == "trade":
            self.filler = Filler(api, self._filled, job=self.job, backoff=tuning.gap_backoff)
            self.ids = TradeIds(self.filler.submit)
        options: dict[str, Any] = {}
        if self.channel == "book":
            options["depth"] = stream.depth
        if self.channel == "ohlc":
            options["interval"] = stream.interval
        self._options = options

    # -- what the recorder asks -----------------------------------------------------------------

    def held(self) -> set[str]:
        """The symbols this stream holds (asked for, acknowledged or not)."""
        with self._lock:
            return set(self._owner)

    def acknowledged(self) -> set[str]:
        """The symbols Kraken acknowledged on the open connections."""
        with self._lock:
            return {s for link in self.links for s in link.acked}

    def hold(self, wanted: dict[str, tuple[int, int] | None]) -> None:
        """Hold exactly ``wanted`` (v2 symbol → ``(price_precision, qty_precision)``, None when
        the channel needs none): new symbols subscribed (on a link with room, else a new one),
        the others unsubscribed and their state dropped."""
        if self.stopping:
            return
        if self.filler is not None and not self._filling:
            self._filling = True
            self.filler.start()
        with self._lock:
            gone = [s for s in self._owner if s not in wanted]
            new = [s for s in wanted if s not in self._owner]
            for symbol in gone:
                self._drop(symbol)
            for symbol in new:
                precisions = wanted[symbol]
                if self.channel == "book" and precisions is not None:
                    price, qty = precisions
                    self.books[symbol] = Book(
                        symbol,
                        depth=self.stream.depth or 10,
                        price_precision=price,
                        qty_precision=qty,
                    )
            added = self._place(new)
            empty = [link for link in self.links if not link.symbols]
            self.links = [link for link in self.links if link.symbols]
        for link, symbols in added:
            assert link.conn is not None
            if not link.started:
                link.started = True
                link.conn.start()
            else:
                link.conn.subscribe(Subscription(self.channel, tuple(symbols), self._options))
        for link in empty:
            self._close(link)
        if gone or new:
            logger.info(
                "stream %s: %d symbol(s) on %d connection(s) (+%d, -%d)",
                self.name,
                len(wanted),
                len(self.links),
                len(new),
                len(gone),
            )

    def _place(self, new: list[str]) -> list[tuple[_Link, list[str]]]:
        """Put ``new`` symbols on links with room, then on new links (the caller holds the
        lock); each link and the symbols it takes."""
        out: list[tuple[_Link, list[str]]] = []
        limit = self.tuning.per_connection
        rest = list(new)
        for link in self.links:
            room = limit - len(link.symbols)
            if room > 0 and rest:
                take, rest = rest[:room], rest[room:]
                link.symbols.update(take)
                self._owner.update(dict.fromkeys(take, link))
                out.append((link, take))
        while rest:
            take, rest = rest[:limit], rest[limit:]
            link = self._link(take)
            self.links.append(link)
            out.append((link, take))
        return out

    def _link(self, symbols: list[str]) -> _Link:
        self._numbers += 1
        link = _Link(self._numbers, set(symbols))
        self._owner.update(dict.fromkeys(symbols, link))
        t = self.tuning
        link.conn = self._connect(
            self.url,
            [Subscription(self.channel, tuple(symbols), self._options)],
            functools.partial(self._message, link),  # a C call a message, not a lambda's frame
            publish=lambda event: self._event(link, event),
            name=f"{self.name}#{link.number}",
            stale_after=min(self.stream.stale_after, t.stale_after),
            rate=t.rate,
            batch=t.request_symbols,
            backoff=t.backoff,
            typed=rowlib.trade_decoder if self.channel == "trade" else None,
        )
        return link

    def _drop(self, symbol: str) -> None:
        """Forget a symbol and everything kept for its pair (the caller holds the lock)."""
        link = self._owner.pop(symbol)
        link.symbols.discard(symbol)
        link.acked.discard(symbol)
        if link.conn is not None and link.symbols:
            link.conn.unsubscribe(Subscription(self.channel, (symbol,), self._options))
        self.books.pop(symbol, None)
        self._resync.pop(symbol, None)
        self._gap_starts.pop(symbol, None)
        pair = self.symbols.pair(symbol)
        if pair is not None:
            self._every.slots.pop(pair, None)
            for key in [k for k in self._candles.open if k[0] == pair]:
                del self._candles.open[key]
            if self.ids is not None:
                self.ids.forget(pair)

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Ask every connection to close (a close frame each), without waiting: the recorder
        asks all its streams' before it waits for any."""
        self.stopping = True
        with self._lock:
            links = list(self.links)
        for link in links:
            link.stopping = True
            if link.conn is not None:
                link.conn.stop(timeout=0)

    def stop(self) -> None:
        """Close every connection (:meth:`close`) and wait for each, then the gap filler (holes
        still queued become ``gaps`` rows), then store what is left."""
        self.close()
        with self._lock:
            links = list(self.links)
        for link in links:
            self._close(link)
        if self.filler is not None:
            self.filler.stop()
        self._failures_told(self._now(), all_=True)
        for link in links:
            self.flush(link, force=True)

    def _close(self, link: _Link) -> None:
        link.stopping = True
        if link.conn is not None and not link.conn.stop():
            logger.warning("stream %s: connection %d did not close in time", self.name, link.number)

    def tick(self, now: datetime) -> None:
        """The recorder's clock: batches ``batch_seconds`` old are stored, candles whose interval
        ended (less a grace for a late update) are made final."""
        if self.channel == "ohlc":
            with self._lock:
                done = self._candles.closed(now - timedelta(seconds=self.tuning.candle_grace))
                links = {self._owner.get(self.symbols.symbol(row["pair"]) or "") for row in done}
            for row in done:
                link = self._owner.get(self.symbols.symbol(row["pair"]) or "")
                if link is not None:
                    with link.lock:
                        self._batch(link).add("ohlc", row)
            for link in links - {None}:
                assert link is not None
                self.flush(link)
        self._failures_told(now)
        with self._lock:
            links_now = list(self.links)
        age = timedelta(seconds=self.tuning.batch_seconds)
        for link in links_now:
            batch = link.batch
            if batch is not None and now - batch.started_at >= age:
                self.flush(link)

    # -- the connection's events (its thread) ---------------------------------------------------

    def _event(self, link: _Link, event: object) -> None:
        if isinstance(event, StreamOpened):
            with link.lock:
                link.uid = uuid.uuid4().hex
                link.url = event.url
                link.opened_at = self._now()
                link.closed_at = link.reason = link.failure = None
                link.data = 0
                link.changed = True
                uid = link.uid
                self.flush(link, force=True)  # the connection's row, before any data
            self._publish(StreamConnected(self.name, uid, event.url))
        elif isinstance(event, StreamClosed):
            self._closed(link, event)
        elif isinstance(event, StreamFailed):
            if event.kind in _ENDINGS:
                link.failure = event.kind
                if self.ids is not None:
                    cause = "reconnect" if event.kind == "disconnect" else "stall"
                    for symbol in list(link.symbols):
                        pair = self.symbols.pair(symbol)
                        if pair is not None:
                            self.ids.interrupted(cause, pair)
                return
            pair = self.symbols.pair(event.symbol) if event.symbol else None
            self.record_failure(link.uid, event.kind, pair or event.symbol, event.message)
            self._publish(StreamProblem(self.name, event.kind, pair or event.symbol, event.message))
        elif isinstance(event, Subscribed) and event.symbol is not None:
            with self._lock:
                if event.symbol in link.symbols:
                    link.acked.add(event.symbol)

    def record_failure(
        self, uid: str | None, kind: str, pair: str | None, message: str, *, log: bool = False
    ) -> None:
        """A failure that ends no connection, as a failed run of the stream (a disconnect or a
        stall is its connection's row; a checksum mismatch a ``gaps`` row): at most one a kind
        every ``WS_FAILURE_ROW_EVERY``, the ones in between counted in the next (the clock's,
        :meth:`tick`, when no other comes; the last at :meth:`stop`); with ``log``, a warning
        with each row (the connection logs its own failures)."""
        now = self._now()
        with self._lock:
            before = self._failed.get(kind)
            if before is not None and (now - before.at).total_seconds() < _FAILURE_EVERY:
                before.since += 1
                before.latest = (uid, pair, message, log)
                return
            self._failed[kind] = _Failures(now)
        since = before.since if before is not None else 0
        self._failure_row(now, kind, uid, pair, message, log, since, before)

    def _failure_row(
        self,
        now: datetime,
        kind: str,
        uid: str | None,
        pair: str | None,
        message: str,
        log: bool,
        since: int,
        before: _Failures | None,
    ) -> None:
        more = f" (and {since} more like it since {before.at:%H:%M:%S})" if since and before else ""
        if log:
            logger.warning("stream %s: %s: %s%s", self.name, kind, message, more)
        self._submit(
            RunRecord(
                job=self.job,
                method=f"ws:{self.channel}",
                params={"stream": self.name, "channel": self.channel, "connection": uid}
                | ({"pair": pair} if pair else {}),
                scheduled_at=now,
                started_at=now,
                finished_at=now,
                status=_FAILURE_STATUS.get(kind, Status.BAD_RESPONSE),
                error=f"{kind}: {message[: defaults.WS_FAILURE_TEXT]}{more}",
            ),
            self.channel,
            0,
            0,
            [],
        )

    def _failures_told(self, now: datetime, *, all_: bool = False) -> None:
        """The failures counted since a kind's last row, told in a row of their own once its
        second has passed (``all_``: now, at the stream's stop): the latest of them, and how
        many more. None is left only counted."""
        due: list[tuple[str, _Failures]] = []
        with self._lock:
            for kind, failures in list(self._failed.items()):
                if failures.since and (
                    all_ or (now - failures.at).total_seconds() >= _FAILURE_EVERY
                ):
                    due.append((kind, failures))
                    self._failed[kind] = _Failures(now)
        for kind, failures in due:
            assert failures.latest is not None
            uid, pair, message, log = failures.latest
            self._failure_row(now, kind, uid, pair, message, log, failures.since - 1, failures)

    def _closed(self, link: _Link, event: StreamClosed) -> None:
        with link.lock:
            uid, data = link.uid, link.data
            link.closed_at = self._now()
            link.reason = event.reason
            link.changed = True
            self.flush(link, force=True)
            link.uid = None
        with self._lock:
            link.acked.clear()
            if not link.stopping:  # every book it carried misses what comes until its snapshot
                for symbol in link.symbols:
                    book = self.books.get(symbol)
                    if book is not None and book.synced and symbol not in self._resync:
                        self._resync[symbol] = (
                            book.verified_at,
                            f"connection lost: {event.reason}",
                        )
        if uid is not None:
            why = STREAM_STOPPED if link.stopping else (link.failure or "disconnect")
            self._publish(StreamDisconnected(self.name, uid, why, data))

    # -- messages (the connection's thread) -----------------------------------------------------

    def _message(self, link: _Link, channel: str, kind: str, data: Any, at: datetime) -> None:
        if channel != self.channel or link.uid is None:
            return
        symbols = self.symbols
        with link.lock:
            batch = self._batch(link)
            batch.messages += 1
            link.data += 1
            if channel == "trade":
                when = self._trades(link, batch, data, symbols, at)
            elif channel == "book":
                when = self._books(link, batch, kind, data, symbols, at)
            elif channel == "ticker":
                when = self._rows(link, batch, "ticker", rowlib.ticker_rows(data, symbols, at))
            else:
                read = rowlib.ohlc_rows(data, symbols, at)
                with self._lock:
                    read.rows = self._candles.update(read.rows)
                when = self._rows(link, batch, "ohlc", read)
            # A snapshot's data is old by nature (the last 50 trades): its lag is from receipt.
            batch.times.append(at if kind == "snapshot" else when or at)
            t = self.tuning
            full = batch.rows >= t.batch_rows or batch.messages >= t.batch_messages
        if full:
            self.flush(link)

    def _rows(self, link: _Link, batch: _Batch, table: str, read: rowlib.Read) -> datetime | None:
        self._refused(read, link.uid)
        for row in read.rows:
            batch.add(table, row)
        return max((row["taken_at"] for row in read.rows if "taken_at" in row), default=None)

    def _refused(self, read: rowlib.Read, uid: str | None) -> None:
        """Entries of a message that could not be read (the others are stored): an event for
        each of the first three, and a failed run and a log line (``entry``) naming the first,
        at most one a second."""
        if not read.refused:
            return
        for line in read.refused[:3]:
            self._publish(StreamProblem(self.name, "protocol", None, line))
        others = len(read.refused) - 1
        also = f" (and {others} more entries of the message)" if others else ""
        self.record_failure(uid, "entry", None, read.refused[0] + also, log=True)

    def _trades(
        self, link: _Link, batch: _Batch, data: Any, symbols: Symbols, at: datetime
    ) -> datetime | None:
        """A ``trade`` message's new trades into the batch, as :class:`Prepared` tuples: typed by
        the connection (``rows.TradeEntry``), or read the general way (an entry it refused)."""
        if type(data) is list and data and type(data[0]) is rowlib.TradeEntry:
            trades, refused = rowlib.trade_values(data, symbols, at)
        else:
            read = rowlib.trade_rows(data, symbols, at)
            trades = [(rowlib.stored_trade(row), row["time"]) for row in read.rows]
            refused = read.refused
        if refused:
            self._refused(rowlib.Read(refused=refused), link.uid)
        ids, owner, by_pair = self.ids, self._owner, symbols.by_pair
        assert ids is not None
        # Only pairs still held (one dropped while its message was on the way is not).
        held = [t for t in trades if by_pair.get(t[0][0]) in owner]
        # A list, not keyed: TradeIds passes each (pair, trade_id) once (strictly rising ids;
        # a sequence started again is stored once by the table's key all the same).
        new, wrong, newest = ids.fresh(held)
        for pair, why in wrong:  # not of the pair's sequence: refused, as an entry is
            self._publish(StreamProblem(self.name, "protocol", pair, why))
            self.record_failure(link.uid, "entry", pair, why, log=True)
        batch.trades += new
        batch.rows += len(new)
        return newest

    def _books(
        self, link: _Link, batch: _Batch, kind: str, data: Any, symbols: Symbols, at: datetime
    ) -> datetime | None:
        newest = None
        for entry in data if isinstance(data, list) else []:
            symbol = entry.get("symbol") if isinstance(entry, dict) else None
            book = self.books.get(symbol) if isinstance(symbol, str) else None
            pair = symbols.pair(symbol) if isinstance(symbol, str) else None
            if book is None or pair is None:
                continue  # not (or no longer) ours
            assert isinstance(symbol, str)
            try:
                if kind == "snapshot":
                    book.snapshot(entry, at)
                elif book.synced:
                    book.update(entry, at)
                else:
                    continue  # waiting for the fresh snapshot
            except BookError as e:
                self._mismatch(link, book, pair, e, at)
                continue
            when = book.updated_at
            newest = when if newest is None or (when and when > newest) else newest
            resynced = self._resync.pop(symbol, None)
            if resynced is not None:
                self._book_gap(batch, book, pair, resynced, at)
            # A snapshot without a time of its own has no rows yet: it must not take the slot.
            timed = book.updated_at is not None
            if resynced is not None or (timed and self._every.due(pair, at)):
                for row in rowlib.book_rows(book, pair):
                    batch.add("book", row)
        return newest

    def _mismatch(self, link: _Link, book: Book, pair: str, e: BookError, at: datetime) -> None:
        start = e.verified_at if isinstance(e, BookMismatch) else book.verified_at
        kind = "checksum" if isinstance(e, BookMismatch) else "protocol"
        with self._lock:
            if book.symbol not in self._resync:
                self._resync[book.symbol] = (start or book.updated_at or at, str(e))
        book.synced = False
        self._publish(StreamProblem(self.name, kind, pair, str(e)))
        if link.conn is not None:
            link.conn.resubscribe(self.channel, book.symbol)

    def _book_gap(
        self,
        batch: _Batch,
        book: Book,
        pair: str,
        resync: tuple[datetime | None, str],
        at: datetime,
    ) -> None:
        start, why = resync
        start = (start or at).astimezone(UTC)
        earlier = self._gap_starts.get(book.symbol)
        if earlier is not None and start <= earlier:  # the key (job, dataset, pair, start)
            start = earlier + timedelta(microseconds=1)
        self._gap_starts[book.symbol] = start
        end = (book.updated_at or at).astimezone(UTC)
        batch.add(
            "gaps",
            {
                "job": self.job,
                "dataset": "book",
                "pair": pair,
                "start": start,
                "end": max(end, start),
                "reason": (
                    f"book {book.symbol}: levels unknown from the last verified update to the "
                    f"fresh snapshot ({why})"
                )[:1000],
            },
        )
        self._publish(StreamGap(self.name, pair, 0, True))

    # -- batches --------------------------------------------------------------------------------

    def _batch(self, link: _Link) -> _Batch:
        if link.batch is None:
            link.batch = _Batch(self._now())
        return link.batch

    def flush(self, link: _Link, *, force: bool = False) -> None:
        """Hand ``link``'s batch to the writer, with its connection's row; ``force``: even with
        no data (the row changed: opened, closed)."""
        with link.lock:
            batch = link.batch
            if link.uid is None or link.opened_at is None:
                return
            if batch is None and not (force and link.changed):
                return
            batch = batch or _Batch(self._now())
            link.batch = None
            conn = link.conn
            row = rowlib.connection_row(
                link.uid,
                self.name,
                self.channel,
                link.url,
                link.opened_at,
                messages=conn.messages if conn is not None else 0,
                closed_at=link.closed_at,
                reason=link.reason,
            )
            link.changed = False
            tables: dict[str, list[Any]] = {
                name: list(rows.values()) for name, rows in batch.tables.items()
            }
            if batch.trades:
                tables["trades"] = Prepared(rowlib.TRADE_COLUMNS, batch.trades)
            tables["stream_connections"] = [row]
            record = rowlib.batch(
                self.name,
                self.channel,
                link.uid,
                tables,
                started_at=batch.started_at,
                finished_at=self._now(),
                messages=batch.messages,
            )
            self._submit(record, self.channel, batch.messages, batch.rows, batch.times)

    def _filled(self, fill: Fill) -> None:
        """A hole REST filled (or could not): its record to the writer, a ``StreamGap``."""
        hole: Hole = fill.hole
        self._submit(fill.record, self.channel, 0, len(fill.trades), [])
        self._publish(StreamGap(self.name, hole.pair, len(fill.trades), fill.gap is not None))
