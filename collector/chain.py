"""One asset's ledger chain: each entry's ``balance`` is the one before it + ``amount`` - ``fee``.

Kraken stamps every ledger entry with its asset's running balance, so the entries prove
themselves complete: a missing entry leaves the next one's balance short by exactly its own
``amount - fee``. :class:`Chain` checks an asset's entries fed in time order, one **time group**
(the entries sharing a time) at a time, in exact ``Decimal`` arithmetic.

Entries that share a time come in no order a client may rely on, so a group holds when *some*
order of its entries chains. Each entry is an edge from the balance before it
(``balance - amount + fee``) to its ``balance``; a group holds when its edges form one trail
starting at the chain's balance (an Euler trail: degrees and connectivity, no permutations tried),
and the trail's end is the balance after the group whatever the order. A group that does not hold
is read greedily for the report: follow the edges that chain, and where none does, jump to the
entry the missing amount leads to, as a :class:`Break` saying how much is unaccounted for.

Entries without a balance (Kraken's CSV export has them: the announcement of a deposit, or
staking moves, before the entry that books it) do not move the chain; if one did, the next entry
with a balance shows it as a break, so skipping them can hide nothing.

The chain holds a constant amount of memory, whatever the length of the history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True)
class Entry:
    """A ledger entry as the chain needs it."""

    ledger_id: str
    time: datetime
    amount: Decimal
    fee: Decimal
    balance: Decimal | None
    run_id: int = 0

    @property
    def before(self) -> Decimal:
        """The balance this entry says there was before it."""
        assert self.balance is not None
        return self.balance - self.amount + self.fee

    def describe(self) -> str:
        return (
            f"{self.ledger_id} {_when(self.time)} (balance {_num(self.balance)}, "
            f"amount {_num(self.amount)}, fee {_num(self.fee)})"
        )


@dataclass(frozen=True)
class Break:
    """Where an asset's chain does not hold: ``after``'s balance does not follow ``before``'s
    (None: the start of the history, balance ``expected`` 0); ``unaccounted`` is what the
    missing entries must add up to (their ``amount - fee``)."""

    asset: str
    before: Entry | None
    after: Entry
    expected: Decimal
    unaccounted: Decimal

    def message(self) -> str:
        if self.before is None:
            start = f"the start (balance {_num(self.expected)})"
        else:
            start = (
                f"{self.before.ledger_id} {_when(self.before.time)} (balance {_num(self.expected)})"
            )
        return (
            f"{self.asset}: between {start} and {self.after.describe()}: "
            f"{_num(self.unaccounted)} unaccounted"
        )


class Chain:
    """An asset's running balance, checked group by group.

    :param asset: for the report
    :param balance: the balance before the first group fed (0 for a ledger read from the account's
        first entry), or None when it is not known (the chain starts with the first entry)
    :param last: the entry that left ``balance``, if known (for the report)
    """

    def __init__(self, asset: str, balance: Decimal | None, last: Entry | None = None) -> None:
        self.asset = asset
        self.balance = balance
        self.last = last
        #: entries checked (with a balance), and entries without one (skipped)
        self.entries = 0
        self.unbalanced = 0

    def feed(self, group: Sequence[Entry]) -> list[Break]:
        """Check the entries of one time (after every earlier time); returns the breaks."""
        if len(group) == 1 and self.balance is not None:  # most times hold one entry
            (entry,) = group
            if entry.balance is None:
                self.unbalanced += 1
                return []
            self.entries += 1
            if entry.balance - entry.amount + entry.fee == self.balance:
                self.balance, self.last = entry.balance, entry
                return []
            return self._greedy(group)
        edges = [e for e in group if e.balance is not None]
        self.unbalanced += len(group) - len(edges)
        self.entries += len(edges)
        if not edges:
            return []
        if self.balance is None:  # the first group of a history read from its middle
            start = _start(edges)
            if start is not None:
                self.balance, self.last = self._walk(edges, start)
                return []
            self.balance = edges[0].before  # not one trail: report the rest from its first entry
        if _trail(edges, self.balance):
            self.balance, self.last = self._walk(edges, self.balance)
            return []
        return self._greedy(edges)

    def _walk(self, edges: Sequence[Entry], start: Decimal) -> tuple[Decimal, Entry]:
        """The balance at the end of the trail from ``start`` over all ``edges``, and an entry
        that ends there: the degrees alone decide the end, whatever the order."""
        out: dict[Decimal, int] = defaultdict(int)
        for e in edges:
            out[e.before] += 1
            out[e.balance] -= 1  # type: ignore[index]
        out[start] -= 1  # the trail leaves `start` once more than it enters it...
        (end,) = [v for v, n in out.items() if n != 0]  # ...and enters its end once more
        last = next(e for e in reversed(edges) if e.balance == end)
        return end, last

    def _greedy(self, edges: Sequence[Entry]) -> list[Break]:
        """Follow the entries that chain; where none does, record a break and jump to the entry
        that starts a run of its own (one no other entry leads to), else the nearest."""
        left = list(edges)
        breaks: list[Break] = []
        assert self.balance is not None
        while left:
            here = self.balance
            follows = [e for e in left if e.before == here]
            if follows:
                nxt = follows[0]
            else:
                ends = {e.balance for e in left}
                sources = [e for e in left if e.before not in ends] or left
                nxt = min(sources, key=lambda e: (abs(e.before - here), e.ledger_id))
                breaks.append(Break(self.asset, self.last, nxt, here, nxt.before - here))
            left.remove(nxt)
            assert nxt.balance is not None
            self.balance, self.last = nxt.balance, nxt
        return breaks


def _trail(edges: Sequence[Entry], start: Decimal) -> bool:
    """Whether one trail from ``start`` takes every edge once: every balance is entered as often
    as it is left, except that ``start`` is left once more and one end entered once more (or none,
    when the trail ends where it began), and every edge is reachable from ``start``."""
    net: dict[Decimal, int] = defaultdict(int)
    neighbours: dict[Decimal, set[Decimal]] = defaultdict(set)
    for e in edges:
        a, b = e.before, e.balance
        assert b is not None
        net[a] += 1
        net[b] -= 1
        neighbours[a].add(b)
        neighbours[b].add(a)
    if start not in neighbours:
        return False
    net[start] -= 1
    odd = [n for n in net.values() if n != 0]
    if odd and sorted(odd) != [-1]:
        return False
    seen, todo = {start}, [start]
    while todo:
        for v in neighbours[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(neighbours)


def _start(edges: Sequence[Entry]) -> Decimal | None:
    """Where a trail over all ``edges`` must start when nothing before is known: the balance left
    once more than entered; for a circuit, 0 if it is on it (an account opens empty), else the
    smallest. None when no trail takes them all."""
    net: dict[Decimal, int] = defaultdict(int)
    for e in edges:
        net[e.before] += 1
        net[e.balance] -= 1  # type: ignore[index]
    sources = [v for v, n in net.items() if n == 1]
    if len(sources) == 1:
        start = sources[0]
    elif not any(net.values()):
        start = ZERO if ZERO in net else min(net)
    else:
        return None
    return start if _trail(edges, start) else None


def time_groups(entries: Iterable[Entry]) -> Iterable[list[Entry]]:
    """Entries in time order, grouped by time."""
    group: list[Entry] = []
    for entry in entries:
        if group and entry.time != group[0].time:
            yield group
            group = []
        group.append(entry)
    if group:
        yield group


def _num(value: Decimal | None) -> str:
    return "none" if value is None else f"{value:f}"


def _when(value: datetime) -> str:
    """UTC time to the second, and its fraction when it has one (Kraken's have up to 7 digits,
    stored to the microsecond)."""
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{value.microsecond:06d}".rstrip("0") if value.microsecond else text
