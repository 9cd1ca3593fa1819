"""One WebSocket v2 connection to Kraken's public feed: connect, subscribe, watch, reconnect.

What it promises (docs/streams.md has the reasons):

* ``wss://`` with verified TLS (the system's default context); ``ws://`` only to this machine (the
  fake exchange), as ``kraken.url`` takes ``http://``. Redirects are never followed: a 3xx is a
  failed connection. Connecting is bounded by ``open_timeout``.
* Subscriptions are sent in batches of ``batch`` symbols, at most ``rate`` requests a second. Each
  symbol's acknowledgement is read on its own: a refusal is a :class:`StreamFailed` naming the
  symbol and Kraken's error; ``Exceeded msg rate`` backs the sender off (the one backoff) and asks
  again; ``Already subscribed`` unsubscribes and subscribes again, since only that brings a fresh
  snapshot.
* No message for ``stale_after`` seconds (Kraken sends a heartbeat about every second): the
  connection is stale, closed and replaced. Any loss of the connection is followed by a new one
  after an exponential backoff with full jitter, and every subscription is made again.
* Every message is parsed with its numbers exact (prices and quantities are bare JSON numbers:
  :func:`decoder`, msgspec with ``Decimal`` for each literal's text) and is at most
  ``max_message`` bytes; data messages go to the handler as ``(channel, type, data,
  received_at)`` in the connection's own thread, so the handler must be quick (and may call
  :meth:`Connection.resubscribe`, e.g. after a book's checksum failed).
* Everything is bounded: the message size, websockets' receive queue, the outgoing requests (at
  most a few per subscribed symbol), the reconnect delay, and :meth:`Connection.stop` (a close
  frame, then the thread joined within ``close_timeout`` and a little).

The connection runs in its own thread with its own asyncio loop: the service is threaded, and
:meth:`Connection.start` and :meth:`Connection.stop` are called from its threads.

Why one module of this length: the connection's states (connecting, subscribing, open, stale,
backing off, closing) and the per-symbol acknowledgements share one asyncio loop and its state;
split across modules they would reach into each other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from .. import defaults
from ..backoff import Backoff
from ..events import STREAM_STOPPED

logger = logging.getLogger(__name__)

__all__ = [
    "FAILURE_KINDS",
    "Connection",
    "Handler",
    "Reconnecting",
    "StreamClosed",
    "StreamFailed",
    "StreamOpened",
    "Subscribed",
    "Subscription",
    "check_url",
    "decoder",
]

#: ``(channel, type, data, received_at)``: one data message (``type`` is ``snapshot`` or
#: ``update``; ``data`` as Kraken sent it, numbers as ``Decimal``).
Handler = Callable[[str, str, Any, datetime], None]

#: What a :class:`StreamFailed` can be.
FAILURE_KINDS = frozenset(
    {
        "connect",  # the connection could not be opened (refused, TLS, timeout, a redirect)
        "disconnect",  # it was lost (Cloudflare's 1006, a close from Kraken)
        "stale",  # no message for stale_after
        "refused",  # Kraken refused a symbol's subscription (the symbol and error are given)
        "rate",  # Exceeded msg rate: backed off, asked again
        "resubscribe",  # Already subscribed kept coming back: no fresh snapshot
        "protocol",  # a message that is not a JSON object
        "handler",  # the handler raised
    }
)


# -- events (published through the injected callable; the lead moves them to events.py) --------


@dataclass(frozen=True)
class StreamOpened:
    """Connection number ``connection`` (1 for the first) to ``url`` is open."""

    url: str
    connection: int


@dataclass(frozen=True)
class StreamClosed:
    """A connection ended: why, and how many messages it brought."""

    reason: str
    messages: int
    connection: int


@dataclass(frozen=True)
class StreamFailed:
    """Something went wrong (``kind`` is one of ``FAILURE_KINDS``); ``symbol`` when it is one
    symbol's."""

    kind: str
    symbol: str | None
    message: str


@dataclass(frozen=True)
class Subscribed:
    """Kraken acknowledged ``symbol`` on ``channel`` (``None`` for channels without symbols)."""

    channel: str
    symbol: str | None


@dataclass(frozen=True)
class Reconnecting:
    """The next connection is attempt ``attempt`` after failures, in ``delay`` seconds."""

    attempt: int
    delay: float


