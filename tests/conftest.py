"""Shared fixtures: a strict fake Kraken on 127.0.0.1 and clients pointed at it."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event

import collector
from collector.bulk import STAGE_PREFIX
from collector.datasets import DEFAULT
from collector.testing.fake_exchange import FakeKraken


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> str:
    """Each test's nonce marks in its own folder, never the user's ~/.local/state."""
    folder = str(tmp_path / "state")
    monkeypatch.setenv("COLLECTOR_STATE_DIR", folder)
    return folder


@pytest.fixture
def fake() -> Iterator[FakeKraken]:
    with FakeKraken(tier=None) as exchange:
        yield exchange


@pytest.fixture
def keypair(fake: FakeKraken) -> tuple[str, str]:
    return fake.add_key()


@pytest.fixture
def api(fake: FakeKraken, keypair: tuple[str, str]) -> Iterator[collector.API]:
    client = collector.API(*keypair, timeout=10)
    client.uri = fake.url
    with client:
        yield client


# -- databases: real SQLite files and a real throwaway PostgreSQL server ---------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_folder() -> str | None:
    """Where the throwaway server keeps its data: in memory (``/dev/shm``) when it has room. A
    session makes ~300 databases of ~10 MB each; on this disk, removing them at the end took 55 s
    and copying each one's template is slower too. None: the usual temporary folder."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return None
    return "/dev/shm" if free >= 8 * 2**30 and os.access("/dev/shm", os.W_OK) else None


class PostgresServer:
    """initdb + pg_ctl in a temp folder, as the postgres user when the tests run as root."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            raise RuntimeError(
                "initdb/pg_ctl not found; install Debian's postgresql (.ci/run does)"
            )
        self.root = tempfile.mkdtemp(prefix="collector-pg-", dir=_memory_folder())
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            [initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        self.start()
        self.count = 0

    def start(self) -> None:
        """Start the server (again, after :meth:`halt`: same data, same port)."""
        self._run(
            [
                self.pg_ctl,
                "-D",
                self.data,
                "-l",
                os.path.join(self.root, "log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.root} -h 127.0.0.1 -F",
                "start",
            ]
        )

    def halt(self) -> None:
        """Stop the server, as a restart or a crash of the database host would."""
        self._run([self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"])

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(self.as_user + cmd, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import sqlalchemy

        self.count += 1
        name = f"test_{self.count}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collector.db'}"
    return request.getfixturevalue("postgres").new_database()


# -- which statements a test sent -----------------------------------------------------------------


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every statement sent through SQLAlchemy in this process while the test runs, in order
    (a ``before_cursor_execute`` listener on every engine)."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield sent
    event.remove(Engine, "before_cursor_execute", record)


def dataset_writes(sent: list[str]) -> tuple[list[str], list[str]]:
    """The datasets' upserts among ``sent``: those that read a staging table (filled by COPY, the
    bulk path) or looked at their key range first (a COPY into the table follows), and those that carried their rows in ``VALUES`` (the ``executemany`` path)."""
    names = "|".join(re.escape(d.name) for d in DEFAULT)
    into = re.compile(rf"INSERT INTO ({names}) \(")
    # The bulk path's look at the page's key range: a COPY into the table follows (the driver's,
    # not seen here), or, when a key is stored, the upsert from the staging table (both counted).
    probe = re.compile(rf"^SELECT 1 FROM ({names}) WHERE .*; SAVEPOINT ")
    copied, bound = [], []
    for statement in sent:
        looked = probe.match(statement)
        if looked is not None:
            copied.append(looked.group(1))
            continue
        match = into.search(statement)
        if match is None:
            continue
        if f"FROM {STAGE_PREFIX}{match.group(1)}" in statement:
            copied.append(match.group(1))
        else:
            bound.append(match.group(1))
    return copied, bound


@pytest.fixture
def copy_path(request: pytest.FixtureRequest, statements: list[str]) -> Iterator[None]:
    """On PostgreSQL, fail the test unless its dataset rows were written through the COPY path
    (and only through it); on SQLite, nothing to check."""
    names = request.fixturenames
    on_postgres = "postgres" in names and "database_url" not in names
    if "database_url" in names:
        on_postgres = request.getfixturevalue("database_url").startswith("postgresql")
    yield
    if not on_postgres:
        return
    copied, bound = dataset_writes(statements)
    assert copied, "no dataset rows were written through COPY"
    assert not bound, f"dataset rows written without COPY into {sorted(set(bound))}"
