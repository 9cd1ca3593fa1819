"""The fake's histories behave as Kraken's: stable ids, growth, paging pitfalls, exact windows.

Every test drives the data time by hand (``now=``), so growth and candle closes happen exactly
between two calls, never by sleeping.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

import collector
from collector.testing.fake_exchange import PAGE_SIZE, FakeKraken

T0 = 1_800_000_000.0  # a whole number of weeks after the epoch's Thursday: candles align


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exchange(clock: Clock) -> Iterator[Callable[..., tuple[FakeKraken, collector.API]]]:
    """Start a fake with the given knobs on the manual clock; returns it and a client."""
    started: list[FakeKraken] = []

    def start(**knobs: Any) -> tuple[FakeKraken, collector.API]:
        fake = FakeKraken(tier=None, now=clock, **knobs).start()
        started.append(fake)
        api = collector.API(*fake.add_key(), timeout=10)
        api.uri = fake.url
        return fake, api

    yield start
    for fake in started:
        fake.stop()


def page_all(
    api: collector.API,
    method: str,
    key: str,
    params: dict[str, Any] | None = None,
    between: Callable[[], None] = lambda: None,
) -> tuple[list[str], list[int]]:
    """Page ``method`` with ``ofs`` += received until a short page (as kraken-api.md says: with
    steady growth and no frozen ``end``, "until empty" would never end); ``between`` runs after
    every full page. Returns the ids in the order received and the ``count`` of every page."""
    ids: list[str] = []
    counts: list[int] = []
    while True:
        page = api.call(method, {**(params or {}), "ofs": len(ids)}).result
        counts.append(page["count"])
        ids.extend(page[key])
        if len(page[key]) < PAGE_SIZE:
            return ids, counts
        between()


def test_paging_with_a_frozen_end_while_the_ledger_grows_is_exact(exchange, clock) -> None:
    fake, api = exchange(history={"ledger": 300}, growth={"ledger": 0.5})
    end = clock()
    expected = set(fake.ledger())  # everything up to `end`, which is now

    def grow() -> None:
        clock.t += 20  # 10 new entries at 0.5 a second, newer than `end`

    ids, counts = page_all(api, "Ledgers", "ledger", {"end": end}, between=grow)
    assert len(ids) == len(set(ids))  # no duplicates...
    assert set(ids) == expected  # ...none missing, nothing newer than `end`
    assert counts == [300] * len(counts)  # the frozen window never changed size
    assert len(fake.ledger()) == 300 + 10 * 6  # while the history really grew: 6 full pages


def test_paging_without_a_frozen_end_repeats_entries_as_the_ledger_grows(exchange, clock) -> None:
    """Kraken's pitfall: entries arriving between pages push older ones onto later pages."""
    fake, api = exchange(history={"ledger": 300}, growth={"ledger": 0.5})
    before = set(fake.ledger())

    def grow() -> None:
        clock.t += 20

    ids, counts = page_all(api, "Ledgers", "ledger", between=grow)
    pages = len(counts)
    assert pages == 8  # page k sees the history 10k entries longer; the 8th is short
    assert counts == [300 + 10 * k for k in range(pages)]
    # every page after the first repeats the last 10 entries of the one before it...
    assert len(ids) - len(set(ids)) == 10 * (pages - 1)
    for k in range(1, pages):
        assert ids[PAGE_SIZE * k : PAGE_SIZE * k + 10] == ids[PAGE_SIZE * k - 10 : PAGE_SIZE * k]
    assert set(ids) == before  # ...and the entries that arrived meanwhile were never seen


