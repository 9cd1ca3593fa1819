"""What each balance snapshot was worth in one quote currency, exactly: the rules, the SQL view
``portfolio_value`` that applies them, and the same rules in Python for the dashboard.

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
   newest price wins (then the ticker, then the shorter interval, then the pair's name).
4. The snapshot's value is the exact sum of amount x price; an asset without a price at T (and
   an amount other than zero) is **named** in ``unpriced``, never counted as 0.

An asset quoted only the other way round (``USD`` in a ``EUR`` valuation, through ``EURUSD``) is
unpriced: valuing it would divide, which is not exact.

**Exact on both databases.** PostgreSQL multiplies and sums ``numeric``. SQLite has no decimal
type (its arithmetic on decimal text goes through floats), so its view multiplies and sums with
the decimal extension's ``decimal_mul`` and ``decimal_sum``: the ``sqlite3`` shell has them
built in (3.35 and later), and collector adds them to its own connections
(:func:`decimal_functions`, which a Python program can call on its ``sqlite3`` connection).

The view values in the quote the service was started with (``collector run`` keeps it in
``collector_state``, row ``valuation_quote``; ``USD`` without one). The dashboard values in its
own job file's quote, with :class:`Valuation`; the tests hold the view, the page and a value
computed from the raw rows to each other.
"""

from __future__ import annotations

import decimal
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, inspect, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import defaults
from .datasets.reference import assets, pairs
from .methods import OHLC_INTERVALS
from .numbers import readable
from .schema import UTCDateTime, state

#: The ``collector_state`` row holding the quote the view values in.
QUOTE_STATE = "valuation_quote"
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

    def price(self, stamp: str) -> str:
        """The price of a stamp, exact: numeric again on PostgreSQL, decimal text on SQLite."""
        if self.pg:
            return f"CAST(substr({stamp}, 28) AS numeric)"
        return f"substr({stamp}, 34)"

    def when(self, stamp: str) -> str:
        return f"substr({stamp}, 1, {self.width})"

    @property
    def fence(self) -> str:
        """Ends a subquery that must stay one: merged into the query around it, each use of
        its columns would run their subqueries again, and so would a condition pushed into it."""
        return "OFFSET 0" if self.pg else "LIMIT -1 OFFSET 0"

    def mul(self, a: str, b: str) -> str:
        return f"({a}) * ({b})" if self.pg else f"decimal_mul({a}, {b})"

    @property
    def one(self) -> str:
        return "1" if self.pg else "'1'"

    def total(self, value: str) -> str:
        return f"COALESCE(sum({value}), 0)" if self.pg else f"COALESCE(decimal_sum({value}), '0')"

    def nonzero(self, amount: str) -> str:
        # SQLite compares decimal text with 0 as text; as a number, any amount other than zero
        # is a float other than zero.
        return f"{amount} <> 0" if self.pg else f"CAST({amount} AS REAL) <> 0"

    def names(self, value: str) -> str:
        """The comma list of ``value``'s non-NULL values, in order."""
        if self.pg:
            return f"string_agg({value}, ',' ORDER BY {value})"
        return f"group_concat({value}, ',')"  # the rows come in asset order: the key's


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


def _indent(text_: str, spaces: int) -> str:
    return text_.replace("\n", "\n" + " " * spaces)


