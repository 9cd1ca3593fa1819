"""runs.result: a run without a result holds SQL NULL, not the JSON value null

Before, None was stored as JSON null, so `WHERE result IS NULL` missed failed runs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE runs SET result = NULL WHERE jsonb_typeof(result) = 'null'")
    else:
        # SQLite keeps JSON as text; SQLAlchemy wrote None as the four letters null.
        op.execute("UPDATE runs SET result = NULL WHERE trim(result) = 'null'")


def downgrade() -> None:
    # Nothing to undo: SQL NULL reads back as None, as the JSON null did, with the old schema too.
    pass