@pytest.mark.parametrize(
    ("method", "key", "field", "truth"),
    [
        ("Ledgers", "ledger", "time", FakeKraken.ledger),
        ("TradesHistory", "trades", "time", FakeKraken.my_trades),
        ("ClosedOrders", "closed", "closetm", FakeKraken.closed_orders),
    ],
)
def test_start_is_exclusive_and_end_inclusive_at_shared_times(
    exchange, method, key, field, truth
) -> None:
    fake, api = exchange()
    entries = truth(fake)
    times = [e[field] for e in entries.values()]
    assert times == sorted(times, reverse=True)
    shared = [t for t in set(times) if times.count(t) > 1]
    assert shared, "some entries must share a time, as on Kraken"
    for t in sorted(shared)[:3]:
        same = {i for i, e in entries.items() if e[field] == t}
        empty = api.call(method, {"start": t, "end": t}).result  # (t, t] holds nothing
        assert empty[key] == {} and empty["count"] == 0
        at = api.call(method, {"start": t - 0.0001, "end": t}).result
        assert set(at[key]) == same and at["count"] == len(same)
        after = api.call(method, {"start": t}).result
        assert not same & set(after[key])
        assert after["count"] == sum(1 for x in times if x > t)
    # a window inside the history: count is its size, pages hold exactly its entries
    start, end = times[90], times[10]
    window = {i for i, e in entries.items() if start < e[field] <= end}
    ids, counts = page_all(api, method, key, {"start": start, "end": end})
    assert ids == [i for i in entries if i in window]  # newest first, in the truth's order
    assert counts == [len(window)] * len(counts) and len(window) >= 79


def test_id_valued_or_bad_window_arguments_are_refused(exchange) -> None:
    fake, api = exchange()
    some_id = next(iter(fake.ledger()))
    for params, error in [
        ({"start": some_id}, "EGeneral:Invalid arguments:start"),
        ({"end": "nan"}, "EGeneral:Invalid arguments:end"),
        ({"ofs": -1}, "EGeneral:Invalid arguments:ofs"),
    ]:
        assert api.query_private("Ledgers", params)["error"] == [error]


def chain_in_some_order(entries: list[dict[str, Any]], before: Decimal) -> Decimal | None:
    """The balance after ``entries`` (one asset, one time) applied in an order in which every
    entry's balance is the one before it + amount - fee; None when no order chains."""
    for order in itertools.permutations(entries):
        balance = before
        for e in order:
            if Decimal(e["balance"]) != balance + Decimal(e["amount"]) - Decimal(e["fee"]):
                break
            balance = Decimal(e["balance"])
        else:
            return balance
    return None


def test_ledger_balances_run_per_asset_and_filters_count(exchange) -> None:
    fake, api = exchange(history={"ledger": 500})
    fake.grow("ledger", 30)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for entry in reversed(fake.ledger().values()):  # oldest first
        groups.setdefault((entry["asset"], entry["time"]), []).append(entry)
    running: dict[str, Decimal] = {}
    out_of_order = 0
    for (asset, _), group in groups.items():  # time order within each asset
        # The account opens empty: every chain starts at 0.
        after = chain_in_some_order(group, running.get(asset, Decimal(0)))
        assert after is not None, group
        out_of_order += chain_in_some_order(group[:1], running.get(asset, Decimal(0))) is None
        running[asset] = after
        assert after >= 0
    assert out_of_order > 0  # some times list a later entry first: order alone proves nothing
    assert set(running) == {"ZUSD", "ZEUR", "XXBT", "XETH", "DOT", "DOT.S", "ETH.F"}
    assert {a: Decimal(v) for a, v in api.call("Balance").result.items()} == running
    btc = {i for i, e in fake.ledger().items() if e["asset"] == "XXBT"}
    page = api.call("Ledgers", {"asset": "XBT"}).result
    assert page["count"] == len(btc) and set(page["ledger"]) <= btc
    trades = {i for i, e in fake.ledger().items() if e["type"] == "trade"}
    assert api.call("Ledgers", {"type": "trade"}).result["count"] == len(trades)


def test_trades_and_orders_are_internally_consistent(exchange) -> None:
    fake, _ = exchange()
    for trade in fake.my_trades().values():
        price, vol, cost = (Decimal(trade[f]) for f in ("price", "vol", "cost"))
        assert cost == price * vol
        assert isinstance(trade["trade_id"], int) and isinstance(trade["maker"], bool)
        assert trade["type"] in ("buy", "sell")
    for order in [*fake.closed_orders().values(), *fake.open_orders().values()]:
        descr = order["descr"]
        side, vol, alt, _, kind, price = descr["order"].split()
        assert (side, vol, alt, kind, price) == (
            descr["type"],
            order["vol"],
            descr["pair"],
            descr["ordertype"],
            descr["price"],
        )


