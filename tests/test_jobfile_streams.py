"""The job file's ``streams:`` (Kraken's WebSocket v2 feeds): what a valid one becomes
(:class:`Stream`), each mistake as its own ``file:line: key: problem`` line, the JSON Schema, a
file with streams and no jobs, ``check`` (offline and ``--online`` against the fake), and what a
reload's diff says about them."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector import defaults
from collector.cli import main
from collector.jobfile import ConfigError, Stream, json_schema, load
from collector.reload import StreamChanges, diff, restart_needed
from collector.testing.fake_exchange import FakeKraken
from tests.test_jobfile import _problems

EXAMPLE = """
kraken:
  ws_url: wss://ws.kraken.com/v2        # the default
streams:
  books: {channel: book, pairs: [XBTUSD, "ETH/USD"], depth: 10, snapshot_every: 1m}
  tape: {channel: trade, pairs: all}
  quotes: {channel: ticker, pairs: [XBTUSD, ETHUSD]}
  candles: {channel: ohlc, pairs: [XBTUSD], interval: 1}
"""


def write(folder: Path, body: str, name: str = "jobs.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


def errors(path: Path) -> list[str]:
    """Every line ``load`` refuses ``path`` with, the file's name cut off."""
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    return [line.removeprefix(f"{path}:") for line in str(info.value).splitlines()]


def test_the_issues_example_loads_into_streams_without_jobs(tmp_path: Path) -> None:
    config = load(write(tmp_path, "database: sqlite:///c.db\n" + EXAMPLE), environ={})
    assert config.jobs == ()
    assert config.kraken.ws_url == "wss://ws.kraken.com/v2"
    assert [dataclasses.replace(s, line=0) for s in config.streams] == [
        Stream("books", "book", ("XBTUSD", "ETH/USD"), depth=10, snapshot_every=60.0),
        Stream("tape", "trade", (), all_pairs=True),
        Stream("quotes", "ticker", ("XBTUSD", "ETHUSD")),
        Stream("candles", "ohlc", ("XBTUSD",), interval=1),
    ]
    assert [s.line for s in config.streams] == [6, 7, 8, 9]
    assert all(s.stale_after == defaults.WS_STALE_AFTER for s in config.streams)


def test_defaults_and_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kraken: {ws_url: "ws://127.0.0.1:8790/v2"}
        jobs: {t: {method: Time, every: 1m}}
        streams:
          b: {channel: book, pairs: ["XBTUSD, XBTUSD", ETHUSD], stale_after: 1m}
          c: {channel: ohlc, pairs: [XBTUSD], interval: 60}
          d: {channel: book, pairs: all, depth: 1000, snapshot_every: 1h}
        """,
    )
    config = load(path, environ={})
    assert config.kraken.ws_url == "ws://127.0.0.1:8790/v2"  # ws:// to this machine
    b, c, d = config.streams
    assert (b.pairs, b.depth, b.snapshot_every, b.stale_after) == (
        ("XBTUSD", "ETHUSD"),
        defaults.WS_DEPTH,
        defaults.WS_SNAPSHOT_EVERY,
        60.0,
    )
    assert (c.interval, c.depth, c.snapshot_every) == (60, None, None)
    assert (d.all_pairs, d.pairs, d.depth, d.snapshot_every) == (True, (), 1000, 3600.0)
    assert load(write(tmp_path, "jobs: {t: {method: Time, every: 1m}}\n"), environ={}).streams == ()


def test_each_mistake_is_its_own_line_with_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kraken:
          ws_url: ws://example.com/v2
        streams:
          books: {channel: book, pairs: [XBTUSD], depth: 7, snapshot_every: 0.1s}
          tape: {channel: trade, pairs: all, depth: 10}
          quotes: {channel: tickr, pairs: [XBTUSD]}
          candles: {channel: ohlc, pairs: [], interval: 2, stale_afer: 5s}
          "bad name": {channel: trade, pairs: all}
          nopairs: {channel: trade}
          book2: {chanel: book, pairs: all}
          tick: {channel: ticker, pairs: [XBTUSD], snapshot_every: 1m, interval: 5}
          slow: {channel: trade, pairs: all, stale_after: 2d}
          mixed: {channel: trade, pairs: [XBTUSD, all]}
          odd: {channel: trade, pairs: [XBTUSD, 5]}
        """,
    )
    assert errors(path) == [
        "2: kraken.ws_url: must be a wss:// URL (ws:// only for this machine, e.g. the fake "
        "exchange), not 'ws://example.com/v2'",
        "4: streams.books.depth: must be one of 10, 25, 100, 500, 1000, not 7",
        "4: streams.books.snapshot_every: '0.1s' is out of range: must be between 1s and 1d",
        "5: streams.tape.depth: applies to book streams only, not to a trade stream",
        "6: streams.quotes.channel: no channel 'tickr'; did you mean 'ticker'? "
        "(one of book, trade, ticker, ohlc)",
        "7: streams.candles.stale_afer: unknown key; did you mean 'stale_after'?",
        "7: streams.candles.pairs: must be a list of pairs, e.g. [XBTUSD, ETH/USD], or all, not []",
        "7: streams.candles.interval: must be one of 1, 5, 15, 30, 60, 240, 1440, 10080, 21600 "
        "(minutes), not 2",
        "8: streams.bad name: a stream name is 1 to 100 letters, digits, _ . or -, not 'bad name'",
        "9: streams.nopairs.pairs: needs pairs: a list of pairs, e.g. [XBTUSD, ETH/USD], or all",
        "10: streams.book2.chanel: unknown key; did you mean 'channel'?",
        "11: streams.tick.snapshot_every: applies to book streams only, not to a ticker stream",
        "11: streams.tick.interval: applies to ohlc streams only, not to a ticker stream",
        "12: streams.slow.stale_after: '2d' is out of range: must be between 1s and 1d",
        "13: streams.mixed.pairs: all stands alone (pairs: all), not in a list of pairs",
        "14: streams.odd.pairs: must be a list of pairs, e.g. [XBTUSD, ETH/USD], or all, "
        "not ['XBTUSD', 5]",
    ]


