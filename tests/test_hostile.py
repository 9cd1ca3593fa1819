"""Hostile values through the whole pipeline: answer → collect → store → export → page.

The numbers first: every number of an answer goes through one bounded, exact parser
(:mod:`collector.numbers`), so ``1E+99999999`` (11 bytes, 100 MB written out) is a ``bad_response``
naming the field, never a row; and a value an older collector stored out of bounds reads as
missing, never as a page that fails. Then a generator (hypothesis) puts hostile values into each
method's answer, served by the strict fake over a real socket, and checks :data:`INVARIANTS` on
what comes out: each is one function of an :class:`Outcome`, so a new promise is one more
function in that list.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from collector.cli import main
from collector.dashboard import Dashboard
from collector.jobfile import load
from collector.logs import TextFormatter
from collector.numbers import (
    NumberError,
    parse_decimal,
    parse_integer,
    parse_time,
    readable,
)
from collector.retry import RetryPolicy
from collector.service import Service
from collector.store import Store
from collector.valuation import catch_up

from .helpers import wait_for
from .test_service import job_file

# -- the parser ------------------------------------------------------------------------------------

REFUSED = [
    ("1E+99999999", "is out of range"),
    ("1E+41", "is out of range"),
    ("1E-41", "is out of range"),
    ("0E-999999", "is out of range"),
    ("0E+999999", "is out of range"),
    ("1E+99999999999999999999999999", "is out of range"),
    ("1" * 41, "is out of range"),
    ("0." + "1" * 60, "is out of range"),
    ("1." + "0" * 40, "is out of range"),  # 41 significant digits as stored
    ("NaN", "is not a finite number"),
    ("-Infinity", "is not a finite number"),
    ("sNaN", "is not a finite number"),
    (" 1", "is not a number"),
    ("1_000", "is not a number"),
    ("\u0661\u0662", "is not a number"),  # Arabic-Indic digits, which Decimal() reads as 12
    ("1\x00", "is not a number"),
    ("1\n", "is not a number"),
    ("\x1b[31m1", "is not a number"),
    ("9" * 10_000, "is not a number"),  # refused unparsed
    ("", "is not a number"),
    (1.5, "is not a decimal string"),
    (True, "is not a decimal string"),
    (None, "is not a decimal string"),
    (10**41, "is out of range"),
    (10**5000, "is out of range"),
]


@pytest.mark.parametrize(("value", "problem"), REFUSED, ids=range(len(REFUSED)))
def test_the_parser_refuses_what_kraken_never_sends_with_one_line(value, problem) -> None:
    with pytest.raises(NumberError) as caught:
        parse_decimal(value, field="price")
    message = str(caught.value)
    assert message.startswith("price ") and problem in message
    assert len(message) < 200 and message.isprintable()


@pytest.mark.parametrize(
    "value",
    [
        "0.0000000001",
        "-0",
        "64000.12345678",
        "1E+40",
        "1E-40",
        "9" * 40,
        "0." + "0" * 39 + "1",
        "+1.5",
        ".5",
        "5.",
        12,
    ],
)
def test_the_parser_keeps_every_value_kraken_sends_exactly(value) -> None:
    number = parse_decimal(value, field="price")
    assert number == Decimal(str(value)) and str(number) == str(Decimal(str(value)))
    assert readable(number) == number and readable(format(number, "f")) == number


def test_times_ids_and_stored_values_are_bounded_by_the_same_module() -> None:
    assert parse_time(1688669448.1234, field="t") == datetime(
        2023, 7, 6, 18, 50, 48, 123400, tzinfo=UTC
    )
    assert parse_time("1688669448.1234567", field="t").microsecond == 123456  # cut, not rounded
    assert parse_time(0, field="t") == datetime(1970, 1, 1, tzinfo=UTC)
    for value in (10**11, -1, float("inf"), float("nan"), "1E+99999999", True, "x"):
        with pytest.raises(NumberError, match=r"^t is not a time$"):
            parse_time(value, field="t")
    # A state file's floats (json.dumps wrote them), when the caller says so; never NaN or 1e300.
    assert parse_decimal(2.5, field="level", floats=True) == Decimal("2.5")
    assert parse_decimal(1765000000.123, field="at", floats=True) == Decimal("1765000000.123")
    for value in (float("nan"), float("inf"), 1e300, 1e-300):
        with pytest.raises(NumberError, match=r"^level is (not a finite number|out of range)"):
            parse_decimal(value, field="level", floats=True)
    assert parse_integer("42", field="id") == 42
    for value in (2**63, -1, 1.5, 1e29, "1e29", True, "4 2", 10**5000):
        with pytest.raises(NumberError, match=r"^id "):
            parse_integer(value, field="id")
    assert [readable(v) for v in ("1" + "0" * 999_999, "NaN", None, "x", 10**50)] == [None] * 5


# -- 2. an 11-byte number is refused, never expanded -----------------------------------------------


def ticker_answer(price: Any) -> bytes:
    row = {
        "a": ["64000.1", "1", "1.000"],
        "b": ["64000.0", "1", "1.000"],
        "c": [price, "0.1"],
        "v": ["10", "20"],
        "p": ["64000", "64000"],
        "t": [5, 10],
        "l": ["63000", "63000"],
        "h": ["65000", "65000"],
        "o": "64000",
    }
    return json.dumps({"error": [], "result": {"XXBTZUSD": row}}).encode()


@pytest.fixture
def ticker_service(tmp_path, fake, keypair) -> Iterator[Service]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        'prices: {method: Ticker, params: {pair: "XBTUSD"}, every: 1h}',
        reference=False,
    )
    service = Service(load(path), retry=RetryPolicy(max_attempts=1))
    yield service
    service.stop()


@pytest.mark.parametrize("price", ["1E+999999", "0E-999999", "-1E+999999", "1" + "0" * 60])
def test_a_short_number_with_a_huge_expansion_is_a_bad_response_not_a_row(
    ticker_service, fake, tmp_path, price
) -> None:
    """On main, ``1E+999999`` was stored as a million digits (and ``1E+99999999``, 400 MB)."""
    fake.inject("raw", method="Ticker", body=ticker_answer(price))
    record = ticker_service.execute(ticker_service.config.jobs[0])
    assert record is not None and record.status == "bad_response"
    assert record.error.startswith("Ticker XXBTZUSD last ")
    assert "is out of range (at most 40 digits, within 1E-40 to 1E+40)" in record.error
    fake.clear_faults()
    assert ticker_service.execute(ticker_service.config.jobs[0]).status == "ok"  # goes on
    assert ticker_service.writer.flush(30)
    url = ticker_service.config.database
    engine = create_engine(url)
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status FROM runs ORDER BY id")).scalars().all()
        longest = conn.execute(text("SELECT max(length(last)) FROM ticker")).scalar()
    engine.dispose()
    assert runs == ["bad_response", "ok"]
    assert longest is not None and longest < 20
    assert (tmp_path / "c.db").stat().st_size < 1_000_000


# -- 3. a value an older collector stored does not take the page or the view down ------------------


def seed(url: str, price: str) -> None:
    """A database as an older collector left it: a ticker price out of bounds, as SQLite's plain
    text or PostgreSQL's NUMERIC, beside a balance of 2 XBT and 1.5 USD."""
    store = Store.from_url(url)
    store.upgrade()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    stamp = f"{at:%Y-%m-%d %H:%M:%S.%f}+00:00" if url.startswith("sqlite") else at
    sqlite = url.startswith("sqlite")
    big = format(Decimal(price), "f") if sqlite else Decimal(price)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO runs (id, job, method, params, scheduled_at, started_at, "
                    "finished_at, status, attempts, pages, new_rows) "
                    "VALUES (1, 'b', 'Balance', '{}', :at, :at, :at, 'ok', 1, 1, 1)"
                ),
                {"at": stamp},
            )
            for asset, amount in (("XXBT", "2"), ("ZUSD", "1.5")):
                conn.execute(
                    text("INSERT INTO balances VALUES (1, :a, 'b', :at, :x, 'default')"),
                    {"a": asset, "at": stamp, "x": amount if sqlite else Decimal(amount)},
                )
            conn.execute(
                text(
                    "INSERT INTO ticker VALUES (1, 'XXBTZUSD', :at, :p, :p, :p, 1, 1, 1, 1, 1, 1)"
                ),
                {"at": stamp, "p": big},
            )
            conn.execute(
                text(
                    "INSERT INTO pairs (pair, altname, wsname, base, quote, pair_decimals, "
                    "lot_decimals, status, updated_at, run_id) VALUES ('XXBTZUSD', 'XBTUSD', "
                    "'XBT/USD', 'XXBT', 'ZUSD', 1, 8, 'online', :at, 1)"
                ),
                {"at": stamp},
            )
            for asset, alt in (("ZUSD", "USD"), ("XXBT", "XBT")):
                conn.execute(
                    text(
                        "INSERT INTO assets VALUES (:a, :alt, 'currency', 4, 2, 'enabled', :at, 1)"
                    ),
                    {"a": asset, "alt": alt, "at": stamp},
                )
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("backend", "price"), [("sqlite", "1E+999999"), ("postgresql", "1E+100000")]
)
def test_a_huge_stored_price_is_shown_as_not_valued_and_the_page_answers(
    tmp_path, backend, price, request
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    seed(url, price)
    path = tmp_path / "jobs.yaml"
    path.write_text(f"database: {url}\njobs:\n  t: {{method: Time, every: 1h}}\n")
    store = Store.from_url(url)
    now = datetime(2026, 1, 1, 1, tzinfo=UTC)
    try:
        dashboard = Dashboard(load(path), store, clock=lambda: now)
        answers = [dashboard.answer({"range": r}) for r in ("day", "week", "all")]
        # The table the store keeps is valued by the same rules: what a start's catch-up writes.
        with store.engine.begin() as conn:
            assert catch_up(conn) == 1
        with store.engine.connect() as conn:
            table = conn.execute(text("SELECT value, unpriced FROM portfolio_value")).all()
    finally:
        store.dispose()
    for answer in answers:
        assert answer.status == 200, answer.body[-300:]
        body = answer.body.decode()
        assert len(body) < 100_000  # the price is not written out
        assert 'data-unpriced="XXBT"' in body and 'data-value="1.5"' in body
    assert [(Decimal(str(v)), u) for v, u in table] == [(Decimal("1.5"), "XXBT")]


def test_an_out_of_range_candle_cursor_is_refused_so_status_still_reads(
    tmp_path, fake, keypair
) -> None:
    """``last`` becomes the stored cursor, which ``status`` and ``/healthz`` turn into a date: on
    main an OHLC ``last`` of 10**19 seconds was stored, and ``status`` failed on it."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "candles: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}",
        reference=False,
    )
    body = {"error": [], "result": {"XXBTZUSD": [], "last": 10**19}}
    fake.inject("raw", method="OHLC", body=json.dumps(body).encode())
    service = Service(load(path), retry=RetryPolicy(max_attempts=1))
    try:
        record = service.execute(service.config.jobs[0])
        assert service.writer.flush(30)
    finally:
        service.stop()
    assert record is not None and record.status == "bad_response"
    assert f"last {10**19} is out of range" in record.error
    # One an older collector stored anyway: status reads it as "not known", never a traceback.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO cursors VALUES ('candles', 'ohlc', :v, "
                "'2026-01-01 00:00:00.000000+00:00')"
            ),
            {"v": json.dumps(10**19)},
        )
    engine.dispose()
    result = CliRunner().invoke(main, ["status", str(path)])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "candles" in result.output


@pytest.mark.parametrize("unixtime", ["Infinity", "1e300", "1.5", '"1E+99999999"'])
def test_the_start_up_probe_reads_the_exchanges_clock_through_the_bound(
    tmp_path, fake, keypair, caplog, unixtime
) -> None:
    """On main an ``Infinity`` (or ``1e300``) ``unixtime`` ended the probe's thread with an
    OverflowError traceback; now it is the probe's one line."""
    caplog.set_level(logging.INFO, logger="collector")
    body = b'{"error": [], "result": {"unixtime": ' + unixtime.encode() + b"}}"
    fake.inject("raw", method="Time", body=body, count=100)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}", reference=False)
    failures: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    service = Service(load(path))
    try:
        service.start()
        said = f"exchange {fake.url} answered Time with an unexpected result"
        wait_for(lambda: said in caplog.text or bool(failures), timeout=20)
    finally:
        service.stop()
        threading.excepthook = previous
    assert failures == []
    assert said in caplog.text


