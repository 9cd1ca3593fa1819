"""``portfolio_value`` is a table the store keeps: any tool reads it, exactly (pandas on a plain
engine, Python's ``sqlite3``, DuckDB over ``collector export``, PostgreSQL through pandas), on a
database the service filled; an emptied account's snapshot is a row worth 0."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
from click.testing import CliRunner
from sqlalchemy import create_engine

from collector.cli import main
from collector.config import load
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
        fake.balance = {}
        run_once(path)
        fake.balance = None
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
        fake.balance = None
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
