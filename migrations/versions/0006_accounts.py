"""accounts: an account column on runs, balances and the private histories (in their keys), and
account_leases (one active collector per account)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import warnings

import sqlalchemy as sa
from alembic import op

from collector.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The private histories and their ids: the key becomes (account, id).
HISTORIES = {"ledger": "ledger_id", "my_trades": "txid", "orders": "txid"}


def _account(**kw) -> sa.Column:
    return sa.Column("account", sa.String(64), nullable=False, server_default="default", **kw)


def upgrade() -> None:
    # Existing runs ran as the one account there was: "default".
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("account", sa.String(64)))
    op.execute("UPDATE runs SET account = 'default'")
    with op.batch_alter_table("balances") as batch:
        batch.add_column(_account())
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, id_column in HISTORIES.items():
        if postgresql:
            op.add_column(table, _account())
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, ["account", id_column])
        else:
            # SQLite can't change a primary key in place: batch mode copies the table (and
            # SQLAlchemy warns that the copy's key differs from the original's: that's the point).
            with warnings.catch_warnings(), op.batch_alter_table(table, recreate="always") as batch:
                warnings.simplefilter("ignore", sa.exc.SAWarning)
                batch.add_column(_account())
                batch.create_primary_key(f"{table}_pkey", ["account", id_column])
    op.create_table(
        "account_leases",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("nonce_mark", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("account_leases")
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, id_column in HISTORIES.items():
        if postgresql:
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, [id_column])
            op.drop_column(table, "account")
        else:
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.create_primary_key(f"{table}_pkey", [id_column])
                batch.drop_column("account")
    with op.batch_alter_table("balances") as batch:
        batch.drop_column("account")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("account")