# -- the generator ---------------------------------------------------------------------------------

#: Numbers an attacker (or a broken proxy) would send where a number belongs: each a few bytes
#: that Decimal() takes, and megabytes once written out, or not a plain number at all.
HOSTILE_NUMBERS = [
    "1E+99999999",
    "1e-99999",
    "-1E+999999",
    "-1E+41",
    "0E-999999",
    "NaN",
    "-Infinity",
    "-0",
    "1_0",
    " 1",
    "\u0661",
    "1" * 60,
    "0." + "7" * 60,
]
#: Text where a number or a name belongs.
HOSTILE_TEXT = [
    "1\x00",
    "=1+1",
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    '\t=HYPERLINK("http://example.invalid")',
    "a\nb CRITICAL collector: FORGED",
    "\x1b]0;owned\x07\x1b[2J",
    "x" * 50_000,
    "",
]
hostile_scalars = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_NUMBERS),  # twice: the bound under test gets most examples
    st.sampled_from(HOSTILE_TEXT),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**30, 2**63, -1, 10**19, True, None, [], {}]),
    st.text(max_size=30),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)


def _ledger_entry() -> dict[str, Any]:
    return {
        "refid": "TREF-1",
        "time": 1700000000.1234,
        "type": "trade",
        "subtype": "",
        "aclass": "currency",
        "asset": "XXBT",
        "amount": "0.5",
        "fee": "0.0001",
        "balance": "1.5",
    }


