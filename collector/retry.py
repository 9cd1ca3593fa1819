"""Which failures are worth another attempt, and how long to wait before it.

All of the collector's calls are read-only, so repeating one is safe; the question is only whether
it can succeed and whether repeating it hurts the account:

* **transient** — timeouts, connection resets, HTTP 5xx (Cloudflare's 52x included), ``EService:*``,
  ``EGeneral:Internal error``, ``EGeneral:Too many requests``: retried with exponential backoff
  and full jitter, within the run's deadline.
* **rate limit** — ``EAPI:Rate limit exceeded``: the client has already treated its counter as
  full, so the retry waits for budget instead of adding to the penalty.
* **nonce** — ``EAPI:Invalid nonce``: one retry with a fresh nonce, then the failure is recorded.
* **lockout** — ``EGeneral:Temporary lockout``: recorded, not retried, and private calls pause for
  the lockout period (15 minutes by default) so that the exchange is not hammered.
* **never** — invalid key, invalid signature, permission denied, invalid arguments, unknown
  method or pair, undecodable answers: retrying cannot help.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from . import defaults
from .backoff import Backoff
from .errors import (
    ConnectionFailed,
    HTTPStatusError,
    KrakenAPIError,
    RequestError,
    RequestTimeout,
)


class Kind(StrEnum):
    """What kind of failure a :class:`~collector.errors.RequestError` is, for retrying."""

    TRANSIENT = "transient"
    RATE_LIMIT = "rate_limit"
    NONCE = "nonce"
    LOCKOUT = "lockout"
    NEVER = "never"


TRANSIENT, RATE_LIMIT, NONCE, LOCKOUT, NEVER = Kind

_TRANSIENT_ERRORS = ("EService:", "EGeneral:Internal error", "EGeneral:Too many requests")


def classify(error: RequestError) -> Kind:
    """What kind of failure ``error`` is, for retrying."""
    if isinstance(error, RequestTimeout | ConnectionFailed):
        return Kind.TRANSIENT
    if isinstance(error, HTTPStatusError):
        return Kind.TRANSIENT if (error.http_status or 0) >= 500 else Kind.NEVER
    if isinstance(error, KrakenAPIError):
        errors = [e for e in error.errors if not e.startswith("W")]
        if any(e.startswith("EGeneral:Temporary lockout") for e in errors):
            return Kind.LOCKOUT
        if "EAPI:Rate limit exceeded" in errors:
            return Kind.RATE_LIMIT
        if "EAPI:Invalid nonce" in errors:
            return Kind.NONCE
        if errors and all(e.startswith(_TRANSIENT_ERRORS) for e in errors):
            return Kind.TRANSIENT
    return Kind.NEVER


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff shape, the lockout pause, and an optional cap on attempts (beside the deadline).
    ``rng`` is a seam for tests: ``(low, high) -> float``, by default ``random.uniform``."""

    base: float = defaults.BACKOFF_FIRST
    cap: float = defaults.BACKOFF_CAP
    lockout: float = defaults.LOCKOUT_PAUSE
    rng: Callable[[float, float], float] = random.uniform
    max_attempts: int | None = None
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_backoff", Backoff(self.base, self.cap, jitter=self.rng))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter."""
        return self._backoff.delay(attempt)

    def should_retry(self, kind: Kind, attempt: int, nonce_retries: int) -> bool:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        if kind in (Kind.TRANSIENT, Kind.RATE_LIMIT):
            return True
        return kind == Kind.NONCE and nonce_retries == 0
