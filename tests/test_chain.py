"""The chain of one asset's running balances, entry by entry, in exact decimals."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from collector.chain import Chain, Entry, time_groups

T0 = datetime(2026, 11, 2, 10, 0, 1, tzinfo=UTC)


def entries(*rows: tuple[int, str, str, str | None], start: int = 0) -> list[Entry]:
    """``(seconds after T0, amount, fee, balance)`` rows as entries ``L0``, ``L1``, ..."""
    return [
        Entry(
            f"L{start + i}",
            T0 + timedelta(seconds=s),
            Decimal(a),
            Decimal(f),
            None if b is None else Decimal(b),
        )
        for i, (s, a, f, b) in enumerate(rows)
    ]


def run(chain: Chain, items: list[Entry]) -> list:
    return [b for group in time_groups(items) for b in chain.feed(group)]


HISTORY = entries(
    (0, "1.5", "0", "1.5"),
    (10, "0.2", "0.0001", "1.6999"),
    (20, "-0.1", "0", "1.5999"),
    (30, "-1.0", "0.0005", "0.5994"),
)


def test_a_complete_history_chains_from_zero() -> None:
    chain = Chain("XXBT", Decimal(0))
    assert run(chain, HISTORY) == []
    assert chain.balance == Decimal("0.5994") and chain.last == HISTORY[-1]
    assert chain.entries == 4


def test_a_missing_entry_is_a_break_of_exactly_its_amount_less_fee() -> None:
    for hidden in range(len(HISTORY) - 1):
        chain = Chain("XXBT", Decimal(0))
        rest = HISTORY[:hidden] + HISTORY[hidden + 1 :]
        (found,) = run(chain, rest)
        gone = HISTORY[hidden]
        assert found.unaccounted == gone.amount - gone.fee
        assert found.after == HISTORY[hidden + 1]
        assert found.before == (HISTORY[hidden - 1] if hidden else None)
    # the last one missing leaves nothing to show it: the chain of what is there holds
    chain = Chain("XXBT", Decimal(0))
    assert run(chain, HISTORY[:-1]) == []


def test_the_break_message_names_the_entries_around_it() -> None:
    chain = Chain("XXBT", Decimal(0))
    (found,) = run(chain, [HISTORY[0], HISTORY[2], HISTORY[3]])
    assert found.message() == (
        "XXBT: between L0 2026-11-02 10:00:01 (balance 1.5) and L2 2026-11-02 10:00:21 "
        "(balance 1.5999, amount -0.1, fee 0): 0.1999 unaccounted"
    )


def test_entries_sharing_a_time_chain_in_any_order() -> None:
    # Four entries at one time, whose balances chain in one order only.
    group = entries(
        (5, "100", "0", "100"),
        (5, "-40", "0.1", "59.9"),
        (5, "10", "0", "69.9"),
        (5, "-9.9", "0", "60"),
    )
    after = entries((9, "1", "0", "61"), start=9)
    for order in itertools.permutations(group):
        chain = Chain("ZUSD", Decimal(0))
        assert run(chain, [*order, *after]) == [], order
        assert chain.balance == Decimal(61)
    # and one of them missing is a break, whatever the order of the others
    for order in itertools.permutations(group[:2] + group[3:]):
        chain = Chain("ZUSD", Decimal(0))
        breaks = run(chain, [*order, *after])
        assert [b.unaccounted for b in breaks] == [Decimal(10)], order


def test_entries_that_cancel_out_at_one_time_and_a_history_read_from_its_middle() -> None:
    # A deposit withdrawn at the same time: a circuit, 0 on it (the account opens empty).
    group = entries((0, "-5", "0", "0"), (0, "5", "0", "5"))
    chain = Chain("DOT", None)
    assert run(chain, [*group, *entries((1, "1", "0", "1"), start=2)]) == []
    assert chain.balance == 1
    # From its middle: the first entry's balance is taken as it is.
    chain = Chain("DOT", None)
    assert run(chain, HISTORY[2:]) == [] and chain.balance == Decimal("0.5994")


def test_entries_without_a_balance_do_not_move_it_and_cannot_hide_a_break() -> None:
    pending = entries((5, "0.2", "0.0001", None), start=7)  # announced, not booked
    chain = Chain("XXBT", Decimal(0))
    assert run(chain, [HISTORY[0], *pending, *HISTORY[1:]]) == []
    assert (chain.entries, chain.unbalanced) == (4, 1)
    # the booking itself missing: the announcement does not stand in for it
    chain = Chain("XXBT", Decimal(0))
    (found,) = run(chain, [HISTORY[0], *pending, *HISTORY[2:]])
    assert found.unaccounted == Decimal("0.1999")


def test_a_chain_resumed_from_a_stored_point() -> None:
    chain = Chain("XXBT", Decimal("1.6999"), HISTORY[1])
    assert run(chain, HISTORY[2:]) == []
    chain = Chain("XXBT", Decimal("1.6999"), HISTORY[1])
    (found,) = run(chain, HISTORY[3:])
    assert found.before == HISTORY[1] and found.unaccounted == Decimal("-0.1")
    assert "L1 2026-11-02 10:00:11 (balance 1.6999)" in found.message()
