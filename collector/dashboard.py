"""The dashboard: one read-only page from the database alone, for a browser.

``collector dashboard jobs.yaml`` serves it (for ``run --once`` from cron, where no service
runs); a running service serves the same page at ``/`` of its metrics listener. On it: every
job's state (``collector status``'s report, the same rule as ``/healthz``), each account's
portfolio value over time with the latest value as text (:mod:`collector.valuation`, in the job
file's ``valuation.quote``), a price chart per collected pair, the ledger's verification and the
gaps. The range is a query parameter (``?range=day|week|year|all``) with a link each.
Each stream of the job file has a line below the jobs, its state by the same rule.

Nothing is fetched from anywhere: the charts are SVG drawn here (:mod:`collector.charts`), the
style is inline, there is no script, and the ``Content-Security-Policy`` says so to the browser.
Everything that comes from the database is HTML-escaped; nothing on it is secret (the database
URL without its password; no key, no parameter, no nonce). GET only.

Fast on a year of hourly snapshots (``bench/bench_dashboard.py``): the values are read from
``portfolio_value``, which the store keeps with the same rules, when the job file values as the
table does (``valuation.quote``, ``max_price_age``); the snapshots the table lacks, or all of
them when the settings differ, are valued here (:class:`~collector.valuation.Valuation`: one
read of the balances and a query per price source), the page the same either way. A series is
drawn with at most four points per pixel column, a pair's price sampled at each pixel column's
end, the pairs priced together (a few statements for all of them). At most
``PAIRS_DRAWN`` price charts are drawn, the pairs the job file names and those that value the
balances first; the other pairs collected are listed by name (a Ticker of every pair, 3,000 of
them, would take seconds to draw, holding one of the listener's slots all along).

Why one module of this length: the page's sections read one consistent view of the database
(one status collection, one valuation) and are rendered into one escaped document; the drawing
of lines is :mod:`.charts`, the serving :mod:`.listener`.
"""

from __future__ import annotations

import decimal
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from . import charts
from .datasets.balances import table as balances
from .datasets.gaps import table as gaps
from .datasets.market import ohlc, ticker
from .datasets.reference import assets, pairs
from .health import utcnow
from .jobfile import Config
from .listener import Answer
from .pairs import named as matching
from .pairs import split
from .schema import UTCDateTime, runs
from .status import collect, pairs_in
from .store import Store
from .streamstatus import connection_text
from .valuation import EXACT, Valuation, Value, stored_valuation
from .valuation import table as portfolio_value

logger = logging.getLogger(__name__)

#: The ranges a page shows (None: everything), as ``?range=``.
RANGES: dict[str, timedelta | None] = {
    "day": timedelta(days=1),
    "week": timedelta(days=7),
    "year": timedelta(days=365),
    "all": None,
}
DEFAULT_RANGE = "week"
#: A pair's price is sampled this many times across the range (every other pixel column).
PRICE_SAMPLES = charts.WIDTH // 2
#: Price charts drawn at most (each a query per sample), and other pairs named at most below them.
PAIRS_DRAWN = 24
PAIRS_LISTED = 200
#: Jobs a page lists (``?jobs=2`` the next ones, in the job file's order): 5,000 jobs' rows took
#: 2.4 MB and, each job's rows counted, seconds. Every job's state still decides the health.
JOBS_SHOWN = 100
#: Snapshots valued here in one go when ``portfolio_value`` lacks them (SQLite's parameters stop
#: at 32,766).
RUNS_VALUED = 5_000
#: Stale jobs named in the header at most (the jobs' rows say the rest).
PROBLEMS_SHOWN = 20
#: Gaps listed on the page (the newest), and the length an error or a reason is cut to.
GAPS_SHOWN = 20
TEXT_MAX = 300
#: The most decimals a value is shown with, whatever the quote's display_decimals says.
MAX_DECIMALS = 10
#: The browser may load nothing but the page itself: no script, no image, no font, no frame.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Worth(NamedTuple):
    """A snapshot's value as the page shows it: a row of ``portfolio_value``, or a
    :class:`~collector.valuation.Value` computed here (the same rules, the same text). A tuple:
    a year is 8,760 of them, a frozen dataclass five times slower to make."""

    run_id: int
    taken_at: datetime
    value: Decimal
    #: the assets with an amount and no price, sorted; and why each has none (None: all priced)
    unpriced: tuple[str, ...]
    reasons: str | None

    @property
    def complete(self) -> bool:
        return not self.unpriced

    @classmethod
    def of(cls, value: Value) -> Worth:
        return cls(value.run_id, value.taken_at, value.value, value.unpriced, value.reasons)


