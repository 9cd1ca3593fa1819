"""What real Kraken ledgers do that a naive check would call a break, or miss (docs/kraken-ledger.md
says where each case comes from): rows written as the collector stores them, checked by
collector.verify on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from collector import verify
from collector.jobfile import Job
from collector.records import RunRecord
from collector.store import Store

T0 = datetime(2026, 11, 2, 10, 0, 0, tzinfo=UTC)
SCOPE = verify.Scope("main", ("l",), ("t",), ("o",), from_start=True)


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store.from_url(f"sqlite:///{tmp_path / 'v.db'}")
    s.upgrade()
    yield s
    s.dispose()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def leg(
    lid: str,
    refid: str,
    s: float,
    asset: str,
    amount: str,
    fee: str,
    balance: str | None,
    kind: str = "trade",
) -> dict[str, Any]:
    return {
        "ledger_id": lid,
        "refid": refid,
        "time": at(s),
        "type": kind,
        "subtype": "",
        "aclass": "currency",
        "asset": asset,
        "amount": Decimal(amount),
        "fee": Decimal(fee),
        "balance": None if balance is None else Decimal(balance),
    }


def fill(
    txid: str,
    s: float,
    side: str,
    pair: str,
    price: str,
    cost: str,
    fee: str,
    vol: str,
    order: str = "O1",
) -> dict[str, Any]:
    return {
        "txid": txid,
        "ordertxid": order,
        "postxid": "TKH2SE-M7IF5-CFI7LT",
        "pair": pair,
        "time": at(s),
        "type": side,
        "ordertype": "limit",
        "price": Decimal(price),
        "cost": Decimal(cost),
        "fee": Decimal(fee),
        "vol": Decimal(vol),
        "margin": None,
        "leverage": None,
        "misc": "",
        "trade_id": None,
        "maker": None,
    }


def order(txid: str, s: float, cost: str, fee: str, vol: str, status: str = "closed") -> dict:
    return {
        "txid": txid,
        "status": status,
        "opentm": at(s - 60),
        "closetm": at(s),
        "pair": "XBTUSD",
        "type": "buy",
        "ordertype": "limit",
        "price": None,
        "vol": Decimal(vol),
        "vol_exec": Decimal(vol),
        "cost": Decimal(cost),
        "fee": Decimal(fee),
        "descr": {},
    }


def write(store: Store, *, done: float = 3600, ledger=(), trades=(), orders=(), snapshots=()):
    """The rows, with the three histories' cursors done at ``T0 + done``."""

    def run(job: str, method: str, dataset: str | None, rows: dict, finished=T0) -> RunRecord:
        return RunRecord(
            job=job,
            method=method,
            params={},
            scheduled_at=finished,
            started_at=finished,
            finished_at=finished,
            rows=rows,
            dataset=dataset,
            cursor={"done": at(done).timestamp(), "window": None} if dataset else None,
            account="main",
        )

    records = [
        run("l", "Ledgers", "ledger", {"ledger": list(ledger)}),
        run("t", "TradesHistory", "my_trades", {"my_trades": list(trades)}),
        run("o", "ClosedOrders", "orders", {"orders": list(orders)}),
    ]
    for s, amounts in snapshots:
        rows = [
            {"asset": a, "amount": Decimal(x), "job": "b", "taken_at": at(s)}
            for a, x in amounts.items()
        ]
        records.append(run("b", "Balance", None, {"balances": rows}, finished=at(s)))
    store.write(records)


def check(store: Store, scope: verify.Scope = SCOPE) -> verify.Report:
    (report,) = verify.verify(store.engine, [scope])
    return report


def messages(report: verify.Report) -> list[str]:
    return [f.message for f in report.findings]


def test_a_sale_in_real_kraken_rows_verifies(store) -> None:
    # ccxt #8204: 0.4 ETH sold for EUR; the legs 1.1 ms apart, the ledger's EUR with 4 decimals
    # where the trade has 5, the fee on the quote leg.
    write(
        store,
        ledger=[
            leg("L0", "Q0", 0, "XETH", "4.6110080200", "0", "4.6110080200", "deposit"),
            leg("LE", "TP", 10.1835, "XETH", "-0.4000000000", "0.0000000000", "4.2110080200"),
            leg("LV", "TP", 10.1846, "ZEUR", "68.4269", "0.1642", "68.2627"),
        ],
        trades=[fill("TP", 10.1835, "sell", "XETHZEUR", "171.06736", "68.42694", "0.16422", "0.4")],
        orders=[order("O1", 10.1846, "68.42694", "0.16422", "0.4")],
    )
    report = check(store)
    assert report.ok, messages(report)
    assert (report.assets, report.entries, report.fills, report.orders) == (2, 3, 1, 1)


