"""Valuation and the dashboard: the table ``portfolio_value`` and the page hold to a value this file
computes from the raw rows itself, on SQLite and PostgreSQL; the page loads in a real, offline
headless Chromium with every job, its charts' points and the latest value; the service serves the
same page at ``/`` of its metrics listener."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from bisect import bisect_right
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from collector.dashboard import Dashboard
from collector.jobfile import load
from collector.service import Service
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken
from collector.testing.portfolio import fill_hourly
from collector.valuation import Valuation

from .helpers import running, wait_for
from .test_service import job_file, rows

#: Every price source the valuation knows: a ticker of direct pairs, DOT through XBT, EUR
#: through a fiat pair, and final candles of ETH.
JOBS = """
prices: {method: Ticker, params: {pair: "XBTUSD,ETHUSD,DOTXBT,EURUSD,SOLUSD"}, every: 1h}
candles: {method: OHLC, params: {pair: ETHUSD, interval: 1}, every: 1h}
balances: {method: Balance, every: 1h}
"""
#: Where the tests keep what a person looks at afterwards (the browser's screenshots).
ARTIFACTS = Path(os.environ.get("COLLECTOR_TEST_ARTIFACTS", "build/test-artifacts"))
STAKED = {".S", ".M", ".P", ".F", ".B"}


# -- the value, computed here from the raw rows -------------------------------------------------


def _time(value: Any) -> datetime:
    """A time as either database returns it through plain SQL."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def expected(url: str, quote: str = "ZUSD") -> dict[int, tuple[Decimal, tuple[str, ...]]]:
    """Each snapshot's (value, unpriced assets) by run id: the rules as a user would apply them
    by hand, written independently of collector.valuation."""
    prices: dict[str, list[tuple[datetime, int, Decimal]]] = defaultdict(list)
    for pair, taken_at, last in rows(url, "SELECT pair, taken_at, last FROM ticker"):
        prices[pair].append((_time(taken_at), 0, Decimal(str(last))))
    for pair, interval, start, close in rows(
        url, "SELECT pair, interval, time, close FROM ohlc WHERE final"
    ):
        closed = _time(start) + timedelta(minutes=interval)
        prices[pair].append((closed, interval, Decimal(str(close))))
    pairs = {(b, q): p for p, b, q in rows(url, "SELECT pair, base, quote FROM pairs")}
    altnames = {alt: code for code, alt in rows(url, "SELECT asset, altname FROM assets")}

    # Each pair's prices by time, a ticker's before a candle's of the same time.
    ordered = {p: sorted(seen, key=lambda k: (k[0], -k[1])) for p, seen in prices.items()}
    times = {p: [t for t, _, _ in seen] for p, seen in ordered.items()}

    def price_of(pair: str | None, when: datetime) -> Decimal | None:
        at = bisect_right(times.get(pair or "", []), when)
        return ordered[pair or ""][at - 1][2] if at else None

    def value_of(asset: str, when: datetime) -> Decimal | None:
        candidates = [asset]
        for suffix in STAKED:
            if asset.endswith(suffix):
                name = asset[: -len(suffix)].rstrip("0123456789")
                candidates.append(altnames.get(name, name))
        for code in candidates:
            if code == quote:
                return Decimal(1)
            direct = price_of(pairs.get((code, quote)), when)
            if direct is not None:
                return direct
            in_xbt = price_of(pairs.get((code, "XXBT")), when)
            xbt = price_of(pairs.get(("XXBT", quote)), when)
            if in_xbt is not None and xbt is not None:
                return in_xbt * xbt
        return None

    snapshots: dict[int, list[tuple[datetime, str, Decimal]]] = defaultdict(list)
    for run_id, taken_at, asset, amount in rows(
        url, "SELECT run_id, taken_at, asset, amount FROM balances"
    ):
        snapshots[run_id].append((_time(taken_at), asset, Decimal(str(amount))))
    out = {}
    for run_id, held in snapshots.items():
        total, unpriced = Decimal(0), []
        for when, asset, amount in held:
            price = value_of(asset, when)
            if price is None:
                if amount:
                    unpriced.append(asset)
            else:
                total += amount * price
        out[run_id] = (total, tuple(sorted(unpriced)))
    return out


# -- the page, read as a browser's DOM ----------------------------------------------------------


