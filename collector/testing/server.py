"""The fake's HTTP side: the checks a request passes before its method runs, and faults on demand.

:class:`Gate` is as strict as Kraken where a client can go wrong: ``API-Key`` and ``API-Sign``
checked over the raw body and the requested path; each key's nonce strictly greater than the last
it accepted; each key's decaying call counter (calls made while over the limit still count,
extending the penalty); public calls optionally under a per-IP counter; public endpoints GET only
and private ones POST only; state-changing methods refused and counted. It also holds the
injected :class:`Fault`\\ s. :class:`Server` serves a gate on a socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import struct
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..methods import permission
from ..ratelimit import RateLimit

logger = logging.getLogger(__name__)

FAULT_KINDS = frozenset(
    {
        "http_500",
        "http_502",
        "http_520",
        "slow",
        "reset",
        "truncated",
        "not_json",
        "kraken_error",
        "raw",
    }
)

CLOUDFLARE_PAGE = """<!DOCTYPE html>
<html><head><title>api.kraken.com | {code}: {text}</title></head>
<body><div id="cf-wrapper"><h1>Error {code}</h1><p>{text}</p>
<p>Cloudflare Ray ID: 7d1c2f9a8b3e4f50</p></div></body></html>"""
CLOUDFLARE_TEXT = {
    500: "Internal server error",
    502: "Bad gateway",
    520: "Web server is returning an unknown error",
}


#: What a call adds to the key's counter, as the strictest exchange counts it: the fake keeps its
#: own table rather than the collector's ``methods.COSTLY_METHODS``, so a method the collector
#: under-counts is refused here as it would be there (ccxt counts ClosedOrders 2, and so do we).
COSTS: dict[str, int] = {"Ledgers": 2, "QueryLedgers": 2, "TradesHistory": 2, "ClosedOrders": 2}


@dataclass
class Fault:
    """One injected fault: ``kind`` for the next ``count`` requests (of ``method`` if given)."""

    kind: str
    method: str | None = None
    count: int = 1
    error: str = "EService:Unavailable"
    delay: float = 5.0
    body: bytes = b""
    status: int = 200


class _Counter:
    """Kraken's decaying counter, kept by the exchange."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit, self.clock = limit, clock
        self.level, self.at = 0.0, clock()

    def add(self, cost: float) -> bool:
        """Count a call; False if it took the counter over the maximum (the call is refused)."""
        now = self.clock()
        self.level = max(0.0, self.level - (now - self.at) * self.limit.decay) + cost
        self.at = now
        # A tiny tolerance for float rounding only; the client must really stay under max.
        return self.level <= self.limit.max + 1e-9


