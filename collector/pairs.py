"""Kraken's names for a pair, and what a person may have meant by one.

A pair has three names: the canonical one its answers are keyed by (``XXBTZUSD``), its altname
(``XBTUSD``) and its wsname (``XBT/USD``). A request takes any of them (the altname in any case);
people also write ``BTC/USD``, ``btcusd`` or ``BTC-USD``, which Kraken answers with ``EQuery:Unknown
asset pair``. :func:`check` finds those in a job file's pairs against one ``AssetPairs`` answer and
suggests the name Kraken knows; :func:`same` tells, without asking Kraken, whether a stored
canonical name is the pair a job asks for (``collector status`` counts a job's own rows by it).

The ``pairs`` table keeps every pair's three names (:mod:`collector.datasets.reference`), so the
store can turn any spelling Kraken uses into the canonical name before a row is written: a closed
order's ``descr.pair`` is the altname (``ETHUSD``) while its fills say ``XETHZUSD``. :class:`Names`
is that lookup, built from the table's rows with :func:`known`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

#: Common names Kraken spells otherwise.
_ALIASES = {"BTC": "XBT", "DOGE": "XDG"}


def split(value: Any) -> list[str]:
    """The pair names in a ``pair`` parameter (a comma list, or a YAML list)."""
    values = value if isinstance(value, list) else [value]
    return [p.strip() for v in values for p in str(v).split(",") if p.strip()]


def known(answer: Mapping[str, Any]) -> dict[str, str]:
    """Every spelling a request may use for each pair of an ``AssetPairs`` answer, mapped to
    its canonical name: the canonical name and wsname as they are, the altname in any case."""
    out: dict[str, str] = {}
    for canonical, info in answer.items():
        out[canonical] = canonical
        if isinstance(info, Mapping):
            if isinstance(info.get("wsname"), str):
                out[info["wsname"]] = canonical
            if isinstance(info.get("altname"), str):
                out[info["altname"].upper()] = canonical
    return out


class Names:
    """Every spelling of the known pairs, mapped to the canonical name (an empty lookup knows
    none, and leaves every name as it is)."""

    def __init__(self, rows: Iterable[tuple[str, str | None, str | None]] = ()) -> None:
        """``rows``: ``(pair, altname, wsname)`` of each known pair (the ``pairs`` table)."""
        listed = list(rows)
        self.spellings = known({p: {"altname": alt, "wsname": ws} for p, alt, ws in listed})
        self.canonical = frozenset(p for p, _, _ in listed)

    def __len__(self) -> int:
        return len(self.canonical)

    def resolve(self, name: str) -> str | None:
        """The canonical name of ``name`` (canonical, altname in any case, or wsname), or None
        when it is not a known pair's."""
        if name in self.canonical:
            return name
        return self.spellings.get(name) or self.spellings.get(name.upper())


def _plain(name: str) -> str:
    """``BTC/USD``, ``btc-usd``, ``XBT_USD`` -> ``XBTUSD``: no separators, Kraken's asset codes."""
    upper = name.upper()
    for separator in "/-_ :":
        if separator in upper:
            parts = [_ALIASES.get(p, p) for p in upper.split(separator) if p]
            return "".join(parts)
    for alias, kraken in _ALIASES.items():
        if upper.startswith(alias):
            return kraken + upper[len(alias) :]
        if upper.endswith(alias):
            return upper[: -len(alias)] + kraken
    return upper


def suggest(name: str, answer: Mapping[str, Any]) -> str | None:
    """The altname of the pair ``name`` most likely means, or None."""
    altnames = {
        str(info.get("altname")): canonical
        for canonical, info in answer.items()
        if isinstance(info, Mapping) and info.get("altname")
    }
    plain = _plain(name)
    for alt, canonical in altnames.items():
        wsname = answer[canonical].get("wsname") or ""
        if plain in (alt.upper(), _plain(str(wsname)), canonical):
            return alt
    close = difflib.get_close_matches(plain, list(altnames), n=1, cutoff=0.75)
    return close[0] if close else None


def check(names: Iterable[str], answer: Mapping[str, Any]) -> dict[str, str | None]:
    """The ``names`` Kraken would not know, each with a suggestion (or None)."""
    spellings = known(answer)
    return {
        name: suggest(name, answer)
        for name in names
        if name not in spellings and name.upper() not in spellings
    }


def same(asked: str, canonical: str) -> bool:
    """Whether the canonical name ``canonical`` (``XXBTZUSD``, ``SOLUSD``, ``XETHXXBT``) is the
    pair ``asked`` (``XBTUSD``, ``xbtusd``, ``XBT/USD``, ``XXBTZUSD``) without asking Kraken: the
    same letters once the X/Z that prefix Kraken's old four-letter asset codes are dropped."""
    return _plain(asked) in _spellings(canonical)


def named(asked: Iterable[str], canonical: Iterable[str]) -> set[str]:
    """The names of ``canonical`` that are one of the pairs ``asked`` (as :func:`same` says):
    each side's spellings made once, so a thousand asked of a thousand collected is a set
    lookup each, not a million comparisons."""
    wanted = {_plain(a) for a in asked}
    return {c for c in canonical if not wanted.isdisjoint(_spellings(c))}


def _spellings(canonical: str) -> set[str]:
    """What :func:`_plain` of a name of the pair ``canonical`` may be: itself, or its base and
    quote (split anywhere) without the X/Z of the old four-letter codes."""
    upper = canonical.upper()
    out = {upper}
    for cut in range(3, len(upper) - 2):
        out.add(_short(upper[:cut]) + _short(upper[cut:]))
    return out


def _short(code: str) -> str:
    """``XXBT`` -> ``XBT``, ``ZUSD`` -> ``USD``; other codes as they are."""
    return code[1:] if len(code) == 4 and code[0] in "XZ" else code
