"""Nonces that only go up: ``max(now, last + 1)``, whatever the threads or the wall clock do.

Kraken rejects a nonce that is not strictly greater than the last one it accepted for the key
(``EAPI:Invalid nonce``) and a key's nonce can never be lowered. So the unit is fixed per key:
milliseconds by default, the unit krakenex and ccxt use, so a key can move between them. Keys that
were already used at microseconds or nanoseconds (python-kraken-sdk uses 10 ns) must keep that unit.

A *floor* (the highest nonce a previous process used, persisted by the collector) guarantees that a
restarted process never reuses a nonce, even when the clock has stepped back meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Nanoseconds per nonce unit.
UNITS: dict[str, int] = {"ms": 1_000_000, "us": 1_000, "ns": 1}


class NonceSource:
    """Thread-safe, strictly increasing nonces.

    :param unit: ``"ms"`` (default), ``"us"`` or ``"ns"``
    :param floor: every nonce issued is greater than this
    :param clock: returns the wall clock in integer nanoseconds (``time.time_ns``); a seam for tests
    """

    def __init__(
        self, unit: str = "ms", floor: int = 0, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"nonce unit must be one of {', '.join(UNITS)}, not {unit!r}")
        self.unit = unit
        self._per = UNITS[unit]
        self._clock = clock
        self._last = int(floor)
        self._lock = threading.Lock()
        self._lease_size = 0
        self._lease_slack = 0
        self._leased = 0
        self._save_lease: Callable[[int], None] | None = None

    def lease(self, size: int, save: Callable[[int], None], slack: int = 1) -> None:
        """Before issuing a nonce past the saved mark, move the mark and ``save`` it
        (synchronously), so a process killed at any moment has never used a nonce above what it
        saved: a restart with the saved mark as floor cannot reuse one.

        The new mark is ``size`` units ahead of the clock, or ``slack`` nonces past the one being
        issued when the clock is behind the nonces (after a crash, or a clock stepped back): so
        the mark leads the clock by at most ``size`` in normal running, and repeated crashes push
        it on by ``slack`` nonces each, not by ``size``."""
        with self._lock:
            self._lease_size, self._lease_slack = size, max(1, slack)
            self._save_lease, self._leased = save, self._last

    @property
    def last(self) -> int:
        """The highest nonce issued so far (or the floor)."""
        return self._last

    def raise_floor(self, floor: int) -> None:
        """Make every later nonce greater than ``floor`` (a no-op if it already is)."""
        with self._lock:
            self._last = max(self._last, int(floor))

    def next(self) -> int:
        """The next nonce: the clock in the chosen unit, or the last one + 1 if that is not more."""
        now = self._clock() // self._per
        with self._lock:
            nonce = now if now > self._last else self._last + 1
            if self._save_lease is not None and nonce > self._leased:
                mark = max(nonce + self._lease_slack, now + self._lease_size)
                self._save_lease(mark)
                self._leased = mark
            self._last = nonce
            return nonce
