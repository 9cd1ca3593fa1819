"""The SQL schema's shared parts: exact column types, the metadata, and the collector's own tables.

Dataset tables (``balances``, ...) are declared by their modules in :mod:`collector.datasets` on
the same :data:`metadata`; Alembic's migrations create them all.

* ``runs``: one row per execution, success or failure.
* ``cursors``: where each job's dataset continues from (its next request parameters), written in
  the same transaction as the rows it covers.
* ``collector_state``: the highest nonce used, so a restart starts above it.
* ``ledger_verification``: how far each account's ledger is verified, asset by asset
  (:mod:`collector.verify`).

All timestamps are UTC and timezone-aware (``timestamptz`` on PostgreSQL; on SQLite, text ending in
``+00:00``). Amounts are exact decimals (``NUMERIC`` on PostgreSQL, decimal text on SQLite,
``Decimal`` in Python; never floats).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeDecorator

_SQLITE_TS = sqlite.DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"
    ".%(microsecond)06d+00:00",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)\.(\d+)\+00:00",
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_TS)
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: collector stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """Exact decimals: NUMERIC on PostgreSQL, decimal text on SQLite (whose NUMERIC is a float)."""

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | str | None, dialect: Any) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        # Plain notation keeps the text readable and comparable in SQL: 0.0000000000, not 0E-10.
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(str(value))


# none_as_null: Python None is SQL NULL, not the JSON value null, so a failed run's missing result
# is found by `result IS NULL` (0004 turned the JSON nulls stored before into NULL).
JSONType = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
RunId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", RunId, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False),
    Column("method", String(100), nullable=False),
    Column("params", JSONType, nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("status", String(20), nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
    Column("result", JSONType),
    Column("attempts", Integer, nullable=False, server_default="1"),
    # Answers received, and rows this run added to its dataset's table (0005).
    Column("pages", Integer, nullable=False, server_default="0"),
    Column("new_rows", Integer, nullable=False, server_default="0"),
    # A run's identity across a spool replay: replaying skips runs already stored (0002).
    Column("uid", String(32), unique=True),
    # The account a private job ran as; NULL for public jobs (0006).
    Column("account", String(64)),
)
Index("ix_runs_job_started_at", runs.c.job, runs.c.started_at)
Index("ix_runs_status", runs.c.status)

cursors = Table(
    "cursors",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("dataset", String(64), primary_key=True),
    Column("value", JSONType, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One active collector per account: see collector.coordination (0006).
account_leases = Table(
    "account_leases",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("since", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("nonce_mark", BigInteger, nullable=False, server_default="0"),
    # The key's rate counter as its holder last knew it (a float: a counter's level, not money),
    # so a holder on another machine starts from it; at the release, counter_at = expires_at.
    Column("counter_level", Float),
    Column("counter_refusals", Integer),
    Column("counter_at", UTCDateTime()),
)

state = Table(
    "collector_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# How far each account's ledger chain is verified, per asset (collector.verify; 0007). A pass
# verifies the account's ledger up to `verified_to`; the next one reads the asset's entries after
# `resume_time`, from `resume_balance` (a little before `verified_to`, so the balance snapshots
# of the last seconds can still be matched).
ledger_verification = Table(
    "ledger_verification",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("asset", String(32), primary_key=True),
    Column("verified_to", UTCDateTime(), nullable=False),
    Column("entries", BigInteger, nullable=False, server_default="0"),
    Column("breaks", Integer, nullable=False, server_default="0"),
    Column("resume_time", UTCDateTime()),
    Column("resume_balance", ExactDecimal()),
    Column("resume_ledger_id", String(64)),
    Column("resume_entries", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime(), nullable=False),
)
