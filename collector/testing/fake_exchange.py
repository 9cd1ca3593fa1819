"""A strict local stand-in for Kraken's REST API, for tests and for trying a job file offline.

:class:`FakeKraken` puts together what :mod:`.server` checks (keys and ``API-Sign`` over the raw
body and path, nonces strictly increasing per key, Kraken's decaying call counter whose refusals
extend the penalty, an optional per-IP public counter, GET for public and POST for private
methods, state-changing methods refused and counted), what :mod:`.market` serves (prices that move
with the data time, ``now()``; candles, spreads, each pair's public trades) and what
:mod:`.account` is: **one coherent account**, whose fills, ledger legs, orders and balances agree.

**The account.** Every fill has its two ledger legs (``refid`` = the trade's txid; the quote leg
carries the fee), every closed order's cost and fee are the sums of its fills, and deposits,
withdrawals with fees, staking transfers spot ↔ ``DOT.S``, staking and earn rewards run through
the same ledger, each entry's ``balance`` being that asset's running balance. Balance and
BalanceEx answer the latest running balances.

**Histories.** Ledgers, TradesHistory, ClosedOrders and each pair's public Trades are stable:
every entry keeps its id, time and values once it exists. ``history`` sets how many ledger entries
the account has at start (its fills and orders follow from them) and how many public trades each
pair has; ``growth`` appends entries at the data time, per second (ledger entries, fills or closed
orders; 0 by default: static), or :meth:`FakeKraken.grow` does at once. The private three page as
Kraken does: newest first, 50 a page from ``ofs``, ``count`` the size of the whole window,
``start`` exclusive and ``end`` inclusive (unix seconds; an id-valued ``start``/``end`` is refused as
``EGeneral:Invalid arguments``). So paging while entries arrive shifts every later page unless
``end`` is frozen, exactly Kraken's pitfall. Several entries share a time (the legs of a fill, the
fills of one order, an order closing as another is canceled), in no order a client may rely on.
ClosedOrders windows and orders by ``closetm`` (``closetime=open`` windows by ``opentm``, ``both``
by either). Public Trades have sequential ``trade_id``\\ s and strictly increasing nanosecond
times; ``since`` is exclusive, in nanoseconds, or in seconds when below 1e12. OHLC candles and
Spread rows are computed from the time alone.

**Test hooks** (public, stable):

* ``fake.result(method, params=None)``: what ``method`` would answer now (its ``result``), without
  the HTTP layer, the checks or the counters; raises :class:`Refusal` for a Kraken error;
* ``fake.grow(history, n=1, pair=None)``: append now exactly ``n`` ledger entries (``"ledger"``),
  fills (``"trades"``, each with its legs), closed orders (``"closed"``) or public trades
  (``"public_trades"``, one pair or every pair); returns their ids;
* ground truth, as of now: ``fake.ledger()`` (hidden entries included), ``fake.my_trades()``,
  ``fake.closed_orders()``, ``fake.open_orders()`` (``{id: entry}``, newest first),
  ``fake.balances()`` (the running balances), ``fake.public_trades(pair)`` (rows, oldest first),
  ``fake.candle(pair, interval, t)`` and ``fake.candles(pair, interval)``;
* ``fake.balance = None`` (an empty account's answer, without ``result``) or ``= {...}`` (any
  answer) overrides what Balance and BalanceEx say;
* ``fake.delist(pair)`` leaves a pair out of AssetPairs (``delisted=False`` lists it again).

**Faults** are injected on demand (:meth:`FakeKraken.inject`, or ``POST
/_fake/fault?kind=...&method=...&count=...`` from outside), every kind of ``FAULT_KINDS``:
``http_500``, ``http_502``, ``http_520`` (Cloudflare-like HTML pages), ``slow`` (``delay``
seconds, then a normal answer: long enough to be a timeout), ``reset`` (connection reset),
``truncated`` (cut JSON), ``not_json`` (an HTML page with status 200), ``kraken_error`` (any
Kraken error string, ``error=``) and ``raw`` (any ``body=`` with any ``status=``). Two faults make
the account disagree with itself, for verification to catch: :meth:`FakeKraken.hide` (``POST
/_fake/hide?id=L...``) leaves one ledger entry out of every Ledgers answer, and
:meth:`FakeKraken.offset_balance` (``POST /_fake/offset?asset=XXBT&amount=0.5``) adds an amount to
an asset in Balance and BalanceEx.

Run it with ``collector fake-exchange``; in Python::

    with FakeKraken(history={"ledger": 10_000}, growth={"ledger": 2.0}) as fake:
        key, secret = fake.add_key()
        api = collector.API(key, secret); api.uri = fake.url
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from ..methods import STATE_CHANGING_METHODS
from ..ratelimit import RateLimit, tier
from .account import Account
from .history import PAGE_SIZE, Refusal
from .market import ASSETS, OHLC_INTERVALS, OHLC_ROWS, PAIRS, Market, candle, interval, pairs
from .server import FAULT_KINDS, Fault, Gate, Server
from .ws import FakeKrakenWS

__all__ = [
    "ASSETS",
    "DEFAULT_HISTORY",
    "DEFAULT_LEDGER",
    "FAULT_KINDS",
    "HISTORIES",
    "OHLC_INTERVALS",
    "PAGE_SIZE",
    "PAIRS",
    "FakeKraken",
    "Fault",
    "Refusal",
    "new_key_file",
]

#: The histories that :meth:`FakeKraken.grow` and the ``growth`` knob name.
HISTORIES = ("ledger", "trades", "closed", "public_trades")
#: Public trades of each pair at start.
DEFAULT_HISTORY = 120
#: Ledger entries at start: about 110 fills and 110 closed orders come with them.
DEFAULT_LEDGER = 360
_UNSET: Any = object()


class FakeKraken(Gate):
    """The fake exchange. Start it with ``with`` or :meth:`start`; its address is :attr:`url`.

    :param tier: the private counter (a tier name or :class:`RateLimit`), ``None`` for no limit
    :param public_limit: a per-IP counter for public calls, ``None`` (default) for no limit
    :param history: ledger entries and each pair's public trades at start: one number for both, or
        ``{"ledger": n, "public_trades": m}`` (defaults 360 and 120); the fills and orders follow
        from the ledger
    :param growth: entries appended per second of data time, one number for every history of
        ``HISTORIES`` or a mapping (default 0: static)
    :param ledger_size: the old name of ``history={"ledger": n}``
    :param clock: monotonic seconds for the counters
    :param now: wall-clock seconds for the data (prices, candles, history times, growth)
    :param ws: also serve Kraken's WebSocket v2 public feed over the same market, at
        :attr:`ws_url` (see :mod:`.ws`), on ``ws_port`` (0: any free port)
    """

    def __init__(
        self,
        *,
        tier: str | RateLimit | None = "starter",
        public_limit: RateLimit | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int | Mapping[str, int] | None = None,
        growth: float | Mapping[str, float] = 0.0,
        ledger_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        ws: bool = False,
        ws_port: int = 0,
    ) -> None:
        ledger, public = _sizes(history)
        if ledger_size is not None:
            ledger = ledger_size
        rates = _per_history(growth, 0.0, "growth")
        if min(ledger, public) < 0 or min(rates.values()) < 0:
            raise ValueError("history sizes and growth rates cannot be negative")
        super().__init__(_tier_or_none(tier), public_limit, clock)
        self.now = now
        t0 = now()
        self.account = Account(
            t0=t0, size=ledger, rates={k: v for k, v in rates.items() if k != "public_trades"}
        )
        self.market = Market(t0=t0, size=public, rate=rates["public_trades"])
        self._balance: Any = _UNSET
        self._server = Server((host, port), self, self.answer)
        self._thread: threading.Thread | None = None
        #: the WebSocket v2 endpoint over the same market (``ws=True``), at :attr:`ws_url`
        self.ws = (
            FakeKrakenWS(self.market, lock=self._lock, now=now, host=host, port=ws_port)
            if ws
            else None
        )

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def ws_url(self) -> str:
        if self.ws is None:
            raise RuntimeError("the WebSocket endpoint is opt-in: FakeKraken(ws=True)")
        return self.ws.url

    def start(self) -> FakeKraken:
        if self.ws is not None:
            self.ws.start()
        self._thread = threading.Thread(target=self.serve_forever, name="fake-kraken", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        """Release the listening socket (after :meth:`serve_forever` has returned)."""
        self.stopping.set()
        self._server.server_close()

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers sleeping in a slow fault
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)
        if self.ws is not None:
            self.ws.stop()

    def __enter__(self) -> FakeKraken:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the account's faults and overrides ---------------------------------------------------

    @property
    def balance(self) -> dict[str, str] | None:
        """What Balance answers: the running balances, unless overridden (``None``: an empty
        account's answer, which has no ``result``)."""
        if self._balance is not _UNSET:
            return self._balance
        return self.balances()

    @balance.setter
    def balance(self, value: dict[str, str] | None) -> None:
        self._balance = value

    def hide(self, ledger_id: str) -> None:
        """Leave the ledger entry ``ledger_id`` out of every Ledgers answer (and its ``count``)
        from now on, as if Kraken had lost it; the entries after it keep their balances."""
        with self._lock:
            self.account.hide(ledger_id)

    def offset_balance(self, asset: str, amount: Decimal | str) -> None:
        """Add ``amount`` to ``asset`` in every Balance and BalanceEx answer from now on."""
        with self._lock:
            self.account.offset(asset, Decimal(amount))

    def delist(self, pair: str, delisted: bool = True) -> None:
        """Leave ``pair`` out of AssetPairs from now on, as Kraken does with a pair it no longer
        lists (``delisted=False`` lists it again: a new pair, to a client that never saw it)."""
        (canonical,) = pairs({"pair": pair})
        with self._lock:
            if delisted:
                self.market.delisted.add(canonical)
            else:
                self.market.delisted.discard(canonical)

    def control(self, action: str, query: dict[str, str]) -> None:
        """``POST /_fake/fault?...`` (see :meth:`inject`), ``/_fake/hide?id=L...`` and
        ``/_fake/offset?asset=A&amount=X``."""
        if action == "hide":
            self.hide(query.get("id", ""))
        elif action == "offset":
            try:
                amount = Decimal(query.get("amount", ""))
            except InvalidOperation:
                raise ValueError(f"amount is not a number: {query.get('amount')!r}") from None
            self.offset_balance(query.get("asset", ""), amount)
        else:
            super().control(action, query)

    # -- test hooks: growth and ground truth --------------------------------------------------

    def grow(self, history: str, n: int = 1, *, pair: str | None = None) -> list[Any]:
        """Append ``n`` entries to ``history`` (one of ``HISTORIES``) at the data time now: ledger
        entries, fills (each with its two ledger legs) or closed orders (with their fills), all at
        that one time; or public trades (strictly increasing nanoseconds) of ``pair`` (default:
        every pair's). Returns the new ids (trade ids, ints, for public trades).
        """
        if history not in HISTORIES:
            raise ValueError(f"unknown history {history!r}; one of {', '.join(HISTORIES)}")
        if pair is not None and history != "public_trades":
            raise ValueError("pair= is for public_trades only")
        now = self.now()
        with self._lock:
            self._sync(now)
            if history == "public_trades":
                tapes = [self.market.tapes[p] for p in (pairs({"pair": pair}) if pair else PAIRS)]
                return [tape.append(now) for tape in tapes for _ in range(n)]
            take = {
                "ledger": self.account.take_ledger,
                "trades": self.account.take_fills,
                "closed": self.account.take_orders,
            }[history]
            return take(n, now)

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Every ledger entry as of now, ``{ledger_id: entry}``, newest first (hidden ones too:
        this is what the account did)."""
        return self._truth(lambda: self.account.ledger.newest_first())

    def my_trades(self) -> dict[str, dict[str, Any]]:
        """Every TradesHistory trade as of now, ``{txid: trade}``, newest first."""
        return self._truth(lambda: self.account.trades.newest_first())

    def closed_orders(self) -> dict[str, dict[str, Any]]:
        """Every ClosedOrders order as of now, ``{txid: order}``, newest close first."""
        return self._truth(lambda: self.account.closed.newest_first())

    def open_orders(self) -> dict[str, dict[str, Any]]:
        """The open orders, ``{txid: order}`` (they never change)."""
        return _copy(self.account.open_orders)

    def balances(self) -> dict[str, str]:
        """Each asset's running balance as of now (with any :meth:`offset_balance`)."""
        now = self.now()
        with self._lock:
            self._sync(now)
            return self.account.running_balances()

    def public_trades(self, pair: str) -> list[list[Any]]:
        """Every public trade of ``pair`` as of now, rows as Trades serves them, oldest first."""
        (canonical,) = pairs({"pair": pair})
        now = self.now()
        with self._lock:
            self._sync(now)
            return [list(row) for row in self.market.tapes[canonical].entries]

    def candle(self, pair: str, interval_minutes: int, t: int) -> list[Any]:
        """The OHLC row of the candle starting at ``t``: final once closed, else as of now."""
        (canonical,) = pairs({"pair": pair})
        step = interval({"interval": str(interval_minutes)}) * 60
        if t % step:
            raise ValueError(f"{t} is not the start of a {interval_minutes}-minute candle")
        return candle(canonical, step, t, self.now())

    def candles(self, pair: str, interval_minutes: int) -> list[list[Any]]:
        """The closed candles OHLC can serve now (the 719 before the open one), oldest first."""
        (canonical,) = pairs({"pair": pair})
        step = interval({"interval": str(interval_minutes)}) * 60
        now = self.now()
        open_at = int(now // step * step)
        first = open_at - (OHLC_ROWS - 1) * step
        return [candle(canonical, step, t, now) for t in range(first, open_at, step)]

    def result(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """What ``method`` would answer now: the envelope's ``result`` (``None`` where Kraken
        omits it), as a client decodes it. No HTTP, no key, counter or fault: a look at the data.

        Raises :class:`Refusal` with the Kraken error the call would get.
        """
        if method in STATE_CHANGING_METHODS:
            raise Refusal("EGeneral:Permission denied")
        text = {k: str(v) for k, v in (params or {}).items()}
        private = method not in Market.METHODS
        return json.loads(json.dumps(self._compute(method, text, private)))

    def _truth(self, read: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        now = self.now()
        with self._lock:
            self._sync(now)
            return _copy(read())

    def _sync(self, now: float) -> None:
        """Materialise the growth due by ``now`` (the caller holds the lock)."""
        self.account.materialise(now)
        self.market.materialise(now)

    # -- the exchange -------------------------------------------------------------------------

    def answer(self, method: str, params: dict[str, str], private: bool) -> dict[str, Any]:
        """The JSON envelope for a call that passed the checks."""
        if method in STATE_CHANGING_METHODS:
            self.refused()
            return {"error": ["EGeneral:Permission denied"]}
        try:
            result = self._compute(method, params, private)
        except Refusal as refusal:
            return {"error": [str(refusal)]}
        if result is None:  # an empty account's Balance: Kraken omits `result`
            return {"error": []}
        return {"error": [], "result": result}

    def _compute(self, method: str, params: dict[str, str], private: bool) -> Any:
        now = self.now()
        if not private and method in Market.METHODS:
            if method == "Depth" and self.ws is not None:  # the book the WebSocket serves
                return self.ws.depth(self.market.answer(method, params, now), now)
            if method != "Trades":
                return self.market.answer(method, params, now)
            with self._lock:  # one consistent look: the growth due by now, then the page
                self._sync(now)
                return self.market.answer(method, params, now)
        if not private or method not in Account.METHODS:
            raise Refusal("EGeneral:Unknown method")
        if method in ("Balance", "BalanceEx") and self._balance is not _UNSET:
            overridden = self._balance
            if method == "Balance" or overridden is None:
                return overridden
            return {a: {"balance": v, "hold_trade": "0.0000"} for a, v in overridden.items()}
        with self._lock:
            self._sync(now)
            return self.account.answer(method, params, now)


def new_key_file(path: str) -> tuple[str, str]:
    """Write a random key pair in krakenex's key-file format (mode 0600); returns it."""
    key = base64.b64encode(secrets.token_bytes(42)).decode()
    secret = base64.b64encode(secrets.token_bytes(64)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key}\n{secret}\n")
    return key, secret


def _sizes(history: int | Mapping[str, int] | None) -> tuple[int, int]:
    """(ledger entries, public trades per pair) at start."""
    if history is None:
        return DEFAULT_LEDGER, DEFAULT_HISTORY
    if not isinstance(history, Mapping):
        return history, history
    unknown = set(history) - {"ledger", "public_trades"}
    if unknown & {"trades", "closed"}:
        raise ValueError(
            "history: the account's fills and closed orders follow from its ledger; size it with "
            "{'ledger': n} (grow('trades') or grow('closed') adds fills or orders)"
        )
    if unknown:
        raise ValueError(f"history: unknown histories {sorted(unknown)}; use ledger, public_trades")
    return history.get("ledger", DEFAULT_LEDGER), history.get("public_trades", DEFAULT_HISTORY)


def _per_history(value: float | Mapping[str, Any], default: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return dict.fromkeys(HISTORIES, value)
    unknown = set(value) - set(HISTORIES)
    if unknown:
        raise ValueError(f"{what}: unknown histories {sorted(unknown)}; use {', '.join(HISTORIES)}")
    return {name: value.get(name, default) for name in HISTORIES}


def _copy(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Copies the caller may change without changing the fake (orders nest ``descr``)."""
    return {
        k: {f: dict(v) if isinstance(v, dict) else v for f, v in e.items()}
        for k, e in entries.items()
    }


def _tier_or_none(value: str | RateLimit | None) -> RateLimit | None:
    return None if value is None else tier(value)
