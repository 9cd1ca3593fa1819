"""The view ``portfolio_value`` and the dashboard's :class:`Valuation` apply one set of rules: the
migrations keep the SQL the modules write, and on rows full of Kraken's odd cases (variants of
assets, quote aliases, ties, a pair with candles only, several accounts, a snapshot before any
price) the two agree, on SQLite and PostgreSQL, with a value worked out by hand."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, text

from collector.datasets.balances import table as balances
from collector.datasets.market import ohlc, ticker
from collector.datasets.reference import assets, pairs
from collector.schema import runs
from collector.store import Store
from collector.valuation import Valuation, refresh, remember_quote

VERSIONS = Path(__file__).parent.parent / "migrations" / "versions"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def migration(name: str) -> Any:
    (path,) = VERSIONS.glob(f"{name}_*.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Rows:
    def __init__(self, conn: Connection) -> None:
        self.conn, self.id = conn, 0

    def run(self, method: str, at: datetime) -> int:
        self.id += 1
        self.conn.execute(
            insert(runs),
            [
                dict(
                    id=self.id,
                    job=method.lower(),
                    method=method,
                    params={},
                    scheduled_at=at,
                    started_at=at,
                    finished_at=at,
                    status="ok",
                    attempts=1,
                    pages=1,
                    new_rows=1,
                )
            ],
        )
        return self.id

    def tick(self, pair: str, minutes: int, last: str) -> None:
        at, v = T0 + timedelta(minutes=minutes), Decimal(last)
        prices = dict(ask=v, bid=v, last=v, volume_24h=v, vwap_24h=v, low_24h=v, high_24h=v, open=v)
        run_id = self.run("Ticker", at)
        self.conn.execute(
            insert(ticker), [dict(run_id=run_id, pair=pair, taken_at=at, trades_24h=1, **prices)]
        )

    def candle(
        self, pair: str, interval: int, minutes: int, close: str, final: bool = True
    ) -> None:
        start, v = T0 + timedelta(minutes=minutes), Decimal(close)
        candle = dict(open=v, high=v, low=v, close=v, vwap=v, volume=v, count=1, final=final)
        run_id = self.run("OHLC", start)
        self.conn.execute(
            insert(ohlc), [dict(pair=pair, interval=interval, time=start, run_id=run_id, **candle)]
        )

    def snapshot(self, minutes: int, held: dict[str, str], account: str = "default") -> int:
        at = T0 + timedelta(minutes=minutes)
        run_id = self.run("Balance", at)
        self.conn.execute(
            insert(balances),
            [
                dict(
                    run_id=run_id,
                    asset=a,
                    job="balance",
                    taken_at=at,
                    amount=Decimal(x),
                    account=account,
                )
                for a, x in held.items()
            ],
        )
        return run_id


HELD = {
    "XXBT": "0.5",
    "ZUSD": "-100.25",
    "ZEUR": "200",
    "XETH": "0",
    "DOT": "10",
    "DOT28.S": "3",
    "ETH2.S": "1.5",
    "XBT.M": "0.1",
    "USD.HOLD": "5",
    "ATOM": "7",
    "OLD": "4",
    "KFEE": "100",
    "NEW": "0",
    "ETH.F": "2",
    "DOT.S": "1",
    ".S": "1",
    "ZUSD.HOLD": "1",
    "XXBT.B": "0.01",
}


def fill(conn: Connection, quote: str) -> dict[str, int]:
    rows = Rows(conn)
    ref = rows.run("AssetPairs", T0 - timedelta(days=1))
    for code, alt in [
        ("XXBT", "XBT"),
        ("ZUSD", "USD"),
        ("ZEUR", "EUR"),
        ("XETH", "ETH"),
        ("DOT", "DOT"),
        ("DOT.S", "DOT.S"),
        ("ETH2.S", "ETH2.S"),
        ("XBT.M", "XBT.M"),
        ("ATOM", "ATOM"),
        ("OLD", "OLD"),
    ]:
        conn.execute(
            insert(assets),
            [
                dict(
                    asset=code,
                    altname=alt,
                    aclass="currency",
                    decimals=8,
                    display_decimals=4,
                    status="enabled",
                    updated_at=T0,
                    run_id=ref,
                )
            ],
        )
    for name, base, quoted, status in [
        ("XXBTZUSD", "XXBT", "ZUSD", "online"),
        ("XXBTZEUR", "XXBT", "ZEUR", "online"),
        ("XETHZUSD", "XETH", "ZUSD", "online"),
        ("XETHXXBT", "XETH", "XXBT", "online"),
        ("DOTXBT", "DOT", "XXBT", "online"),
        ("DOTUSD", "DOT", "ZUSD", "online"),
        ("ATOMXBT", "ATOM", "XXBT", "online"),
        ("ZEURZUSD", "ZEUR", "ZUSD", "online"),
        ("OLDUSD", "OLD", "ZUSD", "delisted"),
    ]:
        conn.execute(
            insert(pairs),
            [
                dict(
                    pair=name,
                    altname=name,
                    wsname=name,
                    base=base,
                    quote=quoted,
                    pair_decimals=5,
                    lot_decimals=8,
                    status=status,
                    updated_at=T0,
                    run_id=ref,
                )
            ],
        )
    rows.tick("XXBTZUSD", 10, "60000.1")
    rows.tick("XXBTZEUR", 10, "55000.3")
    rows.tick("XETHZUSD", 30, "3000.25")
    rows.tick("XETHXXBT", 30, "0.05")
    rows.tick("DOTXBT", 20, "0.0001")
    rows.tick("ATOMXBT", 20, "0.00012")
    rows.tick("ZEURZUSD", 20, "1.1")
    rows.tick("OLDUSD", 5, "2.5")
    # DOTUSD has candles only: an hour's and a minute's closing at 60 (the shorter wins), and
    # an open one that never counts.
    rows.candle("DOTUSD", 60, 0, "6.5")
    rows.candle("DOTUSD", 1, 59, "6.6")
    rows.candle("DOTUSD", 1, 90, "6.7", final=False)
    # XBT at 60: a ticker and a candle's close at the same time (the ticker wins).
    rows.candle("XXBTZUSD", 5, 55, "60001")
    rows.tick("XXBTZUSD", 60, "60002")
    remember_quote(conn, quote)
    return {
        "before": rows.snapshot(0, HELD),
        "other": rows.snapshot(30, HELD, account="b"),
        "tie": rows.snapshot(60, HELD),
        "same time": rows.snapshot(60, {"XXBT": "1"}, account="c"),
        "later": rows.snapshot(3 * 24 * 60, HELD),
    }


def test_the_view_and_the_dashboard_agree_on_krakens_odd_cases(database_url) -> None:
    store = Store.from_url(database_url)
    store.upgrade()
    try:
        found: dict[str, dict[int, tuple[Decimal, tuple[str, ...]]]] = {}
        why: dict[str, dict[Any, str | None]] = {}
        for quote in ("USD", "EUR", "XBT"):
            with store.engine.begin() as conn:
                for table in ("balances", "ticker", "ohlc", "pairs", "assets", "runs"):
                    conn.execute(text(f"DELETE FROM {table}"))
                ids = fill(conn, quote)
                # written here as the store writes them (rows inserted by hand: all at once)
                assert refresh(conn, everything=True) == len(ids)
            with store.engine.connect() as conn:
                view = {
                    r.run_id: (Decimal(str(r.value)), tuple(sorted((r.unpriced or "").split(","))))
                    for r in conn.execute(text("SELECT * FROM portfolio_value"))
                }
                values = Valuation(quote).values(conn)
                python = {v.run_id: (v.value, v.unpriced) for v in values}
                why[quote] = {v.run_id: v.reasons for v in values}
            view = {k: (v, () if u == ("",) else u) for k, (v, u) in view.items()}
            assert view == python, quote
            found[quote] = {name: python[i] for name, i in ids.items()}
            why[quote] = {name: why[quote][i] for name, i in ids.items()}
    finally:
        store.dispose()
    # By hand at 60: XBT 0.5 at 60002 (the ticker's), USD -100.25, EUR 200 x 1.1, DOT 10, DOT28.S
    # 3 and DOT.S 1 at 6.6 (the minute's candle), ETH2.S 1.5 and ETH.F 2 at 3000.25, XBT.M 0.1 and
    # XXBT.B 0.01 as XBT, USD.HOLD 5 and ZUSD.HOLD 1, ATOM 7 at 0.00012 x 60002, OLD 4 at its
    # last 2.5 (delisted); KFEE and .S have no price, XETH and NEW none needed.
    assert found["USD"]["tie"] == (Decimal("47380.64668"), (".S", "KFEE"))
    assert found["USD"]["same time"] == (Decimal("60002"), ())
    before = found["USD"]["before"]  # only what is USD itself
    assert before[0] == Decimal("-94.25") and "XXBT" in before[1] and "ZEUR" in before[1]
    # In XBT the XBT variants are 1 and nothing goes through XBT; in EUR, USD is not divided.
    assert found["XBT"]["same time"] == (Decimal(1), ())
    assert "ZUSD" in found["EUR"]["tie"][1] and "USD.HOLD" in found["EUR"]["tie"][1]
    # Three days on, every price is older than valuation.max_price_age (a day): only what is
    # USD itself is valued, and the page and the table say why the rest is not.
    later = found["USD"]["later"]
    assert later[0] == Decimal("-94.25") and "XXBT" in later[1] and "DOT" in later[1]
    assert (
        "XXBT: newest price 2026-01-01 01:00:00 UTC is older than valuation.max_price_age (1d)"
        in str(why["USD"]["later"])
    )
    assert "KFEE: no price at or before the snapshot" in str(why["USD"]["tie"])
