"""A stream's operations side (issue 28): its metrics and ``/healthz`` from the events its recorder
publishes (real :class:`Events`, a real listener on a real socket, the clock injected), its line in
``collector status`` and on the dashboard from the rows its recorder writes (through the real
Store, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from collector import defaults
from collector.cli import main
from collector.datasets import DEFAULT, STREAMS
from collector.events import (
    STREAM_STOPPED,
    Events,
    StreamConnected,
    StreamDisconnected,
    StreamGap,
    StreamProblem,
    StreamStored,
)
from collector.jobfile import Stream
from collector.metrics import Monitor
from collector.records import RunRecord
from collector.store import Store
from collector.streammetrics import LAG_BUCKETS
from collector.streams.rows import batch, connection_row
from collector.writer import State

from .helpers import running
from .test_dashboard import Page, browse

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BOOKS = Stream("books", "book", ("XBTUSD", "ETH/USD"), depth=10, snapshot_every=60.0)
TAPE = Stream("tape", "trade", all_pairs=True, stale_after=30.0)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def monitored():
    """A started :class:`Monitor` of two streams (no jobs), its events and its clock."""
    made: list[Monitor] = []

    def make(streams: tuple[Stream, ...] = (BOOKS, TAPE)) -> tuple[Monitor, Events, Clock]:
        events, clock = Events(), Clock(T0)
        monitor = Monitor(
            "127.0.0.1:0",
            jobs=[],
            events=events,
            writer_state=lambda: State.DIRECT,
            pending=lambda: 0,
            spooled=lambda: 0,
            nonce=None,
            nonce_unit="ms",
            load_cursor=lambda job, dataset: None,
            datasets={},
            clock=clock,
            streams=streams,
        )
        made.append(monitor)
        monitor.start()
        return monitor, events, clock

    yield make
    for monitor in made:
        monitor.stop()


def scrape(monitor: Monitor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    host, port = monitor.address
    status, body = get(f"http://{host}:{port}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith("collector_stream")
    }


def healthz(monitor: Monitor) -> tuple[int, dict[str, Any]]:
    host, port = monitor.address
    status, body = get(f"http://{host}:{port}/healthz")
    return status, json.loads(body)


def stored(stream: str, channel: str, lags: tuple[float, ...], rows: int) -> StreamStored:
    return StreamStored(stream, channel, len(lags), rows, lags, T0)


# -- metrics --------------------------------------------------------------------------------------


def test_each_streams_series_from_its_events(monitored) -> None:
    monitor, events, _ = monitored()
    before = scrape(monitor)
    # Every configured stream has its series from the start, at 0 (a rate() needs a first sample).
    for stream in ("books", "tape"):
        assert before[("collector_stream_messages_total", (("stream", stream),))] == 0
        assert before[("collector_stream_reconnects_total", (("stream", stream),))] == 0
    assert before[("collector_stream_info", (("channel", "book"), ("stream", "books")))] == 1
    assert before[("collector_stream_info", (("channel", "trade"), ("stream", "tape")))] == 1

    events.publish(StreamConnected("books", "c1", "wss://ws.kraken.com/v2"))
    events.publish(StreamConnected("tape", "c2", "wss://ws.kraken.com/v2"))
    events.publish(StreamConnected("tape", "c3", "wss://ws.kraken.com/v2"))  # split: two
    events.publish(stored("books", "book", (0.01, 0.2, 0.2, 3.0), rows=40))
    events.publish(stored("books", "book", (0.07, -0.5), rows=20))  # clock skew: counted as 0
    events.publish(stored("tape", "trade", (0.3,) * 99 + (45.0,), rows=100))
    events.publish(StreamProblem("books", "checksum", "XXBTZUSD", "crc 1 != 2"))
    events.publish(StreamProblem("books", "checksum", "XETHZUSD", "crc 3 != 4"))
    events.publish(StreamProblem("books", "refused", "BTC/XYZ", "Currency pair not supported"))
    events.publish(StreamProblem("books", "something new", None, "?"))
    events.publish(StreamDisconnected("tape", "c2", "stale", 120))  # a reconnect follows
    events.publish(StreamDisconnected("books", "c1", STREAM_STOPPED, 6))  # a clean stop: none
    events.publish(StreamGap("tape", "XXBTZUSD", filled=7, left=False))
    events.publish(StreamGap("tape", "XETHZUSD", filled=2, left=True))
    events.publish(StreamStored("elsewhere", "trade", 5, 5, (0.1,) * 5, T0))  # not configured

    got = scrape(monitor)

    def value(name: str, stream: str, **labels: str) -> float:
        return got[(name, tuple(sorted({"stream": stream, **labels}.items())))]

    assert value("collector_stream_messages_total", "books") == 6
    assert value("collector_stream_messages_total", "tape") == 100
    assert value("collector_stream_rows_total", "books") == 60
    assert value("collector_stream_rows_total", "tape") == 100
    assert value("collector_stream_connections_open", "books") == 0
    assert value("collector_stream_connections_open", "tape") == 1
    assert value("collector_stream_reconnects_total", "books") == 0
    assert value("collector_stream_reconnects_total", "tape") == 1
    assert value("collector_stream_checksum_failures_total", "books") == 2
    assert value("collector_stream_checksum_failures_total", "tape") == 0
    assert value("collector_stream_problems_total", "books", kind="checksum") == 2
    assert value("collector_stream_problems_total", "books", kind="refused") == 1
    assert value("collector_stream_problems_total", "books", kind="other") == 1
    assert value("collector_stream_gaps_total", "tape", outcome="filled") == 1
    assert value("collector_stream_gaps_total", "tape", outcome="left") == 1
    assert value("collector_stream_gap_rows_filled_total", "tape") == 9
    assert value("collector_stream_last_data_timestamp_seconds", "tape") == T0.timestamp()
    # The lag: a histogram per stream, every message's lag in its bucket.
    le = {bound: f"{bound}" for bound in LAG_BUCKETS}
    assert value("collector_stream_lag_seconds_count", "books") == 6
    assert value("collector_stream_lag_seconds_sum", "books") == pytest.approx(3.48)
    assert value("collector_stream_lag_seconds_bucket", "books", le=le[0.05]) == 2  # 0.01 and 0
    assert value("collector_stream_lag_seconds_bucket", "books", le=le[0.1]) == 3
    assert value("collector_stream_lag_seconds_bucket", "books", le=le[0.25]) == 5
    assert value("collector_stream_lag_seconds_bucket", "books", le=le[2.5]) == 5
    assert value("collector_stream_lag_seconds_bucket", "books", le=le[5.0]) == 6
    assert value("collector_stream_lag_seconds_bucket", "books", le="+Inf") == 6
    # Tape's p99 is readable: 99 of its 100 lags at most half a second, the last one not.
    assert value("collector_stream_lag_seconds_bucket", "tape", le=le[0.5]) == 99
    assert value("collector_stream_lag_seconds_bucket", "tape", le=le[30.0]) == 99
    assert value("collector_stream_lag_seconds_bucket", "tape", le=le[120.0]) == 100
    # No pair is a label, and a stream nobody configured has no series.
    assert not [key for key in got if any(k == "pair" for k, _ in key[1])]
    assert not [key for key in got if ("stream", "elsewhere") in key[1]]

    # A reload removes tape: its series go (they would look stuck), books' stay.
    monitor.configure_streams([BOOKS])
    after = scrape(monitor)
    assert not [key for key in after if ("stream", "tape") in key[1]]
    assert after[("collector_stream_messages_total", (("stream", "books"),))] == 6


# -- /healthz -------------------------------------------------------------------------------------


def test_healthz_judges_each_stream_by_its_data(monitored) -> None:
    monitor, events, clock = monitored()
    grace = defaults.WS_STARTING_GRACE
    assert grace > TAPE.stale_after > BOOKS.stale_after
    # Just started: no data yet, "starting", healthy.
    status, body = healthz(monitor)
    assert status == 200, body
    assert {n: s["state"] for n, s in body["streams"].items()} == {
        "books": "starting",
        "tape": "starting",
    }
    assert body["streams"]["books"]["pairs"] == "2" and body["streams"]["tape"]["pairs"] == "all"
    assert body["streams"]["tape"]["stale_after_seconds"] == 30.0

    # Books' first data; tape is still starting, within its grace.
    clock.advance(grace - 5)
    events.publish(StreamConnected("books", "c1", "wss://ws.kraken.com/v2"))
    events.publish(stored("books", "book", (0.1, 0.2), rows=40))
    status, body = healthz(monitor)
    assert status == 200, body
    books = body["streams"]["books"]
    assert (books["state"], books["messages"], books["connections_open"]) == ("ok", 2, 1)
    assert books["last_data"] == clock.at.isoformat(timespec="seconds")
    assert body["streams"]["tape"]["state"] == "starting"

    # Past the grace with no data: tape is stale, and the body says which stream and why.
    clock.advance(6)
    status, body = healthz(monitor)
    assert status == 503
    assert body["streams"]["tape"]["state"] == "stale"
    assert body["problems"] == [
        f"stream tape: no data since it started {grace + 1:.0f}s ago "
        f"(stale after {grace:.0f}s without a first)"
    ]
    # A batch of the connection's row alone (no message) is not data.
    events.publish(StreamStored("tape", "trade", 0, 1, (), T0))
    assert healthz(monitor)[0] == 503

    # Data on both; books' no older than its stale_after (10 s) is ok, one second more is stale.
    events.publish(stored("tape", "trade", (0.1,), rows=1))
    events.publish(stored("books", "book", (0.1,), rows=20))
    clock.advance(BOOKS.stale_after)
    assert healthz(monitor)[0] == 200
    clock.advance(1)
    status, body = healthz(monitor)
    assert status == 503
    assert body["problems"] == ["stream books: no data for 11s (stale after 10s)"]
    assert body["streams"]["books"]["state"] == "stale"
    assert body["streams"]["tape"]["state"] == "ok"

    # A reconnect does not make it "starting" again: still stale until data comes.
    events.publish(StreamDisconnected("books", "c1", "stale", 10))
    events.publish(StreamConnected("books", "c2", "wss://ws.kraken.com/v2"))
    assert healthz(monitor)[1]["streams"]["books"]["state"] == "stale"
    # A reload that changed books (resubscribed) gives it its grace again; one removing tape
    # forgets it.
    monitor.configure_streams([BOOKS], restarted=["books"])
    status, body = healthz(monitor)
    assert status == 200, body
    assert {n: s["state"] for n, s in body["streams"].items()} == {"books": "starting"}
    assert body["streams"]["books"]["connections_open"] == 1  # c2, still open
    assert body["streams"]["books"]["messages"] == 0  # since it was changed


# -- collector status, from the rows a recorder writes ---------------------------------------------

STREAMS_FILE = """\
database: {url}
streams:
  books: {{channel: book, pairs: [XBTUSD, "ETH/USD"], stale_after: 5m}}
  tape: {{channel: trade, pairs: all, stale_after: 30s}}
  quotes: {{channel: ticker, pairs: [XBTUSD]}}
  candles: {{channel: ohlc, pairs: [XBTUSD], interval: 1}}
