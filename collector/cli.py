"""The ``collector`` command: a thin click layer that turns domain errors into one clear line."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from . import datasets, defaults, methods
from .backoff import Backoff
from .defaults import DATA_DIR_ENV, DATABASE_ENV, STATE_DIR_ENV
from .errors import CollectorError, ConfigError
from .jobfile import Config, json_schema, load, parse_listen
from .methods import cost
from .ratelimit import RateLimit, tier
from .sanitize import text as _safe
from .spool import peek as peek_spool

logger = logging.getLogger(__name__)


def _rate_limit_option(value: str | None) -> RateLimit | None:
    """``starter``/``intermediate``/``pro``, ``none``, or ``MAX/DECAY`` such as ``20/1``."""
    if value is None or value.lower() == "none":
        return None
    if "/" in value:
        max_, _, decay = value.partition("/")
        try:
            return RateLimit(float(max_), float(decay))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    try:
        return tier(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _say(*lines: str, err: bool = False) -> None:
    """Print each of ``lines`` as one line, every control character escaped: what a command
    prints holds outside text (an asset, a Kraken error, a lease holder, a database's message),
    which must neither forge a line nor drive the terminal."""
    for line in lines:
        click.echo(_safe(line), err=err)


class _Group(click.Group):
    """Domain errors become one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CollectorError as exc:
            # A job file with several mistakes: a line for each (ConfigErrors), as a linter.
            for line in str(exc).splitlines():
                _say(f"error: {line}", err=True)
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
            _say(f"error: {exc.strerror or type(exc).__name__}{where}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kraken-collector")
def main() -> None:
    """Run scheduled Kraken REST queries and keep every answer in SQL.

    \b
    Example:
        collector check jobs.yaml
        collector run jobs.yaml
    """


def _setup_logging(level: str, log_format: str = "text") -> None:
    from .logs import setup

    setup(level, log_format)
    # APScheduler logs every run at INFO; the collector logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _short_retries(config: Config) -> Config:
    """``run --once`` is for system cron: a call's retries end after ``ONCE_DEADLINE`` unless the
    job sets its own ``deadline`` (the next cron run tries again)."""
    jobs = tuple(
        job
        if job.deadline_set
        else dataclasses.replace(job, deadline=min(job.deadline, defaults.ONCE_DEADLINE))
        for job in config.jobs
    )
    return dataclasses.replace(config, jobs=jobs)


def _unstored(service: Any, config: Config) -> list[str]:
    """The names of the file's jobs whose runs the database refused or the spool took, filled
    as the service stores (for ``run --once``'s exit code)."""
    from .events import RecordRefused, Spooled

    found: list[str] = []
    names = {job.name for job in config.jobs}

    def refused(event: RecordRefused) -> None:
        if event.record.job in names:
            found.append(event.record.job)

    service.events.subscribe(RecordRefused, refused)
    service.events.subscribe(Spooled, lambda event: found.append("(spooled)"))
    return found


def _ignore_sighup(_signum: int, _frame: Any) -> None:
    logger.info("received SIGHUP: ignored, run --once reads the job file once")


def _open_store(
    database: str, config_file: str | None, until: threading.Event | None = None
) -> Any:
    """The migrated store. A database that can't be reached is a one-line error, or, with
    ``until``, waited for (a service started before its database) until the event is set:
    then None."""
    from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

    from .store import Store

    shown = _display_url(database)
    delays = Backoff().delays()
    while True:
        store = None
        try:
            store = Store.from_url(database)
            store.upgrade()
            return store
        except ConfigError as exc:  # at a revision this collector does not know
            if store is not None:
                store.dispose()
            raise ConfigError(exc.message, file=config_file, key="database") from None
        except ModuleNotFoundError as exc:
            raise _missing_driver(shown, exc, config_file) from None
        except SQLAlchemyError as exc:
            if store is not None:
                store.dispose()
            reason = _db_reason(exc)
            # A server that is down comes back; a SQLite file that can't be opened or created
            # (permissions, a full or read-only disk) does not: only its lock is waited for.
            sqlite = database.startswith("sqlite")
            if (
                until is None
                or not isinstance(exc, OperationalError | InterfaceError)
                or (sqlite and "locked" not in reason)
            ):
                raise ConfigError(
                    f"cannot use database {shown}: {reason}", file=config_file, key="database"
                ) from None
            delay = next(delays)
            logger.error(
                "database %s unavailable at start (%s); waiting for it, next try in %.0fs",
                shown,
                reason,
                delay,
            )
            if until.wait(delay):
                return None


def _check_sources(store: Any, config: Config) -> None:
    """Refuse to continue cursors that came from another exchange or key; note where each job's
    data comes from."""
    from .provenance import check as check_sources

    try:
        check_sources(store.engine, config, record=True)
    except BaseException:
        store.dispose()
        raise


def _db_reason(exc: BaseException) -> str:
    """The driver's own first line (SQLAlchemy's wrapping repeats the statement)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _missing_driver(shown: str, exc: ModuleNotFoundError, config_file: str | None) -> ConfigError:
    return ConfigError(
        f"cannot use {shown}: missing driver {exc.name!r} "
        "(pip install 'kraken-collector[postgres]', or '.[postgres]' from a checkout)",
        file=config_file,
        key="database",
    )


def _read_store(config: Config) -> Any:
    """The store of a command that only reads (status, dashboard, verify, export): opened
    read-only (a database this user may only read will do; nothing is created or migrated), at
    a revision this collector knows. A missing driver or a newer collector's database is the
    one line ``run`` and ``check`` give, not a traceback or a table."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store, check_revision

    try:
        store = Store.from_url(config.database, read_only=True)
    except ModuleNotFoundError as exc:
        raise _missing_driver(config.database_for_display(), exc, config.path) from None
    try:
        check_revision(store.engine)
    except ConfigError as exc:
        store.dispose()
        raise ConfigError(exc.message, file=config.path, key="database") from None
    except SQLAlchemyError as exc:
        store.dispose()
        raise _db_error(config, "read", exc) from None
    return store


def _load_for_reading(jobfile: str, database: str | None) -> Config:
    """The job file of a command that only reads the database: it sends nothing, so it needs
    no key (a key file it can't read is no error)."""
    return load(jobfile, database=database, keys=False)


def _db_error(config: Config, verb: str, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"cannot {verb} database {config.database_for_display()}: {_db_reason(exc)}",
        file=config.path,
        key="database",
    )


def _display_url(database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database).render_as_string(hide_password=True)


_jobfile = click.argument("jobfile", type=click.Path(dir_okay=False))
_db = click.option(
    "--db", "database", metavar="URL", help=f"Database URL; overrides the file and ${DATABASE_ENV}."
)
_log = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


@main.command()
@_jobfile
@_db
@click.option(
    "--once",
    is_flag=True,
    help="Run every job once, at the same time, and exit: 0 if every run succeeded and is "
    "stored, 1 if one failed, was not run, or was not stored as it ran; 2 for a bad file or "
    "database; 130 when interrupted.",
)
@click.option(
    "--workers", default=defaults.WORKERS, show_default=True, help="Threads making calls."
)
@_log
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object per line (time, level, logger, message, job, status).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve /metrics and /healthz here (overrides the file's metrics.listen; port 0: any).",
)
def run(
    jobfile: str,
    database: str | None,
    once: bool,
    workers: int,
    log_level: str,
    log_format: str,
    metrics_listen: str | None,
) -> None:
    """Run the jobs of JOBFILE on their schedules until SIGTERM or Ctrl-C.

    Every run, success or failure, becomes a row in the database's `runs`
    table. A database that can't be reached at start is waited for (logged,
    retried with backoff); with --once it is an error instead. With --once,
    each job runs once (for system cron).

    \b
    Example:
        collector run jobs.yaml
        collector run --once --db sqlite:///prices.db jobs.yaml
        collector run --metrics-listen 127.0.0.1:9108 --log-format json jobs.yaml
        kill -HUP <pid>    # reload jobs.yaml
        kill -USR1 <pid>   # run every job now (a balance snapshot now)
    """
    from .reload import Reloader
    from .schedule import RunNow
    from .service import Service, stop_signals

    if once:  # SIGHUP must never kill a run; --once reads the file once
        signal.signal(signal.SIGHUP, _ignore_sighup)
    else:  # taken from the first moment; applied once the service is ready
        reloader = Reloader(lambda: load_config())
        reloader.install()
        run_now = RunNow()
        run_now.install()
    _setup_logging(log_level, log_format)
    if metrics_listen is not None and parse_listen(metrics_listen) is None:
        raise click.BadParameter(
            f"must be HOST:PORT, not {metrics_listen!r}", param_hint="--metrics-listen"
        )

    def load_config() -> Config:
        return load(jobfile, database=database, metrics_listen=metrics_listen)

    config = load_config()
    for warning in config.warnings:
        logger.warning("%s", warning)
    _check_state_folder(config)
    _check_sqlite_folder(config)
    if once:
        config = _short_retries(config)
        # Ctrl-C (or SIGTERM) stops what waits, keeps what finished, and exits 130 like a shell.
        with stop_signals() as stop:
            store = _open_store(config.database, jobfile)
            _check_sources(store, config)
            service = Service(config, store=store, workers=workers)
            unstored = _unstored(service, config)
            try:
                ok = service.run_once(stop)
            finally:
                service.stop()
        if stop.is_set():
            logger.warning("interrupted: the runs that finished are stored")
            sys.exit(130)
        for held in service.held_elsewhere:
            _say(
                f"error: not run: {held}; another collector is running these jobs "
                "(stop it, or let it collect)",
                err=True,
            )
        # A run that succeeded at the exchange but that the database refused (a value it can't
        # hold, memory) is stored as a failure, and one in the spool is not stored yet: neither
        # is the success cron must be told of.
        sys.exit(0 if ok and not unstored else 1)
    try:
        with stop_signals() as stop:
            store = _open_store(config.database, jobfile, until=stop)
            if store is None:
                logger.info("stopped while waiting for the database")
                return
            _check_sources(store, config)
            service = Service(config, store=store, workers=workers)
            reloader.attach(service)  # SIGHUP re-reads the job file
            run_now.schedule = service.schedule  # SIGUSR1 runs every job now
            service.run_forever(stop)
    finally:
        reloader.uninstall()
        run_now.uninstall()
    if service.failed:
        _say(f"error: collector stopped: {service.failed}", err=True)
        sys.exit(1)


@main.command()
@_jobfile
@_db
@click.option(
    "--online",
    is_flag=True,
    help="Also ask the exchange (one public AssetPairs call) whether it knows every pair.",
)
def check(jobfile: str, database: str | None, online: bool) -> None:
    """Validate JOBFILE and show each job's schedule and next run.

    Checks what would fail at run time: every key and parameter, the
    database, the state folder, cursors from another exchange or key.
    Warns when the schedules need more calls than the rate limits allow.
    With --online, asks the exchange once (AssetPairs, public) whether it
    knows each pair, and suggests the name it knows.

    \b
    Example:
        collector check jobs.yaml
        collector check --online jobs.yaml
    """
    from datetime import UTC, datetime

    from apscheduler.triggers.cron import CronTrigger

    from .schedule import calls_per_second

    config = load(jobfile, database=database)
    _check_state_folder(config)
    _check_database(config)
    if online:
        _check_pairs(config)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    now = datetime.now(UTC)
    click.echo(
        f"{jobfile}: {len(config.jobs)} job(s), database {config.database_for_display()}, "
        f"exchange {config.kraken.url}"
    )
    width = max(len(j.name) for j in config.jobs)
    for job in config.jobs:
        if job.every is not None:
            upcoming = "at start"
        else:
            trigger = CronTrigger.from_crontab(job.cron or "", timezone=job.timezone)
            fire = trigger.get_next_fire_time(None, now)
            upcoming = fire.astimezone(UTC).isoformat(timespec="seconds") if fire else "never"
        kind = "private" if job.private else "public"
        click.echo(
            f"  {job.name:<{width}}  {job.method:<13} {kind:<7}  {job.describe():<28} "
            f"next {upcoming}"
        )
    public = sum(calls_per_second(j) for j in config.jobs if not j.private)
    k = config.kraken
    # Each account has its own key, so its own counter; the public budget is the machine's.
    needs = {
        a.name: sum(
            calls_per_second(j) * cost(j.method) for j in config.jobs if j.account == a.name
        )
        for a in config.accounts
    }
    if [a.name for a in config.accounts] in (
        [],
        [defaults.DEFAULT_ACCOUNT],
    ) and not _named_accounts(config):
        private = needs.get(defaults.DEFAULT_ACCOUNT, 0.0)
        click.echo(
            f"budget: private {private:.4g} calls/s of {k.tier.decay:g}/s ({k.tier_name}), "
            f"public {public:.4g} calls/s of {k.public_rate_limit.decay:g}/s"
        )
    else:
        for account in config.accounts:
            click.echo(
                f"budget: account {account.name}: private {needs[account.name]:.4g} calls/s of "
                f"{account.tier.decay:g}/s ({account.tier_name})"
            )
        click.echo(f"budget: public {public:.4g} calls/s of {k.public_rate_limit.decay:g}/s")
    waiting = peek_spool(config.spool_path)
    click.echo(
        f"spool: {config.spool_path}: "
        + (f"{waiting:,} runs waiting" if waiting else "empty")
        + f" (holds at most {config.spool_max_runs:,})"
    )
    for account in config.accounts:
        if needs[account.name] > account.tier.decay:
            who = "" if account.name == defaults.DEFAULT_ACCOUNT else f"account {account.name} "
            click.echo(
                f"warning: {who}needs {needs[account.name]:.2g} private calls/s, "
                f"{account.tier_name} allows {account.tier.decay:g}/s; runs will be late",
                err=True,
            )
    if public > k.public_rate_limit.decay:
        click.echo(
            f"warning: needs {public:.2g} public calls/s, the public budget allows "
            f"{k.public_rate_limit.decay:g}/s; runs will be late",
            err=True,
        )


def _check_pairs(config: Config) -> None:
    """Every pair the jobs name is one the exchange knows (one public AssetPairs call); each that
    is not gets a line with the name Kraken knows, and exit code 2."""
    from .errors import RequestError
    from .methods import params_of
    from .pairs import check as unknown_pairs
    from .pairs import split
    from .service import build_api

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
    for job in config.jobs:
        known = params_of(job.method) or {}
        for name, value in job.params.items():
            if name not in known or known[name].kind not in ("pair", "pairs"):
                continue
            for pair, hint in unknown_pairs(split(value), answer).items():
                problems.append(
                    ConfigError(
                        f"{config.kraken.url} knows no pair {pair!r}"
                        + (f"; did you mean '{hint}'?" if hint else ""),
                        file=config.path,
                        line=job.line or None,
                        key=f"jobs.{job.name}.params.{name}",
                    )
                )
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)
    click.echo(f"online: {config.kraken.url} knows every pair the jobs name")


