"""What each balance snapshot was worth in one quote currency, exactly: the rules, applied in
Python, and the table ``portfolio_value`` the store keeps with them for any tool to read.

**The rules** (one asset of one snapshot taken at time T; the quote Q is ``valuation.quote``,
``USD`` by default):

1. Its candidates, in order: the asset itself, then the asset it is a variant of. A variant is
   named by a suffix Kraken adds to an asset's code: ``.S`` (staked on chain), ``.M`` (opt-in
   rewards), ``.P`` (parachain), ``.F`` (Kraken Earn), ``.B`` (bonded), each after an optional
   number of bonded days (``DOT28.S``: ``DOT``; ``ETH2.S``: ``ETH``), and ``.HOLD`` (funds on
   hold). The name left is a code or an altname (``XBT.M``: ``XBT``, which is ``XXBT``).
2. Each candidate's routes, in order: it *is* Q (by code or altname: ``ZUSD`` is ``USD``), price
   1; a pair of ``pairs`` with it as base and Q as quote (direct); a pair with it as base and XBT
   as quote, times XBT's direct price in Q at T (through XBT).
3. A pair's price at T: the newest of its ``ticker`` rows' ``last`` taken at or before T and its
   final ``ohlc`` candles' ``close`` that closed (start + interval) at or before T, any
   interval. The first route with a price at T gives the asset's price; within a route, the
   newest price wins (then the ticker, then the shorter interval, then the pair's name). A
   price older than ``valuation.max_price_age`` (a day) at T does not count: a pair that stopped
   trading, or a ticker job removed long ago, values nothing today.
4. The snapshot's value is the exact sum of amount x price; an asset without a price at T (and
   an amount other than zero) is **named** in ``unpriced``, never counted as 0.

An asset quoted only the other way round (``USD`` in a ``EUR`` valuation, through ``EURUSD``) is
unpriced: valuing it would divide, which is not exact.

**A table, not a view.** SQLite has no exact decimal arithmetic in plain SQL (its arithmetic
on decimal text goes through floats): a view multiplying exactly needed functions collector
registers on its own connections, so pandas, ``sqlite3``, DuckDB or Datasette could not read
it (``no such function: decimal_mul``). So the store keeps ``portfolio_value`` as a table, on
both databases alike (one behaviour, one code path), in the transaction of each batch that
could change it (:func:`after_write`): the batch's snapshots; those a stored price can value
(taken up to ``max_price_age`` after it); all of them when a pair or an asset is added, or
when ``collector run`` starts with other ``valuation`` settings (:func:`remember_quote`). An
``ok`` Balance run without rows (Kraken's answer for an emptied account) is a snapshot worth
0: its row is the only mark that it was taken.

The table values with the settings the service was started with (``collector_state``, rows
``valuation_quote`` and ``valuation_max_price_age``; ``USD`` and a day without). The dashboard
reads the table when its own job file's settings are those, and values with :class:`Valuation`,
the same code, what the table lacks, or everything when they differ.

Why one module of this length: the rules (routes, variants, price age), the series they read and
the table they write are one definition of "a snapshot's value"; split, the page and the table
could drift apart, which ``tests/test_valuation.py`` exists to prevent.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    exists,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import defaults
from .datasets.balances import table as balances
from .datasets.reference import assets, pairs
from .numbers import readable
from .schema import ExactDecimal, RunId, UTCDateTime, metadata, runs, state

#: The ``collector_state`` row holding the quote the view values in.
QUOTE_STATE = "valuation_quote"
#: The ``collector_state`` row holding the seconds a price values a snapshot for.
AGE_STATE = "valuation_max_price_age"
#: The ``collector_state`` row holding a digest of what the table's routes were made of.
ROUTES_STATE = "valuation_routes"
#: Suffixes of a variant of an asset: staked on chain, opt-in rewards, parachain, earn, bonded
#: (Kraken's support pages; rotki's and ccxt's Kraken code read them the same way).
SUFFIXES = (".S", ".M", ".P", ".F", ".B")
#: Funds on hold (``USD.HOLD``).
HOLD = ".HOLD"
#: Bitcoin's code and altname: the quote of pairs such as ``XETHXXBT`` and ``DOTXBT``.
XBT = ("XXBT", "XBT")
VIEW = "portfolio_value"

#: Exact arithmetic: a result needing more digits than this is an error, never rounded.
ONE = Decimal(1)
EXACT = decimal.Context(prec=2000, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])


def variant_of(asset: str) -> str | None:
    """The name of the asset ``asset`` is a variant of (``DOT.S``: ``DOT``; ``ETH2.S``: ``ETH``;
    ``USD.HOLD``: ``USD``), or None."""
    if asset.endswith(HOLD):
        name = asset[: -len(HOLD)]
    elif asset[-2:] in SUFFIXES:
        name = asset[:-2].rstrip("0123456789")
    else:
        return None
    return name or None


@dataclass(frozen=True)
class Route:
    """One way to price an asset. ``rank`` orders them: 0 it is the quote, 1 a direct pair, 2 a
    pair quoted in XBT; 3 to 5 the same for the asset it is a variant of. ``pair`` is None when
    it is the quote."""

    rank: int
    pair: str | None

    @property
    def through_xbt(self) -> bool:
        return self.rank % 3 == 2


class Routes:
    """Each asset's routes to one quote, from the ``assets`` and ``pairs`` tables' rows."""

    def __init__(
        self,
        quote: str,
        asset_rows: Iterable[tuple[str, str]],
        pair_rows: Iterable[tuple[str, str, str]],
    ) -> None:
        """``asset_rows``: ``(asset, altname)``; ``pair_rows``: ``(pair, base, quote)``."""
        listed = sorted(asset_rows)
        self._codes = {a for a, _ in listed}
        self._by_altname: dict[str, str] = {}
        for asset, altname in listed:
            self._by_altname.setdefault(altname, asset)  # the smallest code, as the view's min()
        self.quote = quote
        self.quote_codes = frozenset({quote, *(a for a, alt in listed if alt == quote)})
        self._bases: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for pair, base, quoted in sorted(pair_rows):
            self._bases[base].append((pair, quoted))
        self._xbt_is_quote = bool(self.quote_codes & set(XBT))
        #: XBT's direct pairs, which price the routes through XBT
        self.xbt_pairs = tuple(
            pair for code in XBT for pair, quoted in self._bases[code] if quoted in self.quote_codes
        )

    def code(self, name: str) -> str:
        """An asset's code from its code or its altname (``XBT``: ``XXBT``)."""
        return name if name in self._codes else self._by_altname.get(name, name)

    def of(self, asset: str) -> list[Route]:
        out: list[Route] = []
        candidates = [asset]
        name = variant_of(asset)
        if name is not None and self.code(name) != asset:
            candidates.append(self.code(name))
        for step, code in enumerate(candidates):
            if code in self.quote_codes:
                out.append(Route(3 * step, None))
            listed = self._bases.get(code, [])
            out += [Route(3 * step + 1, p) for p, q in listed if q in self.quote_codes]
            if not self._xbt_is_quote:
                out += [Route(3 * step + 2, p) for p, q in listed if q in XBT]
        return out


