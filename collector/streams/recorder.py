"""The job file's ``streams:`` recorded by the service: a :class:`~.feed.Feed` per stream, the
pairs each one holds kept current, and one worker thread for what runs on a clock (issue 28;
docs/streams.md).

* **Which symbols.** A stream's pairs, in any spelling a job takes (``XBTUSD``, ``XBT/USD``,
  ``BTC/USD``, ``XXBTZUSD``), are resolved against the ``pairs`` table (``load_pairs``, the
  canonical name) and :class:`~.rows.Symbols` (its v2 symbol). ``pairs: all`` is every symbol the
  ``instrument`` channel lists, kept current: a pair listed while running is subscribed, one
  delisted dropped with its state. Books need each pair's precisions, which only ``instrument``
  gives; so one connection of the recorder's own carries ``instrument`` when a stream is a book
  or ``all``.
* **A symbol the table does not know** (listed after the last AssetPairs) makes the recorder ask
  AssetPairs (``refresh_pairs``: the service's own pairs job, through the shared public client and
  its budget), at most every ``pairs_refresh`` seconds; the table is read again after every
  AssetPairs the writer stores.
* **The clock.** The worker stores batches that are old enough, makes candles final, and
  re-resolves the pairs when something changed (the table, the listing, a reload).
* **StreamStored** is published when the writer says a batch is stored (``BatchStored``), its
  lags measured then: from each message's own time to the row in the database.

Nothing here opens a socket or reads the database before :meth:`Recorder.start`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..events import BatchStored, Events, StreamProblem, StreamStored
from ..jobfile import Stream
from ..pairs import Names
from ..records import RunRecord
from .connection import Connection, StreamFailed, Subscription
from .feed import Feed
from .rows import Symbols
from .tuning import Tuning

logger = logging.getLogger(__name__)

__all__ = ["Recorder", "Tuning"]

PairRows = Sequence[tuple[str, str | None, str | None]]
# v2 instrument statuses of a pair that is not (or no longer) traded.
_UNLISTED = frozenset({"delisted"})


class Recorder:
    """Every stream of a job file. Constructing it does no I/O; :meth:`start` starts the
    streams, :meth:`apply` takes a reloaded file's, :meth:`stop` closes them.

    :param url: ``kraken.ws_url``
    :param api: the shared public client (REST ``Trades`` for the gaps, on its budget)
    :param submit: the writer's ``submit``
    :param load_pairs: the ``pairs`` table's ``(pair, altname, wsname)`` rows
    :param refresh_pairs: asks Kraken for AssetPairs and stores them (the service's pairs job)
    :param permit: whether this process may record (it holds the public lease: one collector of
        a deployment records the streams, as one runs the public jobs); asked every tick, the
        streams closed while it is False and opened again when it turns True
    """

    def __init__(
        self,
        streams: Iterable[Stream],
        *,
        url: str,
        api: Any,
        submit: Callable[[RunRecord], None],
        events: Events,
        load_pairs: Callable[[], PairRows],
        refresh_pairs: Callable[[], object] | None = None,
        permit: Callable[[], bool] = lambda: True,
        tuning: Tuning | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.streams = tuple(streams)
        self.url = url
        self.api = api
        self._submit_record = submit
        self.events = events
        self._load_pairs = load_pairs
        self._refresh_pairs = refresh_pairs
        self._permit = permit
        #: whether the streams are recorded here (None until the first tick)
        self.recording: bool | None = None
        self.tuning = tuning or Tuning()
        self._clock = clock
        self._now = now
        self.feeds: dict[str, Feed] = {}
        self._lock = threading.RLock()  # feeds, instruments
        #: v2 symbol -> (price_precision, qty_precision) of every listed pair; None until the
        #: ``instrument`` snapshot came
        self.instruments: dict[str, tuple[int, int]] | None = None
        self._instrument: Connection | None = None
        self.symbols = Symbols()
        self._names = Names()
        self._dirty = threading.Event()  # re-read the pairs table and re-resolve
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed_at: float | None = None
        self._refreshing = False
        self._asked = False  # an AssetPairs stored since the start
        self._retry_at: float | None = None
        self._told: set[tuple[str, str]] = set()  # (stream, name) told unknown once
        self._pending: OrderedDict[str, tuple[str, str, int, int, list[datetime]]] = OrderedDict()

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every stream (connections open once their pairs are resolved)."""
        if self._thread is not None:
            return
        self.events.subscribe(BatchStored, self._stored)
        self._refreshed_at = self._clock()
        for stream in self.streams:
            self.feeds[stream.name] = self._feed(stream)
        self._dirty.set()
        self._thread = threading.Thread(target=self._run, name="streams", daemon=True)
        self._thread.start()
        if self.streams:
            logger.info("streams: recording %d from %s", len(self.streams), self.url)

    def apply(
        self,
        streams: Iterable[Stream],
        added: Sequence[str],
        removed: Sequence[str],
        changed: Sequence[str],
    ) -> None:
        """A reloaded job file's streams: removed and changed ones closed, added and changed ones
        (with their new definition) started."""
        new = {s.name: s for s in streams}
        with self._lock:
            self.streams = tuple(new.values())
            gone = [self.feeds.pop(n) for n in (*removed, *changed) if n in self.feeds]
        for feed in gone:
            feed.stop()
        if self._thread is None:
            return
        with self._lock:
            for name in (*added, *changed):
                if name in new:
                    self.feeds[name] = self._feed(new[name])
        self._dirty.set()
        self._wake.set()

    def stop(self) -> None:
        """Close every stream's connections (a close frame each) and store what they brought;
        the gap fillers deliver what they could not fill as ``gaps`` rows."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:  # first: it opens connections, and must open no more
            self._thread.join(5.0)
        with self._lock:
            feeds = list(self.feeds.values())
        for feed in feeds:
            feed.close()  # every close frame sent before any is waited for
        for feed in feeds:
            feed.stop()
        if self._instrument is not None:
            self._instrument.stop()
        # Still subscribed to BatchStored: the last batches are stored by the writer's close,
        # after this, and their StreamStored is told then.

    def _feed(self, stream: Stream) -> Feed:
        return Feed(
            stream,
            url=self.url,
            api=self.api,
            submit=self._submit,
            publish=self.events.publish,
            tuning=self.tuning,
            now=self._now,
        )

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        step = min(self.tuning.batch_seconds / 2, 0.25)
        while not self._stop.is_set():
            try:
                if not self._permitted():
                    self._wake.wait(step)
                    self._wake.clear()
                    continue
                if self._retry_at is not None and self._clock() >= self._retry_at:
                    self._retry_at = None
                    self._dirty.set()
                if self._dirty.is_set():
                    self._dirty.clear()
                    self._resolve()
                now = self._now()
                with self._lock:
                    feeds = list(self.feeds.values())
                for feed in feeds:
                    feed.tick(now)
            except Exception:  # the clock must go on: one bad tick is a log line
                logger.exception("streams: the recorder's tick failed")
            self._wake.wait(step)
            self._wake.clear()

    def _permitted(self) -> bool:
        """Whether this process records now; a change opens or closes every stream."""
        allowed = self._permit()
        if allowed == self.recording:
            return allowed
        self.recording = allowed
        if allowed and self.feeds:
            logger.info("streams: this collector holds the public lease: recording")
            self._dirty.set()
            return True
        logger.warning("streams: another collector holds the public lease: not recording here")
        with self._lock:
            feeds = list(self.feeds.values())
        for feed in feeds:
            feed.hold({})  # every connection closed, every pair's state dropped
        if self._instrument is not None:
            self._instrument.stop()
            self._instrument = None
            self.instruments = None
        return False

    def _resolve(self) -> None:
        """Read the pairs table, then tell each stream the symbols it holds now."""
        try:
            rows = list(self._load_pairs())
        except Exception as e:  # the database is away: the names known so far stay
            logger.warning("streams: cannot read the pairs table (%s); trying again", e)
            self._dirty.set()
            return
        self.symbols, self._names = Symbols(rows), Names(rows)
        with self._lock:
            feeds = list(self.feeds.values())
        self._need_instruments(feeds)
        unknown: list[str] = []
        for feed in feeds:
            feed.symbols = self.symbols
            wanted = self._wanted(feed.stream, unknown)
            if wanted is not None:
                feed.hold(wanted)
        if unknown:
            self._refresh(unknown)

    def _wanted(self, stream: Stream, unknown: list[str]) -> dict[str, Any] | None:
        """The symbols ``stream`` holds now, with their precisions (a book's); None while the
        listing it needs has not come yet."""
        instruments = self.instruments
        needs = stream.all_pairs or stream.channel == "book"
        if needs and instruments is None:
            return None
        symbols: list[str] = []
        if stream.all_pairs:
            assert instruments is not None
            for listed in instruments:
                if self.symbols.pair(listed) is None:
                    unknown.append(listed)
                else:
                    symbols.append(listed)
        else:
            for name in stream.pairs:
                pair = self.symbols.pair(name) or self._names.resolve(name)
                symbol = self.symbols.symbol(pair) if pair else None
                if symbol is None:
                    unknown.append(name)
                    self._unknown(stream, name, "is not a pair the pairs table knows (yet)")
                    continue
                if instruments is not None and needs and symbol not in instruments:
                    self._unknown(stream, name, f"{symbol} is not listed by the instrument channel")
                    continue
                symbols.append(symbol)
        if stream.channel == "book":
            assert instruments is not None
            return {s: instruments[s] for s in symbols if s in instruments}
        return dict.fromkeys(symbols)

    def _unknown(self, stream: Stream, name: str, why: str) -> None:
        """Told once per name, and only once AssetPairs was asked since the start: before, the
        table may just be older than the pair (the service's pairs job is running)."""
        if not self._asked or (stream.name, name) in self._told:
            return
        self._told.add((stream.name, name))
        message = f"stream {stream.name}: pair {name} {why}; not subscribed"
        logger.warning("%s", message)
        self.events.publish(StreamProblem(stream.name, "refused", name, message))
        feed = self.feeds.get(stream.name)
        if feed is not None:  # a row too, as a subscription Kraken refused is
            feed.record_failure(None, "refused", name, f"pair {name} {why}; not subscribed")

    def _refresh(self, unknown: list[str]) -> None:
        """Ask AssetPairs for symbols the table does not know, at most every ``pairs_refresh``."""
        if self._refresh_pairs is None or self._refreshing:
            return
        if self._refreshed_at is not None and (
            self._clock() - self._refreshed_at < self.tuning.pairs_refresh
        ):
            self._retry_at = self._refreshed_at + self.tuning.pairs_refresh  # looked at again then
            return
        self._refreshing = True
        self._refreshed_at = self._clock()
        logger.info(
            "streams: %d symbols (%s) not in the pairs table; asking AssetPairs",
            len(unknown),
            ", ".join(sorted(unknown)[:5]),
        )

        def refresh() -> None:
            try:
                assert self._refresh_pairs is not None
                self._refresh_pairs()
            except Exception:
                logger.exception("streams: asking AssetPairs failed")
            finally:
                self._refreshing = False
                self._asked = True
                self._told.clear()
                self._dirty.set()
                self._wake.set()

        threading.Thread(target=refresh, name="streams-pairs", daemon=True).start()

    # -- the instrument channel -----------------------------------------------------------------

    def _need_instruments(self, feeds: list[Feed]) -> None:
        if self._instrument is not None or self._stop.is_set():
            return
        if not any(f.stream.all_pairs or f.stream.channel == "book" for f in feeds):
            return
        t = self.tuning
        self._instrument = Connection(
            self.url,
            [Subscription("instrument")],
            self._instruments,
            publish=self._instrument_event,
            name="(instrument)",
            stale_after=t.stale_after,
            rate=t.rate,
            backoff=t.backoff,
        ).start()

    def _instrument_event(self, event: object) -> None:
        if isinstance(event, StreamFailed) and event.kind not in ("disconnect", "stale"):
            for name in [s.name for s in self.streams if s.all_pairs or s.channel == "book"]:
                self.events.publish(StreamProblem(name, event.kind, None, event.message))

    def _instruments(self, channel: str, kind: str, data: Any, at: datetime) -> None:
        """The listing: a snapshot replaces it, an update lists and delists pairs."""
        if channel != "instrument" or not isinstance(data, dict):
            return
        pairs = data.get("pairs")
        listed: dict[str, tuple[int, int]] = {}
        delisted: set[str] = set()
        for entry in pairs if isinstance(pairs, list) else []:
            symbol = entry.get("symbol") if isinstance(entry, dict) else None
            if not isinstance(symbol, str) or len(symbol) > 32:
                continue
            if entry.get("status") in _UNLISTED:
                delisted.add(symbol)
                continue
            price, qty = entry.get("price_precision"), entry.get("qty_precision")
            if not all(isinstance(p, int) and 0 <= p <= 20 for p in (price, qty)):
                continue
            listed[symbol] = (price, qty)
        with self._lock:
            if kind == "snapshot" or self.instruments is None:
                self.instruments = listed
            else:
                self.instruments = {
                    **{s: p for s, p in self.instruments.items() if s not in delisted},
                    **listed,
                }
        if delisted or kind == "update":
            logger.info(
                "streams: instrument %s: listed %s; delisted %s",
                kind,
                ", ".join(sorted(listed)[:10]) or "none",
                ", ".join(sorted(delisted)[:10]) or "none",
            )
        self._dirty.set()
        self._wake.set()

    # -- batches and their lags -----------------------------------------------------------------

    def _submit(
        self, record: RunRecord, channel: str, messages: int, rows: int, times: list[datetime]
    ) -> None:
        stream = record.params.get("stream") or record.job.partition(":")[2]
        if messages:
            with self._lock:
                self._pending[record.uid] = (stream, channel, messages, rows, times)
                while len(self._pending) > self.tuning.stored_pending:
                    self._pending.popitem(last=False)
        self._submit_record(record)

    def _stored(self, event: BatchStored) -> None:
        now = self._now()
        for record in event.records:
            with self._lock:
                sent = self._pending.pop(record.uid, None)
            if sent is None:
                continue
            stream, channel, messages, rows, times = sent
            lags = tuple(max(0.0, (now - t).total_seconds()) for t in times)
            self.events.publish(
                StreamStored(stream, channel, messages, rows, lags, max(times, default=now))
            )
        if any(r.method == "AssetPairs" and r.status == "ok" for r in event.records):
            self._asked = True
            self._dirty.set()
            self._wake.set()
