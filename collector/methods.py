"""Kraken's REST methods: which are public, what each read method takes, what it costs, which API
key permission it needs, and which change state (those the collector refuses: it is read-only).

:data:`READ_METHODS` carries each read method's parameters and their types, from Kraken's REST
docs and OpenAPI spec (``krakenfx/api-specs``, ``spot-rest/openapi_v3.yaml``), so that a job file
is checked against them when it is loaded: an unknown parameter gets a did-you-mean, an OHLC
``interval`` outside Kraken's list is named, and a method that takes one pair refuses two, at
``collector check``, not at run time. Every public method not listed there is still known, but
its parameters are not checked (``params`` is None).

Why one module of this length: it is a table (Kraken's read methods, their parameters, costs and
permissions, from the OpenAPI spec), a leaf of declarations with little code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: OHLC's candle widths in minutes (Kraken refuses any other).
OHLC_INTERVALS: tuple[int, ...] = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)

#: Kraken's API key permissions, as its key settings page names them.
QUERY_FUNDS = "Query Funds"
QUERY_OPEN = "Query Open Orders & Trades"
QUERY_CLOSED = "Query Closed Orders & Trades"
QUERY_LEDGER = "Query Ledger Entries"
EXPORT_DATA = "Export Data"
#: What a collector's key needs, and all it should have: no trading, deposit or withdrawal.
COLLECTOR_PERMISSIONS: tuple[str, ...] = (QUERY_FUNDS, QUERY_OPEN, QUERY_CLOSED, QUERY_LEDGER)


@dataclass(frozen=True)
class Param:
    """One request parameter.

    :ivar kind: ``pair`` (one pair), ``pairs`` (a comma list of pairs), ``text``, ``list`` (a comma
        list), ``integer``, ``boolean``, ``time`` (unix seconds, or an id where Kraken allows one)
    :ivar choices: the only values Kraken takes, if it names them
    :ivar low, high: bounds of an integer
    """

    kind: str
    doc: str = ""
    choices: tuple[Any, ...] = ()
    low: int | None = None
    high: int | None = None

    def describe(self) -> str:
        """What it is and the values it takes, in a line."""
        if self.choices:
            return f"{self.doc}: {', '.join(str(c) for c in self.choices)}"
        if self.low is not None:
            return f"{self.doc}: {self.low} to {self.high if self.high is not None else 'more'}"
        return self.doc


@dataclass(frozen=True)
class Method:
    """A read method: its parameters (None: not checked), which of them it needs, the permission
    a key needs to call it (public methods: None), and the parameters the collector sets itself
    while it pages or continues a history (each with what to use instead)."""

    name: str
    public: bool
    doc: str
    params: dict[str, Param] | None = field(default=None, hash=False)
    required: tuple[str, ...] = ()
    permission: str | None = None
    managed: dict[str, str] = field(default_factory=dict, hash=False)


_PAIR = Param("pair", "one asset pair, e.g. XBTUSD")
_PAIRS = Param("pairs", "asset pairs, comma-separated (none: all)")
_ASSET_CLASS = Param("text", "needed for xstocks", ("tokenized_asset",))
_REBASE = Param("text", "how xstocks are shown", ("rebased", "base"))
_TRADES = Param("boolean", "include the trades of positions")
_USERREF = Param("integer", "only this user reference")
_CL_ORD_ID = Param("text", "only this client order id")
_CONSOLIDATE = Param("boolean", "consolidate taker trades (default true)")
_SINCE = "set from the stored cursor; use the job's since: for where it starts"
_WINDOW = (
    "set by the collector while it pages the history; use the job's since: for where it starts"
)


def _methods(*found: Method) -> dict[str, Method]:
    return {m.name: m for m in found}


#: Every read method a job can name.
READ_METHODS: dict[str, Method] = _methods(
    Method("Time", True, "the exchange's clock", {}),
    Method("SystemStatus", True, "online, maintenance, cancel_only or post_only", {}),
    Method(
        "Assets",
        True,
        "asset names and decimals",
        {
            "asset": Param("list", "assets, comma-separated (none: all)"),
            "aclass": Param("text", "asset class", ("currency", "tokenized_asset")),
        },
    ),
    Method(
        "AssetPairs",
        True,
        "tradable pairs and their names",
        {
            "pair": _PAIRS,
            "aclass_base": Param("text", "asset class", ("currency", "tokenized_asset")),
            "info": Param("text", "what to return", ("info", "leverage", "fees", "margin")),
            "country_code": Param("text", "ISO 3166-1 alpha-2: pairs available there"),
        },
    ),
    Method(
        "Ticker",
        True,
        "a price snapshot per pair (table ticker)",
        {"pair": _PAIRS, "asset_class": _ASSET_CLASS},
    ),
    Method(
        "OHLC",
        True,
        "candles of one pair (table ohlc)",
        {
            "pair": _PAIR,
            "interval": Param("integer", "minutes per candle (default 1)", OHLC_INTERVALS),
            "since": Param("time", "unix seconds"),
            "asset_class": _ASSET_CLASS,
        },
        required=("pair",),
        managed={"since": _SINCE},
    ),
    Method(
        "Depth",
        True,
        "the order book of one pair",
        {
            "pair": _PAIR,
            "count": Param("integer", "levels a side (default 100)", low=1, high=500),
            "asset_class": _ASSET_CLASS,
        },
        required=("pair",),
    ),
    Method(
        "Trades",
        True,
        "public trades of one pair (table trades)",
        {
            "pair": _PAIR,
            "since": Param("time", "nanoseconds"),
            "count": Param("integer", "trades a page (default 1000)", low=1, high=1000),
            "asset_class": _ASSET_CLASS,
        },
        required=("pair",),
        managed={"since": _SINCE},
    ),
    Method(
        "Spread",
        True,
        "recent best bid and ask of one pair (table spread)",
        {"pair": _PAIR, "since": Param("time", "unix seconds"), "asset_class": _ASSET_CLASS},
        required=("pair",),
        managed={"since": _SINCE},
    ),
    Method("GroupedBook", True, "the order book, grouped"),
    Method("Level3", True, "the individual orders of the book"),
    Method("PreTrade", True, "pre-trade transparency data"),
    Method("PostTrade", True, "post-trade transparency data"),
    Method(
        "Balance",
        False,
        "balances (table balances)",
        {"rebase_multiplier": _REBASE},
        permission=QUERY_FUNDS,
    ),
    Method(
        "BalanceEx",
        False,
        "balances with holds (table balances)",
        {"rebase_multiplier": _REBASE},
        permission=QUERY_FUNDS,
    ),
    Method(
        "CreditLines", False, "credit lines", {"rebase_multiplier": _REBASE}, permission=QUERY_FUNDS
    ),
    Method(
        "TradeBalance",
        False,
        "margin and equity",
        {"asset": Param("text", "base asset (default ZUSD)"), "rebase_multiplier": _REBASE},
        permission=QUERY_OPEN,
    ),
    Method(
        "OpenOrders",
        False,
        "open orders",
        {
            "trades": _TRADES,
            "userref": _USERREF,
            "cl_ord_id": _CL_ORD_ID,
            "rebase_multiplier": _REBASE,
        },
        permission=QUERY_OPEN,
    ),
    Method(
        "ClosedOrders",
        False,
        "closed orders, the whole history (table orders)",
        {
            "trades": _TRADES,
            "userref": _USERREF,
            "cl_ord_id": _CL_ORD_ID,
            "start": Param("time", "unix seconds or an order id"),
            "end": Param("time", "unix seconds or an order id"),
            "ofs": Param("integer", "offset"),
            "closetime": Param("text", "which time windows", ("open", "close", "both")),
            "consolidate_taker": _CONSOLIDATE,
            "without_count": Param("boolean", "leave out the count"),
            "rebase_multiplier": _REBASE,
        },
        permission=QUERY_CLOSED,
        managed={
            "start": _WINDOW,
            "end": _WINDOW,
            "ofs": _WINDOW,
            "closetime": "the collector windows orders by close time",
            "without_count": "paging needs the count",
        },
    ),
    Method(
        "QueryOrders",
        False,
        "orders by id",
        {
            "txid": Param("list", "order ids, at most 50"),
            "trades": _TRADES,
            "userref": _USERREF,
            "consolidate_taker": _CONSOLIDATE,
            "rebase_multiplier": _REBASE,
        },
        required=("txid",),
        permission=QUERY_CLOSED,
    ),
    Method(
        "OrderAmends",
        False,
        "an order's amends",
        {"order_id": Param("text", "the order id"), "rebase_multiplier": _REBASE},
        required=("order_id",),
        permission=QUERY_CLOSED,
    ),
    Method(
        "TradesHistory",
        False,
        "your fills, the whole history (table my_trades)",
        {
            "type": Param(
                "text",
                "which trades",
                ("all", "any position", "closed position", "closing position", "no position"),
            ),
            "trades": _TRADES,
            "start": Param("time", "unix seconds or a trade id"),
            "end": Param("time", "unix seconds or a trade id"),
            "ofs": Param("integer", "offset"),
            "consolidate_taker": _CONSOLIDATE,
            "ledgers": Param("boolean", "include the ledger ids"),
            "rebase_multiplier": _REBASE,
        },
        permission=QUERY_CLOSED,
        managed={"start": _WINDOW, "end": _WINDOW, "ofs": _WINDOW},
    ),
    Method(
        "QueryTrades",
        False,
        "your fills by id",
        {
            "txid": Param("list", "trade ids, at most 20"),
            "trades": _TRADES,
            "rebase_multiplier": _REBASE,
        },
        required=("txid",),
        permission=QUERY_CLOSED,
    ),
    Method(
        "OpenPositions",
        False,
        "open margin positions",
        {
            "txid": Param("list", "position ids"),
            "docalcs": Param("boolean", "include P&L"),
            "consolidation": Param("text", "by market", ("market",)),
            "rebase_multiplier": _REBASE,
        },
        permission=QUERY_OPEN,
    ),
    Method(
        "Ledgers",
        False,
        "ledger entries, the whole history (table ledger)",
        {
            "asset": Param("list", "assets, comma-separated (default all)"),
            "aclass": Param("text", "asset class (default currency)"),
            "type": Param(
                "text",
                "which entries",
                (
                    "all",
                    "trade",
                    "deposit",
                    "withdrawal",
                    "transfer",
                    "margin",
                    "adjustment",
                    "rollover",
                    "credit",
                    "settled",
                    "staking",
                    "dividend",
                    "sale",
                    "nft_rebate",
                ),
            ),
            "start": Param("time", "unix seconds or a ledger id"),
            "end": Param("time", "unix seconds or a ledger id"),
            "ofs": Param("integer", "offset"),
            "without_count": Param("boolean", "leave out the count"),
            "rebase_multiplier": _REBASE,
        },
        permission=QUERY_LEDGER,
        managed={
            "start": _WINDOW,
            "end": _WINDOW,
            "ofs": _WINDOW,
            "without_count": "paging needs the count",
        },
    ),
    Method(
        "QueryLedgers",
        False,
        "ledger entries by id",
        {
            "id": Param("list", "ledger ids, at most 20"),
            "trades": _TRADES,
            "rebase_multiplier": _REBASE,
        },
        required=("id",),
        permission=QUERY_LEDGER,
    ),
    Method(
        "TradeVolume",
        False,
        "30-day volume and fees",
        {"pair": _PAIRS, "rebase_multiplier": _REBASE},
        permission=QUERY_FUNDS,
    ),
    Method(
        "ExportStatus",
        False,
        "the state of export reports",
        {"report": Param("text", "which reports", ("trades", "ledgers"))},
        required=("report",),
        permission=EXPORT_DATA,
    ),
    Method(
        "RetrieveExport",
        False,
        "a finished export (a zip)",
        {"id": Param("text", "the report id")},
        required=("id",),
        permission=EXPORT_DATA,
    ),
    Method(
        "DepositMethods",
        False,
        "deposit methods of an asset",
        {"asset": Param("text", "the asset"), "aclass": Param("text", "asset class")},
        required=("asset",),
        permission=QUERY_FUNDS,
    ),
    Method(
        "DepositStatus",
        False,
        "recent deposits",
        {
            "asset": Param("text", "the asset"),
            "aclass": Param("text", "asset class", ("currency", "tokenized_asset")),
            "method": Param("text", "the deposit method"),
            "start": Param("time", "unix seconds"),
            "end": Param("time", "unix seconds"),
            "cursor": Param("text", "true, false, or the next page's cursor"),
            "limit": Param("integer", "results a page (default 25)", low=1),
        },
        permission=QUERY_FUNDS,
    ),
    Method(
        "WithdrawMethods",
        False,
        "withdrawal methods",
        {
            "asset": Param("text", "the asset"),
            "aclass": Param("text", "asset class", ("currency", "tokenized_asset")),
            "network": Param("text", "the network"),
        },
        permission=QUERY_FUNDS,
    ),
    Method(
        "WithdrawAddresses",
        False,
        "withdrawal addresses",
        {
            "asset": Param("text", "the asset"),
            "aclass": Param("text", "asset class", ("currency", "tokenized_asset")),
            "method": Param("text", "the withdrawal method"),
            "key": Param("text", "the withdrawal key's name"),
            "verified": Param("boolean", "only verified addresses"),
        },
        permission=QUERY_FUNDS,
    ),
    Method(
        "WithdrawInfo",
        False,
        "the fee and limit of a withdrawal",
        {
            "asset": Param("text", "the asset"),
            "key": Param("text", "the withdrawal key's name"),
            "amount": Param("text", "the amount"),
        },
        required=("asset", "key", "amount"),
        permission=QUERY_FUNDS,
    ),
    Method(
        "WithdrawStatus",
        False,
        "recent withdrawals",
        {
            "asset": Param("text", "the asset"),
            "aclass": Param("text", "asset class", ("currency", "tokenized_asset")),
            "method": Param("text", "the withdrawal method"),
            "start": Param("time", "unix seconds"),
            "end": Param("time", "unix seconds"),
            "cursor": Param("text", "true, false, or the next page's cursor"),
            "limit": Param("integer", "results a page (default 500)", low=1),
        },
        permission=QUERY_LEDGER,
    ),
    Method(
        "Earn/Strategies",
        False,
        "earn strategies",
        {
            "ascending": Param("boolean", "oldest first"),
            "asset": Param("text", "the asset"),
            "cursor": Param("text", "the next page's id"),
            "limit": Param("integer", "results a page", low=1),
            "lock_type": Param("list", "lock types"),
        },
    ),
    Method(
        "Earn/Allocations",
        False,
        "earn allocations",
        {
            "ascending": Param("boolean", "oldest first"),
            "converted_asset": Param("text", "the asset to value them in (default USD)"),
            "hide_zero_allocations": Param("boolean", "leave out empty ones"),
        },
        permission=QUERY_FUNDS,
    ),
    Method(
        "Earn/AllocateStatus",
        False,
        "the last allocation's state",
        {"strategy_id": Param("text", "the strategy")},
        required=("strategy_id",),
        permission=QUERY_FUNDS,
    ),
    Method(
        "Earn/DeallocateStatus",
        False,
        "the last deallocation's state",
        {"strategy_id": Param("text", "the strategy")},
        required=("strategy_id",),
        permission=QUERY_FUNDS,
    ),
)

#: Parameters any private call may carry: the key's 2FA password (never stored or logged).
PRIVATE_EXTRA: dict[str, Param] = {"otp": Param("text", "the key's 2FA password")}

PUBLIC_METHODS: frozenset[str] = frozenset(m.name for m in READ_METHODS.values() if m.public)

#: Private methods whose call adds 2 to the counter instead of 1 (Kraken's docs; sources differ
#: on QueryLedgers and ClosedOrders, ccxt counting ClosedOrders 2: we count both 2, the safe
#: side: counted 1, a backfill's burst of ClosedOrders pages leaves our counter a unit per page
#: below an exchange that counts 2, and it refuses calls).
COSTLY_METHODS: frozenset[str] = frozenset(
    {"Ledgers", "QueryLedgers", "TradesHistory", "ClosedOrders"}
)

STATE_CHANGING_METHODS: frozenset[str] = frozenset(
    {
        "AddOrder",
        "AddOrderBatch",
        "AmendOrder",
        "EditOrder",
        "CancelOrder",
        "CancelOrderBatch",
        "CancelAll",
        "CancelAllOrdersAfter",
        "Withdraw",
        "WithdrawCancel",
        "WalletTransfer",
        "CreateSubaccount",
        "AccountTransfer",
        "Earn/Allocate",
        "Earn/Deallocate",
        "AddExport",
        "RemoveExport",
        "DepositAddresses",
        "GetWebSocketsToken",
    }
)

#: Read-only private methods known to exist; job files are checked against these and the public
#: list so that a typo is caught at load time, not at 3 a.m.
PRIVATE_READ_METHODS: frozenset[str] = frozenset(
    m.name for m in READ_METHODS.values() if not m.public
)


def is_public(method: str) -> bool:
    """True when ``method`` is one of Kraken's public endpoints."""
    return method in PUBLIC_METHODS


def cost(method: str) -> int:
    """What one call of a private ``method`` adds to Kraken's counter."""
    return 2 if method in COSTLY_METHODS else 1


def permission(method: str) -> str | None:
    """The API key permission ``method`` needs (None: public, or none Kraken names)."""
    found = READ_METHODS.get(method)
    return found.permission if found else None


def params_of(method: str) -> dict[str, Param] | None:
    """The parameters a job calling ``method`` may set (None: not checked)."""
    found = READ_METHODS.get(method)
    if found is None or found.params is None:
        return None
    return found.params if found.public else {**found.params, **PRIVATE_EXTRA}
