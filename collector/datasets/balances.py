"""``balances``: one row per asset per Balance or BalanceEx run, the amount exact."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ForeignKey, Index, String, Table

from .. import defaults
from ..errors import BadResponse
from ..numbers import NumberError, parse_decimal
from ..records import RunRecord
from ..schema import ExactDecimal, RunId, UTCDateTime, metadata
from .base import Dataset

table = Table(
    "balances",
    metadata,
    Column("run_id", RunId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("asset", String(32), primary_key=True),
    Column("job", String(200), nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
    Column("account", String(64), nullable=False, server_default=defaults.DEFAULT_ACCOUNT),
)
Index("ix_balances_asset_taken_at", table.c.asset, table.c.taken_at)
# Verification finds the snapshots taken since its last pass (0007).
Index("ix_balances_taken_at", table.c.taken_at)


class Balances(Dataset):
    """A snapshot per run. An empty account's answer has no ``result`` at all: an empty snapshot."""

    name = "balances"
    table = table
    methods = frozenset({"Balance", "BalanceEx"})
    key = ("run_id", "asset")
    keep_result = True  # as before datasets: a balance run keeps its answer
    time_column = "taken_at"  # a snapshot: its rows go with their run (not prunable)

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        method = record.method
        if result is None:
            return []
        if not isinstance(result, dict):
            raise self._bad(method, f"result is a {type(result).__name__}, not a mapping of assets")
        rows = []
        for asset, value in result.items():
            nested = method == "BalanceEx" and isinstance(value, dict)
            amount = value.get("balance") if nested else value
            if not isinstance(amount, str):
                raise self._bad(method, f"amount of {asset!r} is not a decimal string")
            try:
                number = parse_decimal(amount, field=f"amount of {asset!r}")
            except NumberError as e:
                raise self._bad(method, str(e)) from None
            rows.append(
                {
                    "asset": str(asset)[:32],
                    "amount": number,
                    "job": record.job,
                    "taken_at": record.finished_at,
                }
            )
        return rows

    @staticmethod
    def _bad(method: str, problem: str) -> BadResponse:
        return BadResponse(f"{method} {problem}", method=method)
