"""Logging set-up: the text format (the default), or one JSON object per line.

``collector run --log-format json`` writes each record as ``{"time": UTC ISO, "level", "logger",
"message"}``, plus ``job`` and ``status`` when the record carries them (the runner passes them as
``extra``), and ``exc`` for a traceback. The messages are the same as in text, so neither format
ever holds a secret the other would not: the client never logs the secret, the signature or an otp.

Both formatters make every record safe where it lands, whatever its arguments hold (a Kraken
error, an asset name, a lease holder are outside text): control characters in the message and
the fields are escaped (:func:`collector.sanitize.text`: ``\\n``, ``\\x1b``), so a value can't
start a forged record or send a terminal or journal an escape sequence. A text record is one
line, a traceback's lines following it indented: a line at column 0 is always a record's start.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from .sanitize import text

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes copied into the JSON object when a log call passes them in ``extra``.
FIELDS = ("job", "status")


def _block(lines: str) -> str:
    """A traceback or stack below its record: each line escaped and indented, so no line of it
    (an exception's message holding a line break among them) reads as a record of its own."""
    return "\n".join("  " + text(line) for line in lines.splitlines())


class TextFormatter(logging.Formatter):
    """The text format, one record a line (its traceback indented below it)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = text(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        out = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                out += "\n" + _block(block)
        return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": text(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = text(value)
        if record.exc_info:
            # JSON escapes its line breaks; the other controls are escaped as in the text.
            exc = self.formatException(record.exc_info)
            out["exc"] = "\n".join(text(line) for line in exc.splitlines())
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``), times in UTC."""
    logging.basicConfig(level=level.upper(), format=TEXT)
    logging.Formatter.converter = time.gmtime  # log times in UTC, like the database
    formatter = JsonFormatter() if log_format == "json" else TextFormatter(TEXT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