@dataclass(frozen=True)
class Account:
    """One account's values in range, and its latest value (possibly before the range)."""

    name: str
    values: list[Worth]
    latest: Worth | None


@dataclass(frozen=True)
class Pair:
    """A collected pair: its names, its price at each sample time, its newest price."""

    pair: str
    symbol: str
    quote: str
    samples: list[tuple[datetime, Decimal]]
    latest: Decimal | None


class Dashboard:
    """The page of one job file's database. Constructing one reads nothing.

    :param store: the database (None: there is none yet, as ``status`` says)
    :param spooled: runs waiting in the spool (None: no spool)
    """

    def __init__(
        self,
        config: Config,
        store: Store | None,
        *,
        spooled: Callable[[], int | None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.store = store
        self.spooled = spooled
        self.clock = clock

    def answer(self, query: dict[str, str]) -> Answer:
        """The route: ``?range=`` one of :data:`RANGES`, ``?jobs=`` a page of the jobs."""
        name = query.get("range", DEFAULT_RANGE)
        if name not in RANGES:
            body = f"unknown range {name!r}: use {', '.join(RANGES)}\n"
            return Answer(400, body.encode(), "text/plain; charset=utf-8", HEADERS)
        asked = query.get("jobs", "1")
        if not (asked.isascii() and asked.isdigit() and len(asked) <= 9 and int(asked) >= 1):
            body = f"jobs={asked[:TEXT_MAX]!r}: a page number, 1 or more\n"
            return Answer(400, body.encode(), "text/plain; charset=utf-8", HEADERS)
        try:
            page = self.render(name, int(asked))
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            shown = reason[0][:TEXT_MAX] if reason else type(exc).__name__
            logger.warning("dashboard: cannot read the database (%s)", shown)
            body = _document(
                "collector",
                f"<main><p class='bad'>cannot read the database "
                f"{escape(self.config.database_for_display())}: {escape(shown)}</p></main>",
            )
            return Answer(503, body.encode(), "text/html; charset=utf-8", HEADERS)
        return Answer(200, page.encode(), "text/html; charset=utf-8", HEADERS)

    def render(self, range_name: str = DEFAULT_RANGE, jobs_page: int = 1) -> str:
        """The page for the range ``range_name``, as HTML, with the ``jobs_page``-th
        :data:`JOBS_SHOWN` jobs listed (the last page when there are fewer)."""
        now = self.clock().astimezone(UTC)
        span = RANGES[range_name]
        since = None if span is None else now - span
        pages = max(1, math.ceil(len(self.config.jobs) / JOBS_SHOWN))
        jobs_page = min(jobs_page, pages)
        shown = {
            j.name for j in self.config.jobs[(jobs_page - 1) * JOBS_SHOWN : jobs_page * JOBS_SHOWN]
        }
        report = collect(
            self.config, self.store, now, self.spooled(), detailed=lambda j: j.name in shown
        )
        accounts: list[Account] = []
        prices: list[Pair] = []
        undrawn: list[str] = []
        gap_rows: list[Any] = []
        gap_count = 0
        errors: dict[str, str] = {}
        quote_decimals = 2
        if self.store is not None:
            with self.store.engine.connect() as conn:
                names = set(inspect(conn).get_table_names())
                valuation = Valuation(
                    self.config.valuation_quote, self.config.valuation_max_price_age
                )
                accounts = _accounts(conn, valuation, since)
                quote_decimals = _decimals(conn, self.config.valuation_quote, names)
                drawn, undrawn = _drawn_pairs(conn, self.config, valuation, names)
                prices = _prices(conn, valuation, since, now, names, drawn)
                gap_count, gap_rows = _gaps(conn)
                failing = [
                    j["name"]
                    for j in report["jobs"]
                    if j["name"] in shown and j["last_status"] not in (None, "ok")
                ]
                errors = _errors(conn, failing)
        start = since or _earliest(accounts, prices, now)
        parts = [
            _header(self.config, report, range_name, now),
            "<main>",
            _portfolio(accounts, self.config.valuation_quote, quote_decimals, start, now),
            _jobs(report, errors, shown, (jobs_page, pages), range_name),
            _streams(report),
            _prices_section(prices, start, now, undrawn),
            _ledgers(report),
            _gaps_section(gap_count, gap_rows),
            "</main>",
            "<footer>Read-only, from the database alone; times in UTC. "
            "<code>collector status</code> says the same in text.</footer>",
        ]
        title = f"collector: {os.path.basename(self.config.path)}"
        return _document(title, "\n".join(parts))


# -- what the page reads ---------------------------------------------------------------------


def _accounts(conn: Any, valuation: Valuation, since: datetime | None) -> list[Account]:
    latest = dict(
        conn.execute(
            select(balances.c.account, func.max(balances.c.taken_at)).group_by(balances.c.account)
        ).all()
    )
    stored = inspect(conn).has_table(portfolio_value.name)
    if stored:
        # An emptied account's snapshots have no balances: the table's rows are their marks.
        for name, when in conn.execute(
            select(portfolio_value.c.account, func.max(portfolio_value.c.taken_at)).group_by(
                portfolio_value.c.account
            )
        ):
            latest[name] = max(when, latest.get(name, when))
    if stored:
        kept = stored_valuation(conn)
        stored = (kept.quote, kept.max_price_age) == (valuation.quote, valuation.max_price_age)
    values = _worth(conn, valuation, stored, since)
    by_account: dict[str, list[Worth]] = {}
    for account, worth in values:
        by_account.setdefault(account, []).append(worth)
    out = []
    for name in sorted(latest):
        mine = by_account.get(name, [])
        newest = mine[-1] if mine else None
        if newest is None or newest.taken_at < latest[name]:
            found = _worth(conn, valuation, stored, latest[name], [name])
            newest = found[-1][1] if found else newest
        out.append(Account(name, mine, newest))
    return out


def _worth(
    conn: Any,
    valuation: Valuation,
    stored: bool,
    since: datetime | None,
    accounts: Sequence[str] | None = None,
) -> list[tuple[str, Worth]]:
    """Each snapshot's account and value taken at or after ``since`` (of ``accounts``; None:
    all), oldest first. ``stored``: read from ``portfolio_value`` (the store keeps it with the
    same rules, and the table's settings are the job file's), valuing here only what the table
    lacks (a batch whose values failed, rows written by another tool) or holds out of bounds;
    else every snapshot valued here (a year: 0.6 s where the table's rows are 10 ms)."""
    if not stored:
        return [(v.account, Worth.of(v)) for v in valuation.values(conn, since, accounts)]
    where, params, binds = "", dict[str, Any](), []
    if since is not None:
        where += " AND {t}.taken_at >= :since"
        params["since"] = since
        binds.append(bindparam("since", type_=UTCDateTime()))
    if accounts is not None:
        where += " AND {t}.account IN :accounts"
        params["accounts"] = list(accounts)
        binds.append(bindparam("accounts", expanding=True))
    result = conn.execute(
        text(
            "SELECT p.run_id, p.account, p.taken_at, p.value, p.unpriced, p.why_unpriced "
            "FROM portfolio_value p WHERE 1 = 1" + where.format(t="p") + " ORDER BY p.taken_at, "
            "p.run_id"
        ).bindparams(*binds),
        params,
    )
    try:  # the driver's plain tuples: a year is 8,760 rows
        rows = result.cursor.fetchall() if result.cursor is not None else []
    finally:
        result.close()
    # The snapshots in range the table lacks, mostly none: on SQLite an EXCEPT (its anti-join
    # sought a row per balance, 30 ms of a year), on PostgreSQL a hashed anti-join (its EXCEPT
    # hashed every balance: twice as long).
    lacking = (
        "SELECT DISTINCT b.run_id FROM balances b WHERE NOT EXISTS (SELECT 1 FROM "
        "portfolio_value p WHERE p.run_id = b.run_id)" + where.format(t="b")
        if conn.dialect.name == "postgresql"
        else "SELECT b.run_id FROM balances b WHERE 1 = 1" + where.format(t="b") + " EXCEPT "
        "SELECT p.run_id FROM portfolio_value p"
    )
    missing = sorted(conn.execute(text(lacking).bindparams(*binds), params).scalars())
    out = []
    for run_id, account, taken_at, value, unpriced, why in rows:
        number = _stored_number(value)
        if number is None:
            missing.append(run_id)
            continue
        names = tuple(unpriced.split(",")) if unpriced else ()
        out.append((account, Worth(run_id, _utc(taken_at), number, names, why)))
    if not missing:
        return out
    for start in range(0, len(missing), RUNS_VALUED):
        chunk = missing[start : start + RUNS_VALUED]
        out += [(v.account, Worth.of(v)) for v in valuation.values(conn, run_ids=chunk)]
    return sorted(out, key=lambda found: (found[1].taken_at, found[1].run_id))


def _stored_number(value: Any) -> Decimal | None:
    """A stored value as the valuation could have made it (finite, within its exact context's
    digits), or None: valued again here rather than shown (``1E+999999`` would be a million
    digits on the page)."""
    if isinstance(value, Decimal):  # PostgreSQL's numeric
        return value if value.is_finite() and len(value.as_tuple().digits) <= EXACT.prec else None
    if not isinstance(value, str) or len(value) > EXACT.prec + 2:  # SQLite's text: its digits
        return None
    try:
        number = Decimal(value)
    except decimal.InvalidOperation:
        return None
    return number if number.is_finite() else None


def _utc(value: Any) -> datetime:
    """A time as a plain statement returns it (SQLite: the stored text) in UTC."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _decimals(conn: Any, quote: str, tables: set[str]) -> int:
    """How many decimals Kraken shows of the quote (2 for USD, 5 for XBT); 2 if unknown."""
    if "assets" not in tables:
        return 2
    found = conn.execute(
        select(assets.c.display_decimals)
        .where((assets.c.altname == quote) | (assets.c.asset == quote))
        .limit(1)
    ).scalar()
    return min(max(int(found), 0), MAX_DECIMALS) if found is not None else 2


def _drawn_pairs(
    conn: Any, config: Config, valuation: Valuation, tables: set[str]
) -> tuple[list[str], list[str]]:
    """The collected pairs to draw (at most :data:`PAIRS_DRAWN`: those the job file names, then
    those that price an asset held, then the others by name), and the others."""
    collected = sorted(set(pairs_in(conn, ticker)) | set(pairs_in(conn, ohlc)))
    if len(collected) <= PAIRS_DRAWN:
        return collected, []
    asked = [
        name
        for job in config.jobs
        if job.method in ("Ticker", "OHLC") and job.params.get("pair")
        for name in split(job.params["pair"])
    ]
    named = matching(asked, collected)
    valuing: set[str] = set()
    if "pairs" in tables:
        routes = valuation.routes(conn)
        # The assets held, one seek each by (asset, taken_at): DISTINCT read every balance.
        held = conn.execute(
            text(
                "WITH RECURSIVE seen(asset) AS (SELECT min(asset) FROM balances UNION ALL "
                "SELECT (SELECT min(asset) FROM balances WHERE asset > seen.asset) FROM seen "
                "WHERE seen.asset IS NOT NULL) SELECT asset FROM seen WHERE asset IS NOT NULL"
            )
        ).scalars()
        plans = [routes.of(asset) for asset in held]
        valuing = {r.pair for plan in plans for r in plan if r.pair is not None}
        if any(r.through_xbt for plan in plans for r in plan):
            valuing.update(routes.xbt_pairs)
    order = sorted(collected, key=lambda p: (p not in named, p not in valuing, p))
    drawn = set(order[:PAIRS_DRAWN])
    return [p for p in collected if p in drawn], [p for p in collected if p not in drawn]


def _prices(
    conn: Any,
    valuation: Valuation,
    since: datetime | None,
    now: datetime,
    tables: set[str],
    collected: Sequence[str],
) -> list[Pair]:
    """The pairs ``collected`` (with a ticker or a final candle): each one's price sampled
    across the range."""
    names: dict[str, tuple[str, str]] = {}
    if "pairs" in tables and "assets" in tables:
        quote_name = select(assets.c.altname).where(assets.c.asset == pairs.c.quote)
        rows = conn.execute(
            select(pairs.c.pair, pairs.c.wsname, quote_name.scalar_subquery().label("quote")).where(
                pairs.c.pair.in_(collected)
            )
        ).all()
        names = {pair: (wsname or pair, quote or "") for pair, wsname, quote in rows}
    # The pairs sampled at the same times priced together (a range's: all of them; ``all``:
    # those whose first price is the same).
    starts: dict[datetime, list[str]] = {}
    for pair in collected:
        starts.setdefault(since or _first_price(conn, pair) or now, []).append(pair)
    found: dict[str, tuple[list[datetime], list[Any]]] = {}
    for start, names_ in starts.items():
        step = (now - start) / PRICE_SAMPLES
        times = [start + step * i for i in range(PRICE_SAMPLES + 1)]
        for pair, prices in valuation.prices_of(conn, names_, times).items():
            found[pair] = (times, prices)
    out = []
    for pair in collected:
        times, prices = found[pair]
        samples = [(t, p) for t, p in zip(times, prices, strict=True) if p is not None]
        latest = samples[-1][1] if samples else None
        symbol, quote = names.get(pair, (pair, ""))
        out.append(Pair(pair, symbol, quote, samples, latest))
    return sorted(out, key=lambda p: (p.symbol, p.pair))  # as people read them: ETH/USD, XBT/USD


def _first_price(conn: Any, pair: str) -> datetime | None:
    first = [
        conn.execute(select(func.min(ticker.c.taken_at)).where(ticker.c.pair == pair)).scalar(),
        conn.execute(select(func.min(ohlc.c.time)).where(ohlc.c.pair == pair)).scalar(),
    ]
    found = [t for t in first if t is not None]
    return min(found) if found else None


def _gaps(conn: Any) -> tuple[int, list[Any]]:
    count = conn.execute(select(func.count()).select_from(gaps)).scalar() or 0
    rows = conn.execute(
        select(gaps.c.job, gaps.c.dataset, gaps.c.pair, gaps.c.start, gaps.c.end, gaps.c.reason)
        .order_by(gaps.c.start.desc())
        .limit(GAPS_SHOWN)
    ).all()
    return count, rows


def _errors(conn: Any, jobs: Sequence[str]) -> dict[str, str]:
    """The last failure's error of each of ``jobs``."""
    out = {}
    for job in jobs:
        error = conn.execute(
            select(runs.c.error)
            .where(runs.c.job == job, runs.c.status != "ok")
            .order_by(runs.c.started_at.desc())
            .limit(1)
        ).scalar()
        if error:
            out[job] = error[:TEXT_MAX]
    return out


def _earliest(accounts: Sequence[Account], prices: Sequence[Pair], now: datetime) -> datetime:
    """Where the ``all`` range starts: the first snapshot or price shown."""
    firsts = [a.values[0].taken_at for a in accounts if a.values]
    firsts += [p.samples[0][0] for p in prices if p.samples]
    return min(firsts, default=now - timedelta(days=1))


# -- the page --------------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light dark;--fg:#1d232a;--muted:#5d6873;--line:#d8dde3;--card:#fff;
--bg:#f4f6f8;--ok:#17803d;--warn:#a15c00;--bad:#c0262d;--accent:#2952a3}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ec;--muted:#9aa5b1;--line:#2e363f;
--card:#171c21;--bg:#0f1317;--ok:#4cc27a;--warn:#e0a040;--bad:#ff6b6b;--accent:#7aa2f7}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header,main,footer{max-width:1100px;margin:0 auto;padding:0 16px}
header{padding-top:16px}
h1{font-size:1.4rem;margin:0 0 4px}
h2{font-size:1.1rem;margin:24px 0 8px}
h3{font-size:1rem;margin:0 0 4px}
.meta,.when,.note,footer{color:var(--muted);font-size:.9rem}
footer{padding:24px 16px}
nav a{display:inline-block;padding:4px 10px;margin:4px 4px 0 0;border:1px solid var(--line);
border-radius:6px;text-decoration:none;color:var(--accent)}
nav a[aria-current]{background:var(--accent);color:var(--card);border-color:var(--accent)}
figure{margin:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;
margin:0 0 12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.grid .card{margin:0}
.value{font-size:1.6rem;font-weight:600;font-variant-numeric:tabular-nums}
.price{font-size:1.2rem;font-weight:600;font-variant-numeric:tabular-nums}
svg.chart{display:block;width:100%;height:160px;color:var(--accent)}
svg.chart.small{height:100px}
.axis{display:flex;justify-content:space-between;gap:8px;color:var(--muted);font-size:.8rem;
font-variant-numeric:tabular-nums}
.ok,.backfilling,.paging{color:var(--ok)}.waiting,.starting{color:var(--warn)}.stale,.bad{color:var(--bad)}
.state{font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.9rem;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
td.error{color:var(--bad);font-size:.85rem;overflow-wrap:anywhere}
code{overflow-wrap:anywhere}
@media (max-width:720px){
table.rows thead{display:none}
table.rows,table.rows tbody,table.rows tr,table.rows td{display:block;width:100%}
table.rows tr{border:1px solid var(--line);border-radius:8px;margin:0 0 10px;padding:4px 0;
background:var(--card)}
table.rows td{display:flex;justify-content:space-between;gap:12px;border:0;padding:3px 10px;
text-align:right;overflow-wrap:anywhere}
table.rows td::before{content:attr(data-label);color:var(--muted);text-align:left;flex:none}
.grid{grid-template-columns:1fr}}
"""


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _when(value: datetime | str | None) -> str:
    """``2026-11-24 22:19`` (UTC), or a dash."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _amount(value: Decimal, decimals: int) -> str:
    """``12,345.68``: rounded for reading (the exact value is beside it). With the digits the
    value needs: the default context's 28 would refuse a value of 10**26 or more."""
    digits = max(value.adjusted(), 0) + decimals + 2
    places = Decimal(1).scaleb(-decimals)
    return f"{value.quantize(places, context=decimal.Context(prec=digits)):,f}"


def _exact(value: Decimal) -> str:
    """The exact value with thousands separators: ``64,000.1``."""
    return f"{value:,f}"


def _header(config: Config, report: dict[str, Any], range_name: str, now: datetime) -> str:
    links = " ".join(
        f'<a href="?range={name}"{" aria-current=page" if name == range_name else ""}>{name}</a>'
        for name in RANGES
    )
    if report["healthy"]:
        health = '<span class="state ok">healthy</span>'
    else:
        health = '<span class="state stale">unhealthy</span>'
    problems = "".join(f"<li>{escape(p)}</li>" for p in report["problems"][:PROBLEMS_SHOWN])
    more = len(report["problems"]) - PROBLEMS_SHOWN
    if more > 0:
        problems += f'<li class="more">and {more:,} more stale jobs (in the jobs\' rows)</li>'

    return (
        "<header><h1>collector</h1>"
        f'<p class="meta">{escape(os.path.basename(config.path))} · '
        f"{escape(report['database'])} · {_when(now)} UTC · {health}</p>"
        + (f'<ul class="bad">{problems}</ul>' if problems else "")
        + f'<nav aria-label="range">{links}</nav></header>'
    )


def _axis(low: str, high: str) -> str:
    return f'<div class="axis"><span>{low}</span><span>{high}</span></div>'


def _portfolio(
    accounts: Sequence[Account], quote: str, decimals: int, start: datetime, now: datetime
) -> str:
    out = [f'<section id="portfolio"><h2>Portfolio value ({escape(quote)})</h2>']
    if not accounts:
        out.append(
            '<p class="note">No balance snapshots yet: a job with method Balance or BalanceEx '
            "takes them.</p>"
        )
    for account in accounts:
        out.append(f'<article class="card account" data-account="{escape(account.name)}">')
        out.append(f"<h3>{escape(account.name)}</h3>")
        latest = account.latest
        if latest is not None:
            out.append(
                f'<p><span class="value" data-value="{latest.value}" title="{_exact(latest.value)}'
                f' {escape(quote)}">{_amount(latest.value, decimals)} {escape(quote)}</span> '
                f'<span class="when">at {_when(latest.taken_at)} UTC</span></p>'
            )
            if latest.unpriced:
                listed = ", ".join(escape(a) for a in latest.unpriced)
                out.append(
                    f'<p class="note unpriced" data-unpriced="{escape(",".join(latest.unpriced))}"'
                    f' title="{escape(latest.reasons or "")}">'
                    f"Not in the value, no price in {escape(quote)}: {listed}</p>"
                    f'<p class="note why">{escape(latest.reasons or "")}</p>'
                )
        out.append(_value_chart(account, quote, decimals, start, now))
        out.append("</article>")
    out.append("</section>")
    return "".join(out)


def _value_chart(
    account: Account, quote: str, decimals: int, start: datetime, now: datetime
) -> str:
    """The account's value over time: a line through its complete snapshots only, over the
    range or, when the snapshots span less, from the first one (a fresh install's points fill
    the chart rather than sit in its last pixels). A snapshot with an asset unpriced is worth
    not its whole worth: a tick on the bottom edge, outside the line and its low and high."""
    complete = [v for v in account.values if v.complete]
    partial = [v for v in account.values if not v.complete]
    if account.values:
        start = max(start, min(v.taken_at for v in account.values))
    points = [(v.taken_at.timestamp(), float(v.value)) for v in complete]
    chart = charts.line(
        points,
        start.timestamp(),
        now.timestamp(),
        f"{account.name}: value in {quote}",
        marks=[v.taken_at.timestamp() for v in partial],
    )
    note = ""
    if partial:
        note = (
            f'<p class="note incomplete" data-incomplete="{len(partial)}">{len(partial):,} '
            f"snapshot{'s' if len(partial) != 1 else ''} with an asset unpriced: the ticks "
            "below the chart, not in the line nor in its low and high.</p>"
        )
    return _figure(chart, start, now, decimals) + note


def _figure(chart: charts.Chart, start: datetime, now: datetime, decimals: int) -> str:
    if chart.low is None or chart.high is None:
        scale = ""
    else:
        scale = _axis(f"low {chart.low:,.{decimals}f}", f"high {chart.high:,.{decimals}f}")
    return f"<figure>{scale}{chart.svg}{_axis(_when(start), _when(now))}</figure>"


def _jobs(
    report: dict[str, Any],
    errors: dict[str, str],
    shown: set[str] | None = None,
    page: tuple[int, int] = (1, 1),
    range_name: str = DEFAULT_RANGE,
) -> str:
    head = (
        "job",
        "method",
        "account",
        "state",
        "last run",
        "last success",
        "failures 24h",
        "rows",
        "newest",
        "collected to",
        "gaps",
    )
    out = [
        '<section id="jobs"><h2>Jobs</h2><table class="rows jobs"><thead><tr>',
        "".join(f"<th>{h}</th>" for h in head),
        "</tr></thead><tbody>",
    ]
    for j in report["jobs"]:
        if shown is not None and j["name"] not in shown:
            continue
        failures = ", ".join(f"{s} {n}" for s, n in sorted(j["failures_24h"].items())) or "-"
        progress = _when(j["cursor"]) if j.get("cursor") else "-"
        paged = j.get("paged")
        if j.get("paging"):
            progress += (
                f" (paging {paged['entries']:,} of {paged['of']:,})" if paged else " (paging)"
            )
        last = _when(j["last_run"])
        if j["last_status"] and j["last_status"] != "ok":
            last += f' <span class="bad">{escape(j["last_status"])}</span>'
        cells = (
            escape(j["name"]),
            escape(j["method"]),
            escape(j.get("account") or "-"),
            f'<span class="state {j["state"]}">{j["state"]}</span>',
            last,
            _when(j["last_success"]),
            escape(failures),
            "-" if j["rows"] is None else f"{j['rows']:,}",
            _when(j["newest"]),
            escape(progress),
            str(j["gaps"]),
        )
        out.append(
            f'<tr data-job="{escape(j["name"])}" data-state="{j["state"]}">'
            + "".join(f'<td data-label="{h}">{c}</td>' for h, c in zip(head, cells, strict=True))
            + "</tr>"
        )
        if j["name"] in errors:
            out.append(
                f'<tr class="error"><td class="error" colspan="{len(head)}">'
                f"{escape(j['name'])}: {escape(errors[j['name']])}</td></tr>"
            )
    out.append("</tbody></table>")
    out.append(_pages(page, len(report["jobs"]), range_name))
    waiting = report["spool_waiting"]
    out.append(
        f'<p class="note">Spool: {f"{waiting:,} runs waiting" if waiting else "empty"}; '
        f"oldest run kept: {_when(report['oldest_run'])} UTC.</p></section>"
    )
    return "".join(out)


def _streams(report: dict[str, Any]) -> str:
    """A line per stream of the job file (none: no section): ``collector status``'s."""
    streams = report.get("streams") or []
    if not streams:
        return ""
    head = ("stream", "channel", "pairs", "state", "last data", "connection", "reconnects 24h")
    out = [
        '<section id="streams"><h2>Streams</h2><table class="rows streams"><thead><tr>',
        "".join(f"<th>{h}</th>" for h in head),
        "</tr></thead><tbody>",
    ]
    for s in streams:
        cells = (
            escape(s["name"]),
            escape(s["channel"]),
            escape(s["pairs"]),
            f'<span class="state {escape(s["state"])}">{escape(s["state"])}</span>',
            _when(s["last_data"]),
            escape(connection_text(s)[:TEXT_MAX]),
            str(s["reconnects_24h"]),
        )
        out.append(
            f'<tr data-stream="{escape(s["name"])}" data-state="{escape(s["state"])}">'
            + "".join(f'<td data-label="{h}">{c}</td>' for h, c in zip(head, cells, strict=True))
            + "</tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _pages(page: tuple[int, int], jobs: int, range_name: str) -> str:
    """Plain links to the other pages of jobs (none when one page holds them all)."""
    at, pages = page
    if pages <= 1:
        return ""
    near = sorted({1, at - 1, at, at + 1, pages} & set(range(1, pages + 1)))
    links = []
    for n in near:
        current = " aria-current=page" if n == at else ""
        links.append(f'<a href="?range={range_name}&amp;jobs={n}"{current}>{n}</a>')
    low, high = (at - 1) * JOBS_SHOWN + 1, min(at * JOBS_SHOWN, jobs)
    return (
        f'<nav aria-label="jobs" class="pages" data-page="{at}" data-pages="{pages}">'
        f'<span class="note">jobs {low:,}-{high:,} of {jobs:,}, page</span> '
        + " ".join(links)
        + "</nav>"
    )


def _prices_section(
    prices: Sequence[Pair], start: datetime, now: datetime, undrawn: Sequence[str] = ()
) -> str:
    out = ['<section id="prices"><h2>Prices</h2>']
    if not prices:
        out.append('<p class="note">No prices yet: a Ticker or OHLC job collects them.</p>')
    out.append('<div class="grid">')
    for p in prices:
        pair_start = start
        points = [(t.timestamp(), float(v)) for t, v in p.samples]
        chart = charts.line(
            points,
            pair_start.timestamp(),
            now.timestamp(),
            f"{p.symbol}: price",
            css="chart small",
        )
        latest = (
            f'<span class="price" data-price="{p.latest}">{_exact(p.latest)}</span> '
            f"{escape(p.quote)}"
            if p.latest is not None
            else '<span class="note">no price yet</span>'
        )
        shown = 2 if p.latest is None else min(8, max(0, -int(p.latest.as_tuple().exponent)))
        out.append(
            f'<article class="card pair" data-pair="{escape(p.pair)}">'
            f'<h3>{escape(p.symbol)} <span class="note">{escape(p.pair)}</span></h3>'
            f"<p>{latest}</p>{_figure(chart, pair_start, now, shown)}</article>"
        )
    out.append("</div>")
    out.append(_undrawn(undrawn))
    out.append("</section>")
    return "".join(out)


def _undrawn(names: Sequence[str]) -> str:
    """The pairs collected but not drawn, by name (at most :data:`PAIRS_LISTED`)."""
    if not names:
        return ""
    listed = ", ".join(escape(n) for n in names[:PAIRS_LISTED])
    more = len(names) - PAIRS_LISTED
    tail = f" and {more:,} more" if more > 0 else ""
    return (
        f'<p class="note undrawn" data-undrawn="{len(names)}">Also collected, not drawn '
        f"({len(names):,}): {listed}{tail}.</p>"
    )


def _ledgers(report: dict[str, Any]) -> str:
    out = ['<section id="ledger"><h2>Ledger verification</h2>']
    ledgers = report.get("ledgers") or []
    if not ledgers:
        out.append(
            '<p class="note">Not verified yet: the service verifies an account\'s ledger after '
            "each Ledgers run; <code>collector verify</code> checks it all.</p>"
        )
    for ledger in ledgers:
        size = f"{ledger['assets']} assets, {ledger['entries']:,} entries"
        account = escape(ledger["account"])
        if ledger["verified"]:
            out.append(
                f'<p data-ledger="{account}" data-verified="true">Account {account}: '
                f'<span class="state ok">verified</span> to {_when(ledger["verified_to"])} UTC '
                f"({size}).</p>"
            )
        else:
            n = ledger["breaks"]
            out.append(
                f'<p data-ledger="{account}" data-verified="false">Account {account}: '
                f'<span class="state stale">UNVERIFIED</span>, {n} break{"s" if n != 1 else ""} '
                f"recorded up to {_when(ledger['verified_to'])} UTC ({size}); "
                "<code>collector verify</code> shows them.</p>"
            )
    out.append("</section>")
    return "".join(out)


def _gaps_section(count: int, rows: Sequence[Any]) -> str:
    out = [f'<section id="gaps"><h2>Gaps ({count:,})</h2>']
    if not count:
        out.append(
            '<p class="note">None recorded: everything asked for was served, and the ledger '
            "breaks nowhere.</p></section>"
        )
        return "".join(out)
    head = ("job", "dataset", "pair or asset", "from", "to", "reason")
    out.append('<table class="rows gaps"><thead><tr>')
    out.append("".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    for row in rows:
        cells = (
            escape(row.job),
            escape(row.dataset),
            escape(row.pair),
            _when(row.start),
            _when(row.end),
            escape(row.reason[:TEXT_MAX]),
        )
        out.append(
            "<tr>"
            + "".join(f'<td data-label="{h}">{c}</td>' for h, c in zip(head, cells, strict=True))
            + "</tr>"
        )
    out.append("</tbody></table>")
    if count > len(rows):
        out.append(f'<p class="note">The newest {len(rows)} of {count:,}.</p>')
    out.append("</section>")
    return "".join(out)
