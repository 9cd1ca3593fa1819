"""``collector schema``: the job file's JSON Schema, for an editor to complete and check."""

from __future__ import annotations

import json

import click

from ..jobfile import json_schema
from .base import say


@click.command("schema")
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
    say(*json.dumps(json_schema(), indent=2).splitlines())
