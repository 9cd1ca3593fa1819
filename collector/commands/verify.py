"""``collector verify``: the collected ledger proven complete by Kraken's own running balances."""

from __future__ import annotations

import sys

import click

from ..errors import ConfigError
from .base import Reading, reads_database, say


@click.command()
@reads_database
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--account", metavar="NAME", help="Only this account (default: every account).")
def verify(reading: Reading, as_json: bool, account: str | None) -> None:
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

    from ..verify import scopes
    from ..verify import verify as check

    config = reading.config()
    names = [a.name for a in config.accounts]
    if account is not None and account not in names:
        raise ConfigError(
            f"--account: no account {account!r} (one of {', '.join(names) or 'none'})"
        )
    store = reading.store()
    reports = check(store.engine, scopes(config.jobs, config.retention, account))
    ok = all(r.ok for r in reports)
    if as_json:
        say(*json.dumps({"ok": ok, "accounts": [r.json() for r in reports]}, indent=2).splitlines())
    else:
        for report in reports:
            say(*(finding.line() for finding in report.findings))
        for report in reports:
            say(report.summary())
            say(*(f"account {report.account}: {note}" for note in report.notes))
        if not reports:
            say("no private history job in the file: nothing to verify")
    sys.exit(0 if ok else 1)
