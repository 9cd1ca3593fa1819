"""Which Kraken REST methods are public, which cost more, and which change state.

The public list is fixed by Kraken; every other method is private. The state-changing list is what
the collector refuses to call (it is read-only by design).
"""

from __future__ import annotations

PUBLIC_METHODS: frozenset[str] = frozenset(
    {
        "Time",
        "SystemStatus",
        "Assets",
        "AssetPairs",
        "Ticker",
        "OHLC",
        "Depth",
        "Trades",
        "Spread",
        "GroupedBook",
        "Level3",
        "PreTrade",
        "PostTrade",
    }
)

#: Private methods whose call adds 2 to the counter instead of 1 (Kraken's docs; sources differ
#: on QueryLedgers, so we count it as 2, the safe side).
COSTLY_METHODS: frozenset[str] = frozenset({"Ledgers", "QueryLedgers", "TradesHistory"})

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
    {
        "Balance",
        "BalanceEx",
        "TradeBalance",
        "OpenOrders",
        "ClosedOrders",
        "QueryOrders",
        "OrderAmends",
        "TradesHistory",
        "QueryTrades",
        "OpenPositions",
        "Ledgers",
        "QueryLedgers",
        "TradeVolume",
        "ExportStatus",
        "RetrieveExport",
        "DepositMethods",
        "DepositStatus",
        "WithdrawMethods",
        "WithdrawAddresses",
        "WithdrawInfo",
        "WithdrawStatus",
        "Earn/Strategies",
        "Earn/Allocations",
        "Earn/AllocateStatus",
        "Earn/DeallocateStatus",
        "CreditLines",
    }
)


def is_public(method: str) -> bool:
    """True when ``method`` is one of Kraken's public endpoints."""
    return method in PUBLIC_METHODS


def cost(method: str) -> int:
    """What one call of a private ``method`` adds to Kraken's counter."""
    return 2 if method in COSTLY_METHODS else 1
