"""datasets: ledger, my_trades, orders, trades, ohlc, spread, ticker and gaps; runs.pages/new_rows

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, JSONType, RunId, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Dec = ExactDecimal
Time = UTCDateTime


def _table(name: str, *columns: sa.Column, indexes: tuple = ()) -> None:
    op.create_table(name, *columns)
    for index_name, cols in indexes:
        op.create_index(index_name, name, list(cols))


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pages", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("new_rows", sa.Integer, nullable=False, server_default="0"))
    _table(
        "ledger",
        sa.Column("ledger_id", sa.String(64), primary_key=True),
        sa.Column("refid", sa.String(64), nullable=False),
        sa.Column("time", Time(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("subtype", sa.String(32), nullable=False),
        sa.Column("aclass", sa.String(32), nullable=False),
        sa.Column("asset", sa.String(32), nullable=False),
        sa.Column("amount", Dec(), nullable=False),
        sa.Column("fee", Dec(), nullable=False),
        sa.Column("balance", Dec()),
        sa.Column("run_id", RunId, nullable=False),
        indexes=(("ix_ledger_asset_time", ("asset", "time")), ("ix_ledger_time", ("time",))),
    )
    _table(
        "my_trades",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("ordertxid", sa.String(64), nullable=False),
        sa.Column("postxid", sa.String(64), nullable=False),
        sa.Column("pair", sa.String(32), nullable=False),
        sa.Column("time", Time(), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("ordertype", sa.String(32), nullable=False),
        sa.Column("price", Dec(), nullable=False),
        sa.Column("cost", Dec(), nullable=False),
        sa.Column("fee", Dec(), nullable=False),
        sa.Column("vol", Dec(), nullable=False),
        sa.Column("margin", Dec()),
        sa.Column("leverage", sa.String(16)),
        sa.Column("misc", sa.String(200), nullable=False),
        sa.Column("trade_id", sa.BigInteger),
        sa.Column("maker", sa.Boolean),
        sa.Column("run_id", RunId, nullable=False),
        indexes=(("ix_my_trades_pair_time", ("pair", "time")),),
    )
    _table(
        "orders",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opentm", Time(), nullable=False),
        sa.Column("closetm", Time()),
        sa.Column("pair", sa.String(32), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("ordertype", sa.String(32), nullable=False),
        sa.Column("price", Dec()),
        sa.Column("vol", Dec(), nullable=False),
        sa.Column("vol_exec", Dec(), nullable=False),
        sa.Column("cost", Dec(), nullable=False),
        sa.Column("fee", Dec(), nullable=False),
        sa.Column("descr", JSONType, nullable=False),
        sa.Column("run_id", RunId, nullable=False),
        indexes=(("ix_orders_closetm", ("closetm",)),),
    )
    _table(
        "trades",
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("trade_id", sa.BigInteger, primary_key=True),
        sa.Column("time", Time(), nullable=False),
        sa.Column("price", Dec(), nullable=False),
        sa.Column("volume", Dec(), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("order_type", sa.String(6), nullable=False),
        sa.Column("misc", sa.String(64), nullable=False),
        sa.Column("run_id", RunId, nullable=False),
        indexes=(("ix_trades_pair_time", ("pair", "time")),),
    )
    _table(
        "ohlc",
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("interval", sa.Integer, primary_key=True),
        sa.Column("time", Time(), primary_key=True),
        sa.Column("open", Dec(), nullable=False),
        sa.Column("high", Dec(), nullable=False),
        sa.Column("low", Dec(), nullable=False),
        sa.Column("close", Dec(), nullable=False),
        sa.Column("vwap", Dec(), nullable=False),
        sa.Column("volume", Dec(), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("final", sa.Boolean, nullable=False),
        sa.Column("run_id", RunId, nullable=False),
    )
    _table(
        "spread",
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("time", Time(), primary_key=True),
        sa.Column("bid", Dec(), primary_key=True),
        sa.Column("ask", Dec(), primary_key=True),
        sa.Column("run_id", RunId, nullable=False),
    )
    _table(
        "ticker",
        sa.Column("run_id", RunId, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("taken_at", Time(), nullable=False),
        sa.Column("ask", Dec(), nullable=False),
        sa.Column("bid", Dec(), nullable=False),
        sa.Column("last", Dec(), nullable=False),
        sa.Column("volume_24h", Dec(), nullable=False),
        sa.Column("vwap_24h", Dec(), nullable=False),
        sa.Column("trades_24h", sa.BigInteger, nullable=False),
        sa.Column("low_24h", Dec(), nullable=False),
        sa.Column("high_24h", Dec(), nullable=False),
        sa.Column("open", Dec(), nullable=False),
        indexes=(("ix_ticker_pair_taken_at", ("pair", "taken_at")),),
    )
    _table(
        "gaps",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("start", Time(), primary_key=True),
        sa.Column("end", Time(), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", RunId, nullable=False),
    )


def downgrade() -> None:
    for name in ("gaps", "ticker", "spread", "ohlc", "trades", "orders", "my_trades", "ledger"):
        op.drop_table(name)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("new_rows")
        batch.drop_column("pages")
