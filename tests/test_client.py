"""collector.API against the strict fake: the krakenex interface, and what it does better."""

from __future__ import annotations

import decimal
import threading
from collections.abc import Callable

import pytest
import requests

import collector
from collector.errors import (
    BadResponse,
    ConnectionFailed,
    CredentialsError,
    HTTPStatusError,
    KrakenAPIError,
    RequestTimeout,
)
from collector.ratelimit import RateLimit
from collector.testing.fake_exchange import FakeKraken


def run_threads(n: int, target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait()
        target(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


# -- the krakenex interface ------------------------------------------------------------------


def test_constructor_and_attributes_match_krakenex() -> None:
    api = collector.API("k", "c2VjcmV0")
    assert (api.key, api.secret, api.uri, api.apiversion) == (
        "k",
        "c2VjcmV0",
        "https://api.kraken.com",
        "0",
    )
    assert isinstance(api.session, requests.Session)
    assert api.response is None
    assert collector.API().key == "" and collector.API().secret == ""


def test_load_key_reads_key_then_secret(tmp_path, keypair, fake) -> None:
    path = tmp_path / "kraken.key"
    path.write_text(f"{keypair[0]}\n{keypair[1]}\n")
    api = collector.API()
    api.load_key(str(path))
    assert (api.key, api.secret) == keypair
    api.uri = fake.url
    assert api.query_private("Balance")["error"] == []


def test_context_manager_closes_the_session(fake) -> None:
    with collector.API() as api:
        api.uri = fake.url
        assert api.query_public("Time")["error"] == []
        closed: list[bool] = []
        api.session.close = lambda: closed.append(True)  # observe the close, the session is real
    assert closed == [True]


def test_query_public_is_a_get_with_a_query_string(api, fake) -> None:
    answer = api.query_public("Ticker", {"pair": "XBTUSD"})
    assert answer["error"] == [] and list(answer["result"]) == ["XXBTZUSD"]
    assert api.response.request.method == "GET"
    assert api.response.request.url.endswith("/0/public/Ticker?pair=XBTUSD")
    assert api.response.request.body is None


def test_query_private_is_a_signed_post(api, fake, keypair) -> None:
    answer = api.query_private("Balance")
    assert answer["result"]["XXBT"] == fake.balances()["XXBT"]
    sent = api.response.request
    assert sent.method == "POST"
    assert sent.headers["API-Key"] == keypair[0]
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.body.startswith(b"nonce=")
    assert fake.accepted[keypair[0]] == 1


def test_json_options_are_passed_to_decoding(api) -> None:
    answer = api.json_options(parse_float=decimal.Decimal).query_public(
        "Trades", {"pair": "XBTUSD"}
    )
    assert isinstance(answer["result"]["XXBTZUSD"][0][2], decimal.Decimal)


def test_kraken_error_list_is_returned_like_krakenex(api) -> None:
    assert api.query_public("Ticker", {"pair": "NOPE"}) == {"error": ["EQuery:Unknown asset pair"]}


def test_private_call_without_key_is_a_clear_error(fake) -> None:
    api = collector.API()
    api.uri = fake.url
    with pytest.raises(CredentialsError, match="needs an API key and secret"):
        api.query_private("Balance")
    assert fake.calls["Balance"] == 0


def test_non_2xx_raises_requests_httperror_with_the_page_title(api, fake) -> None:
    fake.inject("http_520")
    with pytest.raises(requests.HTTPError) as info:
        api.query_public("Time")
    assert isinstance(info.value, HTTPStatusError)
    assert info.value.http_status == 520
    assert info.value.response.status_code == 520
    assert "520: Web server is returning an unknown error" in str(info.value)
    assert "<html" not in str(info.value)


# -- better than krakenex ---------------------------------------------------------------------


def test_threads_sharing_one_client_never_get_invalid_nonce(api, fake, keypair) -> None:
    failures: list[object] = []

    def work(i: int) -> None:
        for _ in range(40):
            answer = api.query_private("Balance")
            if answer["error"]:
                failures.append(answer["error"])

    run_threads(8, work)
    assert failures == []
    assert fake.errors["EAPI:Invalid nonce"] == 0
    assert fake.accepted[keypair[0]] == 320


def test_public_calls_stay_concurrent_while_a_private_call_is_in_flight(api, fake) -> None:
    fake.inject("slow", method="Balance", delay=1.5)
    done = threading.Event()
    slow = threading.Thread(target=lambda: (api.query_private("Balance"), done.set()))
    slow.start()
    try:
        # The slow private call holds the private lock; public calls must not queue behind it.
        while fake.calls["Balance"] == 0:
            threading.Event().wait(0.005)
        assert api.query_public("Time")["error"] == []
        assert not done.is_set()
    finally:
        slow.join(10)
    assert done.is_set()


def test_nonce_floor_makes_a_restarted_client_start_above_it(fake, keypair) -> None:
    first = collector.API(*keypair)
    first.uri = fake.url
    first.query_private("Balance")
    # A second process whose clock is an hour behind, told the first one's high-water mark.
    behind = collector.API(
        *keypair,
        nonce_floor=first.nonces.last,
        clock=lambda: (fake.last_nonce[keypair[0]] - 3_600_000) * 10**6,
    )
    behind.uri = fake.url
    assert behind.query_private("Balance")["error"] == []
    assert fake.last_nonce[keypair[0]] == first.nonces.last + 1


def test_microsecond_unit(fake, keypair) -> None:
    api = collector.API(*keypair, nonce_unit="us")
    api.uri = fake.url
    api.query_private("Balance")
    assert fake.last_nonce[keypair[0]] > 10**15  # µs since 1970 have 16 digits, ms 13


def test_signs_exactly_what_it_sends_with_lists_and_none(api, fake) -> None:
    data = {"pair": ["XBTUSD", "ETHUSD"], "asset": None, "trades": True}
    snapshot = {"pair": ["XBTUSD", "ETHUSD"], "asset": None, "trades": True}
    answer = api.query_private("Balance", data)
    assert answer["error"] == []
    assert data == snapshot  # not mutated, no nonce added
    body = api.response.request.body.decode()
    assert body.endswith("&pair=XBTUSD%2CETHUSD&trades=true")
    assert "asset" not in body
    ticker = api.query_public("Ticker", {"pair": ["XBTUSD", "ETHUSD"]})
    assert sorted(ticker["result"]) == ["XETHZUSD", "XXBTZUSD"]


def test_krakenex_fails_on_the_same_list_input(fake, keypair) -> None:
    # The reference failure this client fixes: krakenex signs one encoding and sends another.
    import krakenex

    k = krakenex.API(*keypair)
    k.uri = fake.url
    assert k.query_private("Balance", {"pair": ["XBTUSD", "ETHUSD"]})["error"] == [
        "EAPI:Invalid signature"
    ]


def test_rate_limit_waits_instead_of_being_refused() -> None:
    fast = RateLimit(max=5, decay=25)  # Kraken's shape, sped up so the test is quick
    with FakeKraken(tier=fast) as fake:
        key, secret = fake.add_key()
        limited = collector.API(key, secret, rate_limit=fast)
        limited.uri = fake.url
        errors: list[list[str]] = []
        run_threads(
            6, lambda i: errors.extend(limited.query_private("Balance")["error"] for _ in range(10))
        )
        assert [e for e in errors if e] == []
        assert fake.errors["EAPI:Rate limit exceeded"] == 0
        assert fake.accepted[key] == 60

        unlimited = collector.API(key, secret)  # krakenex's behaviour: no limiter
        unlimited.uri = fake.url
        refused = [unlimited.query_private("Balance")["error"] for _ in range(30)]
        assert ["EAPI:Rate limit exceeded"] in refused


def test_ledgers_cost_two_on_both_sides() -> None:
    fast = RateLimit(max=4, decay=2)
    with FakeKraken(tier=fast) as fake:
        key, secret = fake.add_key()
        api = collector.API(key, secret, rate_limit=fast)
        api.uri = fake.url
        api.call("Ledgers")
        assert api.limiter.level() == pytest.approx(2, abs=0.1)
        api.call("Balance")
        assert api.limiter.level() == pytest.approx(3, abs=0.1)
        assert fake.errors["EAPI:Rate limit exceeded"] == 0


def test_public_budget_is_separate_from_the_private_one(fake, keypair) -> None:
    api = collector.API(
        *keypair,
        rate_limit=RateLimit(max=20, decay=1),
        public_rate_limit=RateLimit(max=4, decay=0.01),
    )
    api.uri = fake.url
    for _ in range(3):
        api.call("Time")
    assert api.public_limiter.level() == pytest.approx(3, abs=0.05)
    assert api.limiter.level() == 0
    api.call("Balance")
    assert api.limiter.level() == pytest.approx(1, abs=0.05)
    assert api.public_limiter.level() == pytest.approx(3, abs=0.05)


def test_rate_limit_is_off_by_default_like_krakenex() -> None:
    api = collector.API()
    assert api.limiter is None and api.public_limiter is None


# -- the outcome model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error_type", "status", "http_status", "requests_type"),
    [
        ("http_500", HTTPStatusError, "http_error", 500, requests.HTTPError),
        ("http_502", HTTPStatusError, "http_error", 502, requests.HTTPError),
        ("http_520", HTTPStatusError, "http_error", 520, requests.HTTPError),
        ("reset", ConnectionFailed, "connection_error", None, requests.ConnectionError),
        ("truncated", BadResponse, "bad_response", 200, ValueError),
        ("not_json", BadResponse, "bad_response", 200, ValueError),
    ],
)
def test_each_fault_is_its_own_error(
    api, fake, kind, error_type, status, http_status, requests_type
) -> None:
    fake.inject(kind, method="Balance")
    with pytest.raises(error_type) as info:
        api.call("Balance")
    error = info.value
    assert isinstance(error, collector.RequestError) and isinstance(error, requests_type)
    assert (error.status, error.http_status, error.method) == (status, http_status, "Balance")
    assert api.call("Balance").result == fake.balances()  # the client recovers


def test_timeout_is_its_own_error(api, fake) -> None:
    fake.inject("slow", method="Ticker", delay=3)
    with pytest.raises(RequestTimeout) as info:
        api.call("Ticker", {"pair": "XBTUSD"}, timeout=0.3)
    assert isinstance(info.value, requests.Timeout)
    assert (info.value.status, info.value.method) == ("timeout", "Ticker")
    assert str(info.value) == "Ticker: timed out after 0.3 s waiting for the answer"


def test_connection_refused(keypair) -> None:
    api = collector.API(*keypair)
    api.uri = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ConnectionFailed) as info:
        api.call("Time")
    assert info.value.status == "connection_error"


