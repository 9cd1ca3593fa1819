"""What the fake's histories share: a time-ordered store with Kraken's paging, ids, decimal text,
and the parameter checks every method makes.

A :class:`History` keeps its entries oldest first, their times never decreasing, so a time window is
two bisections and a page is a slice: no per-request rebuilding, whatever the size. Entries are
never changed once added; requests may hand them out without copying.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import math
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from typing import Any

#: Entries in a full page of Ledgers, TradesHistory and ClosedOrders (Kraken's).
PAGE_SIZE = 50

Key = float | int  # an entry's time: float seconds (4 decimals), or int nanoseconds
Window = Callable[[dict[str, Any], float | None, float | None], bool]


class Refusal(Exception):
    """A Kraken error a method answers (e.g. ``EQuery:Unknown asset pair``); its text is the error."""


class History:
    """Entries in time order (oldest first), each with an id; Kraken serves the private ones
    newest first."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.ids: list[Any] = []
        self.entries: list[Any] = []
        self.index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Key, ident: Any, entry: Any) -> None:
        """Append ``entry`` at ``key``, which must not be older than the last entry's."""
        if self.keys and key < self.keys[-1]:
            raise ValueError(f"{key} is older than the last entry ({self.keys[-1]})")
        self.index[ident] = len(self.ids)
        self.keys.append(key)
        self.ids.append(ident)
        self.entries.append(entry)

    def last(self) -> Key | None:
        return self.keys[-1] if self.keys else None

    def bounds(self, after: Key | None, upto: Key | None) -> tuple[int, int]:
        """Positions ``lo:hi`` of the entries with ``after < time <= upto``."""
        lo = 0 if after is None else bisect.bisect_right(self.keys, after)
        hi = len(self.keys) if upto is None else bisect.bisect_right(self.keys, upto)
        return lo, max(lo, hi)

    def newest_first(self) -> dict[Any, Any]:
        """Every entry, ``{id: entry}``, newest first."""
        return dict(zip(reversed(self.ids), reversed(self.entries), strict=True))


def window_page(
    history: History,
    params: Mapping[str, str],
    *,
    match: Callable[[dict[str, Any]], bool] | None = None,
    window: Window | None = None,
    hidden: Collection[Any] = (),
) -> tuple[dict[str, Any], int]:
    """Kraken's paging: the entries with ``start < time <= end`` (or ``window``) that ``match``
    and are not ``hidden``, newest first, 50 from ``ofs``; and ``count``, how many there are in
    all."""
    start, end = seconds(params, "start"), seconds(params, "end")
    ofs = int_param(params, "ofs", 0)
    if ofs < 0:
        raise Refusal("EGeneral:Invalid arguments:ofs")
    if match is None and window is None and not hidden:  # the common case: bisect and slice
        lo, hi = history.bounds(start, end)
        top = hi - ofs
        chosen: Any = range(top - 1, max(lo, top - PAGE_SIZE) - 1, -1)
        count = hi - lo
    else:
        if window is None:
            lo, hi = history.bounds(start, end)
        else:  # another time than the history's own: it is never earlier, so start still bounds
            lo, hi = history.bounds(start, None)
        positions = [
            i
            for i in range(hi - 1, lo - 1, -1)
            if (window is None or window(history.entries[i], start, end))
            and (match is None or match(history.entries[i]))
            and history.ids[i] not in hidden
        ]
        chosen, count = positions[ofs : ofs + PAGE_SIZE], len(positions)
    return {history.ids[i]: history.entries[i] for i in chosen}, count


def within(value: float, start: float | None, end: float | None) -> bool:
    return (start is None or value > start) and (end is None or value <= end)


def kid(prefix: str, text: str) -> str:
    """A Kraken-like id (``L4UESK-KG3EQ-UFO4T5``), derived from ``text`` so it is deterministic."""
    s = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"{prefix}{s[:5]}-{s[5:10]}-{s[10:16]}"


def fmt(value: Decimal, places: int) -> str:
    """A decimal string with exactly ``places`` decimals, never in exponent form."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def seconds4(t: float) -> float:
    """A history time as Kraken's older answers give it: seconds with 4 decimals."""
    return round(t, 4)


def int_param(params: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(params.get(name, default))
    except ValueError:
        raise Refusal(f"EGeneral:Invalid arguments:{name}") from None


def seconds(params: Mapping[str, str], name: str) -> float | None:
    """A time parameter in unix seconds (int or float), or None when absent.

    Kraken also takes a ledger or trade id for ``start``/``end``; the fake refuses ids as
    ``EGeneral:Invalid arguments:<name>`` so a client that relies on them is caught.
    """
    text = params.get(name, "")
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise Refusal(f"EGeneral:Invalid arguments:{name}") from None
    if not math.isfinite(value) or value < 0:
        raise Refusal(f"EGeneral:Invalid arguments:{name}")
    return value
