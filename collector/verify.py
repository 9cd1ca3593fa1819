"""Verification: the collected history proven complete by Kraken's own arithmetic.

From the database alone (and the job file, which says which jobs collected what, since when), for
every account:

1. **The ledger chain** of each asset (:mod:`collector.chain`): each entry's ``balance`` is the one
   before it + ``amount`` - ``fee``; a missing entry is a break of exactly its ``amount - fee``.
2. **The snapshots**: each balance snapshot (Balance, BalanceEx) equals the ledger's balance of its
   asset at the snapshot's time, give or take ``SNAPSHOT_WINDOW`` (its time is ours, the ledger's
   Kraken's). An asset the ledger never saw must be 0 when the ledger was read from the start.
3. **The fills** (:func:`verify` only): every own trade has its ledger legs (``refid`` = its txid:
   the base leg ``±vol``, the quote leg ``∓cost`` with the fee), every trade entry of the ledger is
   a fill, and every closed order's cost, fee and executed volume are the sums of its fills.

**What is verifiable.** An account's ledger is complete up to its *horizon*: its Ledgers job's
``done`` less ``HISTORY_OVERLAP`` (the next window reads that minute again, so an entry Kraken
books late inside it is still collected; one booked later than that would never be, and is a real
break). Nothing of a window still being paged is final, and while the first backfill is half done
(no ``done`` yet) nothing is at all: pages arrive newest first, so what is stored is the newest end
of the history with a hole below it. A snapshot taken after the horizon is *not yet verifiable*,
never a break. So a live service never records a false break.

:func:`verify` checks everything, streaming (constant memory whatever the ledger's length).
:func:`advance` continues each asset's chain from where the last pass left it (the
``ledger_verification`` table), reading only the entries and snapshots that are new, and records
what it finds: breaks become ``gaps`` rows. The service's :class:`collector.verifier.Verifier` runs it
after each Ledgers run.

Why one module of this length: the four proofs (chains, snapshots, fills, orders) read one
stream of the ledger up to one horizon and record their breaks in one transaction; the arithmetic
of a chain alone is its own module (:mod:`.chain`). Splitting the proofs into a package is the
next step when a fifth arrives.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, func, select, text, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.types import NULLTYPE

from . import defaults
from .chain import ZERO, Break, Chain, Entry, time_groups
from .datasets import for_method
from .datasets.balances import table as balances
from .datasets.gaps import table as gaps
from .datasets.history import ledger, my_trades, orders
from .health import cursor_time
from .jobfile import Job
from .schema import ExactDecimal, UTCDateTime, cursors, ledger_verification, runs

WINDOW = timedelta(seconds=defaults.SNAPSHOT_WINDOW)
OVERLAP = timedelta(seconds=defaults.HISTORY_OVERLAP)
#: Rows fetched at a time from a streaming query.
BATCH = 2000
#: A job whose params narrow what it collects does not collect the whole history.
_WHOLE = {
    "Ledgers": {"asset": "all", "type": "all", "aclass": "currency"},
    "TradesHistory": {"type": "all"},
    "ClosedOrders": {},
}


# -- what the job file says ------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What one account's jobs collect: the jobs of each private history (those collecting all of
    it), whether its ledger was read from the account's first entry, and from when the fills and
    orders were collected."""

    account: str
    ledger_jobs: tuple[str, ...] = ()
    trades_jobs: tuple[str, ...] = ()
    orders_jobs: tuple[str, ...] = ()
    from_start: bool = False
    ledger_since: datetime | None = None
    trades_since: datetime | None = None
    orders_since: datetime | None = None
    notes: tuple[str, ...] = ()
    #: each Ledgers job's schedule (``every 1h``), and the shortest ``every`` among them (seconds)
    ledger_schedules: tuple[str, ...] = ()
    ledger_every: float | None = None

    @property
    def job(self) -> str:
        """The job a gap row names: the account's (first) Ledgers job."""
        return self.ledger_jobs[0] if self.ledger_jobs else f"verify:{self.account}"


def scopes(
    jobs: Iterable[Job], retention: Mapping[str, float] = {}, account: str | None = None
) -> list[Scope]:
    """Each account's scope, from its jobs (only ``account``'s when given)."""
    found: dict[str, dict[str, list[Job]]] = {}
    notes: dict[str, list[str]] = {}
    for job in jobs:
        if job.method not in _WHOLE or job.account is None:
            continue
        if account is not None and job.account != account:
            continue
        narrowed = [
            k for k, whole in _WHOLE[job.method].items() if str(job.params.get(k, whole)) != whole
        ]
        if job.method == "ClosedOrders" and "userref" in job.params:
            narrowed.append("userref")
        if narrowed:
            notes.setdefault(job.account, []).append(
                f"job {job.name} collects part of {_named(job.method)} ({', '.join(narrowed)}):"
                " not used to verify"
            )
            continue
        found.setdefault(job.account, {}).setdefault(job.method, []).append(job)
    out = []
    for name in sorted(set(found) | set(notes)):
        by_method = found.get(name, {})
        ledgers = by_method.get("Ledgers", [])
        trades = by_method.get("TradesHistory", [])
        closed = by_method.get("ClosedOrders", [])
        out.append(
            Scope(
                account=name,
                ledger_jobs=tuple(j.name for j in ledgers),
                ledger_schedules=tuple(j.describe() for j in ledgers),
                ledger_every=min(
                    (j.every.total_seconds() for j in ledgers if j.every is not None),
                    default=None,
                ),
                trades_jobs=tuple(j.name for j in trades),
                orders_jobs=tuple(j.name for j in closed),
                # From the account's first entry: every chain starts at 0.
                from_start=any(j.since is None for j in ledgers) and "ledger" not in retention,
                ledger_since=_since(ledgers, "ledger" in retention),
                trades_since=_since(trades, "my_trades" in retention),
                orders_since=_since(closed, "orders" in retention),
                notes=tuple(notes.get(name, ())),
            )
        )
    return out


