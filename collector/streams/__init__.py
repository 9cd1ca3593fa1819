"""Kraken's WebSocket v2 public feed, recorded by the service (issue 28; docs/streams.md).

``recorder``: the job file's streams in the service, their pairs kept current.
``feed``: one stream: its connections, its messages made rows, its batch runs.
``book``: one pair's order book, proven by Kraken's checksum after every message.
``connection``: one WebSocket v2 connection: subscriptions, their answers, heartbeats, reconnects.
``gaps``: holes in a pair's trade ids, filled from REST Trades.
``rows``: what a stream stores, as the REST tables' rows.
"""