def view_sql(dialect: str) -> str:
    """``CREATE VIEW portfolio_value``: one row per balance snapshot (``run_id``, ``job``,
    ``account``, ``taken_at``), with ``quote``, ``value`` and ``unpriced``.

    Its subqueries that must be computed once a row end with :attr:`Dialect.fence`, and
    ``priced`` is ``DISTINCT`` (its rows are distinct anyway): merged into the query around
    them, every use of a price would compute it again. ``priced`` stays open to a condition
    on its columns, so ``WHERE taken_at >= ...`` or ``WHERE run_id = ...`` values only those
    snapshots."""
    d = Dialect(dialect)
    intervals = " UNION ALL ".join(f"SELECT {m}" for m in OHLC_INTERVALS)
    xbt = " UNION ALL ".join(f"SELECT '{code}'" for code in XBT)
    stamp = stamp_sql(d, "s.pair", "s.minutes", "b.taken_at")
    suffixes = ", ".join(f"'{s}'" for s in SUFFIXES)
    return f"""CREATE VIEW {VIEW} AS
WITH
-- The quote (collector run keeps the job file's valuation.quote) and its codes: USD is ZUSD.
quote(name) AS (
  SELECT COALESCE((SELECT value FROM collector_state WHERE name = '{QUOTE_STATE}'), 'USD')),
quote_codes(code) AS (
  SELECT name FROM quote UNION SELECT a.asset FROM assets a JOIN quote q ON a.altname = q.name),
xbt(code) AS ({xbt}),
intervals(minutes) AS ({intervals}),
held(asset) AS (SELECT DISTINCT asset FROM balances),
-- DOT.S, DOT28.S, XBT.M, ETH.F, USD.HOLD: the name of the asset each is a variant of.
variants(asset, name) AS (
  SELECT asset, CASE
    WHEN substr(asset, length(asset) - 4) = '.HOLD' THEN substr(asset, 1, length(asset) - 5)
    WHEN substr(asset, length(asset) - 1) IN ({suffixes})
      THEN rtrim(substr(asset, 1, length(asset) - 2), '0123456789') END
  FROM held),
-- What an asset is valued as: itself (step 0), then what it is a variant of (step 1).
candidates(asset, step, code) AS (
  SELECT asset, 0, asset FROM held
  UNION ALL
  SELECT v.asset, 1, COALESCE(
    (SELECT a.asset FROM assets a WHERE a.asset = v.name),
    (SELECT min(a.asset) FROM assets a WHERE a.altname = v.name),
    v.name)
  FROM variants v WHERE v.name <> ''),
-- Its routes in order: it is the quote (rank 0, 3), a direct pair (1, 4), a pair in XBT (2, 5).
routes(asset, rank, pair) AS (
  SELECT c.asset, 3 * c.step, CAST(NULL AS VARCHAR(32)) FROM candidates c
  WHERE c.code IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 1, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 2, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM xbt)
    AND NOT EXISTS (SELECT 1 FROM quote_codes q WHERE q.code IN (SELECT code FROM xbt))),
xbt_pairs(pair) AS (
  SELECT p.pair FROM pairs p
  WHERE p.base IN (SELECT code FROM xbt) AND p.quote IN (SELECT code FROM quote_codes)),
wanted(pair) AS (
  SELECT pair FROM routes WHERE pair IS NOT NULL UNION SELECT pair FROM xbt_pairs),
-- Each wanted pair's sources: its ticker (0), the OHLC intervals it has final candles of.
sources(pair, minutes) AS (
  SELECT w.pair, 0 FROM wanted w WHERE EXISTS (SELECT 1 FROM ticker t WHERE t.pair = w.pair)
  UNION ALL
  SELECT w.pair, i.minutes FROM wanted w CROSS JOIN intervals i
  WHERE EXISTS (
    SELECT 1 FROM ohlc o WHERE o.pair = w.pair AND o.interval = i.minutes AND o.final)),
-- Each balance's price at its snapshot's time: the first route with one, the newest price
-- within a route (a stamp is the price's time, then the price, as text).
priced AS (
  SELECT DISTINCT b.run_id, b.job, b.account, b.taken_at, b.asset, b.amount, (
    SELECT CASE WHEN y.pair IS NULL THEN {d.one}
      WHEN y.xbt IS NULL THEN {d.price("y.stamp")}
      ELSE {d.mul(d.price("y.stamp"), "y.xbt")} END
    FROM (
      SELECT r.rank, r.pair, s.minutes,
        {_indent(stamp, 8)} AS stamp,
        CASE WHEN r.rank IN (2, 5) THEN (
          SELECT {d.price("x.stamp")} FROM (
            SELECT s.pair, s.minutes,
              {_indent(stamp, 14)} AS stamp
            FROM xbt_pairs xp JOIN sources s ON s.pair = xp.pair {d.fence}) x
          WHERE x.stamp IS NOT NULL
          ORDER BY {d.when("x.stamp")} DESC, x.minutes, x.pair LIMIT 1) END AS xbt
      FROM routes r LEFT JOIN sources s ON s.pair = r.pair
      WHERE r.asset = b.asset {d.fence}) y
    WHERE y.pair IS NULL
      OR (y.stamp IS NOT NULL AND (y.rank NOT IN (2, 5) OR y.xbt IS NOT NULL))
    ORDER BY y.rank, {d.when("y.stamp")} DESC, y.minutes, y.pair LIMIT 1) AS price
  FROM balances b)
SELECT p.run_id, p.job, p.account, p.taken_at, q.name AS quote,
  {d.total(d.mul("p.amount", "p.price"))} AS value,
  {d.names(f"CASE WHEN p.price IS NULL AND {d.nonzero('p.amount')} THEN p.asset END")}
    AS unpriced
FROM priced p CROSS JOIN quote q
GROUP BY p.run_id, p.job, p.account, p.taken_at, q.name"""


# -- SQLite's decimal functions ----------------------------------------------------------------


def _number(value: Any) -> Decimal | None:
    """A stored amount or price, or None for one out of the bounds every number from outside
    keeps now (:mod:`collector.numbers`): an older collector stored ``1E+999999``, whose products
    and sums no exact context holds. Such a value counts as unpriced, never as an error."""
    return readable(value)