def _named(method: str) -> str:
    """The table a job of ``method`` fills, as its dataset declares."""
    dataset = for_method(method)
    return dataset.name if dataset is not None else method


def _since(jobs: Sequence[Job], pruned: bool) -> datetime | None:
    """From when ``jobs`` collected their history (None: all of it). A table retention prunes
    has lost its start: only what it still holds can be compared, from the end of time."""
    if pruned:
        return datetime.max.replace(tzinfo=UTC)
    if not jobs or any(j.since is None for j in jobs):
        return None
    return datetime.fromtimestamp(min(j.since for j in jobs if j.since is not None), UTC)


def horizon(conn: Connection, jobs: Sequence[str], dataset: str) -> datetime | None:
    """Up to when the history ``dataset`` of these jobs is complete and final (None: not yet)."""
    if not jobs:
        return None
    values = conn.execute(
        select(cursors.c.value).where(cursors.c.job.in_(jobs), cursors.c.dataset == dataset)
    ).scalars()
    done = [t for t in (cursor_time(dataset, v) for v in values) if t is not None]
    return max(done) - OVERLAP if done else None


# -- what a check finds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One break: where, what, and how much. ``dataset`` is ``ledger`` (a chain), ``balances`` (a
    snapshot), ``my_trades`` (a fill) or ``orders`` (an order)."""

    account: str
    dataset: str
    subject: str  # the asset, a fill's pair, an order's txid
    message: str
    amount: Decimal | None
    start: datetime
    end: datetime
    run_id: int

    def line(self) -> str:
        return f"account {self.account}: {self.message}"

    def json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "subject": self.subject,
            "message": self.message,
            "amount": None if self.amount is None else f"{self.amount:f}",
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }


@dataclass
class Report:
    """What a check of one account found."""

    account: str
    verified_to: datetime | None = None
    assets: int = 0
    entries: int = 0
    unbalanced: int = 0  # entries without a balance (not in the chain)
    snapshots: int = 0
    pending_snapshots: int = 0  # newer than the horizon: not yet verifiable
    #: the newest of them, and the Ledgers jobs whose next run past it makes them verifiable
    pending_newest: datetime | None = None
    ledger_jobs: tuple[str, ...] = ()
    ledger_schedules: tuple[str, ...] = ()
    #: when the first Ledgers run that verifies them is due (an ``every`` job's last start plus
    #: whole intervals), if known
    pending_due: datetime | None = None
    fills: int = 0
    orders: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: statements run and rows read (the cost of a pass)
    statements: int = 0
    rows: int = 0
    #: breaks recorded for the account so far (by :func:`advance`)
    recorded_breaks: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        if self.verified_to is None:
            return f"account {self.account}: nothing verifiable yet ({'; '.join(self.notes)})"
        parts = [
            f"{self.assets} assets, {self.entries:,} ledger entries to "
            f"{_when(self.verified_to)} UTC",
            f"{self.snapshots:,} snapshot balances (an asset of a snapshot each)",
        ]
        if self.pending_snapshots:
            parts.append(self._pending())
        parts.append(f"{self.fills:,} fills, {self.orders:,} closed orders")
        count = len(self.findings)
        verdict = "verified" if self.ok else f"{count} break{'s' if count > 1 else ''} in"
        return f"account {self.account}: {verdict} {', '.join(parts)}"

    def _pending(self) -> str:
        """When the snapshots newer than the horizon will be verifiable: once the ledger is read
        past the newest one (and the minute read again after it), so after which run."""
        line = f"{self.pending_snapshots:,} newer ones not yet verifiable"
        if self.pending_newest is None:
            return line
        ready = self.pending_newest + WINDOW + OVERLAP
        jobs = ", ".join(
            f"{name} ({schedule})"
            for name, schedule in zip(self.ledger_jobs, self.ledger_schedules, strict=False)
        ) or ", ".join(self.ledger_jobs)
        due = "" if self.pending_due is None else f", due {_when(self.pending_due)} UTC"
        return (
            f"{line} (the newest taken {_when(self.pending_newest)} UTC; the ledger is complete "
            f"to {_when(self.verified_to or ready)} UTC): they will be after the first run of the "
            f"Ledgers job {jobs} that starts after {_when(ready)} UTC{due}"
        )

    def json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "ok": self.ok,
            "verified_to": None if self.verified_to is None else self.verified_to.isoformat(),
            "assets": self.assets,
            "entries": self.entries,
            "entries_without_balance": self.unbalanced,
            "snapshots": self.snapshots,
            "snapshots_not_yet_verifiable": self.pending_snapshots,
            # they will be after the first run of a Ledgers job starting after this time
            "verifiable_after": None
            if self.pending_newest is None
            else (self.pending_newest + WINDOW + OVERLAP).isoformat(),
            "fills": self.fills,
            "orders": self.orders,
            "breaks": [f.json() for f in self.findings],
            "notes": self.notes,
        }


# -- one asset's chain and snapshots ---------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    run_id: int
    job: str
    taken_at: datetime
    amount: Decimal


@dataclass(frozen=True)
class Point:
    """Where an asset's chain stands after the entries up to ``time`` (None: before any)."""

    time: datetime | None
    balance: Decimal | None
    last: Entry | None
    entries: int


