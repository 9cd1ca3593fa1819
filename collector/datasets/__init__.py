"""Derived tables: one module per table, each a :class:`Dataset` that turns answers into rows.

A job's method decides its dataset (:func:`for_method`). To add a table, write a module with a
:class:`Dataset` subclass and its ``Table`` on :data:`collector.schema.metadata`, add an instance to
:data:`DEFAULT`, and add a migration that creates the table.

What the rest of the package asks of the tables is read from their declarations, never listed
again: :func:`retention_tables` (what ``retention:`` may name), :func:`history_methods` (the
methods a job's ``since:`` applies to), :func:`cursor_time` (a cursor read as a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .balances import Balances
from .base import Dataset, Page
from .book import Book
from .connections import StreamConnections
from .gaps import Gaps
from .history import Ledger, MyTrades, Orders
from .market import OHLC, Spread, Ticker, Trades
from .reference import Assets, Pairs

#: The tables a stream of Kraken's WebSocket feed fills besides the REST ones (issue 28; migration
#: 0012): ``book``, and ``stream_connections`` that a stream's batch runs name. In :data:`DEFAULT`
#: since the service records streams (``retention:`` may name them).
STREAMS: tuple[Dataset, ...] = (Book(), StreamConnections())

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
    *STREAMS,
)


_NAMED = {dataset.name: dataset for dataset in DEFAULT}


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


def named(name: str, datasets: Iterable[Dataset] = DEFAULT) -> Dataset | None:
    """The dataset of table ``name`` (None: no such dataset)."""
    if datasets is DEFAULT:
        return _NAMED.get(name)
    return next((d for d in datasets if d.name == name), None)


def retention_tables(datasets: Iterable[Dataset] = DEFAULT) -> tuple[str, ...]:
    """The tables the job file's ``retention:`` may name besides ``runs`` (the prunable ones), in
    the datasets' order."""
    return tuple(d.name for d in datasets if d.prunable)


def history_methods(datasets: Iterable[Dataset] = DEFAULT) -> frozenset[str]:
    """The methods whose data is a history a job continues (``since:`` says where it starts)."""
    return frozenset(method for d in datasets if d.history for method in d.methods)


def cursor_time(name: str, cursor: Any, datasets: Iterable[Dataset] = DEFAULT) -> datetime | None:
    """Up to when dataset ``name``'s stored ``cursor`` says it has collected, as the dataset reads
    it (:meth:`Dataset.cursor_time`); None when not known, or for a name no dataset has."""
    dataset = named(name, datasets)
    return None if dataset is None else dataset.cursor_time(cursor)


__all__ = [
    "DEFAULT",
    "OHLC",
    "STREAMS",
    "Assets",
    "Balances",
    "Book",
    "Dataset",
    "Gaps",
    "Ledger",
    "MyTrades",
    "Orders",
    "Page",
    "Pairs",
    "Spread",
    "StreamConnections",
    "Ticker",
    "Trades",
    "by_method",
    "cursor_time",
    "for_method",
    "history_methods",
    "named",
    "retention_tables",
]