def test_fees_in_base_in_fee_credits_and_legs_split_across_wallets(store) -> None:
    write(
        store,
        ledger=[
            leg("L0", "Q0", 0, "XETH", "40", "0", "40", "deposit"),
            leg("L1", "Q1", 0, "ZUSD", "1000", "0", "1000", "deposit"),
            # fcib: a sale's fee taken in ETH; the trade still states it in USD
            leg("L2", "T1", 5, "XETH", "-1.0000000000", "0.0026000000", "38.9974000000"),
            leg("L3", "T1", 5, "ZUSD", "3100.0000", "0.0000", "4100.0000"),
            # paid with fee credits: a KFEE entry of amount 0
            leg("L4", "T2", 6, "XETH", "0.1000000000", "0", "39.0974000000"),
            leg("L5", "T2", 6, "ZUSD", "-310.0000", "0", "3790.0000"),
            leg("L6", "T2", 6, "KFEE", "0.00", "80.60", "919.40"),
            # one sale filled from two wallets: two ETH legs (BittyTax #499)
            leg("L7", "T3", 7, "XETH", "-29.8600000000", "0", "9.2374000000"),
            leg("L8", "T3", 7, "XETH", "-1.5500000000", "0", "7.6874000000"),
            leg("L9", "T3", 7, "ZUSD", "97371.0000", "253.1646", "100907.8354"),
            leg("LK", "QK", 1, "KFEE", "1000.00", "0", "1000.00", "deposit"),
        ],
        trades=[
            fill("T1", 5, "sell", "XETHZUSD", "3100", "3100.00000", "8.06000", "1.0", "O1"),
            fill("T2", 6, "buy", "XETHZUSD", "3100", "310.00000", "0.80600", "0.1", "O2"),
            fill("T3", 7, "sell", "XETHZUSD", "3100", "97371.00000", "253.16460", "31.41", "O3"),
            # a margin fill: no spot legs (its margin entries are the chain's)
            {
                **fill("T4", 8, "buy", "XXBTZUSD", "64000", "640.0", "1.7", "0.01", "O4"),
                "margin": Decimal("128.0"),
            },
        ],
    )
    report = check(store)
    assert report.ok, messages(report)
    assert report.fills == 4


def test_missing_legs_a_leg_without_a_fill_and_an_order_that_does_not_add_up(store) -> None:
    write(
        store,
        ledger=[
            leg("L0", "Q0", 0, "ZUSD", "1000", "0", "1000", "deposit"),
            leg("L1", "T9", 5, "XXBT", "0.0100000000", "0", "0.0100000000"),
            leg("L2", "T9", 5, "ZUSD", "-640.0000", "1.6640", "358.3360"),
        ],
        trades=[
            fill("T1", 3, "buy", "XXBTZUSD", "64000", "640.00000", "1.66400", "0.01000000", "O1"),
            fill("T2", 4, "buy", "XXBTZUSD", "64000", "640.00000", "1.66400", "0.01000000", "O1"),
        ],
        orders=[
            order("O1", 4, "1280.00000", "3.32800", "0.03000000"),
            order("O2", 4, "0.00000", "0.00000", "0.00000000", "canceled"),
        ],
    )
    report = check(store)
    assert sorted(messages(report)) == sorted(
        [
            "fill T1 (buy 0.01000000 XXBTZUSD at 2026-11-02 10:00:03, cost 640.00000, fee "
            "1.66400): no ledger entries with its txid as refid",
            "fill T2 (buy 0.01000000 XXBTZUSD at 2026-11-02 10:00:04, cost 640.00000, fee "
            "1.66400): "
            "no ledger entries with its txid as refid",
            "ledger entry L1 (XXBT at 2026-11-02 10:00:05) is trade T9, which is not in my_trades",
            "ledger entry L2 (ZUSD at 2026-11-02 10:00:05) is trade T9, which is not in my_trades",
            "order O1 (closed XBTUSD at 2026-11-02 10:00:04): vol_exec 0.03000000 but its 2 fills "
            "add up to 0.02000000",
        ]
    )


def test_a_missing_first_entry_of_a_ledger_read_from_the_start(store) -> None:
    write(store, ledger=[leg("L1", "Q1", 5, "DOT", "2", "0", "7", "deposit")])
    (found,) = check(store).findings
    assert found.message == (
        "DOT: between the start (balance 0) and L1 2026-11-02 10:00:05 (balance 7, amount 2, "
        "fee 0): 5 unaccounted"
    )
    # From a later `since`, the chain starts with the first entry collected.
    later = verify.Scope("main", ("l",), ("t",), ("o",), from_start=False)
    assert check(store, later).ok


