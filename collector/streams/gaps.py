"""Nothing missed on the tape, and proof of it: holes in each pair's ``trade_id`` sequence, filled
from REST ``Trades``, and what REST cannot fill recorded as a ``gaps`` row.

Kraken's public channels carry no sequence number, but every trade has a ``trade_id`` that goes up
by one per pair, in REST and in the feed alike. So:

* :class:`TradeIds` is fed each trade the feed delivers (in order, per pair). An id past the last
  one plus one is a :class:`Hole` (after trade ``A``, before trade ``B``, with their times); an id
  not past the last is one already seen (a reconnect's snapshot repeats the last 50) and is
  reported as such. A reconnect or a stall is told with :meth:`TradeIds.interrupted`: the next id
  of each pair then bounds what the cut cost (nothing when it is the last plus one). Kraken's feed
  is also known to skip one of several fills at one timestamp that REST has: that is a jump too.
* :class:`Filler` fills holes off the feed's thread (one worker thread of its own): REST ``Trades``
  with ``since`` just before trade ``A`` (nanoseconds; the feed's times are microseconds, so one
  microsecond earlier: trade ``A`` comes back and is dropped by id), paged with the existing
  :class:`~collector.datasets.market.Trades` reading until a page passes ``B``. Each hole becomes
  one :class:`Fill`, whose :class:`~collector.records.RunRecord` holds the missing trades (rows of
  ``trades``) and, when REST could not serve them all, one ``gaps`` row (dataset ``trades``, the
  hole's time range, the ids on each side and the ids still missing in its ``reason``).

Bounded: holes queued per pair (``WS_GAP_QUEUE``; one more widens the newest queued, so none is
dropped), pages per hole (``WS_GAP_PAGES``), attempts per page (``WS_GAP_ATTEMPTS``, transient
failures only), and one deadline per hole (``WS_GAP_DEADLINE``, on an injected clock); each call
goes through the given :class:`collector.API`, so through its public rate budget.

Why one module of this length: a :class:`Hole` is found by :class:`TradeIds`, filled by
:class:`Filler` and ends as its :class:`Fill`'s rows and ``gaps`` row; the three share the hole's
fields, its causes and the wording of what is missing, and change together when any does.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import defaults
from ..backoff import Backoff
from ..client import API
from ..datasets.market import TRADE_COLUMNS, Trades
from ..errors import CollectorError, RequestError, Status
from ..records import Prepared, RunRecord
from ..retry import Kind, classify
from .rows import moment

logger = logging.getLogger(__name__)

__all__ = ["Fill", "Filler", "Hole", "TradeIds", "trade_time"]

#: Causes of a hole: an id jump on a live connection, or the cut a reconnect or stall made.
CAUSES = ("jump", "reconnect", "stall")
#: Missing ids named in a ``gaps`` row's reason, as ranges: the rest are counted, not listed.
_NAMED_RANGES = 5


def trade_time(stamp: Any) -> datetime:
    """A v2 trade's ``timestamp`` (RFC 3339) as an aware UTC datetime, read by
    :func:`collector.streams.rows.moment` (the one reader of a feed's time, so a trade's time
    here is the time of its row); ``ValueError`` (a ``RowError``) in one line otherwise."""
    return moment(stamp, "trade timestamp")


def _nanoseconds(t: datetime) -> int:
    """``t`` in integer nanoseconds since the epoch, exactly (no float on the way)."""
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


@dataclass(frozen=True)
class Hole:
    """Trades of ``pair`` missing between trade ``after`` and trade ``before`` (both seen).

    ``pair`` is the name the feed's trades were given under: a name REST ``Trades`` accepts (the
    canonical ``XXBTZUSD`` or the altname), never the v2 symbol."""

    pair: str
    after: int
    after_time: datetime
    before: int
    before_time: datetime
    cause: str = "jump"

    @property
    def missing(self) -> int:
        return self.before - self.after - 1


class TradeIds:
    """Each pair's last ``trade_id`` seen; a jump is a :class:`Hole` handed to ``on_hole``
    (in the caller's thread: :meth:`Filler.submit` is quick). Thread-safe; memory is one entry a
    pair."""

    def __init__(self, on_hole: Callable[[Hole], None]) -> None:
        self._on_hole = on_hole
        self._lock = threading.Lock()
        self._last: dict[str, tuple[int, datetime]] = {}
        self._cut: dict[str, str] = {}  # pair -> cause, until its next new id
        #: holes found so far, by cause
        self.holes: dict[str, int] = dict.fromkeys(CAUSES, 0)

    def seen(self, pair: str, trade_id: Any, at: datetime) -> bool:
        """Trade ``trade_id`` of ``pair`` at ``at`` came from the feed: True when it is new (past
        the last one seen), False when it was seen already (a snapshot after a reconnect repeats
        the last 50). A jump past the last plus one hands a hole to ``on_hole`` first.

        Bounded by ``WS_TRADE_ID_JUMP``: an id farther ahead is a ValueError (refused, the last
        kept); one farther behind starts the sequence again (the last was not of it)."""
        new, refused, _ = self.fresh([((pair, trade_id), at)])
        if refused:
            raise ValueError(refused[0][1])
        return bool(new)

    def fresh(
        self, trades: Iterable[tuple[tuple[Any, ...], datetime]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]], datetime | None]:
        """:meth:`seen` for each ``(values, time)`` of a message (``values[0]`` the pair,
        ``values[1]`` the trade id: :func:`~collector.streams.rows.trade_values`' tuples), under
        one lock: the new ones' values, ``(pair, why)`` for each one refused, and the latest time
        of those not refused (new or seen before)."""
        new: list[tuple[Any, ...]] = []
        refused: list[tuple[str, str]] = []
        holes: list[Hole] = []
        newest: datetime | None = None
        with self._lock:
            last_of, cut = self._last, self._cut
            for values, at in trades:
                pair, trade_id = values[0], values[1]
                last = last_of.get(pair)
                if (
                    last is not None
                    and type(trade_id) is int
                    and trade_id == last[0] + 1
                    and pair not in cut
                ):
                    last_of[pair] = (trade_id, at)  # the usual case: the next id, nothing cut
                    new.append(values)
                else:
                    try:
                        is_new, hole = self._step(pair, trade_id, at)
                    except ValueError as e:
                        refused.append((pair, str(e)))
                        continue
                    if is_new:
                        new.append(values)
                    if hole is not None:
                        holes.append(hole)
                if newest is None or at > newest:
                    newest = at
        for hole in holes:
            self._tell(hole)
        return new, refused, newest

    def _step(self, pair: str, trade_id: Any, at: datetime) -> tuple[bool, Hole | None]:
        """One trade id against its pair's last, past :meth:`fresh`'s usual case (the caller
        holds the lock): whether it is new, and the hole before it."""
        if type(trade_id) is not int or trade_id < 0:  # bool is an int's subclass: refused too
            raise ValueError(f"trade_id {trade_id!r:.40} of {pair} is not a whole number")
        last = self._last.get(pair)
        if last is not None and trade_id - last[0] > defaults.WS_TRADE_ID_JUMP:
            raise ValueError(
                f"trade_id {trade_id} of {pair} is {trade_id - last[0]} past the last "
                f"({last[0]}), more than {defaults.WS_TRADE_ID_JUMP}: refused"
            )
        if last is not None and last[0] - trade_id > defaults.WS_TRADE_ID_JUMP:
            logger.warning(
                "%s: trade_id %d is %d behind the last (%d): the sequence starts again there",
                pair,
                trade_id,
                last[0] - trade_id,
                last[0],
            )
            self._cut.pop(pair, None)
            last = None
        if last is not None and trade_id <= last[0]:
            return False, None
        hole = None
        cause = self._cut.pop(pair, None)
        if last is not None and trade_id > last[0] + 1:
            hole = Hole(pair, last[0], last[1], trade_id, at, cause or "jump")
            self.holes[hole.cause] += 1
        self._last[pair] = (trade_id, at)
        return True, hole

    def _tell(self, hole: Hole) -> None:
        logger.info(
            "%s: trades %d to %d missing from the feed (%s); filling from REST",
            hole.pair,
            hole.after + 1,
            hole.before - 1,
            hole.cause,
        )
        self._on_hole(hole)

    def trades(self, data: Iterable[Mapping[str, Any]], name: Callable[[str], str]) -> list[bool]:
        """:meth:`seen` for each entry of a v2 ``trade`` message's ``data`` (``symbol``,
        ``trade_id``, ``timestamp``), the symbol named by ``name`` (``BTC/USD`` → ``XXBTZUSD``)."""
        return [
            self.seen(name(str(t.get("symbol"))), t.get("trade_id"), trade_time(t.get("timestamp")))
            for t in data
        ]

    def interrupted(self, cause: str, pair: str | None = None) -> None:
        """The feed was cut (``reconnect`` or ``stall``) for ``pair``, or every pair: the next new
        id of each bounds what the cut cost, and a hole found there names the cause."""
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}; one of {', '.join(CAUSES)}")
        with self._lock:
            for p in [pair] if pair is not None else list(self._last):
                self._cut[p] = cause

    def forget(self, pair: str) -> None:
        """Drop what is kept of ``pair`` (no longer subscribed): memory only for pairs held."""
        with self._lock:
            self._last.pop(pair, None)
            self._cut.pop(pair, None)

    def last(self, pair: str) -> tuple[int, datetime] | None:
        """The last trade id seen of ``pair`` and its time."""
        with self._lock:
            return self._last.get(pair)


@dataclass
class Fill:
    """What REST made of one hole: ``record`` (for the writer) holds the trades found
    (``rows["trades"]``, ids strictly between the hole's sides) and, unless every one was found,
    one ``gaps`` row (``rows["gaps"]``)."""

    hole: Hole
    record: RunRecord
    #: the ids REST did not serve, as inclusive ``(first, last)`` spans (empty: filled whole)
    missing: list[tuple[int, int]] = field(default_factory=list)

    @property
    def trades(self) -> list[dict[str, Any]]:
        """The trades filled, each by its columns (their stored text: Trades' Prepared rows)."""
        rows = self.record.rows.get("trades", [])
        columns = rows.columns if isinstance(rows, Prepared) else TRADE_COLUMNS
        return [dict(zip(columns, row, strict=True)) for row in rows]

    @property
    def gap(self) -> dict[str, Any] | None:
        gaps = self.record.rows.get("gaps")
        return gaps[0] if gaps else None


class Filler:
    """One worker thread filling :class:`Hole`\\ s from REST ``Trades`` through ``api`` (the
    public client: its rate budget is the collector's), each one's :class:`Fill` handed to
    ``deliver`` in that thread (the writer's ``submit``, a metric).

    :param job: the name the records and ``gaps`` rows are stored under (``stream:NAME``, the stream's batch runs' job)
    :param max_queued: holes queued per pair; one more widens the newest queued
    :param max_pages: REST pages per hole
    :param attempts: tries of one page before its transient failure is final
    :param deadline: seconds per hole on ``clock``, waits for budget and backoff included
    :param clock: monotonic seconds (a seam for tests)
    :param now: wall-clock time of the records
    """

    def __init__(
        self,
        api: API,
        deliver: Callable[[Fill], None],
        *,
        job: str = "stream:trade",
        max_queued: int = defaults.WS_GAP_QUEUE,
        max_pages: int = defaults.WS_GAP_PAGES,
        attempts: int = defaults.WS_GAP_ATTEMPTS,
        deadline: float = defaults.WS_GAP_DEADLINE,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if min(max_queued, max_pages, attempts) < 1 or deadline <= 0:
            raise ValueError("max_queued, max_pages and attempts must be at least 1, deadline > 0")
        self.api, self.deliver, self.job = api, deliver, job
        self.max_queued, self.max_pages, self.attempts = max_queued, max_pages, attempts
        self.deadline = deadline
        self.backoff = backoff or Backoff(
            defaults.BACKOFF_FIRST, defaults.BACKOFF_CAP, jitter=random.uniform
        )
        self.clock, self.now = clock, now
        self._dataset = Trades()
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Hole]] = {}
        self._turns: deque[str] = deque()  # pairs with holes queued, round robin
        self._busy = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._gap_starts: dict[str, datetime] = {}  # pair -> its last gaps row's start
        #: trades filled and holes left (recorded as gaps) so far, and holes widened by the bound
        self.filled = 0
        self.left = 0
        self.widened = 0

    # -- the feed's side ------------------------------------------------------------------------

    def submit(self, hole: Hole) -> None:
        """Queue ``hole`` (quick: the feed's thread calls it). Past ``max_queued`` for its pair,
        the newest queued hole is widened to end where this one does: REST then serves the
        trades the feed delivered in between again (stored once by their key), and nothing is
        dropped."""
        with self._cond:
            queue = self._queues.setdefault(hole.pair, deque())
            if len(queue) >= self.max_queued:
                queue[-1] = replace(queue[-1], before=hole.before, before_time=hole.before_time)
                self.widened += 1
            else:
                queue.append(hole)
            if hole.pair not in self._turns:
                self._turns.append(hole.pair)
            self._cond.notify()

    def pending(self) -> int:
        """Holes queued or being filled."""
        with self._cond:
            return sum(len(q) for q in self._queues.values()) + self._busy

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> Filler:
        self._thread = threading.Thread(target=self._run, name="stream-gaps", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = defaults.WS_CLOSE_TIMEOUT + 1) -> bool:
        """Stop the worker (after the feed, so no hole comes later): a hole being filled ends at
        its next page (what is missing then is a gap), holes still queued are delivered as gaps.
        True when the thread ended in time."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is None:
            self._drain()  # never started: the queued holes are still told
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take(self) -> Hole | None:
        with self._cond:
            while not self._turns and not self._stopping.is_set():
                self._cond.wait()
            if self._stopping.is_set():
                return None  # the queued holes are delivered as gaps by _drain
            pair = self._turns.popleft()
            queue = self._queues[pair]
            hole = queue.popleft()
            if queue:
                self._turns.append(pair)  # one hole per pair a turn: a busy pair waits its turn
            else:
                del self._queues[pair]
            self._busy = True
            return hole

    def _run(self) -> None:
        while (hole := self._take()) is not None:
            try:
                self._hand(self.fill(hole))
            finally:
                with self._cond:
                    self._busy = False
        self._drain()

    def _drain(self) -> None:
        """Stopping: what is still queued is delivered as gaps, not lost silently."""
        with self._cond:
            left = [h for q in self._queues.values() for h in q]
            self._queues.clear()
            self._turns.clear()
        for hole in left:
            self._hand(self._unfilled(hole, self.now(), "the collector stopped first"))

    def _hand(self, fill: Fill) -> None:
        self.filled += len(fill.trades)
        self.left += fill.gap is not None
        try:
            self.deliver(fill)
        except Exception:  # one bad subscriber must not end the worker
            logger.exception("delivering the fill of %s failed", fill.hole)

    # -- one hole -------------------------------------------------------------------------------

    def fill(self, hole: Hole) -> Fill:
        """Fill ``hole`` from REST now, in this thread (the worker's body; tests call it too)."""
        started, t0 = self.now(), self.clock()
        # `since` is exclusive and in nanoseconds; the feed's time is whole microseconds, so one
        # microsecond before it: trade `after` itself comes back, and is dropped by id.
        since = str(_nanoseconds(hole.after_time) - 1000)
        first = {"pair": hole.pair, "since": since}
        record = RunRecord(
            job=self.job,
            method="Trades",
            params=first,
            scheduled_at=started,
            started_at=started,
            finished_at=started,
            attempts=0,
        )
        found: dict[int, tuple[Any, ...]] = {}
        sent: dict[str, Any] | None = first
        # `why` ends the gap's reason; `error` is the run's failure, when a call failed (a bound
        # reached is not one: the calls that were made succeeded).
        why: str | None = None
        error: str | None = None
        status = Status.OK
        while sent is not None:
            if record.pages >= self.max_pages:
                why = f"{self.max_pages} pages did not reach trade {hole.before}"
                break
            if self._stopping.is_set():
                why = error = "the collector stopped first"
                status = Status.PARTIAL
                break
            try:
                result = self._call(sent, t0, record)
                page = self._dataset.page(record, sent, result, None)
            except CollectorError as e:
                why = error = getattr(e, "reason", None) or str(e)
                # A call given up because the service is stopping (Cancelled) was cut short.
                status = getattr(e, "status", Status.PARTIAL)
                break
            record.pages += 1
            passed = False
            for row in page.rows:  # Trades' Prepared tuples (TRADE_COLUMNS: the id second)
                trade_id = row[1]
                if hole.after < trade_id < hole.before:
                    found.setdefault(trade_id, row)
                passed = passed or trade_id >= hole.before
            sent = None if passed else page.next
        finished = self.now()
        rows = [found[i] for i in sorted(found)]
        missing = _spans(hole, rows)
        record = replace(record, finished_at=finished, status=status, error=error)
        if rows:
            record.rows["trades"] = Prepared(TRADE_COLUMNS, rows)
        if missing:
            record.rows["gaps"] = [self._gap(hole, missing, why)]
            logger.warning("%s", record.rows["gaps"][0]["reason"])
        return Fill(hole, record, missing)

    def _call(self, sent: dict[str, Any], t0: float, record: RunRecord) -> Any:
        """One page, retried while its failure is transient, within the attempts and the
        hole's deadline."""
        attempt = 0
        while True:
            remaining = self.deadline - (self.clock() - t0)
            if remaining <= 0:
                raise _Deadline(f"the deadline of {self.deadline:g} s passed")
            attempt += 1
            record.attempts += 1
            try:
                return self.api.call(
                    "Trades", sent, timeout=min(defaults.TIMEOUT, remaining)
                ).result
            except RequestError as e:
                kind = classify(e)
                delay = self.backoff.delay(attempt)
                if (
                    kind not in (Kind.TRANSIENT, Kind.RATE_LIMIT)
                    or attempt >= self.attempts
                    or self.clock() - t0 + delay >= self.deadline
                ):
                    raise
                logger.info("REST Trades for a hole failed (%s); again in %.1f s", e.reason, delay)
                if self._stopping.wait(delay):
                    raise _Deadline("the collector stopped first") from e

    def _gap(self, hole: Hole, missing: list[tuple[int, int]], error: str | None) -> dict[str, Any]:
        why = f": {error}" if error else ""
        # The gaps key is (job, dataset, pair, start), and two holes can start at one time: split
        # fills at one timestamp, the feed skipping two that are not next to each other. The
        # later row then starts a microsecond after the earlier one, so neither replaces the
        # other; its reason names its ids exactly.
        start = hole.after_time
        earlier = self._gap_starts.get(hole.pair)
        if earlier is not None and start <= earlier:
            start = earlier + timedelta(microseconds=1)
        self._gap_starts[hole.pair] = start
        return {
            "job": self.job,
            "dataset": "trades",
            "pair": hole.pair,
            "start": start,
            "end": hole.before_time,
            "reason": (
                f"trades {_ranges(missing)} missing between trade {hole.after} and trade "
                f"{hole.before} ({hole.cause}); REST Trades did not serve them{why}"
            ),
        }

    def _unfilled(self, hole: Hole, at: datetime, why: str) -> Fill:
        missing = [(hole.after + 1, hole.before - 1)]
        record = RunRecord(
            job=self.job,
            method="Trades",
            params={"pair": hole.pair},
            scheduled_at=at,
            started_at=at,
            finished_at=at,
            attempts=0,
            status=Status.PARTIAL,
            error=why,
            rows={"gaps": [self._gap(hole, missing, why)]},
        )
        return Fill(hole, record, missing)


class _Deadline(CollectorError):
    """A hole's deadline passed (or the worker is stopping) before REST answered."""

    reason = ""
    status = Status.TIMEOUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = message


def _spans(hole: Hole, rows: list[tuple[Any, ...]]) -> list[tuple[int, int]]:
    """The ids between the hole's sides that ``rows`` (sorted by id) lack, as inclusive spans:
    never one entry per id, so a hostile id jump costs no memory."""
    spans, expect = [], hole.after + 1
    for row in rows:
        if row[1] > expect:
            spans.append((expect, row[1] - 1))
        expect = row[1] + 1
    if expect < hole.before:
        spans.append((expect, hole.before - 1))
    return spans


def _ranges(spans: list[tuple[int, int]]) -> str:
    """``[(5, 7), (9, 9)]`` as ``5-7, 9`` (the first few spans; the rest counted)."""
    count = sum(b - a + 1 for a, b in spans)
    named = [f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:_NAMED_RANGES]]
    if len(spans) > _NAMED_RANGES:
        named.append(f"and {len(spans) - _NAMED_RANGES} more ranges")
    return f"{', '.join(named)} ({count} trades)"