def test_grow_appends_entries_at_the_data_time_on_top(exchange, clock) -> None:
    fake, api = exchange()
    clock.t += 5.5
    new = fake.grow("ledger", 75)
    page = api.call("Ledgers").result
    assert page["count"] == 360 + 75
    assert list(page["ledger"]) == list(reversed(new))[:PAGE_SIZE]  # the newest appended last
    assert {e["time"] for e in page["ledger"].values()} == {T0 + 5.5}
    closed = len(fake.closed_orders())
    assert len(fake.grow("closed", 2)) == 2 and len(fake.closed_orders()) == closed + 2
    fills = len(fake.my_trades())
    txids = fake.grow("trades", 3)
    assert len(txids) == 3 and len(fake.my_trades()) == fills + 3
    legs = [e for e in fake.ledger().values() if e["refid"] in txids]
    assert len(legs) == 2 * 3  # each fill with its two legs
    with pytest.raises(ValueError, match="unknown history"):
        fake.grow("deposits")


def test_ledger_size_is_still_accepted() -> None:
    fake = FakeKraken(ledger_size=7)
    methods = ("Ledgers", "TradesHistory", "ClosedOrders")
    # A deposit, a fill (two legs), an order filled twice at once (four legs): 7 entries, 3 fills.
    assert [fake.result(m)["count"] for m in methods] == [7, 3, 2]
    assert len(fake.public_trades("XBTUSD")) == 120
    fake.close()
    with pytest.raises(ValueError, match="follow from its ledger"):
        FakeKraken(history={"trades": 10})


def test_a_ten_thousand_entry_ledger_pages_completely(exchange, clock) -> None:
    fake, api = exchange(history={"ledger": 10_000}, growth={"ledger": 1.0})
    end = clock()
    expected = set(fake.ledger())

    def grow() -> None:
        clock.t += 1.0

    ids, counts = page_all(api, "Ledgers", "ledger", {"end": end}, between=grow)
    assert len(ids) == len(set(ids)) == 10_000 and set(ids) == expected
    assert counts == [10_000] * 201
    assert len(fake.ledger()) == 10_000 + 200


# -- public Trades ---------------------------------------------------------------------------


def test_trades_since_last_chaining_over_a_growing_history_sees_each_trade_once(
    exchange, clock
) -> None:
    fake, api = exchange(history={"public_trades": 2500}, growth={"public_trades": 3.0})
    got: list[list[Any]] = []
    since = "0"
    while True:
        answer = api.call("Trades", {"pair": "XBTUSD", "since": since}).result
        rows = answer["XXBTZUSD"]
        got.extend(rows)
        assert isinstance(answer["last"], str)
        if rows:
            assert abs(int(answer["last"]) / 1e9 - rows[-1][2]) < 1e-6
        since = answer["last"]
        if len(rows) < 1000:  # a short page: nothing more is waiting
            break
        clock.t += 100  # 300 more trades arrive before the next call
    truth = fake.public_trades("XBTUSD")
    assert len(truth) == 2500 + 300 * 3  # three full pages, then the rest: it really grew
    assert got == truth
    assert [row[6] for row in got] == list(range(1, len(truth) + 1))
    # `since` newer than everything: nothing, and `since` echoed
    assert api.call("Trades", {"pair": "XBTUSD", "since": since}).result == {
        "XXBTZUSD": [],
        "last": since,
    }


def test_trades_since_in_seconds_count_and_the_latest(exchange) -> None:
    fake, api = exchange(history={"public_trades": 50})
    truth = fake.public_trades("ETHUSD")
    middle = int(truth[25][2])  # whole seconds, as Kraken still accepts
    rows = api.call("Trades", {"pair": "ETHUSD", "since": middle}).result["XETHZUSD"]
    assert rows == [r for r in truth if r[2] > middle]
    latest = api.call("Trades", {"pair": "ETHUSD", "count": 7}).result
    assert latest["XETHZUSD"] == truth[-7:]
    for count in (0, 1001):
        assert api.query_public("Trades", {"pair": "ETHUSD", "count": count})["error"] == [
            "EGeneral:Invalid arguments:count"
        ]


