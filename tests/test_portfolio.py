"""``portfolio_value`` is a table the store keeps: any tool reads it, exactly (pandas on a plain
engine, Python's ``sqlite3``, DuckDB over ``collector export``, PostgreSQL through pandas), on a
database the service filled; an emptied account's snapshot is a row worth 0."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from click.testing import CliRunner
from sqlalchemy import create_engine

from collector.cli import main
from collector.jobfile import load
from collector.records import RunRecord
from collector.service import Service
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken
from collector.valuation import Valuation

from .test_service import job_file, rows

JOBS = """
prices: {method: Ticker, params: {pair: "XBTUSD,ETHUSD,DOTXBT,EURUSD,SOLUSD"}, every: 1h}
balances: {method: Balance, every: 1h}
"""
COLUMNS = ["run_id", "job", "account", "taken_at", "quote", "value", "unpriced", "why_unpriced"]


def run_once(path: Path) -> None:
    svc = Service(load(path))
    try:
        assert svc.run_once()
    finally:
        svc.stop()


def values(url: str) -> dict[int, Decimal]:
    store = Store.from_url(url)
    try:
        with store.engine.connect() as conn:
            return {v.run_id: v.value for v in Valuation("USD").values(conn)}
    finally:
        store.dispose()


def test_any_tool_reads_portfolio_value_exactly(tmp_path, database_url) -> None:
    with FakeKraken(tier=None) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), database_url, JOBS)
        run_once(path)
        run_once(path)
    want = values(database_url)
    assert len(want) == 2 and all(v > 0 for v in want.values())
    engine = create_engine(database_url)  # a plain engine: none of collector's connection setup
    try:
        # pandas turns Decimals (PostgreSQL's numeric) into floats unless told not to; SQLite's
        # decimal text stays text either way.
        frame = pd.read_sql(
            "SELECT * FROM portfolio_value ORDER BY run_id", engine, coerce_float=False
        )
    finally:
        engine.dispose()
    assert list(frame.columns) == COLUMNS
    # Exact: decimal text on SQLite, Decimal from PostgreSQL's numeric; never a float.
    assert all(isinstance(v, str | Decimal) for v in frame["value"])
    assert {
        int(r): Decimal(str(v)) for r, v in zip(frame["run_id"], frame["value"], strict=True)
    } == want
    assert set(frame["quote"]) == {"USD"}
    if not database_url.startswith("sqlite"):
        return
    file = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(file) as conn:
        found = dict(conn.execute("SELECT run_id, value FROM portfolio_value").fetchall())
    assert {r: Decimal(v) for r, v in found.items()} == want
    # collector export writes it; DuckDB reads the file, the value as exact text.
    out = tmp_path / "value.csv"
    result = CliRunner().invoke(main, ["export", "portfolio_value", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    read = duckdb.sql(
        f"SELECT run_id, value FROM read_csv('{out}', all_varchar = true) ORDER BY run_id"
    ).fetchall()
    assert {int(r): Decimal(v) for r, v in read} == want


def test_an_emptied_account_is_worth_zero(tmp_path, database_url) -> None:
    """Kraken answers an emptied account with no assets at all: that snapshot is a row worth 0,
    the newest, and the page shows 0, not the full snapshot before it."""
    from collector.dashboard import Dashboard

    with FakeKraken(tier=None) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), database_url, JOBS)
        run_once(path)
        fake.balance = {}  # an empty mapping of assets
        run_once(path)
        fake.balance = None  # no result at all: Kraken's answer for an empty account
        run_once(path)
    table = rows(
        database_url, "SELECT run_id, value, unpriced FROM portfolio_value ORDER BY run_id"
    )
    assert len(table) == 3
    assert Decimal(str(table[0][1])) > 0
    assert [(Decimal(str(v)), u) for _, v, u in table[1:]] == [(Decimal(0), None)] * 2
    store = Store.from_url(database_url)
    try:
        with store.engine.connect() as conn:
            found = Valuation("USD").values(conn)
        assert [v.value for v in found][1:] == [Decimal(0), Decimal(0)]
        html = Dashboard(load(path), store).render("all")
    finally:
        store.dispose()
    assert 'data-value="0"' in html


def test_the_chart_fits_a_fresh_install_and_sets_incomplete_snapshots_apart(tmp_path) -> None:
    """Three rounds a minute apart on a week's range: the line spans the chart from the first
    snapshot; the first round's snapshot, with an asset no pair prices (KFEE, Kraken's fee
    credits), is a tick below the chart, outside the line and its low."""
    from collector.dashboard import Dashboard

    from .test_dashboard import Page

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, JOBS)
        fake.balance = {**fake.balances(), "KFEE": "1000"}
        run_once(path)
        fake.balance = fake.balances()
        for _ in range(2):
            run_once(path)
    store = Store.from_url(url)
    try:
        with store.engine.connect() as conn:
            found = Valuation("USD").values(conn)
        html = Dashboard(load(path), store).render("week")
    finally:
        store.dispose()
    partial = [v for v in found if not v.complete]
    complete = [v for v in found if v.complete]
    assert len(partial) >= 1 and len(complete) >= 2
    page = Page(html)
    chart = page.chart("default: value in USD")
    assert (int(chart["data-series"]), int(chart["data-marks"])) == (len(complete), len(partial))
    xs = [float(p.split(",")[0]) for p in html.split('points="')[1].split('"')[0].split()]
    assert xs[0] < 360  # from the first snapshot, not squeezed against the week's right edge
    low = min(v.value for v in complete)
    assert f"low {low:,.2f}" in page.text
    assert page.one("data-incomplete")["data-incomplete"] == str(len(partial))


# -- the store keeps the table true ---------------------------------------------------------------


def record(method: str, at: datetime, rows: dict[str, list[dict[str, Any]]]) -> RunRecord:
    return RunRecord(
        job=method.lower(),
        method=method,
        params={},
        scheduled_at=at,
        started_at=at,
        finished_at=at,
        rows=rows,
        account="default" if method.startswith("Balance") else None,
    )


def tick(at: datetime, last: str) -> RunRecord:
    v = Decimal(last)
    row = dict(pair="XXBTZUSD", taken_at=at, trades_24h=1, ask=v, bid=v, last=v, open=v)
    row |= dict(volume_24h=v, vwap_24h=v, low_24h=v, high_24h=v)
    return record("Ticker", at, {"ticker": [row]})


def snapshot(at: datetime, held: dict[str, str]) -> RunRecord:
    rows = [dict(asset=a, amount=Decimal(x), job="balance", taken_at=at) for a, x in held.items()]
    return record("Balance", at, {"balances": rows})


def table(url: str) -> dict[int, tuple[Decimal, str | None, str | None]]:
    found = rows(url, "SELECT run_id, value, unpriced, why_unpriced FROM portfolio_value")
    return {r[0]: (Decimal(str(r[1])), r[2], r[3]) for r in found}


def test_the_store_values_again_what_a_later_price_or_pair_changes(tmp_path, database_url) -> None:
    """A price stored after a snapshot but taken before it values it (a ticker and a balance
    of one round, stored in either order); a price older than max_price_age values nothing,
    and says so; a pair stored after its prices values the snapshots it now can."""
    with FakeKraken(tier=None) as fake:  # the assets and pairs, as the service stores them
        path = job_file(
            tmp_path, fake, fake.add_key(), database_url, "t: {method: Time, every: 1h}"
        )
        run_once(path)
    store = Store.from_url(database_url)
    try:
        store.upgrade()
        t = datetime(2026, 1, 1, tzinfo=UTC)
        (first,) = store.write([snapshot(t, {"XXBT": "2", "ZUSD": "5"})])
        assert table(database_url)[first][:2] == (Decimal(5), "XXBT")
        store.write([tick(t - timedelta(seconds=1), "60000.5")])
        assert table(database_url)[first] == (Decimal("120006.0"), None, None)
        # Two days on, that price is too old: XBT unpriced, with the reason.
        (later,) = store.write([snapshot(t + timedelta(days=2), {"XXBT": "1"})])
        assert table(database_url)[later] == (
            Decimal(0),
            "XXBT",
            "XXBT: newest price 2025-12-31 23:59:59 UTC is older than valuation.max_price_age (1d)",
        )
        # A ticker of a pair not yet listed is stored; its pair arrives later.
        tocks = tick(t - timedelta(seconds=1), "0.5")
        tocks.rows["ticker"][0]["pair"] = "NEWZUSD"
        (held,) = store.write([tocks, snapshot(t, {"NEW": "4"})])[1:]
        assert table(database_url)[held][1] == "NEW"
        pair = dict(pair="NEWZUSD", altname="NEWUSD", wsname="NEW/USD", base="NEW", quote="ZUSD")
        pair |= dict(pair_decimals=4, lot_decimals=8, status="online", updated_at=t)
        store.write([record("AssetPairs", t, {"pairs": [pair]})])
        assert table(database_url)[held][:2] == (Decimal("2.0"), None)
    finally:
        store.dispose()


def test_the_migration_values_the_snapshots_stored_before(tmp_path, database_url) -> None:
    """A database at 0010 with a full snapshot and an emptied account's (an ok Balance run
    without rows): after the upgrade, both are rows of the table, the empty one worth 0."""
    from collector.store import upgrade

    from .test_valuation import Rows

    store = Store.from_url(database_url)
    try:
        upgrade(store.engine, "0010")
        with store.engine.begin() as conn:
            made = Rows(conn)
            full = made.snapshot(0, {"USD": "12.5", "KFEE": "3"})  # no assets rows: USD itself
            empty = made.run("Balance", datetime(2026, 1, 1, 1, tzinfo=UTC))
        store.upgrade()
    finally:
        store.dispose()
    assert table(database_url) == {
        full: (Decimal("12.5"), "KFEE", "KFEE: no price at or before the snapshot"),
        empty: (Decimal(0), None, None),
    }


def test_max_price_age_is_a_job_file_key(tmp_path) -> None:
    """``valuation.max_price_age``: a day by default, a duration within a minute and a year;
    a bad one is one line naming the key; a change needs a restart (the table is valued with
    it)."""
    from collector.errors import ConfigError
    from collector.reload import restart_needed

    def jobs(valuation: str) -> Path:
        path = tmp_path / "jobs.yaml"
        path.write_text(
            f"database: sqlite:///{tmp_path / 'c.db'}\n{valuation}"
            "jobs:\n  t: {method: Time, every: 1h}\n"
        )
        return path

    default = load(jobs(""))
    assert default.valuation_max_price_age == 86_400
    two_hours = load(jobs("valuation: {max_price_age: 2h}\n"))
    assert two_hours.valuation_max_price_age == 7_200
    assert restart_needed(default, two_hours) == ["valuation.max_price_age"]
    for bad, problem in (("forever", "bad duration 'forever'"), ("10s", "out of range")):
        try:
            load(jobs(f"valuation: {{max_price_age: {bad}}}\n"))
        except ConfigError as exc:
            assert "valuation.max_price_age" in str(exc) and problem in str(exc), str(exc)
            assert "\n" not in str(exc)
        else:
            raise AssertionError(f"{bad} was taken")
    result = CliRunner().invoke(main, ["check", str(jobs("valuation: {max_price_age: 10s}\n"))])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "valuation.max_price_age" in result.output


def test_an_amount_no_exact_context_holds_is_unpriced_and_never_costs_the_runs(
    tmp_path, caplog
) -> None:
    """A snapshot whose value would need more digits than the exact context has (an amount of
    1,999 digits, as an older collector could store) is stored with its run and balances, and
    valued with that asset unpriced: out of the bounds of every number read from outside
    (:mod:`collector.numbers`), never an error that costs the batch."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, "t: {method: Time, every: 1h}")
        run_once(path)
    store = Store.from_url(url)
    try:
        store.upgrade()
        t = datetime(2026, 1, 1, tzinfo=UTC)
        store.write([tick(t - timedelta(seconds=1), "1.111111111111")])
        amount = "1." + "1" * 1998
        (run_id,) = store.write([snapshot(t, {"XXBT": amount})])
    finally:
        store.dispose()
    assert rows(url, f"SELECT amount FROM balances WHERE run_id = {run_id}") == [(amount,)]
    assert rows(url, f"SELECT value, unpriced FROM portfolio_value WHERE run_id = {run_id}") == [
        ("0", "XXBT")
    ]
    assert not [r for r in caplog.records if "portfolio_value not updated" in r.getMessage()]


def test_an_account_empty_from_the_start_is_shown_at_zero(tmp_path) -> None:
    """No balance row was ever stored: its snapshots (the table's rows) still put the account
    on the page, worth 0, rather than "no balance snapshots yet"."""
    from collector.dashboard import Dashboard

    from .test_dashboard import Page

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with FakeKraken(tier=None) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), url, JOBS)
        fake.balance = None  # Kraken's answer for an empty account: no result at all
        run_once(path)
    assert rows(url, "SELECT count(*) FROM balances") == [(0,)], rows(url)
    store = Store.from_url(url)
    try:
        page = Page(Dashboard(load(path), store).render("week"))
    finally:
        store.dispose()
    assert rows(url, "SELECT value FROM portfolio_value") == [("0",)], rows(
        url, "SELECT id, job, method, status, finished_at FROM runs"
    )
    assert page.one("data-account")["data-account"] == "default"
    assert page.one("data-value")["data-value"] == "0"
