"""``collector.API``: a drop-in for ``krakenex.API`` 2.x that is safe to share between threads.

Same constructor, attributes and methods as krakenex (``key``, ``secret``, ``uri``, ``apiversion``,
``session``, ``response``, ``load_key``, ``json_options``, ``query_public``, ``query_private``,
``close``, and the internals ``_nonce``, ``_sign``, ``_query``). What it does better:

* **Nonces never collide.** ``max(now, last + 1)`` under a lock, in ms by default (``nonce_unit``
  for keys already used at µs or ns), above a ``nonce_floor`` that a restarted process passes in.
* **Private calls arrive in nonce order.** Taking the nonce, signing and sending happen under one
  lock per client, so thread B's nonce N+1 can never overtake thread A's N. Public calls stay
  concurrent.
* **It signs the bytes it sends.** The body is encoded once, signed and sent as those bytes: lists
  are comma-joined (Kraken's convention), ``None`` values are dropped, booleans are ``true``/
  ``false``. The caller's ``data`` dict is never modified.
* **Optional rate limiting** shaped like Kraken's counter (``rate_limit=`` a tier name or a
  :class:`~collector.ratelimit.RateLimit`; ``public_rate_limit=`` for public calls). A call waits
  for budget instead of being refused. Off by default, as in krakenex.
* **Answers are bounded** (``max_response``, 50 MB by default): a larger one is a ``BadResponse``.
* **The timeout bounds the whole call** (connect, headers and body), not each read: a peer that
  answers a byte at a time is cut at the deadline (:mod:`collector.deadline`).
* **Redirects are never followed**: a 3xx would resend the signed request elsewhere. It is an
  :class:`~collector.errors.HTTPStatusError` with its status.
* **The environment is read once per address**, not at every call: the proxy variables,
  ``REQUESTS_CA_BUNDLE`` and ``~/.netrc`` that ``requests`` would read again for each request
  (~0.1 ms of a call) are read at the first call to an address (``session.trust_env`` as in
  requests); a change to them in a running process is not seen. The request sent is the one
  ``session.request`` would send (``tests/test_client_send.py``).
* **HTML error pages don't crash it.** A non-2xx answer raises :class:`~collector.errors.HTTPStatusError`
  (a ``requests.HTTPError``) whose message holds the page's title, and a body that isn't JSON raises
  :class:`~collector.errors.BadResponse` (a ``ValueError``).

Beside the krakenex interface, :meth:`API.call` is the outcome model the collector uses: it returns
a :class:`Reply` or raises one :class:`~collector.errors.RequestError` subclass per failure kind.

Why one module of this length: krakenex's whole interface plus the outcome model, around one send
lock under which the nonce is taken, the body signed and sent; splitting it would put that lock's
parts in different modules.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import ReadTimeoutError

from . import __version__, deadline, defaults
from .auth import KrakenAuth
from .errors import (
    BadResponse,
    ConnectionFailed,
    CredentialsError,
    HTTPStatusError,
    KrakenAPIError,
    NotPermitted,
    RequestTimeout,
)
from .keystate import KeyBudget
from .methods import cost, is_public
from .nonce import NonceSource
from .ratelimit import PUBLIC_DEFAULT, RateLimit, RateLimiter, tier

logger = logging.getLogger(__name__)

RATE_LIMIT_ERROR = "EAPI:Rate limit exceeded"


@dataclass(frozen=True)
class Reply:
    """A successful call: Kraken's ``result`` (``None`` when the answer had none, as an empty
    account's Balance does), the HTTP status and any W-warnings Kraken sent along."""

    method: str
    result: Any
    http_status: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Environment:
    """What requests takes from the environment for one address (``Session.trust_env``)."""

    proxies: dict[str, str]
    verify: str | None
    netrc: tuple[str, str] | None


_NO_ENVIRONMENT = _Environment({}, None, None)


def encode_params(data: Mapping[str, Any] | None) -> str:
    """Url-encode request parameters once, the way both the signature and the wire see them.

    ``None`` values are dropped, lists and tuples are comma-joined, booleans become
    ``true``/``false``; everything else goes through ``str``.
    """
    if not data:
        return ""
    pairs = []
    for name, value in data.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        pairs.append((name, value))
    return urllib.parse.urlencode(pairs)