def test_kraken_error_list_carries_the_strings(api, fake) -> None:
    fake.inject("kraken_error", error="EService:Unavailable")
    with pytest.raises(KrakenAPIError) as info:
        api.call("Balance")
    assert info.value.errors == ["EService:Unavailable"]
    assert (info.value.status, info.value.http_status) == ("kraken_error", 200)
    assert str(info.value) == "Balance: EService:Unavailable"


def test_server_rate_limit_error_stops_the_key_until_its_counter_drains(fake, keypair) -> None:
    api = collector.API(*keypair, rate_limit="starter")
    api.uri = fake.url
    fake.inject("kraken_error", error="EAPI:Rate limit exceeded", count=2)
    with pytest.raises(KrakenAPIError):
        api.call("Balance")
    # Nothing for the key until the counter has drained by the call's cost and a margin.
    assert api.limiter.wait_time(1) == pytest.approx((1 + 1) / 0.33, abs=0.05)
    api.limiter = type(api.limiter)(api.limiter.limit)  # (the test does not wait those 6 s)
    api.limiter.refusals = 1
    assert api.query_private("Balance")["error"] == ["EAPI:Rate limit exceeded"]  # the drop-in
    assert api.limiter.refusals == 2  # a second refusal in a row doubles the wait
    assert api.limiter.wait_time(1) == pytest.approx(2 * (1 + 1) / 0.33, abs=0.05)


