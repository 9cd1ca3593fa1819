"""streams (issue 28): the ``book`` table (a pair's top levels, every snapshot_every) and
``stream_connections`` (one row per WebSocket connection, as ``runs`` has one per run)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from collector.schema import ExactDecimal, RunId, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "book",
        sa.Column("pair", sa.String(32), primary_key=True),
        sa.Column("taken_at", UTCDateTime(), primary_key=True),
        sa.Column("side", sa.String(3), primary_key=True),
        sa.Column("level", sa.Integer, primary_key=True),
        sa.Column("price", ExactDecimal(), nullable=False),
        sa.Column("qty", ExactDecimal(), nullable=False),
        sa.Column("run_id", RunId, nullable=False),
    )
    op.create_index("ix_book_taken_at", "book", ["taken_at"])
    op.create_table(
        "stream_connections",
        sa.Column("uid", sa.String(32), primary_key=True),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime()),
        sa.Column("reason", sa.Text),
        sa.Column("messages", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("run_id", RunId, nullable=False),
    )
    op.create_index("ix_stream_connections_opened_at", "stream_connections", ["opened_at"])


def downgrade() -> None:
    op.drop_index("ix_stream_connections_opened_at", "stream_connections")
    op.drop_table("stream_connections")
    op.drop_index("ix_book_taken_at", "book")
    op.drop_table("book")