def test_jobs_stay_required_without_streams(tmp_path: Path) -> None:
    path = write(tmp_path, "database: sqlite:///c.db\n")
    assert errors(path) == [
        "1: jobs: 'jobs' must be a mapping from job name to job, with at least one job "
        "(or streams: without jobs)"
    ]
    assert errors(write(tmp_path, "streams: {}\n")) == [
        "1: streams: 'streams' must be a mapping from stream name to stream, "
        "e.g. tape: {channel: trade, pairs: all}"
    ]


def test_the_schema_accepts_the_example_and_refuses_what_check_refuses() -> None:
    import yaml

    schema = json_schema()
    example = yaml.safe_load(EXAMPLE)
    assert _problems(schema, example) == []
    assert _problems(schema, {"database": "x"}) == [": fits none of anyOf"]  # no jobs, no streams
    bad = yaml.safe_load(EXAMPLE.replace("depth: 10", "depth: 7"))
    assert _problems(schema, bad) == ["streams.books.depth: not one of the enum"]
    channel = yaml.safe_load(EXAMPLE.replace("channel: ticker", "channel: tickr"))
    assert _problems(schema, channel) == ["streams.quotes.channel: not one of the enum"]
    pairs = yaml.safe_load(EXAMPLE.replace("pairs: all", "pairs: every"))
    assert _problems(schema, pairs) == ["streams.tape.pairs: fits none of anyOf"]
    one = schema["properties"]["streams"]["additionalProperties"]
    assert one["required"] == ["channel", "pairs"]
    # depth on a trade stream: refused for an editor by a JSON Schema conditional
    assert {
        "if": {"properties": {"channel": {"not": {"const": "book"}}}},
        "then": {"not": {"required": ["depth"]}},
    } in one["allOf"]


def test_check_prints_each_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "database: sqlite:///c.db\n" + EXAMPLE)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "warning" not in result.output  # the service records streams: nothing to warn of
    assert lines[0].startswith(f"{path}: 0 job(s), 4 stream(s), database ")
    assert lines[1:6] == [
        "streams: wss://ws.kraken.com/v2",
        "  books    book    2 pair(s)    depth 10, snapshot every 1m, stale after 10s",
        "  tape     trade   every pair   stale after 10s",
        "  quotes   ticker  2 pair(s)    stale after 10s",
        "  candles  ohlc    1 pair(s)    interval 1m, stale after 10s",
    ]


def test_check_online_names_each_unknown_stream_pair(tmp_path: Path, fake: FakeKraken) -> None:
    path = write(
        tmp_path,
        f"""
        database: sqlite:///c.db
        kraken: {{url: "{fake.url}"}}
        streams:
          books: {{channel: book, pairs: [XBTUSD, "BTC/USD", XXBTZUSD, "XBT/USD", NOSUCHPAIR]}}
          tape: {{channel: trade, pairs: all}}
          quotes: {{channel: ticker, pairs: [ETHUSD, ETHUSDD]}}
        """,
    )
    result = CliRunner().invoke(main, ["check", "--online", str(path)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    # BTC/USD is the v2 symbol of XBT/USD: a stream may spell it so.
    assert errors == [
        f"error: {path}:4: streams.books.pairs: {fake.url} knows no pair 'NOSUCHPAIR'",
        f"error: {path}:6: streams.quotes.pairs: {fake.url} knows no pair 'ETHUSDD'; "
        "did you mean 'ETHUSD'?",
    ]
    path.write_text(path.read_text().replace(", NOSUCHPAIR", "").replace("ETHUSDD", "ETHUSD"))
    result = CliRunner().invoke(main, ["check", "--online", str(path)])
    assert result.exit_code == 0, result.output


def test_a_reloads_diff_carries_the_stream_changes(tmp_path: Path) -> None:
    old = load(write(tmp_path, "database: sqlite:///c.db\n" + EXAMPLE, "old.yaml"), environ={})
    edited = (
        EXAMPLE.replace("depth: 10", "depth: 25").replace(  # books changed
            "  tape: {channel: trade, pairs: all}\n", ""
        )  # tape removed
        + "  more: {channel: trade, pairs: [ETHUSD]}\n"  # more added
    )
    # quotes and candles move up a line: the same streams, not changed
    new = load(write(tmp_path, "database: sqlite:///c.db\n" + edited, "new.yaml"), environ={})
    changes = diff(old, new)
    assert changes.streams == StreamChanges(added=("more",), removed=("tape",), changed=("books",))
    assert (changes.added, changes.removed, changes.changed) == ((), (), ())
    assert restart_needed(old, new) == []
    assert not diff(old, old).streams
    moved = load(
        write(
            tmp_path, "database: sqlite:///c.db\n" + EXAMPLE.replace("wss://", "wss://x."), "m.yaml"
        ),
        environ={},
    )
    assert restart_needed(old, moved) == ["kraken.ws_url"]
