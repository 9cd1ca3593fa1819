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
from dataclasses import dataclass

from .errors import (
    ConnectionFailed,
    HTTPStatusError,
    KrakenAPIError,
    RequestError,
    RequestTimeout,
)

TRANSIENT, RATE_LIMIT, NONCE, LOCKOUT, NEVER = (
    "transient",
    "rate_limit",
    "nonce",
    "lockout",
    "never",
)

#: First backoff (seconds); each attempt doubles it, up to BACKOFF_CAP.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
#: How long private calls pause after ``EGeneral:Temporary lockout``.
LOCKOUT_PAUSE = 15 * 60.0
#: A run's retries end this long after it started, unless the job says otherwise.
DEFAULT_DEADLINE = 60.0

_TRANSIENT_ERRORS = ("EGeneral:Internal error", "EGeneral:Too many requests")


def classify(error: RequestError) -> str:
    """What kind of failure ``error`` is, for retrying."""
    if isinstance(error, RequestTimeout | ConnectionFailed):
        return TRANSIENT
    if isinstance(error, HTTPStatusError):
        return TRANSIENT if (error.http_status or 0) >= 500 else NEVER
    if isinstance(error, KrakenAPIError):
        errors = [e for e in error.errors if not e.startswith("W")]
        if any(e.startswith("EGeneral:Temporary lockout") for e in errors):
            return LOCKOUT
        if "EAPI:Rate limit exceeded" in errors:
            return RATE_LIMIT
        if "EAPI:Invalid nonce" in errors:
            return NONCE
        if errors and all(e.startswith("EService:") or e.startswith(_TRANSIENT_ERRORS)
                          for e in errors):  # fmt: skip
            return TRANSIENT
    return NEVER


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff shape, the lockout pause, and an optional cap on attempts (beside the deadline).
    ``rng`` is a seam for tests."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    lockout: float = LOCKOUT_PAUSE
    rng: Callable[[float, float], float] = random.uniform
    max_attempts: int | None = None

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter."""
        return self.rng(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))

    def should_retry(self, kind: str, attempt: int, nonce_retries: int) -> bool:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        if kind in (TRANSIENT, RATE_LIMIT):
            return True
        return kind == NONCE and nonce_retries == 0