def _named_accounts(config: Config) -> bool:
    """Whether the file has an ``accounts:`` section (else one account from ``kraken:``)."""
    return (
        any(a.name != defaults.DEFAULT_ACCOUNT for a in config.accounts) or len(config.accounts) > 1
    )


def _check_database(config: Config) -> None:
    """The database must be usable: SQLite's folder exists, and a file there is at a revision
    this collector knows (read, never created or migrated); a server answers (and is migrated);
    and no job would continue a cursor from another exchange or key."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from .provenance import check as check_sources
    from .status import exists
    from .store import check_revision

    if not _check_sqlite_folder(config):
        store = _open_store(config.database, config.path)
        try:
            check_sources(store.engine, config, record=False)
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
        check_sources(engine, config, record=False)
    except SQLAlchemyError as exc:
        raise _db_error(config, "use", exc) from None
    finally:
        engine.dispose()


def _check_sqlite_folder(config: Config, *, writable: bool = True) -> bool:
    """For SQLite, that the file's folder exists (waiting would not make it) and, with
    ``writable``, that this user can create and write the file there (and its ``-wal``); False
    for a database that is not a SQLite file."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database)
    if url.get_backend_name() != "sqlite":
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


def _folder_problem(path: str) -> str | None:
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


def _check_state_folder(config: Config) -> None:
    """The keys' state folder (their nonce marks) can be made and written, when a private job
    needs it."""
    if not config.accounts:
        return
    problem = _folder_problem(config.state_dir)
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