def test_empty_account_balance_is_an_empty_result(api, fake) -> None:
    fake.balance = None
    reply = api.call("Balance")
    assert reply.result is None and reply.http_status == 200


def test_envelope_without_error_list_is_a_bad_response(api, fake) -> None:
    fake.inject("kraken_error", error="EGeneral:Internal error")
    with pytest.raises(KrakenAPIError):
        api.call("Time")
    for body in (b'{"result": {"unixtime": 1}}', b"[1, 2]", b'{"error": "EService:Busy"}'):
        fake.inject("raw", body=body)
        with pytest.raises(BadResponse, match="not a Kraken envelope"):
            api.call("Time")


def test_passing_a_nonce_is_refused(api) -> None:
    with pytest.raises(CredentialsError, match="do not pass 'nonce'"):
        api.query_private("Balance", {"nonce": 1})


def test_a_dataset_s_decode_sees_only_capped_bytes_and_its_envelope_is_checked_alike(
    api, fake
) -> None:
    """The one seam (``call(decode=)``): the body reaches a dataset's typed decode only through
    the size cap; its None sends the body the general way (the same BadResponse for a non-JSON
    answer); its envelope is checked as json's is (an E-error raises, a W-warning is kept)."""
    seen: list[bytes] = []

    def typed(body: bytes) -> dict | None:
        seen.append(body)
        return None

    api.max_response = 1000
    with pytest.raises(BadResponse, match="answer larger than 1,000 bytes"):
        api.call("Ticker", decode=typed)  # every pair: far more than 1,000 bytes
    assert seen == []
    api.max_response = 50 * 2**20
    fake.inject("raw", method="Time", body=b"<html>not json</html>", count=2)
    with pytest.raises(BadResponse, match="answer is not JSON") as general:
        api.call("Time")
    with pytest.raises(BadResponse, match="answer is not JSON") as typed_way:
        api.call("Time", decode=typed)
    assert seen == [b"<html>not json</html>"] and str(typed_way.value) == str(general.value)
    fake.clear_faults()
    with pytest.raises(KrakenAPIError, match="EService:Unavailable"):
        api.call("Time", decode=lambda _: {"error": ["EService:Unavailable"], "result": {}})
    reply = api.call("Time", decode=lambda _: {"error": ["WGeneral:Note"], "result": {"x": 1}})
    assert (reply.result, reply.warnings) == ({"x": 1}, ["WGeneral:Note"])
