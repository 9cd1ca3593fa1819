"""``stream_connections``: one row per WebSocket connection of a stream (issue 28), as ``runs`` has
one per run: when it opened and closed, why it closed, how many messages it brought.

A stream's rows are stored in batch runs (a ``runs`` row per batch, job ``stream:NAME``) whose
``params`` name the connection (``{"connection": uid, ...}``), so every stored row traces to the
connection that brought it: ``row.run_id`` → ``runs.params.connection`` → ``uid`` here. The row is
written with each batch (through the store, in the batch's transaction) and its ``closed_at``,
``reason`` and ``messages`` updated as they change. Key ``uid``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table, Text

from ..schema import RunId, UTCDateTime, metadata
from .base import Dataset

table = Table(
    "stream_connections",
    metadata,
    Column("uid", String(32), primary_key=True),
    Column("stream", String(200), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("url", Text, nullable=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("closed_at", UTCDateTime()),
    Column("reason", Text),
    Column("messages", BigInteger, nullable=False, server_default="0"),
    Column("run_id", RunId, nullable=False),
)
Index("ix_stream_connections_opened_at", table.c.opened_at)


class StreamConnections(Dataset):
    name = "stream_connections"
    table = table
    methods = frozenset()
    key = ("uid",)
    # A connection's row is written again with each batch: these are what change while it lives.
    update = ("closed_at", "reason", "messages")
    # ...and only when one of them did: a batch replayed from the spool writes nothing again.
    compare = update
    time_column = "opened_at"
    prunable = True
