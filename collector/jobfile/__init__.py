"""The job file: YAML in, frozen and validated dataclasses out, or clear :class:`ConfigError` lines.

Every error names the file, the line and the key (``jobs.yaml:14: jobs.ticker.every: ...``); a
file with several mistakes gets them all at once (:class:`ConfigErrors`, one line each, in the
file's order), as a linter reports them. Unknown keys get a did-you-mean; secrets are validated
but never repeated in a message.

- :mod:`.source`: the bounded read, the YAML that keeps lines and refuses duplicate keys, ``${VAR}``;
- :mod:`.model`: the dataclasses a file becomes and the keys each section takes;
- :mod:`.report`: mistakes as ``file:line: key: problem``, all of them;
- :mod:`.checks`: the jobs (methods and parameters, schedules, ``since``, accounts);
- :mod:`.streamcheck`: the streams (WebSocket v2 feeds: channel, pairs, the channel's options);
- :mod:`.resolve`: credentials, paths, the database's precedence;
- :mod:`.build`: :func:`load`, the sections put together;
- :mod:`.describe`: :func:`json_schema`, the file's JSON Schema for editors (``collector schema``).
"""

from ..errors import ConfigError, ConfigErrors
from .build import load
from .describe import json_schema
from .model import (
    ACCOUNT_KEYS,
    JOB_KEYS,
    KRAKEN_KEYS,
    METRICS_KEYS,
    RESERVED_PARAMS,
    RETENTION_KEYS,
    SPOOL_KEYS,
    STREAM_KEYS,
    TOP_KEYS,
    VALUATION_KEYS,
    Account,
    Config,
    Job,
    KrakenSettings,
    Stream,
    format_duration,
    parse_duration,
    parse_listen,
)
from .resolve import UNREAD_KEY, database_problem, with_driver
from .source import read_small, show

__all__ = [
    "ACCOUNT_KEYS",
    "JOB_KEYS",
    "KRAKEN_KEYS",
    "METRICS_KEYS",
    "RESERVED_PARAMS",
    "RETENTION_KEYS",
    "SPOOL_KEYS",
    "STREAM_KEYS",
    "TOP_KEYS",
    "UNREAD_KEY",
    "VALUATION_KEYS",
    "Account",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "Job",
    "KrakenSettings",
    "Stream",
    "database_problem",
    "format_duration",
    "json_schema",
    "load",
    "parse_duration",
    "parse_listen",
    "read_small",
    "show",
    "with_driver",
]