class AssetWalk:
    """One asset's entries, group by group, with its snapshots merged in by time.

    :param start: where the chain starts
    :param snapshots: the asset's snapshots to check, oldest first, all taken before
        ``horizon - WINDOW``
    :param report_after: breaks at or before this time were reported by an earlier pass
    :param resume_by: the point kept for the next pass is the last one at or before this time
    """

    def __init__(
        self,
        account: str,
        asset: str,
        start: Point,
        snapshots: Iterator[Snapshot],
        *,
        horizon: datetime,
        report_after: datetime | None = None,
        resume_by: datetime | None = None,
    ) -> None:
        self.account, self.asset, self.horizon = account, asset, horizon
        self.chain = Chain(asset, start.balance, start.last)
        self.start, self.report_after, self.resume_by = start, report_after, resume_by
        self._resume: tuple[datetime | None, Decimal | None, Entry | None, int] | None = None
        self.findings: list[Finding] = []
        self.checked = 0
        self._snapshots = snapshots
        self._next: Snapshot | None = None
        # The next snapshot's window, worked out once.
        self._due: datetime | None = None
        self._edge: datetime | None = None
        self._take_next()
        # The chain's balance after each time: one from before the next snapshot's window on.
        self._points: deque[tuple[datetime | None, Decimal | None]] = deque(
            [(start.time, start.balance)]
        )

    def _take_next(self) -> None:
        self._next = found = next(self._snapshots, None)
        if found is None:
            self._due = self._edge = None
        else:
            self._due, self._edge = found.taken_at + WINDOW, found.taken_at - WINDOW

    def feed(self, group: list[Entry]) -> None:
        """One time group of entries (after every earlier time). Per group, so kept lean: the
        snapshot window's edges are worked out once a snapshot, the resume point kept as a tuple
        (a :class:`Point` is made when asked for)."""
        when = group[0].time
        while self._next is not None and self._due is not None and self._due < when:
            self._decide(self._next)
        chain = self.chain
        for found in chain.feed(group):
            if self.report_after is None or when > self.report_after:
                self.findings.append(self._chain_finding(found))
        self._points.append((when, chain.balance))
        self._trim()
        if self.resume_by is not None and when <= self.resume_by:
            self._resume = (when, chain.balance, chain.last, chain.entries)

    @property
    def resume(self) -> Point:
        """The point kept for the next pass: the last one at or before ``resume_by``."""
        if self._resume is None:
            return self.start
        when, balance, last, entries = self._resume
        return Point(when, balance, last, self.start.entries + entries)

    def finish(self) -> None:
        """Decide the snapshots left (all taken before the horizon's window)."""
        while self._next is not None:
            self._decide(self._next)

    @property
    def entries(self) -> int:
        return self.start.entries + self.chain.entries

    def _trim(self) -> None:
        """Keep the points a pending snapshot may still need: the last one before its window."""
        edge = self._edge
        points = self._points
        while len(points) > 1:
            second = points[1][0]
            if edge is not None and (second is None or second > edge):
                return
            points.popleft()

    def _decide(self, snap: Snapshot) -> None:
        self._take_next()
        low, high = snap.taken_at - WINDOW, snap.taken_at + WINDOW
        before = [p for p in self._points if p[0] is None or p[0] <= low]
        inside = [p for p in self._points if p[0] is not None and low < p[0] <= high]
        candidates = {b for _, b in (before[-1:] + inside) if b is not None}
        at = [b for t, b in self._points if t is None or t <= snap.taken_at][-1:]
        self._trim()
        if not candidates or at == [None]:
            return  # the chain starts later than the snapshot: nothing to compare with
        self.checked += 1
        if snap.amount in candidates:
            return
        ledger_says = at[0] if at and at[0] is not None else min(candidates)
        difference = snap.amount - ledger_says
        self.findings.append(
            Finding(
                self.account,
                "balances",
                self.asset,
                f"snapshot of job {snap.job} (run {snap.run_id}, {_when(snap.taken_at)}): "
                f"{self.asset} {snap.amount:f}, the ledger {ledger_says:f}: difference "
                f"{difference:f}",
                difference,
                snap.taken_at,
                snap.taken_at,
                snap.run_id,
            )
        )

    def _chain_finding(self, found: Break) -> Finding:
        start = found.before.time if found.before is not None else found.after.time
        return Finding(
            self.account,
            "ledger",
            self.asset,
            found.message(),
            found.unaccounted,
            start,
            found.after.time,
            found.after.run_id,
        )


# -- reading the database --------------------------------------------------------------------


