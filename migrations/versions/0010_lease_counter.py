"""lease counter: account_leases carries the key's rate counter (its level, the refusals in a row,
and when), as it carries the nonce mark, so a holder on another machine starts from it

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_leases") as batch:
        batch.add_column(sa.Column("counter_level", sa.Float))
        batch.add_column(sa.Column("counter_refusals", sa.Integer))
        batch.add_column(sa.Column("counter_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("account_leases") as batch:
        batch.drop_column("counter_at")
        batch.drop_column("counter_refusals")
        batch.drop_column("counter_level")
