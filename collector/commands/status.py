"""``collector status``: what each job has collected, from the database alone."""

from __future__ import annotations

import sys

import click

from .base import Reading, reads_database, say


@click.command()
@reads_database
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(reading: Reading, as_json: bool) -> None:
    """Show what each job of JOBFILE has collected, from the database alone.

    Per job: last run, last success, failures in the last 24 h, its own rows
    in its dataset (its pair and interval, its account) and the newest, its
    cursor (and paging progress) and gaps; per stream: its connection,
    messages, reconnects and gaps in the last 24 h, last data; then the
    spool and the oldest run kept. Exit 0 when healthy, 1 when a job is
    stale (no success for its stale_after) or a stream is (no data for
    its stale_after), 2 when the file is bad or the database can't be
    read: a cron or Nagios check.

    \b
    Example:
        collector status jobs.yaml
        collector status --json jobs.yaml | jq '.jobs[] | {name, state}'
    """
    import json
    from datetime import UTC, datetime

    from ..spool import peek
    from ..status import collect
    from ..statustext import render

    config = reading.config()
    store = reading.store_if_any()
    report = collect(config, store, datetime.now(UTC), peek(config.spool_path))
    # JSON escapes every control character itself; render() escapes each value of its table.
    say(*(json.dumps(report, indent=2) if as_json else render(report)).splitlines())
    sys.exit(0 if report["healthy"] else 1)
