"""The ``streams:`` section: each WebSocket v2 feed's channel, its pairs (or ``all``), and the
options that apply to its channel (``depth`` and ``snapshot_every`` for a book, ``interval`` for
candles), checked as jobs are: one line per mistake, a did-you-mean for a key or channel."""

from __future__ import annotations

import difflib
from functools import partial
from typing import Any

from .. import defaults
from ..pairs import split
from .model import CHANNEL_KEYS, CHANNELS, Stream
from .report import Base
from .source import Map, show


class StreamChecks(Base):
    """The ``streams:`` section and ``kraken.ws_url`` (a part of the builder)."""

    def ws_url(self, k: Map) -> str:
        url = k["ws_url"]
        # Asked only of a file that sets ``kraken.ws_url``: the streams' connection module
        # (asyncio, the WebSocket client) stays out of every other command's start.
        from ..streams.connection import check_url

        try:
            return check_url(url) if isinstance(url, str) else check_url(show(url))
        except ValueError:
            raise self.error(
                f"must be a wss:// URL (ws:// only for this machine, e.g. the fake exchange), "
                f"not {show(url)}",
                k,
                "ws_url",
                "kraken.ws_url",
            ) from None

    def streams(self, raw: Map) -> tuple[Stream, ...]:
        """Every stream; one with a mistake is left out (and the mistake noted)."""
        if "streams" not in raw:
            return ()
        spec = raw["streams"]
        if not isinstance(spec, Map) or not spec:
            raise self.error(
                "'streams' must be a mapping from stream name to stream, e.g. "
                "tape: {channel: trade, pairs: all}",
                raw,
                "streams",
                "streams",
            )
        if len(spec) > defaults.STREAMS_MAX:
            raise self.error(
                f"{len(spec):,} streams; at most {defaults.STREAMS_MAX:,} in one file",
                raw,
                "streams",
                "streams",
            )
        built = (self.attempt(partial(self.stream, name, spec), None) for name in spec)
        return tuple(stream for stream in built if stream is not None)

    def stream(self, name: str, streams: Map) -> Stream | None:
        path = f"streams.{name}" if name.isprintable() else f"streams.{name!r}"
        spec = streams[name]
        self.check_name("stream", name, streams, path)
        if not isinstance(spec, Map):
            raise self.error(
                "a stream must be a mapping with channel and pairs, e.g. "
                "{channel: trade, pairs: [XBTUSD]}",
                streams,
                name,
                path,
            )
        self.check_keys(spec, "streams.NAME", path + ".")
        channel = spec.get("channel")
        if channel is None and (spec.line, "channel") in self.misspelt:
            channel = None  # the unknown key's did-you-mean says it
        elif channel is None:
            self.errors.append(
                self.error(
                    f"needs a channel: one of {', '.join(CHANNELS)}", spec, None, path + ".channel"
                )
            )
        elif channel not in CHANNELS:
            close = difflib.get_close_matches(str(channel).lower(), CHANNELS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.errors.append(
                self.error(
                    f"no channel {show(channel)}{hint} (one of {', '.join(CHANNELS)})",
                    spec,
                    "channel",
                    path + ".channel",
                )
            )
            channel = None
        pairs = self.attempt(partial(self.stream_pairs, spec, path), None)
        options: dict[str, Any] = {}
        for key, only in CHANNEL_KEYS.items():
            if key not in spec:
                continue
            if channel is not None and channel != only:
                self.errors.append(
                    self.error(
                        f"applies to {only} streams only, not to a {channel} stream",
                        spec,
                        key,
                        f"{path}.{key}",
                    )
                )
                continue
            options[key] = self.attempt(
                partial(self.declared, spec, key, f"{path}.{key}", f"streams.NAME.{key}"), None
            )
        stale_after = defaults.WS_STALE_AFTER
        if "stale_after" in spec:
            stale_after = self.attempt(
                partial(
                    self.declared,
                    spec,
                    "stale_after",
                    f"{path}.stale_after",
                    "streams.NAME.stale_after",
                ),
                None,
            )
        if channel is None or pairs is None or stale_after is None or None in options.values():
            return None  # each mistake is noted; nothing half-built leaves the builder
        if channel == "book":
            options.setdefault("depth", defaults.WS_DEPTH)
            options.setdefault("snapshot_every", defaults.WS_SNAPSHOT_EVERY)
            options["snapshot_every"] = float(options["snapshot_every"])
        if channel == "ohlc":
            options.setdefault("interval", 1)
        return Stream(
            name,
            channel,
            pairs=() if pairs == "all" else tuple(pairs),
            all_pairs=pairs == "all",
            stale_after=float(stale_after),
            line=streams.lines.get(name, streams.line),
            **options,
        )

    def stream_pairs(self, spec: Map, path: str) -> list[str] | str:
        """``all``, or a list of pair names (each once, in the file's order)."""
        usage = "a list of pairs, e.g. [XBTUSD, ETH/USD], or all"
        if "pairs" not in spec:
            if (spec.line, "pairs") in self.misspelt:
                return []  # the did-you-mean says it
            raise self.error(f"needs pairs: {usage}", spec, None, path + ".pairs")
        value = spec["pairs"]
        if value == "all":
            return "all"
        items = value if isinstance(value, list) else [value]
        # A comma list as a job's pair parameter takes, in the text or in a list's item.
        names = split(items) if all(isinstance(p, str) for p in items) else []
        if not names or not all(p.isprintable() for p in names):
            raise self.error(f"must be {usage}, not {show(value)}", spec, "pairs", path + ".pairs")
        if "all" in names:
            raise self.error(
                "all stands alone (pairs: all), not in a list of pairs",
                spec,
                "pairs",
                path + ".pairs",
            )
        return list(dict.fromkeys(names))