class Gate:
    """Keys, nonces, counters and faults: what a request meets before its method runs.

    :param limit: the private counter of each key (None: no limit)
    :param public_limit: a per-IP counter for public calls (None: no limit)
    :param clock: monotonic seconds for the counters
    """

    def __init__(
        self,
        limit: RateLimit | None,
        public_limit: RateLimit | None,
        clock: Callable[[], float],
    ) -> None:
        self.limit = limit
        self.public_limit = public_limit
        self.clock = clock
        self.keys: dict[str, bytes] = {}
        #: the permissions of each key added with some (the others have all)
        self.permissions: dict[str, frozenset[str]] = {}
        self.last_nonce: dict[str, int] = {}
        self.calls: Counter[str] = Counter()  # every request, by method
        self.errors: Counter[str] = Counter()  # every Kraken error string answered
        self.accepted: Counter[str] = Counter()  # private calls that passed every check, by key
        self.spent: Counter[str] = Counter()  # their cost on the key's counter (Ledgers: 2)
        self.state_changing_calls = 0
        #: the last API-Sign values received (so tests can prove they never leak)
        self.signatures: deque[str] = deque(maxlen=10_000)
        #: set when the fake stops: wakes handlers sleeping in a slow fault
        self.stopping = threading.Event()
        self._counters: dict[str, _Counter] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add_key(
        self,
        key: str | None = None,
        secret: str | None = None,
        *,
        permissions: Iterable[str] | None = None,
    ) -> tuple[str, str]:
        """Register an API key (a fresh random pair when none is given); returns (key, secret).

        :param permissions: the key's permissions, as Kraken names them (``"Query Funds"``,
            ``"Query Ledger Entries"``, ... see :data:`collector.methods.COLLECTOR_PERMISSIONS`);
            a private method that needs another is answered ``EGeneral:Permission denied``, as
            Kraken does. None (default): every permission.
        """
        key = key or base64.b64encode(os.urandom(42)).decode()
        secret = secret or base64.b64encode(os.urandom(64)).decode()
        with self._lock:
            self.keys[key] = base64.b64decode(secret)
            if permissions is None:
                self.permissions.pop(key, None)
            else:
                self.permissions[key] = frozenset(permissions)
        return key, secret

    def counter_level(self, key: str) -> float:
        """The key's call counter now, as the exchange keeps it (0 before its first call)."""
        with self._lock:
            counter = self._counters.get(key)
            if counter is None:
                return 0.0
            elapsed = self.clock() - counter.at
            return max(0.0, counter.level - elapsed * counter.limit.decay)

    def inject(
        self, kind: str, *, method: str | None = None, count: int = 1, **options: Any
    ) -> None:
        """Make the next ``count`` requests (of ``method``, if given) fail with ``kind``.

        Kinds: ``http_500``, ``http_502``, ``http_520`` (HTML pages), ``slow`` (``delay`` seconds,
        default 5, then a normal answer), ``reset`` (connection reset, no answer), ``truncated``
        (cut JSON), ``not_json`` (HTML with status 200), ``kraken_error`` (``error=`` any string),
        ``raw`` (``body=`` any bytes, with ``status=``, default 200).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(sorted(FAULT_KINDS))}")
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        with self._lock:
            self._faults.append(Fault(kind, method, count, **options))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, method: str) -> Fault | None:
        """The fault the next request of ``method`` meets, if any (counting it down)."""
        with self._lock:
            for fault in self._faults:
                if fault.method in (None, method):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def count(self, method: str = "", error: str = "") -> None:
        """Count a request of ``method`` and an ``error`` answered."""
        with self._lock:
            if method:
                self.calls[method] += 1
            if error:
                self.errors[error] += 1

    def control(self, action: str, query: dict[str, str]) -> None:
        """``POST /_fake/<action>?...`` from outside: ``fault`` (``kind``, ``method``, ``count``,
        ``error``, ``delay``, ``status``, ``body``).

        :raises ValueError: an unknown action or a bad value
        """
        if action != "fault":
            raise ValueError(f"unknown control {action!r}")
        options: dict[str, Any] = {k: query[k] for k in ("method", "error") if k in query}
        if "delay" in query:
            options["delay"] = float(query["delay"])
        if "status" in query:
            options["status"] = int(query["status"])
        if "body" in query:
            options["body"] = query["body"].encode()
        self.inject(query.get("kind", ""), count=int(query.get("count", 1)), **options)

    def check_private(
        self, key: str | None, sign: str | None, path: str, body: bytes
    ) -> str | None:
        """The error a private request earns before its method runs, or None."""
        form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        secret = self.keys.get(key or "")
        if secret is None:
            return "EAPI:Invalid key"
        try:
            nonce = int(form.get("nonce", ""))
        except ValueError:
            return "EAPI:Invalid nonce"
        digest = hashlib.sha256(form["nonce"].encode() + body).digest()
        expected = base64.b64encode(
            hmac.new(secret, path.encode() + digest, hashlib.sha512).digest()
        ).decode()
        if sign:
            self.signatures.append(sign)
        if not sign or not hmac.compare_digest(expected, sign):
            return "EAPI:Invalid signature"
        assert key is not None
        with self._lock:
            if not 0 < nonce < 2**64 or nonce <= self.last_nonce.get(key, 0):
                return "EAPI:Invalid nonce"
            self.last_nonce[key] = nonce
            method = path.rsplit("/", 1)[-1]
            units = COSTS.get(method, 1)
            if self.limit is not None:
                counter = self._counters.get(key)
                if counter is None:
                    counter = self._counters[key] = _Counter(self.limit, self.clock)
                if not counter.add(units):
                    return "EAPI:Rate limit exceeded"
            # A key without the method's permission (the key of a rehearsal of going live).
            allowed = self.permissions.get(key)
            needed = permission(path.split("/private/", 1)[-1])
            if allowed is not None and needed is not None and needed not in allowed:
                return "EGeneral:Permission denied"
            self.accepted[key] += 1
            self.spent[key] += units
        return None

    def check_public(self, client_ip: str) -> str | None:
        if self.public_limit is None:
            return None
        with self._lock:
            counter = self._counters.get("ip:" + client_ip)
            if counter is None:
                counter = self._counters["ip:" + client_ip] = _Counter(
                    self.public_limit, self.clock
                )
            return None if counter.add(1) else "EGeneral:Too many requests"

    def refused(self) -> None:
        """A state-changing call was refused."""
        with self._lock:
            self.state_changing_calls += 1


class Server(ThreadingHTTPServer):
    """Serves ``gate`` with ``answer(method, params, private) -> envelope`` for the calls that
    pass its checks."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        gate: Gate,
        answer: Callable[[str, dict[str, str], bool], dict[str, Any]],
    ) -> None:
        self.gate, self.answer = gate, answer
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet; the tests read counters
        logger.debug("fake: " + format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, verb: str) -> None:
        gate = self.server.gate
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:
            # The client went away mid-request (a process killed between its head and its
            # body): a server acts on no request it has not read whole, and neither does Kraken.
            self.close_connection = True
            return
        if split.path.startswith("/_fake/") and verb == "POST":
            return self._control(split.path[7:], dict(parse_qsl(split.query or body.decode())))
        parts = split.path.split("/", 3)
        if len(parts) != 4 or parts[1] != "0" or parts[2] not in ("public", "private"):
            return self._send(404, b"Not Found", "text/plain")
        private = parts[2] == "private"
        method = parts[3]
        gate.count(method)
        if verb != ("POST" if private else "GET"):
            return self._send(405, b"Method Not Allowed", "text/plain")
        fault = gate.take_fault(method)
        if fault is not None and self._fault(fault):
            return
        if private:
            error = gate.check_private(
                self.headers.get("API-Key"), self.headers.get("API-Sign"), split.path, body
            )
            params = dict(parse_qsl(body.decode("latin-1")))
        else:
            error = gate.check_public(self.client_address[0])
            params = dict(parse_qsl(split.query))
        envelope = {"error": [error]} if error else self.server.answer(method, params, private)
        for e in envelope["error"]:
            gate.count(error=e)
        self._send(200, json.dumps(envelope).encode())

    def _fault(self, fault: Fault) -> bool:
        """Answer with ``fault``; False when the request should go on normally afterwards."""
        kind = fault.kind
        if kind.startswith("http_"):
            code = int(kind[5:])
            page = CLOUDFLARE_PAGE.format(code=code, text=CLOUDFLARE_TEXT[code])
            self._send(code, page.encode(), "text/html; charset=UTF-8")
        elif kind == "not_json":
            page = CLOUDFLARE_PAGE.format(code=200, text="Please wait")
            self._send(200, page.encode(), "text/html; charset=UTF-8")
        elif kind == "raw":
            self._send(fault.status, fault.body)
        elif kind == "truncated":
            self._send(200, b'{"error":[],"result":{"XXBTZUSD":{"a":["6400')
        elif kind == "kraken_error":
            self.server.gate.count(error=fault.error)
            self._send(200, json.dumps({"error": [fault.error]}).encode())
        elif kind == "slow":
            self.server.gate.stopping.wait(fault.delay)
            return False
        elif kind == "reset":
            # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        return True

    def _control(self, action: str, query: dict[str, str]) -> None:
        try:
            self.server.gate.control(action, query)
        except (ValueError, TypeError, ArithmeticError) as exc:
            return self._send(400, str(exc).encode(), "text/plain")
        self._send(200, b'{"ok": true}')

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (a timed-out caller); nothing to answer
            self.close_connection = True