@main.command()
@_jobfile
@_db
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(jobfile: str, database: str | None, as_json: bool) -> None:
    """Show what each job of JOBFILE has collected, from the database alone.

    Per job: last run, last success, failures in the last 24 h, its own rows
    in its dataset (its pair and interval, its account) and the newest, its
    cursor (and paging progress) and gaps; then the spool and the oldest run
    kept. Exit 0 when healthy, 1 when a job is stale (no success for its
    stale_after), 2 when the file is bad or the database can't be read: a
    cron or Nagios check.

    \b
    Example:
        collector status jobs.yaml
        collector status --json jobs.yaml | jq '.jobs[] | {name, state}'
    """
    import json
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from .status import collect, exists, render

    config = _load_for_reading(jobfile, database)
    _check_sqlite_folder(config, writable=False)
    store = _read_store(config) if exists(config) else None
    try:
        report = collect(config, store, datetime.now(UTC), peek_spool(config.spool_path))
    except SQLAlchemyError as exc:
        raise _db_error(config, "read", exc) from None
    finally:
        if store is not None:
            store.dispose()
    # JSON escapes every control character itself; render() escapes each value of its table.
    _say(*(json.dumps(report, indent=2) if as_json else render(report)).splitlines())
    sys.exit(0 if report["healthy"] else 1)


