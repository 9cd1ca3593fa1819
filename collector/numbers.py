"""Numbers from outside, read once and bounded: an answer's prices, amounts, times and ids, and any
state file's fields (a leaf).

Kraken sends decimal strings of at most about 20 significant digits and small exponents. Python's
``Decimal`` takes far more than that: ``1E+99999999`` is finite, 11 bytes, and 100 MB once written
out in plain notation (as SQLite keeps exact numbers), and ``Decimal()`` also reads ``" 1_0 "``
and other scripts' digits. So every number that comes in goes through here: plain ASCII decimal
text or an int (a float only where the caller says so, read through its shortest text), within
:data:`~collector.defaults.NUMBER_DIGITS` significant digits and an adjusted exponent within
:data:`~collector.defaults.NUMBER_EXPONENT` either way, or :class:`NumberError`, whose message
names the field. Callers turn it into their own error (a
dataset: ``bad_response`` for that run; a state file: a warning naming the file).

:func:`readable` is the same bound on the way out, for values a database stored before it held
(an older collector stored ``1E+999999``): such a value reads as None, never as an error.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from . import defaults

__all__ = [
    "NumberError",
    "bounded",
    "parse_decimal",
    "parse_integer",
    "parse_seconds",
    "parse_time",
    "readable",
]

#: Plain ASCII decimal text, with an optional exponent: no spaces, no ``_``, no other scripts'
#: digits, no NaN or Infinity (all of which ``Decimal()`` would take).
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DIGITS = re.compile(r"-?[0-9]+")
_MICRO = Decimal("0.000001")


class NumberError(ValueError):
    """A value that is not a bounded exact number; ``str()`` is one line naming the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def _shown(value: object) -> str:
    """The value as a message shows it: its repr, cut (a hostile one may be megabytes; an int
    past 4,300 digits has no repr at all)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def bounded(number: Decimal, *, digits: int = defaults.NUMBER_DIGITS) -> bool:
    """Whether ``number`` is finite and within the bounds (``digits`` and the exponent)."""
    if not number.is_finite():
        return False
    limit = defaults.NUMBER_EXPONENT
    return len(number.as_tuple().digits) <= digits and -limit <= number.adjusted() <= limit


def parse_decimal(value: object, *, field: str, floats: bool = False) -> Decimal:
    """``value`` (decimal text or an int) as an exact, finite, bounded ``Decimal``.

    A float is refused unless ``floats`` (an amount Kraken sent as a JSON number has already lost
    digits); with it, a float is read through its shortest text (``2.5`` is exactly that), as a
    state file written by ``json.dumps`` holds them.

    :raises NumberError: when it is anything else
    """
    if floats and isinstance(value, float):
        if not math.isfinite(value):
            raise NumberError(field, "is not a finite number")
        value = repr(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise NumberError(field, "is not a decimal string")
    if isinstance(value, int):
        # A huge int costs its conversion: count its digits from its bits first.
        if value.bit_length() > 4 * (defaults.NUMBER_DIGITS + defaults.NUMBER_EXPONENT):
            raise NumberError(field, "is out of range")
        number = Decimal(value)
    else:
        if len(value) > defaults.NUMBER_TEXT or not _DECIMAL.fullmatch(value):
            if value.strip().lower().lstrip("+-") in ("nan", "snan", "inf", "infinity"):
                raise NumberError(field, "is not a finite number")
            raise NumberError(field, f"is not a number: {_shown(value)}")
        try:
            number = Decimal(value)
        except InvalidOperation:  # an exponent beyond what Decimal represents at all
            raise NumberError(field, "is out of range") from None
    if not bounded(number):
        raise NumberError(
            field,
            f"is out of range (at most {defaults.NUMBER_DIGITS} digits, within "
            f"1E-{defaults.NUMBER_EXPONENT} to 1E+{defaults.NUMBER_EXPONENT}): {_shown(value)}",
        )
    return number


def parse_integer(
    value: object, *, field: str, low: int = 0, high: int = defaults.MAX_BIGINT
) -> int:
    """A whole number (an int, or ASCII digits) within ``[low, high]``; never a float or a bool.

    :raises NumberError: when it is anything else
    """
    if isinstance(value, str) and len(value) <= defaults.NUMBER_TEXT and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberError(field, f"is not a whole number: {_shown(value)}")
    if not low <= value <= high:
        raise NumberError(field, f"is out of range ({low} to {high}): {_shown(value)}")
    return value


def parse_seconds(value: object, *, field: str) -> Decimal:
    """Seconds since 1970 (an int, decimal text, or a float as Kraken sends its times: read
    through its shortest text, so ``1688669448.1234`` is exactly that), within ``[0,
    MAX_SECONDS)``.

    :raises NumberError: when it is anything else
    """
    try:
        seconds = parse_decimal(value, field=field, floats=True)
    except NumberError:
        raise NumberError(field, "is not a time") from None
    if not 0 <= seconds < defaults.MAX_SECONDS:
        raise NumberError(field, "is not a time")
    return seconds


def parse_time(value: object, *, field: str) -> datetime:
    """:func:`parse_seconds` as a UTC datetime, cut to the microsecond (a 7th decimal is below
    what a time column holds).

    :raises NumberError: when it is not a time
    """
    seconds = parse_seconds(value, field=field)
    micros = int(seconds.quantize(_MICRO, rounding=ROUND_DOWN).scaleb(6))
    whole, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(whole, UTC).replace(microsecond=micro)


# RFC 3339 as Kraken writes it (nanoseconds in some channels); an offset instead of Z is taken too.
# Anything else (no zone, a space, a week date) is refused.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")
# What Kraken's WebSocket sends (microseconds, UTC): read without the general path's regrouping.
_RFC3339_MICRO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_FIRST = datetime.fromtimestamp(0, UTC)
_LAST = datetime.fromtimestamp(defaults.MAX_SECONDS, UTC)


def parse_rfc3339(value: object, *, field: str) -> datetime:
    """An RFC 3339 time with its zone (``2023-09-25T07:49:37.708706Z``, as Kraken's WebSocket
    sends them) as a UTC datetime, cut to the microsecond as :func:`parse_time` cuts, within the
    times a row may hold (the epoch to ``MAX_SECONDS``).

    :raises NumberError: when it is not one (no zone, month 13, the year 4000, not text)
    """
    if isinstance(value, str) and _RFC3339_MICRO_Z.fullmatch(value):  # Kraken's own shape
        try:
            t = datetime.fromisoformat(
                value
            )  # its "Z" is UTC itself (not a copy: replace() is slow)
        except ValueError:
            pass  # not a date (month 13): the general path says so
        else:
            if _FIRST <= t < _LAST:
                return t
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None or not isinstance(value, str):
        raise NumberError(field, f"is not an RFC 3339 time: {_shown(value)}")
    digits = (match.group(2) or "")[:6].ljust(6, "0")  # beyond the microsecond: cut, not rounded
    whole = value[: match.start(1)] if match.group(1) else value[: match.start(3)]
    zone = match.group(3).replace("Z", "+00:00")
    try:
        t = datetime.fromisoformat(f"{whole}.{digits}{zone}").astimezone(UTC)
    except ValueError:
        raise NumberError(field, f"is not a time: {_shown(value)}") from None
    if not _FIRST <= t < _LAST:
        raise NumberError(field, f"is out of range: {_shown(value)}")
    return t


def readable(value: object) -> Decimal | None:
    """A number as a database returned it (``Decimal``, SQLite's text, an int) if it is within
    the bounds; None for one stored before they held (or anything that is not a number), so a
    reader can show it as missing instead of failing.

    A bounded number written out in plain notation has more digits than it came with (``1E+40``
    is 41 of them): what is read back is bounded by its text's length instead."""
    if value is None or isinstance(value, bool):
        return None
    digits = defaults.NUMBER_TEXT
    if isinstance(value, Decimal):
        return value if bounded(value, digits=digits) else None
    if isinstance(value, int):
        number = Decimal(value) if value.bit_length() <= 512 else None
    elif isinstance(value, str | float):
        text = value if isinstance(value, str) else repr(value)
        # The plain text of an out-of-range number is long: refuse it unparsed (SQLite keeps
        # ``1E+999999`` as a million digits).
        if len(text) > defaults.NUMBER_TEXT:
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
    else:
        return None
    return number if number is not None and bounded(number, digits=digits) else None
