"""What happened, for whoever wants to know: components publish events, subscribers listen.

The runner and the writer publish (a run finished, a batch was stored, runs were spooled or
replayed), the verifier what it verified, the leases a lease taken or lost, a key's session its
waits and refusals; logs, metrics, the service and tests subscribe, instead of reaching into the
components.

Subscribers run synchronously in the publisher's thread (the runner's worker, the writer's
thread), so they must be quick. One that raises is logged and skipped: it never breaks a run or a
write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from .records import RunRecord

logger = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True)
class RunFinished:
    """A run ended (success or failure) and was handed to the writer."""

    record: RunRecord


@dataclass(frozen=True)
class BatchStored:
    """Runs committed to the database (``replayed``: they came from the spool)."""

    records: list[RunRecord]
    replayed: bool = False


@dataclass(frozen=True)
class Spooled:
    """The database could not take ``count`` runs; they wait in the spool (``waiting`` in all)."""

    count: int
    waiting: int


@dataclass(frozen=True)
class SpoolDrained:
    """The spool was replayed into the database and is empty again."""

    replayed: int


@dataclass(frozen=True)
class WriteStalled:
    """Neither the database nor the spool took ``count`` runs; they wait in memory."""

    count: int
    reason: str


@dataclass(frozen=True)
class DatabaseUnavailable:
    """The database can't take writes (``lasting``: it answers but refuses them, or its SQLite
    file is gone: a person must act); runs wait in the spool until :class:`SpoolDrained`."""

    reason: str
    lasting: bool = False


@dataclass(frozen=True)
class RecordRefused:
    """The database refused a run's content (a value it can't hold); the run was stored without
    its answer, rows and cursor, so its job continues from the cursor stored before."""

    record: RunRecord
    reason: str


@dataclass(frozen=True)
class ServiceFailed:
    """A part of the service that must never stop has stopped (the scheduler's thread): the
    process is unhealthy and exits non-zero."""

    reason: str


@dataclass(frozen=True)
class RateLimitWaited:
    """A call waits ``seconds`` for budget in the ``limiter`` (``private`` or ``public``)."""

    limiter: str
    seconds: float


@dataclass(frozen=True)
class RateLimitRefused:
    """Kraken refused a call of ``account``'s key for its rate limit: nothing is sent with the
    key for ``seconds`` (``refusals`` in a row so far)."""

    account: str
    seconds: float
    refusals: int


@dataclass(frozen=True)
class LockedOut:
    """Kraken locked the key out (``EGeneral:Temporary lockout``); the account's private calls
    pause ``seconds``."""

    seconds: float
    account: str | None = None


@dataclass(frozen=True)
class LedgerVerified:
    """A verification pass over ``account``'s ledger: verified up to ``verified_to`` (None: not
    yet verifiable), ``entries`` in all; ``breaks`` the lines of the breaks it found, and
    ``recorded`` the account's breaks recorded so far."""

    account: str
    verified_to: datetime | None
    entries: int
    breaks: tuple[str, ...] = ()
    recorded: int = 0


@dataclass(frozen=True)
class LeaseTaken:
    """This process took the lease of ``name`` (an account, or ``(public)`` for the public
    jobs): the last holder may have moved its cursors, and its jobs may run now. Published
    before the lease lets anything be sent, after the key's session raised its nonce floor."""

    name: str


@dataclass(frozen=True)
class LeaseLost:
    """Another process (``holder``) holds the lease of ``name`` that this one held: its calls
    stop until it is taken again."""

    name: str
    holder: str


@dataclass(frozen=True)
class Reloaded:
    """The job file was read again (SIGHUP): these jobs (:class:`collector.jobfile.Job`) now run;
    ``added``, ``removed`` and ``changed`` are names."""

    jobs: tuple[Any, ...]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


# -- streams (issue 28): what a stream's recorder publishes, each naming its stream ---------------


@dataclass(frozen=True)
class StreamConnected:
    """A connection of stream ``stream`` opened (``connection`` is its ``stream_connections``
    uid)."""

    stream: str
    connection: str
    url: str


#: The reason of a stream's connection closed because the collector stopped it (a clean stop, a
#: stream removed by a reload): in :class:`StreamDisconnected` and in its ``stream_connections``
#: row alike; any other reason is a failure, followed by a reconnect.
STREAM_STOPPED = "stopped"


@dataclass(frozen=True)
class StreamDisconnected:
    """A connection of ``stream`` closed: ``reason`` (:data:`STREAM_STOPPED` for a clean stop,
    else the failure: ``disconnect``, ``stale``, ...) after ``messages`` data messages. Any reason
    but :data:`STREAM_STOPPED` is followed by a reconnect."""

    stream: str
    connection: str
    reason: str
    messages: int


@dataclass(frozen=True)
class StreamProblem:
    """Something went wrong on ``stream`` that is not a disconnect: ``kind`` is one of
    :data:`collector.streams.connection.FAILURE_KINDS` or ``checksum`` (a book's checksum did
    not verify: the pair is resubscribed); ``pair`` when it concerns one."""

    stream: str
    kind: str
    pair: str | None
    message: str


@dataclass(frozen=True)
class StreamStored:
    """A batch of ``stream``'s data was stored: ``messages`` data messages became ``rows`` rows;
    ``lags`` are, per message, the seconds from the message's own time (or its receipt) to the
    store; ``newest`` is the newest data time in the batch."""

    stream: str
    channel: str
    messages: int
    rows: int
    lags: tuple[float, ...]
    newest: datetime


@dataclass(frozen=True)
class StreamGap:
    """A hole in ``stream``'s data for ``pair`` (a reconnect, a stall, a trade id skipped, a
    book resubscribed): ``filled`` rows came from REST; ``left`` when part of it could not be
    filled (a ``gaps`` row says which)."""

    stream: str
    pair: str
    filled: int
    left: bool


class Events:
    """A registry of subscribers by event type. Thread-safe."""

    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler(event)`` for every ``kind`` published; returns a function to unsubscribe."""
        with self._lock:
            self._handlers[kind] = [*self._handlers.get(kind, []), handler]

        def unsubscribe() -> None:
            with self._lock:
                self._handlers[kind] = [h for h in self._handlers.get(kind, []) if h is not handler]

        return unsubscribe

    def publish(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                logger.exception("a subscriber to %s failed", type(event).__name__)
