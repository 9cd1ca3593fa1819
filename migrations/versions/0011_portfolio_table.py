"""portfolio_value becomes a table the store keeps: the view of 0009 multiplied decimal text with
functions collector registers on its own connections (SQLite has no exact decimal arithmetic in
plain SQL), so no other tool could read it. Same columns, with why_unpriced; the snapshots of an
emptied account (an ok Balance run without rows) are rows worth 0, the only mark of them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

The values of the snapshots stored before are computed by the store after the migration
(collector.valuation.catch_up, at every upgrade), with the rules of the code that runs: a
migration keeps no copy of them.
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, RunId, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS portfolio_value")
    op.create_table(
        "portfolio_value",
        sa.Column(
            "run_id",
            RunId,
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("taken_at", UTCDateTime(), nullable=False),
        sa.Column("quote", sa.String(32), nullable=False),
        sa.Column("value", ExactDecimal(), nullable=False),
        sa.Column("unpriced", sa.Text),
        sa.Column("why_unpriced", sa.Text),
    )
    op.create_index("ix_portfolio_value_taken_at", "portfolio_value", ["taken_at"])
    # An emptied account's snapshots (Kraken answers it with no assets): worth 0 in any quote.
    op.execute(
        "INSERT INTO portfolio_value (run_id, job, account, taken_at, quote, value) "
        "SELECT r.id, r.job, COALESCE(r.account, 'default'), r.finished_at, "
        "COALESCE((SELECT value FROM collector_state WHERE name = 'valuation_quote'), 'USD'), 0 "
        "FROM runs r WHERE r.method IN ('Balance', 'BalanceEx') AND r.status = 'ok' "
        "AND NOT EXISTS (SELECT 1 FROM balances b WHERE b.run_id = r.id)"
    )


def downgrade() -> None:
    op.drop_index("ix_portfolio_value_taken_at", "portfolio_value")
    op.drop_table("portfolio_value")
    path = Path(__file__).with_name("0009_portfolio_value.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    view = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(view)
    view.upgrade()
