"""The client-side counter, driven by a hand-set clock (no sleeping)."""

from __future__ import annotations

import pytest

from collector.ratelimit import TIERS, RateLimit, RateLimiter, tier


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(limit: RateLimit, headroom: float = 0.0) -> tuple[RateLimiter, ManualClock]:
    clock = ManualClock()
    return RateLimiter(limit, headroom=headroom, clock=clock, sleep=clock.sleep), clock


def test_burst_up_to_max_then_waits_for_decay() -> None:
    rl, clock = limiter(TIERS["starter"])
    for _ in range(15):
        assert rl.acquire() == 0
    wait = rl.acquire()
    assert wait == pytest.approx(1 / 0.33)
    assert clock.now == pytest.approx(100 + 1 / 0.33)
    assert rl.level() == pytest.approx(15)


def test_costly_calls_count_two() -> None:
    rl, _ = limiter(RateLimit(max=4, decay=1))
    rl.acquire(2)
    rl.acquire(2)
    assert rl.acquire(2) == pytest.approx(2.0)


def test_decay_restores_budget() -> None:
    rl, clock = limiter(RateLimit(max=2, decay=0.5))
    rl.acquire()
    rl.acquire()
    clock.now += 4  # fully decayed
    assert rl.level() == 0
    assert rl.acquire() == 0


def test_headroom_keeps_the_level_under_the_exchange_max() -> None:
    rl, _ = limiter(RateLimit(max=3, decay=1), headroom=0.5)
    assert [rl.acquire() for _ in range(3)] == [0, 0, pytest.approx(0.5)]
    assert rl.level() <= 2.5 + 1e-9


def test_waiters_queue_in_order() -> None:
    rl, _ = limiter(RateLimit(max=1, decay=1))
    # reserve() hands out increasing waits without sleeping: FIFO service.
    assert [rl.reserve() for _ in range(4)] == pytest.approx([0, 1, 2, 3])


def test_saturate_fills_the_counter() -> None:
    rl, _ = limiter(RateLimit(max=15, decay=0.33))
    rl.saturate()
    assert rl.acquire() == pytest.approx(1 / 0.33)


def test_tiers_and_bad_limits() -> None:
    assert tier("Pro") == RateLimit(20, 1.0)
    assert tier(RateLimit(3, 2)) == RateLimit(3, 2)
    with pytest.raises(ValueError, match="unknown tier 'gold'"):
        tier("gold")
    with pytest.raises(ValueError, match="decay must be > 0"):
        RateLimit(max=10, decay=0)
