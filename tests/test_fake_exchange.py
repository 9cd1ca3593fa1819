"""The fake must be as strict as Kraken, or the client tests prove nothing."""

from __future__ import annotations

import json
import socket
from decimal import Decimal

import pytest
import requests

import collector
from collector.ratelimit import RateLimit
from collector.testing.fake_exchange import FAULT_KINDS, FakeKraken, Refusal


def post(fake: FakeKraken, path: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(fake.url + path, data=body, headers=headers, timeout=5)


def test_unknown_key_is_refused(fake) -> None:
    api = collector.API("nobody", "c2VjcmV0")
    api.uri = fake.url
    assert api.query_private("Balance")["error"] == ["EAPI:Invalid key"]


def test_signature_is_checked_over_the_raw_body(api, fake) -> None:
    api.query_private("Balance")
    sent = api.response.request
    tampered = sent.body.replace(b"nonce=", b"nonce=9")  # a different body, the old signature
    answer = post(fake, "/0/private/Balance", tampered, dict(sent.headers)).json()
    assert answer == {"error": ["EAPI:Invalid signature"]}


def test_signature_covers_the_path(api, fake) -> None:
    api.query_private("Balance")
    sent = api.response.request
    answer = post(fake, "/0/private/Ledgers", sent.body, dict(sent.headers)).json()
    assert answer == {"error": ["EAPI:Invalid signature"]}


def test_a_replayed_or_equal_nonce_is_refused(api, fake, keypair) -> None:
    api.query_private("Balance")
    sent = api.response.request
    answer = post(fake, "/0/private/Balance", sent.body, dict(sent.headers)).json()
    assert answer == {"error": ["EAPI:Invalid nonce"]}
    lower = collector.API(*keypair, clock=lambda: 10**18)  # far behind: 2001
    lower.uri = fake.url
    assert lower.query_private("Balance")["error"] == ["EAPI:Invalid nonce"]
    assert fake.errors["EAPI:Invalid nonce"] == 2


def test_a_request_cut_between_its_head_and_its_body_is_not_acted_on(api, fake) -> None:
    """http.client sends a request's head and body in two writes: a process killed between
    them leaves a head whose body never comes. Before, the fake read the empty body as a
    request without a nonce and counted an ``EAPI:Invalid nonce`` that no nonce earned."""
    api.query_private("Balance")
    sent = api.response.request
    head = "".join(f"{k}: {v}\r\n" for k, v in sent.headers.items())
    host, port = fake.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /0/private/Balance HTTP/1.1\r\n{head}\r\n".encode())
        sock.shutdown(socket.SHUT_WR)  # the sender is gone: its body never comes
        answer = b"".join(iter(lambda: sock.recv(4096), b""))
    assert answer == b""  # nothing answered ...
    assert fake.errors == {}  # ... and nothing counted
    assert api.query_private("Balance")["error"] == []


def test_counter_refuses_over_max_and_calls_while_over_extend_it() -> None:
    clock = [0.0]
    with FakeKraken(tier=RateLimit(max=3, decay=1), clock=lambda: clock[0]) as fake:
        key, secret = fake.add_key()
        api = collector.API(key, secret)
        api.uri = fake.url
        errors = [api.query_private("Balance")["error"] for _ in range(4)]
        assert errors == [[], [], [], ["EAPI:Rate limit exceeded"]]
        clock[0] += 1.5  # 4 - 1.5 = 2.5: still over for one more call (2.5 + 1 > 3)
        assert api.query_private("Balance")["error"] == ["EAPI:Rate limit exceeded"]
        clock[0] += 3.5  # 3.5 - 3.5 = 0
        assert api.query_private("Ledgers")["error"] == []
        assert api.query_private("Ledgers")["error"] == ["EAPI:Rate limit exceeded"]  # 2 + 2 > 3


def test_starter_tier_is_the_default() -> None:
    fake = FakeKraken()
    assert fake.limit == RateLimit(15, 0.33)
    fake.close()


def test_public_counter_per_ip() -> None:
    with FakeKraken(public_limit=RateLimit(max=2, decay=0.01)) as fake:
        api = collector.API()
        api.uri = fake.url
        errors = [api.query_public("Time")["error"] for _ in range(3)]
        assert errors == [[], [], ["EGeneral:Too many requests"]]


def test_wrong_verb_is_405(fake) -> None:
    assert requests.post(fake.url + "/0/public/Time", timeout=5).status_code == 405
    assert requests.get(fake.url + "/0/private/Balance", timeout=5).status_code == 405
    assert requests.get(fake.url + "/1/public/Time", timeout=5).status_code == 404


def test_low_level_query_sends_as_given(fake) -> None:
    api = collector.API()
    api.uri = fake.url
    assert api._query("/0/public/Time", None)["error"] == []
    assert api._query("/0/private/Balance", {"nonce": 1}) == {"error": ["EAPI:Invalid key"]}


def test_unknown_method(api) -> None:
    assert api.query_public("Nope")["error"] == ["EGeneral:Unknown method"]
    assert api.query_private("Time")["error"] == ["EGeneral:Unknown method"]


def test_state_changing_calls_are_refused_and_counted(api, fake) -> None:
    assert api.query_private("AddOrder", {"pair": "XBTUSD"})["error"] == [
        "EGeneral:Permission denied"
    ]
    assert fake.state_changing_calls == 1


@pytest.mark.parametrize(
    ("method", "params", "check"),
    [
        ("Time", {}, lambda r: isinstance(r["unixtime"], int) and r["rfc1123"].endswith("+0000")),
        ("SystemStatus", {}, lambda r: r["status"] == "online"),
        ("Assets", {}, lambda r: r["XXBT"]["altname"] == "XBT"),
        ("AssetPairs", {"pair": "XBTUSD"}, lambda r: r["XXBTZUSD"]["altname"] == "XBTUSD"),
        (
            "Ticker",
            {"pair": "XBTUSD,ETHUSD"},
            lambda r: sorted(r) == ["XETHZUSD", "XXBTZUSD"] and len(r["XXBTZUSD"]["a"]) == 3,
        ),
        (
            "OHLC",
            {"pair": "XBTUSD", "interval": 5},
            lambda r: len(r["XXBTZUSD"]) == 720 and r["last"] == r["XXBTZUSD"][-2][0],
        ),
        (
            "Depth",
            {"pair": "XBTUSD", "count": 3},
            lambda r: len(r["XXBTZUSD"]["asks"]) == 3 and len(r["XXBTZUSD"]["bids"]) == 3,
        ),
        (
            "Trades",
            {"pair": "XBTUSD", "count": 5},
            lambda r: (
                len(r["XXBTZUSD"]) == 5 and abs(int(r["last"]) / 1e9 - r["XXBTZUSD"][-1][2]) < 1e-6
            ),
        ),
        ("Spread", {"pair": "XBTUSD"}, lambda r: len(r["XXBTZUSD"][0]) == 3),
        ("Balance", {}, lambda r: len(r["XXBT"].split(".")[1]) == 10 and len(r["ZUSD"]) > 6),
        (
            "BalanceEx",
            {},
            lambda r: len(r["XXBT"]["balance"].split(".")[1]) == 10 and "hold_trade" in r["XXBT"],
        ),
        ("TradeBalance", {}, lambda r: {"eb", "tb", "m", "n", "c", "v", "e", "mf"} <= set(r)),
        ("OpenOrders", {}, lambda r: len(r["open"]) == 2),
        # 360 ledger entries by default; 110 fills and 109 closed orders come with them.
        ("ClosedOrders", {}, lambda r: len(r["closed"]) == 50 and r["count"] == 109),
        ("TradesHistory", {}, lambda r: len(r["trades"]) == 50 and r["count"] == 110),
        ("Ledgers", {}, lambda r: len(r["ledger"]) == 50 and r["count"] == 360),
    ],
)
def test_response_shapes(api, method, params, check) -> None:
    reply = api.call(method, params)
    assert check(reply.result), json.dumps(reply.result)[:300]


def test_all_amounts_are_decimal_strings(api) -> None:
    ticker = api.call("Ticker", {"pair": "XBTUSD"}).result["XXBTZUSD"]
    for price in (ticker["a"][0], ticker["c"][0], ticker["o"]):
        assert isinstance(price, str) and Decimal(price) > 0
    for amount in api.call("Balance").result.values():
        assert isinstance(amount, str)
        Decimal(amount)


def test_ledgers_paginate_newest_first(api) -> None:
    seen: dict[str, dict] = {}
    ofs = 0
    while True:
        page = api.call("Ledgers", {"ofs": ofs}).result
        if not page["ledger"]:
            break
        seen.update(page["ledger"])
        ofs += len(page["ledger"])
    assert len(seen) == 360 == page["count"]
    times = [entry["time"] for entry in seen.values()]
    assert times == sorted(times, reverse=True)


def test_values_change_with_the_data_time() -> None:
    now = [1_790_000_000.0]
    fake = FakeKraken(now=lambda: now[0])
    early = fake.result("Ticker", {"pair": "XBTUSD"})["XXBTZUSD"]["c"][0]
    balance = fake.result("Balance")
    now[0] += 300
    assert fake.result("Ticker", {"pair": "XBTUSD"})["XXBTZUSD"]["c"][0] != early
    assert fake.result("Time")["unixtime"] == 1_790_000_300
    # Balances move only with the account's activity: none in 300 s, then one ledger entry's.
    assert fake.result("Balance") == balance
    (new,) = fake.grow("ledger", 1)
    entry = fake.ledger()[new]
    after, asset = fake.result("Balance"), entry["asset"]
    assert after[asset] == entry["balance"] != balance[asset]
    assert {a: v for a, v in after.items() if a != asset} == {
        a: v for a, v in balance.items() if a != asset
    }
    fake.close()


def test_result_raises_the_kraken_error() -> None:
    fake = FakeKraken()
    with pytest.raises(Refusal, match="EQuery:Unknown asset pair"):
        fake.result("Ticker", {"pair": "DOGEXYZ"})
    with pytest.raises(Refusal, match="EGeneral:Permission denied"):
        fake.result("AddOrder")
    assert fake.state_changing_calls == 0  # a look at the data, not a call
    fake.balance = None
    assert fake.result("Balance") is None
    fake.close()


def test_unknown_pair(api) -> None:
    assert api.query_public("Ticker", {"pair": "DOGEXYZ"})["error"] == ["EQuery:Unknown asset pair"]


def test_faults_can_target_one_method_and_run_out(api, fake) -> None:
    fake.inject("http_502", method="Ticker", count=2)
    assert api.query_public("Time")["error"] == []
    for _ in range(2):
        with pytest.raises(requests.HTTPError):
            api.query_public("Ticker", {"pair": "XBTUSD"})
    assert api.query_public("Ticker", {"pair": "XBTUSD"})["error"] == []


def test_faults_over_http_for_a_fake_run_from_the_cli(api, fake) -> None:
    answer = requests.post(
        fake.url + "/_fake/fault?kind=kraken_error&error=EService:Busy", timeout=5
    )
    assert answer.json() == {"ok": True}
    assert api.query_public("Time") == {"error": ["EService:Busy"]}
    bad = requests.post(fake.url + "/_fake/fault?kind=meteor", timeout=5)
    assert bad.status_code == 400 and "unknown fault 'meteor'" in bad.text


def test_fault_count_over_http_and_every_kind_documented(api, fake) -> None:
    import collector.testing.fake_exchange as module

    answer = requests.post(
        fake.url + "/_fake/fault?kind=kraken_error&error=EService:Busy&method=Time&count=2",
        timeout=5,
    )
    assert answer.json() == {"ok": True}
    assert [api.query_public("Time")["error"] for _ in range(3)] == [
        ["EService:Busy"],
        ["EService:Busy"],
        [],
    ]
    for kind in FAULT_KINDS:
        assert f"``{kind}``" in module.__doc__
        assert f"``{kind}``" in FakeKraken.inject.__doc__


def test_unknown_fault_kind_is_refused(fake) -> None:
    with pytest.raises(ValueError, match="unknown fault 'meteor'"):
        fake.inject("meteor")


def test_cli_errors_are_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from collector.cli import main

    missing = str(tmp_path / "no" / "such" / "fake.key")
    result = CliRunner().invoke(main, ["fake-exchange", "--port", "0", "--key-file", missing])
    assert result.exit_code == 2
    assert (
        result.output
        == f"error: {tmp_path / 'no' / 'such' / 'fake.key'}: No such file or directory\n"
    )
    (tmp_path / "bad.key").write_text("key\nnot base64!\n")
    bad = str(tmp_path / "bad.key")
    result = CliRunner().invoke(main, ["fake-exchange", "--port", "0", "--key-file", bad])
    assert result.exit_code == 2 and "not a key file" in result.output
    result = CliRunner().invoke(main, ["fake-exchange", "--tier", "gold"])
    assert result.exit_code == 2 and "unknown tier 'gold'" in result.output
