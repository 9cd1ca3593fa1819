"""``collector methods``: the Kraken methods a job can use, with their parameters."""

from __future__ import annotations

import click

from .. import methods
from ..errors import CollectorError
from .base import say


@click.command("methods")
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

    from ..datasets import history_methods  # its tables: only this command's body needs them

    histories = history_methods()
    chosen = list(names) or list(methods.READ_METHODS)
    for name in chosen:
        method = methods.READ_METHODS.get(name)
        if method is None:
            close = difflib.get_close_matches(name, list(methods.READ_METHODS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CollectorError(f"unknown method {name!r}{hint}")
        kind = "public" if method.public else f"private, needs {method.permission or 'a key'}"
        say(f"{method.name} ({kind}): {method.doc}")
        params = methods.params_of(method.name)
        if params is None:
            say("    (parameters not checked)")
            continue
        shown = {k: p for k, p in params.items() if k not in method.managed}
        width = max((len(k) for k in shown), default=0) + 1
        for key, param in shown.items():
            mark = "*" if key in method.required else " "
            say(f"  {mark} {key:<{width}} {param.kind:<8} {param.describe()}")
        if method.name in histories:
            say("    since: (job key) where its history starts: all, a date or unix seconds")
