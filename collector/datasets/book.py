"""``book``: a pair's order book, its top ``depth`` levels a side every ``snapshot_every``, from
Kraken's WebSocket v2 ``book`` channel (:mod:`collector.streams`), each book proven by Kraken's
checksum before it is stored.

Not filled from a REST method's answer: a stream hands its rows to the store in a batch run of its
own (:func:`collector.streams.rows.book_rows`). One row per level: ``side`` (``bid`` or ``ask``),
``level`` (0 is the best price), exact ``price`` and ``qty``. ``taken_at`` is the time of the last
update applied (the message's own timestamp), so two snapshots with no update between them are
the same rows, stored once. Key ``(pair, taken_at, side, level)``.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table

from ..schema import ExactDecimal, RunId, UTCDateTime, metadata
from .base import Dataset

table = Table(
    "book",
    metadata,
    Column("pair", String(32), primary_key=True),
    Column("taken_at", UTCDateTime(), primary_key=True),
    Column("side", String(3), primary_key=True),
    Column("level", Integer, primary_key=True),
    Column("price", ExactDecimal(), nullable=False),
    Column("qty", ExactDecimal(), nullable=False),
    Column("run_id", RunId, nullable=False),
)
# Retention deletes by taken_at alone (the key starts with the pair).
Index("ix_book_taken_at", table.c.taken_at)


class Book(Dataset):
    name = "book"
    table = table
    methods = frozenset()
    key = ("pair", "taken_at", "side", "level")
    pair_column = "pair"
    time_column = "taken_at"
    prunable = True
