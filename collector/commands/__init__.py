"""The ``collector`` command: one module per command, each a thin layer over the domain.

:mod:`.base` holds what they share: :func:`~.base.say` (every line printed with its control
characters escaped), :class:`~.base.Group` (a domain error is one line and exit code 2, a closed
pipe no error), the common arguments, and :func:`~.base.reads_database`, which opens what a
read-only command reads. A new command is a module here, added to ``main`` below, and a row in the
README's table of commands (``tests/test_readme.py`` checks).
"""

from __future__ import annotations

import click

from .base import Group
from .check import check
from .dashboard import dashboard
from .db import db
from .export import export
from .fake_exchange import fake_exchange
from .methods import list_methods
from .run import run
from .schema import schema
from .status import status
from .verify import verify


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kraken-collector")
def main() -> None:
    """Run scheduled Kraken REST queries and keep every answer in SQL.

    \b
    Example:
        collector check jobs.yaml
        collector run jobs.yaml
    """


# In the order `collector --help` lists them (click sorts them by name).
for command in (
    run,
    check,
    status,
    dashboard,
    verify,
    export,
    list_methods,
    db,
    schema,
    fake_exchange,
):
    main.add_command(command)

__all__ = ["main"]