class Page(HTMLParser):
    """The elements with a ``data-`` attribute, the charts (each one's attributes, its line's
    point count and whether the newest point has its dot), and the text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tagged: list[tuple[str, dict[str, str]]] = []
        self.charts: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.tags: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if any(k.startswith("data-") for k in found):
            self.tagged.append((tag, found))
        if tag == "svg":
            self.charts.append({**found, "line": 0, "dot": False})
        elif tag == "polyline":
            self.charts[-1]["line"] = len(found["points"].split())
        elif tag == "line" and found.get("class") == "last":
            self.charts[-1]["dot"] = True

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, attribute: str) -> list[dict[str, str]]:
        return [a for _, a in self.tagged if attribute in a]

    def one(self, attribute: str) -> dict[str, str]:
        (found,) = self.having(attribute)
        return found

    def chart(self, label: str) -> dict[str, Any]:
        (found,) = [c for c in self.charts if c["aria-label"] == label]
        return found


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("no chromium: .ci/run installs Debian's chromium")
        pytest.skip("no chromium (Debian's package chromium)")
    return found


def browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no way off this machine: every name resolves to nothing but
    127.0.0.1, and nothing runs in the background."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


# -- tests --------------------------------------------------------------------------------------


def view(url: str, where: str = "") -> list[Any]:
    """The table's rows through collector's own engine."""
    store = Store.from_url(url)
    try:
        with store.engine.connect() as conn:
            sql = f"SELECT run_id, quote, value, unpriced FROM portfolio_value {where}"
            return list(conn.execute(text(sql)))
    finally:
        store.dispose()


def collected(
    tmp_path: Path, database_url: str, fake: FakeKraken, jobs: str = "", top: str = ""
) -> Path:
    """Two rounds of every job: the second round's snapshot has every price."""
    path = job_file(tmp_path, fake, fake.add_key(), database_url, JOBS + jobs)
    path.write_text(path.read_text() + top)
    for _ in range(2):
        svc = Service(load(path))
        try:
            assert svc.run_once(), rows(database_url, "SELECT job, status, error FROM runs")
        finally:
            svc.stop()
    return path


def test_the_view_and_the_page_agree_with_a_value_computed_from_the_raw_rows(
    tmp_path, database_url
) -> None:
    with FakeKraken(tier=None) as fake:
        path = collected(tmp_path, database_url, fake)
    want = expected(database_url)
    assert len(want) == 2
    latest_run = max(want)
    # The second snapshot is priced in full (DOT through XBT, DOT.S as DOT, ETH.F as ETH, EUR
    # through EURUSD); the first one names what had no price yet, never counting it as 0.
    assert want[latest_run][1] == ()
    assert want[latest_run][0] > 0
    viewed = {r[0]: (r[1], r[2], r[3]) for r in view(database_url)}
    assert set(viewed) == set(want)
    for run_id, (value, unpriced) in want.items():
        quote, got, names = viewed[run_id]
        assert quote == "USD"
        assert Decimal(str(got)) == value, run_id
        assert (tuple(sorted(names.split(","))) if names else ()) == unpriced
    # The dashboard's own valuation, and the page.
    store = Store.from_url(database_url)
    try:
        with store.engine.connect() as conn:
            values = {v.run_id: (v.value, v.unpriced) for v in Valuation("USD").values(conn)}
        assert values == want
        page = Page(Dashboard(load(path), store).render("all"))
    finally:
        store.dispose()
    shown = page.one("data-value")
    assert Decimal(shown["data-value"]) == want[latest_run][0]
    assert not page.having("data-unpriced")
    # One point per snapshot, and a price chart per collected pair.
    value = page.chart("default: value in USD")
    assert (value["data-series"], value["line"], value["dot"]) == ("2", 2, True)
    assert {a["data-pair"] for a in page.having("data-pair")} == {
        "XXBTZUSD",
        "XETHZUSD",
        "DOTXBT",
        "ZEURZUSD",
        "SOLUSD",
    }
    assert {(a["data-job"], a["data-state"]) for a in page.having("data-job")} == {
        ("prices", "ok"),
        ("candles", "ok"),
        ("balances", "ok"),
    }


