"""The page's portfolio values (issue 29): read from ``portfolio_value``, which the store keeps
with the same rules, instead of valuing a year of snapshots again on every render; valued on the
page only what the table lacks, holds out of bounds, or holds in other settings than the job
file's. Either way the page is the same, byte for byte."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import event, text

from collector.dashboard import Dashboard
from collector.jobfile import load
from collector.store import Store
from collector.testing.portfolio import fill_hourly
from collector.valuation import Valuation, refresh

from .test_dashboard import Page

NOW = datetime(2026, 11, 29, tzinfo=UTC)
#: The valuation's own read of the balances: the page ran it when this statement is among its own.
VALUING = "SELECT run_id, job, account, taken_at, asset, amount FROM balances"


def _jobs(tmp_path: Path, url: str, top: str = "") -> Path:
    path = tmp_path / "jobs.yaml"
    secret = base64.b64encode(bytes(64)).decode()
    path.write_text(
        f"database: {url}\nkraken: {{key: k, secret: '{secret}'}}\n{top}jobs:\n"
        "  prices: {method: Ticker, params: {pair: XBTUSD}, every: 1h}\n"
        "  balances: {method: Balance, cron: '0 * * * *'}\n"
    )
    return path


def _render(store: Store, path: Path, range_name: str = "week") -> tuple[str, list[str]]:
    """The page, and the statements it ran."""
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        html = Dashboard(load(path), store, clock=lambda: NOW).render(range_name)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    return html, statements


@pytest.fixture
def month(database_url: str) -> tuple[Store, int]:
    """A month of hourly snapshots, the newest holding an asset without a price (named, with
    its reason, in the table as the store would have written it); and that snapshot's run id."""
    store = Store.from_url(database_url)
    store.upgrade()
    fill_hourly(store.engine, end=NOW, hours=24 * 30, assets=10)
    with store.engine.begin() as conn:
        run_id = conn.execute(
            text("SELECT run_id FROM balances ORDER BY taken_at DESC LIMIT 1")
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO balances (run_id, asset, job, taken_at, amount, account) "
                "SELECT run_id, 'NOPE', job, taken_at, '5', account FROM balances "
                "WHERE run_id = :r AND asset = 'ZUSD'"
            ),
            {"r": run_id},
        )
        refresh(conn, run_ids=[run_id])
    yield store, run_id
    store.dispose()


def test_the_page_reads_the_kept_values_and_is_the_page_valued_in_full(
    tmp_path, database_url, month
) -> None:
    store, newest = month
    path = _jobs(tmp_path, database_url)
    kept, statements = _render(store, path)
    assert not [s for s in statements if VALUING in s]  # nothing valued again
    page = Page(kept)
    with store.engine.connect() as conn:
        (want,) = [v for v in Valuation().values(conn, run_ids=[newest])]
    shown = page.one("data-value")
    assert Decimal(shown["data-value"]) == want.value > 0
    assert page.one("data-unpriced")["data-unpriced"] == "NOPE"
    assert "NOPE: no price at or before the snapshot" in kept
    assert page.one("data-incomplete")["data-incomplete"] == "1"  # the newest: a tick
    # Without the table's rows (a batch whose values failed; rows another tool wrote), the
    # page values every snapshot itself: the same page, byte for byte.
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM portfolio_value"))
    valued, statements = _render(store, path)
    assert [s for s in statements if VALUING in s]
    assert valued == kept


def test_a_value_missing_or_out_of_bounds_in_the_table_is_valued_on_the_page(
    tmp_path, database_url, month
) -> None:
    store, newest = month
    path = _jobs(tmp_path, database_url)
    kept, _ = _render(store, path)
    # Digits past what the exact context makes: never a value the store wrote.
    huge = "1" + "0" * 2_500
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE portfolio_value SET value = :v WHERE run_id = :r"),
            {"v": huge if conn.dialect.name == "sqlite" else Decimal(huge), "r": newest},
        )
        older = conn.execute(
            text("SELECT run_id FROM portfolio_value WHERE run_id < :r ORDER BY run_id DESC"),
            {"r": newest},
        ).first()
        assert older is not None
        conn.execute(text("DELETE FROM portfolio_value WHERE run_id = :r"), {"r": older[0]})
    again, statements = _render(store, path)
    (valuing,) = [s for s in statements if VALUING in s]  # the two snapshots, in one statement
    assert "run_id IN" in valuing
    assert again == kept
    assert huge not in again