@main.command()
@_jobfile
@_db
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=f"127.0.0.1:{defaults.DASHBOARD_PORT}",
    show_default=True,
    help="Where to serve the page (port 0: any free port).",
)
def dashboard(jobfile: str, database: str | None, listen: str) -> None:
    """Serve a read-only page of JOBFILE's database until Ctrl-C.

    From the database alone, like status (for run --once from cron): every
    job's state, each account's portfolio value over time in valuation.quote
    (USD by default), a price chart per collected pair, the ledger's
    verification and the gaps; ranges day, week, year and all. No script,
    nothing fetched from the internet. A running service serves the same page
    at / of its metrics listener.

    \b
    Example:
        collector dashboard jobs.yaml
        collector dashboard --listen 0.0.0.0:9109 jobs.yaml
    """
    from .dashboard import Dashboard
    from .listener import Listener
    from .status import exists

    _setup_logging("warning")
    address = parse_listen(listen)
    if address is None:
        raise click.BadParameter(f"must be HOST:PORT, not {listen!r}", param_hint="--listen")
    config = _load_for_reading(jobfile, database)
    _check_sqlite_folder(config, writable=False)
    store = _read_store(config) if exists(config) else None
    page = Dashboard(config, store, spooled=lambda: peek_spool(config.spool_path))
    try:
        server = Listener(
            address, {"/": page.answer}, "dashboard", hosts=config.metrics_allowed_hosts
        )
    except OSError as exc:
        raise CollectorError(
            f"--listen: cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}"
        ) from None
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    _say(
        f"dashboard of {config.database_for_display()} on http://{shown}:{port}/ "
        "(read-only; Ctrl-C stops)"
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if store is not None:
            store.dispose()


@main.command()
@_jobfile
@_db
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--account", metavar="NAME", help="Only this account (default: every account).")
def verify(jobfile: str, database: str | None, as_json: bool, account: str | None) -> None:
    """Prove the collected ledger complete by Kraken's own running balances.

    From the database alone, for every account and asset: each ledger
    entry's balance is the one before + amount - fee; each balance
    snapshot equals the ledger's balance at its time; each fill has its
    ledger legs and each closed order is the sum of its fills. What was
    collected after the ledger's last finished window is not yet
    verifiable. Exit 0 when all hold, 1 with a line per break, 2 when the
    file is bad or the database can't be read.

    \b
    Example:
        collector verify jobs.yaml
        collector verify --account main --json jobs.yaml | jq '.accounts[].breaks'
    """
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from .status import exists
    from .verify import scopes
    from .verify import verify as check

    config = _load_for_reading(jobfile, database)
    _check_sqlite_folder(config, writable=False)
    names = [a.name for a in config.accounts]
    if account is not None and account not in names:
        raise ConfigError(
            f"--account: no account {account!r} (one of {', '.join(names) or 'none'})"
        )
    if not exists(config):
        raise ConfigError(
            f"cannot read database {config.database_for_display()}: it does not exist yet",
            file=config.path,
            key="database",
        )
    store = _read_store(config)
    try:
        reports = check(store.engine, scopes(config.jobs, config.retention, account))
    except SQLAlchemyError as exc:
        raise _db_error(config, "read", exc) from None
    finally:
        store.dispose()
    ok = all(r.ok for r in reports)
    if as_json:
        _say(
            *json.dumps({"ok": ok, "accounts": [r.json() for r in reports]}, indent=2).splitlines()
        )
    else:
        for report in reports:
            _say(*(finding.line() for finding in report.findings))
        for report in reports:
            _say(report.summary())
            _say(*(f"account {report.account}: {note}" for note in report.notes))
        if not reports:
            _say("no private history job in the file: nothing to verify")
    sys.exit(0 if ok else 1)


def _moment(value: str | None, option: str) -> Any:
    """``--since``/``--until``: a date (UTC midnight), an ISO time (UTC unless it says) or unix
    seconds, as an aware datetime; one line for anything else."""
    from datetime import UTC, datetime

    if value is None:
        return None
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise ConfigError(
            f"{value!r} is not a date, a time or unix seconds ({exc}); e.g. 2024-01-31, "
            "2024-01-31T12:00:00Z or 1706702400",
            key=option,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@main.command()
@click.argument("table")
@_jobfile
@_db
@click.option(
    "--format",
    "format_",
    type=click.Choice(["csv", "jsonl", "kraken"]),
    default="csv",
    show_default=True,
    help="kraken: Kraken's own ledgers.csv (TABLE ledger) or trades.csv (TABLE my_trades).",
)
@click.option("--since", metavar="WHEN", help="Rows at or after: a date, a time or unix seconds.")
@click.option("--until", metavar="WHEN", help="Rows before: a date, a time or unix seconds.")
@click.option("--account", metavar="NAME", help="Only this account's rows.")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write to FILE (created 0600, replaced once complete) instead of stdout ('-'); a FIFO "
    "or a device is written into, a folder or a link refused.",
)
def export(
    table: str,
    jobfile: str,
    database: str | None,
    format_: str,
    since: str | None,
    until: str | None,
    account: str | None,
    output: str | None,
) -> None:
    """Write TABLE (any table or view) as CSV, JSON lines, or Kraken's CSV.

    Streamed: any size in constant memory. Decimals are exact text, times
    UTC. --format kraken writes the layout of Kraken's own ledgers.csv
    (from the ledger) and trades.csv (from my_trades), which tax tools
    import; one account's, oldest first. A file written with -o is the
    owner's alone, and replaces FILE only once complete; a FIFO or a
    device (/dev/null) is written into, never replaced.

    \b
    Example:
        collector export ledger jobs.yaml --format kraken -o ledgers.csv
        collector export my_trades jobs.yaml --format kraken --since 2024-01-01 --until 2025-01-01
        collector export trades_named jobs.yaml --format jsonl | head
    """
    from sqlalchemy.exc import SQLAlchemyError

    from .export import Request, check, target
    from .export import export as write
    from .status import exists

    request = Request(table, format_, _moment(since, "--since"), _moment(until, "--until"), account)
    check(request)
    where = target(output)  # before anything is read: a folder or a link is refused now
    config = _load_for_reading(jobfile, database)
    _check_sqlite_folder(config, writable=False)
    if not exists(config):
        raise ConfigError(
            f"cannot read database {config.database_for_display()}: it does not exist yet",
            file=config.path,
            key="database",
        )
    store = _read_store(config)
    # The export streams through the driver's own connection (COPY, a server-side cursor), whose
    # errors SQLAlchemy does not wrap: a server that is down is still one line.
    driver_error = store.engine.dialect.loaded_dbapi.Error
    try:
        _has_table(store, table, config)
        if format_ == "kraken" and account is None:
            request = _one_account(store, request, config)
        with _output(where) as out:
            count = write(store.engine, request, out)
    except (SQLAlchemyError, driver_error) as exc:
        raise _db_error(config, "read", exc) from None
    finally:
        store.dispose()
    if where.path is not None:
        _say(f"{count:,} rows of {table} written to {where.path}", err=True)


def _has_table(store: Any, table: str, config: Config) -> None:
    """The database has ``table``, or one line saying how to add it (an older collector migrated
    it), before anything is written."""
    from sqlalchemy import inspect

    from .store import current_revision

    with store.engine.connect() as conn:
        found = inspect(conn)
        if table in found.get_table_names() or table in found.get_view_names():
            return
    raise ConfigError(
        f"database {config.database_for_display()} has no {table} yet (at revision "
        f"{current_revision(store.engine)}, an older collector's): "
        f"`collector db upgrade {os.path.basename(config.path)}` adds it",
        file=config.path,
        key="database",
    )


def _one_account(store: Any, request: Any, config: Config) -> Any:
    """Kraken's files are one account's: the account of the table's rows, or an error that asks
    which when there are several."""
    import dataclasses

    from sqlalchemy import text

    with store.engine.connect() as conn:
        found = (
            conn.execute(
                text(f"SELECT DISTINCT account FROM {request.table} ORDER BY account LIMIT 2")
            )
            .scalars()
            .all()
        )
    if len(found) > 1:
        raise ConfigError(
            f"the {request.table} holds several accounts' rows ({', '.join(found)}, ...); "
            "a Kraken file is one account's: say which with --account",
            file=config.path,
            key="--account",
        )
    return dataclasses.replace(request, account=found[0] if found else None)


@contextlib.contextmanager
def _output(where: Any) -> Iterator[Any]:
    """stdout, or ``export.open_target``'s stream."""
    from .export import open_target

    if where.path is not None:
        with open_target(where) as out:
            yield out
        return
    try:
        yield sys.stdout.buffer
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


@main.command("methods")
@click.argument("names", nargs=-1)
def list_methods(names: tuple[str, ...]) -> None:
    """List the Kraken methods a job can use, with their parameters.

    Each method says whether it is public or private (and the API key
    permission it needs), the table it fills, and its parameters with their
    types; * marks a required one. Parameters the collector sets itself
    (since, start, end, ofs) are not listed: a job's since: says where a
    history starts. State-changing methods are never called.

    \b
    Example:
        collector methods
        collector methods OHLC Ledgers
    """
    import difflib

    chosen = list(names) or list(methods.READ_METHODS)
    for name in chosen:
        method = methods.READ_METHODS.get(name)
        if method is None:
            close = difflib.get_close_matches(name, list(methods.READ_METHODS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CollectorError(f"unknown method {name!r}{hint}")
        kind = "public" if method.public else f"private, needs {method.permission or 'a key'}"
        click.echo(f"{method.name} ({kind}): {method.doc}")
        params = methods.params_of(method.name)
        if params is None:
            click.echo("    (parameters not checked)")
            continue
        shown = {k: p for k, p in params.items() if k not in method.managed}
        width = max((len(k) for k in shown), default=0) + 1
        for key, param in shown.items():
            mark = "*" if key in method.required else " "
            click.echo(f"  {mark} {key:<{width}} {param.kind:<8} {param.describe()}")
        if method.name in datasets.history_methods():
            click.echo("    since: (job key) where its history starts: all, a date or unix seconds")


@main.group()
def db() -> None:
    """Database maintenance.

    \b
    Example:
        collector db upgrade jobs.yaml
        collector db upgrade --db postgresql+psycopg://collector@localhost/kraken
    """


@db.command()
@click.argument("jobfile", required=False, type=click.Path(dir_okay=False))
@_db
def upgrade(jobfile: str | None, database: str | None) -> None:
    """Apply the database migrations (also done automatically by `run`).

    The database comes from --db, $COLLECTOR_DATABASE_URL, JOBFILE's
    `database`, or sqlite:///collector.db.

    \b
    Example:
        collector db upgrade --db postgresql+psycopg://collector@localhost/kraken
        collector db upgrade jobs.yaml
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from .jobfile import database_problem, with_driver
    from .store import current_revision

    if jobfile:
        url = load(jobfile, database=database).database
    else:
        url = database or os.environ.get(DATABASE_ENV) or defaults.DATABASE
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            parsed = None
        problem = database_problem(parsed) if parsed else "malformed; e.g. sqlite:///collector.db"
        if problem or parsed is None:
            raise ConfigError(problem or "", key="--db" if database else DATABASE_ENV)
        url = with_driver(parsed)
    store = _open_store(url, jobfile)
    _say(f"{_display_url(url)} is at revision {current_revision(store.engine)}")
    store.dispose()


@main.command("schema")
def schema() -> None:
    """Print the job file's JSON Schema, for an editor to complete and check it.

    Every key with its description and bounds; an unknown key is refused.
    `collector check` still judges what only it can (crons, parameters, keys).

    \b
    Example:
      collector schema > jobs.schema.json
      # first line of jobs.yaml:
      # yaml-language-server: $schema=jobs.schema.json
    """
    import json

    click.echo(json.dumps(json_schema(), indent=2))


@main.command("fake-exchange")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port (0: any free port).")
@click.option(
    "--key-file",
    default="fake.key",
    show_default=True,
    help="krakenex-format key file to accept; created with a random key if missing.",
)
@click.option(
    "--tier",
    "tier_",
    default="starter",
    show_default=True,
    help="Private counter: starter, intermediate, pro, MAX/DECAY (e.g. 20/1) or none.",
)
@click.option(
    "--public-limit",
    default="none",
    show_default=True,
    help="Per-IP public counter, MAX/DECAY (e.g. 5/1) or none.",
)
@click.option(
    "--growth",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="New entries a second in each history (ledger entries, fills, closed orders, public "
    "trades).",
)
@click.option(
    "--permissions",
    metavar="LIST",
    help="The key's permissions, comma-separated from funds, open, closed, ledger, export "
    "(default: all); a private call that needs another gets EGeneral:Permission denied.",
)
def fake_exchange(
    host: str,
    port: int,
    key_file: str,
    tier_: str,
    public_limit: str,
    growth: float,
    permissions: str | None,
) -> None:
    """Serve a strict local stand-in for Kraken's REST API, to try a job file offline.

    \b
    Example:
        collector fake-exchange --port 8765 --key-file fake.key
        # then in jobs.yaml:  kraken: {url: http://127.0.0.1:8765, key_file: fake.key}
        # inject a fault:     curl -X POST 'http://127.0.0.1:8765/_fake/fault?kind=http_502'

    \b
    Rehearse going live with a key that lacks a permission (Ledgers is denied):
        collector fake-exchange --key-file fake.key --permissions funds,open,closed

    \b
    Fault kinds (POST /_fake/fault?kind=K[&method=M][&count=N]):
        http_500, http_502, http_520  an HTML error page with that status
        slow                          answer after delay= seconds (default 5)
        reset                         reset the connection, no answer
        truncated                     cut-off JSON
        not_json                      an HTML page with status 200
        kraken_error                  {"error": [error=...]} (default EService:Unavailable)
        raw                           body= as given, with status= (default 200)

    \b
    The account disagreeing with itself (for collector verify to catch):
        POST /_fake/hide?id=L...              leave one ledger entry out of Ledgers
        POST /_fake/offset?asset=A&amount=X   add X to asset A in Balance, BalanceEx
    """
    from .testing.fake_exchange import FakeKraken, new_key_file

    allowed = _permissions_option(permissions)
    try:
        fake = FakeKraken(
            tier=_rate_limit_option(tier_),
            public_limit=_rate_limit_option(public_limit),
            host=host,
            port=port,
            growth=growth,
        )
    except OSError as exc:
        raise CollectorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        if os.path.exists(key_file):
            with open(key_file) as f:
                key, secret = f.readline().strip(), f.readline().strip()
        else:
            key, secret = new_key_file(key_file)
            _say(f"wrote a new random key pair to {key_file}")
        fake.add_key(key, secret, permissions=allowed)
    except (OSError, ValueError) as exc:
        fake.close()
        reason = getattr(exc, "strerror", None) or "not a key file (key, then base64 secret)"
        raise CollectorError(f"{key_file}: {reason}") from None
    _say(f"fake Kraken listening on {fake.url} (key file {key_file}); Ctrl-C stops it")
    if allowed is not None:
        click.echo(f"the key may only: {', '.join(sorted(allowed)) or 'nothing private'}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


#: ``fake-exchange --permissions`` names for Kraken's key permissions.
_PERMISSIONS = {
    "funds": methods.QUERY_FUNDS,
    "open": methods.QUERY_OPEN,
    "closed": methods.QUERY_CLOSED,
    "ledger": methods.QUERY_LEDGER,
    "export": methods.EXPORT_DATA,
}


def _permissions_option(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in _PERMISSIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; use {', '.join(_PERMISSIONS)}",
            param_hint="--permissions",
        )
    return frozenset(_PERMISSIONS[n] for n in names)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a foreground server the way Ctrl-C does."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    main()
