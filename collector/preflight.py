"""What is checked, and opened, before a command uses the database and the state folder.

``run`` and ``check`` ask the same questions so that ``check`` says what ``run`` would refuse: the
keys' state folder can be written (:func:`check_state_folder`), SQLite's folder exists and can be
written (:func:`check_sqlite_folder`), the database is at a revision this collector knows and no
job would continue a cursor from another exchange or key (:func:`check_database`,
:func:`check_sources`); ``check --online`` asks the exchange whether it knows every pair
(:func:`unknown_pairs`); :func:`budget` is the rate arithmetic ``check`` reports. The commands that
only read open the database with :func:`read_store`; ``run`` and ``db upgrade`` with
:func:`open_store`. Every refusal is a :class:`ConfigError` naming the file and key: one line.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, overload

from . import defaults
from .defaults import DATA_DIR_ENV, STATE_DIR_ENV
from .errors import CollectorError, ConfigError
from .jobfile import Config, Job
from .methods import cost

if TYPE_CHECKING:
    from .store import Store


def display_url(database: str) -> str:
    """``database`` with its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(database).render_as_string(hide_password=True)


def missing_driver(shown: str, exc: ModuleNotFoundError, config_file: str | None) -> ConfigError:
    return ConfigError(
        f"cannot use {shown}: missing driver {exc.name!r} "
        "(pip install 'kraken-collector[postgres]', or '.[postgres]' from a checkout)",
        file=config_file,
        key="database",
    )


def db_error(config: Config, verb: str, exc: BaseException) -> ConfigError:
    """``cannot {verb} database …: {the driver's line}``, naming the file's ``database``."""
    from .store import error_line

    return ConfigError(
        f"cannot {verb} database {config.database_for_display()}: {error_line(exc)}",
        file=config.path,
        key="database",
    )


@overload
def open_store(database: str, config_file: str | None) -> Store: ...
@overload
def open_store(database: str, config_file: str | None, until: threading.Event) -> Store | None: ...
def open_store(
    database: str, config_file: str | None, until: threading.Event | None = None
) -> Store | None:
    """The migrated store. A database that can't be reached is a one-line error, or, with
    ``until``, waited for (a service started before its database) until the event is set:
    then None."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store, error_line

    try:
        return Store.wait_until_reachable(database, until.wait if until is not None else None)
    except ConfigError as exc:  # at a revision this collector does not know
        raise ConfigError(exc.message, file=config_file, key="database") from None
    except ModuleNotFoundError as exc:
        raise missing_driver(display_url(database), exc, config_file) from None
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot use database {display_url(database)}: {error_line(exc)}",
            file=config_file,
            key="database",
        ) from None


def read_store(config: Config) -> Store:
    """The store of a command that only reads (status, dashboard, verify, export): opened
    read-only (a database this user may only read will do; nothing is created or migrated), at
    a revision this collector knows. A missing driver or a newer collector's database is the
    one line ``run`` and ``check`` give, not a traceback or a table."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store, check_revision

    try:
        store = Store.from_url(config.database, read_only=True)
    except ModuleNotFoundError as exc:
        raise missing_driver(config.database_for_display(), exc, config.path) from None
    try:
        check_revision(store.engine)
    except ConfigError as exc:
        store.dispose()
        raise ConfigError(exc.message, file=config.path, key="database") from None
    except SQLAlchemyError as exc:
        store.dispose()
        raise db_error(config, "read", exc) from None
    return store


def check_sources(store: Store, config: Config) -> None:
    """Refuse to continue cursors that came from another exchange or key; note where each job's
    data comes from. The store is disposed when refused."""
    from .provenance import check

    try:
        check(store.engine, config, record=True)
    except BaseException:
        store.dispose()
        raise


def check_database(config: Config) -> None:
    """The database must be usable: SQLite's folder exists, and a file there is at a revision
    this collector knows (read, never created or migrated); a server answers (and is migrated);
    and no job would continue a cursor from another exchange or key."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from .provenance import check as check_provenance
    from .status import exists
    from .store import check_revision

    if not check_sqlite_folder(config):
        store = open_store(config.database, config.path)
        try:
            check_provenance(store.engine, config, record=False)
        finally:
            store.dispose()
        return
    if not exists(config):
        return
    engine = create_engine(config.database)
    try:
        try:
            check_revision(engine)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=config.path, key="database") from None
        check_provenance(engine, config, record=False)
    except SQLAlchemyError as exc:
        raise db_error(config, "use", exc) from None
    finally:
        engine.dispose()


def check_sqlite_folder(config: Config, *, writable: bool = True) -> bool:
    """For SQLite, that the file's folder exists (waiting would not make it) and, with
    ``writable``, that this user can create and write the file there (and its ``-wal``); False
    for a database that is not a SQLite file."""
    from .dburl import parse  # SQLAlchemy's reading, without importing it (read-only commands)

    url = parse(config.database)
    if url.backend() != "sqlite":
        return False
    path = url.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return True
    folder = os.path.dirname(os.path.abspath(path))
    shown = config.database_for_display()
    if not os.path.isdir(folder):
        raise ConfigError(
            f"cannot use database {shown}: its folder does not exist",
            file=config.path,
            key="database",
        )
    if not writable:
        return True
    hint = (
        f"set {DATA_DIR_ENV} to a folder this user can write (a relative SQLite file lands "
        "there), or give database: an absolute path"
    )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot use database {shown}: permission denied to create files in {folder}; {hint}",
            file=config.path,
            key="database",
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(
            f"cannot use database {shown}: permission denied to write {path}",
            file=config.path,
            key="database",
        )
    return True


def folder_problem(path: str) -> str | None:
    """Why files can't be written in the folder ``path`` (made when missing), or None."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return "permission denied" + ("" if probe == os.path.abspath(path) else f" in {probe}")
    return None