# -- SQL that reads the same on both databases, but for arithmetic and time ---------------------


class Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def minus_minutes(self, when: str, minutes: str) -> str:
        """``when`` less ``minutes`` (a time column; on SQLite, its stored text)."""
        if self.pg:
            return f"{when} - make_interval(mins => {minutes})"
        # Whole minutes leave the fraction and the zone as they are: the stored format again.
        return (
            f"strftime('%Y-%m-%d %H:%M:%S', {when}, '-' || {minutes} || ' minutes') "
            f"|| substr({when}, 20)"
        )

    def plus_minutes(self, when: str, minutes: str) -> str:
        if self.pg:
            return f"{when} + make_interval(mins => {minutes})"
        return (
            f"strftime('%Y-%m-%d %H:%M:%S', {when}, '+' || {minutes} || ' minutes') "
            f"|| substr({when}, 20)"
        )

    @property
    def width(self) -> int:
        """Characters of a time in a stamp: SQLite's stored text, or PostgreSQL's to_char."""
        return 26 if self.pg else 32

    def stamp(self, when: str, price: str) -> str:
        """A price with its time in front, as text: ordering stamps orders their times (the
        times are of one width), and one index seek gives both."""
        if self.pg:
            return f"to_char(({when}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || {price}"
        return f"{when} || ' ' || {price}"


def stamp_sql(d: Dialect, pair: str, minutes: str, at: str) -> str:
    """A scalar subquery: the stamp (:meth:`Dialect.stamp`) of ``pair``'s newest price at or
    before ``at`` from one source: ``minutes`` 0 its ticker (``last``), else the final candles
    of that OHLC interval (``close``, at the candle's close). One index seek."""
    return f"""CASE WHEN {minutes} = 0 THEN (
  SELECT {d.stamp("t.taken_at", "t.last")}
  FROM ticker t WHERE t.pair = {pair} AND t.taken_at <= {at}
  ORDER BY t.taken_at DESC LIMIT 1)
ELSE (
  SELECT {d.stamp(d.plus_minutes("o.time", "o.interval"), "o.close")}
  FROM ohlc o WHERE o.pair = {pair} AND o.interval = {minutes} AND o.final
    AND o.time <= {d.minus_minutes(at, minutes)}
  ORDER BY o.time DESC LIMIT 1) END"""


