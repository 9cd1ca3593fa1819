"""The collector's database read through its driver alone (``sqlite3``, ``psycopg``), opened
read-only as :func:`collector.store.read_only_engine` opens it, without importing SQLAlchemy.

``collector export`` reads only through raw driver connections (SQLite's CSV lines, PostgreSQL's
``COPY``); an SQLAlchemy engine made just to hand them out costs every export's start about
0.3 s of imports (docs/benchmarks.md, "## Export"). :class:`Database` has the few parts of an
``Engine`` that :mod:`collector.export` uses (``dialect.name``, ``dialect.loaded_dbapi``,
``raw_connection()``, ``dispose()``), so the export runs on either; its errors are the driver's
own (``dialect.raw``), which the command turns into its one line.

The URL is read by :mod:`collector.dburl` (SQLAlchemy's grammar) and connected as SQLAlchemy's
dialects connect it: a SQLite file ``mode=ro`` (``immutable=1`` when its folder is not writable
and it has no ``-wal``), with the busy timeout; PostgreSQL with the URL's parts and its query as
psycopg's keyword arguments, every transaction read-only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import defaults
from .dburl import DatabaseURL, parse, read_only_uri


class Dialect:
    """What an export asks of an engine's dialect: its name and the driver module (its ``Error``)."""

    #: The errors are the driver's own, not wrapped as SQLAlchemy's.
    raw = True

    def __init__(self, name: str, dbapi: Any) -> None:
        self.name = name
        self.loaded_dbapi = dbapi


class Connection:
    """A driver connection as SQLAlchemy's pool hands one out (``driver_connection``)."""

    def __init__(self, conn: Any) -> None:
        self.driver_connection = conn

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self.driver_connection.cursor(*args, **kwargs)

    def rollback(self) -> None:
        self.driver_connection.rollback()

    def close(self) -> None:
        self.driver_connection.close()


class Database:
    """The database at ``url``, read-only; a connection made at each :meth:`raw_connection`.

    :raises ModuleNotFoundError: PostgreSQL without psycopg installed
    """

    def __init__(self, url: str, busy_timeout_ms: int = defaults.SQLITE_BUSY_TIMEOUT_MS) -> None:
        self._url = parse(url)
        self._busy_timeout_ms = int(busy_timeout_ms)
        if self._url.backend() == "sqlite":
            import sqlite3

            self.dialect = Dialect("sqlite", sqlite3)
        else:
            import psycopg

            self.dialect = Dialect("postgresql", psycopg)

    def raw_connection(self) -> Connection:
        if self.dialect.name == "sqlite":
            return Connection(self._sqlite())
        return Connection(self._postgresql())

    def dispose(self, close: bool = True) -> None:
        """Nothing is pooled: each connection is closed by its user."""

    def _sqlite(self) -> Any:
        import sqlite3

        path = self._url.database or ""
        if path in ("", ":memory:"):
            conn = sqlite3.connect(":memory:")
        elif path.startswith("file:"):  # a SQLite URI of its own (?uri=true&mode=…): as the
            # read-only engine, SQLAlchemy's reading of it (imported for this form alone)
            args, options = _sqlalchemy_arguments(read_only_uri(self._url))
            conn = sqlite3.connect(*args, **options)
        else:
            full = os.path.abspath(path)
            folder = os.path.dirname(full)
            # SQLite could not make the -shm a read needs: the file is read as never changing.
            frozen = not os.access(folder, os.W_OK) and not os.path.exists(full + "-wal")
            uri = f"file:{quote(full)}?{'immutable=1' if frozen else 'mode=ro'}"
            conn = sqlite3.connect(uri, uri=True)
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return conn

    def _postgresql(self) -> Any:
        import psycopg

        conn = psycopg.connect(**connect_options(self._url))
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.commit()
        return conn


def connect_options(url: DatabaseURL) -> dict[str, Any]:
    """psycopg's keyword arguments for a PostgreSQL ``url``, as SQLAlchemy's psycopg dialect
    makes them (``tests/test_export_start.py`` holds them equal): the URL's parts, then its
    query. The multi-host forms (``?host=h1:p1&host=h2:p2``, ``?host=…&port=…``) are SQLAlchemy's
    own grammar: read by its dialect, imported for them alone."""
    keys = {key for key, _ in url.query}
    if "host" in keys or "port" in keys:
        _, found = _sqlalchemy_arguments(url)
        found.pop("context", None)  # SQLAlchemy's adapters: the export reads text only
        return found
    options: dict[str, Any] = {}
    for key, value in (
        ("host", url.host),
        ("dbname", url.database),
        ("user", url.username),
        ("password", url.password),
        ("port", url.port),
    ):
        if value:  # an empty part is left out, as SQLAlchemy leaves it (libpq reads PGUSER, ...)
            options[key] = value
    seen: set[str] = set()
    for key, value in url.query:
        if key in seen:
            # SQLAlchemy hands psycopg a tuple, which it refuses; never the last one silently
            # (`sslmode=require&sslmode=disable` would be a downgrade).
            raise ValueError(f"the URL's query gives {key} more than once")
        seen.add(key)
        options[key] = value
    return options


def _sqlalchemy_arguments(url: DatabaseURL) -> tuple[list[Any], dict[str, Any]]:
    """The driver's ``connect`` arguments SQLAlchemy's dialect makes of ``url``: for the rare
    URL forms whose grammar is SQLAlchemy's own, which it alone then imports."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = url.render(hide_password=False)
    try:
        args, options = create_engine(text).dialect.create_connect_args(make_url(text))
    except ArgumentError as exc:  # a URL its grammar refuses: the command's one line
        raise ValueError(str(exc)) from None
    return list(args), dict(options)


def rows(database: Any, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
    """The rows of one read-only query on a raw connection of ``database`` (a :class:`Database`
    or SQLAlchemy's ``Engine``), the connection's transaction ended after it."""
    raw = database.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()
    finally:
        raw.rollback()
        raw.close()


def has_table(database: Any, name: str, *, views: bool = False) -> bool:
    """Whether the database's current schema has table ``name`` (or, with ``views``, view)."""
    if database.dialect.name == "sqlite":
        kinds = "('table', 'view')" if views else "('table')"
        sql = f"SELECT count(*) FROM sqlite_master WHERE type IN {kinds} AND name = ?"
    else:  # pg_class, as SQLAlchemy's inspector reads it: a table the role may not read too
        kinds = "('r', 'p', 'v', 'm', 'f')" if views else "('r', 'p')"
        sql = (
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
            f"AND c.relkind IN {kinds} AND c.relname = %s"
        )
    return bool(rows(database, sql, (name,))[0][0])


def revisions(database: Any) -> list[str]:
    """The revisions in the database's ``alembic_version`` (none: no such table), read as one
    plain SELECT: Alembic's import and its reading of every migration cost a command's start
    0.07 to 0.14 s (docs/benchmarks.md)."""
    if not has_table(database, "alembic_version"):
        return []
    return [str(r[0]) for r in rows(database, "SELECT version_num FROM alembic_version")]


def migrations_dir() -> Path:
    """The Alembic scripts: inside the package when installed from a wheel, else the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("collector's migrations are missing from this installation")


def known_revisions() -> frozenset[str]:
    """The revisions of this collector's migrations, from their files' names (``0012_streams.py``
    is revision ``0012``: every migration is named so, and ``tests/test_export_start.py`` holds
    this to Alembic's own reading of them)."""
    names = os.listdir(migrations_dir() / "versions")
    return frozenset(n.split("_", 1)[0] for n in names if n.endswith(".py") and n[:4].isdigit())
