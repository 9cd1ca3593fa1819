"""Nonces: strictly increasing within a millisecond, across threads, and when the clock steps back."""

from __future__ import annotations

import threading

import pytest

from collector.nonce import NonceSource


class SteppingClock:
    """A wall clock in ns that the test sets by hand."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def test_same_millisecond_gives_increasing_nonces() -> None:
    clock = SteppingClock(1_700_000_000_000_000_000)
    source = NonceSource(clock=clock)
    assert [source.next() for _ in range(4)] == [
        1_700_000_000_000,
        1_700_000_000_001,
        1_700_000_000_002,
        1_700_000_000_003,
    ]


def test_clock_stepping_back_never_lowers_the_nonce() -> None:
    clock = SteppingClock(2_000_000_000_000_000_000)
    source = NonceSource(clock=clock)
    first = source.next()
    clock.ns -= 3_600 * 10**9  # NTP steps the clock back an hour
    assert source.next() == first + 1
    clock.ns += 7_200 * 10**9
    assert source.next() == first + 3_600_000


def test_floor_from_a_previous_process_is_respected() -> None:
    clock = SteppingClock(1_000_000_000_000_000_000)
    source = NonceSource(floor=5_000_000_000_000, clock=clock)
    assert source.next() == 5_000_000_000_001
    source.raise_floor(9_000_000_000_000)
    assert source.next() == 9_000_000_000_001
    source.raise_floor(1)  # lowering is a no-op
    assert source.next() == 9_000_000_000_002


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("ms", 1_700_000_000_123), ("us", 1_700_000_000_123_456), ("ns", 1_700_000_000_123_456_789)],
)
def test_units(unit: str, expected: int) -> None:
    source = NonceSource(unit, clock=lambda: 1_700_000_000_123_456_789)
    assert source.next() == expected


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="nonce unit must be one of ms, us, ns"):
        NonceSource("s")


def test_threads_never_share_a_nonce() -> None:
    source = NonceSource(clock=lambda: 1_700_000_000_000_000_000)  # all in one millisecond
    results: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def take(out: list[int]) -> None:
        barrier.wait()
        out.extend(source.next() for _ in range(2_000))

    threads = [threading.Thread(target=take, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [n for r in results for n in r]
    assert len(set(everything)) == 16_000
    for r in results:
        assert r == sorted(r) and len(set(r)) == len(r)
    assert source.last == max(everything) == 1_700_000_000_000 + 16_000 - 1