#: A valid answer of each method the generator attacks, and its job.
TEMPLATES: dict[str, tuple[str, Any]] = {
    "Ticker": (
        'prices: {method: Ticker, params: {pair: "XBTUSD"}, every: 1h}',
        json.loads(ticker_answer("64000.5"))["result"],
    ),
    "Balance": ("b: {method: Balance, every: 1h}", {"XXBT": "1.5", "ZUSD": "100.25"}),
    "Trades": (
        "trades: {method: Trades, params: {pair: XBTUSD}, every: 1h, since: 1700000000}",
        {
            "XXBTZUSD": [["64000.1", "0.01", 1700000001.1234, "b", "l", "", 7]],
            "last": "1700000001123400000",
        },
    ),
    "OHLC": (
        "candles: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}",
        {
            "XXBTZUSD": [[1700000040, "1", "2", "0.5", "1.5", "1.2", "10", 3]],
            "last": 1700000040,
        },
    ),
    "Spread": (
        "spread: {method: Spread, params: {pair: XBTUSD}, every: 1h}",
        {"XXBTZUSD": [[1700000001, "64000.0", "64000.1"]], "last": 1700000001},
    ),
    "Ledgers": (
        "ledger: {method: Ledgers, every: 1h, since: 1690000000}",
        {"ledger": {"L1": _ledger_entry()}, "count": 1},
    ),
}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a scalar in ``value``, and every key of a mapping (``("key", path)``)."""
    if isinstance(value, dict):
        out: list[tuple[Any, ...]] = []
        for key, inner in value.items():
            out.append((*path, ("key", key)))
            out += leaves(inner, (*path, key))
        return out
    if isinstance(value, list):
        return [p for i, inner in enumerate(value) for p in leaves(inner, (*path, i))]
    return [path]


def poisoned(template: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``template`` with the scalar at ``path`` replaced by ``value`` (or, for a key, the key
    replaced by ``value`` as text)."""
    out = copy.deepcopy(template)
    *parents, last = path
    node = out
    for step in parents:
        node = node[step]
    if isinstance(last, tuple):
        node[str(value)] = node.pop(last[1])
    else:
        node[last] = value
    return out


