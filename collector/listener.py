"""A small HTTP listener that can never take what the collector needs: the service's metrics
listener (``/metrics``, ``/healthz``, the dashboard at ``/``) and ``collector dashboard``'s.

One thread reads every request head and sends every answer, without blocking, through a
selector; a route's answer is made in a thread of that route's own, at most ``LISTENER_SLOTS`` at
a time per route. So:

* an idle or slow peer holds no thread and no slot: a head not complete within
  ``LISTENER_HEAD_TIMEOUT`` seconds is cut, an answer not read within ``LISTENER_TIMEOUT``
  seconds is cut, and beyond ``LISTENER_READING`` heads being read (``LISTENER_SENDING`` answers
  being sent) the oldest is cut, so a crowd of them can't keep a probe from being read;
* a page being drawn never holds up ``/healthz`` or ``/metrics``: each route has its own slots
  (a route whose slots are all busy is answered 503 at once, never queued);
* the ``Host`` header must name this machine as the listener knows it (:func:`host_allowed`):
  a browser led to the listener by a name an attacker controls (DNS rebinding) gets a 421, so a
  web page can't read the page or the metrics through the user's browser.

Read-only: nothing it serves changes anything (HEAD answers as GET without the body; another
method is 405). A route that raises is answered 500 in one line and logged as one warning; more
than ``MAX_QUERY_FIELDS`` query parameters, 400. A peer that resets leaves a debug line, never a
traceback. One request per connection (HTTP/1.0 answers, ``Connection: close``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import SplitResult, parse_qs, urlsplit

from . import defaults

logger = logging.getLogger(__name__)


class Answer:
    """What a route answers: status, body and content type, and headers of its own."""

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = dict(headers or {})


#: Query parameters a request may have (more is answered 400).
MAX_QUERY_FIELDS = 20
#: Connections accepted in a row before the loop reads and sends again.
ACCEPT_BURST = 8
#: Seconds accepting pauses when the process is out of descriptors (the kernel's backlog waits).
ACCEPT_PAUSE = 0.1
#: Names that always mean this machine. IP literals are allowed too (:func:`host_allowed`).
LOOPBACK_NAMES = frozenset({"localhost"})

#: A route: the query's parameters (each name's first value) to an answer.
Route = Callable[[dict[str, str]], Answer]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_names(listen_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names a request may give: ``localhost``, the listen address's host when it is a
    name, and ``extra`` (``metrics.allowed_hosts``), lower case."""
    names = set(LOOPBACK_NAMES) | {name.lower() for name in extra}
    if listen_host and not _is_ip(listen_host):
        names.add(listen_host.lower())
    return frozenset(names)


