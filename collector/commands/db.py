"""``collector db``: database maintenance (``db upgrade``)."""

from __future__ import annotations

import os

import click

from .. import defaults
from ..defaults import DATABASE_ENV
from ..errors import ConfigError
from ..jobfile import load
from ..preflight import display_url, open_store
from .base import db_option, say


@click.group()
def db() -> None:
    """Database maintenance.

    \b
    Example:
        collector db upgrade jobs.yaml
        collector db upgrade --db postgresql+psycopg://collector@localhost/kraken
    """


@db.command()
@click.argument("jobfile", required=False, type=click.Path(dir_okay=False))
@db_option
def upgrade(jobfile: str | None, database: str | None) -> None:
    """Apply the database migrations (also done automatically by `run`).

    The database comes from --db, $COLLECTOR_DATABASE_URL, JOBFILE's
    `database`, or sqlite:///collector.db.

    \b
    Example:
        collector db upgrade --db postgresql+psycopg://collector@localhost/kraken
        collector db upgrade jobs.yaml
    """
    from ..dburl import parse
    from ..jobfile import database_problem, with_driver
    from ..store import current_revision

    if jobfile:
        url = load(jobfile, database=database).database
    else:
        url = database or os.environ.get(DATABASE_ENV) or defaults.DATABASE
        try:
            parsed = parse(url)
        except ValueError:
            parsed = None
        problem = database_problem(parsed) if parsed else "malformed; e.g. sqlite:///collector.db"
        if problem or parsed is None:
            raise ConfigError(problem or "", key="--db" if database else DATABASE_ENV)
        url = with_driver(parsed)
    store = open_store(url, jobfile)
    say(f"{display_url(url)} is at revision {current_revision(store.engine)}")
    store.dispose()