def _text(value: Decimal) -> str:
    """Plain notation without trailing zeros, as the decimal extension prints."""
    if value == 0:
        return "0"
    out = format(value, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def _mul(a: Any, b: Any) -> str | None:
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return None
    return _text(EXACT.multiply(x, y))


class _Sum:
    """``decimal_sum``: NULLs are skipped; no rows at all, NULL."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        self.total = self.total or Decimal(0)
        number = None if value is None else _number(value)
        if number is not None:
            self.total = EXACT.add(self.total, number)

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


def decimal_functions(connection: Any) -> None:
    """Add ``decimal_mul`` and ``decimal_sum`` to a ``sqlite3`` connection, exact as the SQLite
    decimal extension's (the ``sqlite3`` shell's): the view needs them."""
    connection.create_function("decimal_mul", 2, _mul, deterministic=True)
    connection.create_aggregate("decimal_sum", 1, _Sum)


# -- the quote the view uses ----------------------------------------------------------------------


def remember_quote(conn: Connection, quote: str) -> None:
    """Keep ``quote`` as the view's (``collector_state``), unless it is already."""
    found = conn.execute(select(state.c.value).where(state.c.name == QUOTE_STATE)).scalar()
    if found == quote:
        return
    if found is not None:
        conn.execute(update(state).where(state.c.name == QUOTE_STATE).values(value=quote))
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(state).values(name=QUOTE_STATE, value=quote).on_conflict_do_nothing())


# -- the same in Python, for the dashboard ------------------------------------------------------


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


#: One pair's source: ``(pair, minutes)``, 0 minutes for its ticker.
Source = tuple[str, int]


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
        if not times:
            return []
        d = Dialect(conn.dialect.name)
        raw = [_raw(t, d) for t in times]
        names = [f"t{i}" for i in range(len(times))]
        values = ", ".join(f"(:{n})" for n in names)
        query = f"SELECT v.column1 AS taken_at FROM (VALUES {values}) v"
        binds = [bindparam(n, type_=UTCDateTime()) for n in names]
        series = _Series(conn, raw, (query, dict(zip(names, times, strict=True)), binds))
        series.add(pair)
        return series.newest((pair,))

    def __init__(self, quote: str = defaults.VALUATION_QUOTE) -> None:
        self.quote = quote

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
    ) -> list[Value]:
        """Each snapshot taken at or after ``since`` (None: all) of ``accounts`` (None: all),
        oldest first."""
        where, params = _where(since, accounts)
        rows = _fetch(
            conn,
            text(
                "SELECT run_id, job, account, taken_at, asset, amount FROM balances b"
                f"{where} ORDER BY run_id, asset"  # the key's order: no sort
            ).bindparams(*_binds(since, accounts)),
            params,
        )
        if not rows:
            return []
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
        series = _Series(conn, raw_times, (times, params, _binds(since, accounts)))
        for pair in sorted(wanted):
            series.add(pair)
        xbt = _Plan([Route(1, pair) for pair in routes.xbt_pairs])
        prices = {asset: plan.prices(series, xbt) for asset, plan in plans.items()}
        out: list[Value] = []
        start = 0
        for end in range(1, len(rows) + 1):
            if end < len(rows) and rows[end][0] == rows[start][0]:
                continue
            run_id, job, account, taken_at = rows[start][:4]
            i = index[taken_at]
            total = Decimal(0)
            unpriced = []
            for row in rows[start:end]:
                asset, amount = row[4], _number(row[5])
                price = prices[asset][i]
                if amount is None:  # out of bounds: shown as not valued, as a missing price
                    unpriced.append(asset)
                    continue
                if price is None:
                    if amount != 0:
                        unpriced.append(asset)
                    continue
                total = EXACT.add(total, EXACT.multiply(amount, price))
            out.append(
                Value(
                    run_id, job, account, _utc(taken_at), self.quote, total, tuple(sorted(unpriced))
                )
            )
            start = end
        return sorted(out, key=lambda v: (v.taken_at, v.run_id))


#: A source's price at a snapshot time: (when, as the database returns times; the price, as text
#: or Decimal).
_Point = tuple[Any, Any] | None