def host_allowed(value: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header (with or without a port) is one of ``names`` or an IP
    literal (``127.0.0.1``, ``[::1]``, the machine's address).

    DNS rebinding needs a *name* the attacker's DNS answers for: a page at ``evil.example`` whose
    name then resolves to 127.0.0.1 sends ``Host: evil.example``, and reads the answer as its own
    origin's. An IP literal can't be rebound (a page at ``http://127.0.0.1:9108`` is this
    listener's own origin), so it is allowed: Prometheus scraping by address and Docker's
    HEALTHCHECK on 127.0.0.1 need no configuration. No ``Host`` at all (HTTP/1.0 only) is no
    browser's request, and is allowed."""
    if value is None:
        return True
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
        return _is_ip(host[1:end])
    name, sep, port = host.partition(":")
    if sep and not port.isdigit():
        return False
    return bool(name) and (_is_ip(name) or name in names)


class _Conn:
    """A connection the loop is reading a head from or sending an answer to."""

    __slots__ = ("data", "deadline", "peer", "sent", "sock")

    def __init__(self, sock: socket.socket, peer: str, deadline: float, data: bytes) -> None:
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.data = bytearray(data)
        self.sent = 0


class Listener:
    """Serves ``routes`` (path -> :data:`Route`) on ``address``; binding is construction, serving
    is :meth:`start` (a thread of its own) or :meth:`serve_forever`, until :meth:`stop`.

    :param name: what the log calls it (``metrics``, ``dashboard``)
    :param hosts: host names allowed in ``Host`` besides loopback's and the listen address's
        (``metrics.allowed_hosts``)
    :param slots: threads answering each route at a time
    """

    backlog = 64  # the kernel's queue of connections not yet accepted: no descriptor of ours

    def __init__(
        self,
        address: tuple[str, int],
        routes: Mapping[str, Route],
        name: str = "listener",
        *,
        hosts: Iterable[str] = (),
        slots: int = defaults.LISTENER_SLOTS,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.create_server(address, family=family, backlog=self.backlog)
        self._sock.setblocking(False)
        self.routes = dict(routes)
        self.name = name
        self.hosts = allowed_names(address[0], hosts)
        self._slots = {path: threading.BoundedSemaphore(slots) for path in self.routes}
        self._reading: dict[socket.socket, _Conn] = {}  # oldest first
        self._sending: dict[socket.socket, _Conn] = {}
        self._outbox: queue.SimpleQueue[tuple[socket.socket, bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._paused: float | None = None  # accepting again at this time (monotonic)
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()  # not serving yet
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"collector-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def shutdown(self) -> None:
        """Stop serving (from another thread than the one serving); returns once it has."""
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._stopped.wait(5)

    def server_close(self) -> None:
        """Close the listening socket and every connection still open."""
        self._stopping = True
        for conn in (*self._reading, *self._sending):
            with contextlib.suppress(OSError):
                conn.close()
        self._reading.clear()
        self._sending.clear()
        while True:
            try:
                sock, _ = self._outbox.get_nowait()
            except queue.Empty:
                break
            sock.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def serve_forever(self) -> None:
        """The loop: accept, read heads, hand them to routes, send answers, cut the late."""
        self._stopped.clear()
        try:
            while not self._stopping:
                now = time.monotonic()
                self._expire(now)
                if self._paused is not None and self._paused <= now:
                    self._paused = None
                    self._selector.register(self._sock, selectors.EVENT_READ)
                deadlines = [
                    next(iter(d.values())).deadline for d in (self._reading, self._sending) if d
                ]
                if self._paused is not None:
                    deadlines.append(self._paused)
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                for key, _ in self._selector.select(timeout):
                    try:
                        self._event(key.fileobj)  # type: ignore[arg-type]
                    except Exception as exc:  # the loop never dies of one connection
                        logger.warning(
                            "%s: a connection failed: %s: %s", self.name, type(exc).__name__, exc
                        )
                        logger.debug("%s: a connection failed", self.name, exc_info=True)
        finally:
            self._stopped.set()

    # -- the loop's work (in its thread only) ---------------------------------------------------

    def _event(self, sock: socket.socket) -> None:
        if sock is self._sock:
            self._accept()
        elif sock is self._wake_r:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
            while True:
                try:
                    conn, data = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._send(conn, data)
        elif sock in self._reading:
            self._read(self._reading[sock])
        elif sock in self._sending:
            self._write(self._sending[sock])

    def _accept(self) -> None:
        # A few at a time, each read at once: a probe sends its head with its connection, and is
        # read before a crowd arriving behind it can make it the oldest (the one cut).
        for _ in range(ACCEPT_BURST):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the kernel's backlog waits
                logger.debug("%s: cannot accept: %s", self.name, exc)
                if self._reading:  # an idle peer's descriptor is the next one's
                    self._close(next(iter(self._reading)))
                else:  # don't spin on a socket that stays readable: ask again in a while
                    self._selector.unregister(self._sock)
                    self._paused = time.monotonic() + ACCEPT_PAUSE
                return
            conn.setblocking(False)
            if len(self._reading) >= defaults.LISTENER_READING:
                oldest = next(iter(self._reading.values()))
                logger.debug("%s: %s cut: too many heads being read", self.name, oldest.peer)
                self._close(oldest.sock)
            deadline = time.monotonic() + defaults.LISTENER_HEAD_TIMEOUT
            c = self._reading[conn] = _Conn(conn, str(peer[0]), deadline, b"")
            self._selector.register(conn, selectors.EVENT_READ)
            self._read(c)

    def _read(self, c: _Conn) -> None:
        try:
            chunk = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("%s: %s failed: %s", self.name, c.peer, exc)
            self._close(c.sock)
            return
        if not chunk:
            self._close(c.sock)  # gone before asking anything
            return
        c.data += chunk
        end = _head_end(c.data)
        if end < 0 and len(c.data) <= defaults.LISTENER_MAX_HEAD:
            return
        self._selector.unregister(c.sock)
        del self._reading[c.sock]
        if end < 0 or end > defaults.LISTENER_MAX_HEAD:
            self._send(c.sock, _plain(431, "request head too large\n"))
            return
        self._dispatch(c.sock, c.peer, bytes(c.data[:end]))

    def _dispatch(self, sock: socket.socket, peer: str, head: bytes) -> None:
        request = _parse(head)
        if isinstance(request, Answer):
            self._send(sock, _encode(request))
            return
        method, target, headers = request
        if not host_allowed(headers.get("host"), self.hosts):
            logger.debug("%s: %s refused: Host %.80r", self.name, peer, headers.get("host"))
            self._send(sock, _plain(421, "unknown Host: add the name to metrics.allowed_hosts\n"))
            return
        if method not in ("GET", "HEAD"):
            refused = Answer(405, b"read-only: GET and HEAD only\n", "text/plain")
            refused.headers["Allow"] = "GET, HEAD"
            self._send(sock, _encode(refused))
            return
        parts = urlsplit(target)
        route = self.routes.get(parts.path)
        if route is None:
            known = " or ".join(sorted(self.routes))
            self._send(sock, _plain(404, f"not found: try {known}\n"), method == "HEAD")
            return
        slots = self._slots[parts.path]
        if not slots.acquire(blocking=False):
            busy = Answer(503, b"busy: try again\n", "text/plain", {"Retry-After": "1"})
            self._send(sock, _encode(busy, body=method != "HEAD"))
            return
        try:
            threading.Thread(
                target=self._serve,
                args=(sock, peer, method, parts, route, slots),
                name=f"collector-{self.name}-answer",
                daemon=True,
            ).start()
        except BaseException:
            slots.release()
            sock.close()
            raise

    def _send(self, sock: socket.socket, data: bytes, head_only: bool = False) -> None:
        """Send ``data`` and close (``head_only``: HEAD's answer, the head of ``data``)."""
        if head_only:
            data = data[: _head_end(bytearray(data))]
        if self._stopping:
            sock.close()
            return
        if len(self._sending) >= defaults.LISTENER_SENDING:
            oldest = next(iter(self._sending.values()))
            logger.debug("%s: %s cut: too many answers being sent", self.name, oldest.peer)
            self._close(oldest.sock)
        c = _Conn(sock, "", time.monotonic() + defaults.LISTENER_TIMEOUT, data)
        self._sending[sock] = c
        self._selector.register(sock, selectors.EVENT_WRITE)
        self._write(c)  # most answers fit the socket's buffer: sent at once

    def _write(self, c: _Conn) -> None:
        try:
            c.sent += c.sock.send(memoryview(c.data)[c.sent : c.sent + 262_144])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # a peer that reset or went away
            logger.debug("%s: an answer was not sent: %s", self.name, exc)
            self._close(c.sock)
            return
        if c.sent >= len(c.data):
            self._close(c.sock)

    def _expire(self, now: float) -> None:
        for table, what in ((self._reading, "no request"), (self._sending, "answer not read")):
            while table:
                c = next(iter(table.values()))
                if c.deadline > now:
                    break
                logger.debug("%s: %s cut: %s in time", self.name, c.peer or "a peer", what)
                self._close(c.sock)

    def _close(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._reading.pop(sock, None)
        self._sending.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the loop is waking up already
            self._wake_w.send(b"x")

    # -- a route's thread -----------------------------------------------------------------------

    def _serve(
        self,
        sock: socket.socket,
        peer: str,
        method: str,
        parts: SplitResult,
        route: Route,
        slots: threading.BoundedSemaphore,
    ) -> None:
        try:
            answer = self._answer(route, parts)
        finally:
            slots.release()  # the answer is made: sending it holds no slot
        logger.debug("%s: %s %s %s %d", self.name, peer, method, parts.path, answer.status)
        data = _encode(answer, body=method != "HEAD")
        if self._stopping:
            sock.close()
            return
        self._outbox.put((sock, data))
        self._wake()

    def _answer(self, route: Route, parts: SplitResult) -> Answer:
        try:
            fields = parse_qs(parts.query, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return Answer(400, b"too many query parameters\n", "text/plain")
        query = {k: v[0] for k, v in fields.items()}
        try:
            return route(query)
        except Exception as exc:
            # A route's bug or data it can't show: one line for the peer and one in the log,
            # never a dropped connection with nothing said (the traceback at DEBUG).
            logger.warning("%s: %s failed: %s: %s", self.name, parts.path, type(exc).__name__, exc)
            logger.debug("%s: %s failed", self.name, parts.path, exc_info=True)
            return Answer(500, f"{type(exc).__name__}: see the log\n".encode(), "text/plain")


def _head_end(data: bytearray) -> int:
    """Where a head ends (after its blank line), or -1."""
    found = data.find(b"\r\n\r\n")
    if found >= 0:
        return found + 4
    found = data.find(b"\n\n")  # bare newlines, as some hand-written clients send
    return found + 2 if found >= 0 else -1


def _parse(head: bytes) -> tuple[str, str, dict[str, str]] | Answer:
    """``(method, target, headers by lower-case name)`` of a request head, or the 400 to send."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    words = lines[0].split()
    if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1") or not words[1].startswith("/"):
        return Answer(400, b"bad request line\n", "text/plain")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        key = name.lower()
        if not sep or not key or key != key.strip():
            return Answer(400, b"bad header line\n", "text/plain")
        if key == "host" and key in headers:
            return Answer(400, b"more than one Host header\n", "text/plain")
        headers[key] = value.strip()
    if words[2] == "HTTP/1.1" and "host" not in headers:
        return Answer(400, b"no Host header\n", "text/plain")
    return words[0], words[1], headers


def _plain(status: int, text: str) -> bytes:
    return _encode(Answer(status, text.encode(), "text/plain"))


def _encode(answer: Answer, *, body: bool = True) -> bytes:
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    lines = [
        f"HTTP/1.0 {answer.status} {phrase}",
        "Server: collector",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in answer.headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + answer.body if body else head
