"""A database URL read and written as SQLAlchemy's :func:`~sqlalchemy.engine.make_url` and
``URL.render_as_string`` do, without importing SQLAlchemy.

Loading a job file reads its database URL; importing SQLAlchemy for that costs a command's start
0.15 to 0.2 s (docs/benchmarks.md, "## Export"), which ``collector --help``, ``check`` and the
commands that open no database should not pay. The grammar, the unquoting and the rendering are
SQLAlchemy 2's own (its ``_parse_url`` pattern); ``tests/test_dburl.py`` holds every field and
both renderings equal to SQLAlchemy's over a set of URLs, odd ones included.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

# SQLAlchemy 2's pattern (sqlalchemy/engine/url.py, _parse_url), unchanged.
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True)
class DatabaseURL:
    """The parts of a database URL, as SQLAlchemy's ``URL`` holds them (``query`` as pairs, a
    repeated key once per value)."""

    drivername: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr (a log, a traceback)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    def backend(self) -> str:
        """``sqlite``, ``postgresql``: the part before any ``+driver``."""
        return self.drivername.split("+", 1)[0]

    def set(self, **parts: Any) -> DatabaseURL:
        return replace(self, **parts)

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password as ``***`` unless ``hide_password`` is False."""
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += f":{self.port}"
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            # SQLAlchemy's order: by key, each key's values as given.
            ordered = sorted(self.query, key=lambda pair: pair[0])
            s += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in ordered)
        return s


def parse(text: str) -> DatabaseURL:
    """``text`` read as SQLAlchemy reads a URL; ValueError when it is not one (no
    ``scheme://``, a port that is not a number)."""
    found = _URL.match(text)
    if found is None:
        raise ValueError("not a database URL")
    part = found.groupdict()
    username, password, database = (
        None if part[key] is None else unquote(part[key])
        for key in ("username", "password", "database")
    )
    query = tuple(parse_qsl(part["query"])) if part["query"] is not None else ()
    port = part["port"]
    return DatabaseURL(
        drivername=part["name"],
        username=username,
        password=password,
        host=part["ipv4host"] or part["ipv6host"],
        # "host:" is a port of "", which SQLAlchemy refuses as it does "host:x"
        port=None if port is None else int(port),
        database=database,
        query=query,
    )


def sqlite_file_missing(text: str) -> bool:
    """Whether ``text`` names a SQLite file that is not there yet (reading must not create it):
    False for any other database, an in-memory one, or SQLite's own ``file:`` URI (its
    ``mode`` says what may happen)."""
    url = parse(text)
    path = url.database or ""
    if url.backend() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return False
    return not os.path.exists(path)


def read_only_uri(url: DatabaseURL) -> DatabaseURL:
    """A SQLite ``file:`` URI (``sqlite:///file:PATH?uri=true``) as a read-only command opens
    it: ``mode=ro`` whatever mode it asked for (``rw``, ``rwc``, none: read-write), unless it is
    ``immutable=1``, read-only already."""
    if any(key == "immutable" for key, _ in url.query):
        return url
    return url.set(query=(*((k, v) for k, v in url.query if k != "mode"), ("mode", "ro")))
