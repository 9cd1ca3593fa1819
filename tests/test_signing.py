"""The signature: Kraken's published test vector, and byte-for-byte agreement with krakenex."""

from __future__ import annotations

import base64
import string

import krakenex
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import collector
from collector.auth import KrakenAuth
from collector.errors import CredentialsError

VECTOR_SECRET = (
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
)
VECTOR_SIGN = (
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
)


def test_sign_passes_krakens_test_vector() -> None:
    api = collector.API("key", VECTOR_SECRET)
    data = {
        "nonce": "1616492376594",
        "ordertype": "limit",
        "pair": "XBTUSD",
        "price": 37500,
        "type": "buy",
        "volume": 1.25,
    }
    assert api._sign(data, "/0/private/AddOrder") == VECTOR_SIGN


def test_auth_object_signs_raw_body_like_the_vector() -> None:
    body = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    auth = KrakenAuth("key", VECTOR_SECRET)
    assert auth.signature("/0/private/AddOrder", 1616492376594, body.encode()) == VECTOR_SIGN


values = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    params=st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=10), values, max_size=6
    ),
    nonce=st.integers(min_value=1, max_value=2**63),
    method=st.text(string.ascii_letters, min_size=1, max_size=15),
    raw_secret=st.binary(min_size=1, max_size=96),
)
def test_sign_equals_krakenex_on_random_inputs(
    params: dict, nonce: int, method: str, raw_secret: bytes
) -> None:
    secret = base64.b64encode(raw_secret).decode()
    data = dict(params, nonce=nonce)
    urlpath = "/0/private/" + method
    ours = collector.API("k", secret)._sign(dict(data), urlpath)
    theirs = krakenex.API("k", secret)._sign(dict(data), urlpath)
    assert ours == theirs


def test_secret_that_is_not_base64_is_a_clear_error_without_the_secret() -> None:
    api = collector.API("key", "not*base64!secret")
    with pytest.raises(CredentialsError) as info:
        api._sign({"nonce": 1}, "/0/private/Balance")
    assert "not valid base64" in str(info.value)
    assert "not*base64!secret" not in str(info.value)
    assert VECTOR_SECRET not in repr(KrakenAuth("key", VECTOR_SECRET))
