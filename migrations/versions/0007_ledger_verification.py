"""ledger verification: ledger_verification (where each account's asset chain is verified to),
gaps.amount (what a break leaves unaccounted); indexes on balances.taken_at (the snapshots since
the last pass), ledger (account, refid) (a trade's legs) and my_trades (account, ordertxid) (an
order's fills)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_verification",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("asset", sa.String(32), primary_key=True),
        sa.Column("verified_to", UTCDateTime(), nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("breaks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("resume_time", UTCDateTime()),
        sa.Column("resume_balance", ExactDecimal()),
        sa.Column("resume_ledger_id", sa.String(64)),
        sa.Column("resume_entries", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("gaps") as batch:
        batch.add_column(sa.Column("amount", ExactDecimal()))
    op.create_index("ix_balances_taken_at", "balances", ["taken_at"])
    op.create_index("ix_ledger_refid", "ledger", ["account", "refid"])
    op.create_index("ix_my_trades_ordertxid", "my_trades", ["account", "ordertxid"])


def downgrade() -> None:
    op.drop_index("ix_my_trades_ordertxid", "my_trades")
    op.drop_index("ix_ledger_refid", "ledger")
    op.drop_index("ix_balances_taken_at", "balances")
    with op.batch_alter_table("gaps") as batch:
        batch.drop_column("amount")
    op.drop_table("ledger_verification")