"""


class Recorder:
    """Writes what a stream's recorder writes, through the real Store: batch runs naming their
    connection, with the connection's row (:mod:`collector.streams.rows`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def batch(
        self,
        stream: str,
        channel: str,
        at: datetime,
        messages: int,
        link: dict[str, Any],
        **rows: list[dict[str, Any]],
    ) -> None:
        record = batch(
            stream,
            channel,
            link["uid"],
            {"stream_connections": [link], **rows},
            started_at=at - timedelta(seconds=1),
            finished_at=at,
            messages=messages,
        )
        self.store.write([record])


def status(path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main, ["status", *args, str(path)], env={"COLLECTOR_DATABASE_URL": ""}
    )


def test_status_has_a_line_per_stream_from_its_batches_and_connections(
    tmp_path, database_url
) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(STREAMS_FILE.format(url=database_url))
    store = Store.from_url(database_url, datasets=(*DEFAULT, *STREAMS))
    store.upgrade()
    now = datetime.now(UTC).replace(microsecond=0)
    url = "wss://ws.kraken.com/v2"
    hour, minute = timedelta(hours=1), timedelta(minutes=1)
    try:
        rec = Recorder(store)
        # books: a clean stop yesterday morning (not a reconnect), a connection lost half an hour
        # ago (a reconnect; its reason is Kraken's text, with a control character), and the one
        # open since, its newest batch two seconds old, and one after it holding no message.
        c0 = connection_row("c0" * 16, "books", "book", url, now - 30 * hour)
        rec.batch("books", "book", now - 29 * hour, 40, c0)
        c0 |= {"closed_at": now - 28 * hour, "reason": STREAM_STOPPED, "messages": 40}
        rec.batch("books", "book", now - 28 * hour, 0, c0)
        c1 = connection_row("c1" * 16, "books", "book", url, now - 2 * hour)
        rec.batch("books", "book", now - 90 * minute, 100, c1)
        c1 |= {"closed_at": now - 30 * minute, "reason": "lost \x1b[31m(1006)", "messages": 100}
        rec.batch("books", "book", now - 30 * minute, 0, c1)
        c2 = connection_row("c2" * 16, "books", "book", url, now - 30 * minute, messages=1_234)
        rec.batch("books", "book", now - timedelta(seconds=2), 25, c2)
        rec.batch("books", "book", now - timedelta(seconds=1), 0, c2)
        # ...and a hole REST could not fill, as the gap-filler stores it: a Trades run of the
        # stream's job with a gaps row (the newest run of the job, not a batch of it).
        gap = {
            "job": "stream:books",
            "dataset": "book",
            "pair": "XXBTZUSD",
            "start": now - 31 * minute,
            "end": now - 30 * minute,
            "reason": "checksum 1 != 2: resubscribed",
        }
        old_gap = gap | {"start": now - 50 * hour, "end": now - 49 * hour}
        at = now - timedelta(milliseconds=500)
        filler = RunRecord("stream:books", "Trades", {}, at, at, at, rows={"gaps": [gap, old_gap]})
        store.write([filler])
        # tape: data ten minutes ago, its connection still open: no data for its 30 s.
        t1 = connection_row("t1" * 16, "tape", "trade", url, now - 20 * minute, messages=7)
        rec.batch("tape", "trade", now - 10 * minute, 7, t1)
        # candles: data yesterday, then the collector restarted 5 s ago: starting, no data yet.
        k1 = connection_row("k1" * 16, "candles", "ohlc", url, now - 5 * hour, messages=3)
        rec.batch("candles", "ohlc", now - 4 * hour, 3, k1)
        k1 |= {"closed_at": now - 4 * hour, "reason": STREAM_STOPPED}
        rec.batch("candles", "ohlc", now - 4 * hour, 0, k1)
        k2 = connection_row("k2" * 16, "candles", "ohlc", url, now - timedelta(seconds=5))
        rec.batch("candles", "ohlc", now - timedelta(seconds=4), 0, k2)
        # quotes: nothing yet (the job file just written): starting.
    finally:
        store.dispose()

    result = status(path, "--json")
    assert result.exit_code == 1, result.output  # tape is stale
    report = json.loads(result.output)
    lines = {s["name"]: s for s in report["streams"]}
    assert list(lines) == ["books", "tape", "quotes", "candles"]
    assert {n: s["state"] for n, s in lines.items()} == {
        "books": "ok",
        "tape": "stale",
        "quotes": "starting",
        "candles": "starting",
    }
    books = lines["books"]
    assert (books["channel"], books["pairs"]) == ("book", "2")
    assert books["last_batch"] == (now - timedelta(seconds=1)).isoformat()
    assert books["last_data"] == (now - timedelta(seconds=2)).isoformat()
    assert books["messages"] == 100 + 1_234  # c1's and c2's; c0 closed more than a day ago
    assert books["reconnects_24h"] == 1  # c1; c0 stopped cleanly, and more than a day ago
    assert books["gaps_24h"] == 1  # the old gap ended two days ago
    assert books["connection"]["uid"] == "c2" * 16
    assert books["connection"]["closed_at"] is None
    assert books["connection"]["messages"] == 1_234
    assert lines["tape"]["pairs"] == "all"
    assert lines["candles"]["last_data"] == (now - 4 * hour).isoformat()
    assert lines["candles"]["connection"]["uid"] == "k2" * 16
    assert lines["quotes"]["connection"] is None and lines["quotes"]["last_data"] is None
    assert report["healthy"] is False
    (problem,) = report["problems"]
    assert problem.startswith("stream tape: no data for 6")  # ~600 s
    assert problem.endswith("(stale after 30s)")

    # The text: a line per stream under its own header, each value escaped.
    result = status(path)
    assert result.exit_code == 1
    out = result.output.splitlines()
    assert not [line for line in out if line.startswith("job ")]  # no jobs: no table of them
    (header,) = [line for line in out if line.startswith("stream ")]
    assert re.split(r"\s{2,}", header) == [
        "stream",
        "channel",
        "pairs",
        "connection",
        "messages",
        "reconnects 24h",
        "gaps 24h",
        "last batch",
        "last data",
        "state",
    ]
    at = out.index(header)
    books_line, tape_line, quotes_line, candles_line = out[at + 1 : at + 5]
    assert books_line.split()[:3] == ["books", "book", "2"]
    assert "open since" in books_line and "1,234 messages" in books_line
    assert books_line.split()[-1] == "ok"
    assert tape_line.split()[-1] == "stale" and quotes_line.split()[-1] == "starting"
    assert candles_line.startswith("candles")
    (unhealthy,) = [line for line in out if line.startswith("UNHEALTHY: ")]
    assert unhealthy.startswith("UNHEALTHY: stream tape: no data for 6")  # a second later, maybe
    assert "\x1b" not in result.output

    # The connection lost, when it is the last one: its reason, escaped.
    store = Store.from_url(database_url, datasets=(*DEFAULT, *STREAMS))
    try:
        c2 |= {"closed_at": now, "reason": "lost \x1b[31m(1006)"}
        Recorder(store).batch("books", "book", now, 0, c2)
    finally:
        store.dispose()
    result = status(path)
    (books_line,) = [line for line in result.output.splitlines() if line.startswith("books ")]
    assert "closed " in books_line and "lost \\x1b[31m(1006)" in books_line