@dataclass(frozen=True)
class Subscription:
    """``symbols`` on ``channel`` with the channel's ``options`` (``depth`` for ``book``,
    ``interval`` for ``ohlc``). ``instrument`` takes no symbols: ``symbols=()``."""

    channel: str
    symbols: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


# An outgoing request: method, channel, the options as sorted items, symbols (None: no symbol).
_Key = tuple[str, str | None]


@dataclass
class _Request:
    method: str
    channel: str
    options: tuple[tuple[str, Any], ...]
    symbols: list[str | None]


#: The time of a message's receipt: a C call a message (a lambda would be a Python frame).
_utc_now = functools.partial(datetime.now, UTC)


class Typed(Protocol):
    """A data message as a channel's typed decoder makes it (``rows.TradeMessage``): its
    ``data`` handed to the handler as it is."""

    channel: str
    type: str
    data: Any


def decoder() -> Callable[[str | bytes], Any]:
    """A message's JSON as Python values, every number with a fraction or an exponent a
    ``Decimal`` made from the literal's own text (``4.00000000`` stays ``Decimal('4.00000000')``:
    the checksum formats it with the pair's precision, never through a float).

    msgspec's decoder, 2.4 to 5 times quicker than ``json.loads(parse_float=Decimal)`` on Kraken's
    trade messages, and stricter where it differs: ``NaN`` and ``Infinity`` are malformed JSON
    (``json`` takes them as floats); an integer past 4,300 digits is refused by both; a
    refusal is a ``ValueError``, or a ``RecursionError`` for nesting past about 1,000 levels.
    One a connection: each is used in its own thread."""
    return msgspec.json.Decoder(float_hook=Decimal).decode