def test_the_quote_is_the_job_files_and_what_has_no_price_is_named(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None) as fake:
        path = collected(
            tmp_path,
            url,
            fake,
            'eur: {method: Ticker, params: {pair: "XBTEUR,ETHEUR"}, every: 1h}\n',
            top="valuation: {quote: EUR}\n",
        )
    config = load(path)
    assert config.valuation_quote == "EUR"
    want = expected(url, quote="ZEUR")
    latest_run = max(want)
    # In EUR: XBT and ETH have EUR pairs, DOT goes through XBT; USD would need a division
    # (EURUSD is the other way round), so it is named, not valued.
    value, unpriced = want[latest_run]
    assert unpriced == ("ZUSD",)
    ((_, quote, got, names),) = view(url, f"WHERE run_id = {latest_run}")
    assert (quote, Decimal(got), tuple(sorted(names.split(",")))) == ("EUR", value, unpriced)
    # A user's query in the sqlite3 shell agrees.
    shell = shutil.which("sqlite3")
    if shell:
        sql = f"SELECT quote, value, unpriced FROM portfolio_value WHERE run_id = {latest_run}"
        out = subprocess.run(
            [shell, str(tmp_path / "c.db"), sql], capture_output=True, text=True, check=True
        ).stdout.strip()
        quote, got, names = out.split("|")
        assert (quote, Decimal(got), tuple(sorted(names.split(",")))) == ("EUR", value, unpriced)
    store = Store.from_url(url)
    try:
        page = Page(Dashboard(config, store).render("day"))
    finally:
        store.dispose()
    assert Decimal(page.one("data-value")["data-value"]) == value
    assert tuple(sorted(page.one("data-unpriced")["data-unpriced"].split(","))) == unpriced
    assert "Portfolio value (EUR)" in "".join(page.text)


def test_the_page_in_a_real_offline_browser(tmp_path) -> None:
    """``collector dashboard`` serves it; Chromium loads it with nothing reachable but this
    machine; the DOM has every job and its state, the charts their points, the latest value; a
    failing job's error, written by the exchange, shows as text and never as markup."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    with FakeKraken(tier=None) as fake:
        path = collected(
            tmp_path, url, fake, "depth: {method: Depth, params: {pair: XBTUSD}, every: 1h}\n"
        )
        fake.inject("kraken_error", error=f"EGeneral:{hostile}", method="Depth", count=10)
        svc = Service(load(path))
        try:
            svc.run_once()
        finally:
            svc.stop()
    want = expected(url)
    with running(
        [sys.executable, "-m", "collector.cli", "dashboard", "--listen", "127.0.0.1:0", str(path)]
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # click flushes it; EOF if the command failed
        assert " on http://127.0.0.1:" in first, first + proc.stdout.read()
        address = first.split(" on ")[1].split()[0]
        dom = browse(address + "?range=day", tmp_path / "profile", "--dump-dom").stdout
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, size in (("dashboard.png", "1100,1500"), ("dashboard-narrow.png", "420,2400")):
            shot = (ARTIFACTS / name).resolve()
            shot.unlink(missing_ok=True)
            browse(
                address + "?range=day",
                tmp_path / "profile",
                f"--screenshot={shot}",
                f"--window-size={size}",
                "--hide-scrollbars",
            )
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Page(dom)
    jobs = {a["data-job"]: a["data-state"] for a in page.having("data-job")}
    assert set(jobs) == {"prices", "candles", "balances", "depth"}
    assert jobs["balances"] == "ok"
    assert Decimal(page.one("data-value")["data-value"]) == want[max(want)][0]
    # Every chart draws its points, the newest as a dot (a pair with one price is a dot).
    assert len(page.charts) == 6
    for chart in page.charts:
        assert chart["line"] == int(chart["data-points"]) >= 1 and chart["dot"], chart
    # The error is on the page as the exchange wrote it, as text: no element came from it.
    assert hostile in "".join(page.text)
    assert "img" not in page.tags and "script" not in page.tags


def test_the_service_serves_the_page_at_the_root_of_its_listener(tmp_path, fake) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, fake.add_key(), url, JOBS)
    path.write_text(path.read_text() + "metrics: {listen: '127.0.0.1:0'}\n")
    svc = Service(load(path))
    svc.start()
    try:
        wait_for(lambda: len(view(url)) >= 1)
        host, port = svc.monitor.address
        base = f"http://{host}:{port}"
        answer = requests.get(base + "/?range=week", timeout=10, allow_redirects=False)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src" not in answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        page = Page(answer.text)
        assert {a["data-job"] for a in page.having("data-job")} == {
            "prices",
            "candles",
            "balances",
        }
        assert page.having("data-value")
        bad = requests.get(base + "/?range=decade", timeout=10)
        assert bad.status_code == 400 and "day, week, year, all" in bad.text
        refused = requests.post(base + "/", timeout=10)
        assert (refused.status_code, refused.headers["Allow"]) == (405, "GET, HEAD")
        head = requests.head(base + "/metrics", timeout=10)
        assert (head.status_code, head.content, head.headers["Server"]) == (200, b"", "collector")
        assert int(head.headers["Content-Length"]) > 1000  # what a GET would send
        # The metrics are where they were.
        assert "collector_runs_total" in requests.get(base + "/metrics", timeout=10).text
    finally:
        svc.stop()


def history_jobs(tmp_path: Path, url: str) -> Path:
    """The job file that would have collected :func:`fill_hourly`'s history."""
    path = tmp_path / "jobs.yaml"
    secret = base64.b64encode(bytes(64)).decode()
    path.write_text(
        f"database: {url}\nkraken: {{key: k, secret: '{secret}'}}\njobs:\n"
        "  prices: {method: Ticker, params: {pair: XBTUSD}, every: 1h}\n"
        "  balances: {method: Balance, cron: '0 * * * *'}\n"
    )
    return path