@dataclass
class Outcome:
    """What one hostile answer left behind, for the invariants to judge."""

    method: str
    answer: bytes
    status: str | None
    error: str | None
    runs: list[tuple[str, str]]  # (uid, status) of every stored run
    uid: str | None
    db_bytes: int
    longest_value: int  # the longest value of any dataset row, as text
    export_code: int
    export_output: str
    export_exception: BaseException | None
    page_status: int
    page_body: bytes
    logs: list[logging.LogRecord]
    crash: str | None  # a traceback from anywhere in the pipeline


def no_traceback(o: Outcome) -> None:
    assert o.crash is None, o.crash
    assert o.export_exception is None or isinstance(o.export_exception, SystemExit), "".join(
        traceback.format_exception(o.export_exception)
    )
    assert "Traceback" not in o.export_output
    assert not [r for r in o.logs if r.exc_info], [r.getMessage()[:300] for r in o.logs]


def run_is_stored(o: Outcome) -> None:
    assert o.status in ("ok", "bad_response"), (o.status, o.error)
    # As the run came out, or as bad_response when the database refused what it held (a NUL in
    # an asset's name on PostgreSQL): stored either way, never lost.
    assert dict(o.runs).get(o.uid) in ("ok", "bad_response"), (o.uid, o.status)


