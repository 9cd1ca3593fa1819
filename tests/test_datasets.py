"""Typed tables against the fake's ground truth, set for set, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from collector import datasets
from collector.client import API
from collector.datasets.base import decimal, integer, timestamp
from collector.datasets.market import Trades
from collector.errors import BadResponse
from collector.jobfile import RETENTION_KEYS, Job, load
from collector.numbers import NumberError, parse_decimal, parse_time
from collector.records import Prepared, RunRecord, decimal_text, decode, encode, time_text
from collector.runner import Runner
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

from .helpers import wait_for
from .test_service import job_file, rows

# On PostgreSQL, every test here must write its rows through the COPY path (conftest.copy_path).
pytestmark = pytest.mark.usefixtures("copy_path")

FAST = "rate_limit: {max: 1000, decay: 1000}\n  public_rate_limit: {max: 1000, decay: 1000}"


class Clock:
    """The fake's data time, moved by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _service(tmp_path, fake, keypair, url, jobs: str, kraken: str = FAST, clock=None) -> Service:
    # Without the service's own Assets and AssetPairs runs: these tests count every run.
    config = load(
        job_file(tmp_path, fake, keypair, url, jobs, kraken_extra=kraken, reference=False)
    )
    if clock is None:
        return Service(config)
    return Service(config, clock=lambda: datetime.fromtimestamp(clock.t, UTC))


def _once(service: Service) -> None:
    try:
        assert service.run_once(), rows_of(service)
    finally:
        service.stop()


def rows_of(service: Service) -> list:
    return rows(service.config.database, "SELECT job, status, error FROM runs ORDER BY id")


def _cursor(url: str, job: str) -> dict:
    (value,) = rows(url, f"SELECT value FROM cursors WHERE job = '{job}'")[0]
    return value if isinstance(value, dict) else json.loads(value)


def _epoch(value) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).timestamp()


@pytest.fixture
def grown():
    """A fake whose ledger has 620 entries at start (188 fills and 188 closed orders with them) and
    that we grow by hand; its clock runs 10 s behind ours, so what it adds before a run is inside
    that run's (settled) window."""
    with FakeKraken(tier=None, history={"ledger": 620}, now=lambda: time.time() - 10) as fake:
        yield fake


def test_private_histories_backfill_and_stay_complete_as_they_grow(
    tmp_path, grown, database_url
) -> None:
    keypair = grown.add_key()
    jobs = (
        "ledger: {method: Ledgers, every: 1h}\n"
        "fills: {method: TradesHistory, every: 1h}\n"
        "closed: {method: ClosedOrders, every: 1h}\n"
    )
    for growth in (0, 75, 180):  # then more than a page between runs, then several
        grown.grow("ledger", growth)
        grown.grow("trades", growth)
        _once(_service(tmp_path, grown, keypair, database_url, jobs))
    # A run collects up to the end it froze at its start, in whole seconds; later ones are the
    # next run's. Everything up to there is stored, nothing else.
    done = _cursor(database_url, "ledger")["done"]
    ledger = {k: e for k, e in grown.ledger().items() if e["time"] <= done}
    stored = {r.ledger_id: r for r in rows(database_url, "SELECT * FROM ledger")}
    # 620, then 75 and 180 entries with the two legs of each of 75 and 180 fills.
    assert set(stored) == set(ledger) and len(ledger) == 620 + 3 * 75 + 3 * 180
    for ledger_id, entry in ledger.items():  # the values Kraken sent, exactly
        row = stored[ledger_id]
        assert Decimal(str(row.amount)) == Decimal(entry["amount"])
        assert Decimal(str(row.fee)) == Decimal(entry["fee"])
        assert row.refid == entry["refid"] and row.asset == entry["asset"]
        assert abs(_epoch(row.time) - entry["time"]) < 1e-6
    fills_done = _cursor(database_url, "fills")["done"]
    fills = {k for k, e in grown.my_trades().items() if e["time"] <= fills_done}
    assert {r[0] for r in rows(database_url, "SELECT txid FROM my_trades")} == fills
    closed_done = _cursor(database_url, "closed")["done"]
    closed = {k for k, e in grown.closed_orders().items() if e["closetm"] <= closed_done}
    assert {r[0] for r in rows(database_url, "SELECT txid FROM orders")} == closed
    assert len(fills) == 521 and len(closed) == 521
    runs = rows(database_url, "SELECT job, status, pages, new_rows FROM runs ORDER BY id")
    ledger_runs = [(s, p, n) for j, s, p, n in runs if j == "ledger"]
    # The backfill paged all 620 (13 pages); later runs only what was new (plus the overlap).
    assert ledger_runs[0] == ("ok", 13, 620)
    assert [n for _, _, n in ledger_runs[1:]] == [3 * 75, 3 * 180]
    # The new ones + the overlap (the run before's, all at one time within the last minute).
    assert max(p for _, p, _ in ledger_runs[1:]) <= (225 + 540 + 49) // 50, ledger_runs


