"""The fake is one coherent account: fills, ledger legs, orders and balances agree, as on Kraken.

The verification tests rely on it, so it is checked here on its own, against its answers."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest
import requests

import collector
from collector.testing.fake_exchange import PAIRS, FakeKraken

T0 = 1_800_000_000.0


@pytest.fixture
def account():
    clock = [T0]
    fake = FakeKraken(tier=None, history={"ledger": 700}, now=lambda: clock[0])
    fake.grow("trades", 7)
    fake.grow("closed", 5)
    yield fake
    fake.close()


def test_every_fill_has_its_two_legs_and_the_quote_leg_carries_the_fee(account) -> None:
    ledger, fills = account.ledger(), account.my_trades()
    legs: dict[str, list[dict]] = {}
    for entry in ledger.values():
        if entry["type"] == "trade":
            legs.setdefault(entry["refid"], []).append(entry)
    assert set(legs) == set(fills)  # every leg is a fill's, every fill has legs
    for txid, fill in fills.items():
        _, base, quote, _, _ = PAIRS[fill["pair"]]
        by_asset = {e["asset"]: e for e in legs[txid]}
        assert sorted(by_asset) == sorted([base, quote]) and len(legs[txid]) == 2
        sign = 1 if fill["type"] == "buy" else -1
        assert Decimal(by_asset[base]["amount"]) == sign * Decimal(fill["vol"])
        assert Decimal(by_asset[base]["fee"]) == 0
        assert Decimal(by_asset[quote]["amount"]) == -sign * Decimal(fill["cost"])
        assert Decimal(by_asset[quote]["fee"]) == Decimal(fill["fee"]) > 0
        assert by_asset[base]["time"] == by_asset[quote]["time"] == fill["time"]


def test_closed_orders_are_the_sums_of_their_fills(account) -> None:
    fills: dict[str, list[dict]] = {}
    for fill in account.my_trades().values():
        fills.setdefault(fill["ordertxid"], []).append(fill)
    orders = account.closed_orders()
    assert set(fills) <= set(orders)
    statuses = Counter(o["status"] for o in orders.values())
    assert statuses["closed"] == len(fills) and statuses["canceled"] > 0
    for txid, order in orders.items():
        mine = fills.get(txid, [])
        for field in ("cost", "fee", "vol_exec"):
            total = sum(
                (Decimal(f["vol" if field == "vol_exec" else field]) for f in mine), Decimal(0)
            )
            assert Decimal(order[field]) == total, (txid, field)
        if mine:
            assert order["closetm"] == max(f["time"] for f in mine)
            assert order["oflags"] == "fciq"  # the fee in quote: the quote leg carries it
    assert any(len(m) == 2 for m in fills.values())  # some orders fill twice at once


def test_the_account_stakes_earns_withdraws_and_balance_is_the_ledgers(account) -> None:
    ledger = account.ledger()
    kinds = Counter((e["type"], e["subtype"], e["asset"]) for e in ledger.values())
    for kind in [
        ("deposit", "", "ZUSD"),
        ("withdrawal", "", "ZUSD"),
        ("transfer", "spottostaking", "DOT"),
        ("transfer", "stakingfromspot", "DOT.S"),
        ("transfer", "stakingtospot", "DOT.S"),
        ("transfer", "spotfromstaking", "DOT"),
        ("staking", "", "DOT.S"),
        ("earn", "autoallocation", "XETH"),
        ("earn", "autoallocation", "ETH.F"),
        ("earn", "reward", "ETH.F"),
    ]:
        assert kinds[kind] > 0, kind
    assert all(Decimal(e["fee"]) > 0 for e in ledger.values() if e["type"] == "withdrawal")
    latest = {}
    for entry in ledger.values():  # newest first; within a time, any entry of the asset's last
        latest.setdefault(entry["asset"], set()).add(entry["balance"])
    balance = account.result("Balance")
    assert set(balance) == set(latest)
    assert all(balance[a] in latest[a] for a in balance)
    assert {a: v["balance"] for a, v in account.result("BalanceEx").items()} == balance


def test_hide_and_offset_make_the_account_disagree_with_itself() -> None:
    with FakeKraken(tier=None, history={"ledger": 60}) as fake:
        api = collector.API(*fake.add_key())
        api.uri = fake.url
        victim = list(fake.ledger())[30]
        before = api.call("Ledgers", {"ofs": 0}).result["count"]
        fake.hide(victim)
        seen: set[str] = set()
        while len(seen) < before - 1:
            seen |= set(api.call("Ledgers", {"ofs": len(seen)}).result["ledger"])
        assert victim not in seen and len(seen) == before - 1
        assert api.call("Ledgers").result["count"] == before - 1
        assert victim in fake.ledger()  # the truth still has it
        xbt = Decimal(api.call("Balance").result["XXBT"])
        fake.offset_balance("XXBT", "0.5")
        assert Decimal(api.call("Balance").result["XXBT"]) == xbt + Decimal("0.5")
        assert Decimal(api.call("BalanceEx").result["XXBT"]["balance"]) == xbt + Decimal("0.5")
        # the same from outside, for a fake run from the command line
        answer = requests.post(f"{fake.url}/_fake/offset?asset=XXBT&amount=-0.5", timeout=5)
        assert answer.json() == {"ok": True}
        assert Decimal(api.call("Balance").result["XXBT"]) == xbt
        other = list(fake.ledger())[31]
        assert requests.post(f"{fake.url}/_fake/hide?id={other}", timeout=5).ok
        assert api.call("Ledgers").result["count"] == before - 2
        bad = requests.post(f"{fake.url}/_fake/hide?id=LNOPE", timeout=5)
        assert bad.status_code == 400 and "no ledger entry 'LNOPE'" in bad.text
        bad = requests.post(f"{fake.url}/_fake/offset?asset=XXBT&amount=lots", timeout=5)
        assert bad.status_code == 400 and "not a number" in bad.text


def test_growth_rates_keep_the_account_coherent() -> None:
    clock = [T0]
    fake = FakeKraken(
        tier=None,
        history={"ledger": 0},
        growth={"ledger": 2.0, "trades": 0.5},
        now=lambda: clock[0],
    )
    clock[0] += 40
    fills, ledger = fake.my_trades(), fake.ledger()
    own = sum(1 for e in ledger.values() if e["type"] != "trade" or e["refid"] not in fills)
    assert len(fills) >= 20  # 20 from the trades rate, more from the ledger's own cycle
    # The ledger's own growth, an entry at a time: 80 deposits and rewards; and the deposits that
    # fund the first fills of an empty account.
    assert len(ledger) >= 80 + 2 * 20 and 80 <= own <= 83
    kinds = Counter((e["type"], e["asset"]) for e in ledger.values() if e["refid"] not in fills)
    assert kinds[("staking", "DOT.S")] >= 10 and kinds[("earn", "ETH.F")] >= 10
    trade_legs = Counter(e["refid"] for e in ledger.values() if e["type"] == "trade")
    assert set(trade_legs) == set(fills) and set(trade_legs.values()) == {2}
    assert all(Decimal(e["balance"]) >= 0 for e in ledger.values())
    fake.close()
