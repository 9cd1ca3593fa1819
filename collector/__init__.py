"""collector: scheduled Kraken REST queries stored in SQL, through a krakenex-compatible client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    BadResponse,
    CollectorError,
    ConfigError,
    CredentialsError,
    KrakenAPIError,
    RequestError,
)
from .ratelimit import RateLimit

if TYPE_CHECKING:
    from .client import API, Reply
    from .errors import ConnectionFailed, HTTPStatusError, RequestTimeout


def __getattr__(name: str) -> Any:
    """``collector.API``, ``collector.Reply`` and the transport errors, imported when first
    asked for: the client and those errors bring ``requests`` (a tenth of a second), which the
    read-only commands never use."""
    if name in ("API", "Reply"):
        from . import client

        return getattr(client, name)
    if name in ("ConnectionFailed", "HTTPStatusError", "RequestTimeout"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'collector' has no attribute {name!r}")


__all__ = [
    "API",
    "BadResponse",
    "CollectorError",
    "ConfigError",
    "ConnectionFailed",
    "CredentialsError",
    "HTTPStatusError",
    "KrakenAPIError",
    "RateLimit",
    "Reply",
    "RequestError",
    "RequestTimeout",
    "__version__",
]
