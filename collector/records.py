"""One run, ready to store, and its JSON-safe codec (for the spool).

A leaf: a :class:`RunRecord` carries any dataset's rows (``rows``, by table) and the job's new
cursor, so the store and the spool need to know nothing about balances, ledgers or candles.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .errors import Status

#: Run fields that are timestamps (ISO text in the codec).
_TIMES = ("scheduled_at", "started_at", "finished_at")


class Prepared(list[tuple[Any, ...]]):
    """A table's rows already in the text its database column stores: a tuple each, in
    ``columns``' order; a decimal in plain notation (:func:`decimal_text`), a time as UTC ISO text
    (:func:`time_text`), pair names canonical, each key once. What a stream's batch hands the
    store, so that the writer's thread, which shares the interpreter with the feed, spends no
    Python on each value (issue 28). The store adds ``run_id``; on SQLite an insert-only table
    takes the tuples as they are, elsewhere they are read back into typed rows first."""

    __slots__ = ("columns",)

    def __init__(self, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]] = ()) -> None:
        super().__init__(rows)
        self.columns = columns


def decimal_text(value: Any) -> str:
    """An exact decimal as stored: plain notation (``0.00000001``, never ``1E-8``)."""
    if type(value) is Decimal:
        text = str(value)  # the same text as format(value, "f") unless in exponent notation
        return text if "E" not in text else format(value, "f")
    return format(Decimal(value), "f")


def time_text(value: datetime) -> str:
    """A timezone-aware time as stored: UTC, ``YYYY-MM-DD HH:MM:SS.ffffff+00:00``."""
    if value.tzinfo is UTC:  # as the datasets make them: no astimezone() needed
        return value.isoformat(" ", "microseconds")
    if value.tzinfo is None:  # as UTCDateTime refuses it
        raise ValueError("naive datetime: collector stores timezone-aware UTC times only")
    return value.astimezone(UTC).isoformat(" ", "microseconds")


@dataclass
class RunRecord:
    """One execution of a job.

    :ivar rows: derived rows by table name (``{"balances": [{"asset": ..., "amount": ...}]}``),
        or a table's :class:`Prepared` tuples; the store adds each row's ``run_id``
    :ivar dataset: the job's dataset, when it keeps a cursor
    :ivar cursor: the job's cursor after this run (stored with the rows), or None to keep it
    :ivar pages: answers received so far (a paging run writes a record per page, all with the same
        ``uid``: the store keeps one ``runs`` row per uid, the latest record's fields)
    """

    job: str
    method: str
    params: dict[str, Any]
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime
    status: Status = Status.OK
    http_status: int | None = None
    error: str | None = None
    result: Any = None
    attempts: int = 1
    pages: int = 0
    rows: dict[str, list[Any]] = field(default_factory=dict)  # dicts, or a Prepared
    dataset: str | None = None
    cursor: Any = None
    account: str | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self) -> dict[str, Any]:
        """The ``runs`` row."""
        return {
            "job": self.job,
            "method": self.method,
            "params": self.params,
            "scheduled_at": self.scheduled_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "status": str(self.status),
            "http_status": self.http_status,
            "error": self.error,
            "result": self.result,
            "attempts": self.attempts,
            "pages": self.pages,
            "uid": self.uid,
            "account": self.account,
        }


def encode(record: RunRecord) -> str:
    """``record`` as JSON text. Row values keep their types (``Decimal``, ``datetime``) exactly."""
    data = {
        **record.row(),
        "rows": {table: _encode_rows(rows) for table, rows in record.rows.items()},
        "dataset": record.dataset,
        "cursor": record.cursor,
    }
    for name in _TIMES:
        data[name] = data[name].isoformat()
    return json.dumps(data)


def decode(text: str) -> RunRecord:
    """The record :func:`encode` wrote (or the spool of an older version wrote)."""
    data: dict[str, Any] = json.loads(text)
    for name in _TIMES:
        data[name] = datetime.fromisoformat(data[name])
    data["status"] = Status(data["status"])
    rows = {table: _decode_rows(rs) for table, rs in data.pop("rows", {}).items()}
    if "balances" in data:  # before datasets: [[asset, amount], ...]
        rows["balances"] = [
            {"asset": a, "amount": Decimal(x), "job": data["job"], "taken_at": data["finished_at"]}
            for a, x in data.pop("balances")
        ]
    return RunRecord(**data, rows=rows)


def _encode_rows(rows: list[Any]) -> Any:
    if isinstance(rows, Prepared):  # text and whole numbers already: JSON as they are
        return {"columns": list(rows.columns), "values": [list(r) for r in rows]}
    return [_encode_row(r) for r in rows]


def _decode_rows(rows: Any) -> Any:
    if isinstance(rows, dict):
        return Prepared(tuple(rows["columns"]), (tuple(r) for r in rows["values"]))
    return [_decode_row(r) for r in rows]


# A row value is tagged with its type, so that no value (a JSON column holding {"$d": ...}, say)
# can be mistaken for another: ["d", "1.50"] a Decimal, ["t", iso] a datetime, ["j", v] plain JSON.
def _encode_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, Decimal):
            out[name] = ["d", str(value)]
        elif isinstance(value, datetime):
            out[name] = ["t", value.isoformat()]
        else:
            out[name] = ["j", value]
    return out


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (tag, value) in row.items():
        if tag == "d":
            out[name] = Decimal(value)
        elif tag == "t":
            out[name] = datetime.fromisoformat(value)
        else:
            out[name] = value
    return out
