"""Derived tables: one module per table, each a :class:`Dataset` that turns answers into rows.

A job's method decides its dataset (:func:`for_method`). To add a table, write a module with a
:class:`Dataset` subclass and its ``Table`` on :data:`collector.schema.metadata`, add an instance to
:data:`DEFAULT`, and add a migration that creates the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from .balances import Balances
from .base import Dataset, Page
from .gaps import Gaps
from .history import Ledger, MyTrades, Orders
from .market import OHLC, Spread, Ticker, Trades
from .reference import Assets, Pairs

#: The datasets the service uses unless it is given others.
DEFAULT: tuple[Dataset, ...] = (
    Balances(),
    Ledger(),
    MyTrades(),
    Orders(),
    Trades(),
    OHLC(),
    Spread(),
    Ticker(),
    Gaps(),
    Assets(),
    Pairs(),
)


def by_method(datasets: Iterable[Dataset]) -> dict[str, Dataset]:
    """Each method's dataset; a method read by two datasets is a programming error."""
    out: dict[str, Dataset] = {}
    for dataset in datasets:
        for method in dataset.methods:
            if method in out:
                raise ValueError(f"{method} is read by both {out[method].name} and {dataset.name}")
            out[method] = dataset
    return out


def for_method(method: str, datasets: Iterable[Dataset] = DEFAULT) -> Dataset | None:
    """The dataset a job calling ``method`` fills, or None (the run keeps only its answer)."""
    return by_method(datasets).get(method)


__all__ = [
    "DEFAULT",
    "OHLC",
    "Assets",
    "Balances",
    "Dataset",
    "Gaps",
    "Ledger",
    "MyTrades",
    "Orders",
    "Page",
    "Pairs",
    "Spread",
    "Ticker",
    "Trades",
    "by_method",
    "for_method",
]
