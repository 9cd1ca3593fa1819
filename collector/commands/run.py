"""``collector run``: the service, until SIGTERM or Ctrl-C; or every job once (``--once``)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from typing import Any

import click

from .. import defaults
from ..jobfile import Config, load, parse_listen
from ..preflight import check_sources, check_sqlite_folder, check_state_folder, open_store
from .base import db_option, jobfile_argument, log_level_option, say, setup_logging

logger = logging.getLogger(__name__)


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
    from ..events import RecordRefused, Spooled

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


@click.command()
@jobfile_argument
@db_option
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
@log_level_option
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
    from ..reload import Reloader
    from ..schedule import RunNow
    from ..service import Service, stop_signals

    if once:  # SIGHUP must never kill a run; --once reads the file once
        signal.signal(signal.SIGHUP, _ignore_sighup)
    else:  # taken from the first moment; applied once the service is ready
        reloader = Reloader(lambda: load_config())
        reloader.install()
        run_now = RunNow()
        run_now.install()
    setup_logging(log_level, log_format)
    if metrics_listen is not None and parse_listen(metrics_listen) is None:
        raise click.BadParameter(
            f"must be HOST:PORT, not {metrics_listen!r}", param_hint="--metrics-listen"
        )

    def load_config() -> Config:
        return load(jobfile, database=database, metrics_listen=metrics_listen)

    config = load_config()
    for warning in config.warnings:
        logger.warning("%s", warning)
    check_state_folder(config)
    check_sqlite_folder(config)
    if once:
        config = _short_retries(config)
        # Ctrl-C (or SIGTERM) stops what waits, keeps what finished, and exits 130 like a shell.
        with stop_signals() as stop:
            store = open_store(config.database, jobfile)
            check_sources(store, config)
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
            say(
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
            opened = open_store(config.database, jobfile, until=stop)
            if opened is None:
                logger.info("stopped while waiting for the database")
                return
            check_sources(opened, config)
            service = Service(config, store=opened, workers=workers)
            reloader.attach(service)  # SIGHUP re-reads the job file
            run_now.schedule = service.schedule  # SIGUSR1 runs every job now
            service.run_forever(stop)
    finally:
        reloader.uninstall()
        run_now.uninstall()
    if service.failed:
        say(f"error: collector stopped: {service.failed}", err=True)
        sys.exit(1)
