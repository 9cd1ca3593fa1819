"""The one backoff: exponential, capped, optionally with full jitter.

Every retry loop in the collector (a run's transient failures, the writer waiting for its database,
start-up waiting for the database) takes its delays from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import defaults


@dataclass(frozen=True)
class Backoff:
    """``first``, doubling each time, never more than ``cap`` (seconds).

    :param jitter: ``None`` for the plain doubling; a function ``(low, high) -> float`` such as
        ``random.uniform`` for *full jitter* (a uniform draw up to the plain delay), which keeps many
        clients that failed together from retrying together
    """

    first: float = defaults.BACKOFF_FIRST
    cap: float = defaults.BACKOFF_CAP
    jitter: Callable[[float, float], float] | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        plain = min(self.cap, self.first * 2 ** min(attempt - 1, 64))
        return plain if self.jitter is None else self.jitter(0.0, plain)

    def delays(self) -> Iterator[float]:
        """The delays after the first, second, ... failure, without end."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt)
