"""Reference data: ``assets`` (from Assets) and ``pairs`` (from AssetPairs), kept by the service.

The service asks for both at start and once a day through the public client, as jobs of its own
(``collector:assets``, ``collector:pairs``; their runs are stored like any other), and a job of the
file may ask for them too. Rows are upserted by name; a stored row changes only when Kraken's
values do, and ``updated_at`` says when they last did.

**Delisted.** Kraken's answers simply leave out what it no longer lists. After a *whole* answer
(no ``pair``/``asset`` filter, no ``country_code``, the default ``info``), every stored name it
leaves out gets ``status = 'delisted'``: the row stays, so history stored under that name still
finds its base, quote and decimals. A name that comes back takes Kraken's status again.

**Names in the other tables.** Once a pair is known, the store writes every row of the tables that
name pairs under its canonical name, whatever spelling Kraken sent (an order's ``descr.pair`` is
the altname), and a refresh that brings new pairs renames the orders and fills stored before them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    and_,
    func,
    or_,
    select,
    union,
    update,
)

from ..records import RunRecord
from ..schema import ExactDecimal, RunId, UTCDateTime, metadata
from .base import Dataset, bad, decimal, mapping, text
from .history import my_trades, orders

#: The status of a stored name that Kraken's last whole answer left out.
DELISTED = "delisted"

assets = Table(
    "assets",
    metadata,
    Column("asset", String(32), primary_key=True),
    Column("altname", String(32), nullable=False),
    Column("aclass", String(32), nullable=False),
    Column("decimals", Integer, nullable=False),
    Column("display_decimals", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_id", RunId, nullable=False),
)

pairs = Table(
    "pairs",
    metadata,
    Column("pair", String(32), primary_key=True),
    Column("altname", String(32), nullable=False),
    # Dark-pool pairs (XXBTZUSD.d) have no wsname.
    Column("wsname", String(32)),
    Column("base", String(32), nullable=False),
    Column("quote", String(32), nullable=False),
    Column("pair_decimals", Integer, nullable=False),
    Column("lot_decimals", Integer, nullable=False),
    Column("cost_decimals", Integer),
    Column("ordermin", ExactDecimal()),
    Column("costmin", ExactDecimal()),
    Column("status", String(32), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_id", RunId, nullable=False),
)
Index("ix_pairs_altname", pairs.c.altname)
Index("ix_pairs_wsname", pairs.c.wsname)


def _integer(record: RunRecord, value: Any, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**6:
        raise bad(record, f"{what} is not a small integer")
    return value


class _Reference(Dataset):
    """A listing keyed by name: changed rows are updated, names left out of a whole answer are
    marked delisted."""

    #: what decides whether an answer lists everything (the request's filters)
    filters: ClassVar[tuple[str, ...]]

    def whole(self, params: Mapping[str, Any]) -> bool:
        """Whether an answer to ``params`` lists every name (so a name it lacks is delisted)."""
        return not any(params.get(name) for name in self.filters)

    def stored(
        self, conn: Connection, written: Sequence[tuple[RunRecord, int]]
    ) -> Mapping[int, int]:
        key = self.table.c[self.key[0]]
        delisted: Counter[int] = Counter()
        for record, run_id in written:
            names = [row[self.key[0]] for row in record.rows.get(self.name, [])]
            if record.status != "ok" or not names or not self.whole(record.params):
                continue
            result = conn.execute(
                update(self.table)
                .where(key.not_in(names), self.table.c.status != DELISTED)
                .values(status=DELISTED, updated_at=record.finished_at, run_id=run_id)
            )
            delisted[run_id] += max(result.rowcount, 0)
        return delisted


class Assets(_Reference):
    name = "assets"
    table = assets
    methods = frozenset({"Assets"})
    key = ("asset",)
    compare = ("altname", "aclass", "decimals", "display_decimals", "status")
    update = (*compare, "updated_at", "run_id")
    # Another asset class than Kraken's default lists other assets.
    filters = ("asset", "aclass")

    def whole(self, params: Mapping[str, Any]) -> bool:
        return not params.get("asset") and params.get("aclass") in (None, "", "currency")

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        out = []
        for name, info in mapping(record, result, "result").items():
            info = mapping(record, info, name)
            out.append(
                {
                    "asset": text(record, name, "asset", 32),
                    "altname": text(record, info.get("altname"), f"{name} altname", 32),
                    "aclass": text(record, info.get("aclass"), f"{name} aclass", 32),
                    "decimals": _integer(record, info.get("decimals"), f"{name} decimals"),
                    "display_decimals": _integer(
                        record, info.get("display_decimals"), f"{name} display_decimals"
                    ),
                    "status": text(record, info.get("status") or "enabled", "status", 32),
                    "updated_at": record.finished_at,
                }
            )
        return out


class Pairs(_Reference):
    name = "pairs"
    table = pairs
    methods = frozenset({"AssetPairs"})
    key = ("pair",)
    compare = (
        "altname",
        "wsname",
        "base",
        "quote",
        "pair_decimals",
        "lot_decimals",
        "cost_decimals",
        "ordermin",
        "costmin",
        "status",
    )
    update = (*compare, "updated_at", "run_id")
    filters = ("pair", "country_code")

    def whole(self, params: Mapping[str, Any]) -> bool:
        return super().whole(params) and params.get("info") in (None, "", "info")

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        if record.params.get("info") not in (None, "", "info"):
            return []  # leverage, fees or margin only: not the pairs' names
        out = []
        for name, info in mapping(record, result, "result").items():
            info = mapping(record, info, name)
            wsname = info.get("wsname")
            out.append(
                {
                    "pair": text(record, name, "pair", 32),
                    "altname": text(record, info.get("altname"), f"{name} altname", 32),
                    "wsname": None if wsname is None else text(record, wsname, "wsname", 32),
                    "base": text(record, info.get("base"), f"{name} base", 32),
                    "quote": text(record, info.get("quote"), f"{name} quote", 32),
                    "pair_decimals": _integer(
                        record, info.get("pair_decimals"), f"{name} pair_decimals"
                    ),
                    "lot_decimals": _integer(
                        record, info.get("lot_decimals"), f"{name} lot_decimals"
                    ),
                    "cost_decimals": _integer(
                        record, info.get("cost_decimals"), f"{name} cost_decimals", optional=True
                    ),
                    "ordermin": decimal(record, info.get("ordermin"), "ordermin", optional=True),
                    "costmin": decimal(record, info.get("costmin"), "costmin", optional=True),
                    "status": text(record, info.get("status") or "online", "status", 32),
                    "updated_at": record.finished_at,
                }
            )
        return out

    def stored(
        self, conn: Connection, written: Sequence[tuple[RunRecord, int]]
    ) -> Mapping[int, int]:
        delisted = super().stored(conn, written)
        rename_pairs(conn)
        return delisted


def rename_pairs(conn: Connection) -> None:
    """Give the orders and fills stored under another name of a known pair (an order's
    ``descr.pair`` is the altname) the pair's canonical name. One statement a table; a table
    whose every name is canonical is read, not written."""
    other = union(
        select(pairs.c.altname.label("name")),
        select(pairs.c.wsname).where(pairs.c.wsname.is_not(None)),
    ).subquery()
    for table in (orders, my_trades):
        canonical = (
            select(func.min(pairs.c.pair))
            .where(or_(pairs.c.altname == table.c.pair, pairs.c.wsname == table.c.pair))
            .scalar_subquery()
        )
        conn.execute(
            update(table)
            .where(
                and_(
                    table.c.pair.not_in(select(pairs.c.pair)),
                    table.c.pair.in_(select(other.c.name)),
                )
            )
            .values(pair=canonical)
        )
