"""collector: scheduled Kraken REST queries stored in SQL, through a krakenex-compatible client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    BadResponse,
    CollectorError,
    ConfigError,
    ConnectionFailed,
    CredentialsError,
    HTTPStatusError,
    KrakenAPIError,
    RequestError,
    RequestTimeout,
)
from .ratelimit import RateLimit

if TYPE_CHECKING:
    from .client import API, Reply


def __getattr__(name: str) -> Any:
    """``collector.API`` and ``collector.Reply``, imported when first asked for: the client
    brings ``requests`` (a tenth of a second), which the read-only commands never use."""
    if name in ("API", "Reply"):
        from . import client

        return getattr(client, name)
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
