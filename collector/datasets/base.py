"""What a dataset declares: its table, the methods it reads, its rows, its key and its cursor, and
what the rest of the package asks of it (its time column, whether ``retention:`` may prune it,
whether it is a history a job's ``since:`` starts, up to when its cursor says it has collected).

A run of a dataset's job is a conversation: :meth:`Dataset.first` says what to ask (from the job
and the stored cursor), and :meth:`Dataset.page` reads each answer into rows, the cursor to store
with them, and what to ask next, if anything. All paging state lives in the cursor, which the store
commits in the same transaction as the rows it covers: a run cut short anywhere continues, in the
next run, from the last page that was stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import Connection, Table

from .. import defaults
from ..errors import BadResponse
from ..numbers import NumberError, parse_decimal, parse_integer, parse_time
from ..records import RunRecord


@dataclass
class Page:
    """What one answer means.

    :ivar rows: rows for the dataset's table (without ``run_id``): dicts, or a
        :class:`~collector.records.Prepared` of their stored text (Trades)
    :ivar cursor: the cursor to store with them (None: the stored one stays)
    :ivar next: the parameters of the next call of this run, or None when the run is done
    :ivar gaps: ranges the exchange no longer serves (rows for the ``gaps`` table)
    """

    rows: list[Any]
    cursor: Any = None
    next: dict[str, Any] | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)


class Dataset:
    """A derived table filled from the answers of one or more Kraken methods.

    Subclasses set the class attributes and implement :meth:`rows` (one call, one answer) or,
    for paging and cursors, :meth:`first` and :meth:`page`. The store upserts rows by ``key`` (a
    row whose key is stored already keeps its values, except the ``update`` columns), and adds each
    row's ``run_id``: the run that first stored it.
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
    #: a boolean column: a stored row where it is true is never updated again (a final candle)
    frozen: ClassVar[str | None] = None
    #: when set, a stored row is updated only if one of these columns differs (the other
    #: ``update`` columns, a time and the run, follow them: a refresh that changes nothing
    #: writes nothing)
    compare: ClassVar[tuple[str, ...]] = ()
    #: a column naming a pair: written under the pair's canonical name whatever spelling Kraken
    #: sent, once the ``pairs`` table knows it (an order's ``descr.pair`` is the altname)
    pair_column: ClassVar[str | None] = None
    #: True when the dataset keeps a cursor (the runner loads it before the job's first run)
    incremental: ClassVar[bool] = False
    #: whether ``runs.result`` keeps the raw answer too (a job's ``raw: true`` always keeps it)
    keep_result: ClassVar[bool] = False
    #: the column saying when a row's fact happened (an entry's time, a snapshot's taking, an
    #: order's close): ``retention`` ages rows by it, ``status`` shows the newest. None: the table
    #: is a listing, not a history (assets, pairs)
    time_column: ClassVar[str | None] = None
    #: whether the job file's ``retention:`` may name the table, its rows deleted by
    #: ``time_column``. A snapshot table's rows go with their run instead (their foreign key
    #: cascades), so it is not prunable on its own
    prunable: ClassVar[bool] = False
    #: whether the table is a history a job continues from its cursor: a job of its methods may
    #: say where the history starts (``since:``)
    history: ClassVar[bool] = False

    # -- the simple protocol: one call, one answer ---------------------------------------------

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        """The table's rows in ``result`` (the answer of ``record.method``), without ``run_id``.

        :raises collector.errors.BadResponse: when the answer does not hold what it should
        """
        raise NotImplementedError

    def params(self, params: Mapping[str, Any], cursor: Any) -> dict[str, Any]:
        """The request parameters from the job's ``params`` and the stored ``cursor`` (None
        before the first run)."""
        return dict(params)

    def cursor(self, params: Mapping[str, Any], result: Any, cursor: Any) -> Any:
        """The cursor after a successful call that sent ``params`` and got ``result``; None keeps
        the stored one."""
        return None

    def stored(
        self, conn: Connection, written: Sequence[tuple[RunRecord, int]]
    ) -> Mapping[int, int]:
        """Called in the write's transaction once this dataset's rows of ``written`` (each record
        with its run's id) are upserted: what else they change (nothing, by default). Returns
        the rows of the table each run changed besides."""
        return {}

    def cursor_time(self, cursor: Any) -> datetime | None:
        """Up to when a stored ``cursor`` says this dataset has collected (None: not known yet,
        or not readable as a time). By default a cursor is seconds since the epoch (Kraken's
        ``last`` of OHLC and Spread); a dataset whose cursor holds something else says how to
        read it."""
        return epoch(cursor)

    def decode(self, body: bytes) -> dict[str, Any] | None:
        """An answer's body (its JSON bytes) decoded this dataset's typed way, as the envelope
        ``{"error": [...], "result": ...}`` its :meth:`page` reads; None (the default, and for
        any shape the typed way does not take) leaves the body to the client's general decode.
        Either way the client checks the envelope the same way."""
        return None

    # -- the paging protocol ---------------------------------------------------------------------

    def first(self, job: Any, cursor: Any, now: datetime) -> tuple[dict[str, Any], Any]:
        """The first call of a run of ``job`` (a :class:`collector.jobfile.Job`): its parameters,
        and the cursor the run starts from (stored with the first page's rows)."""
        return self.params(job.params, cursor), cursor

    def page(self, record: RunRecord, sent: Mapping[str, Any], result: Any, cursor: Any) -> Page:
        """Read the answer ``result`` to the call that sent ``sent``, the run's cursor being
        ``cursor``."""
        return Page(self.rows(record, result), self.cursor(sent, result, cursor))