def test_a_year_of_hourly_snapshots_is_drawn_in_a_small_page(tmp_path) -> None:
    """8,760 snapshots of 10 assets and their prices every hour: the view values each one; the
    chart draws at most four points a pixel column; the page stays far under 2 MB (its time is
    in bench/bench_dashboard.py)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    now = datetime(2026, 11, 29, tzinfo=UTC)
    store = Store.from_url(url)
    try:
        store.upgrade()
        fill_hourly(store.engine, end=now, hours=24 * 365, assets=10)
        (first, last) = view(url, "WHERE run_id IN (3, 17521) ORDER BY run_id")
        html = Dashboard(load(history_jobs(tmp_path, url)), store, clock=lambda: now).render("year")
    finally:
        store.dispose()
    want = expected(url)
    assert (Decimal(first.value), Decimal(last.value)) == (want[3][0], want[17521][0])
    assert first.unpriced is None and want[3][1] == ()
    assert len(html.encode()) < 2_000_000
    page = Page(html)
    value = page.chart("default: value in USD")
    assert int(value["data-series"]) == 24 * 365
    assert 720 <= value["line"] == int(value["data-points"]) <= 4 * 721
    assert Decimal(page.one("data-value")["data-value"]) == want[17521][0]


def test_a_ticker_of_thousands_of_pairs_draws_the_ones_that_matter_and_names_the_rest(
    tmp_path,
) -> None:
    """3,000 pairs in the ticker table besides the held ones (a Ticker of every pair): the page
    draws the pair the job file names and those that value the balances, at most PAIRS_DRAWN
    charts, and names the others in one line; before, it drew all 3,000 (6.6 to 11 s, holding
    a slot of the listener all along)."""
    from sqlalchemy import insert

    from collector.dashboard import PAIRS_DRAWN, PAIRS_LISTED
    from collector.datasets.market import ticker
    from collector.schema import runs as runs_table

    url = f"sqlite:///{tmp_path / 'c.db'}"
    now = datetime(2026, 11, 29, tzinfo=UTC)
    store = Store.from_url(url)
    try:
        store.upgrade()
        fill_hourly(store.engine, end=now, hours=24, assets=10)
        at = now - timedelta(minutes=30)
        with store.engine.begin() as conn:
            run = {"id": 1000, "job": "all", "method": "Ticker", "params": {}, "status": "ok"}
            run |= {"scheduled_at": at, "started_at": at, "finished_at": at, "attempts": 1}
            conn.execute(insert(runs_table), [run | {"pages": 1, "new_rows": 3000}])
            price = {k: Decimal("1.5") for k in ("ask", "bid", "last", "vwap_24h", "open")}
            price |= {"low_24h": Decimal(1), "high_24h": Decimal(2), "volume_24h": Decimal(9)}
            conn.execute(
                insert(ticker),
                [
                    {"run_id": 1000, "pair": f"AAA{i:04d}USD", "taken_at": at, "trades_24h": 1}
                    | price
                    for i in range(3000)
                ],
            )
        started = time.monotonic()
        html = Dashboard(load(history_jobs(tmp_path, url)), store, clock=lambda: now).render("day")
        took = time.monotonic() - started
    finally:
        store.dispose()
    drawn = re.findall(r'data-pair="([^"]+)"', html)
    held = ["ATOMXBT", "DOTUSD", "SOLUSD", "XETHZUSD", "XLTCZUSD", "XXBTZUSD", "ADAUSD"]
    assert "XXBTZUSD" in drawn and set(held) <= set(drawn)  # named in the job file; valued
    assert len(drawn) == PAIRS_DRAWN
    (undrawn,) = re.findall(r'data-undrawn="(\d+)"', html)
    assert int(undrawn) == 3000 + len(held) + 1 - PAIRS_DRAWN  # LINKUSD too
    assert f"and {int(undrawn) - PAIRS_LISTED:,} more." in html
    assert len(html.encode()) < 500_000
    assert took < 10, took  # (a second or so; before: the 3,000 charts)


def test_a_month_of_history_in_the_browser(tmp_path) -> None:
    """The page people see after a month of hourly snapshots (the README's picture is this
    test's screenshot): Chromium draws the week's 168 snapshots and a chart per pair."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.from_url(url)
    try:
        store.upgrade()
        fill_hourly(store.engine, end=datetime.now(UTC), hours=24 * 30, assets=10)
    finally:
        store.dispose()
    path = history_jobs(tmp_path, url)
    with running(
        [sys.executable, "-m", "collector.cli", "dashboard", "--listen", "127.0.0.1:0", str(path)]
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " on http://127.0.0.1:" in first, first + proc.stdout.read()
        address = first.split(" on ")[1].split()[0] + "?range=week"
        page = Page(browse(address, tmp_path / "profile", "--dump-dom").stdout)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = (ARTIFACTS / "dashboard-month.png").resolve()
        shot.unlink(missing_ok=True)
        browse(
            address,
            tmp_path / "profile",
            f"--screenshot={shot}",
            "--window-size=1100,1500",
            "--hide-scrollbars",
        )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    value = page.chart("default: value in USD")
    assert 167 <= int(value["data-series"]) <= 169 and value["line"] >= 167
    assert len([c for c in page.charts if c["aria-label"].endswith(": price")]) == 8


def test_a_value_too_large_for_decimals_default_precision_is_shown_exactly(tmp_path) -> None:
    """A balance Kraken sent as ``1E+30`` (stored, exact) in the quote itself: the page shows it
    rounded for reading and exact beside it, where the default 28-digit context would fail."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    store = Store.from_url(url)
    store.upgrade()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    huge = Decimal("1000000000000000000000000000000.125")
    try:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO runs (id, job, method, params, scheduled_at, started_at, "
                    "finished_at, status, attempts, pages, new_rows) "
                    "VALUES (1, 'b', 'Balance', '{}', :at, :at, :at, 'ok', 1, 1, 1)"
                ),
                {"at": f"{at:%Y-%m-%d %H:%M:%S.%f}+00:00"},
            )
            conn.execute(
                text("INSERT INTO balances VALUES (1, 'ZUSD', 'b', :at, :amount, 'default')"),
                {"at": f"{at:%Y-%m-%d %H:%M:%S.%f}+00:00", "amount": format(huge, "f")},
            )
            conn.execute(
                text(
                    "INSERT INTO assets VALUES ('ZUSD', 'USD', 'currency', 4, 2, 'enabled', :at, 1)"
                ),
                {"at": f"{at:%Y-%m-%d %H:%M:%S.%f}+00:00"},
            )
        dashboard = Dashboard(load(path), store, clock=lambda: at + timedelta(hours=1))
        answer = dashboard.answer({"range": "day"})
    finally:
        store.dispose()
    assert answer.status == 200, answer.body[-300:]
    page = Page(answer.body.decode())
    shown = page.one("data-value")
    assert Decimal(shown["data-value"]) == huge
    assert shown["title"] == f"{huge:,f} USD"
    assert "1,000,000,000,000,000,000,000,000,000,000.12 USD" in page.text