# -- the dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_has_a_line_per_stream_in_a_real_offline_browser(tmp_path) -> None:
    """``collector dashboard`` of a file of streams alone: Chromium's DOM has each stream's line
    and state; a connection's reason, written by whoever closed it, is text, never markup."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "jobs.yaml"
    path.write_text(STREAMS_FILE.format(url=url))
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    now = datetime.now(UTC).replace(microsecond=0)
    store = Store.from_url(url, datasets=(*DEFAULT, *STREAMS))
    store.upgrade()
    try:
        rec = Recorder(store)
        ws = "wss://ws.kraken.com/v2"
        b1 = connection_row("b1" * 16, "books", "book", ws, now - timedelta(minutes=3))
        rec.batch("books", "book", now - timedelta(seconds=1), 12, b1)
        t1 = connection_row("t1" * 16, "tape", "trade", ws, now - timedelta(hours=2))
        rec.batch("tape", "trade", now - timedelta(hours=1), 3, t1)
        t1 |= {"closed_at": now - timedelta(hours=1), "reason": hostile}
        rec.batch("tape", "trade", now - timedelta(hours=1), 0, t1)
    finally:
        store.dispose()
    command = [sys.executable, "-m", "collector.cli", "dashboard", "--listen", "127.0.0.1:0"]
    with running([*command, str(path)]) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " on http://127.0.0.1:" in first, first + proc.stdout.read()
        address = first.split(" on ")[1].split()[0]
        dom = browse(address, tmp_path / "profile", "--dump-dom").stdout
    page = Page(dom)
    streams = {a["data-stream"]: a["data-state"] for a in page.having("data-stream")}
    assert streams == {"books": "ok", "tape": "stale", "quotes": "starting", "candles": "starting"}
    text = "".join(page.text)
    assert f"closed {(now - timedelta(hours=1)):%Y-%m-%d %H:%M:%S}: {hostile}" in text
    assert "img" not in page.tags and "script" not in page.tags
    assert "stream tape: no data for" in text  # the header's problem


def test_status_of_streams_before_there_is_a_database(tmp_path) -> None:
    """No database yet: every stream is starting, measured from the job file's last change, and
    stale once its grace has passed since then; nothing is created by reading."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    path = tmp_path / "jobs.yaml"
    path.write_text(STREAMS_FILE.format(url=url))
    result = status(path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {s["name"]: s["state"] for s in report["streams"]} == dict.fromkeys(
        ("books", "tape", "quotes", "candles"), "starting"
    )
    assert not (tmp_path / "none.db").exists()
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(path, (long_ago, long_ago))
    result = status(path, "--json")
    assert result.exit_code == 1, result.output
    problems = json.loads(result.output)["problems"]
    assert len(problems) == 4 and problems[0].startswith("stream books: no data since it started 3")