def epoch(seconds: Any) -> datetime | None:
    """Seconds since the epoch (a number, or its digits) as a UTC time; None for anything else or
    a time no date holds (a cursor an older collector stored unbounded)."""
    if seconds is None or isinstance(seconds, bool | dict | list):
        return None
    try:
        number = float(seconds)
        return datetime.fromtimestamp(number, UTC) if math.isfinite(number) else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# -- reading Kraken's values exactly ----------------------------------------------------------


def bad(record: RunRecord, problem: str) -> BadResponse:
    return BadResponse(f"{record.method} {problem}", method=record.method)


#: Plain decimal text short enough to be within the bounds by its length alone: at most
#: ``NUMBER_DIGITS`` characters hold at most that many digits, and an adjusted exponent within
#: ``NUMBER_EXPONENT`` either way (asserted below). Kraken's prices and amounts are all of this
#: shape, and read so they skip the general check's second pass over the digits (``bounded``).
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
PLAIN_MAX = defaults.NUMBER_DIGITS
assert PLAIN_MAX <= defaults.NUMBER_EXPONENT


#: Floats of seconds below this (the year 2106) are spaced under a microsecond apart (2**-20 s).
_FLOAT_SECONDS = float(2**32)


def decimal(record: RunRecord, value: Any, what: str, *, optional: bool = False) -> Decimal | None:
    """A decimal string (or an int) as an exact, finite, bounded ``Decimal`` (never through float;
    :func:`collector.numbers.parse_decimal`; the same ``Decimal`` of the same text, read faster
    when the text is plain and short)."""
    if type(value) is str and len(value) <= PLAIN_MAX and PLAIN_DECIMAL.fullmatch(value):
        return Decimal(value)
    if value is None or value == "":
        if optional:
            return None
        raise bad(record, f"{what} is missing")
    try:
        return parse_decimal(value, field=what)
    except NumberError as e:
        raise bad(record, str(e)) from None


def timestamp(record: RunRecord, value: Any, what: str) -> datetime:
    """Kraken's seconds (an int, or a float with up to 7 decimals) as a UTC datetime, to the
    microsecond (:func:`collector.numbers.parse_time`; a float or an int within ``MAX_SECONDS``
    read without a ``Decimal``: the same datetime, its microseconds the first six decimals of the
    float's shortest text)."""
    kind = type(value)
    if kind is float and 0.0 <= value < _FLOAT_SECONDS:
        shortest = repr(value)
        if "e" not in shortest:  # not 1e-05
            dot = shortest.find(".")
            if len(shortest) - dot > 7:  # past the microsecond: cut there, down
                value = float(shortest[: dot + 7])
            # At most six decimals now, and a float this small is within half a microsecond of
            # them: rounding to the microsecond (what fromtimestamp does) gives exactly them.
            return datetime.fromtimestamp(value, UTC)
    if kind is float and 0.0 <= value < defaults.MAX_SECONDS:
        whole, point, fraction = repr(value).partition(".")
        if point and fraction.isdigit():  # not 1e+11 (no point) or an exponent after it
            return datetime.fromtimestamp(int(whole), UTC).replace(
                microsecond=int(fraction[:6].ljust(6, "0"))
            )
    elif kind is int and 0 <= value < defaults.MAX_SECONDS:
        return datetime.fromtimestamp(value, UTC)
    try:
        return parse_time(value, field=what)
    except NumberError as e:
        raise bad(record, str(e)) from None


def integer(record: RunRecord, value: Any, what: str, high: int = defaults.MAX_BIGINT) -> int:
    """A whole number from 0 to ``high`` (an id, a count: what its column holds)."""
    try:
        return parse_integer(value, field=what, high=high)
    except NumberError as e:
        raise bad(record, str(e)) from None


def text(record: RunRecord, value: Any, what: str, limit: int = 200) -> str:
    """A short text field (an id, a type); a NUL character (which no Kraken field holds and
    PostgreSQL can't store) makes the answer a bad one."""
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise bad(record, f"{what} is not text")
    out = str(value)[:limit]
    if "\x00" in out:
        raise bad(record, f"{what} holds a NUL character")
    return out


def mapping(record: RunRecord, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(record, f"{what} is a {type(value).__name__}, not a mapping")
    return value
