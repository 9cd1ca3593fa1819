"""The job file's JSON Schema (draft 2020-12), from the declared keys (:data:`.model.KEYS`):
``collector schema`` prints it, so an editor completes and checks a job file
(``# yaml-language-server: $schema=jobs.schema.json``).

The schema says what a file may hold (every key, its kind, its bounds, what it means) and refuses
an unknown key; what only the collector can judge (a cron that fires, a parameter of a method, a
key file's content, a duration's bounds when written as text) stays with ``collector check``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .. import defaults
from ..methods import PRIVATE_READ_METHODS, PUBLIC_METHODS
from .model import CHANNEL_KEYS, KEYS, Key, format_duration

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: A duration as text (``30s``, ``1h30m``), or a ``${VAR}`` the collector expands.
DURATION_TEXT = r"^(\d+d)?(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$|\$\{"
#: A job's or an account's name (a log field, a metric label, a status column).
NAME = rf"^[A-Za-z0-9_.-]{{1,{defaults.NAME_MAX}}}$"
_SCALAR = {"type": ["string", "number", "boolean", "null"]}


def _bounds(key: Key) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if key.low:
        out["minimum"] = key.low
    if key.high is not None:
        out["maximum"] = key.high
    return out


def _duration(key: Key) -> dict[str, Any]:
    low, high = key.low or 0.001, key.high or defaults.WAIT_MAX
    seconds = {"type": "number", "exclusiveMinimum": 0, **_bounds(key)}
    return {
        "anyOf": [seconds, {"type": "string", "pattern": DURATION_TEXT}],
        "description": (
            f"{key.description}; 30s, 5m, 1h, 1d, 1h30m or seconds, between "
            f"{format_duration(timedelta(seconds=low))} and "
            f"{format_duration(timedelta(seconds=high))}"
        ),
    }


def _rate_limit(key: Key) -> dict[str, Any]:
    number = {"type": "number", "exclusiveMinimum": 0, "maximum": key.high}
    return {
        "type": "object",
        "properties": {"max": number, "decay": number},
        "required": ["max", "decay"],
        "additionalProperties": False,
    }


#: Each kind of key, as JSON Schema (a section's and a names' keys are added by :func:`_node`).
KINDS: dict[str, Any] = {
    "section": lambda key: {"type": "object"},
    "names": lambda key: {"type": "object"},
    "duration": _duration,
    "boolean": lambda key: {"type": "boolean"},
    "integer": lambda key: {"type": "integer", **_bounds(key)},
    "number": lambda key: {"type": "number", **_bounds(key)},
    "choice": lambda key: {"enum": list(key.choices)},
    "tier": lambda key: {"type": "string", "examples": list(key.choices)},
    "text": lambda key: {"type": "string"},
    "database": lambda key: {"type": "string", "examples": [defaults.DATABASE]},
    "url": lambda key: {"type": "string", "pattern": r"^https?://|\$\{"},
    "ws_url": lambda key: {"type": "string", "pattern": r"^wss?://|\$\{"},
    "integer_choice": lambda key: {"enum": [int(c) for c in key.choices]},
    "stream_pairs": lambda key: {
        "anyOf": [
            {"enum": ["all"]},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ]
    },
    "rate_limit": _rate_limit,
    "method": lambda key: {"enum": sorted(PUBLIC_METHODS | PRIVATE_READ_METHODS)},
    "params": lambda key: {
        "type": "object",
        "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]},
    },
    "cron": lambda key: {"type": "string", "examples": ["0 * * * *"]},
    "timezone": lambda key: {"type": "string", "examples": ["UTC", "Europe/Berlin"]},
    "since": lambda key: {"type": ["string", "number"], "examples": ["all", "2024-01-31"]},
    "listen": lambda key: {"type": "string", "pattern": r":\d{1,5}$|\$\{"},
    "hosts": lambda key: {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "maxItems": key.high},
        ]
    },
    "quote": lambda key: {"type": "string", "examples": ["USD", "EUR", "XBT"]},
}


def _node(key: Key | None, path: str) -> dict[str, Any]:
    """The schema of the key at ``path`` (``key`` None: the file itself)."""
    out: dict[str, Any] = {"description": key.description} if key else {}
    if key is not None:
        out = {**out, **KINDS[key.kind](key)}
    if key is None or key.kind == "section":
        out["type"] = "object"
        out["properties"] = {k.name: _node(k, k.path) for k in KEYS if k.parent == path}
        out["additionalProperties"] = False
    elif key.kind == "names":
        one = {
            "type": "object",
            "properties": {k.name: _node(k, k.path) for k in KEYS if k.parent == f"{path}.NAME"},
            "additionalProperties": False,
        }
        if path == "jobs":
            one["required"] = ["method"]
            one["oneOf"] = [{"required": ["every"]}, {"required": ["cron"]}]
        if path == "streams":
            one["required"] = ["channel", "pairs"]
            # A key that applies to one channel only is refused on the others' streams.
            one["allOf"] = [
                {
                    "if": {"properties": {"channel": {"not": {"const": only}}}},
                    "then": {"not": {"required": [name]}},
                }
                for name, only in CHANNEL_KEYS.items()
            ]
        named = path in ("jobs", "streams")
        out["propertyNames"] = {"pattern": NAME if named else r"^[A-Za-z0-9_.-]{1,64}$"}
        out["additionalProperties"] = one
        out["minProperties"] = 1
        if key.high is not None:
            out["maxProperties"] = int(key.high)
    return out


def json_schema() -> dict[str, Any]:
    """The job file's JSON Schema: every declared key with its description and bounds, unknown
    keys refused, ``jobs`` required unless there are ``streams``."""
    return {
        "$schema": DRAFT,
        "title": "collector job file",
        **_node(None, ""),
        # jobs, unless the file only records streams
        "anyOf": [{"required": ["jobs"]}, {"required": ["streams"]}],
    }
