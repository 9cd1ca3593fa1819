"""Deadlines that bound a whole exchange of bytes, not each read.

A socket timeout bounds one read: a peer that sends a byte every few seconds, or headers one at a
time, holds a call (and whatever lock it holds) forever while no read ever times out. A
:class:`Watch` is one call's deadline: the connections and sockets the call uses register with it,
and when the deadline passes, one reaper thread (per process) shuts their sockets down, so the read
that blocks returns at once and the call ends as a timeout. :meth:`Watch.finish` says whether that
happened; a call whose watch expired is a timeout whatever its read returned (a shut-down socket
can look like the end of a body).

:class:`DeadlineAdapter` is a ``requests`` adapter whose connections register with the calling
thread's current watch (:func:`watch`), at connect (so a TLS handshake is covered too) and at each
request on a kept-alive connection. (The HTTP listeners cut their own peers: see
:mod:`collector.listener`.)

Shutting a socket down is the one thing that wakes a thread blocked in ``recv`` from another thread
without closing a file descriptor it may still use; the owner closes it as usual afterwards.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Watch:
    """One call's deadline and the sockets (or objects with a ``sock``) that it covers."""

    def __init__(self, seconds: float, clock: Any = time.monotonic) -> None:
        self.deadline = clock() + seconds
        self.expired = False
        self.done = False
        self._lock = threading.Lock()
        self._held: list[Any] = []

    def add(self, holder: Any) -> None:
        """Cover ``holder`` (a socket, or a connection whose ``sock`` is read when it expires)."""
        with self._lock:
            if not self.done:
                self._held.append(holder)
            expired = self.expired
        if expired:  # registered after the deadline: cut at once
            _shut(holder)

    def finish(self) -> bool:
        """The call is over (its sockets are no longer covered); True when the deadline cut it."""
        with self._lock:
            self.done = True
            self._held.clear()
            return self.expired

    def expire(self) -> None:
        """Cut the call now (the reaper calls this at the deadline; a stopping service sooner)."""
        with self._lock:
            if self.done or self.expired:
                return
            self.expired = True
            held = list(self._held)
        for holder in held:
            _shut(holder)


def _shut(holder: Any) -> None:
    sock = holder if isinstance(holder, socket.socket) else getattr(holder, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Reaper:
    """One thread that expires watches at their deadlines (started with the first watch)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self._cond:
            heapq.heappush(self._heap, (watch.deadline, next(self._seq), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="collector-deadlines", daemon=True
                )
                self._thread.start()
            # Done watches are dropped lazily; a busy client must not grow the heap without end.
            if len(self._heap) > 1024:
                self._heap = [e for e in self._heap if not e[2].done]
                heapq.heapify(self._heap)
            if self._heap[0][2] is watch:
                self._cond.notify()

    def shorten(self, watch: Watch, seconds: float) -> None:
        """Bring ``watch``'s deadline forward to ``seconds`` from now (never later)."""
        with self._cond:
            deadline = time.monotonic() + seconds
            if deadline < watch.deadline and not watch.done:
                watch.deadline = deadline
                heapq.heappush(self._heap, (deadline, next(self._seq), watch))
                self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and (self._heap[0][2].done or self._heap[0][2].expired):
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, watch = self._heap[0]
                left = min(deadline, watch.deadline) - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                watch.expire()  # shutdown() does not block


#: The process's reaper: one thread for every client.
REAPER = Reaper()
_current = threading.local()


@contextlib.contextmanager
def watch(seconds: float) -> Iterator[Watch]:
    """Bound what this thread does inside to ``seconds``: connections made or used by a
    :class:`DeadlineAdapter` inside are cut when they pass. The caller checks ``expired`` (or
    :meth:`Watch.finish`) at the end."""
    found = Watch(seconds)
    REAPER.add(found)
    before = getattr(_current, "watch", None)
    _current.watch = found
    try:
        yield found
    finally:
        _current.watch = before
        found.finish()


def current() -> Watch | None:
    """The watch of the call this thread is making, if any."""
    return getattr(_current, "watch", None)


def _register(conn: Any) -> None:
    found = current()
    if found is not None:
        found.add(conn)


class _Connection(HTTPConnection):
    def connect(self) -> None:
        _register(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)  # a kept-alive connection serves the next call without connect()
        super().request(*args, **kwargs)


class _TLSConnection(HTTPSConnection):
    def connect(self) -> None:
        _register(self)  # urllib3 sets .sock before the handshake: a slow handshake is cut too
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections are cut when the calling thread's :func:`watch`
    expires (direct and through an HTTP proxy alike)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