class _Series:
    """Each source's price at every snapshot time, by the time's index."""

    #: A source with more prices in range than this many a time is sought, not scanned.
    SCAN_RATIO = 4

    def __init__(
        self, conn: Connection, times: list[Any], query: tuple[str, dict[str, Any], list[Any]]
    ) -> None:
        """``times``: ascending, as the database returns them; ``query``: SQL selecting them as
        ``taken_at``, its parameters and their binds."""
        self.conn, self.times, self.query = conn, times, query
        self.d = Dialect(conn.dialect.name)
        #: (pair, minutes) -> prices by time index
        self.sources: dict[Source, list[_Point]] = {}
        #: pair -> its sources' minutes, the ticker (0) first, then the shorter interval
        self.minutes: dict[str, list[int]] = {}
        self._xbt: list[Decimal | None] | None = None
        self._decimals: dict[str, Decimal | None] = {}

    def add(self, pair: str) -> None:
        found = []
        if self._one("SELECT 1 FROM ticker WHERE pair = :p LIMIT 1", p=pair):
            found.append(0)
        # The OHLC intervals it has, one index seek each (a loose index scan).
        intervals = self.conn.execute(
            text(
                "WITH RECURSIVE i(m) AS (SELECT min(interval) FROM ohlc WHERE pair = :p "
                "UNION ALL SELECT (SELECT min(interval) FROM ohlc WHERE pair = :p "
                "AND interval > i.m) FROM i WHERE i.m IS NOT NULL) "
                "SELECT m FROM i WHERE m IS NOT NULL"
            ),
            {"p": pair},
        ).scalars()
        found += sorted(int(m) for m in intervals)
        self.minutes[pair] = found
        for minutes in found:
            self.sources[(pair, minutes)] = self._load(pair, minutes)

    def _one(self, sql: str, **params: Any) -> bool:
        return self.conn.execute(text(sql), params).first() is not None

    def _load(self, pair: str, minutes: int) -> list[_Point]:
        step = timedelta(minutes=minutes)
        bounds = {"a": _utc(self.times[0]) - step, "b": _utc(self.times[-1]) - step}
        if minutes == 0:
            table, when, value, key = "ticker", "taken_at", "last", "pair = :pair"
            at = when
        else:
            table, when, value = "ohlc", "time", "close"
            key = "pair = :pair AND interval = :minutes AND final"
            at = self.d.plus_minutes(when, "interval")  # a candle's price is its close's
        binds = (bindparam("a", type_=UTCDateTime()), bindparam("b", type_=UTCDateTime()))
        params = {"pair": pair, "minutes": minutes, **bounds}
        count = self.conn.execute(
            text(
                f"SELECT count(*) FROM {table} WHERE {key} AND {when} >= :a AND {when} <= :b"
            ).bindparams(*binds),
            params,
        ).scalar()
        if (count or 0) > self.SCAN_RATIO * len(self.times):
            return self._sought(pair, minutes)
        # One scan of the prices in range, from the newest one at or before the first time.
        points: list[_Point] = [
            (at_, price)
            for at_, price in _fetch(
                self.conn,
                text(
                    f"SELECT {at}, {value} FROM {table} WHERE {key} AND {when} <= :b AND "
                    f"{when} >= COALESCE((SELECT max({when}) FROM {table} WHERE {key} AND "
                    f"{when} <= :a), :a) ORDER BY {when}"
                ).bindparams(*binds),
                params,
            )
        ]
        whens = [point[0] for point in points if point is not None]
        return [points[k - 1] if k else None for k in (bisect_right(whens, t) for t in self.times)]

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
        interval, the pair's name: the view's order)."""
        keys = sorted((m, p) for p in names for m in self.minutes.get(p, ()))
        order = [self.sources[(p, m)] for m, p in keys]
        if not order:
            return [None] * len(self.times)
        if len(order) == 1:
            return [None if point is None else self._decimal(point[1]) for point in order[0]]
        out: list[Decimal | None] = []
        for points in zip(*order, strict=True):
            best: _Point = None
            for point in points:
                if point is not None and (best is None or point[0] > best[0]):
                    best = point
            out.append(None if best is None else self._decimal(best[1]))
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

    def xbt(self, plan: _Plan) -> list[Decimal | None]:
        """XBT's price in the quote at each time."""
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

    def prices(self, series: _Series, xbt: _Plan) -> list[Decimal | None]:
        """The asset's price at each time: the first route with one."""
        out: list[Decimal | None] = [None] * len(series.times)
        for rank, names in self.groups:
            if not names:  # it is the quote
                return [ONE if price is None else price for price in out]
            found = series.newest(names)
            if rank % 3 == 2:
                via = series.xbt(xbt)
                found = [
                    None if p is None or x is None else EXACT.multiply(p, x)
                    for p, x in zip(found, via, strict=True)
                ]
            out = [p if p is not None else f for p, f in zip(out, found, strict=True)]
        return out


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


def _where(since: datetime | None, accounts: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    terms: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        terms.append("b.taken_at >= :since")
        params["since"] = since
    if accounts is not None:
        terms.append("b.account IN :accounts")
        params["accounts"] = list(accounts)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def _binds(since: datetime | None, accounts: Sequence[str] | None) -> list[Any]:
    out = [] if since is None else [bindparam("since", type_=UTCDateTime())]
    if accounts is not None:
        out.append(bindparam("accounts", expanding=True))
    return out
