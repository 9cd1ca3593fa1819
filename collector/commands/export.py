"""``collector export``: a table or view as CSV, JSON lines or Kraken's own CSV."""

from __future__ import annotations

import sys

import click

from .base import Reading, reads_database, say


@click.command()
@click.argument("table")
@reads_database
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
    reading: Reading,
    table: str,
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
    from ..export import Request, check, destination, has_table, moment, one_account, target
    from ..export import export as write

    request = Request(table, format_, moment(since, "--since"), moment(until, "--until"), account)
    check(request)
    where = target(output)  # before anything is read: a folder or a link is refused now
    config = reading.config()
    database = reading.database()  # the driver's own connections: no SQLAlchemy to import
    has_table(database, table, shown=config.database_for_display(), file=config.path)
    if format_ == "kraken" and account is None:
        request = one_account(database, request, file=config.path)
    with destination(where, sys.stdout.buffer) as out:
        count = write(database, request, out)
    if where.path is not None:
        say(f"{count:,} rows of {table} written to {where.path}", err=True)
