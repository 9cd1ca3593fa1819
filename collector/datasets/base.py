"""What a dataset declares: its table, the methods it reads, its rows, its key and its cursor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import Table

from ..records import RunRecord


class Dataset:
    """A derived table filled from the answers of one or more Kraken methods.

    Subclasses set the class attributes and implement :meth:`rows`; the store upserts the rows by
    ``key`` (a row whose key is stored already keeps its values, except the ``update`` columns), and
    adds each row's ``run_id`` (the run that first stored it).

    A dataset that collects incrementally also overrides :meth:`params` and :meth:`cursor`: the
    runner asks :meth:`params` for the request parameters from the stored cursor, and stores the
    cursor :meth:`cursor` returns in the same transaction as the rows.
    """

    #: the table's name, also the key its rows travel under in a :class:`RunRecord`
    name: ClassVar[str]
    table: ClassVar[Table]
    #: the Kraken methods whose answers fill the table
    methods: ClassVar[frozenset[str]]
    #: the natural key: a row is stored once per key
    key: ClassVar[tuple[str, ...]]
    #: columns refreshed when a row's key is already stored (e.g. a candle that was still open)
    update: ClassVar[tuple[str, ...]] = ()
    #: True when the dataset keeps a cursor (the runner then loads it before the first run)
    incremental: ClassVar[bool] = False

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        """The table's rows in ``result`` (the answer of ``record.method``), without ``run_id``.

        :raises collector.errors.BadResponse: when the answer does not hold what it should
        """
        raise NotImplementedError

    def params(self, params: Mapping[str, Any], cursor: Any) -> dict[str, Any]:
        """The request parameters of the next run, from the job's ``params`` and the stored
        ``cursor`` (None before the first run)."""
        return dict(params)

    def cursor(self, params: Mapping[str, Any], result: Any, cursor: Any) -> Any:
        """The cursor after a successful run that sent ``params`` and got ``result``; None keeps
        the stored one."""
        return None
