"""Mistakes as ``file:line: key: problem`` lines, every one of them: :class:`Base` notes each
mistake (:meth:`Base.attempt`, :func:`section`) so the rest of the file is still checked, and
raises them together in the file's order; an unknown key gets a did-you-mean."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from .. import defaults
from ..errors import ConfigError, ConfigErrors
from .model import DECLARED, format_duration, keys_of, parse_duration
from .source import Map, show

#: What a job or stream may be called.
NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{defaults.NAME_MAX}}}")

#: An option whose value had a mistake (None is a value: ``since: all``).
MISSING = object()
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _range(low: float, high: float) -> str:
    return (
        f"between {format_duration(timedelta(seconds=low))} and "
        f"{format_duration(timedelta(seconds=high))}"
    )


def section(fallback: Any) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """A builder's step whose mistake does not stop the others: it is noted and
    ``fallback`` stands in, so the rest of the file is still checked and every mistake is
    reported at once (a stand-in never leaves the builder: :meth:`Builder.config` raises)."""

    def wrap(build: Callable[_P, _T]) -> Callable[_P, _T]:
        @wraps(build)
        def step(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            builder = args[0]
            assert isinstance(builder, Base)
            return builder.attempt(lambda: build(*args, **kwargs), fallback)

        return step

    return wrap


class Base:
    """A builder's state and the ways it reports a mistake."""

    def __init__(self, file: str, env: dict[str, str], *, keys: bool = True) -> None:
        self.file, self.env, self.keys = file, env, keys
        self.warnings: list[str] = []
        # Every mistake found, as a linter lists them; raised together at the end of config().
        self.errors: list[ConfigError] = []
        # Whether accounts: as a whole is wrong (not a mapping): the private jobs then are not
        # also told that they have no account. (A broken account or credentials get a stand-in.)
        self.accounts_broken = False
        # (a mapping's line, the key an unknown key there was taken for): that key is not also
        # reported missing, the did-you-mean says it.
        self.misspelt: set[tuple[int, str]] = set()
        self.original = Map()  # the file as written, before ${VAR} expansion
        self.kraken_line = 1

    def error(self, message: str, where: Map, key: str | None, path: str) -> ConfigError:
        line = where.lines.get(key, where.line) if key is not None else where.line
        if not path.isprintable():  # a key with a newline must not forge a second line
            path = show(path)
        return ConfigError(message, file=self.file, line=line, key=path or None)

    def attempt(self, build: Callable[[], _T], fallback: Any) -> _T:
        """``build()``; its :class:`ConfigError` is noted and ``fallback`` returned instead."""
        try:
            return build()
        except ConfigErrors as exc:
            self.errors.extend(exc.errors)
        except ConfigError as exc:
            self.errors.append(exc)
        return fallback

    def raise_errors(self) -> None:
        """One :class:`ConfigError`, or :class:`ConfigErrors` in line order, if any were noted."""
        unique = list({str(e): e for e in self.errors}.values())  # each line once
        unique.sort(key=lambda e: e.line or 0)
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise ConfigErrors(unique)

    def check_name(self, kind: str, name: str, where: Map, path: str) -> None:
        """A job's or a stream's name: a log field, a metric label and a status column, so no
        newline that forges a log line, no terminal escape, no space that breaks a table."""
        if not NAME.fullmatch(name):
            raise self.error(
                f"a {kind} name is 1 to {defaults.NAME_MAX} letters, digits, _ . or -, "
                f"not {show(name)}",
                where,
                name,
                path,
            )

    def check_keys(self, where: Map, section: str, prefix: str) -> None:
        """Every key of ``where`` that ``section`` (a declared path: ``jobs.NAME``) does not
        declare is a mistake of its own, with a did-you-mean; the known ones are still checked."""
        allowed = keys_of(section)
        for key in where:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; expected one of {', '.join(allowed)}"
                )
                if close:
                    self.misspelt.add((where.line, close[0]))
                self.errors.append(self.error(f"unknown key{hint}", where, key, prefix + key))

    def mapping(self, parent: Map, key: str, path: str) -> Map:
        value = parent.get(key)
        if value is None:
            out = Map()
            out.line, out.lines = parent.lines.get(key, parent.line), {}
            return out
        if not isinstance(value, Map):
            raise self.error("must be a mapping", parent, key, path)
        return value

    def duration(
        self,
        where: Map,
        key: str,
        path: str,
        low: float = 0.0,
        high: float = defaults.WAIT_MAX,
    ) -> float:
        """A duration in seconds, within ``[low, high]`` (every duration is bounded: an endless
        one would overflow the dates computed from it)."""
        value = where[key]
        seconds = parse_duration(value)
        if seconds is None:
            raise self.error(
                f"bad duration {show(value)}: use 30s, 5m, 1h, 1d or combinations such as 1h30m",
                where,
                key,
                path,
            )
        if not low <= seconds <= high:
            raise self.error(
                f"{show(value)} is out of range: must be {_range(max(low, 0.001), high)}",
                where,
                key,
                path,
            )
        return seconds

    def declared(
        self, where: Map, key: str, path: str, declared: str, high: float | None = None
    ) -> Any:
        """``where[key]`` checked as the key ``declared`` (:data:`~.model.KEYS`) says: its
        kind and its bounds (``high`` narrows the declared one, as ``jitter`` by the interval),
        in the declaration's words when it has its own."""
        decl = DECLARED[declared]
        value = where[key]
        low = decl.low if decl.low is not None else 0.0
        top = high if high is not None else decl.high
        if decl.kind == "duration":
            return self.duration(where, key, path, low, defaults.WAIT_MAX if top is None else top)
        if decl.kind == "choice":
            if not isinstance(value, str) or value not in decl.choices:
                problem = decl.problem or f"must be one of {', '.join(decl.choices)}"
                raise self.error(problem, where, key, path)
            return value
        if decl.kind == "boolean":
            if not isinstance(value, bool):
                raise self.error(decl.problem or "must be true or false", where, key, path)
            return value
        if decl.kind == "integer_choice":
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or str(value) not in decl.choices
            ):
                raise self.error(f"{decl.problem}, not {show(value)}", where, key, path)
            return value
        kinds = {"integer": int, "number": int | float}
        if decl.kind in kinds:
            if (
                isinstance(value, bool)
                or not isinstance(value, kinds[decl.kind])
                or not (low <= value and (top is None or value <= top))
            ):
                raise self.error(decl.problem, where, key, path)
            return value
        raise AssertionError(f"{declared} is a {decl.kind}, checked where it is read")