def test_the_job_files_other_valuation_settings_value_on_the_page(
    tmp_path, database_url, month
) -> None:
    """The table values with ``collector run``'s settings (USD, a day); a job file that asks for
    another quote or price age is valued on the page, with its own."""
    store, newest = month
    path = _jobs(tmp_path, database_url, top="valuation: {quote: XBT, max_price_age: 2h}\n")
    html, statements = _render(store, path)
    assert [s for s in statements if VALUING in s]
    with store.engine.connect() as conn:
        (want,) = Valuation("XBT", 7200).values(conn, run_ids=[newest])
    page = Page(html)
    assert Decimal(page.one("data-value")["data-value"]) == want.value
    assert "Portfolio value (XBT)" in "".join(page.text)
    kept = Decimal(_kept_value(store, newest))
    assert want.value != kept  # in XBT, not the table's USD


def _kept_value(store: Store, run_id: int) -> str:
    with store.engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT value FROM portfolio_value WHERE run_id = :r"), {"r": run_id}
            ).scalar()
        )


def test_an_emptied_account_is_still_worth_zero_from_the_table(tmp_path) -> None:
    """An ``ok`` Balance run without rows is a snapshot worth 0: the table's row is its only
    mark, and the page shows it as the latest value."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.from_url(url)
    try:
        store.upgrade()
        fill_hourly(store.engine, end=NOW - timedelta(hours=1), hours=24, assets=10)
        with store.engine.begin() as conn:
            at = f"{NOW:%Y-%m-%d %H:%M:%S.%f}+00:00"
            conn.execute(
                text(
                    "INSERT INTO runs (id, job, method, params, scheduled_at, started_at, "
                    "finished_at, status, attempts, pages, new_rows) "
                    "VALUES (900000, 'balances', 'Balance', '{}', :at, :at, :at, 'ok', 1, 1, 0)"
                ),
                {"at": at},
            )
            refresh(conn, run_ids=[900000])
        html, _ = _render(store, _jobs(tmp_path, url), "day")
    finally:
        store.dispose()
    page = Page(html)
    assert Decimal(page.one("data-value")["data-value"]) == 0
    assert "at 2026-11-29 00:00 UTC" in html


def test_the_price_charts_are_read_in_statements_that_do_not_grow_with_them(tmp_path) -> None:
    """A page of 10 price charts and one of 22 run the same number of statements: the pairs'
    sources, counts and prices are read for all of them at once (before: four statements a
    chart)."""
    from sqlalchemy import insert

    from collector.datasets.market import ticker
    from collector.schema import runs as runs_table

    counts, drawn = [], []
    for extra in (2, 14):
        folder = tmp_path / str(extra)
        folder.mkdir()
        url = f"sqlite:///{folder / 'c.db'}"
        store = Store.from_url(url)
        try:
            store.upgrade()
            fill_hourly(store.engine, end=NOW, hours=24, assets=10)
            at = NOW - timedelta(minutes=30)
            with store.engine.begin() as conn:
                run = {"id": 1000, "job": "all", "method": "Ticker", "params": {}, "status": "ok"}
                run |= {"scheduled_at": at, "started_at": at, "finished_at": at, "attempts": 1}
                conn.execute(insert(runs_table), [run | {"pages": 1, "new_rows": extra}])
                price = {k: Decimal(i + 1) for i, k in enumerate(("ask", "bid", "last", "open"))}
                price |= {"low_24h": 1, "high_24h": 2, "volume_24h": 9, "vwap_24h": 1}
                conn.execute(
                    insert(ticker),
                    [
                        {"run_id": 1000, "pair": f"AAA{i:04d}USD", "taken_at": at, "trades_24h": 1}
                        | price
                        for i in range(extra)
                    ],
                )
            html, statements = _render(store, _jobs(folder, url), "day")
        finally:
            store.dispose()
        counts.append(len(statements))
        drawn.append(html.count('class="card pair"'))
        assert 'data-price="3"' in html  # an extra pair's last price, drawn
    assert drawn == [8 + 2, 8 + 14]  # fill_hourly's 8 pairs and the extra ones
    assert counts[0] == counts[1], counts


def test_a_range_without_snapshots_shows_the_latest_value_kept(
    tmp_path, database_url, month
) -> None:
    """Three days after the last snapshot, the range ``day`` holds none: the page shows the
    account's latest value, read from the table by account, as valuing it would."""
    store, newest = month
    path = _jobs(tmp_path, database_url)
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    later = NOW + timedelta(days=3)
    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        html = Dashboard(load(path), store, clock=lambda: later).render("day")
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert not [s for s in statements if VALUING in s]
    with store.engine.connect() as conn:
        (want,) = Valuation().values(conn, run_ids=[newest])
    page = Page(html)
    assert Decimal(page.one("data-value")["data-value"]) == want.value
    assert page.one("data-unpriced")["data-unpriced"] == "NOPE"
    assert "at 2026-11-29 00:00 UTC" in html  # the newest snapshot's time, before the range
