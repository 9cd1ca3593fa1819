"""What every command shares: printing through :func:`say`, domain errors as one line
(:class:`Group`), the common arguments, and :func:`reads_database`, which opens what a read-only
command reads."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..dburl import sqlite_file_missing
from ..defaults import DATABASE_ENV
from ..errors import CollectorError, ConfigError
from ..jobfile import Config, load
from ..preflight import check_sqlite_folder, db_error, missing_driver
from ..rawdb import known_revisions
from ..sanitize import text as safe

if TYPE_CHECKING:
    from ..rawdb import Database
    from ..store import Store


def say(*lines: str, err: bool = False) -> None:
    """Print each of ``lines`` as one line, every control character escaped: what a command
    prints holds outside text (an asset, a Kraken error, a lease holder, a database's message),
    which must neither forge a line nor drive the terminal."""
    for line in lines:
        click.echo(safe(line), err=err)


class Group(click.Group):
    """Domain errors become one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CollectorError as exc:
            # A job file with several mistakes: a line for each (ConfigErrors), as a linter.
            for line in str(exc).splitlines():
                say(f"error: {line}", err=True)
            ctx.exit(2)
        except BrokenPipeError:
            # `collector methods | head`: the reader has what it wanted. Nothing more goes to
            # the closed pipe (Python's own flush at exit included), and that is no error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)
        except OSError as exc:
            # The machine said no (a folder not writable, a disk full) somewhere no check
            # foresaw: still one line that says what and where, never a traceback.
            where = f": {exc.filename}" if exc.filename else ""
            say(f"error: {exc.strerror or type(exc).__name__}{where}", err=True)
            ctx.exit(2)


def setup_logging(level: str, log_format: str = "text") -> None:
    from ..logs import setup

    setup(level, log_format)
    # APScheduler logs every run at INFO; the collector logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a foreground server the way Ctrl-C does."""
    raise KeyboardInterrupt


jobfile_argument = click.argument("jobfile", type=click.Path(dir_okay=False))
db_option = click.option(
    "--db", "database", metavar="URL", help=f"Database URL; overrides the file and ${DATABASE_ENV}."
)
log_level_option = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


class Reading:
    """What a read-only command reads, opened when it asks (so that its own options are checked
    first): the job file without keys (it sends nothing), then the database read-only."""

    def __init__(self, jobfile: str, database: str | None) -> None:
        self._jobfile = jobfile
        self._database = database
        self._config: Config | None = None
        self._store: Store | None = None
        self._raw: Database | None = None

    def config(self) -> Config:
        """The job file; its SQLite folder must exist (nothing is created)."""
        if self._config is None:
            self._config = load(self._jobfile, database=self._database, keys=False)
            check_sqlite_folder(self._config, writable=False)
        return self._config

    def store(self) -> Store:
        """The database, read-only, at a revision this collector knows; one that does not exist
        yet is the one line saying so."""
        store = self.store_if_any()
        if store is None:
            config = self.config()
            raise ConfigError(
                f"cannot read database {config.database_for_display()}: it does not exist yet",
                file=config.path,
                key="database",
            )
        return store

    def store_if_any(self) -> Store | None:
        """The database as :meth:`store` opens it, or None when it does not exist yet (a SQLite
        file not there: reading must not create it)."""
        config = self.config()
        if not _exists(config.database):
            return None
        self._store = _read_store(config)
        return self._store

    def database(self) -> Database:
        """The database as :meth:`store` opens it (read-only, its revision checked, the same
        lines for the same faults), read through the driver alone (:mod:`collector.rawdb`):
        no SQLAlchemy imported, for what reads only raw connections (``export``)."""
        from ..rawdb import Database, revisions

        config = self.config()
        if not _exists(config.database):
            raise ConfigError(
                f"cannot read database {config.database_for_display()}: it does not exist yet",
                file=config.path,
                key="database",
            )
        try:
            found = Database(config.database)
        except ModuleNotFoundError as exc:
            raise missing_driver(config.database_for_display(), exc, config.path) from None
        self._raw = found
        try:
            stored = revisions(found)
        except (found.dialect.loaded_dbapi.Error, ValueError) as exc:  # ValueError: rawdb's URL
            raise db_error(config, "read", exc) from None
        _known(stored, config)
        return found

    def errors(self) -> tuple[type[BaseException], ...]:
        """What reading the database may raise: SQLAlchemy's errors, and the driver's own (an
        export streams through the driver's connection, COPY or a server-side cursor, whose
        errors SQLAlchemy does not wrap)."""
        if self._raw is not None:  # SQLAlchemy not imported: none of its errors can come
            return (self._raw.dialect.loaded_dbapi.Error,)
        from sqlalchemy.exc import SQLAlchemyError

        if self._store is None:
            return (SQLAlchemyError,)
        return (SQLAlchemyError, self._store.engine.dialect.loaded_dbapi.Error)

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None


def _exists(database: str) -> bool:
    """False for a SQLite file that is not there yet (:func:`collector.dburl.sqlite_file_missing`,
    as :func:`collector.status.exists` asks it)."""
    return not sqlite_file_missing(database)


def _read_store(config: Config) -> Store:
    """The store of a read-only command, as :func:`collector.preflight.read_store` opens it
    (read-only; a missing driver, a newer collector's database, an error reading: one line),
    its revision checked by :func:`known_revisions` instead of Alembic's script folder (the
    import of Alembic and the reading of every migration cost 0.07 to 0.14 s of a command's
    start, docs/benchmarks.md)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from ..store import Store

    try:
        store = Store.from_url(config.database, read_only=True)
    except ModuleNotFoundError as exc:
        raise missing_driver(config.database_for_display(), exc, config.path) from None
    try:
        with store.engine.connect() as conn:
            found: list[str] = []
            if store.engine.dialect.has_table(conn, "alembic_version"):
                rows = conn.execute(text("SELECT version_num FROM alembic_version"))
                found = list(rows.scalars())
    except SQLAlchemyError as exc:
        store.dispose()
        raise db_error(config, "read", exc) from None
    try:
        _known(found, config)
    except ConfigError:
        store.dispose()
        raise
    return store


def _known(found: list[str], config: Config) -> None:
    """Every revision ``found`` in the database is one this collector knows, or one line."""
    known = known_revisions()
    for revision in found:
        if revision not in known:
            raise ConfigError(
                f"the database is at revision {revision}, which this collector does not know "
                f"(it knows up to {max(known)}): a newer collector migrated it; run that "
                "version, or upgrade this one",
                file=config.path,
                key="database",
            )


def reads_database(command: Callable[..., None]) -> Callable[..., None]:
    """A command that only reads the database: it takes JOBFILE and ``--db``, and gets a
    :class:`Reading` as its first argument. The database, once opened, is disposed however the
    command ends, and an error reading it is the one line ``cannot read database …``."""

    @functools.wraps(command)
    def wrapper(jobfile: str, database: str | None, **options: Any) -> None:
        reading = Reading(jobfile, database)
        try:
            command(reading, **options)
        except Exception as exc:
            if isinstance(exc, reading.errors()):
                raise db_error(reading.config(), "read", exc) from None
            raise
        finally:
            reading.close()

    return jobfile_argument(db_option(wrapper))
