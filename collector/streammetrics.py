"""Each stream's Prometheus series, kept from the events its recorder publishes.

A collector of :class:`collector.metrics.Metrics`' registry (``registry.register``), fed by the
stream events of :mod:`collector.events` (``StreamConnected``, ``StreamDisconnected``,
``StreamProblem``, ``StreamStored``, ``StreamGap``), nothing reached into. Labels are bounded:
the stream's name (at most ``STREAMS_MAX`` in a job file), its channel (four), a problem's kind
(:data:`PROBLEM_KINDS`, anything else counted as ``other``) and a gap's outcome (two); never a
pair (``pairs: all`` is ~750 of them, and more as Kraken lists them).

The lag is a histogram of every message's seconds from its own time to the store (``lags`` of
``StreamStored``), so ``histogram_quantile(0.99, rate(collector_stream_lag_seconds_bucket[5m]))``
reads its p99. A batch's lags are counted into its buckets before the lock is taken, once per
batch: the subscriber runs in the recorder's thread, and a busy book stream stores hundreds of
messages a second.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .events import (
    STREAM_STOPPED,
    Events,
    StreamConnected,
    StreamDisconnected,
    StreamGap,
    StreamProblem,
    StreamStored,
)
from .jobfile import Stream
from .streams.connection import FAILURE_KINDS

#: Lag buckets (seconds): Kraken's messages arrive within milliseconds and a batch is stored within
#: a second or two; past a minute the stream is falling behind. Few, because each is a series per
#: stream.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: The problems counted by kind (``StreamProblem.kind``): the connection's failure kinds and a
#: book's checksum; any other kind is counted as ``other``, so the label stays bounded.
PROBLEM_KINDS = FAILURE_KINDS | {"checksum"}
#: A disconnect with this reason is a clean stop, not a reconnect.
STOPPING = STREAM_STOPPED


@dataclass
class _Series:
    """One stream's numbers."""

    channel: str = ""
    messages: int = 0
    rows: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum: float = 0.0
    lag_count: int = 0
    reconnects: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=lambda: {"filled": 0, "left": 0})
    filled_rows: int = 0
    open: set[str] = field(default_factory=set)
    last_data: float | None = None

    def copy(self) -> _Series:
        """A copy to render from outside the lock."""
        return dataclasses.replace(
            self,
            buckets=list(self.buckets),
            problems=dict(self.problems),
            gaps=dict(self.gaps),
            open=set(self.open),
        )