def check_state_folder(config: Config) -> None:
    """The keys' state folder (their nonce marks) can be made and written, when a private job
    needs it."""
    if not config.accounts:
        return
    problem = folder_problem(config.state_dir)
    if problem:
        raise ConfigError(
            f"cannot use the state folder {config.state_dir} ({problem}), where each API key's "
            f"nonce mark is kept: set {STATE_DIR_ENV} to a folder this user can write, e.g. "
            f"{STATE_DIR_ENV}=/var/lib/collector/state",
            file=config.path,
            key=STATE_DIR_ENV,
        )
    if os.path.lexists(config.state_dir):  # a link, a folder others write, a file not ours
        from .keystate import check_files

        check_files(config.state_dir, [(a.key, a.nonce_unit) for a in config.accounts])


def unknown_pairs(config: Config) -> list[ConfigError]:
    """Each pair the jobs and streams name that the exchange does not know (one public AssetPairs call), with
    the name Kraken knows when there is one; a failed call is a :class:`CollectorError`."""
    from .errors import RequestError
    from .methods import params_of
    from .pairs import check, same, split
    from .session import build_api

    api = build_api(config.kraken)
    try:
        answer = api.call("AssetPairs").result
    except RequestError as exc:
        raise CollectorError(
            f"check --online: cannot ask {config.kraken.url} for its pairs ({exc.reason})"
        ) from None
    finally:
        api.close()
    if not isinstance(answer, dict):
        raise CollectorError(f"check --online: {config.kraken.url} answered AssetPairs oddly")
    problems = []

    def unknown(pair: str, hint: str | None, line: int, key: str) -> None:
        problems.append(
            ConfigError(
                f"{config.kraken.url} knows no pair {pair!r}"
                + (f"; did you mean '{hint}'?" if hint else ""),
                file=config.path,
                line=line or None,
                key=key,
            )
        )

    for job in config.jobs:
        known = params_of(job.method) or {}
        for name, value in job.params.items():
            if name not in known or known[name].kind not in ("pair", "pairs"):
                continue
            for pair, hint in check(split(value), answer).items():
                unknown(pair, hint, job.line, f"jobs.{job.name}.params.{name}")
    for stream in config.streams:
        # A stream may also spell a pair as v2 does (BTC/USD for XBT/USD): the same pair.
        for pair, hint in check(stream.pairs, answer).items():
            if not any(same(pair, canonical) for canonical in answer):
                unknown(pair, hint, stream.line, f"streams.{stream.name}.pairs")
    return problems


def next_run(job: Job, now: datetime) -> str:
    """When ``job`` runs next as ``check`` shows it: ``at start`` (an interval); for a cron, its
    next time in UTC (or ``never``), and ``at start`` first when it never succeeded, as the
    service runs such a job (``check`` reads no database, so it says both)."""
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    if job.every is not None:
        return "at start"
    trigger = CronTrigger.from_crontab(job.cron or "", timezone=job.timezone)
    fire = trigger.get_next_fire_time(None, now)
    when = fire.astimezone(UTC).isoformat(timespec="seconds") if fire else "never"
    return f"{when} (at start until it first succeeds)"


@dataclass(frozen=True)
class Budget:
    """The calls a second the schedules need: the public jobs' (the machine's budget), and each
    account's private ones weighted by Kraken's cost (each key has its own counter)."""

    public: float
    private: dict[str, float]
    #: whether the file names its accounts (``accounts:``), else one implicit from ``kraken:``
    named: bool


def budget(config: Config) -> Budget:
    from .schedule import calls_per_second

    public = sum(calls_per_second(j) for j in config.jobs if not j.private)
    private = {
        a.name: sum(
            calls_per_second(j) * cost(j.method) for j in config.jobs if j.account == a.name
        )
        for a in config.accounts
    }
    named = (
        any(a.name != defaults.DEFAULT_ACCOUNT for a in config.accounts) or len(config.accounts) > 1
    )
    return Budget(public, private, named)
