"""The client's own preparation of a request sends what ``requests.Session.request`` sends.

``API._send`` prepares a request in fewer steps than ``Session.request`` (the environment read
once per address, no empty merges). These tests send the same calls both ways to a real server
that records each request as it arrived, and compare: method, path and query, headers, body.
The other way is forced with a session whose ``request`` is its own (which the client leaves
to it).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import collector

SECRET = "a2V5IGZvciB0ZXN0cw=="
OK = json.dumps({"error": [], "result": {"unixtime": 1}}).encode()


class _Through(requests.Session):
    """A session whose ``request`` is its own: the client sends through ``Session.request``."""

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return super().request(*args, **kwargs)


@contextlib.contextmanager
def recorder() -> Iterator[tuple[str, list[dict]]]:
    """A server answering every request with ``OK``; yields its URL and what it received."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(
                {
                    "line": self.requestline,
                    "headers": sorted((k.lower(), v) for k, v in self.headers.items()),
                    "body": body,
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(OK)))
            self.send_header("Set-Cookie", "__cf_bm=abc; Path=/")
            self.end_headers()
            self.wfile.write(OK)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def client(url: str, through: bool) -> collector.API:
    api = collector.API("key", SECRET, uri=url, timeout=10)
    if through:
        api.session.close()
        api.session = _Through()
        api.session.headers.update({"User-Agent": "collector-test"})
    else:
        api.session.headers.update({"User-Agent": "collector-test"})
    return api


def calls(api: collector.API) -> None:
    """The calls both ways send: public with parameters of every kind, then private."""
    api.session.headers["X-Extra"] = "1"
    api.session.auth = None
    api.call("Time")
    api.call("Trades", {"pair": "XBTUSD", "since": 5, "skip": None, "flag": True})
    api.call("OHLC", {"pair": ["XBTUSD", "ETHUSD"], "interval": 60, "note": "a b/é&="})
    api.call("Time")  # with the cookie the first answers set
    api.call("Balance")
    api.call("Ledgers", {"asset": "XXBT,ZUSD", "ofs": 50})


def comparable(request: dict) -> dict:
    """A request without what differs by design between two private calls (nonce, signature)."""
    body = b"&".join(part for part in request["body"].split(b"&") if not part.startswith(b"nonce="))
    headers = [(k, v) for k, v in request["headers"] if k != "api-sign"]
    return {"line": request["line"], "headers": headers, "body": body}


def test_the_prepared_request_is_the_one_session_request_sends() -> None:
    with recorder() as (url, seen):
        with client(url, through=False) as ours:
            calls(ours)
        mine = [comparable(r) for r in seen]
        seen.clear()
        with client(url, through=True) as theirs:
            calls(theirs)
        reference = [comparable(r) for r in seen]
    assert len(mine) == len(reference) == 6
    assert mine == reference
    assert ("cookie", "__cf_bm=abc") in dict.fromkeys(mine[3]["headers"])
    assert mine[1]["line"].startswith("GET /0/public/Trades?pair=XBTUSD&since=5&flag=true HTTP/1.1")
    assert mine[4]["line"] == "POST /0/private/Balance HTTP/1.1"
    assert ("api-key", "key") in mine[4]["headers"]


def test_session_auth_and_hooks_are_applied_as_requests_applies_them() -> None:
    hooked: list[int] = []
    with recorder() as (url, seen), client(url, through=False) as api:
        api.session.auth = ("user", "pass")
        api.session.hooks["response"].append(lambda r, **kw: hooked.append(r.status_code))
        api.call("Time")  # a public call takes the session's auth
        api.call("Balance")  # a private one its own signature, as requests merges them
    assert hooked == [200, 200]
    assert ("authorization", "Basic dXNlcjpwYXNz") in seen[0]["headers"]
    assert not any(k == "authorization" for k, _ in seen[1]["headers"])


def test_the_environments_proxy_is_used_and_read_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A proxy named in the environment carries the calls (the recorder plays it: a request
    through a proxy names the whole URL); the variable is read at the first call to an
    address, so changing it later changes nothing for that client."""
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # none: no login added
    with recorder() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        with collector.API(uri="http://kraken.invalid", timeout=10) as api:
            assert api.call("Time").result == {"unixtime": 1}
            monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
            assert api.call("Time").result == {"unixtime": 1}
    assert [r["line"] for r in seen] == ["GET http://kraken.invalid/0/public/Time HTTP/1.1"] * 2


def test_without_trust_env_the_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    with recorder() as (url, seen):
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail every call
        with collector.API(uri=url, timeout=10) as api:
            api.session.trust_env = False
            assert api.call("Time").result == {"unixtime": 1}
    assert [r["line"] for r in seen] == ["GET /0/public/Time HTTP/1.1"]
