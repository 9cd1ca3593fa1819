"""Alembic environment: run on the connection collector passes in, or on sqlalchemy.url."""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run(connection) -> None:
    # render_as_batch lets later migrations ALTER tables on SQLite too.
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        run(conn)