class Reader:
    """Streaming queries on one connection, counting statements and rows.

    :meth:`raw` reads the exact columns as the driver gives them, without the column types'
    Python layer: ``ExactDecimal`` and ``UTCDateTime`` cost three Python calls a value (a
    million entries: about as much as the chain's own check), where the check needs a value's
    conversion once, in C: :attr:`time` and :attr:`dec` (``datetime.fromisoformat`` and
    ``Decimal`` of SQLite's text; PostgreSQL's driver gives ``Decimal`` and aware datetimes).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn.execution_options(stream_results=True, yield_per=BATCH)
        self.sqlite = conn.dialect.name == "sqlite"
        self.statements = self.rows = 0
        self.time: Callable[[Any], datetime] = _sqlite_time if self.sqlite else _pg_time
        self.dec: Callable[[Any], Decimal] = Decimal if self.sqlite else _same

    def stream(self, query: Any) -> Iterator[Any]:
        self.statements += 1
        for row in self.conn.execute(query):
            self.rows += 1
            yield row

    def raw(self, query: Any) -> Iterator[Any]:
        """The rows of ``query`` with its times and decimals as the driver reads them: convert
        them with :attr:`time` and :attr:`dec` (None stays None only where checked)."""
        self.statements += 1
        rows = self.conn.execute(_untyped(query))
        for batch in rows.partitions():
            self.rows += len(batch)
            yield from batch

    def scalar(self, query: Any) -> Any:
        self.statements += 1
        return self.conn.execute(query).scalar()

    def unindexed(self, column: Any) -> Any:
        """``column`` as SQLite's planner may not pick an index by (its documented unary ``+``):
        the account's equality, so that SQLite reads the asset's entries or snapshots in the
        order of ``ix_ledger_asset_time``/``ix_balances_asset_taken_at`` instead of the account's
        rows by ``ix_ledger_refid`` sorted in a temporary tree (twice the time of the whole
        ledger's walk), and the fills, the trade entries and the orders in a plain scan (or by
        time) instead of a lookup per row through the account's index (0.9 s instead of 1.4 s
        for the three on 200,000 entries). SQLAlchemy renders no ``INDEXED BY`` on SQLite:
        ``with_hint`` was silently dropped. The surprise: with several accounts in one file,
        each account's pass reads the others' rows too (filtered, never returned).
        PostgreSQL plans with its statistics: the column as it is."""
        if not self.sqlite:
            return column
        return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def _untyped(query: Any) -> Any:
    """``query`` with each exact column's type layer taken off (same SQL, same names)."""
    columns = [
        type_coerce(c, NULLTYPE).label(c.key) if isinstance(c.type, _TYPED) else c
        for c in query.selected_columns
    ]
    return query.with_only_columns(*columns, maintain_column_froms=True)


_TYPED = (ExactDecimal, UTCDateTime)


def _sqlite_time(value: str) -> datetime:
    # Stored as 2026-01-01 00:00:00.250000+00:00 (schema._SQLITE_TS): tz-aware UTC at C speed.
    return datetime.fromisoformat(value)


