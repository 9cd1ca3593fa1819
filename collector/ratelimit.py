"""A client-side copy of Kraken's call counter, so calls wait for budget instead of being refused.

Kraken keeps a counter per API key: each private call adds 1 (2 for Ledgers, QueryLedgers and
TradesHistory) and the counter decays continuously at the tier's rate; a call that would take it over
the maximum is refused with ``EAPI:Rate limit exceeded`` and extends the penalty. Public calls are
limited per IP, roughly 1 a second with short bursts.

:class:`RateLimiter` models the same bucket. :meth:`RateLimiter.acquire` reserves the cost at once and
then sleeps until the reserved level has decayed under the maximum, so waiting callers are served in
the order they asked and the counter the exchange sees never passes the maximum. ``headroom`` keeps
the level a little under the exchange's maximum, because the exchange counts a call when it
*arrives*, slightly after we counted it.

**When the copy is wrong** (another program used the key, a process restarted without knowing the
counter), the exchange refuses a call with ``EAPI:Rate limit exceeded``, and every call made while
over the limit extends the penalty. :meth:`RateLimiter.refused` then lets nothing through until the
counter has surely drained under the maximum by the refused call's cost and a margin, and doubles
that wait on each refusal in a row (up to a full drain of the counter), so a penalty of unknown
size is found in a few probes instead of being extended by one probe per decay unit forever.
:meth:`RateLimiter.accepted` ends the streak; the budget is used fully again from there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import defaults
from .errors import Cancelled


@dataclass(frozen=True)
class RateLimit:
    """A counter's size (``max``) and how fast it empties (``decay`` per second)."""

    max: float
    decay: float

    def __post_init__(self) -> None:
        if not self.max > 0:
            raise ValueError(f"rate limit max must be > 0, not {self.max!r}")
        if not self.decay > 0:
            raise ValueError(f"rate limit decay must be > 0, not {self.decay!r}")


#: Kraken's private-call tiers.
TIERS: dict[str, RateLimit] = {
    "starter": RateLimit(max=15, decay=0.33),
    "intermediate": RateLimit(max=20, decay=0.5),
    "pro": RateLimit(max=20, decay=1.0),
}

#: Public calls: about one a second per IP with short bursts.
PUBLIC_DEFAULT = RateLimit(max=defaults.PUBLIC_MAX, decay=defaults.PUBLIC_DECAY)


def sent_level(level: float, refusals: int, maximum: float) -> float:
    """The counter as the exchange can have it, from the level we count: that level includes the
    calls reserved and still waiting for budget (never sent, and a stop cancels them), and our
    calls alone never take Kraken's counter over its maximum, so it is capped there ("16.3 of
    15" was never true). After a refusal the level over the maximum is the penalty's wait, and
    is kept."""
    return level if refusals else min(level, maximum)


def ceiling(limit: RateLimit, lockout: float = defaults.LOCKOUT_PAUSE) -> float:
    """The highest level a counter of ``limit`` is ever believed at, by any process: full, plus
    the penalty a refusal streak adds (a full drain, see :meth:`RateLimiter.refused`) and a
    lockout's pause of ``lockout`` seconds (:meth:`RateLimiter.pause`). A level read from a state
    file or a lease row above it was not written by a collector (see
    :func:`collector.statefile.counter_level`)."""
    return 2 * limit.max + max(0.0, lockout) * limit.decay


def tier(name_or_limit: str | RateLimit) -> RateLimit:
    """A :class:`RateLimit` from a tier name or a limit."""
    if isinstance(name_or_limit, RateLimit):
        return name_or_limit
    try:
        return TIERS[name_or_limit.lower()]
    except KeyError:
        raise ValueError(f"unknown tier {name_or_limit!r}; use one of {', '.join(TIERS)}") from None


