"""Views that add readable names to the tables: ``trades_named``, ``ledger_named``, ...

Every table keeps Kraken's canonical codes (``XXBTZUSD``, ``XXBT``, ``ZUSD``), which is what
joins; a view adds what people read, from the ``pairs`` and ``assets`` tables:

* the tables of a pair (``trades``, ``ohlc``, ``spread``, ``ticker``, ``my_trades``, ``orders``,
  the streams' ``book``) get ``symbol`` (the pair's wsname, ``XBT/USD``), ``base`` and ``quote`` (the assets' altnames,
  ``XBT`` and ``USD``);
* the tables of an asset (``ledger``, ``balances``) get ``symbol``: the asset's altname (``XBT``,
  ``USD``, ``DOT.S``).

A row whose pair or asset is not (yet) known has NULL there. ``symbol`` is the wsname itself (no
expression), so ``WHERE symbol = 'XBT/USD'`` finds the pair first and then its rows by the
table's index on ``pair``. The migrations that create them (0008; ``book_named`` 0013) keep
their own copy of this SQL; a view that changes is a new migration that creates it again.
"""

from __future__ import annotations

#: Each view: the table it names, and the columns it adds.
VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trades_named": ("trades", ("symbol", "base", "quote")),
    "ohlc_named": ("ohlc", ("symbol", "base", "quote")),
    "spread_named": ("spread", ("symbol", "base", "quote")),
    "ticker_named": ("ticker", ("symbol", "base", "quote")),
    "my_trades_named": ("my_trades", ("symbol", "base", "quote")),
    "orders_named": ("orders", ("symbol", "base", "quote")),
    "book_named": ("book", ("symbol", "base", "quote")),  # 0013
    "ledger_named": ("ledger", ("symbol",)),
    "balances_named": ("balances", ("symbol",)),
}


def create_sql(view: str) -> str:
    """The ``CREATE VIEW`` of ``view`` (the same SQL on SQLite and PostgreSQL)."""
    table, added = VIEWS[view]
    if "base" in added:
        return (
            f"CREATE VIEW {view} AS SELECT t.*, p.wsname AS symbol, "
            "COALESCE(b.altname, p.base) AS base, COALESCE(q.altname, p.quote) AS quote "
            f"FROM {table} t LEFT JOIN pairs p ON p.pair = t.pair "
            "LEFT JOIN assets b ON b.asset = p.base LEFT JOIN assets q ON q.asset = p.quote"
        )
    return (
        f"CREATE VIEW {view} AS SELECT t.*, a.altname AS symbol "
        f"FROM {table} t LEFT JOIN assets a ON a.asset = t.asset"
    )
