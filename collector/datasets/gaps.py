"""``gaps``: ranges a job asked for that Kraken no longer serves, recorded instead of lost silently.

Not filled from a method's answer: other datasets hand their gaps over with their rows (an OHLC
run whose `since` lies before the 720 candles Kraken keeps), and verification records the breaks
it finds in a ledger (dataset ``ledger``, ``pair`` the asset, ``amount`` what is unaccounted for)
or between a balance snapshot and the ledger (dataset ``balances``). Key
``(job, dataset, pair, start)``.
"""

from __future__ import annotations

from sqlalchemy import Column, String, Table, Text

from ..schema import ExactDecimal, RunId, UTCDateTime, metadata
from .base import Dataset

table = Table(
    "gaps",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("dataset", String(64), primary_key=True),
    Column("pair", String(32), primary_key=True),
    Column("start", UTCDateTime(), primary_key=True),
    Column("end", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    Column("run_id", RunId, nullable=False),
    # What a ledger break leaves unaccounted for, or a snapshot's difference (0007).
    Column("amount", ExactDecimal()),
)


class Gaps(Dataset):
    name = "gaps"
    table = table
    methods = frozenset()
    key = ("job", "dataset", "pair", "start")
    time_column = "start"