def test_entries_without_a_balance_and_staking_transfers(store) -> None:
    # CoinTaxman #97: a deposit announced without a balance, then booked; staking moves as a
    # withdrawal/deposit pair without balances, then the two transfers with them.
    write(
        store,
        ledger=[
            leg("L0", "QC", 0, "ZEUR", "500", "0", None, "deposit"),
            leg("L1", "QC", 100, "ZEUR", "500", "0", "500", "deposit"),
            leg("L2", "Q2", 200, "DOT", "10.4166666600", "0", "10.4166666600", "deposit"),
            leg("L3", "BU", 300, "DOT", "-10.4166666600", "0", None, "withdrawal"),
            leg("L4", "RU", 320, "DOT.S", "10.4166666600", "0", None, "deposit"),
            leg("L5", "BU", 328, "DOT", "-10.4166666600", "0", "0.0000000000", "transfer"),
            leg("L6", "RU", 346, "DOT.S", "10.4166666600", "0", "10.4166666600", "transfer"),
        ],
    )
    report = check(store)
    assert report.ok, messages(report)
    assert (report.entries, report.unbalanced) == (4, 3)
    assert report.json()["entries_without_balance"] == 3


def test_snapshots_match_within_the_window_and_name_what_differs(store) -> None:
    write(
        store,
        ledger=[
            leg("L0", "Q0", 100, "XXBT", "1.5", "0", "1.5", "deposit"),
            leg("L1", "Q1", 200, "XXBT", "0.5", "0", "2.0", "deposit"),
        ],
        snapshots=[
            (50, {"XXBT": "0", "SOL": "0"}),  # before anything: 0, and an asset never seen
            (197, {"XXBT": "2.0"}),  # Kraken had booked L1 when it answered: within the window
            (203, {"XXBT": "1.5"}),  # the answer from before L1: within the window too
            (300, {"XXBT": "2.1", "SOL": "5"}),  # wrong, and an asset the ledger never had
            (3550, {"XXBT": "2.0"}),  # after the ledger's horizon: not yet verifiable
        ],
    )
    report = check(store)
    assert sorted(messages(report)) == [
        "snapshot of job b (run 7, 2026-11-02 10:05:00): SOL 5, the ledger 0: difference 5",
        "snapshot of job b (run 7, 2026-11-02 10:05:00): XXBT 2.1, the ledger 2.0: difference 0.1",
    ]
    assert (report.snapshots, report.pending_snapshots) == (6, 1)
    assert [(f.dataset, f.subject, f.amount) for f in report.findings] == [
        ("balances", "XXBT", Decimal("0.1")),
        ("balances", "SOL", Decimal("5")),
    ]


def test_scopes_say_which_jobs_collect_a_whole_history() -> None:
    jobs = [
        Job("l", "Ledgers", account="main"),
        Job("lx", "Ledgers", params={"asset": "XBT"}, account="main"),
        Job("t", "TradesHistory", account="main", since=1_700_000_000),
        Job("o", "ClosedOrders", params={"userref": 7}, account="main"),
        Job("l2", "Ledgers", account="other", since=1_700_000_000),
        Job("p", "Ticker", params={"pair": "XBTUSD"}),
    ]
    main, other = verify.scopes(jobs)
    assert (main.ledger_jobs, main.trades_jobs, main.orders_jobs) == (("l",), ("t",), ())
    assert main.from_start and main.trades_since == datetime.fromtimestamp(1_700_000_000, UTC)
    assert main.notes == (
        "job lx collects part of ledger (asset): not used to verify",
        "job o collects part of orders (userref): not used to verify",
    )
    assert not other.from_start and other.job == "l2"
    (pruned,) = verify.scopes(jobs, {"ledger": 86400}, account="main")
    assert not pruned.from_start


def test_sqlite_walks_each_asset_by_its_index_not_a_sorted_copy(store) -> None:
    # The walk's ORDER BY asset, time is ix_ledger_asset_time's order; the account's equality
    # must not make SQLite pick ix_ledger_refid and sort every entry in a temporary tree (twice
    # the walk's time on 200,000 entries). Both the whole check and the incremental one.
    write(
        store,
        ledger=[
            leg("L0", "Q0", 0, "XETH", "40", "0", "40", "deposit"),
            leg("L1", "Q1", 5, "ZEUR", "10", "0", "10", "deposit"),
        ],
        snapshots=[(100, {"XETH": "40", "ZEUR": "10"})],
    )
    seen: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, params, context, executemany) -> None:
        seen.append((statement, params))

    from sqlalchemy import event

    event.listen(store.engine, "before_cursor_execute", grab)
    try:
        assert check(store).ok
        scope = verify.Scope("main", ("l",), from_start=True)
        assert verify.advance(store.engine, scope).ok
    finally:
        event.remove(store.engine, "before_cursor_execute", grab)
    plans = {}
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        for statement, params in seen:
            if "ORDER BY ledger.asset, ledger.time" in statement or (
                "FROM balances" in statement and "ORDER BY balances.taken_at" in statement
            ):
                plan = " / ".join(
                    r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, params)
                )
                plans[statement] = plan
    assert len(plans) == 2, plans
    for statement, plan in plans.items():
        assert "TEMP B-TREE" not in plan, (statement, plan)
        assert "ix_ledger_asset_time" in plan or "ix_balances_asset_taken_at" in plan, plan
