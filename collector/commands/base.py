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

from ..defaults import DATABASE_ENV
from ..errors import CollectorError, ConfigError
from ..jobfile import Config, load
from ..preflight import check_sqlite_folder, db_error, read_store
from ..sanitize import text as safe

if TYPE_CHECKING:
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
        """The database as :meth:`store` opens it, or None when it does not exist yet."""
        from ..status import exists

        config = self.config()
        if not exists(config):
            return None
        self._store = read_store(config)
        return self._store

    def errors(self) -> tuple[type[BaseException], ...]:
        """What reading the database may raise: SQLAlchemy's errors, and the driver's own (an
        export streams through the driver's connection, COPY or a server-side cursor, whose
        errors SQLAlchemy does not wrap)."""
        from sqlalchemy.exc import SQLAlchemyError

        if self._store is None:
            return (SQLAlchemyError,)
        return (SQLAlchemyError, self._store.engine.dialect.loaded_dbapi.Error)

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None


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