class RateLimiter:
    """A leaky bucket shaped like Kraken's counter. Thread-safe.

    :param limit: the counter's max and decay
    :param headroom: stay this many units under ``limit.max`` (never more than ``max - 1``)
    :param clock: monotonic seconds; a seam for tests
    :param sleep: how to wait when no ``cancel`` event is given; a seam for tests
    :param on_wait: called with the seconds a call is about to wait for budget (metrics count
        them); quick, and it must not raise
    :param on_refused: called with the seconds nothing is sent after a refusal and the refusals
        in a row
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        headroom: float = defaults.HEADROOM,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float], None] | None = None,
        on_refused: Callable[[float, int], None] | None = None,
    ) -> None:
        self.limit = limit
        # A cost-1 call must always fit eventually, so the usable size is at least 1.
        self._cap = max(1.0, limit.max - headroom)
        self._clock = clock
        self._sleep = sleep
        self._level = 0.0
        self._at = clock()
        self._lock = threading.Lock()
        #: refusals in a row (``EAPI:Rate limit exceeded``) since the last accepted call
        self.refusals = 0
        self.on_wait = on_wait
        self.on_refused = on_refused

    def level(self) -> float:
        """The counter as Kraken can have it now (what ``status`` and ``collector_key_counter``
        show): :func:`sent_level` of the level we count, which includes calls still waiting."""
        with self._lock:
            return sent_level(self._decayed(self._clock()), self.refusals, self.limit.max)

    def _decayed(self, now: float) -> float:
        return max(0.0, self._level - (now - self._at) * self.limit.decay)

    def reserve(self, cost: float = 1) -> float:
        """Count a call of ``cost`` now and return how many seconds to wait before sending it."""
        with self._lock:
            now = self._clock()
            level = self._decayed(now) + cost
            self._level, self._at = level, now
            return max(0.0, (level - self._cap) / self.limit.decay)

    def acquire(self, cost: float = 1, cancel: threading.Event | None = None) -> float:
        """Wait until a call of ``cost`` fits, count it, and return the seconds waited.

        :param cancel: the wait ends early when this event is set, raising
            :class:`~collector.errors.Cancelled` (the budget stays reserved: the caller is stopping)
        """
        wait = self.reserve(cost)
        if wait > 0:
            if self.on_wait is not None:
                self.on_wait(wait)
            if cancel is None:
                self._sleep(wait)
            elif cancel.wait(wait):
                raise Cancelled("stopped while waiting for rate-limit budget")
        return wait

    def pause(self, seconds: float) -> None:
        """Let no call through for ``seconds`` (Kraken locked the key out)."""
        with self._lock:
            now = self._clock()
            level = self._cap + seconds * self.limit.decay
            self._level, self._at = max(self._decayed(now), level), now

    def wait_time(self, cost: float = 1) -> float:
        """Seconds a call of ``cost`` would wait now (nothing is reserved)."""
        with self._lock:
            level = self._decayed(self._clock()) + cost
            return max(0.0, (level - self._cap) / self.limit.decay)

    def saturate(self) -> None:
        """Treat the counter as full (as of now)."""
        with self._lock:
            now = self._clock()
            self._level, self._at = max(self._decayed(now), self.limit.max), now

    def refused(self, cost: float = 1) -> float:
        """The exchange refused a call of ``cost`` (``EAPI:Rate limit exceeded``): its counter is
        over the maximum by an unknown amount, and every call sent while it is extends that. Send
        nothing until it has drained by the call's cost and a margin; each refusal in a row
        doubles the wait, up to a full drain of the counter. Returns the wait (seconds)."""
        with self._lock:
            now = self._clock()
            self.refusals += 1
            first = (cost + defaults.REFUSAL_MARGIN) / self.limit.decay
            full = self.limit.max / self.limit.decay
            wait = min(full, first * 2 ** min(self.refusals - 1, 32))
            # At the end of the wait a call of the same cost fits: it goes, and the ones after it
            # at the decay rate, as from a full counter.
            level = self._cap - cost + wait * self.limit.decay
            self._level, self._at = max(self._decayed(now), level), now
            refusals = self.refusals
        if self.on_refused is not None:
            self.on_refused(wait, refusals)
        return wait

    def accepted(self) -> None:
        """The exchange took a call: a streak of refusals is over."""
        self.refusals = 0

    def snapshot(self) -> tuple[float, int]:
        """``(level now, refusals in a row)``, to keep where other processes read it."""
        with self._lock:
            return self._decayed(self._clock()), self.refusals

    def restore(self, level: float, ago: float, refusals: int) -> None:
        """Take in the level another process (or an earlier one) left ``ago`` seconds ago: the
        counter is the higher of the two views (both are what some process knows was sent, and a
        pause for a lockout is only in this one)."""
        with self._lock:
            now = self._clock()
            theirs = max(0.0, level - max(0.0, ago) * self.limit.decay)
            self._level, self._at = max(self._decayed(now), theirs), now
            self.refusals = max(self.refusals, refusals)
