"""Every error collector raises, under one base.

::

    CollectorError
     +-- ConfigError              a job file or setting is wrong (file:line: key)  status "config_error"
     |    +-- ConfigErrors        several at once, one line each (``collector check``)
     +-- CredentialsError         no usable key/secret for a private call          status "config_error"
     +-- Cancelled                a call waiting for budget gave up: the service is stopping
     +-- NotPermitted             a private call not sent: another process holds the account
     +-- RequestError             one call to Kraken failed; carries method, http_status, errors
          +-- KrakenAPIError      HTTP 200 whose ``error`` list holds an E-error   status "kraken_error"
          +-- HTTPStatusError     a non-2xx answer (also a requests.HTTPError)     status "http_error"
          +-- RequestTimeout      no answer in time (also a requests.Timeout)      status "timeout"
          +-- ConnectionFailed    refused, reset, DNS (also requests.ConnectionError)
          |                                                                        status "connection_error"
          +-- BadResponse         a body that is not the JSON envelope (also a ValueError)
                                                                                   status "bad_response"

The transport errors also derive from the matching ``requests`` exception, so code written for
krakenex (``except requests.HTTPError``) keeps working with :class:`collector.API`. Those three
are made when first asked for (:func:`__getattr__`): ``requests`` costs a tenth of a second to
import, and the commands that never call Kraken (``export``, ``status``, ``verify``, ``check``)
must not pay it for an error they cannot raise.

``status`` is the value stored in the ``runs.status`` column, one :class:`Status` per class. No
message here ever holds the API secret, a signature or an ``otp``: messages are built from the
method, the status and Kraken's error strings only.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import TYPE_CHECKING

from . import defaults

if TYPE_CHECKING:
    import requests


class Status(StrEnum):
    """A run's outcome, as stored in ``runs.status`` (a ``str``, so the stored text is the value)."""

    OK = "ok"
    KRAKEN_ERROR = "kraken_error"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    BAD_RESPONSE = "bad_response"
    #: the job file or the credentials are wrong: no retry helps, a person must fix them
    CONFIG_ERROR = "config_error"
    #: a paging run that stored some pages and was cut short (stopped, or the process died); the
    #: next run continues from the last stored page
    PARTIAL = "partial"


def cut(text: str, limit: int = defaults.ERROR_TEXT_MAX) -> str:
    """``text`` at most ``limit`` characters, marked when cut: what an answer says (a 20 MB error
    string) is stored and logged, but never in full."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}… (cut: {len(text):,} characters in all)"


class CollectorError(Exception):
    """Base of every error raised by collector."""


class ConfigError(CollectorError):
    """A job file or setting is invalid.

    ``str()`` is one line: ``file:line: key: problem``, whatever parts are known.
    """

    status = Status.CONFIG_ERROR

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigErrors(ConfigError):
    """Every mistake found in one job file, in the file's order, as a linter reports them:
    ``str()`` is one ``file:line: key: problem`` line for each (the first is also this error's
    own ``message``, ``line`` and ``key``)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class CredentialsError(CollectorError, ValueError):
    """A private call was attempted without a key, or with a secret that is not base64."""

    status = Status.CONFIG_ERROR


class Cancelled(CollectorError):
    """A call waiting for rate-limit budget gave up because its ``cancel`` event was set."""


class NotPermitted(CollectorError):
    """A private call was not sent: this process does not (or no longer) hold the account's
    lease, so another process may be sending with the key (collector.coordination)."""


class RequestError(CollectorError):
    """One call to Kraken failed.

    :ivar method: the API method, e.g. ``"Balance"``
    :ivar http_status: the HTTP status, or ``None`` when no answer came
    :ivar errors: Kraken's error strings (empty when the failure was below the API)
    :ivar status: the failure kind, as stored in ``runs.status``
    :ivar reason: why, in one short phrase a person can act on (``connection refused``,
        ``cannot resolve api.kraken.com``, ``timed out after 10 s``, ``HTTP 520``,
        ``EService:Unavailable``, ``answer is not JSON``); the message leads with the method and it
    """

    status: Status = Status.BAD_RESPONSE

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        http_status: int | None = None,
        errors: list[str] | None = None,
        reason: str | None = None,
    ) -> None:
        # What the answer said is cut short: a hostile 20 MB error string is stored and logged
        # as a few KB, marked as cut.
        super().__init__(cut(message))
        self.method = method
        self.http_status = http_status
        self.errors = list(errors or [])
        self.reason = cut(reason or _after_method(message, method), defaults.REASON_MAX)


def _after_method(message: str, method: str) -> str:
    """``message`` without its leading method: the reason of an error raised without one."""
    for prefix in (f"{method}: ", f"{method} "):
        if method and message.startswith(prefix):
            return message[len(prefix) :]
    return message


class KrakenAPIError(RequestError):
    """Kraken answered (usually HTTP 200) with a non-empty ``error`` list of E-errors."""

    status = Status.KRAKEN_ERROR


class BadResponse(RequestError, ValueError):
    """An answer that is not a JSON object with an ``error`` list: HTML, truncated JSON, junk."""

    status = Status.BAD_RESPONSE


#: The errors that derive from ``requests``' own, made on first use by :func:`_transport`.
_TRANSPORT = ("HTTPStatusError", "RequestTimeout", "ConnectionFailed")
_made = threading.Lock()

if TYPE_CHECKING:
    # What mypy reads (the classes, without their bodies); at run time :func:`_transport`
    # makes them.
    class HTTPStatusError(RequestError, requests.HTTPError): ...

    class RequestTimeout(RequestError, requests.Timeout): ...

    class ConnectionFailed(RequestError, requests.ConnectionError): ...


def __getattr__(name: str) -> type[RequestError]:
    """``HTTPStatusError``, ``RequestTimeout`` and ``ConnectionFailed``, made (with the import of
    ``requests``) when first asked for, once: every later ``from collector.errors import …`` and
    ``except`` gets the same class."""
    if name not in _TRANSPORT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _made:
        if name not in globals():
            globals().update(_transport())
    made: type[RequestError] = globals()[name]
    return made


def _transport() -> dict[str, type[RequestError]]:
    """The three transport errors, each also the matching ``requests`` exception."""
    import requests

    class HTTPStatusError(RequestError, requests.HTTPError):
        """A non-2xx HTTP answer. HTML error pages (Cloudflare's 5xx) are reduced to a short excerpt."""

        status = Status.HTTP_ERROR

    class RequestTimeout(RequestError, requests.Timeout):
        """No complete answer within the timeout."""

        status = Status.TIMEOUT

    class ConnectionFailed(RequestError, requests.ConnectionError):
        """The connection could not be made or was reset."""

        status = Status.CONNECTION_ERROR

    made: dict[str, type[RequestError]] = {
        "HTTPStatusError": HTTPStatusError,
        "RequestTimeout": RequestTimeout,
        "ConnectionFailed": ConnectionFailed,
    }
    for name, cls in made.items():
        cls.__qualname__ = name  # as if at the module's top: its repr, pickle and docs
    return made
