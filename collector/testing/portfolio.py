"""A long history written straight into a database: hourly balance snapshots of several assets and
a ticker of their pairs, for the dashboard's test and ``bench/bench_dashboard.py``.

The rows are what the service would have stored (runs, ``balances``, ``ticker``, ``assets``,
``pairs``), written in a few large inserts instead of 17,520 runs' worth of calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert

from ..datasets.balances import table as balances
from ..datasets.market import ticker
from ..datasets.reference import assets as assets_table
from ..datasets.reference import pairs as pairs_table
from ..schema import runs
from ..valuation import catch_up

#: (asset, altname, how it is priced: a USD pair, a pair in XBT, its own variant, or the quote),
#: amount held, the pair's price at the start.
HOLDINGS: tuple[tuple[str, str, str | None, Decimal, Decimal], ...] = (
    ("ZUSD", "USD", None, Decimal("12500.25"), Decimal(1)),
    ("XXBT", "XBT", "XXBTZUSD", Decimal("0.8125"), Decimal("64000.0")),
    ("XETH", "ETH", "XETHZUSD", Decimal("6.5"), Decimal("3100.00")),
    ("SOL", "SOL", "SOLUSD", Decimal("140"), Decimal("145.00")),
    ("ADA", "ADA", "ADAUSD", Decimal("9000"), Decimal("0.450000")),
    ("LINK", "LINK", "LINKUSD", Decimal("320"), Decimal("14.50000")),
    ("XLTC", "LTC", "XLTCZUSD", Decimal("25"), Decimal("80.00")),
    ("DOT", "DOT", "DOTUSD", Decimal("600"), Decimal("6.5000")),
    ("DOT.S", "DOT.S", None, Decimal("450.5"), Decimal(0)),  # priced as DOT
    ("ATOM", "ATOM", "ATOMXBT", Decimal("400"), Decimal("0.00012500")),  # through XBT
)
CHUNK = 5_000


def _price(start: Decimal, hour: int, salt: int) -> Decimal:
    exponent = start.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) else 2
    factor = 1 + 0.2 * math.sin(hour / 500 + salt) + 0.01 * math.sin(hour / 3 + salt)
    return (start * Decimal(repr(factor))).quantize(Decimal(1).scaleb(-places))


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_hourly(engine: Engine, *, end: datetime, hours: int, assets: int = 10) -> int:
    """``hours`` hourly snapshots of the first ``assets`` of :data:`HOLDINGS` up to ``end``
    (and, a minute before each, a ticker of their pairs); returns the snapshots written. The
    database must be migrated and empty."""
    held = HOLDINGS[:assets]
    first = end - timedelta(hours=hours - 1)
    quoted = [(a, p, start) for a, _, p, _, start in held if p]
    altnames = {a: alt for a, alt, *_ in held}
    reference_run = 1
    with engine.begin() as conn:
        conn.execute(
            insert(runs),
            [_run(reference_run, "collector:pairs", "AssetPairs", first - timedelta(hours=1))],
        )
        conn.execute(
            insert(assets_table),
            [
                {
                    "asset": code,
                    "altname": alt,
                    "aclass": "currency",
                    "decimals": 4 if code == "ZUSD" else 10,
                    "display_decimals": 2 if code == "ZUSD" else 5,
                    "status": "enabled",
                    "updated_at": first,
                    "run_id": reference_run,
                }
                for code, alt, *_ in held
            ],
        )
        conn.execute(
            insert(pairs_table),
            [
                {
                    "pair": pair,
                    "altname": alt + ("XBT" if pair.endswith("XBT") else "USD"),
                    "wsname": f"{alt}/{'XBT' if pair.endswith('XBT') else 'USD'}",
                    "base": code,
                    "quote": "XXBT" if pair.endswith("XBT") else "ZUSD",
                    "pair_decimals": 5,
                    "lot_decimals": 8,
                    "status": "online",
                    "updated_at": first,
                    "run_id": reference_run,
                }
                for code, pair, _ in quoted
                for alt in [altnames[code]]
            ],
        )

        def all_runs() -> Iterator[dict[str, Any]]:
            for hour in range(hours):
                at = first + timedelta(hours=hour)
                yield _run(2 + 2 * hour, "prices", "Ticker", at - timedelta(minutes=1))
                yield _run(3 + 2 * hour, "balances", "Balance", at)

        def all_prices() -> Iterator[dict[str, Any]]:
            for hour in range(hours):
                at = first + timedelta(hours=hour) - timedelta(minutes=1)
                for salt, (_, pair, start) in enumerate(quoted):
                    price = _price(start, hour, salt)
                    yield {
                        "run_id": 2 + 2 * hour,
                        "pair": pair,
                        "taken_at": at,
                        "ask": price,
                        "bid": price,
                        "last": price,
                        "volume_24h": Decimal("1000.5"),
                        "vwap_24h": price,
                        "trades_24h": 5000,
                        "low_24h": price,
                        "high_24h": price,
                        "open": price,
                    }

        def all_balances() -> Iterator[dict[str, Any]]:
            for hour in range(hours):
                at = first + timedelta(hours=hour)
                for code, _, _, amount, _ in held:
                    yield {
                        "run_id": 3 + 2 * hour,
                        "asset": code,
                        "job": "balances",
                        "taken_at": at,
                        # Cash grows by a cent an hour; the rest moves with its price.
                        "amount": amount + Decimal(hour) / 100 if code == "ZUSD" else amount,
                        "account": "default",
                    }

        for table, rows in ((runs, all_runs()), (ticker, all_prices()), (balances, all_balances())):
            for batch in _chunks(rows):
                conn.execute(insert(table), batch)
        # Written as the store would have: each snapshot's value in portfolio_value.
        catch_up(conn)
    return hours


def _run(run_id: int, job: str, method: str, at: datetime) -> dict[str, Any]:
    return {
        "id": run_id,
        "job": job,
        "method": method,
        "params": {},
        "scheduled_at": at,
        "started_at": at,
        "finished_at": at,
        "status": "ok",
        "attempts": 1,
        "pages": 1,
        "new_rows": 1,
    }
