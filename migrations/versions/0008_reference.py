"""reference data and names: assets and pairs (kept by the service from Assets and AssetPairs),
and views adding readable names (symbol, base, quote) to the market and history tables

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Orders stored before (``orders.pair`` held ``descr.pair``, the altname) take their pair's
canonical name at the first refresh of ``pairs`` after this migration: the service asks at start.
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, RunId, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: view -> (table, named by a pair or by an asset); the SQL as collector/views.py had it then.
VIEWS = {
    "trades_named": ("trades", "pair"),
    "ohlc_named": ("ohlc", "pair"),
    "spread_named": ("spread", "pair"),
    "ticker_named": ("ticker", "pair"),
    "my_trades_named": ("my_trades", "pair"),
    "orders_named": ("orders", "pair"),
    "ledger_named": ("ledger", "asset"),
    "balances_named": ("balances", "asset"),
}


def _view(view: str, table: str, by: str) -> str:
    if by == "pair":
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


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("asset", sa.String(32), primary_key=True),
        sa.Column("altname", sa.String(32), nullable=False),
        sa.Column("aclass", sa.String(32), nullable=False),
        sa.Column("decimals", sa.Integer, nullable=False),
        sa.Column("display_decimals", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", RunId, nullable=False),
    )
    op.create_table(
        "pairs",
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("altname", sa.String(32), nullable=False),
        sa.Column("wsname", sa.String(32)),
        sa.Column("base", sa.String(32), nullable=False),
        sa.Column("quote", sa.String(32), nullable=False),
        sa.Column("pair_decimals", sa.Integer, nullable=False),
        sa.Column("lot_decimals", sa.Integer, nullable=False),
        sa.Column("cost_decimals", sa.Integer),
        sa.Column("ordermin", ExactDecimal()),
        sa.Column("costmin", ExactDecimal()),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", RunId, nullable=False),
    )
    op.create_index("ix_pairs_altname", "pairs", ["altname"])
    op.create_index("ix_pairs_wsname", "pairs", ["wsname"])
    for view, (table, by) in VIEWS.items():
        op.execute(_view(view, table, by))


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_index("ix_pairs_wsname", "pairs")
    op.drop_index("ix_pairs_altname", "pairs")
    op.drop_table("pairs")
    op.drop_table("assets")
