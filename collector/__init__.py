"""collector: scheduled Kraken REST queries stored in SQL, through a krakenex-compatible client."""

__version__ = "0.1.0"

from .client import API, Reply
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