def sizes_are_bounded(o: Outcome) -> None:
    # Growth over the whole test: a balance run keeps its answer (runs.result), up to 50 kB an
    # example here; one expanded number would be 100 MB.
    assert o.db_bytes < 20_000_000
    assert o.longest_value <= 82  # no number is ever written out beyond its bound
    assert len(o.export_output) < 1_000_000


def export_answers(o: Outcome) -> None:
    assert o.export_code == 0, o.export_output[-500:]


def page_answers(o: Outcome) -> None:
    assert o.page_status == 200, o.page_body[-500:]
    assert len(o.page_body) < 2_000_000


#: What a spreadsheet runs when a cell starts with it (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell: str) -> bool:
    try:
        return Decimal(cell).is_finite()
    except ArithmeticError:
        return False


def no_formula_cell(o: Outcome) -> None:
    # Exchange text in an export never starts with what a spreadsheet would run; a number (a
    # negative amount) stays a number.
    for row in csv.reader(io.StringIO(o.export_output)):
        for cell in row:
            assert not (cell.startswith(FORMULA_STARTS) and not _is_number(cell)), (cell, row)


def no_raw_control_in_logs(o: Outcome) -> None:
    # Each record is one line in the text format (its traceback indented below it), and no
    # control character reaches a terminal or a journal: nothing an answer holds forges a line.
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    for record in o.logs:
        first, *rest = formatter.format(record).split("\n")
        assert not CONTROL.search(first), first[:300]
        assert all(line.startswith("  ") and not CONTROL.search(line) for line in rest), rest


#: What must hold whatever the answer held; one function each.
INVARIANTS: list[Callable[[Outcome], None]] = [
    no_traceback,
    run_is_stored,
    sizes_are_bounded,
    export_answers,
    page_answers,
    no_formula_cell,
    no_raw_control_in_logs,
]

#: A control character (C0, DEL, C1, the line separators, bidirectional overrides): what a log
#: line or a terminal must never receive.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

#: The columns holding numbers of an answer, by dataset table (checked for their length).
TABLES = {
    "Ticker": ("ticker", ("ask", "bid", "last", "volume_24h", "vwap_24h", "low_24h", "open")),
    "Balance": ("balances", ("amount",)),
    "Trades": ("trades", ("price", "volume", "trade_id", "time")),
    "OHLC": ("ohlc", ("open", "high", "low", "close", "vwap", "volume", "count")),
    "Spread": ("spread", ("bid", "ask", "time")),
    "Ledgers": ("ledger", ("amount", "fee", "balance", "time")),
}


@pytest.fixture
def pipeline(tmp_path, fake, keypair, database_url) -> Iterator[Callable[[str, Any], Outcome]]:
    """``feed(method, result)``: the fake answers ``method`` with ``result``; the job runs and is
    stored (SQLite, PostgreSQL); its table is exported with ``collector export``; the page is
    rendered."""
    url = database_url
    jobs = "\n".join(job for job, _ in TEMPLATES.values())
    path = job_file(tmp_path, fake, keypair, url, jobs, reference=False)
    service = Service(load(path), retry=RetryPolicy(max_attempts=1))
    by_method = {job.method: job for job in service.config.jobs}
    logs: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logs.append  # type: ignore[method-assign]
    logging.getLogger("collector").addHandler(handler)
    engine = create_engine(url)
    service.open()  # migrated: the size the database starts from
    start = size(engine)

    def feed(method: str, result: Any, errors: list[Any] | None = None) -> Outcome:
        logs.clear()
        body = json.dumps({"error": errors or [], "result": result}).encode()
        fake.clear_faults()
        fake.inject("raw", method=method, body=body)
        crash = None
        status = error = uid = None
        try:
            record = service.execute(by_method[method])
            assert service.writer.flush(30)
            if record is not None:
                status, error, uid = str(record.status), record.error, record.uid
        except Exception:
            crash = traceback.format_exc()
        table, columns = TABLES[method]
        with engine.connect() as conn:
            runs = [tuple(r) for r in conn.execute(text("SELECT uid, status FROM runs"))]
            lengths = ", ".join(f"max(length(CAST({c} AS TEXT)))" for c in columns)
            longest = conn.execute(text(f"SELECT {lengths} FROM {table}")).one()
        exported = CliRunner().invoke(main, ["export", table, str(path)])
        store = Store.from_url(url)
        try:
            page = Dashboard(service.config, store).answer({"range": "all"})
        except Exception:
            crash = crash or traceback.format_exc()
            page = None
        finally:
            store.dispose()
        return Outcome(
            method=method,
            answer=body,
            status=status,
            error=error,
            runs=runs,  # type: ignore[arg-type]
            uid=uid,
            db_bytes=size(engine) - start,
            longest_value=max((n or 0) for n in longest),
            export_code=exported.exit_code,
            export_output=exported.output,
            export_exception=exported.exception,
            page_status=page.status if page else 0,
            page_body=page.body if page else b"",
            logs=list(logs),
            crash=crash,
        )

    try:
        yield feed
    finally:
        logging.getLogger("collector").removeHandler(handler)
        engine.dispose()
        service.stop()


