"""pykrakenapi, a widely used wrapper, must read the fake's orders, trades and ledger as Kraken's.

It turns answers into pandas frames and casts fields (``descr.price2`` to float, ``closetm`` to
int...), so a missing or misshapen field fails here the way it would for a user. It runs on top of
krakenex and of ``collector.API`` (the drop-in): both must work.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import krakenex
import pytest
from pykrakenapi import KrakenAPI

import collector
from collector.testing.fake_exchange import PAGE_SIZE, FakeKraken


@pytest.fixture(params=["krakenex", "collector"])
def kraken(request: pytest.FixtureRequest, fake: FakeKraken, keypair) -> Iterator[KrakenAPI]:
    api = (krakenex.API if request.param == "krakenex" else collector.API)(*keypair)
    api.uri = fake.url
    # tier "None": no client-side call-rate limiter; retry=0 and crl_sleep=0: an error raises at
    # once instead of being slept on and retried, so a broken answer fails fast.
    yield KrakenAPI(api, tier="None", retry=0, crl_sleep=0)
    api.session.close()


def test_open_orders(kraken: KrakenAPI, fake: FakeKraken) -> None:
    frame = kraken.get_open_orders()
    truth = fake.open_orders()
    assert sorted(frame.index) == sorted(truth)
    for txid, order in truth.items():
        row = frame.loc[txid]
        assert row["status"] == "open"
        assert (row["vol_exec"], row["cost"], row["fee"], row["price"]) == (0, 0, 0, 0)
        assert row["vol"] == float(order["vol"]) > 0
        assert row["descr_type"] == order["descr"]["type"]
        assert row["descr_order"].split()[0] == row["descr_type"]  # "buy 0.01 ... " is a buy
        assert row["descr_price"] == float(order["descr"]["price"])
        assert row["descr_price2"] == 0
        assert row["opentm"] == int(order["opentm"])


def test_closed_orders(kraken: KrakenAPI, fake: FakeKraken) -> None:
    frame, count = kraken.get_closed_orders()
    truth = fake.closed_orders()
    assert count == len(truth) == 109  # the closed orders of 360 ledger entries
    assert list(frame.index) == list(truth)[:PAGE_SIZE]  # newest close first
    for txid in frame.index:
        row, order = frame.loc[txid], truth[txid]
        assert row["closetm"] == int(order["closetm"]) >= row["opentm"]
        assert row["status"] in ("closed", "canceled")
        assert row["descr_order"].split()[0] == row["descr_type"] == order["descr"]["type"]
        filled = row["status"] == "closed"
        assert row["vol_exec"] == (row["vol"] if filled else 0)
        assert row["reason"] == (None if filled else "User requested")
        assert Decimal(order["cost"]) == (
            Decimal(order["descr"]["price"]) * Decimal(order["vol"]) if filled else 0
        )


def test_trades_history_and_ledger(kraken: KrakenAPI, fake: FakeKraken) -> None:
    trades, count = kraken.get_trades_history()
    truth = fake.my_trades()
    assert count == len(truth)
    # pykrakenapi re-sorts by time, which reorders the trades sharing one time: compare sets.
    assert set(trades["txid"]) == set(list(truth)[:PAGE_SIZE])
    for _, row in trades.iterrows():
        trade = truth[row["txid"]]
        assert (row["price"], row["vol"]) == (float(trade["price"]), float(trade["vol"]))
        assert (row["trade_id"], row["maker"]) == (trade["trade_id"], trade["maker"])
    ledger, count = kraken.get_ledgers_info()
    entries = fake.ledger()
    assert count == len(entries)
    assert set(ledger["ledger_id"]) == set(list(entries)[:PAGE_SIZE])
    for _, row in ledger.iterrows():
        entry = entries[row["ledger_id"]]
        assert (row["asset"], row["amount"]) == (entry["asset"], float(entry["amount"]))
        assert row["balance"] == float(entry["balance"])
