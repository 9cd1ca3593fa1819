"""The fake's account: one coherent history of what the account did, and the private methods'
answers.

Everything the account does is an *activity* that appends all its consequences at one time:

* a **fill** of an order: a TradesHistory trade and its two ledger legs (type ``trade``, ``refid``
  the trade's txid): the base leg ``±vol`` and the quote leg ``∓cost`` carrying the fee (the orders
  say ``fciq``: fee in quote). An order fills once or twice at once and closes with its last fill;
  its ClosedOrders entry's ``cost``, ``fee`` and ``vol_exec`` are the sums of its fills;
* a **cancel**: a ClosedOrders order with status ``canceled`` and no fill;
* **deposits**, **withdrawals** with a fee, **staking** transfers from spot to ``DOT.S`` and back
  (two ``transfer`` entries with refids of their own, as Kraken writes them), staking rewards on
  ``DOT.S``, **earn** autoallocation from ``XETH`` to ``ETH.F`` and earn rewards on ``ETH.F``.

Each ledger entry's ``balance`` is its asset's running balance after it (previous + amount - fee),
and Balance/BalanceEx answer the latest running balances. The account starts empty: its first
entries are deposits. An activity that would take a balance below zero is preceded by a deposit.

The activities come from one fixed cycle (:data:`CYCLE`), so a history is the same whatever asks
for it. Sizes are exact: ``take_ledger(n)`` appends exactly ``n`` ledger entries (a two-entry
activity that does not fit is replaced by a one-entry deposit or reward), ``take_fills(n)``
exactly ``n`` fills, ``take_orders(n)`` exactly ``n`` closed orders.

Two faults make the account disagree with itself, so that verification can be shown to catch it:
:meth:`Account.hide` leaves a ledger entry out of every Ledgers answer (its running balance stays
in the entries after it), and :meth:`Account.offset` adds an amount to an asset in Balance and
BalanceEx.

Why one module of this length: one coherent account (fills, ledger legs, orders, running balances)
is the fake's promise; its pieces must agree, so they are made together. Test equipment only.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .history import History, Refusal, Window, fmt, kid, seconds4, window_page, within
from .market import ASSETS, PAIRS, price

#: What Kraken puts in ``postxid`` of a trade that opened no position.
POSTXID = "TKH2SE-M7IF5-CFI7LT"
MAKER_FEE, TAKER_FEE = Decimal("0.0016"), Decimal("0.0026")
_TRADE_TYPES = ("all", "any position", "closed position", "closing position", "no position")


@dataclass(frozen=True)
class Step:
    """One activity of the cycle.

    ``kind``: ``deposit``, ``withdrawal``, ``reward`` (staking, on a ``.S`` asset), ``earn`` (an earn
    reward), ``stake``/``unstake`` (spot ↔ ``.S``), ``allocate`` (earn autoallocation to ``.F``),
    ``order`` (filled by ``fills``, plus a cancel of another order at the same time when
    ``cancel``) or ``cancel``.
    """

    kind: str
    asset: str = ""  # the asset, or the pair of an order
    amount: str = "0"
    fee: str = "0"
    side: str = ""
    fills: tuple[str, ...] = ()
    cancel: bool = False
    to: str = ""  # the other asset of a stake, unstake or allocation

    @property
    def entries(self) -> int:
        """Ledger entries it appends."""
        if self.kind == "order":
            return 2 * len(self.fills)
        if self.kind in ("stake", "unstake", "allocate"):
            return 2
        return 0 if self.kind == "cancel" else 1

    @property
    def orders(self) -> int:
        """Closed orders it appends."""
        if self.kind == "order":
            return 1 + self.cancel
        return 1 if self.kind == "cancel" else 0


#: The account's life, over and over. Per cycle it adds to every balance it takes from, so no
#: balance goes negative (prices move within ±3.2%); 33 ledger entries, 10 fills, 10 closed orders.
CYCLE: tuple[Step, ...] = (
    Step("deposit", "ZUSD", "1000"),
    Step("order", "XXBTZUSD", side="buy", fills=("0.01",)),
    Step("order", "XETHZUSD", side="buy", fills=("0.01", "0.02")),
    Step("order", "XXBTZEUR", side="sell", fills=("0.004",), cancel=True),
    Step("deposit", "ZEUR", "500"),
    Step("order", "XETHZUSD", side="sell", fills=("0.01",)),
    Step("deposit", "DOT", "5"),
    Step("order", "XXBTZEUR", side="buy", fills=("0.002",)),
    Step("stake", "DOT", "2", to="DOT.S"),
    Step("order", "XXBTZUSD", side="sell", fills=("0.005",)),
    Step("reward", "DOT.S", "0.0123456789"),
    Step("withdrawal", "ZUSD", "200", fee="5"),
    Step("order", "XETHZUSD", side="buy", fills=("0.01",)),
    Step("allocate", "XETH", "0.005", to="ETH.F"),
    Step("order", "XETHZEUR", side="sell", fills=("0.01", "0.01")),
    Step("earn", "ETH.F", "0.0000123456"),
    Step("withdrawal", "XXBT", "0.0005", fee="0.00002"),
    Step("unstake", "DOT.S", "1", to="DOT"),
    Step("cancel", "SOLUSD"),
)
#: What growing fills or orders alone does: each buy sold again, so the balances stay where they
#: are but for the fees and the price's moves (no deposit needed, whatever the prices); 5 fills
#: and 6 closed orders a turn.
ORDER_STEPS: tuple[Step, ...] = (
    Step("order", "XXBTZUSD", side="buy", fills=("0.01",)),
    Step("order", "XETHZUSD", side="buy", fills=("0.01", "0.01"), cancel=True),
    Step("order", "XXBTZUSD", side="sell", fills=("0.01",)),
    Step("order", "XETHZUSD", side="sell", fills=("0.02",)),
    Step("cancel", "SOLUSD"),
)
#: What fills a ledger slot a two-entry activity would overflow (in turn): a growth rate appends
#: one entry at a time, so its ledger grows by these, and the fills come from the trades' rate.
FILLERS: tuple[Step, ...] = (
    Step("deposit", "ZUSD", "10"),
    Step("reward", "DOT.S", "0.0012345678"),
    Step("deposit", "ZEUR", "10"),
    Step("earn", "ETH.F", "0.0000012345"),
    Step("deposit", "DOT", "1"),
)


def _places(asset: str) -> int:
    return ASSETS[asset][1]


def _q(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


class Account:
    """The account's three private histories (``ledger``, ``trades``, ``closed``), its running
    balances, its open orders and its two faults. Not thread-safe: the fake calls it under its
    lock."""

    #: the methods it answers
    METHODS = frozenset(
        {
            "Balance",
            "BalanceEx",
            "TradeBalance",
            "OpenOrders",
            "ClosedOrders",
            "TradesHistory",
            "Ledgers",
        }
    )

    def __init__(self, *, t0: float, size: int, rates: Mapping[str, float]) -> None:
        self.t0 = t0
        self.ledger, self.trades, self.closed = History(), History(), History()
        self.balances: dict[str, Decimal] = {}
        self.hidden: set[str] = set()
        self.offsets: dict[str, Decimal] = {}
        self.rates = dict(rates)
        self.grown = dict.fromkeys(self.rates, 0)  # what each growth rate has appended so far
        self._step = self._order_step = 0  # where the cycle and the order-only cycle are
        self._seq: dict[str, int] = {}
        self._last = -math.inf
        self._seed(size)
        # Two resting limit orders placed an hour before the start; they never fill.
        self.open_orders = {
            kid("O", f"open:{i}"): self._order(
                "open", ORDER_STEPS[i].asset, ORDER_STEPS[i].side, i, round(t0 - 3600 + 600 * i, 4)
            )
            for i in range(2)
        }

    # -- growing ------------------------------------------------------------------------------

    def _seed(self, n: int, spacing: float = 300.0) -> None:
        """``n`` ledger entries before ``t0``, about ``spacing`` seconds apart."""
        done = 0
        while done < n:
            jitter = zlib.crc32(b"%d" % done) % 9973 / 9973 * spacing / 2
            done += self._ledger_step(n - done, self.t0 - (n - done) * spacing + jitter)

    def take_ledger(self, n: int, t: float) -> list[str]:
        """Append exactly ``n`` ledger entries at ``t``; returns their ids."""
        before = len(self.ledger)
        done = 0
        while done < n:
            done += self._ledger_step(n - done, t)
        return self.ledger.ids[before:]

    def take_fills(self, n: int, t: float) -> list[str]:
        """Append exactly ``n`` fills (with their ledger legs) at ``t``; returns their txids."""
        before = len(self.trades)
        while len(self.trades) - before < n:
            step = ORDER_STEPS[self._order_step % len(ORDER_STEPS)]
            self._order_step += 1
            if step.kind == "order":
                left = n - (len(self.trades) - before)
                self._funded(dataclasses.replace(step, fills=step.fills[:left]), t)
        return self.trades.ids[before:]

    def take_orders(self, n: int, t: float) -> list[str]:
        """Append exactly ``n`` closed orders (filled ones with their fills and legs) at ``t``."""
        before = len(self.closed)
        while len(self.closed) - before < n:
            step = ORDER_STEPS[self._order_step % len(ORDER_STEPS)]
            self._order_step += 1
            left = n - (len(self.closed) - before)
            self._funded(dataclasses.replace(step, cancel=step.cancel and left > 1), t)
        return self.closed.ids[before:]

    def materialise(self, now: float) -> None:
        """Append what the growth rates have brought by ``now``: the k-th entry of a history
        growing at ``rate`` arrives at t0 + k/rate; the histories' arrivals are merged in time."""
        takers: dict[str, Callable[[int, float], object]] = {
            "ledger": self.take_ledger,
            "trades": self.take_fills,
            "closed": self.take_orders,
        }
        while True:
            due = {
                name: self.t0 + (self.grown[name] + 1) / rate
                for name, rate in self.rates.items()
                if rate > 0 and self.grown[name] < math.floor((now - self.t0) * rate)
            }
            if not due:
                return
            name = min(due, key=lambda k: due[k])
            takers[name](1, due[name])
            self.grown[name] += 1

    def _ledger_step(self, room: int, t: float) -> int:
        """Append the cycle's next activity at ``t`` if it fits in ``room`` ledger entries (else a
        one-entry deposit); returns how many entries it appended (cancels come along for free)."""
        step = CYCLE[self._step % len(CYCLE)]
        if step.entries > room or self._lacks(step, t) is not None:
            step = self._funding(step, t) if step.entries <= room else self._filler()
            self._apply(step, t)
            return 1
        self._step += 1
        self._apply(step, t)
        return step.entries

    # -- what an activity does --------------------------------------------------------------------

    def _funded(self, step: Step, t: float) -> None:
        """Apply ``step`` at ``t``, after a deposit if it needs one."""
        if self._lacks(step, t) is not None:
            self._apply(self._funding(step, t), t)
        self._apply(step, t)

    def _funding(self, step: Step, t: float) -> Step:
        """The deposit that lets ``step`` go through."""
        lacking = self._lacks(step, t)
        if lacking is None:
            return self._filler()
        asset, amount = lacking
        return Step("deposit", asset, str(_q(amount * 2 + 1, _places(asset))))

    def _lacks(self, step: Step, t: float) -> tuple[str, Decimal] | None:
        """``(asset, shortfall)`` when ``step`` would take a balance below zero, else None."""
        need: dict[str, Decimal] = {}
        if step.kind == "withdrawal":
            need[step.asset] = Decimal(step.amount) + Decimal(step.fee)
        elif step.kind in ("stake", "unstake", "allocate"):
            need[step.asset] = Decimal(step.amount)
        elif step.kind == "order" and step.fills:
            _, base, quote, _, _ = PAIRS[step.asset]
            vol = sum((Decimal(v) for v in step.fills), Decimal(0))
            if step.side == "sell":
                need[base] = vol
            else:
                cost = price(step.asset, self._opentm(t, self._peek("order"))) * vol
                need[quote] = cost * (1 + TAKER_FEE) + 1
        for asset, amount in need.items():
            short = amount - self.balances.get(asset, Decimal(0))
            if short > 0:
                return asset, short
        return None

    def _apply(self, step: Step, t: float) -> None:
        key = max(seconds4(t), self._last)
        self._last = key
        kind = step.kind
        if kind in ("deposit", "withdrawal", "reward", "earn"):
            sign = -1 if kind == "withdrawal" else 1
            prefix, typ, subtype = {
                "deposit": ("Q", "deposit", ""),
                "withdrawal": ("A", "withdrawal", ""),
                "reward": ("S", "staking", ""),
                "earn": ("E", "earn", "reward"),
            }[kind]
            refid = kid(prefix, f"{kind}:{self._next(kind)}")
            self._entry(key, refid, typ, subtype, step.asset, sign * Decimal(step.amount), step.fee)
        elif kind in ("stake", "unstake", "allocate"):
            n = self._next(kind)
            amount = Decimal(step.amount)
            if kind == "allocate":  # one refid for both sides
                refid = kid("E", f"allocate:{n}")
                legs = [(refid, "earn", "autoallocation")] * 2
            else:  # Kraken gives each side of a staking transfer a refid of its own
                out, into = (
                    ("spottostaking", "stakingfromspot")
                    if kind == "stake"
                    else ("stakingtospot", "spotfromstaking")
                )
                legs = [
                    (kid("R", f"{kind}:{n}:out"), "transfer", out),
                    (kid("R", f"{kind}:{n}:in"), "transfer", into),
                ]
            self._entry(key, *legs[0], step.asset, -amount, "0")
            self._entry(key, *legs[1], step.to, amount, "0")
        elif kind == "order":
            self._fill_order(step, key)
        if step.kind == "cancel" or step.cancel:
            seq = self._next("order")
            pair = "SOLUSD"
            opentm = self._opentm(key, seq)
            order = self._order("canceled", pair, "buy" if seq % 2 == 0 else "sell", seq, opentm)
            order.update(closetm=key, reason="User requested")
            self.closed.add(key, kid("O", f"order:{seq}"), order)

    def _fill_order(self, step: Step, key: float) -> None:
        pair, side = step.asset, step.side
        _, base, quote, _, _ = PAIRS[pair]
        seq = self._next("order")
        ordertxid = kid("O", f"order:{seq}")
        opentm = self._opentm(key, seq)
        limit = price(pair, opentm)  # a limit order fills at its limit
        order = self._order("closed", pair, side, seq, opentm)
        total_vol = total_cost = total_fee = Decimal(0)
        sign = 1 if side == "buy" else -1
        legs = []
        for text in step.fills:
            n = self._next("fill")
            txid = kid("T", f"trade:{n}")
            vol = Decimal(text)
            cost = limit * vol  # exact: prices have at most 2 decimals, volumes 3
            maker = n % 3 != 0
            fee = _q(cost * (MAKER_FEE if maker else TAKER_FEE), _places(quote))
            trade = {
                "ordertxid": ordertxid,
                "postxid": POSTXID,
                "pair": pair,
                "time": key,
                "type": side,
                "ordertype": "limit",
                "price": fmt(limit, 5),
                "cost": fmt(cost, 5),
                "fee": fmt(fee, 5),
                "vol": fmt(vol, 8),
                "margin": "0.00000",
                "leverage": "0",
                "misc": "",
                "trade_id": 40_000_000 + n,
                "maker": maker,
            }
            self.trades.add(key, txid, trade)
            legs.append((txid, base, sign * vol, Decimal(0)))
            legs.append((txid, quote, -sign * cost, fee))
            total_vol, total_cost, total_fee = total_vol + vol, total_cost + cost, total_fee + fee
        # Kraken lists the entries of one time in no order a client may rely on: the legs of a
        # second fill come first, so a chain checked in the answer's order would break.
        order_of_legs = legs if len(legs) == 2 else legs[2:] + legs[:2]
        balances = self._running(legs)
        for (txid, asset, amount, fee), balance in sorted(
            zip(legs, balances, strict=True), key=lambda lb: order_of_legs.index(lb[0])
        ):
            self._add_entry(key, txid, "trade", "", asset, amount, fee, balance)
        order.update(
            vol=fmt(total_vol, 8),
            vol_exec=fmt(total_vol, 8),
            cost=fmt(total_cost, 5),
            fee=fmt(total_fee, 5),
            price=fmt(limit, 5),
            closetm=key,
            reason=None,
        )
        order["descr"].update(
            price=fmt(limit, PAIRS[pair][4]),
            order=f"{side} {fmt(total_vol, 8)} {PAIRS[pair][0]} @ limit {fmt(limit, PAIRS[pair][4])}",
        )
        self.closed.add(key, ordertxid, order)

    def _running(self, legs: list[tuple[str, str, Decimal, Decimal]]) -> list[Decimal]:
        """The balance after each leg, applied in order; moves the running balances."""
        out = []
        for _, asset, amount, fee in legs:
            value = self.balances.get(asset, Decimal(0)) + amount - fee
            self.balances[asset] = value
            out.append(value)
        return out

    def _entry(
        self, key: float, refid: str, typ: str, subtype: str, asset: str, amount: Decimal, fee: Any
    ) -> None:
        (balance,) = self._running([(refid, asset, amount, Decimal(fee))])
        self._add_entry(key, refid, typ, subtype, asset, amount, Decimal(fee), balance)

    def _add_entry(
        self,
        key: float,
        refid: str,
        typ: str,
        subtype: str,
        asset: str,
        amount: Decimal,
        fee: Decimal,
        balance: Decimal,
    ) -> None:
        places = _places(asset)
        entry = {
            "refid": refid,
            "time": key,
            "type": typ,
            "subtype": subtype,
            "aclass": "currency",
            "asset": asset,
            "amount": fmt(amount, places),
            "fee": fmt(fee, places),
            "balance": fmt(balance, places),
        }
        self.ledger.add(key, kid("L", f"ledger:{self._next('ledger')}"), entry)

    def _filler(self) -> Step:
        return FILLERS[self._next("filler") % len(FILLERS)]

    def _next(self, name: str) -> int:
        n = self._seq.get(name, 0)
        self._seq[name] = n + 1
        return n

    def _peek(self, name: str) -> int:
        return self._seq.get(name, 0)

    @staticmethod
    def _opentm(closetm: float, seq: int) -> float:
        return round(closetm - 60 - seq % 50 * 7, 4)

    @staticmethod
    def _order(status: str, pair: str, side: str, seq: int, opentm: float) -> dict[str, Any]:
        """An order as OpenOrders/ClosedOrders show it, before any fill."""
        alt, decimals = PAIRS[pair][0], PAIRS[pair][4]
        limit = price(pair, opentm)
        vol = fmt(Decimal("0.01") * (1 + seq % 4), 8)
        order = {
            "refid": None,
            "userref": seq % 3,
            "status": status,
            "opentm": opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": alt,
                "type": side,
                "ordertype": "limit",
                "price": fmt(limit, decimals),
                "price2": "0",
                "leverage": "none",
                "order": f"{side} {vol} {alt} @ limit {fmt(limit, decimals)}",
                "close": "",
            },
            "vol": vol,
            "vol_exec": "0.00000000",
            "cost": "0.00000",
            "fee": "0.00000",
            "price": "0.00000",
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": "fciq",  # fee in quote, so the quote leg carries it
        }
        return order

    # -- faults -----------------------------------------------------------------------------------

    def hide(self, ledger_id: str) -> None:
        """Leave a ledger entry out of every Ledgers answer (and its count) from now on."""
        if ledger_id not in self.ledger.index:
            raise ValueError(f"no ledger entry {ledger_id!r}")
        self.hidden.add(ledger_id)

    def offset(self, asset: str, amount: Decimal) -> None:
        """Add ``amount`` to ``asset`` in Balance and BalanceEx answers from now on."""
        self.offsets[asset] = self.offsets.get(asset, Decimal(0)) + amount

    # -- the private methods ----------------------------------------------------------------------

    def answer(self, method: str, params: Mapping[str, str], now: float) -> Any:
        handler: Callable[[Mapping[str, str], float], Any] = getattr(self, method)
        return handler(params, now)

    def running_balances(self) -> dict[str, str]:
        """Each asset's latest running balance, with the offsets, as Balance answers it."""
        assets = list(self.balances) + [a for a in self.offsets if a not in self.balances]
        return {
            a: fmt(
                self.balances.get(a, Decimal(0)) + self.offsets.get(a, Decimal(0)),
                _places(a) if a in ASSETS else 10,
            )
            for a in assets
        }

    def Balance(self, params: Mapping[str, str], now: float) -> Any:
        return self.running_balances()

    def BalanceEx(self, params: Mapping[str, str], now: float) -> Any:
        return {
            a: {"balance": v, "hold_trade": "0.0000"} for a, v in self.running_balances().items()
        }

    def TradeBalance(self, params: Mapping[str, str], now: float) -> Any:
        held = self.balances
        eb = held.get("ZUSD", Decimal(0))
        for asset, pair in (("XXBT", "XXBTZUSD"), ("XETH", "XETHZUSD")):
            eb += held.get(asset, Decimal(0)) * price(pair, now)
        total = fmt(eb, 4)
        zero = "0.0000"
        return {
            **dict.fromkeys(("eb", "tb", "e", "mf"), total),
            **dict.fromkeys(("m", "n", "c", "v", "uv"), zero),
        }

    def OpenOrders(self, params: Mapping[str, str], now: float) -> Any:
        userref = params.get("userref")
        return {
            "open": {
                txid: order
                for txid, order in self.open_orders.items()
                if userref is None or str(order["userref"]) == userref
            }
        }

    def ClosedOrders(self, params: Mapping[str, str], now: float) -> Any:
        # Kraken documents "both" as the default; the fake windows by close time unless told,
        # which is what a collector keyed on closetm must ask for anyway.
        closetime = params.get("closetime") or "close"
        windows: dict[str, Window | None] = {
            "close": None,
            "open": lambda e, start, end: within(e["opentm"], start, end),
            "both": lambda e, start, end: (
                within(e["opentm"], start, end) or within(e["closetm"], start, end)
            ),
        }
        if closetime not in windows:
            raise Refusal("EGeneral:Invalid arguments:closetime")
        userref = params.get("userref")
        match = None if userref is None else (lambda e: str(e["userref"]) == userref)
        page, count = window_page(self.closed, params, match=match, window=windows[closetime])
        return {"closed": page, "count": count}

    def TradesHistory(self, params: Mapping[str, str], now: float) -> Any:
        kind = params.get("type") or "all"
        if kind not in _TRADE_TYPES:
            raise Refusal("EGeneral:Invalid arguments:type")
        # None of the fake's trades touches a position.
        match = None if kind in ("all", "no position") else (lambda e: False)
        page, count = window_page(self.trades, params, match=match)
        return {"trades": page, "count": count}

    def Ledgers(self, params: Mapping[str, str], now: float) -> Any:
        # `without_count` is accepted and ignored: counting costs the fake nothing.
        page, count = window_page(
            self.ledger, params, match=_ledger_filter(params), hidden=self.hidden
        )
        return {"ledger": page, "count": count}


def _ledger_filter(params: Mapping[str, str]) -> Callable[[dict[str, Any]], bool] | None:
    by_alt = {alt: name for name, (alt, _) in ASSETS.items()}
    assets = params.get("asset") or "all"
    kind = params.get("type") or "all"
    aclass = params.get("aclass") or "currency"
    if assets == "all" and kind == "all" and aclass == "currency":
        return None
    wanted = None if assets == "all" else {by_alt.get(a, a) for a in assets.split(",")}
    return lambda e: (
        (wanted is None or e["asset"] in wanted)
        and kind in ("all", e["type"])
        and aclass == e["aclass"]
    )