def check_url(url: str) -> str:
    """``url`` if a stream may connect to it, else ValueError in one line: ``wss://`` anywhere,
    ``ws://`` (no TLS) only to this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "wss" and host:
        return url
    if parts.scheme == "ws" and _loopback(host):
        return url
    raise ValueError(
        f"stream URL {url[:200]!r}: use wss:// (ws:// only for this machine, e.g. the fake exchange)"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _connect(connect):
    """websockets' connect, never following a redirect: Kraken's endpoint does not redirect, and
    following one would take the stream to a host nobody configured."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class Connection:
    """One WebSocket v2 connection and its subscriptions. Constructing it does no I/O;
    :meth:`start` starts its thread, :meth:`stop` closes it.

    :param handler: called with every data message, in the connection's thread
    :param publish: called with every event (:class:`StreamOpened`, :class:`StreamClosed`,
        :class:`StreamFailed`, :class:`Subscribed`, :class:`Reconnecting`); must be quick
    :param backoff: reconnect delays (default: full jitter from ``WS_BACKOFF_FIRST`` to
        ``WS_BACKOFF_CAP``); also the pause after ``Exceeded msg rate``
    :param clock: monotonic seconds (staleness, pacing); ``now``: the ``received_at`` stamp
    """

    def __init__(
        self,
        url: str,
        subscriptions: Iterable[Subscription],
        handler: Handler,
        *,
        publish: Callable[[object], None] = lambda event: None,
        name: str = "stream",
        stale_after: float = defaults.WS_STALE_AFTER,
        rate: float = defaults.WS_MESSAGES_PER_SECOND,
        batch: int = defaults.WS_BATCH,
        backoff: Backoff | None = None,
        open_timeout: float = defaults.WS_OPEN_TIMEOUT,
        close_timeout: float = defaults.WS_CLOSE_TIMEOUT,
        max_message: int = defaults.WS_MAX_MESSAGE,
        max_queue: int = defaults.WS_MAX_QUEUE,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        typed: Callable[[], Callable[[str], Typed]] | None = None,
    ) -> None:
        self.url = check_url(url)
        if not (stale_after > 0 and rate > 0 and batch >= 1 and open_timeout > 0):
            raise ValueError("stale_after, rate, open_timeout must be positive and batch >= 1")
        self.name = name
        self._handler = handler
        self._publish_to = publish
        self.stale_after = stale_after
        self.rate = rate
        self.batch = batch
        self.backoff = backoff or Backoff(
            defaults.WS_BACKOFF_FIRST, defaults.WS_BACKOFF_CAP, random.uniform
        )
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_message = max_message
        self.max_queue = max_queue
        self._ssl = ssl_context
        self._decode = decoder()
        # The channel's own typed decoder, tried first: its data messages in one C call.
        self._typed = typed() if typed is not None else None
        self._clock = clock
        self._now = now
        #: what should be subscribed: (channel, symbol) -> options as sorted items
        #: symbols Kraken refused, (channel, symbol) -> its error (not asked again until
        #: :meth:`subscribe` names them again)
        self.refused: dict[_Key, str] = {}
        self._wanted: dict[_Key, tuple[tuple[str, Any], ...]] = {}
        for sub in subscriptions:
            self._want(sub)
        #: connections opened so far, and the messages of the current one
        self.connections = 0
        self.messages = 0
        self._acked: set[_Key] = set()
        self._lock = threading.Lock()  # guards _acked's copies for other threads
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopping = False
        self._ws: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._reason: str | None = None
        #: failure kind -> when its last line was logged, and the failures since (not logged)
        self._logged: dict[str, tuple[float, int]] = {}
        self._session_state()

    def _session_state(self) -> None:
        """What one connection knows, reset for each."""
        self._outbox: deque[_Request] = deque()
        #: (method, channel, symbol) of every request queued and not yet sent: each once
        self._queued: set[tuple[str, str, str | None]] = set()
        self._requests: dict[int, _Request] = {}
        self._req_id = 0
        self._resubscribing: set[_Key] = set()
        self._tries: dict[_Key, int] = {}
        self._rate_strikes = 0
        self._pause_until = 0.0
        self._last = self._clock()
        self._data_seen = False
        self._outbox_ready: asyncio.Event | None = None
        with self._lock:
            self._acked = set()

    # -- the service's side (any thread) --------------------------------------------------------

    def start(self) -> Connection:
        """Start the connection's thread (it connects, subscribes, and keeps at it until
        :meth:`stop`)."""
        if self._thread is not None:
            raise RuntimeError("a connection starts once")
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        self._started.wait(5)
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Close the connection (a close frame, code 1000) and end its thread; True if it ended
        within ``timeout`` (default: ``close_timeout`` and a second)."""
        loop, thread = self._loop, self._thread
        if thread is None:
            return True
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(self._request_stop)
        thread.join(self.close_timeout + 1.0 if timeout is None else timeout)
        return not thread.is_alive()

    def subscribe(self, subscription: Subscription) -> None:
        """Add symbols (e.g. a pair just listed): subscribed now if connected, and on every
        reconnect."""
        self._call(self._subscribe, subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove symbols: unsubscribed now if connected, and not asked for again."""
        self._call(self._unsubscribe, subscription)

    def resubscribe(self, channel: str, symbol: str) -> None:
        """Unsubscribe then subscribe ``symbol`` again, for a fresh snapshot (a book whose checksum
        failed: a second subscribe alone gets ``Already subscribed`` and no snapshot)."""
        self._call(self._resubscribe, (channel, symbol))

    def acknowledged(self) -> set[tuple[str, str | None]]:
        """The (channel, symbol) pairs Kraken has acknowledged on the current connection."""
        with self._lock:
            return set(self._acked)

    def _call(self, fn: Callable[[Any], None], arg: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            fn(arg)  # not running: only the wanted set changes
        else:
            loop.call_soon_threadsafe(fn, arg)

    # -- the loop ---------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # a bug here must not pass silently: the stream would just stop
            logger.exception("stream %s: its loop failed", self.name)
            self._publish(StreamFailed("protocol", None, "the stream's loop failed; see the log"))
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started.set()
        attempt = 0
        while not self._stopping:
            healthy = await self._session()
            if self._stopping:
                break
            attempt = 1 if healthy else attempt + 1
            delay = self.backoff.delay(attempt)
            logger.info("stream %s: reconnecting in %.2f s (attempt %d)", self.name, delay, attempt)
            self._publish(Reconnecting(attempt, delay))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._ws is not None and self._closing is None:
            self._reason = STREAM_STOPPED
            self._closing = asyncio.ensure_future(self._ws.close(1000, "collector stopping"))

    async def _session(self) -> bool:
        """One connection, from opening to its end; True if it was healthy (brought data for at
        least ``stale_after``), so the next failure starts the backoff afresh."""
        self._session_state()
        self._reason = None
        self._closing = None
        tls = (self._ssl or ssl.create_default_context()) if self.url.startswith("wss:") else None
        self._connecting = asyncio.ensure_future(
            _connect(
                self.url,
                ssl=tls,
                # an environment proxy is for the internet: never between us and this machine
                proxy=True if tls else None,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                max_size=self.max_message,
                max_queue=self.max_queue,
                user_agent_header="kraken-collector",
            )
        )
        try:
            ws = await self._connecting
        except asyncio.CancelledError:
            return False  # stopped while connecting
        except (OSError, TimeoutError, WebSocketException) as e:
            self._fail("connect", None, f"{self.url}: {_describe(e)}")
            return False
        finally:
            self._connecting = None
        self.connections += 1
        self.messages = 0
        self._ws = ws
        opened = self._clock()
        logger.info("stream %s: connection %d open to %s", self.name, self.connections, self.url)
        self._publish(StreamOpened(self.url, self.connections))
        self._outbox_ready = asyncio.Event()
        if self._stopping:
            self._request_stop()
        else:
            self._enqueue_wanted()
        tasks = [asyncio.ensure_future(self._sender(ws)), asyncio.ensure_future(self._watchdog(ws))]
        try:
            async for raw in ws:
                self._last = self._clock()
                self.receive(raw)
            reason = self._reason or f"closed by the peer ({_close_text(ws)})"
        except ConnectionClosed:
            reason = self._reason or f"connection lost ({_close_text(ws)})"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ws = None
            await ws.close()  # bounded by close_timeout; nothing if already closed
        if self._reason is None:
            self._fail("disconnect", None, reason)
        logger.info(
            "stream %s: connection %d closed: %s (%d messages)",
            self.name,
            self.connections,
            reason,
            self.messages,
        )
        self._publish(StreamClosed(reason, self.messages, self.connections))
        return self._data_seen and self._clock() - opened >= self.stale_after

    async def _watchdog(self, ws: ClientConnection) -> None:
        step = min(self.stale_after / 4, 1.0)
        pinged = 0.0
        while True:
            await asyncio.sleep(step)
            idle = self._clock() - self._last
            if self.stale_after / 2 <= idle < self.stale_after and pinged < self._last:
                # Kraken's heartbeats need a subscription: a connection whose symbols were all
                # refused (or not yet answered) is asked for a pong instead of going stale.
                pinged = self._clock()
                self._req_id += 1
                await ws.send(json.dumps({"method": "ping", "req_id": self._req_id}))
            elif idle >= self.stale_after:
                self._reason = f"stale: no message for {idle:.1f} s"
                self._fail("stale", None, self._reason)
                await ws.close(1000, "stale")
                return

    async def _sender(self, ws: ClientConnection) -> None:
        """Send the outbox, at most ``rate`` requests a second, pausing after a rate refusal."""
        assert self._outbox_ready is not None
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                pause = self._pause_until - self._clock()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                request = self._outbox.popleft()
                for s in request.symbols:
                    self._queued.discard((request.method, request.channel, s))
                if request.method == "subscribe":  # what was acknowledged or dropped meanwhile
                    request.symbols = [
                        s
                        for s in request.symbols
                        if (request.channel, s) in self._wanted
                        and (request.channel, s) not in self._acked
                    ]
                    if not request.symbols:
                        continue
                await ws.send(self._encode(request))
                await asyncio.sleep(1.0 / self.rate)
            self._outbox_ready.clear()

    def _encode(self, request: _Request) -> str:
        self._req_id += 1
        self._requests[self._req_id] = request
        params: dict[str, Any] = {"channel": request.channel, **dict(request.options)}
        symbols = [s for s in request.symbols if s is not None]
        if symbols:
            params["symbol"] = symbols
        return json.dumps({"method": request.method, "params": params, "req_id": self._req_id})

    # -- requests ---------------------------------------------------------------------------------

    def _want(self, sub: Subscription) -> list[_Key]:
        options = tuple(sorted(sub.options.items()))
        keys: list[_Key] = [(sub.channel, s) for s in sub.symbols] or [(sub.channel, None)]
        for key in keys:
            self._wanted[key] = options
            self.refused.pop(key, None)
        return keys

    def _subscribe(self, sub: Subscription) -> None:
        keys = self._want(sub)
        if self._ws is not None:
            self._enqueue("subscribe", keys)

    def _unsubscribe(self, sub: Subscription) -> None:
        keys: list[_Key] = [(sub.channel, s) for s in sub.symbols] or [(sub.channel, None)]
        present = [k for k in keys if self._wanted.pop(k, None) is not None]
        if self._ws is not None and present:
            self._enqueue("unsubscribe", present, tuple(sorted(sub.options.items())))

    def _resubscribe(self, key: _Key) -> None:
        if key not in self._wanted or self._ws is None:
            return  # not ours, or no connection: the next one subscribes afresh anyway
        self._resubscribing.add(key)
        self._enqueue("unsubscribe", [key])

    def _enqueue_wanted(self) -> None:
        self._enqueue("subscribe", list(self._wanted))

    def _enqueue(
        self, method: str, keys: list[_Key], options: tuple[tuple[str, Any], ...] | None = None
    ) -> None:
        """Queue requests for ``keys``, grouped by channel and options, ``batch`` symbols each
        (joining the last queued request when it is the same kind and has room). A symbol's
        request already queued is not queued again: the outbox is at most one request a method
        for each symbol, however fast the feed gives reasons to ask (a bad book at wire speed)."""
        for channel, symbol in keys:
            if (method, channel, symbol) in self._queued:
                continue
            self._queued.add((method, channel, symbol))
            opts = self._wanted.get((channel, symbol), ()) if options is None else options
            last = self._outbox[-1] if self._outbox else None
            if (
                last is not None
                and (last.method, last.channel, last.options) == (method, channel, opts)
                and symbol is not None
                and None not in last.symbols
                and len(last.symbols) < self.batch
            ):
                last.symbols.append(symbol)
            else:
                self._outbox.append(_Request(method, channel, opts, [symbol]))
        if self._outbox_ready is not None:
            self._outbox_ready.set()

    # -- messages ---------------------------------------------------------------------------------

    def receive(self, raw: str | bytes) -> None:
        """One message as read from the socket (the loop calls it, in the connection's thread):
        counted, parsed, and an answer taken or data handed to the handler. Public so that a
        replay (bench/bench_streams.py) feeds recorded text through the very same path."""
        self.messages += 1
        if isinstance(raw, bytes):
            self._fail("protocol", None, "a binary message")
            return
        if self._typed is not None:
            try:
                typed = self._typed(raw)
            except (ValueError, RecursionError):  # not the channel's data: the general way
                pass
            else:
                self._data_seen = True
                try:
                    self._handler(typed.channel, typed.type, typed.data, self._now())
                except Exception as e:
                    self._fail("handler", None, f"{typed.channel[:40]}: {_describe(e)}", error=e)
                return
        try:
            message = self._decode(raw)
        except (ValueError, RecursionError):  # msgspec: RecursionError past ~1,000 levels deep
            self._fail("protocol", None, f"not JSON (or nested too deep): {raw[:80]!r}")
            return
        if not isinstance(message, dict):
            self._fail("protocol", None, f"not a JSON object: {raw[:80]!r}")
            return
        if "method" in message:
            try:
                self._on_answer(message)
            except Exception as e:  # an answer's oddity is a protocol failure, never the loop's end
                text = f"an answer that could not be read: {_describe(e)}"
                self._fail("protocol", None, text, error=e)
            return
        channel, kind = message.get("channel"), message.get("type")
        if channel == "heartbeat":
            return
        if not isinstance(channel, str) or not isinstance(kind, str):
            self._fail("protocol", None, f"a message without channel and type: {raw[:80]!r}")
            return
        self._data_seen = True
        try:
            self._handler(channel, kind, message.get("data"), self._now())
        except Exception as e:
            self._fail("handler", None, f"{channel[:40]}: {_describe(e)}", error=e)

    def _on_answer(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method not in ("subscribe", "unsubscribe"):
            return  # pong, and whatever else answers a request we did not make
        req_id = message.get("req_id")
        request = self._requests.get(req_id) if isinstance(req_id, int) else None
        raw_result = message.get("result")
        result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
        channel = result.get("channel") or (request.channel if request else None)
        symbol = result.get("symbol", message.get("symbol"))
        if symbol is not None and not isinstance(symbol, str):
            self._fail("protocol", None, f"an answer whose symbol is a {type(symbol).__name__}")
            return
        if not isinstance(channel, str):
            self._fail("protocol", None, f"an answer to no request: {str(message)[:120]}")
            return
        asked = (channel, symbol) in self._wanted or (request and symbol in request.symbols)
        if symbol is not None and not asked:
            # Acting on it would let the server choose what is asked for and remembered.
            self._fail("protocol", None, f"an answer about a symbol not asked for: {symbol:.40}")
            return
        if request is not None and isinstance(req_id, int):  # each symbol is answered once
            with contextlib.suppress(ValueError):
                request.symbols.remove(symbol)
            if not request.symbols:
                del self._requests[req_id]
        symbols: list[str | None] = [symbol]
        if symbol is None and request is not None and request.symbols and isinstance(req_id, int):
            symbols = list(request.symbols)  # one answer for the whole request
            request.symbols.clear()
            self._requests.pop(req_id, None)
        for s in symbols:
            self._on_symbol_answer(method, channel, s, message)

    def _on_symbol_answer(
        self, method: str, channel: str, symbol: str | None, message: dict[str, Any]
    ) -> None:
        key: _Key = (channel, symbol)
        error = str(message.get("error") or "")[: defaults.REASON_MAX]
        if message.get("success") is True:
            if method == "subscribe":
                with self._lock:
                    self._acked.add(key)
                self._tries.pop(key, None)
                self._rate_strikes = 0
                self._publish(Subscribed(channel, symbol))
            else:
                with self._lock:
                    self._acked.discard(key)
                if key in self._resubscribing:
                    self._resubscribing.discard(key)
                    self._enqueue("subscribe", [key])
            return
        if "exceeded msg rate" in error.lower():
            self._rate_strikes += 1
            pause = self.backoff.delay(self._rate_strikes)
            self._pause_until = max(self._pause_until, self._clock() + pause)
            self._fail(
                "rate", symbol, f"{method} {channel} {symbol}: {error}; again in {pause:.2f} s"
            )
            if key in self._wanted or method == "unsubscribe":
                self._enqueue(method, [key])
            return
        if "already subscribed" in error.lower() and method == "subscribe":
            tries = self._tries[key] = self._tries.get(key, 0) + 1
            if tries > defaults.WS_RESUBSCRIBE_TRIES:
                self._fail("resubscribe", symbol, f"{channel} {symbol}: {error} {tries} times")
                return
            # Subscribed already, but we asked because we need a snapshot: unsubscribe first.
            self._resubscribing.add(key)
            self._enqueue("unsubscribe", [key])
            return
        if method == "unsubscribe" and key in self._resubscribing:
            # Not subscribed after all (e.g. the subscription never took): just subscribe.
            self._resubscribing.discard(key)
            self._enqueue("subscribe", [key])
            return
        if method == "subscribe" and key in self._wanted:
            del self._wanted[key]
            self.refused[key] = error
        self._fail("refused", symbol, f"{method} {channel} {symbol or ''}: {error}".strip())

    # -- events -----------------------------------------------------------------------------------

    def _fail(
        self, kind: str, symbol: str | None, message: str, *, error: Exception | None = None
    ) -> None:
        """Publish a failure (every one: the metrics count them) and log it: a line per kind at
        most every ``WS_FAILURE_LOG_EVERY``, the ones in between counted in the next line (with
        ``error``'s traceback when one is logged)."""
        message = message[: defaults.WS_FAILURE_TEXT]
        now = self._clock()
        last, since = self._logged.get(kind, (None, 0))
        if last is not None and now - last < defaults.WS_FAILURE_LOG_EVERY:
            self._logged[kind] = (last, since + 1)
        else:
            self._logged[kind] = (now, 0)
            more = f" (and {since} more like it since the last line)" if since else ""
            logger.warning("stream %s: %s: %s%s", self.name, kind, message, more, exc_info=error)
        self._publish(StreamFailed(kind, symbol, message))

    def _publish(self, event: object) -> None:
        try:
            self._publish_to(event)
        except Exception:  # a subscriber's bug never breaks the stream
            logger.exception("stream %s: publishing %s failed", self.name, type(event).__name__)


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text[: defaults.REASON_MAX]


def _close_text(ws: ClientConnection) -> str:
    """The close frames exchanged: the peer's, else ours (e.g. 1009, a message over the bound),
    else none at all (Cloudflare's 1006)."""
    rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if rcvd is not None:
        return f"{rcvd.code} {rcvd.reason}".strip()[: defaults.REASON_MAX]
    if sent is not None:
        return f"{sent.code} {sent.reason}; no close frame back".strip()[: defaults.REASON_MAX]
    return "1006, no close frame"