def test_ledger_grows_faster_than_a_page_per_run(tmp_path, database_url) -> None:
    clock = Clock(time.time())  # the exchange's time and ours, moved by hand
    with FakeKraken(tier=None, history={"ledger": 300}, growth={"ledger": 10.0}, now=clock) as fake:
        keypair = fake.add_key()
        jobs = "l: {method: Ledgers, every: 1h}"
        for _ in range(3):
            _once(_service(tmp_path, fake, keypair, database_url, jobs, clock=clock))
            clock.t += 31  # 310 new entries before the next run: more than six pages
        clock.t -= 31
        truth = {
            k for k, e in fake.ledger().items() if e["time"] <= _cursor(database_url, "l")["done"]
        }
    stored = [r[0] for r in rows(database_url, "SELECT ledger_id FROM ledger")]
    assert len(stored) == len(set(stored)) and set(stored) == truth
    added = [r[0] for r in rows(database_url, "SELECT new_rows FROM runs ORDER BY id")]
    assert added[0] == 300 and sum(added) == len(truth) and len(truth) >= 850


def test_count_changing_while_paging_repages_the_window(tmp_path, database_url) -> None:
    """Kraken's clock 30 s behind ours: entries it adds while we page land inside our frozen
    window, so the count moves; the window is paged again, and nothing is lost or doubled."""
    with FakeKraken(tier=None, history={"ledger": 600}, now=lambda: time.time() - 30) as fake:
        # (30 s behind: more than the window's settling time, so new entries land inside it)
        keypair = fake.add_key()
        slow = "rate_limit: {max: 4, decay: 6}\n  public_rate_limit: {max: 1000, decay: 1000}"
        service = _service(
            tmp_path, fake, keypair, database_url, "l: {method: Ledgers, every: 1h}", slow
        )
        grower = threading.Thread(
            target=lambda: (wait_for(lambda: fake.calls["Ledgers"] >= 3), fake.grow("ledger", 2))
        )
        grower.start()
        _once(service)
        grower.join(30)
        assert {r[0] for r in rows(database_url, "SELECT ledger_id FROM ledger")} == set(
            fake.ledger()
        )
    ((pages, new_rows),) = rows(database_url, "SELECT pages, new_rows FROM runs")
    assert pages > 13 and new_rows == 602  # paged again, each entry stored once


def test_kill_9_at_random_points_of_a_backfill_then_restart(tmp_path, database_url) -> None:
    size = 2500  # 50 pages
    with FakeKraken(tier=None, history={"ledger": size}) as fake:
        keypair = fake.add_key()
        path = job_file(
            tmp_path,
            fake,
            keypair,
            database_url,
            "l: {method: Ledgers, every: 1h}",
            kraken_extra=FAST,
        )
        # A killed holder's lease runs out after failover: keep it short here.
        path.write_text(path.read_text() + "failover: 2s\n")
        rng = random.Random(11)
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "run", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                target = fake.calls["Ledgers"] + rng.randint(3, 15)
                wait_for(lambda t=target: fake.calls["Ledgers"] >= t)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
        killed_calls = fake.calls["Ledgers"]
        service = Service(load(path))
        _once(service)
        stored = [r[0] for r in rows(database_url, "SELECT ledger_id FROM ledger")]
        assert len(stored) == len(set(stored)) and set(stored) == set(fake.ledger())
        # Stored pages were not fetched again: at most the page in flight at each kill, on top
        # of the 50 pages.
        assert fake.calls["Ledgers"] <= size // 50 + 2, (killed_calls, fake.calls)


