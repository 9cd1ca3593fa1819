"""A small HTTP listener that can never take what the collector needs: the service's metrics
listener (``/metrics``, ``/healthz``, the dashboard at ``/``) and ``collector dashboard``'s.

At most ``LISTENER_THREADS`` requests at a time (a connection beyond them is closed at once,
holding no thread and no descriptor), each cut after ``LISTENER_TIMEOUT`` seconds however slowly
its peer sends or reads, and no traceback on stderr when a peer resets. Read-only: nothing it
serves changes anything (HEAD answers as GET without the body; another method is 405). A route
that raises is answered 500 in one line and logged as one warning; more than
``MAX_QUERY_FIELDS`` query parameters, 400.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import deadline, defaults

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

#: A route: the query's parameters (each name's first value) to an answer.
Route = Callable[[dict[str, str]], Answer]


class Listener(ThreadingHTTPServer):
    """Serves ``routes`` (path -> :data:`Route`) on ``address``; binding is construction, serving
    is :meth:`start` (a thread of its own) until :meth:`stop`.

    :param name: what the log calls it (``metrics``, ``dashboard``)
    """

    daemon_threads = True
    request_queue_size = 16  # the kernel's backlog, not our descriptors

    def __init__(
        self, address: tuple[str, int], routes: Mapping[str, Route], name: str = "listener"
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.routes = dict(routes)
        self.name = name
        self._slots = threading.BoundedSemaphore(defaults.LISTENER_THREADS)
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"collector-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: refused, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        watch = deadline.Watch(defaults.LISTENER_TIMEOUT)
        watch.add(request)
        deadline.REAPER.add(watch)
        try:
            super().process_request_thread(request, client_address)
        finally:
            watch.finish()
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that resets or is cut: one debug line, never a traceback on stderr (which would
        # also break --log-format json).
        logger.debug(
            "%s: a request from %s failed: %s", self.name, client_address[0], sys.exc_info()[1]
        )


class _Handler(BaseHTTPRequestHandler):
    server: Listener
    timeout = defaults.LISTENER_TIMEOUT  # each read; the watch bounds the whole request
    server_version = "collector"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(self._answer())

    def do_HEAD(self) -> None:
        """GET's status and headers without the body (``curl -I``, a load balancer's probe)."""
        self._send(self._answer(), body=False)

    def _answer(self) -> Answer:
        parts = urlsplit(self.path)
        route = self.server.routes.get(parts.path)
        if route is None:
            known = " or ".join(sorted(self.server.routes))
            return Answer(404, f"not found: try {known}\n".encode(), "text/plain")
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
            logger.warning(
                "%s: %s failed: %s: %s", self.server.name, parts.path, type(exc).__name__, exc
            )
            logger.debug("%s: %s failed", self.server.name, parts.path, exc_info=True)
            return Answer(500, f"{type(exc).__name__}: see the log\n".encode(), "text/plain")

    def _refuse(self) -> None:
        self._send(
            Answer(405, b"read-only: GET and HEAD only\n", "text/plain", {"Allow": "GET, HEAD"})
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def version_string(self) -> str:
        return self.server_version  # "collector", not "collector " and Python's version

    def _send(self, answer: Answer, *, body: bool = True) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Every scrape would be a line at INFO; they go to DEBUG.
        logger.debug("%s: %s " + format, self.server.name, self.address_string(), *args)