def _number(value: Any) -> Decimal | None:
    """A stored amount or price, or None for one out of the bounds every number from outside
    keeps now (:mod:`collector.numbers`): an older collector stored ``1E+999999``, whose products
    and sums no exact context holds. Such a value counts as unpriced, never as an error."""
    return readable(value)


# -- the table portfolio_value, kept by the store ---------------------------------------------

table = Table(
    VIEW,
    metadata,
    Column("run_id", RunId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("job", String(200), nullable=False),
    Column("account", String(64), nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("quote", String(32), nullable=False),
    Column("value", ExactDecimal(), nullable=False),
    # The assets without a price, comma-separated (NULL: none), and why each has none.
    Column("unpriced", Text),
    Column("why_unpriced", Text),
)
Index("ix_portfolio_value_taken_at", table.c.taken_at)

#: The methods whose ``ok`` run is a balance snapshot (one with no rows: an emptied account).
SNAPSHOT_METHODS = ("Balance", "BalanceEx")
#: Snapshots written back a statement at a time.
_CHUNK = 500


def _state(conn: Connection, name: str) -> str | None:
    return conn.execute(select(state.c.value).where(state.c.name == name)).scalar()


def _set_state(conn: Connection, name: str, value: str) -> bool:
    """Keep ``value`` under ``name``; whether it changed."""
    found = _state(conn, name)
    if found == value:
        return False
    if found is not None:
        conn.execute(update(state).where(state.c.name == name).values(value=value))
        return True
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(state).values(name=name, value=value).on_conflict_do_nothing())
    return True


def remember_quote(
    conn: Connection, quote: str, max_price_age: float = defaults.VALUATION_MAX_PRICE_AGE
) -> None:
    """Keep the job file's ``valuation`` settings as the table's (``collector_state``); when they
    changed, value every snapshot again with them."""
    changed = _set_state(conn, QUOTE_STATE, quote)
    changed = _set_state(conn, AGE_STATE, repr(float(max_price_age))) or changed
    if changed:
        refresh(conn, everything=True)


def stored_valuation(conn: Connection) -> Valuation:
    """The valuation the table holds: ``collector run``'s settings (USD and a day without)."""
    age = _state(conn, AGE_STATE)
    return Valuation(
        _state(conn, QUOTE_STATE) or defaults.VALUATION_QUOTE,
        float(age) if age else defaults.VALUATION_MAX_PRICE_AGE,
    )


def refresh(
    conn: Connection,
    *,
    run_ids: Sequence[int] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    everything: bool = False,
) -> int:
    """Value again the snapshots ``run_ids``, those taken in ``[since, until]`` (when ``since`` is
    given), or all of them, and write them into ``portfolio_value``; how many."""
    valuation = stored_valuation(conn)
    found: dict[int, Value] = {}
    for chunk in range(0, len(run_ids), _CHUNK):
        for v in valuation.values(conn, run_ids=run_ids[chunk : chunk + _CHUNK]):
            found[v.run_id] = v
    if everything:
        since = until = None
    if since is not None or everything:
        for v in valuation.values(conn, since, until=until):
            found[v.run_id] = v
    rows = [v.row() for v in found.values()]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for chunk in range(0, len(rows), _CHUNK):
        stmt = insert(table)
        fields = ("job", "account", "taken_at", "quote", "value", "unpriced", "why_unpriced")
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.run_id], set_={f: stmt.excluded[f] for f in fields}
        )
        conn.execute(stmt, rows[chunk : chunk + _CHUNK])
    return len(rows)


def after_write(
    conn: Connection,
    snapshots: Sequence[int],
    prices: Sequence[datetime],
    routes_changed: bool,
) -> None:
    """Keep ``portfolio_value`` true after a batch, in the batch's transaction: the batch's
    snapshots; those a price of the batch (its time) can value, taken up to
    ``max_price_age`` after it; all of them when pairs or assets were added (a route)."""
    # All of them, and the batch's own too: an emptied account's has no row to be found by.
    everything = routes_changed and _routes_changed(conn)
    since = until = None
    if prices and not everything:
        age = timedelta(seconds=stored_valuation(conn).max_price_age)
        since, until = min(prices), max(prices) + age
    if snapshots or since is not None or everything:
        refresh(conn, run_ids=list(snapshots), since=since, until=until, everything=everything)