def test_database_outage_in_the_middle_of_paging_loses_nothing(tmp_path, postgres) -> None:
    url = postgres.new_database()
    with FakeKraken(tier=None, history={"ledger": 2000}) as fake:
        keypair = fake.add_key()
        slow = "rate_limit: {max: 3, decay: 25}\n  public_rate_limit: {max: 1000, decay: 1000}"
        service = _service(tmp_path, fake, keypair, url, "l: {method: Ledgers, every: 1h}", slow)
        job = service.config.jobs[0]
        service.open()
        done = threading.Event()
        thread = threading.Thread(target=lambda: (service.execute(job), done.set()))
        thread.start()
        try:
            wait_for(lambda: service.writer.written >= 3)  # some pages are in the database
            postgres.halt()
            try:
                wait_for(lambda: len(service.spool) >= 5)  # ...and some wait in the spool
            finally:
                postgres.start()
            assert done.wait(120)
            wait_for(lambda: len(service.spool) == 0)
        finally:
            thread.join(120)
            service.stop()
        stored = [r[0] for r in rows(url, "SELECT ledger_id FROM ledger")]
        assert len(stored) == len(set(stored)) and set(stored) == set(fake.ledger())
        (status,) = rows(url, "SELECT status, pages FROM runs WHERE job = 'l'")
        assert status == ("ok", 40)


def test_public_trades_chain_since_and_last_without_gaps(tmp_path, database_url) -> None:
    with FakeKraken(tier=None) as fake:
        keypair = fake.add_key()
        jobs = "t: {method: Trades, params: {pair: XBTUSD}, every: 1h}"
        _once(_service(tmp_path, fake, keypair, database_url, jobs))  # from now on
        first = int(_cursor(database_url, "t"))
        for burst in (10, 2500, 1000):  # a burst larger than a page: the run keeps paging
            fake.grow("public_trades", burst, pair="XBTUSD")
            _once(_service(tmp_path, fake, keypair, database_url, jobs))
        everything = {row[6]: row for row in fake.public_trades("XBTUSD")}
    start = first / 1e9  # the first run began collecting here (since = now)
    stored = {r.trade_id: r for r in rows(database_url, "SELECT * FROM trades")}
    # Every trade after the start, each once (the key is its id); float seconds blur a microsecond.
    assert {k for k, r in everything.items() if r[2] > start + 1e-6} <= set(stored)
    assert set(stored) <= {k for k, r in everything.items() if r[2] > start - 1e-6}
    assert len(stored) >= 3510
    for trade_id, row in stored.items():
        price, volume, _, side, kind, _, _ = everything[trade_id]
        assert Decimal(str(row.price)) == Decimal(price) and row.pair == "XXBTZUSD"
        assert Decimal(str(row.volume)) == Decimal(volume)
        assert (row.side, row.order_type) == (
            {"b": "buy", "s": "sell"}[side],
            {"m": "market", "l": "limit"}[kind],
        )