def excerpt(response: requests.Response, limit: int = 200) -> str:
    """A short, one-line description of a body: an HTML page's title, else its first characters."""
    text = response.content[:65536].decode("utf-8", "replace")
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if match:
        text = html.unescape(match.group(1))
    elif "<" in text[:100] and "html" in text[:500].lower():
        text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class API:
    """Maintains a single session between this machine and Kraken; safe to share between threads.

    :param key: (optional) the API key
    :param secret: (optional) the API secret (base64)
    :param rate_limit: (optional) a tier name (``"starter"``, ``"intermediate"``, ``"pro"``), a
        :class:`~collector.ratelimit.RateLimit`, or the :class:`~collector.ratelimit.RateLimiter`
        to use; private calls then wait for budget
    :param public_rate_limit: (optional) the same for public calls; ``True`` means Kraken's ~1/s
    :param nonce_unit: ``"ms"`` (default, as krakenex and ccxt), ``"us"`` or ``"ns"``
    :param nonce_floor: every nonce is greater than this (the last one a previous process used)
    :param timeout: default timeout in seconds for every call (krakenex: none)
    :param max_response: the largest answer read, in bytes (default 50 MB; 0: no limit)
    :param clock: wall clock in integer ns, for nonces; a seam for tests
    :param cancel: when this event is set, calls waiting for rate-limit budget give up with
        :class:`~collector.errors.Cancelled` (a service that is stopping)
    :param uri: Kraken's address (krakenex's ``uri``)
    :param permit: (optional) private calls are sent only while it returns True
    :param shared: (optional) the key's budget shared with other processes (see :attr:`shared`)
    """

    def __init__(
        self,
        key: str = "",
        secret: str = "",
        *,
        rate_limit: str | RateLimit | RateLimiter | None = None,
        public_rate_limit: RateLimit | RateLimiter | bool | None = None,
        nonce_unit: str = defaults.NONCE_UNIT,
        nonce_floor: int = 0,
        timeout: float | None = None,
        max_response: int = defaults.MAX_RESPONSE,
        clock: Callable[[], int] = time.time_ns,
        cancel: threading.Event | None = None,
        uri: str = defaults.KRAKEN_URL,
        permit: Callable[[], bool] | None = None,
        shared: KeyBudget | None = None,
    ) -> None:
        self.key = key
        self.secret = secret
        self.uri = uri
        self.apiversion = "0"
        self.session = requests.Session()
        self.session.headers.update(
            {"User-Agent": f"collector/{__version__} (krakenex-compatible)"}
        )
        adapter = deadline.DeadlineAdapter(pool_connections=4, pool_maxsize=defaults.POOL_SIZE)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.response: requests.Response | None = None
        self.timeout = timeout
        self.max_response = max_response
        self.nonces = NonceSource(nonce_unit, nonce_floor, clock)
        self.limiter = _limiter(rate_limit)
        if public_rate_limit is True:
            public_rate_limit = PUBLIC_DEFAULT
        self.public_limiter = _limiter(
            None if isinstance(public_rate_limit, bool) else public_rate_limit
        )
        self.cancel = cancel
        #: when set, private calls are sent only while it returns True (checked under the private
        #: lock, right before the nonce is taken): an account this process holds the lease on
        self.permit = permit
        #: when set, the key's counter and nonce sequence shared with the other processes using
        #: the key on this machine (:class:`collector.keystate.KeyBudget`): each private call
        #: takes its turn under it
        self.shared = shared
        self._json_options: dict[str, Any] = {}
        self._private_lock = threading.Lock()
        self._auth_cache: tuple[str, str, KrakenAuth] | None = None
        self._watches: set[deadline.Watch] = set()
        self._watch_lock = threading.Lock()
        #: what the environment adds to a request (see :meth:`_environment`), for one address
        self._environment_of: tuple[str, _Environment] | None = None

    # -- krakenex interface -------------------------------------------------------------------

    def json_options(self, **kwargs: Any) -> API:
        """Set keyword arguments passed to JSON decoding; returns this instance for chaining."""
        self._json_options = kwargs
        return self

    def close(self) -> None:
        """Close this session."""
        self.session.close()

    def __enter__(self) -> API:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_key(self, path: str) -> None:
        """Load key and secret from a file: the key on the first line, the secret on the second."""
        with open(path) as f:
            self.key = f.readline().strip()
            self.secret = f.readline().strip()

    def query_public(
        self, method: str, data: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """A public query (GET); returns the decoded JSON, Kraken's ``error`` list included.

        :raises requests.HTTPError: on a non-2xx status (:class:`~collector.errors.HTTPStatusError`)
        """
        return self._decode(self._send_public(method, data, timeout), method)

    def query_private(
        self, method: str, data: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """A private query (signed POST); returns the decoded JSON, Kraken's ``error`` list included.

        :raises CredentialsError: without a key and secret
        :raises requests.HTTPError: on a non-2xx status (:class:`~collector.errors.HTTPStatusError`)
        """
        return self._send_private(method, data, timeout)[1]

    def _nonce(self) -> int:
        """The next nonce: strictly greater than every one this client issued, and the floor."""
        return self.nonces.next()

    def _sign(self, data: Mapping[str, Any], urlpath: str) -> str:
        """Sign ``data`` (holding ``nonce``) for ``urlpath`` exactly as krakenex does."""
        postdata = urllib.parse.urlencode(data)
        return self._auth().signature(urlpath, data["nonce"], postdata)

    def _query(
        self,
        urlpath: str,
        data: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Low-level query: GET for public paths, POST otherwise, sent as given. Prefer
        :meth:`query_public` / :meth:`query_private`, which take nonces and sign."""
        method = urlpath.rsplit("/", 1)[-1]
        body = None if "/public/" in urlpath else encode_params(data)
        query = encode_params(data) if body is None else ""
        response = self._http(method, urlpath, query, body, dict(headers or {}), None, timeout)
        return self._decode(response, method)

    # -- the collector's outcome model ---------------------------------------------------------

    def call(
        self,
        method: str,
        data: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        decode: Callable[[bytes], dict[str, Any] | None] | None = None,
    ) -> Reply:
        """Call ``method`` (public or private, decided by the method) and return its result.

        ``decode``, for a public call: the body's bytes (read through the size cap) to the
        envelope a dataset reads its typed way, or None to decode them the general way; the
        envelope is checked the same way after either (a dataset's one seam, issue 29).

        :raises KrakenAPIError: the answer held E-errors (after ``EAPI:Rate limit exceeded`` the
            client sends nothing for the key until its counter has drained)
        :raises HTTPStatusError, RequestTimeout, ConnectionFailed, BadResponse: as their names say
        """
        if is_public(method):
            response = self._send_public(method, data, timeout)
            payload = decode(response.content) if decode is not None else None
            if payload is None:
                payload = self._decode(response, method)
        else:
            response, payload = self._send_private(method, data, timeout)
        status = response.status_code
        errors = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise BadResponse(
                f"{method}: answer is not a Kraken envelope (no 'error' list)",
                method=method,
                http_status=status,
                reason="answer is not a Kraken envelope",
            )
        hard = [e for e in errors if not e.startswith("W")]
        if hard:
            reason = ", ".join(hard)
            raise KrakenAPIError(
                f"{method}: {reason}",
                method=method,
                http_status=status,
                errors=errors,
                reason=reason,
            )
        return Reply(method, payload.get("result"), status, errors)

    # -- internals -----------------------------------------------------------------------------

    def _auth(self) -> KrakenAuth:
        # key and secret are plain attributes (krakenex lets users set them at any time), so the
        # auth object is rebuilt whenever they change.
        cached = self._auth_cache
        if cached is None or cached[0] != self.key or cached[1] != self.secret:
            cached = (self.key, self.secret, KrakenAuth(self.key, self.secret))
            self._auth_cache = cached
        return cached[2]

    def _send_public(
        self, method: str, data: Mapping[str, Any] | None, timeout: float | None
    ) -> requests.Response:
        if self.public_limiter:
            self.public_limiter.acquire(1, self.cancel)
        urlpath = f"/{self.apiversion}/public/{method}"
        return self._http(method, urlpath, encode_params(data), None, {}, None, timeout)

    def _send_private(
        self, method: str, data: Mapping[str, Any] | None, timeout: float | None
    ) -> tuple[requests.Response, Any]:
        """Send a private call and decode its answer: ``(response, payload)``."""
        auth = self._auth()
        if data and "nonce" in data:
            raise CredentialsError("do not pass 'nonce' in data; the client takes it")
        params = encode_params(data)
        urlpath = f"/{self.apiversion}/private/{method}"
        # One lock from budget to answer (and, with `shared`, one turn with the key among all
        # processes using it): nonces reach the exchange in the order they were taken, and the
        # budget is counted as close as possible to the moment the exchange counts it.
        with self._private_lock, self._turn():
            if self.limiter:
                self.limiter.acquire(cost(method), self.cancel)
            if self.permit is not None and not self.permit():
                raise NotPermitted(f"{method}: this process does not hold the account's lease")
            nonce = self._nonce()
            body = f"nonce={nonce}&{params}" if params else f"nonce={nonce}"
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            response = self._http(method, urlpath, "", body, headers, auth, timeout)
            payload = self._decode(response, method)
            errors = payload.get("error") if isinstance(payload, dict) else None
            if self.limiter and isinstance(errors, list):
                if RATE_LIMIT_ERROR in errors:
                    # Before the next call of any thread (or process): it must wait the drain.
                    wait = self.limiter.refused(cost(method))
                    logger.warning(
                        "Kraken refused a call for the key's rate limit (%d in a row); no private "
                        "call for %.1fs while its counter drains",
                        self.limiter.refusals,
                        wait,
                    )
                elif not any(isinstance(e, str) and e.startswith("E") for e in errors):
                    self.limiter.accepted()
            return response, payload

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        if self.shared is None:
            return contextlib.nullcontext()
        return self.shared.turn(self.limiter, self.nonces)

    def _http(
        self,
        method: str,
        urlpath: str,
        query: str,
        body: str | None,
        headers: dict[str, str],
        auth: KrakenAuth | None,
        timeout: float | None,
    ) -> requests.Response:
        url = self.uri + urlpath + (f"?{query}" if query else "")
        if timeout is None:
            timeout = self.timeout
        if self.cancel is not None and self.cancel.is_set() and timeout is not None:
            timeout = min(timeout, defaults.STOP_GRACE)  # stopping: no call holds it up long
        started = time.monotonic()
        # The timeout bounds the whole call (connect, headers, body), not each read: a peer that
        # answers a byte at a time is cut at the deadline (collector.deadline). (Entered and left
        # by hand, not through an ExitStack: a few microseconds of every call.)
        watching = deadline.watch(timeout) if timeout is not None else None
        watch = watching.__enter__() if watching is not None else None
        try:
            if watch is not None:
                with self._watch_lock:
                    self._watches.add(watch)
            try:
                # Never a redirect: a 3xx would resend the signed request (API-Key, API-Sign, the
                # body) to wherever it points, and store another host's answer as Kraken's.
                response = self._send(url, body, headers, auth, timeout)
                self._read_body(response, method)
            except requests.RequestException as exc:
                chain = _chain(exc)
                # requests reports a read that timed out mid-body as a ConnectionError.
                if (
                    (watch is not None and watch.expired)
                    or isinstance(exc, requests.Timeout)
                    or any(isinstance(e, ReadTimeoutError | TimeoutError) for e in chain)
                ):
                    raise _timeout(method, timeout, exc) from exc
                reason = _transport_reason(chain, urllib.parse.urlsplit(url).hostname or url)
                raise ConnectionFailed(
                    f"{method}: {reason} ({_innermost(chain)})", method=method, reason=reason
                ) from exc
            except BadResponse:
                if watch is not None and watch.finish():
                    raise _timeout(method, timeout, None) from None
                raise
            if watch is not None and watch.finish():
                # Cut at the deadline: what was read may look complete (a shut-down socket reads
                # as the end of a body without a length), but it is not an answer.
                raise _timeout(method, timeout, None)
        finally:
            if watch is not None:
                with self._watch_lock:
                    self._watches.discard(watch)
            if watching is not None:
                watching.__exit__(None, None, None)
        self.response = response
        # Path, status and time only: a private call's body and headers carry the nonce, the
        # signature and any otp, and never go to a log.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> HTTP %s in %.3fs",
                "GET" if body is None else "POST",
                urlpath,
                response.status_code,
                time.monotonic() - started,
            )
        if response.status_code not in (200, 201, 202):
            error = HTTPStatusError(
                f"{method}: HTTP {' '.join(filter(None, (str(response.status_code), response.reason)))}"
                + _location(response)
                + (f": {text}" if (text := excerpt(response)) else ""),
                method=method,
                http_status=response.status_code,
                reason=f"HTTP {response.status_code}",
            )
            error.response = response
            raise error
        return response

    def _send(
        self,
        url: str,
        body: str | None,
        headers: dict[str, str],
        auth: KrakenAuth | None,
        timeout: float | None,
    ) -> requests.Response:
        """Send one request through :attr:`session`, as its ``get`` (``body`` None) or ``post``
        would, redirects off and the body streamed.

        The same request, prepared in fewer steps: ``Session.request`` spends ~0.2 ms a call
        (a third of a call to a peer on the same machine) reading the environment's proxy
        variables and ``~/.netrc`` again and merging empty settings through typing protocol
        checks. Here the session's own headers, cookies, auth, hooks, proxies, ``verify`` and
        ``cert`` are merged as requests merges them, at every call; what the environment adds
        (with ``trust_env``) is read once per address (:meth:`_environment`). A session that is
        not plain ``requests.Session`` there (a subclass that prepares or merges its own way) or
        has ``params`` goes the whole way through ``Session.request``."""
        session = self.session
        verb = "GET" if body is None else "POST"
        data = None if body is None else body.encode("ascii")
        kind = type(session)
        if (
            session.params
            or kind.request is not requests.Session.request
            or kind.prepare_request is not requests.Session.prepare_request
            or kind.merge_environment_settings is not requests.Session.merge_environment_settings
        ):
            return session.request(
                verb,
                url,
                data=data,
                headers=headers,
                auth=auth,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            )
        trust = session.trust_env
        environment = self._environment(url) if trust else _NO_ENVIRONMENT
        # Session.prepare_request's steps, in its order, without its empty merges.
        merged = requests.structures.CaseInsensitiveDict(session.headers)
        merged.update(headers)
        for name in [k for k, v in merged.items() if v is None]:
            del merged[name]
        sign: Any = auth
        if trust and not sign and not session.auth:
            sign = environment.netrc
        sign = sign if sign is not None else session.auth
        jar = requests.cookies.merge_cookies(requests.cookies.RequestsCookieJar(), session.cookies)
        request = requests.PreparedRequest()
        request.prepare_method(verb)
        request.prepare_url(url, None)
        request.prepare_headers(merged)
        request.prepare_cookies(jar)
        request.prepare_body(data or {}, None, None)
        request.prepare_auth(sign, url)
        request.prepare_hooks(requests.hooks.default_hooks() | (session.hooks or {}))
        # Session.merge_environment_settings: the environment's proxies override the session's.
        proxies = {**session.proxies, **environment.proxies}
        verify = environment.verify if environment.verify is not None else session.verify
        return session.send(
            request,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
            verify=verify,
            cert=session.cert,
            proxies={k: v for k, v in proxies.items() if v is not None},
        )

    def _environment(self, url: str) -> _Environment:
        """What the environment adds to a request to ``url``'s address (proxies, CA bundle,
        ``~/.netrc`` login), as requests reads it; read once per address, not at every call (a
        change to those variables in a running process is not seen: set the session's
        ``proxies``/``verify``, or make a new client)."""
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        known = self._environment_of
        if known is not None and known[0] == origin:
            return known[1]
        found = _Environment(
            proxies=requests.utils.get_environ_proxies(url, no_proxy=None),
            verify=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            netrc=requests.utils.get_netrc_auth(url),
        )
        self._environment_of = (origin, found)
        return found

    def cut_calls(self, within: float) -> None:
        """Cut the calls in flight ``within`` seconds from now, unless they end sooner (a
        stopping service gives them a short grace, not their whole timeout); they end as
        :class:`~collector.errors.RequestTimeout`."""
        with self._watch_lock:
            watches = list(self._watches)
        for watch in watches:
            deadline.REAPER.shorten(watch, within)

    def _read_body(self, response: requests.Response, method: str) -> None:
        """Read the body, but no more than ``max_response`` bytes (decoded): a huge or endless
        answer becomes a :class:`BadResponse` instead of filling memory.

        The cap sits between ``requests`` and the socket (``response.raw``), so the body is read
        the ordinary way and ``response.content`` works afterwards, as krakenex users expect."""
        if self.max_response:
            response.raw = _CappedStream(
                response.raw, self.max_response, method, response.status_code
            )
        try:
            response.content  # noqa: B018 - reads the body (through the cap) and keeps it
        finally:
            response.close()  # back to the pool when read to the end; dropped when cut short

    def _decode(self, response: requests.Response, method: str) -> Any:
        try:
            # Strictly UTF-8 (RFC 8259): requests would guess another encoding for a corrupt body
            # and hand back mojibake as if it were an answer.
            return json.loads(response.content.decode("utf-8-sig"), **self._json_options)
        except (ValueError, RecursionError) as exc:
            reason = (
                "answer is nested too deeply"
                if isinstance(exc, RecursionError)
                else "answer is not JSON"
            )
            raise BadResponse(
                f"{method}: {reason} (HTTP {response.status_code}, {type(exc).__name__}): "
                f"{excerpt(response)!r}",
                method=method,
                http_status=response.status_code,
                reason=reason,
            ) from None


class _CappedStream:
    """A response's raw stream that raises :class:`BadResponse` past ``limit`` decoded bytes."""

    def __init__(self, raw: Any, limit: int, method: str, status: int) -> None:
        self._raw, self._limit, self._method, self._status = raw, limit, method, status

    def stream(self, amt: int = defaults.READ_CHUNK, decode_content: bool = True) -> Any:
        size = 0
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            size += len(chunk)
            if size > self._limit:
                reason = f"answer larger than {self._limit:,} bytes"
                raise BadResponse(
                    f"{self._method}: {reason}",
                    method=self._method,
                    http_status=self._status,
                    reason=reason,
                )
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _timeout(method: str, timeout: float | None, exc: BaseException | None) -> RequestTimeout:
    reason = "timed out" if timeout is None else f"timed out after {timeout:g} s"
    waiting = "to connect" if isinstance(exc, requests.ConnectTimeout) else "for the answer"
    return RequestTimeout(f"{method}: {reason} waiting {waiting}", method=method, reason=reason)


def _location(response: requests.Response) -> str:
    """`` to HOST`` for a redirect (never followed): where it pointed, host only."""
    if not response.is_redirect:
        return ""
    target = urllib.parse.urlsplit(response.headers.get("Location", ""))
    return f" (a redirect to {target.hostname or '?'}, not followed)"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it: causes, contexts, urllib3's ``reason`` and
    exceptions passed as arguments (requests wraps urllib3, which wraps the socket's error)."""
    out: list[BaseException] = []
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        for behind in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args):
            if isinstance(behind, BaseException):
                todo.append(behind)
    return out


#: What the resolver says when a name does not resolve (glibc, macOS, Windows).
_NOT_RESOLVED = (
    "Name or service not known",
    "Temporary failure in name resolution",
    "nodename nor servname provided",
    "No address associated with hostname",
    "getaddrinfo failed",
)


def _transport_reason(chain: list[BaseException], host: str) -> str:
    """Why a request got no answer, as a short phrase (the cases a person can do something about
    first; the innermost exception's type for the rest)."""
    if any(
        # by name: urllib3 1.26, which requests still allows, has no NameResolutionError
        type(e).__name__ == "NameResolutionError"
        or isinstance(e, socket.gaierror)
        or any(text in str(e) for text in _NOT_RESOLVED)
        for e in chain
    ):
        return f"cannot resolve {host}"
    for kind, reason in (
        (ConnectionRefusedError, "connection refused"),
        # before ConnectionResetError, which it subclasses: closed without a word, not reset
        (http.client.RemoteDisconnected, "connection closed without an answer"),
        (ConnectionResetError, "connection reset"),
        (ssl.SSLError, "TLS failed"),
        (requests.exceptions.ChunkedEncodingError, "answer cut short"),
        (requests.exceptions.ProxyError, "proxy failed"),
    ):
        if any(isinstance(e, kind) for e in chain):
            return reason
    return f"connection failed ({type(chain[-1]).__name__})"


def _limiter(limit: RateLimit | RateLimiter | str | None) -> RateLimiter | None:
    """The limiter given, or one made for the limit given, or None (no limit, as krakenex)."""
    if not limit:
        return None
    if isinstance(limit, RateLimiter):
        return limit
    return RateLimiter(tier(limit))


def _innermost(chain: list[BaseException]) -> str:
    """The socket-level error behind a failure (``ConnectionRefusedError: [Errno 111] ...``): the
    short technical tail of a message; urllib3's wrappers repeat the URL and add nothing."""
    lowest = [
        e for e in chain if isinstance(e, OSError) and not isinstance(e, requests.RequestException)
    ]
    exc = lowest[-1] if lowest else chain[0]
    return f"{type(exc).__name__}: {_short(exc, 200)}"
