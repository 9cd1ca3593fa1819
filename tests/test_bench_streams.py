"""What bench/bench_streams.py relies on (its figures are messages *stored* per second): its
messages are Kraken's v2 shapes that collector reads without a refusal, and its collector side
stores every message's rows. Counted here on a small workload, real SQLite through the Writer."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from types import ModuleType

from collector.writer import Writer

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_streams.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_streams", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_streams", module)
    spec.loader.exec_module(module)
    return module


def test_generated_pairs_and_messages_are_krakens_shapes() -> None:
    b = bench()
    pairs = b.make_pairs(750)
    assert len({p.name for p in pairs}) == len({p.symbol for p in pairs}) == 750
    symbols = b.symbols_of(pairs)
    assert symbols.pair("BTC/USD") == "XXBTZUSD" and len(symbols) == 750
    market = b.Market(pairs)
    last: dict[str, int] = {}
    for i in range(500):
        p = market.pick()
        message = json.loads(market.trade(p, 1.8e9 + i)[0], parse_float=Decimal)
        for t in message["data"]:
            assert t["trade_id"] > last.get(t["symbol"], 0)  # ids increase per pair
            last[t["symbol"]] = t["trade_id"]
            assert -t["price"].as_tuple().exponent == p.decimals  # the pair's precision
            assert t["timestamp"].endswith("Z")
    assert len(last) > 100  # the tail trades too


def test_collector_side_stores_every_message(tmp_path: Path) -> None:
    b = bench()
    pairs = b.make_pairs(50)
    symbols = b.symbols_of(pairs)
    precisions = {p.symbol: p.decimals for p in pairs}
    trades, routes, entries = b.trade_workload(pairs, 300)
    market = b.Market(pairs, seed=3)
    tickers = [(market.ticker(p, 1.7e9), "ticker", p.symbol) for p in pairs]
    capture = b.capture_messages()
    assert len(capture) == 510

    store = b.fresh_store(str(tmp_path), pairs)
    writer = Writer(store)
    writer.start()
    try:
        on_message, finish, counts, feeds = b.collector_handler(
            writer, symbols, precisions=precisions
        )
        messages = [
            *((raw, "trade", symbol) for raw, symbol in zip(trades, routes, strict=True)),
            *tickers,
            *((raw, "book", "BTC/USD") for raw in capture),
        ]
        for raw, channel, symbol in messages:
            on_message(raw, channel, symbol)
        finish()
        assert writer.flush(30)
    finally:
        assert writer.close(30)
    stored = b.stored_counts(store)
    store.dispose()
    assert counts.refused == [] and counts.mismatches == 0
    # Every message went through the recorder's feeds into a run handed to the writer.
    assert counts.submitted == counts.messages == len(trades) + len(tickers) + len(capture)
    assert stored["trades"] == counts.trades == entries  # every trade, once
    assert stored["ticker"] == counts.tickers == len(pairs)  # one batch: each pair's latest
    book = feeds["book"].books["BTC/USD"]  # every update applied and its checksum verified
    assert book.synced and book.updates == len(capture) - 1
    # The feed's first book snapshot at once, then one every snapshot_every (a minute) of the
    # clock: 20 rows each (depth 10, two sides).
    assert stored["book"] == counts.book_rows == 20
    by_pair: dict[str, int] = defaultdict(int)
    for raw in trades:
        for t in json.loads(raw)["data"]:
            by_pair[t["symbol"]] += 1
    assert sum(by_pair.values()) == entries