def test_an_ohlc_candle_that_closes_between_runs_is_finalised(tmp_path, database_url) -> None:
    clock = Clock(1_790_000_000 + 20.5)  # 20 s into a minute candle
    with FakeKraken(tier=None, now=clock) as fake:
        keypair = fake.add_key()
        jobs = "c: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}"
        _once(_service(tmp_path, fake, keypair, database_url, jobs))
        open_at = int(clock.t // 60 * 60)
        sql = f"SELECT final, close, run_id FROM ohlc WHERE time = '{_iso(open_at, database_url)}'"
        (before,) = rows(database_url, sql)
        assert before[0] in (False, 0)
        clock.t += 60  # the candle closes; a new one opens
        _once(_service(tmp_path, fake, keypair, database_url, jobs))
        final = fake.candle("XBTUSD", 1, open_at)
        (after,) = rows(database_url, sql)
        assert after[0] in (True, 1) and Decimal(str(after[1])) == Decimal(final[4])
        assert after[2] == before[2]  # the run that first stored it
        assert rows(database_url, "SELECT count(*) FROM ohlc")[0][0] == 721
        closed = {
            _epoch(r[0]): r[1]
            for r in rows(database_url, "SELECT time, close FROM ohlc WHERE final")
        }
        for candle in fake.candles("XBTUSD", 1):
            assert Decimal(str(closed[candle[0]])) == Decimal(candle[4])


def test_ohlc_since_older_than_kraken_keeps_is_a_recorded_gap(tmp_path, database_url) -> None:
    with FakeKraken(tier=None) as fake:
        keypair = fake.add_key()
        jobs = (
            'c: {method: OHLC, params: {pair: XBTUSD, interval: 5}, since: "2020-01-01", every: 1h}'
        )
        _once(_service(tmp_path, fake, keypair, database_url, jobs))
    ((dataset, pair, start, reason),) = rows(
        database_url, "SELECT dataset, pair, start, reason FROM gaps"
    )
    assert (dataset, pair) == ("ohlc", "XXBTZUSD") and "720" in reason
    assert _epoch(start) == datetime(2020, 1, 1, 0, 5, tzinfo=UTC).timestamp()


def test_ticker_snapshots_and_spread_rows(tmp_path, fake, keypair, database_url) -> None:
    jobs = (
        'tick: {method: Ticker, params: {pair: "XBTUSD,ETHUSD"}, every: 1h}\n'
        "spr: {method: Spread, params: {pair: XBTUSD}, every: 1h}\n"
    )
    for _ in range(2):
        _once(_service(tmp_path, fake, keypair, database_url, jobs))
    snapshots = rows(database_url, "SELECT run_id, pair, last FROM ticker ORDER BY run_id, pair")
    assert [p for _, p, _ in snapshots] == ["XETHZUSD", "XXBTZUSD"] * 2
    assert rows(database_url, "SELECT count(*) FROM runs WHERE result IS NOT NULL")[0][0] == 0
    spreads = rows(database_url, "SELECT time, bid, ask FROM spread")
    assert spreads and len(spreads) == len({tuple(map(str, r)) for r in spreads})


@pytest.mark.parametrize("asked", ["XBTUSD,ETHUSD", "XBT/USD, eth/usd", "XXBTZUSD,XETHZUSD"])
def test_a_ticker_answer_holding_pairs_not_asked_for_stores_only_those_asked(
    tmp_path, fake, keypair, asked
) -> None:
    """A Ticker answer with 3,000 pairs besides the two asked for (a hostile or broken server):
    only the two are stored, however the job spells them; a job without ``pair`` keeps all."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    real = fake.market.Ticker({"pair": "XBTUSD,ETHUSD"}, time.time())
    extra = {f"FAKE{i:04d}ZUSD": real["XXBTZUSD"] for i in range(3000)}
    body = json.dumps({"error": [], "result": {**extra, **real}}).encode()
    fake.inject("raw", method="Ticker", body=body, count=2)
    jobs = (
        f'tick: {{method: Ticker, params: {{pair: "{asked}"}}, every: 1h}}\n'
        "all: {method: Ticker, every: 1h}\n"
    )
    _once(_service(tmp_path, fake, keypair, url, jobs))
    mine = rows(
        url,
        "SELECT t.pair FROM ticker t JOIN runs r ON r.id = t.run_id "
        "WHERE r.job = 'tick' ORDER BY t.pair",
    )
    assert [p for (p,) in mine] == ["XETHZUSD", "XXBTZUSD"]
    (everything,) = rows(
        url, "SELECT count(*) FROM ticker t JOIN runs r ON r.id = t.run_id WHERE r.job = 'all'"
    )[0]
    assert everything == 3002  # no pair asked: every pair is what the job collects


def test_raw_true_keeps_the_answers_too(tmp_path, fake, keypair, database_url) -> None:
    jobs = "tick: {method: Ticker, params: {pair: XBTUSD}, every: 1h, raw: true}"
    _once(_service(tmp_path, fake, keypair, database_url, jobs))
    (result,) = rows(database_url, "SELECT result FROM runs")[0]
    result = result if isinstance(result, dict) else json.loads(result)
    assert "XXBTZUSD" in result and rows(database_url, "SELECT count(*) FROM ticker")[0][0] == 1


def test_kraken_times_are_exact_to_the_microsecond() -> None:
    now = datetime.now(UTC)
    run = RunRecord("j", "Ledgers", {}, scheduled_at=now, started_at=now, finished_at=now)
    assert timestamp(run, 1688669448.1234, "t") == datetime(
        2023, 7, 6, 18, 50, 48, 123400, tzinfo=UTC
    )


def test_the_fast_reads_of_times_and_decimals_are_the_checked_reads() -> None:
    """timestamp() and decimal() read Kraken's usual shapes without the general check; what they
    give (or refuse) is exactly what numbers.parse_time/parse_decimal give."""
    now = datetime.now(UTC)
    run = RunRecord("j", "Trades", {}, scheduled_at=now, started_at=now, finished_at=now)
    rnd = random.Random(29)
    times: list[object] = [0.0, -0.0, 1e-05, 0.5, 1688669448.1234567, 99999999999.99998, 2.0**32]
    times += [1796678402.4474502, 4294967295.9999995, 10**11 - 1, 10**11, -1, float("nan"), True]
    for _ in range(20_000):
        times += [rnd.uniform(0, 5e9), round(rnd.uniform(0, 2e9), rnd.randint(0, 8))]
    for value in times:
        try:
            expected: object = parse_time(value, field="t")
        except NumberError:
            expected = BadResponse
        try:
            got: object = timestamp(run, value, "t")
        except BadResponse:
            got = BadResponse
        assert got == expected, value
    texts = ["0", "-0", "1.5", "0012.3400", "9" * 40, "9" * 41, "0." + "0" * 38 + "1", "1e5"]
    texts += [" 1", "1_0", "NaN", "--1", "+1", "1.", ".5", "\u0663", "-", ""]
    texts += [f"{rnd.uniform(-1e6, 1e6):.{rnd.randint(0, 12)}f}" for _ in range(5_000)]
    for value in texts:
        try:
            expected = str(parse_decimal(value, field="p"))
        except NumberError:
            expected = BadResponse
        try:
            got = str(decimal(run, value, "p"))
        except BadResponse:
            got = BadResponse
        assert got == expected, value


def _trades_result(rows: list[object], typed: bool) -> object:
    """A Trades answer's ``result`` as the runner gets it: decoded the typed way (the client's
    seam: :meth:`Trades.decode`, or the general ``json`` when that refuses the shape), or
    always the general way."""
    body = json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": "1"}}).encode()
    answer = (typed and Trades().decode(body)) or json.loads(body)
    return answer["result"]


def test_a_trades_page_reads_each_value_as_the_checked_reads_do() -> None:
    """Trades.page reads its usual shapes inline into the stored text: every time, price, volume
    and trade id it stores (or refuses, failing the page) is the stored text of what timestamp(),
    decimal() and integer() give; decoded the typed way (msgspec's tuples) or the general way."""
    now = datetime.now(UTC)
    run = RunRecord("j", "Trades", {}, scheduled_at=now, started_at=now, finished_at=now)
    rnd = random.Random(2929)

    def read(price: object, volume: object, when: object, trade_id: object = 7) -> object:
        got = []
        for typed in (True, False):
            result = _trades_result([[price, volume, when, "b", "l", "", trade_id]], typed)
            try:
                row = Trades().page(run, {"pair": "XBTUSD"}, result, "0").rows[0]
            except BadResponse as e:
                got.append((BadResponse, str(e)))
                continue
            got.append(row[1:5])  # trade_id, time, price, volume: TRADE_COLUMNS' order
        assert got[0] == got[1], (price, volume, when, trade_id)
        return got[0] if got[0][0] is not BadResponse else BadResponse

    def checked(price: object, volume: object, when: object, trade_id: object = 7) -> object:
        try:
            if isinstance(trade_id, bool) or not isinstance(trade_id, int):
                raise BadResponse("not an integer")
            return (
                integer(run, trade_id, "trade_id"),
                time_text(timestamp(run, when, "trade time")),
                decimal_text(decimal(run, price, "price")),
                decimal_text(decimal(run, volume, "volume")),
            )
        except BadResponse:
            return BadResponse

    times: list[object] = [0.0, 1e-05, 0.5, 999999999.9999999, 1e9, 1688669448.1234567, 2.0**32]
    times += [1796678402.4474502, 4294967295.9999995, 4294967296.0000005, 10**11, -1.0, True]
    times += [float("nan"), float("inf"), "1688669448.1", None, 1688669448, 10**20, 1e400]
    times += [1700000000.0000005, 1700000000.9999995, 1700000000.1234559, 1700000000.12345]
    for _ in range(10_000):
        times += [rnd.uniform(0, 5e9), round(rnd.uniform(1e9, 2**32), rnd.randint(0, 8))]
    for when in times:
        assert read("1.5", "2", when) == checked("1.5", "2", when), when
    texts: list[object] = ["0", "-0", "1.5", "0012.3400", "9" * 40, "9" * 41, "1e5", " 1", "1_0"]
    texts += ["NaN", "--1", "+1", "1.", ".5", "1..5", "\u0663", "\u0663.5", "-", "", ".", None, 3]
    texts += ["0." + "0" * 38 + "1", "0." + "0" * 37 + "1", 1.5, ["1"], "1.5\x00", "00", "0.0"]
    texts += ["0.00000001", "0.0000000", "012", "00.5", "1E-8", "100", "1.10", "0.000", "1e400"]
    texts += [f"{rnd.uniform(-1e6, 1e6):.{rnd.randint(0, 12)}f}" for _ in range(3_000)]
    texts += [f"{rnd.uniform(0, 1e-3):.{rnd.randint(0, 12)}f}" for _ in range(1_000)]
    for text_ in texts:
        assert read(text_, "1", 1e9) == checked(text_, "1", 1e9), text_
        assert read("1", text_, 1e9) == checked("1", text_, 1e9), text_
    for trade_id in [0, -1, 2**63 - 1, 2**63, 2**64, True, 1.0, "7", None]:
        assert read("1", "1", 1e9, trade_id) == checked("1", "1", 1e9, trade_id), trade_id


def test_a_trades_page_stores_the_same_rows_decoded_typed_or_not() -> None:
    """The odd shapes of a whole row (codes, misc, lengths, types) give the same stored tuples,
    or the same refusal, through the typed decode as through the general one; and the usual
    answer does take the typed way (the seam is not a no-op)."""
    now = datetime.now(UTC)
    run = RunRecord("j", "Trades", {}, scheduled_at=now, started_at=now, finished_at=now)
    usual = ["30306.1", "0.00312", 1688669448.1234567, "b", "l", "", 42]
    odd: list[list[object]] = [
        usual,
        [*usual[:3], "s", "m", "x", 43],
        [*usual[:3], "x", "q", "", 44],  # unknown codes: stored as they came
        [*usual[:3], "buy", "limit", "", 45],
        [*usual[:3], "b", "l", "m" * 64, 46],
        [*usual[:3], "b", "l", "m" * 65, 47],  # cut at 64
        [*usual[:3], "b", "l", "a\x00b", 48],  # refused
        [*usual[:3], 1, "l", "", 49],
        [*usual[:3], "b", "l", 5, 50],
        [*usual[:3], ["b"], "l", "", 51],
        [*usual[:2], 1688669448, "b", "l", "", 52],  # a whole-second int time
        [*usual[:2], "1688669448.5", "b", "l", "", 53],
        [*usual[:2], 999999999.5, "b", "l", "", 54],  # before 2001: nine digits
        [*usual, "extra"],  # eight: the first seven read
        usual[:6],  # six: refused
        [30306.1, "0.00312", *usual[2:6], 55],  # a float price
        [*usual[:3], "b", "l", None, 56],
        [*usual[:6], 2**64],
        "not a row",
        "seven!",  # as long as a row: not one
        ["30306,1", *usual[1:]],  # a comma in a price: not hidden among the page's texts
        [*usual[:2], float("nan"), *usual[3:]],  # NaN among usual times
        [*usual[:2], 1e400, *usual[3:]],
        {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7},
    ]
    assert (
        type(
            Trades().decode(json.dumps({"error": [], "result": {"X": [usual]}}).encode())["result"][
                "X"
            ][0]
        )
        is tuple
    )
    for row in odd:
        got = []
        for typed in (True, False):
            result = _trades_result([usual, row], typed)
            try:
                page = Trades().page(run, {"pair": "XBTUSD"}, result, "0")
                got.append((page.rows.columns, list(page.rows)))
            except BadResponse as e:
                got.append(str(e))
        assert got[0] == got[1], row
    assert Trades().decode(b'{"error": ["EGeneral:Internal error"]}') is None
    # A page of usual rows is read a column at a time; the same rows with one unusual row after
    # them each on its own: the same tuples, over many random times, prices and codes.
    rnd = random.Random(29029)
    many = [
        [
            f"{rnd.uniform(0, 1e5):.{rnd.randint(0, 10)}f}",
            rnd.choice(["0", "1", "0.5", "100", f"{rnd.random():.8f}"]),
            round(rnd.uniform(1e9, 2**32), rnd.randint(0, 8)),
            rnd.choice("bs"),
            rnd.choice("ml"),
            rnd.choice(["", "", "x"]),
            i,
        ]
        for i in range(20_000)
    ]
    for typed in (True, False):
        fast = Trades().page(run, {}, _trades_result(many, typed), "0").rows
        each = Trades().page(run, {}, _trades_result([*many, odd[2]], typed), "0").rows
        assert list(fast) == list(each[:-1]) and len(fast) == len(many)
    # The spool's codec gives a page's tuples back as they were, still Prepared.
    record = RunRecord("j", "Trades", {}, scheduled_at=now, started_at=now, finished_at=now)
    record.rows = {"trades": Trades().page(run, {}, _trades_result(odd[:5], True), "0").rows}
    again = decode(encode(record)).rows["trades"]
    assert isinstance(again, Prepared) and again == record.rows["trades"]
    assert again.columns == record.rows["trades"].columns
    assert (
        Trades().decode(b"\xef\xbb\xbf" + json.dumps({"error": [], "result": {}}).encode()) is None
    )


def test_a_page_refused_ends_the_run_there_and_the_next_starts_from_the_stored_cursor() -> None:
    """When the store refuses a page for its content, the run ends there (no rows, no cursor),
    and the job's next run starts from the stored cursor, not the one past the refused rows."""
    handed: list[RunRecord] = []
    submitted: list[RunRecord] = []
    loaded: list[str] = []

    def persist(record: RunRecord) -> bool:
        handed.append(record)
        return len(handed) > 1  # the first page is refused

    def load_cursor(job: str, dataset: str) -> None:
        loaded.append(job)

    with FakeKraken(tier=None, history={"public_trades": 3500}) as fake:
        api = API(uri=fake.url, timeout=10)
        runner = Runner(api, submitted.append, persist=persist, load_cursor=load_cursor)
        job = Job(
            name="t",
            method="Trades",
            params={"pair": "XBTUSD"},
            since=0.0,
            every=timedelta(hours=1),
        )
        try:
            record = runner.run(job)
            runner.run(job)
        finally:
            api.close()
        calls = fake.calls["Trades"]
    assert record is not None and record.status == "bad_response"
    assert record.error == "a page could not be stored; the next run asks for it again"
    assert record.rows == {} and record.cursor is None
    assert len(handed[0].rows["trades"]) == 1000 and handed[0].status == "partial"
    # the first run: page 1, refused; the second run read the stored cursor again
    assert record.pages == 1 and loaded == ["t", "t"]
    assert calls >= 3


def _iso(t: int, url: str) -> str:
    value = datetime.fromtimestamp(t, UTC)
    if url.startswith("sqlite"):
        return value.strftime("%Y-%m-%d %H:%M:%S.000000+00:00")
    return value.isoformat()


def test_sqlite_locked_in_the_middle_of_paging_loses_nothing(tmp_path) -> None:
    import sqlite3

    from collector.store import Store

    db = tmp_path / "locked.db"
    store = Store.from_url(f"sqlite:///{db}", busy_timeout_ms=200)
    store.upgrade()
    with FakeKraken(tier=None, history={"ledger": 2000}) as fake:
        keypair = fake.add_key()
        slow = "rate_limit: {max: 3, decay: 25}\n  public_rate_limit: {max: 1000, decay: 1000}"
        path = job_file(
            tmp_path, fake, keypair, f"sqlite:///{db}", "l: {method: Ledgers, every: 1h}", slow
        )
        service = Service(load(path), store=store)
        job = service.config.jobs[0]
        service.open()
        done = threading.Event()
        thread = threading.Thread(target=lambda: (service.execute(job), done.set()))
        thread.start()
        blocker = sqlite3.connect(db, timeout=30)
        try:
            wait_for(lambda: service.writer.written >= 3)  # some pages are in the database
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: writes wait
            wait_for(lambda: len(service.spool) >= 5)  # ...so pages go to the spool
            blocker.rollback()
            assert done.wait(120)
            wait_for(lambda: len(service.spool) == 0)
        finally:
            blocker.close()
            thread.join(120)
            service.stop()
        url = f"sqlite:///{db}"
        stored = [r[0] for r in rows(url, "SELECT ledger_id FROM ledger")]
        assert len(stored) == len(set(stored)) and set(stored) == set(fake.ledger())
        assert rows(url, "SELECT status, pages FROM runs WHERE job = 'l'") == [("ok", 40)]


def test_stopping_in_the_middle_of_a_backfill_keeps_its_pages(tmp_path, database_url) -> None:
    with FakeKraken(tier=None, history={"ledger": 2000}) as fake:
        keypair = fake.add_key()
        slow = "rate_limit: {max: 3, decay: 25}\n  public_rate_limit: {max: 1000, decay: 1000}"
        jobs = "l: {method: Ledgers, every: 1h}"
        service = _service(tmp_path, fake, keypair, database_url, jobs, slow)
        service.start()
        try:
            wait_for(lambda: fake.calls["Ledgers"] >= 5)
        finally:
            service.stop()  # promptly: not after the 40 pages
        (status, pages) = rows(database_url, "SELECT status, pages FROM runs")[0]
        assert status == "partial" and 5 <= pages < 40
        assert rows(database_url, "SELECT count(*) FROM ledger")[0][0] == pages * 50
        _once(_service(tmp_path, fake, keypair, database_url, jobs))
        stored = [r[0] for r in rows(database_url, "SELECT ledger_id FROM ledger")]
        assert len(stored) == len(set(stored)) and set(stored) == set(fake.ledger())
        assert fake.calls["Ledgers"] == 40  # no stored page fetched again


def test_each_dataset_declares_what_the_others_ask_of_it() -> None:
    """The time column, retention eligibility and history flag are the datasets' own, and every
    list the package used to keep by hand is read from them."""
    for dataset in datasets.DEFAULT:
        if dataset.time_column is not None:
            assert dataset.time_column in dataset.table.c, dataset.name
        if dataset.prunable:  # retention deletes by the time column
            assert dataset.time_column is not None, dataset.name
        if dataset.history:  # a history continues from its cursor
            assert dataset.incremental, dataset.name
    assert datasets.retention_tables() == (
        "ledger",
        "my_trades",
        "orders",
        "trades",
        "ohlc",
        "spread",
        "book",
        "stream_connections",
    )
    assert datasets.named("orders").time_column == "closetm"
    assert datasets.named("balances").time_column == "taken_at"
    assert datasets.named("nothing") is None
    assert datasets.history_methods() == {
        "Ledgers",
        "TradesHistory",
        "ClosedOrders",
        "Trades",
        "OHLC",
        "Spread",
    }
    # The job file's own copy (it loads without the datasets' tables) is the same, in order.
    assert ("runs", *datasets.retention_tables()) == RETENTION_KEYS


def test_each_dataset_reads_its_own_cursor_as_a_time() -> None:
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    s = t.timestamp()
    ledger, trades, ohlc = (datasets.named(n) for n in ("ledger", "trades", "ohlc"))
    assert ledger is not None and trades is not None and ohlc is not None
    assert ledger.cursor_time({"done": s, "window": None}) == t
    assert ledger.cursor_time({"done": None, "window": {"start": 0}}) is None
    assert ledger.cursor_time(int(s)) is None  # a history's cursor is a mapping
    assert trades.cursor_time(str(int(s * 1e9))) == t
    assert trades.cursor_time("9" * 40) is None  # no date holds it
    assert ohlc.cursor_time(int(s)) == t and ohlc.cursor_time(str(int(s))) == t
    assert ohlc.cursor_time(True) is None and ohlc.cursor_time(float("nan")) is None
    assert ohlc.cursor_time(10**30) is None
    assert datasets.cursor_time("balances", None) is None
    assert datasets.cursor_time("nothing", int(s)) is None