def _routes_changed(conn: Connection) -> bool:
    """Whether what the routes are made of (each asset's altname; each pair's base and quote)
    changed since the table was last valued with them: the daily refresh of ``pairs`` also
    updates fees and statuses, which value nothing, and a year of snapshots is not valued again
    for them."""
    digest = hashlib.sha256()
    for asset, altname in conn.execute(
        select(assets.c.asset, assets.c.altname).order_by(assets.c.asset)
    ):
        digest.update(f"a {asset} {altname}\n".encode())
    for pair, base, quoted in conn.execute(
        select(pairs.c.pair, pairs.c.base, pairs.c.quote).order_by(pairs.c.pair)
    ):
        digest.update(f"p {pair} {base} {quoted}\n".encode())
    return _set_state(conn, ROUTES_STATE, digest.hexdigest())


def catch_up(conn: Connection) -> int:
    """Value the snapshots the table lacks (those stored before 0011 made it); how many."""
    missing = (
        select(balances.c.run_id)
        .distinct()
        .where(~exists().where(table.c.run_id == balances.c.run_id))
    )
    ids = list(conn.execute(missing).scalars())
    return refresh(conn, run_ids=ids) if ids else 0


# -- the rules in Python: the table's and the dashboard's -----------------------------------------


@dataclass(frozen=True)
class Value:
    """One snapshot's value."""

    run_id: int
    job: str
    account: str
    taken_at: datetime
    quote: str
    value: Decimal
    #: the assets with an amount and no price at the snapshot's time, sorted
    unpriced: tuple[str, ...]
    #: of those, the ones whose newest price was older than ``max_price_age``: (asset, its time)
    stale: tuple[tuple[str, datetime], ...] = ()
    max_price_age: float = defaults.VALUATION_MAX_PRICE_AGE

    @property
    def complete(self) -> bool:
        """Every asset had a price: the value is the snapshot's whole worth."""
        return not self.unpriced

    @property
    def reasons(self) -> str | None:
        """Why each unpriced asset has no price, one clause each (None: all priced)."""
        if not self.unpriced:
            return None
        old = dict(self.stale)
        limit = format_age(self.max_price_age)
        return "; ".join(
            f"{a}: newest price {old[a]:%Y-%m-%d %H:%M:%S} UTC is older than "
            f"valuation.max_price_age ({limit})"
            if a in old
            else f"{a}: no price at or before the snapshot"
            for a in self.unpriced
        )

    def row(self) -> dict[str, Any]:
        """The ``portfolio_value`` row."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "account": self.account,
            "taken_at": self.taken_at,
            "quote": self.quote,
            "value": self.value,
            "unpriced": ",".join(self.unpriced) or None,
            "why_unpriced": self.reasons,
        }


def format_age(seconds: float) -> str:
    """``86400``: ``1d``; ``5400``: ``1h30m``."""
    left, out = int(seconds), ""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out or "0s"


#: One pair's source: ``(pair, minutes)``, 0 minutes for its ticker.
Source = tuple[str, int]
#: Prices at each time (None: none recent enough), and the time of the newest price that was too
#: old (None: there was none too old), as the database returns times.
_Prices = tuple[list["Decimal | None"], list[Any]]


class Valuation:
    """The snapshots' values in ``quote``, with ``Decimal``: the view's rules, in Python.

    Each source's price at every snapshot time in range comes from one query: one index seek
    per snapshot time when the source has many more prices than there are snapshots (a ticker
    every 30 s, snapshots hourly), else one ordered scan of its prices in range, merged with the
    times. The balances are read once.
    """

    def prices(self, conn: Connection, pair: str, times: Sequence[datetime]) -> list[Any]:
        """``pair``'s price at each of ``times`` (ascending), by the same rule: the newest of its
        ticker and its final candles at or before it (None before its first)."""
        return self.prices_of(conn, [pair], times)[pair]

    def prices_of(
        self, conn: Connection, names: Sequence[str], times: Sequence[datetime]
    ) -> dict[str, list[Any]]:
        """:meth:`prices` of each of the pairs ``names`` at the same ``times``, the times made
        into parameters once (the page's 24 charts of 181 samples each: 4,344 of them)."""
        if not times:
            return {pair: [] for pair in names}
        d = Dialect(conn.dialect.name)
        raw = [_raw(t, d) for t in times]
        keys = [f"t{i}" for i in range(len(times))]
        values = ", ".join(f"(:{n})" for n in keys)
        query = f"SELECT v.column1 AS taken_at FROM (VALUES {values}) v"
        binds = [bindparam(n, type_=UTCDateTime()) for n in keys]
        series = _Series(conn, raw, (query, dict(zip(keys, times, strict=True)), binds))
        series.add_all(names)
        return {pair: series.newest((pair,)) for pair in names}

    def __init__(
        self,
        quote: str = defaults.VALUATION_QUOTE,
        max_price_age: float = defaults.VALUATION_MAX_PRICE_AGE,
    ) -> None:
        self.quote = quote
        #: seconds a price values a snapshot for; an older one leaves its asset unpriced
        self.max_price_age = max_price_age

    def routes(self, conn: Connection) -> Routes:
        """The routes from the ``assets`` and ``pairs`` tables (none before 0008 made them)."""
        if not inspect(conn).has_table(pairs.name):
            return Routes(self.quote, [], [])
        return Routes(
            self.quote,
            [(r[0], r[1]) for r in conn.execute(select(assets.c.asset, assets.c.altname))],
            [
                (r[0], r[1], r[2])
                for r in conn.execute(select(pairs.c.pair, pairs.c.base, pairs.c.quote))
            ],
        )

    def values(
        self,
        conn: Connection,
        since: datetime | None = None,
        accounts: Sequence[str] | None = None,
        *,
        until: datetime | None = None,
        run_ids: Sequence[int] | None = None,
    ) -> list[Value]:
        """Each snapshot taken at or after ``since`` (None: all) and at or before ``until`` of
        ``accounts`` (None: all), or the snapshots ``run_ids``, oldest first. A snapshot of an
        emptied account (an ``ok`` Balance run without rows) is worth 0."""
        where, params = _where(since, until, accounts, run_ids)
        binds = _binds(since, until, accounts, run_ids)
        rows = _fetch(
            conn,
            text(
                "SELECT run_id, job, account, taken_at, asset, amount FROM balances b"
                f"{where} ORDER BY run_id, asset"  # the key's order: no sort
            ).bindparams(*binds),
            params,
        )
        out = self._empty(conn, since, until, accounts, run_ids)
        if not rows:
            return sorted(out, key=lambda v: (v.taken_at, v.run_id))
        routes = self.routes(conn)
        plans = {asset: _Plan(routes.of(asset)) for asset in {row[4] for row in rows}}
        wanted = {pair for plan in plans.values() for pair in plan.pairs}
        if any(plan.through_xbt for plan in plans.values()):
            wanted.update(routes.xbt_pairs)
        # Times as the database returns them (SQLite's text, in one format; PostgreSQL's
        # datetimes): compared as they are, parsed once a snapshot.
        raw_times = sorted({row[3] for row in rows})
        index = {t: i for i, t in enumerate(raw_times)}
        times = f"SELECT DISTINCT b.taken_at FROM balances b{where}"
        series = _Series(conn, raw_times, (times, params, binds), self.max_price_age)
        series.add_all(sorted(wanted))
        xbt = _Plan([Route(1, pair) for pair in routes.xbt_pairs])
        prices = {asset: plan.prices(series, xbt) for asset, plan in plans.items()}
        start = 0
        for end in range(1, len(rows) + 1):
            if end < len(rows) and rows[end][0] == rows[start][0]:
                continue
            run_id, job, account, taken_at = rows[start][:4]
            i = index[taken_at]
            total = Decimal(0)
            unpriced = []
            stale = []
            for row in rows[start:end]:
                asset, amount = row[4], _number(row[5])
                found, old = prices[asset]
                price = found[i]
                if amount is None:  # out of bounds: shown as not valued, as a missing price
                    unpriced.append(asset)
                    continue
                if price is None:
                    if amount != 0:
                        unpriced.append(asset)
                        if old[i] is not None:
                            stale.append((asset, _utc(old[i])))
                    continue
                total = EXACT.add(total, EXACT.multiply(amount, price))
            out.append(
                Value(
                    run_id,
                    job,
                    account,
                    _utc(taken_at),
                    self.quote,
                    total,
                    tuple(sorted(unpriced)),
                    tuple(sorted(stale)),
                    self.max_price_age,
                )
            )
            start = end
        return sorted(out, key=lambda v: (v.taken_at, v.run_id))

    def _empty(
        self,
        conn: Connection,
        since: datetime | None,
        until: datetime | None,
        accounts: Sequence[str] | None,
        run_ids: Sequence[int] | None,
    ) -> list[Value]:
        """The snapshots without a balance: worth 0. Kraken answers an emptied account with no
        assets at all, so its ``ok`` run is the snapshot; the store marks it in
        ``portfolio_value`` (an ``ok`` run read by id; for a time range, the table's mark)."""
        no_rows = ~exists().where(balances.c.run_id == runs.c.id)
        if run_ids is not None:
            query = select(runs.c.id, runs.c.job, runs.c.account, runs.c.finished_at).where(
                runs.c.id.in_(list(run_ids)),
                runs.c.method.in_(SNAPSHOT_METHODS),
                runs.c.status == "ok",
                no_rows,
            )
        else:
            if not inspect(conn).has_table(table.name):
                return []
            query = select(table.c.run_id, table.c.job, table.c.account, table.c.taken_at).where(
                ~exists().where(balances.c.run_id == table.c.run_id)
            )
            if since is not None:
                query = query.where(table.c.taken_at >= since)
            if until is not None:
                query = query.where(table.c.taken_at <= until)
            if accounts is not None:
                query = query.where(table.c.account.in_(list(accounts)))
        return [
            Value(
                r[0],
                r[1],
                r[2] or defaults.DEFAULT_ACCOUNT,
                r[3],
                self.quote,
                Decimal(0),
                (),
                (),
                self.max_price_age,
            )
            for r in conn.execute(query)
            if accounts is None or (r[2] or defaults.DEFAULT_ACCOUNT) in accounts
        ]


#: A source's price at a snapshot time: (when, as the database returns times; the price, as text
#: or Decimal).
_Point = tuple[Any, Any] | None


class _Series:
    """Each source's price at every snapshot time, by the time's index."""

    #: A source with more prices in range than this many a time is sought, not scanned.
    SCAN_RATIO = 4

    def __init__(
        self,
        conn: Connection,
        times: list[Any],
        query: tuple[str, dict[str, Any], list[Any]],
        max_age: float | None = None,
    ) -> None:
        """``times``: ascending, as the database returns them; ``query``: SQL selecting them as
        ``taken_at``, its parameters and their binds; ``max_age``: seconds a price holds for
        (None: no limit)."""
        self.conn, self.times, self.query = conn, times, query
        self.d = Dialect(conn.dialect.name)
        #: each time's oldest price that still values it, as the database returns times (they
        #: compare as the times do: SQLite's text is of one format)
        self.oldest: list[Any] | None = None
        if max_age is not None:
            age = timedelta(seconds=max_age)
            self.oldest = [_raw(_utc(t) - age, self.d) for t in times]
        #: (pair, minutes) -> prices by time index
        self.sources: dict[Source, list[_Point]] = {}
        #: pair -> its sources' minutes, the ticker (0) first, then the shorter interval
        self.minutes: dict[str, list[int]] = {}
        self._xbt: _Prices | None = None
        self._decimals: dict[str, Decimal | None] = {}

    def add_all(self, names: Sequence[str]) -> None:
        """Read the sources of the pairs ``names`` and their prices: which sources each pair
        has, how many prices they have in range and the prices of those scanned, in a few
        statements for all of them, not four a pair (a round trip each: the page's 24 charts
        were 96 statements); a source with many more prices than times is sought, one each."""
        pairs = sorted(set(names))
        if not pairs:
            return
        given: Any
        if self.d.pg:
            listed, given = "unnest(CAST(:names AS text[])) AS v(value)", list(pairs)
        else:
            listed, given = "json_each(:names) AS v", json.dumps(pairs)
        ticker = set(
            self.conn.execute(
                text(
                    f"SELECT v.value FROM {listed} WHERE EXISTS "
                    "(SELECT 1 FROM ticker t WHERE t.pair = v.value)"
                ),
                {"names": given},
            ).scalars()
        )
        # Each one's OHLC intervals, one index seek each (a loose index scan from every pair).
        intervals: dict[str, list[int]] = defaultdict(list)
        for pair, minutes in self.conn.execute(
            text(
                "WITH RECURSIVE i(p, m) AS (SELECT v.value, (SELECT min(o.interval) FROM ohlc o "
                f"WHERE o.pair = v.value) FROM {listed} UNION ALL SELECT i.p, (SELECT "
                "min(o.interval) FROM ohlc o WHERE o.pair = i.p AND o.interval > i.m) FROM i "
                "WHERE i.m IS NOT NULL) SELECT p, m FROM i WHERE m IS NOT NULL"
            ),
            {"names": given},
        ):
            intervals[pair].append(int(minutes))
        for pair in pairs:
            self.minutes[pair] = [0] * (pair in ticker) + sorted(intervals[pair])
        sources = [(pair, minutes) for pair in pairs for minutes in self.minutes[pair]]
        scanned: list[Source] = []
        for start in range(0, len(sources), self.A_STATEMENT):
            chunk = sources[start : start + self.A_STATEMENT]
            for source, count in zip(chunk, self._counts(chunk), strict=True):
                if count > self.SCAN_RATIO * len(self.times):
                    self.sources[source] = self._sought(*source)
                else:
                    scanned.append(source)
        for start in range(0, len(scanned), self.A_STATEMENT):
            chunk = scanned[start : start + self.A_STATEMENT]
            self.sources.update(zip(chunk, self._scanned(chunk), strict=True))

    #: Sources read in one statement at most (four parameters each).
    A_STATEMENT = 200

    def _source(self, minutes: int, n: str) -> tuple[str, str, str, str, str]:
        """A source's table, time column, condition (on ``:pair{n}``, ``:minutes{n}``), price
        column and the time its price is at."""
        if minutes == 0:
            return "ticker", "taken_at", f"pair = :pair{n}", "last", "taken_at"
        key = f"pair = :pair{n} AND interval = :minutes{n} AND final"
        # a candle's price is its close's
        return "ohlc", "time", key, "close", self.d.plus_minutes("time", "interval")

    def _bound(self, sources: Sequence[Source]) -> tuple[dict[str, Any], list[Any]]:
        """The parameters of each source ``i``: its pair, minutes and range (``a{i}``, ``b{i}``:
        the first and last time, less the interval: a candle's price is at its close)."""
        params: dict[str, Any] = {}
        binds: list[Any] = []
        for i, (pair, minutes) in enumerate(sources):
            step = timedelta(minutes=minutes)
            params |= {f"pair{i}": pair, f"minutes{i}": minutes}
            params |= {f"a{i}": _utc(self.times[0]) - step, f"b{i}": _utc(self.times[-1]) - step}
            binds += [bindparam(f"{c}{i}", type_=UTCDateTime()) for c in "ab"]
        return params, binds

    def _counts(self, sources: Sequence[Source]) -> list[int]:
        """How many prices each source has in range, in one statement."""
        parts = []
        for i, (_, minutes) in enumerate(sources):
            table, when, key, _, _ = self._source(minutes, f"{i}")
            parts.append(
                f"SELECT {i} AS k, count(*) AS n FROM {table} WHERE {key} AND {when} >= :a{i} "
                f"AND {when} <= :b{i}"
            )
        params, binds = self._bound(sources)
        found: dict[int, int] = dict(
            self.conn.execute(text(" UNION ALL ".join(parts)).bindparams(*binds), params).all()
        )
        return [int(found.get(i) or 0) for i in range(len(sources))]

    def _scanned(self, sources: Sequence[Source]) -> list[list[_Point]]:
        """Each source's price at each time, from one scan of its prices in range (from the
        newest one at or before the first time), all in one statement."""
        parts = []
        for i, (_, minutes) in enumerate(sources):
            table, when, key, value, at = self._source(minutes, f"{i}")
            parts.append(
                f"SELECT {i} AS k, {at} AS at, {value} AS price FROM {table} WHERE {key} AND "
                f"{when} <= :b{i} AND {when} >= COALESCE((SELECT max({when}) FROM {table} "
                f"WHERE {key} AND {when} <= :a{i}), :a{i})"
            )
        params, binds = self._bound(sources)
        points: dict[int, list[_Point]] = defaultdict(list)
        query = text(" UNION ALL ".join(parts) + " ORDER BY 1, 2").bindparams(*binds)
        for k, at, price in _fetch(self.conn, query, params):
            points[k].append((at, price))
        out = []
        for i in range(len(sources)):
            whens = [point[0] for point in points[i] if point is not None]
            out.append(
                [
                    points[i][k - 1] if k else None
                    for k in (bisect_right(whens, t) for t in self.times)
                ]
            )
        return out

    def _sought(self, pair: str, minutes: int) -> list[_Point]:
        times, params, binds = self.query
        query = text(
            f"SELECT s.taken_at, {stamp_sql(self.d, ':pair', ':minutes', 's.taken_at')} "
            f"FROM ({times}) s"
        ).bindparams(*binds, bindparam("minutes", type_=Integer()))
        found: dict[Any, str | None] = dict(
            self.conn.execute(query, {**params, "pair": pair, "minutes": minutes}).all()
        )
        width = self.d.width
        out: list[_Point] = []
        for raw in self.times:
            stamp = found.get(raw)
            if stamp is None:
                out.append(None)
            else:  # SQLite's stamp has the stored text; PostgreSQL's, UTC without its zone
                when = _utc(stamp[:width]) if self.d.pg else stamp[:width]
                out.append((when, stamp[width + 1 :]))
        return out

    def newest(self, names: tuple[str, ...]) -> list[Decimal | None]:
        """The newest price of the pairs ``names`` at each time (then the ticker, the shorter
        interval, the pair's name: the view's order), however old."""
        return [None if p is None else self._decimal(p[1]) for p in self._best(names)]

    def fresh(self, names: tuple[str, ...]) -> _Prices:
        """The newest price of ``names`` at each time unless it is older than the age limit,
        and the time of each newest price that was too old."""
        prices: list[Decimal | None] = []
        old: list[Any] = []
        for i, point in enumerate(self._best(names)):
            if point is not None and self.oldest is not None and point[0] < self.oldest[i]:
                prices.append(None)
                old.append(point[0])
            else:
                prices.append(None if point is None else self._decimal(point[1]))
                old.append(None)
        return prices, old

    def _best(self, names: tuple[str, ...]) -> list[_Point]:
        keys = sorted((m, p) for p in names for m in self.minutes.get(p, ()))
        order = [self.sources[(p, m)] for m, p in keys]
        if not order:
            return [None] * len(self.times)
        if len(order) == 1:
            return order[0]
        out: list[_Point] = []
        for points in zip(*order, strict=True):
            best: _Point = None
            for point in points:
                if point is not None and (best is None or point[0] > best[0]):
                    best = point
            out.append(best)
        return out

    def _decimal(self, value: Any) -> Decimal | None:
        """A price as a Decimal (from SQLite's text once each: a price holds for the times
        until the next), or None for one out of bounds."""
        if isinstance(value, Decimal):
            return _number(value)
        if value in self._decimals:
            return self._decimals[value]
        found = self._decimals[value] = _number(value)
        return found

    def xbt(self, plan: _Plan) -> _Prices:
        """XBT's price in the quote at each time (and the time of a price too old)."""
        if self._xbt is None:
            self._xbt = plan.prices(self, plan)
        return self._xbt


class _Plan:
    """An asset's routes, grouped by rank: each group's pairs, sorted (the order ties take)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.groups: list[tuple[int, tuple[str, ...]]] = []
        for rank in sorted({r.rank for r in routes}):
            names = sorted(r.pair for r in routes if r.rank == rank and r.pair is not None)
            self.groups.append((rank, tuple(names)))
        self.pairs = {pair for _, names in self.groups for pair in names}
        self.through_xbt = any(rank % 3 == 2 for rank, _ in self.groups)

    def prices(self, series: _Series, xbt: _Plan) -> _Prices:
        """The asset's price at each time: the first route with one that is recent enough; where
        none is, the time of the newest price that was too old (else None)."""
        out: list[Decimal | None] = [None] * len(series.times)
        stale: list[Any] = [None] * len(series.times)
        for rank, names in self.groups:
            if not names:  # it is the quote
                return [ONE if price is None else price for price in out], stale
            found, old = series.fresh(names)
            if rank % 3 == 2:
                via, via_old = series.xbt(xbt)
                # priced in XBT, but XBT's own price too old: that is the reason
                old = [
                    v if p is not None and x is None else o
                    for p, x, o, v in zip(found, via, old, via_old, strict=True)
                ]
                found = [
                    None if p is None or x is None else EXACT.multiply(p, x)
                    for p, x in zip(found, via, strict=True)
                ]
            for i, price in enumerate(found):
                if out[i] is not None:
                    continue
                if price is not None:
                    out[i] = price
                    stale[i] = None
                elif old[i] is not None and (stale[i] is None or old[i] > stale[i]):
                    stale[i] = old[i]
        return out, stale


def _fetch(conn: Connection, query: Any, params: dict[str, Any]) -> list[Any]:
    """Every row of ``query`` as the driver's plain tuples, the values as it returns them (no
    SQLAlchemy row or type processing: a year of snapshots is 87,600 of them)."""
    result = conn.execute(query, params)
    try:
        return list(result.cursor.fetchall()) if result.cursor is not None else []
    finally:
        result.close()


def _raw(when: datetime, d: Dialect) -> Any:
    """A time as the database returns a stored one (SQLite: its text; PostgreSQL: a datetime)."""
    when = when.astimezone(UTC)
    return when if d.pg else f"{when:%Y-%m-%d %H:%M:%S.%f}+00:00"


def _utc(value: Any) -> datetime:
    """A time as the database returned it (text on SQLite, naive text from a stamp) in UTC."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _where(
    since: datetime | None,
    until: datetime | None,
    accounts: Sequence[str] | None,
    run_ids: Sequence[int] | None,
) -> tuple[str, dict[str, Any]]:
    terms: list[str] = []
    params: dict[str, Any] = {}
    if run_ids is not None:
        terms.append("b.run_id IN :run_ids")
        params["run_ids"] = list(run_ids) or [-1]
    if since is not None:
        terms.append("b.taken_at >= :since")
        params["since"] = since
    if until is not None:
        terms.append("b.taken_at <= :until")
        params["until"] = until
    if accounts is not None:
        terms.append("b.account IN :accounts")
        params["accounts"] = list(accounts)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def _binds(
    since: datetime | None,
    until: datetime | None,
    accounts: Sequence[str] | None,
    run_ids: Sequence[int] | None,
) -> list[Any]:
    out = [] if since is None else [bindparam("since", type_=UTCDateTime())]
    if until is not None:
        out.append(bindparam("until", type_=UTCDateTime()))
    if accounts is not None:
        out.append(bindparam("accounts", expanding=True))
    if run_ids is not None:
        out.append(bindparam("run_ids", expanding=True))
    return out
