"""The private histories (Ledgers, TradesHistory, ClosedOrders): complete, and each entry once.

Kraken serves them newest first, 50 a page from ``ofs``, with ``count`` the size of the window
``(start, end]``. New entries arriving while a run pages would shift every later page, so a run
**freezes** ``end`` at its start and pages its window ``(start, end]`` back with ``ofs``; when every
page is in, the cursor's ``done`` mark moves to that ``end``. The next window starts a little
before ``done`` (``HISTORY_OVERLAP``: entries can share a time, and Kraken's clock is not ours),
and the entries seen twice are stored once (upserts by id).

Progress is stored with each page (the window and its ``ofs``), so a run cut short (kill -9, the
database down, a failed page) continues from the last stored page. If ``count`` changes between
pages (an entry appeared inside the window, or a filter's count is off), the window is paged again
from the top; entries already stored stay stored once.

The cursor: ``{"done": <seconds> | None, "window": {"start", "end", "ofs", "count", "repaged"} |
None}``. ``done`` None means "from the job's ``since``" (``all`` by default: the whole history).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Boolean, Column, Index, String, Table

from .. import defaults
from ..records import RunRecord
from ..schema import ExactDecimal, JSONType, RunId, UTCDateTime, metadata
from .base import Dataset, Page, bad, decimal, epoch, mapping, text, timestamp

#: Entries in a full page (Kraken's).
PAGE = 50
#: A window whose count keeps changing is paged again at most this often in one run.
MAX_REPAGES = 3


class History(Dataset):
    """The paging shared by the private histories; subclasses say where the entries are and what
    a row holds."""

    incremental = True
    history = True
    prunable = True
    time_column = "time"
    #: the key of the entries in the answer (``ledger``, ``trades``, ``closed``)
    entries: ClassVar[str]
    #: parameters every call sends (ClosedOrders windows by close time)
    fixed: ClassVar[dict[str, str]] = {}

    def entry(self, record: RunRecord, entry_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def cursor_time(self, cursor: Any) -> datetime | None:
        """The cursor's ``done`` mark: every entry up to it is stored (None before a first
        window is done)."""
        return epoch(cursor.get("done")) if isinstance(cursor, dict) else None

    def first(self, job: Any, cursor: Any, now: datetime) -> tuple[dict[str, Any], Any]:
        cursor = dict(cursor or {"done": None, "window": None})
        window = cursor.get("window")
        if window is None:
            done = cursor.get("done")
            if done is not None:
                start = max(0.0, float(done) - defaults.HISTORY_OVERLAP)
            else:
                start = job.since  # None: everything Kraken has
            # Whole seconds (Kraken's schema says integer), settled: entries still arriving would
            # move the count under us. What comes after it is the next run's.
            end = math.floor(now.timestamp() - defaults.HISTORY_SETTLE)
            window = {"start": start, "end": end, "ofs": 0, "count": None, "repaged": 0}
            cursor["window"] = window
        return self._request(job.params, window), cursor

    def _request(self, params: Mapping[str, Any], window: Mapping[str, Any]) -> dict[str, Any]:
        out = {**params, **self.fixed, "end": window["end"], "ofs": window["ofs"]}
        if window["start"] is not None:
            out["start"] = _seconds(window["start"])
        return out

    def page(self, record: RunRecord, sent: Mapping[str, Any], result: Any, cursor: Any) -> Page:
        answer = mapping(record, result, "result")
        entries = mapping(record, answer.get(self.entries, {}) or {}, self.entries)
        count = answer.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 10**12:
            raise bad(record, "answer has no count")
        rows = [self.entry(record, str(k), mapping(record, v, k)) for k, v in entries.items()]
        window = dict(cursor["window"])
        params = {k: v for k, v in sent.items() if k not in ("start", "end", "ofs")}
        if window["count"] is not None and count != window["count"]:
            # The window changed under us: page it again from the top (what we have stays once).
            if window["repaged"] >= MAX_REPAGES:
                raise bad(record, f"count changed while paging ({window['count']} -> {count})")
            window.update(ofs=0, count=count, repaged=window["repaged"] + 1)
            cursor = {**cursor, "window": window}
            return Page(rows, cursor, self._request(params, window))
        window["count"] = count
        window["ofs"] += len(rows)
        if not rows or len(rows) < PAGE or window["ofs"] >= count:
            return Page(rows, {"done": window["end"], "window": None})
        cursor = {**cursor, "window": window}
        return Page(rows, cursor, self._request(params, window))


def _seconds(value: Any) -> Any:
    """A window bound as Kraken takes it: whole seconds as an int, else the float."""
    number = float(value)
    return int(number) if number.is_integer() else number


# -- the three tables ---------------------------------------------------------------------------

ledger = Table(
    "ledger",
    metadata,
    # An entry is its account's: two accounts can't share an id, but the key says whose (0006).
    Column("account", String(64), primary_key=True),
    Column("ledger_id", String(64), primary_key=True),
    Column("refid", String(64), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("type", String(32), nullable=False),
    Column("subtype", String(32), nullable=False),
    Column("aclass", String(32), nullable=False),
    Column("asset", String(32), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
    Column("fee", ExactDecimal(), nullable=False),
    Column("balance", ExactDecimal()),
    Column("run_id", RunId, nullable=False),
)
Index("ix_ledger_asset_time", ledger.c.asset, ledger.c.time)
Index("ix_ledger_time", ledger.c.time)
# A trade's legs (refid = its txid), for verification and for people (0007).
Index("ix_ledger_refid", ledger.c.account, ledger.c.refid)


class Ledger(History):
    name = "ledger"
    table = ledger
    methods = frozenset({"Ledgers"})
    key = ("account", "ledger_id")
    entries = "ledger"

    def entry(self, record: RunRecord, entry_id: str, e: dict[str, Any]) -> dict[str, Any]:
        return {
            "ledger_id": entry_id[:64],
            "refid": text(record, e.get("refid"), "refid", 64),
            "time": timestamp(record, e.get("time"), f"time of {entry_id}"),
            "type": text(record, e.get("type"), "type", 32),
            "subtype": text(record, e.get("subtype"), "subtype", 32),
            "aclass": text(record, e.get("aclass"), "aclass", 32),
            "asset": text(record, e.get("asset"), "asset", 32),
            "amount": decimal(record, e.get("amount"), f"amount of {entry_id}"),
            "fee": decimal(record, e.get("fee"), f"fee of {entry_id}"),
            "balance": decimal(record, e.get("balance"), f"balance of {entry_id}", optional=True),
        }


my_trades = Table(
    "my_trades",
    metadata,
    # An entry is its account's: two accounts can't share an id, but the key says whose (0006).
    Column("account", String(64), primary_key=True),
    Column("txid", String(64), primary_key=True),
    Column("ordertxid", String(64), nullable=False),
    Column("postxid", String(64), nullable=False),
    Column("pair", String(32), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("type", String(8), nullable=False),
    Column("ordertype", String(32), nullable=False),
    Column("price", ExactDecimal(), nullable=False),
    Column("cost", ExactDecimal(), nullable=False),
    Column("fee", ExactDecimal(), nullable=False),
    Column("vol", ExactDecimal(), nullable=False),
    Column("margin", ExactDecimal()),
    Column("leverage", String(16)),
    Column("misc", String(200), nullable=False),
    Column("trade_id", BigInteger),
    Column("maker", Boolean),
    Column("run_id", RunId, nullable=False),
)
Index("ix_my_trades_pair_time", my_trades.c.pair, my_trades.c.time)
# An order's fills, for verification and for people (0007).
Index("ix_my_trades_ordertxid", my_trades.c.account, my_trades.c.ordertxid)


class MyTrades(History):
    name = "my_trades"
    table = my_trades
    methods = frozenset({"TradesHistory"})
    key = ("account", "txid")
    entries = "trades"
    pair_column = "pair"

    def entry(self, record: RunRecord, txid: str, e: dict[str, Any]) -> dict[str, Any]:
        trade_id = e.get("trade_id")
        maker = e.get("maker")
        return {
            "txid": txid[:64],
            "ordertxid": text(record, e.get("ordertxid"), "ordertxid", 64),
            "postxid": text(record, e.get("postxid"), "postxid", 64),
            "pair": text(record, e.get("pair"), "pair", 32),
            "time": timestamp(record, e.get("time"), f"time of {txid}"),
            "type": text(record, e.get("type"), "type", 8),
            "ordertype": text(record, e.get("ordertype"), "ordertype", 32),
            "price": decimal(record, e.get("price"), f"price of {txid}"),
            "cost": decimal(record, e.get("cost"), f"cost of {txid}"),
            "fee": decimal(record, e.get("fee"), f"fee of {txid}"),
            "vol": decimal(record, e.get("vol"), f"vol of {txid}"),
            "margin": decimal(record, e.get("margin"), f"margin of {txid}", optional=True),
            "leverage": None if e.get("leverage") is None else text(record, e["leverage"], "", 16),
            "misc": text(record, e.get("misc"), "misc"),
            "trade_id": None
            if isinstance(trade_id, bool) or not isinstance(trade_id, int)
            else trade_id,
            "maker": maker if isinstance(maker, bool) else None,
        }


orders = Table(
    "orders",
    metadata,
    # An entry is its account's: two accounts can't share an id, but the key says whose (0006).
    Column("account", String(64), primary_key=True),
    Column("txid", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("opentm", UTCDateTime(), nullable=False),
    Column("closetm", UTCDateTime()),
    Column("pair", String(32), nullable=False),
    Column("type", String(8), nullable=False),
    Column("ordertype", String(32), nullable=False),
    Column("price", ExactDecimal()),
    Column("vol", ExactDecimal(), nullable=False),
    Column("vol_exec", ExactDecimal(), nullable=False),
    Column("cost", ExactDecimal(), nullable=False),
    Column("fee", ExactDecimal(), nullable=False),
    Column("descr", JSONType, nullable=False),
    Column("run_id", RunId, nullable=False),
)
Index("ix_orders_closetm", orders.c.closetm)


class Orders(History):
    name = "orders"
    table = orders
    methods = frozenset({"ClosedOrders"})
    key = ("account", "txid")
    entries = "closed"
    fixed = {"closetime": "close"}
    time_column = "closetm"  # an order is history once closed; retention ages it from then
    pair_column = "pair"  # descr.pair is the altname: stored as the canonical name once known

    def entry(self, record: RunRecord, txid: str, e: dict[str, Any]) -> dict[str, Any]:
        descr = mapping(record, e.get("descr") or {}, f"descr of {txid}")
        closetm = e.get("closetm")
        return {
            "txid": txid[:64],
            "status": text(record, e.get("status"), "status", 16),
            "opentm": timestamp(record, e.get("opentm"), f"opentm of {txid}"),
            "closetm": None if closetm in (None, 0) else timestamp(record, closetm, "closetm"),
            "pair": text(record, descr.get("pair"), "pair", 32),
            "type": text(record, descr.get("type"), "type", 8),
            "ordertype": text(record, descr.get("ordertype"), "ordertype", 32),
            "price": decimal(record, e.get("price"), f"price of {txid}", optional=True),
            "vol": decimal(record, e.get("vol"), f"vol of {txid}"),
            "vol_exec": decimal(record, e.get("vol_exec"), f"vol_exec of {txid}"),
            "cost": decimal(record, e.get("cost"), f"cost of {txid}"),
            "fee": decimal(record, e.get("fee"), f"fee of {txid}"),
            "descr": descr,
        }
