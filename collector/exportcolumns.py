"""The columns of every table an export writes, each with its kind, and the column
``--since``/``--until`` filter it on: written out, so that ``collector export`` knows them without
importing SQLAlchemy and the tables' modules (0.2 s of every export's start, docs/benchmarks.md
"## Export").

``tests/test_export_start.py`` holds this table equal to what :data:`collector.schema.metadata`
and the datasets say (as ``RETENTION_KEYS`` is held to the datasets): a column added to a table
fails that test until it is added here. The kinds: ``time`` (UTC), ``decimal`` (exact text),
``bool``, ``json``, ``int``, ``text`` (a CSV's text cells are the ones neutralised against
spreadsheet formulas, so a decimal must never be written down as text).
"""

from __future__ import annotations

#: Each table: the column its rows' time is filtered on (None: none), and its columns as
#: ``name kind`` pairs, comma-separated, in the table's order.
_WRITTEN: dict[str, tuple[str | None, str]] = {
    "account_leases": (
        "since",
        "account text, holder text, host text, pid int, since time, expires_at time, nonce_mark int, counter_level text, counter_refusals int, counter_at time",
    ),
    "assets": (
        "updated_at",
        "asset text, altname text, aclass text, decimals int, display_decimals int, status text, updated_at time, run_id int",
    ),
    "balances": (
        "taken_at",
        "run_id int, asset text, job text, taken_at time, amount decimal, account text",
    ),
    "book": (
        "taken_at",
        "pair text, taken_at time, side text, level int, price decimal, qty decimal, run_id int",
    ),
    "collector_state": (
        None,
        "name text, value text",
    ),
    "cursors": (
        "updated_at",
        "job text, dataset text, value json, updated_at time",
    ),
    "gaps": (
        "start",
        "job text, dataset text, pair text, start time, end time, reason text, run_id int, amount decimal",
    ),
    "ledger": (
        "time",
        "account text, ledger_id text, refid text, time time, type text, subtype text, aclass text, asset text, amount decimal, fee decimal, balance decimal, run_id int",
    ),
    "ledger_verification": (
        "updated_at",
        "account text, asset text, verified_to time, entries int, breaks int, resume_time time, resume_balance decimal, resume_ledger_id text, resume_entries int, updated_at time",
    ),
    "my_trades": (
        "time",
        "account text, txid text, ordertxid text, postxid text, pair text, time time, type text, ordertype text, price decimal, cost decimal, fee decimal, vol decimal, margin decimal, leverage text, misc text, trade_id int, maker bool, run_id int",
    ),
    "ohlc": (
        "time",
        "pair text, interval int, time time, open decimal, high decimal, low decimal, close decimal, vwap decimal, volume decimal, count int, final bool, run_id int",
    ),
    "orders": (
        "closetm",
        "account text, txid text, status text, opentm time, closetm time, pair text, type text, ordertype text, price decimal, vol decimal, vol_exec decimal, cost decimal, fee decimal, descr json, run_id int",
    ),
    "pairs": (
        "updated_at",
        "pair text, altname text, wsname text, base text, quote text, pair_decimals int, lot_decimals int, cost_decimals int, ordermin decimal, costmin decimal, status text, updated_at time, run_id int",
    ),
    "portfolio_value": (
        "taken_at",
        "run_id int, job text, account text, taken_at time, quote text, value decimal, unpriced text, why_unpriced text",
    ),
    "runs": (
        "started_at",
        "id int, job text, method text, params json, scheduled_at time, started_at time, finished_at time, status text, http_status int, error text, result json, attempts int, pages int, new_rows int, uid text, account text",
    ),
    "spread": (
        "time",
        "pair text, time time, bid decimal, ask decimal, run_id int",
    ),
    "stream_connections": (
        "opened_at",
        "uid text, stream text, channel text, url text, opened_at time, closed_at time, reason text, messages int, run_id int",
    ),
    "ticker": (
        "taken_at",
        "run_id int, pair text, taken_at time, ask decimal, bid decimal, last decimal, volume_24h decimal, vwap_24h decimal, trades_24h int, low_24h decimal, high_24h decimal, open decimal",
    ),
    "trades": (
        "time",
        "pair text, trade_id int, time time, price decimal, volume decimal, side text, order_type text, misc text, run_id int",
    ),
}

#: Each table's columns, each with its kind.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    table: tuple((c.split()[0], c.split()[1]) for c in columns.split(", "))
    for table, (_, columns) in _WRITTEN.items()
}
#: The column ``--since``/``--until`` filter each table on (a table without one: absent).
TIME_COLUMNS: dict[str, str] = {t: time for t, (time, _) in _WRITTEN.items() if time is not None}
