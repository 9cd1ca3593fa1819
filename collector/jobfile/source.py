"""The job file's text: read bounded, parsed as YAML that keeps lines, ``${VAR}`` expanded.

A :class:`Map` remembers the line of itself and of each key, so every later mistake names its
line. Duplicate keys are refused (plain YAML loaders silently keep the last one). ``${VAR}`` and
``${VAR:-default}`` are expanded from the environment in every string (an unset variable without
a default is an error naming it; ``${VAR:-}`` allows it to be empty). A leaf of the package: it
knows nothing of what the keys mean.
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
from typing import Any

import yaml

from ..errors import ConfigError

# -- YAML with lines and without silent duplicates ----------------------------------------------


class Map(dict):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    lines: dict[str, int]


# libyaml's parser when PyYAML has it (ten times faster: 10,000 jobs load in well under a second),
# with the safe constructor either way: no !!python tags.
class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_mapping(loader: Loader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    out = Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigError(f"keys must be text, not {show(key)}", line=line)
        if key in out:
            raise ConfigError(
                f"duplicate key (first at line {out.lines[key]}); YAML would silently keep the last",
                line=line,
                key=key,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_timestamp(loader: Loader, node: yaml.ScalarNode) -> Any:
    """A YAML date or time; one that looks like a date but isn't (``2024-13-01``) stays text, so
    the key that holds it says what is wrong with it (PyYAML would raise a ValueError)."""
    try:
        return loader.construct_yaml_timestamp(node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def parse(text: str, name: str) -> Map:
    """``text`` as a :class:`Map` of the job file ``name``.

    :raises ConfigError: not valid YAML, a duplicate key, or not a mapping
    """
    try:
        raw = yaml.load(text, Loader=Loader)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=name, line=exc.line, key=exc.key) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"not valid YAML: {exc.problem}", file=name, line=mark.line + 1 if mark else None
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"not valid YAML: {type(exc).__name__}", file=name) from None
    if not isinstance(raw, Map):
        raise ConfigError("the job file must be a mapping with a 'jobs' key", file=name, line=1)
    return raw


def reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def read_small(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    A FIFO, a device (``/dev/zero``) or a huge file is refused before anything is read: opened
    without blocking, checked with ``fstat``, then read up to the limit.

    :raises OSError: with a ``strerror`` that says why
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > limit:
            raise OSError(0, f"larger than {limit:,} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(0, f"larger than {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxtuple = 2, 3, 3, 3
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 40, 40, 40


def show(value: Any) -> str:
    """``value`` for a message, cut short: a bounded walk, so a YAML alias bomb costs nothing and
    a huge value never fills a line."""
    text = _SHOW.repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Expansion:
    """``${VAR}`` in every string of a parsed file; each unset variable is an error in
    :attr:`errors` (all of them, not the first only)."""

    def __init__(self, file: str, env: dict[str, str]) -> None:
        self.file, self.env = file, env
        self.errors: list[ConfigError] = []

    def expand(
        self, value: Any, memo: dict[int, Any] | None = None, path: str = "", line: int = 0
    ) -> Any:
        """``${VAR}`` in every string; ``path`` and ``line`` are the key holding ``value``, for
        the error an unset variable gets. Containers are expanded once each (YAML aliases share
        them), so an alias bomb costs its size on disk, not its size expanded."""
        if isinstance(value, str):
            return VAR.sub(lambda m: self.variable(m, path, line), value)
        if not isinstance(value, list | dict):
            return value
        memo = {} if memo is None else memo
        if id(value) in memo:
            return memo[id(value)]
        out: Any
        if isinstance(value, list):
            out = memo[id(value)] = []
            out.extend(self.expand(v, memo, path, line) for v in value)
        else:
            out = memo[id(value)] = Map()
            lines = getattr(value, "lines", {})
            for k, v in value.items():
                # A key that would break the one-line message (a newline in it) is quoted.
                name = k if isinstance(k, str) and k.isprintable() else repr(k)
                out[k] = self.expand(
                    v, memo, f"{path}.{name}" if path else name, lines.get(k, line)
                )
            out.line, out.lines = getattr(value, "line", 0), lines
        return out

    def variable(self, match: re.Match[str], path: str, line: int) -> str:
        """One ``${VAR}``: its value; else its default (``${VAR:-}`` is an explicit empty one);
        an unset variable without a default is an error, not an empty string that would surface
        later as missing credentials or the default database."""
        name, default = match.group(1), match.group(2)
        value = self.env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            # Noted, and every other variable still looked at; the builder stops after expanding,
            # before an empty value is taken for a missing credential or the default database.
            self.errors.append(
                ConfigError(
                    f"{match.group(0)} is not set",
                    file=self.file,
                    line=line or None,
                    key=path or None,
                )
            )
        return value or ""
