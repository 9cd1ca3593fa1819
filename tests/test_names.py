"""One name per thing: the service keeps Kraken's assets and pairs itself, every table holds the
canonical names, orders join their fills, and the views add the names people read; on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, inspect, text

from collector.datasets.market import Trades
from collector.datasets.reference import DELISTED
from collector.jobfile import load
from collector.records import Prepared, RunRecord
from collector.service import REFERENCE_JOBS, Service
from collector.store import Store
from collector.testing.fake_exchange import FakeKraken
from collector.testing.market import PAIRS
from collector.views import VIEWS

from .helpers import wait_for
from .test_service import job_file, rows

PRIVATE = """
o: {method: ClosedOrders, every: 1h}
t: {method: TradesHistory, every: 1h}
l: {method: Ledgers, every: 1h}
"""


def once(path, **service) -> Service:
    svc = Service(load(path), **service)
    try:
        assert svc.run_once(), rows(svc.config.database, "SELECT job, status, error FROM runs")
    finally:
        svc.stop()
    return svc


def test_pairs_and_assets_come_with_no_job_naming_them_and_orders_join_their_fills(
    tmp_path, database_url
) -> None:
    with FakeKraken(tier=None, history={"ledger": 300}) as fake:
        path = job_file(tmp_path, fake, fake.add_key(), database_url, PRIVATE)
        once(path)
        listed, assets = fake.result("AssetPairs"), fake.result("Assets")
        closed, fills = fake.closed_orders(), fake.my_trades()
    stored = rows(
        database_url,
        "SELECT pair, altname, wsname, base, quote, pair_decimals, lot_decimals, ordermin, status "
        "FROM pairs",
    )
    assert {(r[0], *r[1:7], Decimal(str(r[7])), r[8]) for r in stored} == {
        (
            p,
            i["altname"],
            i["wsname"],
            i["base"],
            i["quote"],
            i["pair_decimals"],
            i["lot_decimals"],
            Decimal(i["ordermin"]),
            i["status"],
        )
        for p, i in listed.items()
    }
    stored = rows(
        database_url, "SELECT asset, altname, aclass, decimals, display_decimals FROM assets"
    )
    assert set(map(tuple, stored)) == {
        (a, i["altname"], i["aclass"], i["decimals"], i["display_decimals"])
        for a, i in assets.items()
    }
    # Every order under its canonical name, the one its fills say; descr keeps Kraken's altname.
    orders = rows(database_url, "SELECT txid, pair, descr FROM orders")
    assert len(orders) == len(closed)
    for txid, pair, descr in orders:
        descr = descr if isinstance(descr, dict) else json.loads(descr)
        assert pair in listed and descr["pair"] == listed[pair]["altname"]
        assert pair != descr["pair"] or pair == "SOLUSD"  # newer pairs: canonical = altname
        assert descr == closed[txid]["descr"]
    joined = rows(
        database_url,
        "SELECT count(*) FROM orders o JOIN my_trades t "
        "ON t.account = o.account AND t.ordertxid = o.txid AND t.pair = o.pair",
    )[0][0]
    assert joined == len(fills)
    assert rows(
        database_url, "SELECT count(*) FROM orders WHERE pair NOT IN (SELECT pair FROM pairs)"
    ) == [(0,)]
    runs = rows(database_url, "SELECT job, method, status FROM runs WHERE job LIKE 'collector:%'")
    assert sorted(runs) == sorted((j, m, "ok") for j, m in REFERENCE_JOBS.items())


def test_orders_stored_before_their_pairs_take_the_canonical_name_when_the_pairs_come(
    tmp_path, fake, keypair, database_url
) -> None:
    path = job_file(tmp_path, fake, keypair, database_url, "o: {method: ClosedOrders, every: 1h}")
    fake.inject("kraken_error", method="AssetPairs", error="EGeneral:Invalid arguments", count=9)
    svc = Service(load(path))
    try:
        assert svc.run_once()  # the file's job succeeded; the pairs did not come
    finally:
        svc.stop()
    before = dict(rows(database_url, "SELECT pair, count(*) FROM orders GROUP BY pair"))
    assert "ETHUSD" in before and "XETHZUSD" not in before  # descr.pair, the altname
    fake.clear_faults()
    once(path)  # no pairs yet: the refresh is due, and renames what was stored before
    after = dict(rows(database_url, "SELECT pair, count(*) FROM orders GROUP BY pair"))
    assert after["XETHZUSD"] == before["ETHUSD"] and "ETHUSD" not in after
    assert sum(after.values()) == sum(before.values())


def test_a_refresh_adds_new_pairs_marks_delisted_ones_and_changes_nothing_else(
    tmp_path, fake, keypair, database_url
) -> None:
    path = job_file(tmp_path, fake, keypair, database_url, "t: {method: Time, every: 1h}")
    fake.delist("SOLUSD")  # not listed yet: new to the collector at the second refresh
    svc = Service(load(path))
    pairs_job = next(j for j in svc.reference if j.method == "AssetPairs")
    try:
        svc.execute(pairs_job)
        assert "SOLUSD" not in dict(rows(database_url, "SELECT pair, status FROM pairs"))
        fake.delist("SOLUSD", delisted=False)
        fake.delist("USDTZUSD")
        svc.execute(pairs_job)
        svc.writer.flush()
        status = dict(rows(database_url, "SELECT pair, status FROM pairs"))
        assert status["SOLUSD"] == "online" and status["USDTZUSD"] == DELISTED
        fake.delist("USDTZUSD", delisted=False)
        svc.execute(pairs_job)  # listed again: Kraken's status again
        svc.execute(pairs_job)  # nothing changed: nothing written
        svc.writer.flush()
    finally:
        svc.stop()
    assert dict(rows(database_url, "SELECT pair, status FROM pairs"))["USDTZUSD"] == "online"
    added = [
        r[0]
        for r in rows(
            database_url, "SELECT new_rows FROM runs WHERE job = 'collector:pairs' ORDER BY id"
        )
    ]
    assert added == [
        len(PAIRS) - 1,
        2,
        1,
        0,
    ]  # all but SOLUSD listed; SOLUSD new + USDTZUSD delisted; relisted; nothing


def test_a_job_that_names_assetpairs_with_a_filter_delists_nothing(
    tmp_path, fake, keypair, database_url
) -> None:
    jobs = "p: {method: AssetPairs, params: {pair: XBTUSD}, every: 1h}"
    once(job_file(tmp_path, fake, keypair, database_url, jobs, reference=False))
    assert rows(database_url, "SELECT pair, status FROM pairs") == [("XXBTZUSD", "online")]
    once(job_file(tmp_path, fake, keypair, database_url, jobs))  # and the service's own, whole
    status = dict(rows(database_url, "SELECT pair, status FROM pairs"))
    assert set(status) == set(fake.result("AssetPairs")) and set(status.values()) == {"online"}


@pytest.mark.parametrize("page", [False, True], ids=["dicts", "trades-page"])
def test_rows_carry_the_canonical_name_whatever_spelling_the_answer_used(
    database_url, page
) -> None:
    """A job may name a pair as Kraken takes it (XBTUSD, XXBTZUSD, XBT/USD); should an answer be
    keyed by that spelling, the row still says XXBTZUSD: typed rows, and the stored text a
    Trades page makes (Prepared, read from such an answer)."""
    store = Store.from_url(database_url)
    store.upgrade()
    now = datetime.now(UTC)

    def record(job, method, table, rows_) -> RunRecord:
        run = RunRecord(job, method, {}, now, now, now)
        if page and table == "trades":
            (row,) = rows_
            answer = {
                row["pair"]: [["64000.1", "0.5", now.timestamp(), "b", "l", "", row["trade_id"]]],
                "last": "1",
            }
            rows_ = Trades().page(run, {}, answer, "0").rows
            assert isinstance(rows_, Prepared)
        run.rows = {table: rows_}
        return run

    pair = {
        "pair": "XXBTZUSD",
        "altname": "XBTUSD",
        "wsname": "XBT/USD",
        "base": "XXBT",
        "quote": "ZUSD",
        "pair_decimals": 1,
        "lot_decimals": 8,
        "cost_decimals": 5,
        "ordermin": Decimal("0.0001"),
        "costmin": None,
        "status": "online",
        "updated_at": now,
    }
    trade = {
        "time": now,
        "price": Decimal("64000.1"),
        "volume": Decimal("0.5"),
        "side": "buy",
        "order_type": "limit",
        "misc": "",
    }
    try:
        store.write([record("p", "AssetPairs", "pairs", [pair])])
        for i, name in enumerate(("XBTUSD", "XXBTZUSD", "XBT/USD", "xbtusd", "NOPE/USD")):
            store.write([record("x", "Trades", "trades", [{**trade, "pair": name, "trade_id": i}])])
        # A pair and rows naming it by its altname in one batch, the pair's record first.
        eth = {**pair, "pair": "XETHZUSD", "altname": "ETHUSD", "wsname": "ETH/USD", "base": "XETH"}
        store.write(
            [
                record("p", "AssetPairs", "pairs", [eth]),
                record("x", "Trades", "trades", [{**trade, "pair": "ETHUSD", "trade_id": 9}]),
            ]
        )
    finally:
        store.dispose()
    found = rows(database_url, "SELECT trade_id, pair FROM trades ORDER BY trade_id")
    # unknown: as Kraken said it
    assert [p for _, p in found] == ["XXBTZUSD"] * 4 + ["NOPE/USD", "XETHZUSD"]


def test_the_views_add_symbol_base_and_quote(tmp_path, database_url) -> None:
    with FakeKraken(tier=None, history={"ledger": 120, "public_trades": 30}) as fake:
        jobs = PRIVATE + "tr: {method: Trades, params: {pair: XBT/USD}, since: 1000, every: 1h}\n"
        jobs += "b: {method: Balance, every: 1h}\n"
        once(job_file(tmp_path, fake, fake.add_key(), database_url, jobs))
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        assert set(VIEWS) <= set(inspector.get_view_names())
        for view, (table, added) in VIEWS.items():
            names = [c["name"] for c in inspector.get_columns(view)]
            assert names == [c["name"] for c in inspector.get_columns(table)] + list(added), view
        with engine.connect() as conn:

            def one(sql: str):
                return conn.execute(text(sql)).all()

            assert (
                one("SELECT count(*) FROM trades_named WHERE symbol = 'XBT/USD'")
                == one("SELECT count(*) FROM trades WHERE pair = 'XXBTZUSD'")
                != [(0,)]
            )
            assert set(one("SELECT DISTINCT symbol, base, quote FROM trades_named")) == {
                ("XBT/USD", "XBT", "USD")
            }
            fills = one("SELECT pair, symbol, base, quote FROM my_trades_named GROUP BY 1, 2, 3, 4")
            assert ("XETHZEUR", "ETH/EUR", "ETH", "EUR") in fills and len(fills) == 4
            orders = one("SELECT DISTINCT pair, symbol FROM orders_named")
            assert ("SOLUSD", "SOL/USD") in orders and all(s for _, s in orders)
            legs = one("SELECT DISTINCT asset, symbol FROM ledger_named")
            assert (
                ("XXBT", "XBT") in legs and ("DOT.S", "DOT.S") in legs and ("ZUSD", "USD") in legs
            )
            assert ("ZEUR", "EUR") in one("SELECT asset, symbol FROM balances_named")
    finally:
        engine.dispose()


@pytest.mark.parametrize("reference", [True, False])
def test_the_reference_data_comes_at_start_then_daily_unless_told_not_to(
    tmp_path, fake, keypair, reference
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = job_file(
        tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}", reference=reference
    )
    svc = Service(load(path))
    try:
        svc.start()  # at start: asked once each
        wait_for(
            lambda: len(rows(url, "SELECT id FROM runs WHERE status = 'ok'")) >= 1 + 2 * reference
        )
        scheduled = {j.name: j.every for j in svc.schedule.jobs if j.name in REFERENCE_JOBS}
        for job in svc.reference:  # the hourly check, as the scheduler makes it: not due
            assert svc.run_job(job) is None
    finally:
        svc.stop()
    once(path)  # run --once (cron): only when a day old
    if reference:
        assert {n: e.total_seconds() for n, e in scheduled.items()} == dict.fromkeys(
            REFERENCE_JOBS, 3600.0
        )
        assert (fake.calls["Assets"], fake.calls["AssetPairs"]) == (1, 1)
    else:
        assert scheduled == {} and fake.calls["AssetPairs"] == 0
        assert rows(url, "SELECT count(*) FROM pairs") == [(0,)]
