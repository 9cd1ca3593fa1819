"""Kraken's WebSocket v2 public feed: the pieces a stream is built from (issue 28, in progress).

``book``: one pair's order book, proven by Kraken's checksum after every message.
``connection``: one WebSocket v2 connection: subscriptions, their answers, heartbeats, reconnects.
"""