def size(engine: Any) -> int:
    """The database's bytes on disk (SQLite: its pages; PostgreSQL: the database's files)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.execute(
                text("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
            ).scalar()
        return conn.execute(text("SELECT pg_database_size(current_database())")).scalar()


@st.composite
def hostile_answers(draw: st.DrawFn) -> tuple[str, Any]:
    """A method and its answer with one value (or key) made hostile."""
    method = draw(st.sampled_from(sorted(TEMPLATES)))
    template = TEMPLATES[method][1]
    path = draw(st.sampled_from(leaves(template)))
    return method, poisoned(template, path, draw(hostile_scalars))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=hostile_answers())
# Each kind of number once whatever the draw (and each failed on main): a price, an amount and a
# time written out to a megabyte, a candle's `last` past any date.
@example(case=("Ticker", poisoned(TEMPLATES["Ticker"][1], ("XXBTZUSD", "c", 0), "1E+999999")))
@example(case=("Ledgers", poisoned(TEMPLATES["Ledgers"][1], ("ledger", "L1", "fee"), "1e-99999")))
@example(case=("Balance", poisoned(TEMPLATES["Balance"][1], ("ZUSD",), "0E-999999")))
@example(case=("OHLC", poisoned(TEMPLATES["OHLC"][1], ("last",), 10**19)))
# A name PostgreSQL can't hold: the run is stored as bad_response without it.
@example(case=("Balance", poisoned(TEMPLATES["Balance"][1], (("key", "XXBT"),), "1\x00")))
# Exchange text a spreadsheet would run, in a ledger entry's refid and an asset's name.
@example(case=("Ledgers", poisoned(TEMPLATES["Ledgers"][1], ("ledger", "L1", "refid"), "=1+1")))
@example(case=("Balance", poisoned(TEMPLATES["Balance"][1], (("key", "XXBT"),), "@SUM(1)")))
# What the generator found: a list where a trade's side belongs was a TypeError and a traceback.
@example(case=("Trades", poisoned(TEMPLATES["Trades"][1], ("XXBTZUSD", 0, 3), [])))
def test_any_hostile_value_in_any_answer_keeps_every_invariant(pipeline, case) -> None:
    method, result = case
    outcome = pipeline(method, result)
    event(f"{method}: {outcome.status}")  # --hypothesis-show-statistics: what the runs became
    for invariant in INVARIANTS:
        invariant(outcome)


def test_the_generator_reaches_every_number_of_every_template() -> None:
    """Each template is valid (the generator's baseline), and poisoning works on its paths."""
    for method, (_, template) in TEMPLATES.items():
        paths = leaves(template)
        assert len(paths) >= 3, method
        assert poisoned(template, paths[-1], "1E+99999999") != template


@pytest.mark.parametrize(
    "error",
    [
        "EGeneral:Internal error\n2026-01-01 CRITICAL collector.service: FORGED",
        "EService:Unavailable\x1b]0;owned\x07\x1b[2J",
        "EAPI:Bad request\r\u2028\u202e",
    ],
)
def test_a_hostile_kraken_error_forges_no_log_line(pipeline, error) -> None:
    """An error text from the exchange is logged and stored as it came, but reaches a log line
    escaped: no forged record, no terminal escape."""
    outcome = pipeline("Ticker", {}, [error])
    assert outcome.status == "kraken_error" and outcome.error is not None
    assert dict(outcome.runs).get(outcome.uid) == "kraken_error"
    assert any(error.split(":")[0] in r.getMessage() for r in outcome.logs)
    no_traceback(outcome)
    no_raw_control_in_logs(outcome)