# -- OHLC ------------------------------------------------------------------------------------


def test_ohlc_since_is_exclusive_capped_and_ends_with_the_open_candle(exchange, clock) -> None:
    fake, api = exchange()
    clock.t = T0 + 100  # 100 s into a 5-minute candle
    open_at = int(T0)

    def ohlc(**params: Any) -> dict[str, Any]:
        return api.call("OHLC", {"pair": "XBTUSD", "interval": 5, **params}).result

    full = ohlc()
    assert len(full["XXBTZUSD"]) == 720 == len(ohlc(since=0)["XXBTZUSD"])
    assert full["XXBTZUSD"][-1][0] == open_at and full["last"] == open_at - 300
    assert full["XXBTZUSD"][:-1] == fake.candles("XBTUSD", 5)
    some = full["XXBTZUSD"][700][0]
    after = ohlc(since=some)["XXBTZUSD"]
    assert [r[0] for r in after] == [some + 300 * k for k in range(1, 20)]  # `since` left out
    assert ohlc(since=open_at)["XXBTZUSD"] == [full["XXBTZUSD"][-1]]  # the open one, always
    assert ohlc(since=open_at + 10**6)["XXBTZUSD"] == [full["XXBTZUSD"][-1]]
    row = full["XXBTZUSD"][-2]
    assert isinstance(row[7], int) and all(isinstance(v, str) for v in row[1:7])
    assert Decimal(row[3]) <= Decimal(row[5]) <= Decimal(row[2])  # low <= vwap <= high


def test_an_open_candle_moves_then_is_served_with_its_final_values(exchange, clock) -> None:
    fake, api = exchange()
    open_at = int(T0)

    def served(t: int) -> list[Any]:
        rows = api.call("OHLC", {"pair": "XBTUSD", "interval": 5, "since": t - 1}).result
        return next(r for r in rows["XXBTZUSD"] if r[0] == t)

    clock.t = T0 + 60
    early = served(open_at)
    clock.t = T0 + 240
    later = served(open_at)
    assert early != later and Decimal(early[6]) < Decimal(later[6])  # volume accumulates
    clock.t = T0 + 300  # the candle closes; the next one opens
    final = served(open_at)
    assert final == fake.candle("XBTUSD", 5, open_at) != later
    assert api.call("OHLC", {"pair": "XBTUSD", "interval": 5}).result["last"] == open_at
    clock.t = T0 + 3000
    assert served(open_at) == final  # a closed candle never changes


# -- Spread ----------------------------------------------------------------------------------


def test_spread_since_last_and_stable_rows(exchange, clock) -> None:
    _, api = exchange()

    def spread(**params: Any) -> dict[str, Any]:
        return api.call("Spread", {"pair": "XBTUSD", **params}).result

    first = spread()
    rows = first["XXBTZUSD"]
    assert 200 <= len(rows) < 203  # whole seconds, about the last 200 rows
    times = [r[0] for r in rows]
    assert times == sorted(times) and first["last"] == times[-1] == int(T0)
    assert len(set(times)) < len(times)  # several rows share a second
    assert all(isinstance(t, int) for t in times)
    cut = times[len(times) // 2]
    assert spread(since=cut)["XXBTZUSD"] == [r for r in rows if r[0] > cut]
    assert spread(since=first["last"]) == {"XXBTZUSD": [], "last": first["last"]}
    clock.t += 30
    later = spread(since=first["last"])
    assert later["XXBTZUSD"] and all(r[0] > first["last"] for r in later["XXBTZUSD"])
    assert later["last"] == later["XXBTZUSD"][-1][0] <= int(T0) + 30
    again = spread()["XXBTZUSD"]
    assert [r for r in again if r[0] <= int(T0)] == [r for r in rows if r[0] >= again[0][0]]