class StreamMetrics:
    """Each stream's series; register it on a registry (``registry.register(it)``).

    Series (label ``stream``): ``collector_stream_messages_total``,
    ``collector_stream_rows_total``, ``collector_stream_lag_seconds`` (histogram),
    ``collector_stream_reconnects_total`` (disconnects but a clean stop),
    ``collector_stream_checksum_failures_total``, ``collector_stream_problems_total{kind}``,
    ``collector_stream_gaps_total{outcome="filled"|"left"}``,
    ``collector_stream_gap_rows_filled_total`` (rows REST brought),
    ``collector_stream_connections_open``, ``collector_stream_last_data_timestamp_seconds``, and
    ``collector_stream_info{stream,channel}`` (always 1) for the streams configured.
    """

    def __init__(self, events: Events, streams: Iterable[Stream] = ()) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Series] = {}
        self._configured: dict[str, str] = {}
        self.configure(streams)
        events.subscribe(StreamStored, self._stored)
        events.subscribe(StreamConnected, self._connected)
        events.subscribe(StreamDisconnected, self._disconnected)
        events.subscribe(StreamProblem, self._problem)
        events.subscribe(StreamGap, self._gap)

    def configure(self, streams: Iterable[Stream]) -> None:
        """The streams configured now (again after a reload): each gets its series at 0, so a
        ``rate()`` has a first sample; a removed stream's series go, or they would look stuck."""
        configured = {stream.name: stream.channel for stream in streams}
        with self._lock:
            self._configured = configured
            for name in list(self._streams):
                if name not in configured:
                    del self._streams[name]
            for name, channel in configured.items():
                self._series(name).channel = channel

    def _series(self, stream: str) -> _Series:
        """``stream``'s series, made when first needed (the lock held)."""
        series = self._streams.get(stream)
        if series is None:
            series = self._streams[stream] = _Series(self._configured.get(stream, ""))
        return series

    def _known(self, stream: str) -> bool:
        """Whether ``stream``'s events count: a stream configured (or, before any is, any: a
        recorder tested alone)."""
        return not self._configured or stream in self._configured

    # -- events ---------------------------------------------------------------------------------

    def _stored(self, event: StreamStored) -> None:
        counts = [0] * (len(LAG_BUCKETS) + 1)
        total = 0.0
        for lag in event.lags:
            if not math.isfinite(lag):
                continue
            lag = max(0.0, lag)  # a message time ahead of our clock: skew, not negative lag
            counts[bisect_left(LAG_BUCKETS, lag)] += 1
            total += lag
        with self._lock:
            if not self._known(event.stream):
                return
            series = self._series(event.stream)
            series.channel = series.channel or event.channel
            series.messages += event.messages
            series.rows += event.rows
            for i, n in enumerate(counts):
                series.buckets[i] += n
            series.lag_sum += total
            series.lag_count += sum(counts)
            if event.messages > 0:
                series.last_data = event.newest.timestamp()

    def _connected(self, event: StreamConnected) -> None:
        with self._lock:
            if self._known(event.stream):
                self._series(event.stream).open.add(event.connection)

    def _disconnected(self, event: StreamDisconnected) -> None:
        with self._lock:
            if not self._known(event.stream):
                return
            series = self._series(event.stream)
            series.open.discard(event.connection)
            if event.reason != STOPPING:
                series.reconnects += 1

    def _problem(self, event: StreamProblem) -> None:
        kind = event.kind if event.kind in PROBLEM_KINDS else "other"
        with self._lock:
            if self._known(event.stream):
                problems = self._series(event.stream).problems
                problems[kind] = problems.get(kind, 0) + 1

    def _gap(self, event: StreamGap) -> None:
        with self._lock:
            if not self._known(event.stream):
                return
            series = self._series(event.stream)
            series.gaps["left" if event.left else "filled"] += 1
            series.filled_rows += event.filled

    # -- the scrape -----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            streams = sorted((name, s.copy()) for name, s in self._streams.items())
            configured = sorted(self._configured.items())
        if not streams and not configured:  # a job file without streams: no stream families
            return
        counters = {
            "messages": ("Data messages of the stream stored", lambda s: s.messages),
            "rows": ("Rows the stream's messages became", lambda s: s.rows),
            "reconnects": (
                "Connections of the stream lost (any close but a clean stop: a reconnect follows)",
                lambda s: s.reconnects,
            ),
            "checksum_failures": (
                "Book checksums that did not verify (the pair resubscribed, a gaps row)",
                lambda s: s.problems.get("checksum", 0),
            ),
            "gap_rows_filled": (
                "Rows REST brought to fill the stream's gaps",
                lambda s: s.filled_rows,
            ),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(f"collector_stream_{name}", doc, labels=["stream"])
            for stream, series in streams:
                family.add_metric([stream], value(series))
            yield family
        problems = CounterMetricFamily(
            "collector_stream_problems",
            "What went wrong on the stream, by kind (a refused subscription, a checksum, ...)",
            labels=["stream", "kind"],
        )
        gaps = CounterMetricFamily(
            "collector_stream_gaps",
            "Holes in the stream's data: filled from REST, or left (a gaps row says which)",
            labels=["stream", "outcome"],
        )
        lag = HistogramMetricFamily(
            "collector_stream_lag_seconds",
            "Seconds from a message's own time (or its receipt) to its store",
            labels=["stream"],
        )
        open_ = GaugeMetricFamily(
            "collector_stream_connections_open", "The stream's connections open", labels=["stream"]
        )
        last = GaugeMetricFamily(
            "collector_stream_last_data_timestamp_seconds",
            "The newest data time the stream stored (unix seconds)",
            labels=["stream"],
        )
        for stream, series in streams:
            for kind, count in sorted(series.problems.items()):
                problems.add_metric([stream, kind], count)
            for outcome, count in sorted(series.gaps.items()):
                gaps.add_metric([stream, outcome], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*LAG_BUCKETS, math.inf), series.buckets, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            lag.add_metric([stream], buckets, series.lag_sum)
            open_.add_metric([stream], len(series.open))
            if series.last_data is not None:
                last.add_metric([stream], series.last_data)
        yield from (problems, gaps, lag, open_, last)
        info = GaugeMetricFamily(
            "collector_stream_info",
            "A configured stream's channel (always 1)",
            labels=["stream", "channel"],
        )
        for stream, channel in configured:
            info.add_metric([stream, channel], 1)
        yield info
