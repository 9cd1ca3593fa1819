"""Kraken request signing, as a ``requests`` auth object.

``API-Sign = base64(HMAC-SHA512(base64decode(secret), urlpath + SHA256(nonce + postdata)))``

:class:`KrakenAuth` signs the body bytes exactly as they are sent and the path exactly as it is
requested, so the signature can never disagree with what reaches the exchange (the classic
``EAPI:Invalid signature`` from signing one encoding and sending another).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit

import requests

from .errors import CredentialsError


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside a base64 API secret; :class:`CredentialsError` if it isn't base64.

    The message never repeats the secret.
    """
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialsError("the API secret is not valid base64") from None
    if not raw:
        raise CredentialsError("the API secret is empty")
    return raw


class KrakenAuth(requests.auth.AuthBase):
    """Adds ``API-Key`` and ``API-Sign`` to a private request.

    The request body must be the url-encoded form holding ``nonce``.
    """

    def __init__(self, key: str, secret: str) -> None:
        if not key or not secret:
            raise CredentialsError(
                "a private call needs an API key and secret (pass them to API(), or use load_key())"
            )
        self.key = key
        self._hmac_key = decode_secret(secret)

    def __repr__(self) -> str:  # never show the secret
        return f"KrakenAuth(key={self.key[:4]}…)"

    def signature(self, urlpath: str, nonce: str | int, postdata: str | bytes) -> str:
        """The ``API-Sign`` value for ``postdata`` sent to ``urlpath`` with ``nonce``."""
        if isinstance(postdata, str):
            postdata = postdata.encode()
        digest = hashlib.sha256(str(nonce).encode() + postdata).digest()
        mac = hmac.new(self._hmac_key, urlpath.encode() + digest, hashlib.sha512)
        return base64.b64encode(mac.digest()).decode()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
        nonce = dict(parse_qsl(body.decode("ascii"))).get("nonce")
        if nonce is None:
            raise CredentialsError("a private request body must hold a nonce")
        r.headers["API-Key"] = self.key
        r.headers["API-Sign"] = self.signature(urlsplit(r.url or "").path, nonce, body)
        return r
