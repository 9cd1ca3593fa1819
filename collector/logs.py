"""Logging set-up: the text format (the default), or one JSON object per line.

``collector run --log-format json`` writes each record as ``{"time": UTC ISO, "level", "logger",
"message"}``, plus ``job`` and ``status`` when the record carries them (the runner passes them as
``extra``), and ``exc`` for a traceback. The messages are the same as in text, so neither format
ever holds a secret the other would not: the client never logs the secret, the signature or an otp.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes copied into the JSON object when a log call passes them in ``extra``.
FIELDS = ("job", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``), times in UTC."""
    logging.basicConfig(level=level.upper(), format=TEXT)
    logging.Formatter.converter = time.gmtime  # log times in UTC, like the database
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
