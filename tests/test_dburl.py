"""The job file's database URL, read and written without SQLAlchemy, is SQLAlchemy's own
reading and writing of it, field by field, odd URLs included."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from collector.dburl import parse

URLS = [
    "sqlite:///collector.db",
    "sqlite:////var/lib/collector/collector.db",
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file:data.db?mode=ro&uri=true",
    "sqlite://m.db",
    "sqlite+pysqlite:///a b/c+d.db",
    "sqlite:///caf%C3%A9/x%2Fy.db",
    "postgresql://localhost/collector",
    "postgres://u:p@db.example.com:5433/c",
    "postgresql+psycopg://user:p%40ss%3Aw%2Fd@host/db?sslmode=require&application_name=x%20y",
    "postgresql+psycopg://user@[::1]:5432/db",
    "postgresql+psycopg://user:@host/db",
    "postgresql+psycopg://:secret@host/db",
    "postgresql+psycopg:///db?host=/run/postgresql",
    "postgresql+psycopg://u@h/db?b=2&a=1&b=3&c=",
    "postgresql+psycopg://u:pa ss+word@h/d b",
    "postgresql+psycopg2://u@h/db",
    "mysql://u:p@h/db",
    "postgresql+psycopg://u@h:0/db",
]

BAD = ["", "collector.db", "sqlite:/x.db", "postgresql://u@h:port/db", "postgresql://u@h:/db"]


@pytest.mark.parametrize("text", URLS)
def test_a_url_reads_and_renders_as_sqlalchemys(text: str) -> None:
    ours, theirs = parse(text), make_url(text)
    assert ours.drivername == theirs.drivername
    assert ours.backend() == theirs.get_backend_name()
    assert (ours.username, ours.password, ours.host, ours.port, ours.database) == (
        theirs.username,
        theirs.password,
        theirs.host,
        theirs.port,
        theirs.database,
    )
    for hide in (True, False):
        assert ours.render(hide_password=hide) == theirs.render_as_string(hide_password=hide)
    moved = ours.set(database="/elsewhere/x.db", drivername="postgresql+psycopg")
    assert moved.render(hide_password=False) == theirs.set(
        database="/elsewhere/x.db", drivername="postgresql+psycopg"
    ).render_as_string(hide_password=False)


@pytest.mark.parametrize("text", BAD)
def test_what_sqlalchemy_refuses_is_refused(text: str) -> None:
    with pytest.raises((ArgumentError, ValueError)):
        make_url(text)
    with pytest.raises(ValueError):
        parse(text)
