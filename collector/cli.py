"""The ``collector`` command: a thin click layer that turns domain errors into one clear line."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any

import click

from . import defaults
from .backoff import Backoff
from .config import Config, load, parse_listen
from .defaults import DATABASE_ENV
from .errors import CollectorError, ConfigError
from .methods import cost
from .ratelimit import RateLimit, tier
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


class _Group(click.Group):
    """Domain errors become one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CollectorError as exc:
            click.echo(f"error: {exc}", err=True)
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
            raise ConfigError(
                f"cannot use {shown}: missing driver {exc.name!r} "
                "(pip install 'kraken-collector[postgres]', or '.[postgres]' from a checkout)",
                file=config_file,
                key="database",
            ) from None
        except SQLAlchemyError as exc:
            if store is not None:
                store.dispose()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            if until is None or not isinstance(exc, OperationalError | InterfaceError):
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
    help="Run every job once, at the same time, and exit: 0 if all succeeded, else 1; "
    "130 when interrupted.",
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
    """
    from .reload import Reloader
    from .service import Service, stop_signals

    if once:  # SIGHUP must never kill a run; --once reads the file once
        signal.signal(signal.SIGHUP, _ignore_sighup)
    else:  # taken from the first moment; applied once the service is ready
        reloader = Reloader(lambda: load_config())
        reloader.install()
    _setup_logging(log_level, log_format)
    if metrics_listen is not None and parse_listen(metrics_listen) is None:
        raise click.BadParameter(
            f"must be HOST:PORT, not {metrics_listen!r}", param_hint="--metrics-listen"
        )

    def load_config() -> Config:
        config = load(jobfile, database=database)
        if metrics_listen is not None:
            config = dataclasses.replace(config, metrics_listen=metrics_listen)
        return config

    config = load_config()
    for warning in config.warnings:
        logger.warning("%s", warning)
    _check_sqlite_folder(config)
    if once:
        # Ctrl-C (or SIGTERM) stops what waits, keeps what finished, and exits 130 like a shell.
        with stop_signals() as stop:
            store = _open_store(config.database, jobfile)
            service = Service(config, store=store, workers=workers)
            try:
                ok = service.run_once(stop)
            finally:
                service.stop()
        if stop.is_set():
            logger.warning("interrupted: the runs that finished are stored")
            sys.exit(130)
        sys.exit(0 if ok else 1)
    try:
        with stop_signals() as stop:
            store = _open_store(config.database, jobfile, until=stop)
            if store is None:
                logger.info("stopped while waiting for the database")
                return
            service = Service(config, store=store, workers=workers)
            reloader.attach(service)  # SIGHUP re-reads the job file
            service.run_forever(stop)
    finally:
        reloader.uninstall()
    if service.failed:
        click.echo(f"error: collector stopped: {service.failed}", err=True)
        sys.exit(1)


@main.command()
@_jobfile
@_db
def check(jobfile: str, database: str | None) -> None:
    """Validate JOBFILE and show each job's schedule and next run.

    Warns when the schedules need more calls than the rate limits allow.

    \b
    Example:
        collector check jobs.yaml
    """
    from datetime import UTC, datetime

    from apscheduler.triggers.cron import CronTrigger

    from .schedule import calls_per_second

    config = load(jobfile, database=database)
    _check_database(config)
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
    if [a.name for a in config.accounts] in ([], ["default"]) and not _named_accounts(config):
        private = needs.get("default", 0.0)
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
            who = "" if account.name == "default" else f"account {account.name} "
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


def _named_accounts(config: Config) -> bool:
    """Whether the file has an ``accounts:`` section (else one account from ``kraken:``)."""
    return any(a.name != "default" for a in config.accounts) or len(config.accounts) > 1


def _check_database(config: Config) -> None:
    """The database must be usable: SQLite's folder exists, and a file there is at a revision
    this collector knows (read, never created or migrated); a server answers (and is migrated)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from .status import exists
    from .store import check_revision

    if not _check_sqlite_folder(config):
        _open_store(config.database, config.path).dispose()
        return
    if not exists(config):
        return
    engine = create_engine(config.database)
    try:
        check_revision(engine)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=config.path, key="database") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise ConfigError(
            f"cannot use database {config.database_for_display()}: {reason}",
            file=config.path,
            key="database",
        ) from None
    finally:
        engine.dispose()


def _check_sqlite_folder(config: Config) -> bool:
    """For SQLite, that the file's folder exists (waiting would not make it); False otherwise."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database)
    if url.get_backend_name() != "sqlite":
        return False
    path = url.database or ""
    if path and path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ConfigError(
            f"cannot use database {config.database_for_display()}: its folder does not exist",
            file=config.path,
            key="database",
        )
    return True


@main.command()
@_jobfile
@_db
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(jobfile: str, database: str | None, as_json: bool) -> None:
    """Show what each job of JOBFILE has collected, from the database alone.

    Per job: last run, last success, failures in the last 24 h, its dataset's
    rows and newest entry, its cursor and gaps; then the spool and the oldest
    run kept. Exit 0 when healthy, 1 when a job is stale (no success for its
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
    from .store import Store

    config = load(jobfile, database=database)
    _check_sqlite_folder(config)
    store = Store.from_url(config.database) if exists(config) else None
    try:
        report = collect(config, store, datetime.now(UTC), peek_spool(config.spool_path))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise ConfigError(
            f"cannot read database {config.database_for_display()}: {reason}",
            file=config.path,
            key="database",
        ) from None
    finally:
        if store is not None:
            store.dispose()
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    sys.exit(0 if report["healthy"] else 1)


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
    from .store import current_revision

    if jobfile:
        url = load(jobfile, database=database).database
    else:
        url = database or os.environ.get(DATABASE_ENV) or defaults.DATABASE
    store = _open_store(url, jobfile)
    click.echo(f"{_display_url(url)} is at revision {current_revision(store.engine)}")
    store.dispose()


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
    help="New entries a second in each history (ledger, trades, closed orders, public trades).",
)
def fake_exchange(
    host: str, port: int, key_file: str, tier_: str, public_limit: str, growth: float
) -> None:
    """Serve a strict local stand-in for Kraken's REST API, to try a job file offline.

    \b
    Example:
        collector fake-exchange --port 8765 --key-file fake.key
        # then in jobs.yaml:  kraken: {url: http://127.0.0.1:8765, key_file: fake.key}
        # inject a fault:     curl -X POST 'http://127.0.0.1:8765/_fake/fault?kind=http_502'

    \b
    Fault kinds (POST /_fake/fault?kind=K[&method=M][&count=N]):
        http_500, http_502, http_520  an HTML error page with that status
        slow                          answer after delay= seconds (default 5)
        reset                         reset the connection, no answer
        truncated                     cut-off JSON
        not_json                      an HTML page with status 200
        kraken_error                  {"error": [error=...]} (default EService:Unavailable)
        raw                           body= as given, with status= (default 200)
    """
    from .testing.fake_exchange import FakeKraken, new_key_file

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
            click.echo(f"wrote a new random key pair to {key_file}")
        fake.add_key(key, secret)
    except (OSError, ValueError) as exc:
        fake.close()
        reason = getattr(exc, "strerror", None) or "not a key file (key, then base64 secret)"
        raise CollectorError(f"{key_file}: {reason}") from None
    click.echo(f"fake Kraken listening on {fake.url} (key file {key_file}); Ctrl-C stops it")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a foreground server the way Ctrl-C does."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    main()
