"""runs, balances and collector_state

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, JSONType, RunId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", RunId, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("params", JSONType, nullable=False),
        sa.Column("scheduled_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("result", JSONType),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_runs_job_started_at", "runs", ["job", "started_at"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "balances",
        sa.Column("run_id", RunId, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("asset", sa.String(32), primary_key=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("taken_at", UTCDateTime(), nullable=False),
        sa.Column("amount", ExactDecimal(), nullable=False),
    )
    op.create_index("ix_balances_asset_taken_at", "balances", ["asset", "taken_at"])
    op.create_table(
        "collector_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("collector_state")
    op.drop_table("balances")
    op.drop_table("runs")
