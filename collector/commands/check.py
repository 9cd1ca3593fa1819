"""``collector check``: the job file, and what would fail at run time, without running a job."""

from __future__ import annotations

import sys

import click

from .. import defaults
from ..jobfile import load
from ..preflight import (
    budget,
    check_database,
    check_state_folder,
    next_run,
    unknown_pairs,
)
from ..spool import peek as peek_spool
from .base import db_option, jobfile_argument, say


@click.command()
@jobfile_argument
@db_option
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

    config = load(jobfile, database=database)
    check_state_folder(config)
    check_database(config)
    if online:
        problems = unknown_pairs(config)
        for problem in problems:
            say(f"error: {problem}", err=True)
        if problems:
            sys.exit(2)
        say(f"online: {config.kraken.url} knows every pair the jobs and streams name")
    for warning in config.warnings:
        say(f"warning: {warning}", err=True)
    now = datetime.now(UTC)
    say(
        f"{jobfile}: {len(config.jobs)} job(s), {len(config.streams)} stream(s), "
        f"database {config.database_for_display()}, exchange {config.kraken.url}"
    )
    width = max((len(j.name) for j in config.jobs), default=0)
    for job in config.jobs:
        kind = "private" if job.private else "public"
        say(
            f"  {job.name:<{width}}  {job.method:<13} {kind:<7}  {job.describe():<28} "
            f"next {next_run(job, now)}"
        )
    if config.streams:
        say(f"streams: {config.kraken.ws_url}")
    named = max((len(s.name) for s in config.streams), default=0)
    for stream in config.streams:
        pairs = "every pair" if stream.all_pairs else f"{len(stream.pairs)} pair(s)"
        say(f"  {stream.name:<{named}}  {stream.channel:<7} {pairs:<12} {stream.describe()}")
    need = budget(config)
    k = config.kraken
    public = f"public {need.public:.4g} calls/s of {k.public_rate_limit.decay:g}/s"
    if not need.named:
        private = need.private.get(defaults.DEFAULT_ACCOUNT, 0.0)
        say(
            f"budget: private {private:.4g} calls/s of {k.tier.decay:g}/s ({k.tier_name}), {public}"
        )
    else:
        for account in config.accounts:
            say(
                f"budget: account {account.name}: private {need.private[account.name]:.4g} "
                f"calls/s of {account.tier.decay:g}/s ({account.tier_name})"
            )
        say(f"budget: {public}")
    waiting = peek_spool(config.spool_path)
    say(
        f"spool: {config.spool_path}: "
        + (f"{waiting:,} runs waiting" if waiting else "empty")
        + f" (holds at most {config.spool_max_runs:,})"
    )
    for account in config.accounts:
        if need.private[account.name] > account.tier.decay:
            who = "" if account.name == defaults.DEFAULT_ACCOUNT else f"account {account.name} "
            say(
                f"warning: {who}needs {need.private[account.name]:.2g} private calls/s, "
                f"{account.tier_name} allows {account.tier.decay:g}/s; runs will be late",
                err=True,
            )
    if need.public > k.public_rate_limit.decay:
        say(
            f"warning: needs {need.public:.2g} public calls/s, the public budget allows "
            f"{k.public_rate_limit.decay:g}/s; runs will be late",
            err=True,
        )
