"""``collector dashboard``: the read-only page of a job file's database, served until Ctrl-C."""

from __future__ import annotations

import signal

import click

from .. import defaults
from ..errors import CollectorError
from ..jobfile import parse_listen
from .base import Reading, interrupt, reads_database, say, setup_logging


@click.command()
@reads_database
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=f"127.0.0.1:{defaults.DASHBOARD_PORT}",
    show_default=True,
    help="Where to serve the page (port 0: any free port).",
)
def dashboard(reading: Reading, listen: str) -> None:
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
    from ..dashboard import Dashboard
    from ..listener import Listener
    from ..spool import peek

    setup_logging("warning")
    address = parse_listen(listen)
    if address is None:
        raise click.BadParameter(f"must be HOST:PORT, not {listen!r}", param_hint="--listen")
    config = reading.config()
    store = reading.store_if_any()
    page = Dashboard(config, store, spooled=lambda: peek(config.spool_path))
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
    say(
        f"dashboard of {config.database_for_display()} on http://{shown}:{port}/ "
        "(read-only; Ctrl-C stops)"
    )
    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