def _pg_time(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _same(value: Decimal) -> Decimal:
    return value


def _entries(reader: Reader, rows: Iterable[Any]) -> Iterator[Entry]:
    """Raw rows (:meth:`Reader.raw`) of :data:`_ENTRY_COLUMNS` as entries."""
    time, dec = reader.time, reader.dec
    for _, ledger_id, when, amount, fee, balance, run_id in rows:
        yield Entry(
            ledger_id,
            time(when),
            dec(amount),
            dec(fee),
            None if balance is None else dec(balance),
            run_id,
        )


_ENTRY_COLUMNS = (
    ledger.c.asset,
    ledger.c.ledger_id,
    ledger.c.time,
    ledger.c.amount,
    ledger.c.fee,
    ledger.c.balance,
    ledger.c.run_id,
)


def _snapshots(
    reader: Reader, account: str, asset: str, after: datetime | None, upto: datetime
) -> Iterator[Snapshot]:
    query = select(balances.c.run_id, balances.c.job, balances.c.taken_at, balances.c.amount).where(
        reader.unindexed(balances.c.account) == account,
        balances.c.asset == asset,
        balances.c.taken_at <= upto,
    )
    if after is not None:
        query = query.where(balances.c.taken_at > after)
    query = query.order_by(balances.c.taken_at)
    time, dec = reader.time, reader.dec
    for run_id, job, taken_at, amount in reader.raw(query):
        yield Snapshot(run_id, job, time(taken_at), dec(amount))


class Stopped(Exception):
    """The pass was asked to stop; nothing of it is recorded."""


def _go_on(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped


def _walk_all(
    main: Reader,
    side: Reader,
    scope: Scope,
    upto: datetime,
    stop: threading.Event | None = None,
) -> dict[str, AssetWalk]:
    """Every asset of the account from the start: the ledger in one scan in (asset, time) order,
    each asset's snapshots from a second connection as its entries go by. Returns the walks."""
    query = (
        select(*_ENTRY_COLUMNS)
        .where(main.unindexed(ledger.c.account) == scope.account, ledger.c.time <= upto)
        .order_by(ledger.c.asset, ledger.c.time)
    )
    walks: dict[str, AssetWalk] = {}
    walk: AssetWalk | None = None
    start = Point(None, ZERO if scope.from_start else None, None, 0)
    for asset, group in _asset_time_groups(main, main.raw(query)):
        _go_on(stop)
        if walk is None or walk.asset != asset:
            if walk is not None:
                walk.finish()
            snaps = _snapshots(side, scope.account, asset, None, upto - WINDOW)
            walk = walks[asset] = AssetWalk(
                scope.account, asset, start, snaps, horizon=upto, resume_by=upto - 2 * WINDOW
            )
        walk.feed(group)
    if walk is not None:
        walk.finish()
    # Assets the snapshots name and the ledger never had.
    others = side.stream(
        select(balances.c.asset)
        .where(balances.c.account == scope.account, balances.c.taken_at <= upto - WINDOW)
        .distinct()
    )
    for asset in sorted({r.asset for r in others} - set(walks)):
        snaps = _snapshots(side, scope.account, asset, None, upto - WINDOW)
        walk = walks[asset] = AssetWalk(scope.account, asset, start, snaps, horizon=upto)
        walk.finish()
    return walks


def _asset_time_groups(reader: Reader, rows: Iterable[Any]) -> Iterator[tuple[str, list[Entry]]]:
    """Raw rows (:meth:`Reader.raw`) of :data:`_ENTRY_COLUMNS` in (asset, time) order, as each
    asset's entries grouped by time (a time's text is one per instant: the stored form is
    fixed). One pass: a time converted once a group, the decimals once each (not at all on
    PostgreSQL, whose driver gives ``Decimal``)."""
    time, dec = reader.time, reader.dec
    convert = reader.sqlite
    group: list[Entry] = []
    asset = stamp = at = None
    for name, ledger_id, when, amount, fee, balance, run_id in rows:
        if when != stamp or name != asset:
            if group:
                yield asset, group  # type: ignore[misc]
            group, asset, stamp, at = [], name, when, time(when)
        if convert:
            amount, fee = dec(amount), dec(fee)
            if balance is not None:
                balance = dec(balance)
        group.append(Entry(ledger_id, at, amount, fee, balance, run_id))  # type: ignore[arg-type]
    if group:
        yield asset, group  # type: ignore[misc]


def _collect(report: Report, walks: Mapping[str, AssetWalk]) -> None:
    for walk in walks.values():
        report.findings.extend(walk.findings)
        report.entries += walk.chain.entries
        report.unbalanced += walk.chain.unbalanced
        report.snapshots += walk.checked
    report.assets = len(walks)


# -- the fills and the orders ----------------------------------------------------------------


def _half_unit(value: Decimal) -> Decimal:
    """Half a unit in the last place ``value`` was written with: how far a figure rounded to
    those decimals may be from the exact one."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        return ZERO
    found = _HALF_UNITS.get(exponent)
    if found is None:
        found = _HALF_UNITS[exponent] = Decimal(5).scaleb(exponent - 1)
    return found


#: Half a unit of each exponent met, ``5E(exponent - 1)`` (a few dozen at most: the places of
#: the figures Kraken writes).
_HALF_UNITS: dict[int, Decimal] = {}


def _near(ledger_value: Decimal, trade_value: Decimal) -> bool:
    """Equal but for the rounding of either to the decimals it is written with (the ledger keeps
    the asset's decimals, 4 for ZUSD; a trade's cost has the pair's, 5)."""
    if ledger_value == trade_value:  # most are: no rounding to work out
        return True
    difference = abs(ledger_value - trade_value)
    # Half a unit of the last place is at most half a unit of the first (``adjusted()``, no
    # digits tuple made): figures further apart than that are not near, exactly.
    if difference > _half_first(ledger_value) + _half_first(trade_value):
        return False
    return difference <= _half_unit(ledger_value) + _half_unit(trade_value)


def _half_first(value: Decimal) -> Decimal:
    """Half a unit in the place of ``value``'s first digit: at least :func:`_half_unit`."""
    if not value.is_finite():
        return Decimal("Infinity")
    place = value.adjusted()
    found = _HALF_UNITS.get(place)
    if found is None:
        found = _HALF_UNITS[place] = Decimal(5).scaleb(place - 1)
    return found


def _check_fills(
    reader: Reader, scope: Scope, report: Report, low: datetime | None, upto: datetime
) -> None:
    """Every fill in ``(low, upto]`` has its legs; every trade entry there is a fill's."""
    query = (
        select(
            my_trades.c.txid,
            my_trades.c.time,
            my_trades.c.type,
            my_trades.c.pair,
            my_trades.c.price,
            my_trades.c.cost,
            my_trades.c.fee,
            my_trades.c.vol,
            my_trades.c.margin,
            my_trades.c.run_id,
            ledger.c.ledger_id,
            ledger.c.asset,
            ledger.c.amount,
            ledger.c.fee.label("leg_fee"),
        )
        .select_from(
            my_trades.outerjoin(
                ledger,
                and_(ledger.c.account == my_trades.c.account, ledger.c.refid == my_trades.c.txid),
            )
        )
        .where(reader.unindexed(my_trades.c.account) == scope.account, my_trades.c.time <= upto)
        .order_by(my_trades.c.txid)
    )
    if low is not None:
        query = query.where(my_trades.c.time > low)
    group: list[Any] = []
    for row in itertools.chain(reader.raw(query), [None]):
        if group and (row is None or row.txid != group[0].txid):
            report.fills += 1
            group = _fill_rows(reader, group)
            problem = _fill_problem(group)
            if problem:
                fill = group[0]
                report.findings.append(
                    Finding(
                        scope.account,
                        "my_trades",
                        fill.pair,
                        f"fill {fill.txid} ({fill.type} {fill.vol:f} {fill.pair} at "
                        f"{_when(fill.time)}, cost {fill.cost:f}, fee {fill.fee:f}): {problem}",
                        None,
                        fill.time,
                        fill.time,
                        fill.run_id,
                    )
                )
            group = []
        if row is not None:
            group.append(row)
    # The other way: a trade entry of the ledger whose fill was never collected.
    orphans = (
        select(ledger.c.ledger_id, ledger.c.refid, ledger.c.time, ledger.c.asset, ledger.c.run_id)
        .select_from(
            ledger.outerjoin(
                my_trades,
                and_(my_trades.c.account == ledger.c.account, my_trades.c.txid == ledger.c.refid),
            )
        )
        .where(
            reader.unindexed(ledger.c.account) == scope.account,
            ledger.c.type == "trade",
            ledger.c.time <= upto,
            my_trades.c.txid.is_(None),
        )
    )
    if low is not None:
        orphans = orphans.where(ledger.c.time > low)
    for row in reader.stream(orphans):
        report.findings.append(
            Finding(
                scope.account,
                "my_trades",
                row.asset,
                f"ledger entry {row.ledger_id} ({row.asset} at {_when(row.time)}) is trade "
                f"{row.refid}, which is not in my_trades",
                None,
                row.time,
                row.time,
                row.run_id,
            )
        )


class _FillRow(NamedTuple):
    """A fill joined to one of its ledger legs (``ledger_id`` None: none), typed."""

    txid: str
    time: datetime
    type: str
    pair: str
    price: Decimal
    cost: Decimal
    fee: Decimal
    vol: Decimal
    margin: Decimal | None
    run_id: int
    ledger_id: str | None
    asset: str | None
    amount: Decimal | None
    leg_fee: Decimal | None


def _fill_rows(reader: Reader, rows: list[Any]) -> list[_FillRow]:
    """One fill's raw rows typed, its own columns once (they repeat on every leg's row)."""
    t, d = reader.time, reader.dec
    txid, time, kind, pair, price, cost, fee, vol, margin, run_id = rows[0][:10]
    head = (txid, t(time), kind, pair, d(price), d(cost), d(fee), d(vol), _opt(d, margin), run_id)
    return [_FillRow(*head, r[10], r[11], _opt(d, r[12]), _opt(d, r[13])) for r in rows]


def _opt(convert: Callable[[Any], Decimal], value: Any) -> Decimal | None:
    return None if value is None else convert(value)


class _OrderRow(NamedTuple):
    """A closed order joined to one of its fills (``fill`` None: none), typed."""

    txid: str
    status: str
    pair: str
    closetm: datetime
    cost: Decimal
    fee: Decimal
    vol_exec: Decimal
    run_id: int
    fill: str | None
    fill_cost: Decimal | None
    fill_fee: Decimal | None
    fill_vol: Decimal | None


def _order_rows(reader: Reader, rows: list[Any]) -> list[_OrderRow]:
    t, d = reader.time, reader.dec
    txid, status, pair, closetm, cost, fee, vol_exec, run_id = rows[0][:8]
    head = (txid, status, pair, t(closetm), d(cost), d(fee), d(vol_exec), run_id)
    return [_OrderRow(*head, r[8], _opt(d, r[9]), _opt(d, r[10]), _opt(d, r[11])) for r in rows]


def _fill_problem(rows: list[Any]) -> str | None:
    """What is wrong with a fill's legs, or None: a base leg of ``±vol`` and a quote leg of
    ``∓cost`` (a leg per wallet may split either), the fee on the quote leg (or in the base
    asset, for ``fcib``, or in fee credits, ``KFEE``). A margin fill is not compared: its
    ledger entries are ``margin``/``rollover`` ones of the quote asset, which only the chain
    checks."""
    fill = rows[0]
    if fill.margin:  # a margin fill books margin entries, not spot legs: the chain covers them
        return None
    legs = [r for r in rows if r.ledger_id is not None]
    if not legs:
        return "no ledger entries with its txid as refid"
    sign = 1 if fill.type == "buy" else -1
    by_asset: dict[str, list[Decimal]] = {}
    for leg in legs:
        amount, fee = by_asset.setdefault(leg.asset, [ZERO, ZERO])
        by_asset[leg.asset] = [amount + leg.amount, fee + leg.leg_fee]
    base = [a for a, (amount, _) in by_asset.items() if _near(amount, sign * fill.vol)]
    quote = [a for a, (amount, _) in by_asset.items() if _near(amount, -sign * fill.cost)]
    if len(base) != 1 or len(quote) != 1 or base == quote:
        found = ", ".join(f"{a} {amount:f}" for a, (amount, _) in sorted(by_asset.items()))
        return (
            f"its legs ({found}) are not {sign * fill.vol:f} of the base and "
            f"{-sign * fill.cost:f} of the quote"
        )
    (b,), (q,) = base, quote
    quote_fee, base_fee = by_asset[q][1], by_asset[b][1]
    credits = sum((fee for a, (_, fee) in by_asset.items() if a == "KFEE"), ZERO)
    if _near(quote_fee, fill.fee) and base_fee == 0:
        return None
    if quote_fee == 0 and credits > 0:
        return None  # paid in fee credits: their value is not the trade's fee
    # Paid in the base asset (fcib): the trade still states it in quote, at its price.
    slack = fill.price * _half_unit(base_fee) * 2 + _half_unit(fill.fee)
    if quote_fee == 0 and base_fee > 0 and abs(base_fee * fill.price - fill.fee) <= slack:
        return None
    return f"the legs' fee ({q} {quote_fee:f}, {b} {base_fee:f}) is not the fill's {fill.fee:f}"


def _check_orders(
    reader: Reader, scope: Scope, report: Report, low: datetime | None, upto: datetime
) -> None:
    """Every closed order in ``(low, upto]`` is the sum of its fills."""
    query = (
        select(
            orders.c.txid,
            orders.c.status,
            orders.c.pair,
            orders.c.closetm,
            orders.c.cost,
            orders.c.fee,
            orders.c.vol_exec,
            orders.c.run_id,
            my_trades.c.txid.label("fill"),
            my_trades.c.cost.label("fill_cost"),
            my_trades.c.fee.label("fill_fee"),
            my_trades.c.vol.label("fill_vol"),
        )
        .select_from(
            orders.outerjoin(
                my_trades,
                and_(
                    my_trades.c.account == orders.c.account,
                    my_trades.c.ordertxid == orders.c.txid,
                ),
            )
        )
        .where(
            reader.unindexed(orders.c.account) == scope.account,
            orders.c.closetm.is_not(None),
            orders.c.closetm <= upto,
        )
        .order_by(orders.c.txid)
    )
    if low is not None:
        query = query.where(orders.c.opentm > low)
    group: list[Any] = []
    for row in itertools.chain(reader.raw(query), [None]):
        if group and (row is None or row.txid != group[0].txid):
            report.orders += 1
            group = _order_rows(reader, group)
            problem = _order_problem(group)
            if problem:
                order = group[0]
                report.findings.append(
                    Finding(
                        scope.account,
                        "orders",
                        order.txid,
                        f"order {order.txid} ({order.status} {order.pair} at "
                        f"{_when(order.closetm)}): {problem}",
                        None,
                        order.closetm,
                        order.closetm,
                        order.run_id,
                    )
                )
            group = []
        if row is not None:
            group.append(row)


def _order_problem(rows: list[Any]) -> str | None:
    order = rows[0]
    fills = [r for r in rows if r.fill is not None]
    wrong = []
    for name, column in (("cost", "fill_cost"), ("fee", "fill_fee"), ("vol_exec", "fill_vol")):
        parts = [getattr(f, column) for f in fills]
        total, stated = sum(parts, ZERO), getattr(order, name)
        if total == stated:  # most are: no rounding to work out
            continue
        # Each figure is rounded to the decimals it is written with, the order's and the fills'.
        slack = _half_unit(stated) + sum((_half_unit(p) for p in parts), ZERO)
        if abs(total - stated) > slack:
            wrong.append(f"{name} {stated:f} but its {len(fills)} fills add up to {total:f}")
    return "; ".join(wrong) or None


# -- the whole check, and the incremental one -------------------------------------------------


def _session(*connections: Connection) -> None:
    """PostgreSQL's session for a pass, for the rest of each connection's transaction: times in
    UTC, so psycopg gives ``datetime.UTC`` itself (under ``Etc/UTC`` a ``ZoneInfo``: each of
    200,000 times converted again; instants compare the same whatever the zone), and cursors
    planned for reading every row (``cursor_tuple_fraction`` 1: a server-side cursor is
    otherwise planned for its first tenth, the fills' join as a nested loop of index scans,
    0.77 s instead of 0.62 s for a hash join and a sort)."""
    for conn in connections:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            conn.execute(text("SET LOCAL cursor_tuple_fraction = 1"))


def verify(engine: Engine, scopes_: Sequence[Scope]) -> list[Report]:
    """Check every account of ``scopes_`` from the start; nothing is written."""
    reports = []
    with engine.connect() as main_conn, engine.connect() as side_conn:
        _session(main_conn, side_conn)
        for scope in scopes_:
            main, side = Reader(main_conn), Reader(side_conn)
            report = Report(scope.account, notes=list(scope.notes))
            reports.append(report)
            if not scope.ledger_jobs:
                report.notes.append("no Ledgers job collects the whole ledger")
                continue
            upto = horizon(main_conn, scope.ledger_jobs, "ledger")
            if upto is None:
                report.notes.append("the ledger's first backfill has not finished")
                continue
            report.verified_to = upto
            walks = _walk_all(main, side, scope, upto)
            _collect(report, walks)
            report.pending_snapshots, report.pending_newest = _newer_snapshots(
                side, scope.account, upto
            )
            report.ledger_jobs = tuple(scope.ledger_jobs)
            report.ledger_schedules = scope.ledger_schedules
            if report.pending_newest is not None:
                report.pending_due = _due(
                    main_conn, scope, report.pending_newest + WINDOW + OVERLAP
                )
            trades_to = horizon(main_conn, scope.trades_jobs, "my_trades")
            if trades_to is None:
                report.notes.append("fills not checked: no TradesHistory job has finished")
                continue
            # Where both the ledger and the fills were collected.
            both = min(upto, trades_to)
            _check_fills(main, scope, report, _latest(scope.ledger_since, scope.trades_since), both)
            orders_to = horizon(main_conn, scope.orders_jobs, "orders")
            if orders_to is None:
                report.notes.append("orders not checked: no ClosedOrders job has finished")
            else:
                since = _latest(scope.orders_since, scope.trades_since)
                _check_orders(main, scope, report, since, min(trades_to, orders_to))
    return reports


def _latest(*times: datetime | None) -> datetime | None:
    """The latest of these starts (None: from the beginning)."""
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _due(conn: Connection, scope: Scope, ready: datetime) -> datetime | None:
    """When the first Ledgers run starting after ``ready`` is due: the last run's start plus
    whole intervals of the shortest ``every`` (None for cron jobs, or before any run)."""
    if scope.ledger_every is None or not scope.ledger_jobs:
        return None
    last = conn.execute(
        select(func.max(runs.c.started_at)).where(runs.c.job.in_(scope.ledger_jobs))
    ).scalar()
    if last is None:
        return None
    step = timedelta(seconds=scope.ledger_every)
    if last > ready:
        return last
    return last + step * (math.floor((ready - last) / step) + 1)


def _newer_snapshots(side: Reader, account: str, upto: datetime) -> tuple[int, datetime | None]:
    """How many snapshot balances are too new to verify, and when the newest was taken."""
    newer = (balances.c.account == account) & (balances.c.taken_at > upto - WINDOW)
    count = int(side.scalar(select(func.count()).where(newer)) or 0)
    return count, side.scalar(select(func.max(balances.c.taken_at)).where(newer))


def advance(
    engine: Engine,
    scope: Scope,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> Report:
    """Continue the account's verification from where the last pass left each asset, up to the
    ledger's horizon; record the new breaks (``gaps`` rows) and where each asset now stands.

    Reads the entries after each asset's stored point (a few seconds before the last horizon, for
    the snapshots of those seconds) and the snapshots taken since: about a run's new entries.
    The report holds the new findings only; ``entries`` is the account's total.

    :raises Stopped: ``stop`` was set during the pass (nothing is recorded)
    """
    now = now or datetime.now(UTC)
    report = Report(scope.account, notes=list(scope.notes))
    if not scope.ledger_jobs:
        return report
    with engine.connect() as main_conn, engine.connect() as side_conn:
        _session(main_conn, side_conn)
        main, side = Reader(main_conn), Reader(side_conn)
        upto = horizon(main_conn, scope.ledger_jobs, "ledger")
        main.statements += 1
        if upto is None:
            return report
        state = {
            r.asset: r
            for r in main.stream(
                select(ledger_verification).where(ledger_verification.c.account == scope.account)
            )
        }
        before = max((r.verified_to for r in state.values()), default=None)
        if before is not None and upto <= before:  # no window finished since the last pass
            report.verified_to = before
            report.statements, report.rows = main.statements, main.rows
            _totals(report, state.values())
            return report
        if before is None:
            walks = _walk_all(main, side, scope, upto, stop)
        else:
            walks = _walk_new(main, side, scope, state, before, upto, stop)
        report.verified_to = upto
        _collect(report, walks)
        report.statements, report.rows = main.statements + side.statements, main.rows + side.rows
    _record(engine, scope, report, walks, state, upto, now)
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_verification).where(ledger_verification.c.account == scope.account)
        ).all()
    _totals(report, rows)
    return report


def _totals(report: Report, rows: Iterable[Any]) -> None:
    rows = list(rows)
    report.assets = len(rows)
    report.entries = sum(r.entries for r in rows)
    report.recorded_breaks = sum(r.breaks for r in rows)


def _walk_new(
    main: Reader,
    side: Reader,
    scope: Scope,
    state: Mapping[str, Any],
    before: datetime,
    upto: datetime,
    stop: threading.Event | None = None,
) -> dict[str, AssetWalk]:
    """The assets with new entries or new snapshots, each from its stored point."""
    # No account in the WHERE (filtered here): SQLite reads the time range by ix_ledger_time.
    fresh = main.stream(
        select(ledger.c.account, ledger.c.asset)
        .where(ledger.c.time > before, ledger.c.time <= upto)
        .distinct()
    )
    assets = {r.asset for r in fresh if r.account == scope.account}
    snapped = side.stream(
        select(balances.c.account, balances.c.asset)
        .where(balances.c.taken_at > before - WINDOW, balances.c.taken_at <= upto - WINDOW)
        .distinct()
    )
    assets |= {r.asset for r in snapped if r.account == scope.account}
    walks = {}
    for asset in sorted(assets):
        row = state.get(asset)
        if row is None:
            start = Point(None, ZERO if scope.from_start else None, None, 0)
        else:
            last = None
            if row.resume_ledger_id is not None and row.resume_time is not None:
                last = Entry(row.resume_ledger_id, row.resume_time, ZERO, ZERO, row.resume_balance)
            start = Point(row.resume_time, row.resume_balance, last, row.resume_entries)
        query = select(*_ENTRY_COLUMNS).where(
            main.unindexed(ledger.c.account) == scope.account,
            ledger.c.asset == asset,
            ledger.c.time <= upto,
        )
        if start.time is not None:
            query = query.where(ledger.c.time > start.time)
        query = query.order_by(ledger.c.time)
        snaps = _snapshots(side, scope.account, asset, before - WINDOW, upto - WINDOW)
        walk = walks[asset] = AssetWalk(
            scope.account,
            asset,
            start,
            snaps,
            horizon=upto,
            report_after=before,
            resume_by=upto - 2 * WINDOW,
        )
        for group in time_groups(_entries(main, main.raw(query))):
            _go_on(stop)
            walk.feed(group)
        walk.finish()
    return walks


def _record(
    engine: Engine,
    scope: Scope,
    report: Report,
    walks: Mapping[str, AssetWalk],
    state: Mapping[str, Any],
    upto: datetime,
    now: datetime,
) -> None:
    """Where each asset stands and the new breaks, in one transaction."""
    insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
    rows = []
    for asset, walk in walks.items():
        old = state.get(asset)
        resume = walk.resume
        rows.append(
            {
                "account": scope.account,
                "asset": asset,
                "verified_to": upto,
                "entries": walk.entries,
                "breaks": (old.breaks if old is not None else 0) + len(walk.findings),
                "resume_time": resume.time,
                "resume_balance": resume.balance,
                "resume_ledger_id": None if resume.last is None else resume.last.ledger_id,
                "resume_entries": resume.entries,
                "updated_at": now,
            }
        )
    findings = [
        {
            "job": scope.job,
            "dataset": f.dataset,
            "pair": f.subject[:32],
            "start": f.start,
            "end": f.end,
            "reason": f.message,
            "amount": f.amount,
            "run_id": f.run_id,
        }
        for f in report.findings
    ]
    with engine.begin() as conn:
        if rows:
            stmt = insert(ledger_verification)
            keep = [c.name for c in ledger_verification.c if c.name not in ("account", "asset")]
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["account", "asset"], set_={c: stmt.excluded[c] for c in keep}
                ),
                rows,
            )
        conn.execute(
            update(ledger_verification)
            .where(ledger_verification.c.account == scope.account)
            .values(verified_to=upto, updated_at=now)
        )
        if findings:
            conn.execute(
                insert(gaps).on_conflict_do_nothing(
                    index_elements=["job", "dataset", "pair", "start"]
                ),
                findings,
            )


def status(conn: Connection) -> list[dict[str, Any]]:
    """Each account's verification as stored: how far, how many assets and entries, breaks."""
    query = select(
        ledger_verification.c.account,
        func.min(ledger_verification.c.verified_to),
        func.count(),
        func.sum(ledger_verification.c.entries),
        func.sum(ledger_verification.c.breaks),
    ).group_by(ledger_verification.c.account)
    return [
        {
            "account": account,
            "verified": not breaks,
            "verified_to": to.astimezone(UTC).isoformat(timespec="seconds") if to else None,
            "assets": assets,
            "entries": int(entries or 0),
            "breaks": int(breaks or 0),
        }
        for account, to, assets, entries, breaks in conn.execute(query).all()
    ]


def _when(value: datetime) -> str:
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{value.microsecond:06d}".rstrip("0") if value.microsecond else text
