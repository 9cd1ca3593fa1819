"""Alternating rounds: the two sides of a ratio measured in turn, in one process run.

A shared machine drifts (other processes, CPU frequency, caches) over seconds and minutes. A round
measures every side within the same stretch of that drift, so the ratio of one round cancels most
of it; the median of the rounds' ratios drops the odd round a burst elsewhere hit, and their
min-max says how much the rest moved. The order of the sides reverses each round (ABC, CBA,
ABC, ...): each side runs next to its neighbours, and every pair swaps which goes first, so a
drift within the run (a cache warming, a process growing) favours neither side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: At least this many rounds for every ratio quoted.
ROUNDS = 5


def alternate(
    sides: Mapping[str, Callable[[], float]], rounds: int = ROUNDS, *, say: bool = True
) -> dict[str, list[float]]:
    """Each side's figure, once a round, ``rounds`` times: ``{side: [round 1, round 2, ...]}``."""
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
        if say:
            figures = "  ".join(f"{name} {out[name][-1]:,.0f}" for name in names)
            print(f"  round {i + 1}/{rounds}: {figures}", flush=True)
    return out


@dataclass(frozen=True)
class Ratio:
    """The median of per-round ratios, with their min and max."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return self.fmt()

    def fmt(self, digits: int = 2) -> str:
        return (
            f"{self.median:.{digits}f}x ({self.low:.{digits}f}-{self.high:.{digits}f}, "
            f"{self.rounds} rounds)"
        )


def ratio(top: list[float], bottom: list[float]) -> Ratio:
    """``top / bottom`` round by round (the lists from :func:`alternate`)."""
    each = [t / b for t, b in zip(top, bottom, strict=True)]
    return Ratio(statistics.median(each), min(each), max(each), len(each))


def spread(values: list[float]) -> str:
    """``median (min-max)`` of one side's figures, for the table beside the ratio."""
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
