"""How the recorder of streams is tuned: each number a named default (:mod:`collector.defaults`,
with its reason), all in one frozen value the service passes on (tests pass smaller ones)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import defaults
from ..backoff import Backoff

__all__ = ["Tuning"]


@dataclass(frozen=True)
class Tuning:
    """:param per_connection: symbols on one connection at most; more are split across several
    :param batch_rows: rows a batch run holds before it is stored; ``batch_messages``: messages
    :param batch_seconds: how old a batch gets before it is stored anyway
    :param pairs_refresh: the least seconds between two AssetPairs asked for by the recorder (a
        symbol the ``pairs`` table does not know yet)
    :param candle_grace: seconds after a candle's interval ends before it is made final
    :param stale_after: a connection's longest silence (a stream's own ``stale_after`` if less)
    :param rate: subscribe requests a second; ``request_symbols``: symbols a request
    :param backoff: reconnect delays (None: the connection's default); ``gap_backoff``: the gap
        filler's retries (None: its default)
    :param stored_pending: batches remembered until the writer says they are stored (their
        lags); past it the oldest is forgotten (no ``StreamStored`` for it)
    """

    per_connection: int = defaults.WS_SYMBOLS_PER_CONNECTION
    batch_rows: int = defaults.WS_BATCH_ROWS
    batch_messages: int = defaults.WS_BATCH_MESSAGES
    batch_seconds: float = defaults.WS_BATCH_SECONDS
    pairs_refresh: float = defaults.WS_PAIRS_REFRESH
    candle_grace: float = defaults.WS_CANDLE_GRACE
    stale_after: float = defaults.WS_STALE_AFTER
    rate: float = defaults.WS_MESSAGES_PER_SECOND
    request_symbols: int = defaults.WS_BATCH
    backoff: Backoff | None = None
    gap_backoff: Backoff | None = None
    stored_pending: int = defaults.WS_STORED_PENDING

    def __post_init__(self) -> None:
        if min(self.per_connection, self.batch_rows, self.batch_messages, self.request_symbols) < 1:
            raise ValueError(
                "per_connection, batch_rows, batch_messages and request_symbols must be at least 1"
            )
        if min(self.batch_seconds, self.pairs_refresh, self.stale_after, self.rate) <= 0:
            raise ValueError("batch_seconds, pairs_refresh, stale_after and rate must be positive")
        if self.candle_grace < 0 or self.stored_pending < 1:
            raise ValueError("candle_grace must not be negative, stored_pending at least 1")
