"""the ``book_named`` view (issue 28): the streams' ``book`` table with ``symbol``, ``base`` and
``quote``, as the other tables of a pair have theirs (0008)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The SQL as collector/views.py has it (a migration keeps its own copy).
CREATE = (
    "CREATE VIEW book_named AS SELECT t.*, p.wsname AS symbol, "
    "COALESCE(b.altname, p.base) AS base, COALESCE(q.altname, p.quote) AS quote "
    "FROM book t LEFT JOIN pairs p ON p.pair = t.pair "
    "LEFT JOIN assets b ON b.asset = p.base LEFT JOIN assets q ON q.asset = p.quote"
)


def upgrade() -> None:
    op.execute(CREATE)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS book_named")
