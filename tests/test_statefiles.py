"""State files and the lease row are outside values: bounded on the way in (issue 25, points 5-8).

A planted link, a folder, another user's file, a nonce of 1e29 or a level of Infinity in the
state folder, the lock files beside a SQLite database or the lease row in PostgreSQL: each is one
clear line, or a safe reading (the clock as the nonce floor, a full counter) with one warning that
names the file; never a destroyed file, a dead key or a run stored as ``bad_response`` forever.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from collector import defaults, statefile
from collector.errors import ConfigError
from collector.jobfile import load
from collector.keystate import KeyBudget, KeyState
from collector.nonce import NonceSource
from collector.ratelimit import RateLimit, RateLimiter, ceiling
from collector.service import Service
from collector.testing.fake_exchange import FakeKraken

LIMIT = RateLimit(15, 5)
ENV = {
    k: v for k, v in os.environ.items() if k not in ("COLLECTOR_DATABASE_URL", "COLLECTOR_SPOOL")
}
DAY_MS = 24 * 3600 * 1000


def jobs_file(tmp_path: Path, fake: FakeKraken, key: tuple[str, str], jobs: str, db="") -> Path:
    path = tmp_path / "jobs.yaml"
    db = db or f"sqlite:///{tmp_path / 'c.db'}"
    path.write_text(
        f"database: {db}\n"
        f"kraken:\n  url: {fake.url}\n  key: '{key[0]}'\n  secret: '{key[1]}'\n"
        "  rate_limit: {max: 15, decay: 5}\n  public_rate_limit: {max: 100, decay: 100}\n"
        "failover: 2s\n"
        f"jobs:\n{jobs}"
    )
    return path


BALANCE = "  b: {method: Balance, every: 1h}\n"


def run_once(path: Path, state_dir: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *(command or ("run", "--once")), str(path)],
        capture_output=True,
        text=True,
        env={**ENV, "COLLECTOR_STATE_DIR": state_dir},
        timeout=120,
    )


def stored(db: Path) -> list[tuple[str, str]]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT job, status FROM runs"))]
    finally:
        engine.dispose()


@pytest.fixture
def fast() -> FakeKraken:
    with FakeKraken(tier=LIMIT) as exchange:
        yield exchange


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- 5. links, folders, other users' files ---------------------------------------------------------


@pytest.mark.parametrize("which", ["budget", "mark lock", "account lock", "public lock"])
def test_a_state_or_lock_file_planted_as_a_link_is_refused_and_its_target_kept(
    tmp_path, fast, state_dir, which
) -> None:
    """Before: opened with O_CREAT and written (or truncated) through the link: the file it
    points at (here a stand-in for the database) was destroyed."""
    key = fast.add_key()
    jobs = BALANCE + ("  t: {method: Time, every: 1h}\n" if which == "public lock" else "")
    path = jobs_file(tmp_path, fast, key, jobs)
    victim = tmp_path / "precious.db"
    victim.write_bytes(b"SQLite format 3\x00" + b"x" * 5000)
    budget = KeyBudget(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    link = {
        "budget": budget.path,
        "mark lock": KeyState(state_dir, key[0]).path.with_suffix(".lock"),
        "account lock": tmp_path / "c.db.account-default.lock",
        "public lock": tmp_path / "c.db.public.lock",
    }[which]
    link.symlink_to(victim)
    result = run_once(path, state_dir)
    assert victim.read_bytes() == b"SQLite format 3\x00" + b"x" * 5000
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {link}: cannot use this state file: a symbolic link (to {victim}), not "
        "followed; the collector keeps a key's nonce mark, its budget and its locks in files of "
        "its own: move this aside"
    )
    assert "Traceback" not in result.stderr
    assert "collector stopped" not in result.stderr


def test_a_hard_link_to_another_file_is_refused_too(tmp_path, fast, state_dir) -> None:
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    victim = tmp_path / "precious.db"
    victim.write_bytes(b"keep me")
    victim.chmod(0o600)
    os.link(victim, tmp_path / "c.db.account-default.lock")
    result = run_once(path, state_dir)
    assert victim.read_bytes() == b"keep me"
    assert result.returncode == 2
    assert "it has 2 names (a hard link to another file?)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("run", "--once"), ("check",)])
def test_a_state_folder_that_is_a_link_to_a_world_writable_folder_is_one_line(
    tmp_path, fast, command
) -> None:
    """Before: used without a word, so anyone could plant links in it."""
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    state = tmp_path / "state-link"
    state.symlink_to(shared)
    result = run_once(path, str(state), *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot use the state folder {state}: a symbolic link (to {shared}), not "
        "followed; each API key's nonce mark and budget are kept there: use a folder of this "
        "user's that only it can write (or set COLLECTOR_STATE_DIR)"
    ]
    assert list(shared.iterdir()) == []
    # The folder itself, world-writable: the same line, saying so.
    result = run_once(path, str(shared), *command)
    assert result.returncode == 2
    assert "writable by group or others (mode 0777): chmod go-w" in result.stderr


@pytest.mark.parametrize("shape", ["folder", "another user's file"])
@pytest.mark.parametrize("command", [("run", "--once"), ("check",)])
def test_a_budget_path_that_is_a_folder_or_not_ours_is_one_line_at_start(
    tmp_path, fast, state_dir, shape, command
) -> None:
    """Before: every private run failed with a traceback, stored as a missing key permission."""
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    budget = KeyBudget(state_dir, key[0]).path
    Path(state_dir).mkdir(mode=0o700)
    if shape == "folder":
        budget.mkdir()
        reason = "a folder, not a file"
    else:
        budget.write_text("{}")
        os.chown(budget, 65534, 65534)  # left by `sudo collector run --once` (we run as root)
        reason = "owned by another user (uid 65534)"
    result = run_once(path, state_dir, *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {budget}: cannot use this state file: {reason}; the collector keeps a key's "
        "nonce mark, its budget and its locks in files of its own: move this aside"
    ]
    assert not (tmp_path / "c.db").exists() or stored(tmp_path / "c.db") == []


def test_state_files_are_made_0600_in_a_0700_folder_and_replaced_atomically(
    tmp_path, fast, state_dir
) -> None:
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    assert run_once(path, state_dir).returncode == 0
    folder = Path(state_dir)
    assert folder.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert all(not n.startswith(".") for n in names), names  # no temporary file left
    for p in folder.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    assert (tmp_path / "c.db.account-default.lock").stat().st_mode & 0o777 == 0o600


# -- 6. a nonce floor ahead of the clock ------------------------------------------------------------


@pytest.mark.parametrize(
    "last",
    ["1e29", "1.5e15", str(10**29), str(2**63), json.dumps(now_ms() + 2 * DAY_MS)],
)
def test_a_mark_file_nonce_no_collector_writes_is_refused_and_the_clock_used(
    tmp_path, fast, state_dir, caplog, last
) -> None:
    """Before: `last` of 1e29 (or a float) was the floor, and nonces past it were sent: on
    Kraken every later nonce of the key is then too low, from any program."""
    caplog.set_level(logging.WARNING, logger="collector")
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    state = KeyState(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    state.path.write_text(f'{{"last": {last}, "leases": {{}}, "unit": "ms"}}')
    state.path.chmod(0o600)
    service = Service(load(path))
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert fast.last_nonce[key[0]] <= now_ms()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if str(state.path) in w] == [
        f"{state.path}: nonce mark {json.loads(last)!r:.40} is not one a collector writes (an "
        "integer under 2**63, at most 24 h ahead of the clock); refused: nonces start from the "
        "clock"
    ]
    # ...and the file holds a sound mark again.
    assert 0 < json.loads(state.path.read_text())["last"] <= now_ms()


@pytest.mark.parametrize("nonce", ["1e29", str(10**29), "1.5e15"])
def test_a_budget_nonce_no_collector_writes_is_refused(
    tmp_path, fast, state_dir, caplog, nonce
) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    budget = KeyBudget(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    budget.path.write_text(
        f'{{"level": 0, "refusals": 0, "at": {time.time()}, "nonce": {nonce}, "unit": "ms"}}'
    )
    budget.path.chmod(0o600)
    service = Service(load(path))
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert fast.last_nonce[key[0]] <= now_ms()
    assert json.loads(budget.path.read_text())["nonce"] <= now_ms()
    assert sum(str(budget.path) in r.getMessage() for r in caplog.records) == 1


def test_a_nonce_a_few_hours_ahead_is_still_a_floor(tmp_path, state_dir) -> None:
    """The bound refuses only what no collector writes: a mark an hour ahead (a clock stepped
    back) is kept, so no nonce is reused."""
    ahead = now_ms() + 3600 * 1000
    state = KeyState(state_dir, "k")
    Path(state_dir).mkdir(mode=0o700)
    state.path.write_text(json.dumps({"last": ahead, "leases": {}, "unit": "ms"}))
    state.path.chmod(0o600)
    assert state.start() == ahead
    nonces = NonceSource("ms", floor=state.start())
    assert nonces.next() == ahead + 1


def test_statefile_bounds_of_a_nonce_mark() -> None:
    now = time.time_ns()
    ms = now // 1_000_000
    assert statefile.nonce_mark(ms, "ms", now) == ms
    assert statefile.nonce_mark(ms + DAY_MS, "ms", now) == ms + DAY_MS
    for bad in (ms + DAY_MS + 1, 1e29, float(ms), True, -1, "1", None, 2**63):
        assert statefile.nonce_mark(bad, "ms", now) is None, bad
    assert statefile.nonce_mark(2**63 - 1, "ns", 2**63) == 2**63 - 1  # under 64 bits, not at it
    assert statefile.nonce_mark(2**63, "ns", 2**63) is None


# -- 7 and 8. counters that never recover, corrupt counters read as empty -------------------------


def turn_with(path: Path, content: str | None, *, made: bool = False) -> tuple[float, int]:
    """One turn of a real KeyBudget over ``content`` in its file: the level the limiter starts
    the turn with, and the refusals."""
    folder = path.parent
    budget = KeyBudget(folder, "key", clock=lambda: 1_000_000.0)
    folder.mkdir(mode=0o700, exist_ok=True)
    if content is not None:
        budget.path.write_text(content)
        budget.path.chmod(0o600)
    limiter = RateLimiter(LIMIT, clock=lambda: 0.0)
    seen: list[tuple[float, int]] = []
    try:
        with budget.turn(limiter, NonceSource("ms")):
            seen.append(limiter.snapshot())
    finally:
        budget.close()
    return seen[0]


FULL = (LIMIT.max, 0)
SOUND = '{"level": 7, "refusals": 1, "at": 1000000.0, "nonce": 5, "unit": "ms"}'


@pytest.mark.parametrize(
    "content",
    [
        "garbage",
        "",
        "{}",
        '{"level": NaN, "refusals": 0, "at": 1000000.0}',
        '{"level": -5, "refusals": 0, "at": 1000000.0}',
        '{"level": "x", "refusals": 0, "at": 1000000.0}',
        '{"level": Infinity, "refusals": 0, "at": 1000000.0}',
        '{"level": 1e12, "refusals": 0, "at": 1000000.0}',
        '{"level": 3, "refusals": 0, "at": NaN}',
        '{"level": 3, "refusals": 0, "at": -1}',
        '{"level": 3, "refusals": -2, "at": 1000000.0}',
        '{"level": 3, "refusals": 0, "at": 1000000.0, "unit": "years"}',
        "[1, 2]",
        " " * (defaults.STATE_FILE_MAX_BYTES + 1),
    ],
)
def test_a_corrupt_budget_is_a_full_counter_and_one_warning(tmp_path, caplog, content) -> None:
    """Before: garbage, an empty file, NaN or a negative level was an empty counter (12 calls in
    5 s where the true one allowed 2); Infinity or 1e12 a wait no datetime holds."""
    caplog.set_level(logging.WARNING, logger="collector")
    path = tmp_path / "state" / "x"
    assert turn_with(path, content) == FULL
    budget = KeyBudget(path.parent, "key").path
    # Written back sound: the full counter as of the turn, read as it is the next time.
    assert json.loads(budget.read_text())["level"] == LIMIT.max
    assert turn_with(path, None) == FULL
    warnings = [r.getMessage() for r in caplog.records if str(budget) in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{budget}: the key's budget is not one a collector writes (")
    assert warnings[0].endswith("; its counter is taken as full as of now")


def test_a_sound_budget_is_read_as_it_is_and_a_new_one_as_empty(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="collector")
    assert turn_with(tmp_path / "a" / "x", SOUND) == (7.0, 1)
    assert turn_with(tmp_path / "b" / "x", None) == (0.0, 0)  # made now: nothing known, no warning
    # A level past the maximum, within a lockout's pause: believable, kept.
    paused = SOUND.replace('"level": 7', f'"level": {ceiling(LIMIT) - 1}')
    assert turn_with(tmp_path / "c" / "x", paused) == (ceiling(LIMIT) - 1, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("content", ["garbage", "", '{"level": NaN, "refusals": 0, "at": 1}'])
def test_a_corrupt_budget_while_kraken_counter_is_full_gets_no_refusal(
    tmp_path, fast, state_dir, content
) -> None:
    """Before: the corrupt counter was read as empty, and a dozen calls went at once into
    Kraken's full counter: refused, each extending the penalty."""
    import krakenex

    key = fast.add_key()
    jobs = "".join(
        f"  j{i}: {{method: {m}, every: 1h}}\n"
        for i, m in enumerate(["Balance", "TradeBalance", "OpenOrders", "BalanceEx"] * 3)
    )
    path = jobs_file(tmp_path, fast, key, jobs)
    budget = KeyBudget(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    budget.path.write_text(content)
    budget.path.chmod(0o600)
    service = Service(load(path))
    other = krakenex.API(*key)  # another program fills the key's counter just before
    other.uri = fast.url
    for _ in range(15):
        other.query_private("Balance")
        time.sleep(0.002)  # krakenex's nonce is the millisecond
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert fast.errors["EAPI:Rate limit exceeded"] == 0
    assert fast.errors["EAPI:Invalid nonce"] == 0


@pytest.mark.parametrize("level", ["Infinity", "1e12"])
def test_a_budget_level_no_collector_writes_still_lets_the_runs_go(
    tmp_path, fast, state_dir, level
) -> None:
    """Before: Infinity or 1e12 made every private run an ERROR (OverflowError: timestamp out of
    range) stored as bad_response, and written back, forever."""
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    budget = KeyBudget(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    budget.path.write_text(f'{{"level": {level}, "refusals": 0, "at": {time.time()}}}')
    budget.path.chmod(0o600)
    result = run_once(path, state_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert ("b", "ok") in stored(tmp_path / "c.db")
    assert 0 <= json.loads(budget.path.read_text())["level"] <= LIMIT.max + 1


def test_garbage_in_the_mark_file_at_run_once_is_one_line(tmp_path, fast, state_dir) -> None:
    """Before: `collector stopped: 0 runs written`, from a service that never opened, came first."""
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    state = KeyState(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    state.path.write_text('{"last": ')
    state.path.chmod(0o600)
    result = run_once(path, state_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {state.path}: cannot read the key's nonce mark: not JSON (JSONDecodeError). If "
        "no program used this key ahead of the clock, move the file aside and start again"
    ]


def test_a_service_that_never_opened_does_not_say_it_stopped(
    tmp_path, fast, state_dir, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    key = fast.add_key()
    service = Service(load(jobs_file(tmp_path, fast, key, BALANCE)))
    state = KeyState(state_dir, key[0])
    Path(state_dir).mkdir(mode=0o700)
    state.path.write_text("garbage")
    state.path.chmod(0o600)
    with pytest.raises(ConfigError, match="cannot read the key's nonce mark"):
        try:
            service.run_once()
        finally:
            service.stop()
    assert "collector stopped" not in caplog.text


@pytest.mark.parametrize("mark", ["9000000000000000000", "1e29", "1.5e15"])
def test_a_database_nonce_mark_no_collector_writes_is_refused(
    tmp_path, fast, state_dir, caplog, mark
) -> None:
    """The database's own mark (collector_state) is a floor too: before, 9e18 there was sent,
    and text that is not digits was a traceback at start (``int('1e29')``)."""
    caplog.set_level(logging.WARNING, logger="collector")
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE)
    first = Service(load(path))
    try:
        assert first.run_once()
    finally:
        first.stop()
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with engine.begin() as conn:
            names = [r[0] for r in conn.execute(text("SELECT name FROM collector_state"))]
            conn.execute(
                text("UPDATE collector_state SET value = :v WHERE name LIKE 'nonce%'"), {"v": mark}
            )
    finally:
        engine.dispose()
    second = Service(load(path))
    try:
        assert second.run_once()
    finally:
        second.stop()
    assert fast.last_nonce[key[0]] <= now_ms()
    assert [
        r.getMessage()
        for r in caplog.records
        if "collector_state" in r.getMessage() and mark in r.getMessage()
    ], names


# -- the lease row (PostgreSQL) ------------------------------------------------------------------


def lease_row(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def test_a_lease_row_nonce_mark_no_collector_writes_is_refused_and_reset(
    tmp_path, fast, postgres, caplog
) -> None:
    """Before: a nonce_mark of 9e18 was the next holder's floor, and sent."""
    caplog.set_level(logging.WARNING, logger="collector")
    url = postgres.new_database()
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE, db=url)
    first = Service(load(path))
    try:
        assert first.run_once()
    finally:
        first.stop()
    lease_row(
        url, "UPDATE account_leases SET nonce_mark = 9000000000000000000 WHERE account = 'default'"
    )
    second = Service(load(path))
    try:
        assert second.run_once()
    finally:
        second.stop()
    assert fast.last_nonce[key[0]] <= now_ms()
    warnings = [r.getMessage() for r in caplog.records if "lease row" in r.getMessage()]
    assert warnings == [
        "the lease row of account default (account_leases): nonce mark 9000000000000000000 is "
        "not one a collector writes (an integer under 2**63, at most 24 h ahead of the clock); "
        "refused (and reset in the row): nonces start from the clock"
    ]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            mark = conn.execute(
                text("SELECT nonce_mark FROM account_leases WHERE account = 'default'")
            ).scalar()
    finally:
        engine.dispose()
    assert 0 < mark <= now_ms()


@pytest.mark.parametrize("level", ["'Infinity'", "1e12", "'NaN'", "-3"])
def test_a_lease_row_counter_no_collector_writes_is_a_full_counter(
    tmp_path, fast, postgres, caplog, level
) -> None:
    """Before: a released row's level of Infinity or 1e12 was restored as it was: every private
    run an OverflowError stored as bad_response, written back to the row."""
    caplog.set_level(logging.WARNING, logger="collector")
    url = postgres.new_database()
    key = fast.add_key()
    path = jobs_file(tmp_path, fast, key, BALANCE, db=url)
    first = Service(load(path))
    try:
        assert first.run_once()
    finally:
        first.stop()
    lease_row(
        url,
        f"UPDATE account_leases SET counter_level = {level}, counter_refusals = 0, "
        "counter_at = now() - interval '1 second', expires_at = now() - interval '1 second' "
        "WHERE account = 'default'",
    )
    second = Service(load(path))
    try:
        assert second.run_once()
        assert second.apis["default"].limiter.level() <= LIMIT.max + 1
    finally:
        second.stop()
    assert any(
        "the lease row of account default (account_leases): the counter" in r.getMessage()
        and r.getMessage().endswith("taken as full as of now")
        for r in caplog.records
    )


# -- any content at all ----------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 7, 15, 1_000_000.0, 2**63, 10**29, 1e29, 1.5e15]),
)
_values = st.one_of(_numbers, st.booleans(), st.none(), st.text(max_size=5), st.lists(_numbers))
_budgets = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "level": _values,
            "at": _values,
            "refusals": _values,
            "nonce": _values,
            "unit": st.one_of(st.sampled_from(["ms", "us", "ns"]), _values),
            "writer": st.one_of(st.text(max_size=400), _values),
        },
    ).map(lambda d: json.dumps(d, allow_nan=True)),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=_budgets)
def test_any_budget_content_gives_a_counter_in_bounds_and_a_nonce_near_the_clock(
    tmp_path, content
) -> None:
    """Whatever the file holds: no exception, a level within [0, ceiling] (full when unsound),
    a nonce floor at most a day ahead of the clock, and the file written back sound."""
    folder = tmp_path / "hyp"
    folder.mkdir(mode=0o700, exist_ok=True)
    budget = KeyBudget(folder, "key", clock=lambda: 1_000_000.0)
    budget.path.unlink(missing_ok=True)
    budget.path.write_text(content)
    budget.path.chmod(0o600)
    limiter = RateLimiter(LIMIT, clock=lambda: 0.0)
    nonces = NonceSource("ms", clock=lambda: 1_000_000 * 10**9)
    try:
        with budget.turn(limiter, nonces):
            level, _ = limiter.snapshot()
            assert 0.0 <= level <= ceiling(LIMIT)
            assert nonces.last <= 1_000_000 * 1000 + DAY_MS
    finally:
        budget.close()
    written = json.loads(budget.path.read_text())
    assert 0.0 <= written["level"] <= ceiling(LIMIT) and written["unit"] == "ms"


_marks = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "last": _values,
            "leases": st.one_of(st.dictionaries(st.text(max_size=8), _values, max_size=3), _values),
            "unit": st.one_of(st.sampled_from(["ms", "us", "ns"]), _values),
        },
    ).map(lambda d: json.dumps(d, allow_nan=True)),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=_marks)
def test_any_mark_file_content_is_one_line_or_a_floor_near_the_clock(tmp_path, content) -> None:
    folder = tmp_path / "hyp"
    folder.mkdir(mode=0o700, exist_ok=True)
    state = KeyState(folder, "key", clock=lambda: 1_000_000 * 10**9)
    state.path.unlink(missing_ok=True)
    state.path.write_text(content)
    state.path.chmod(0o600)
    try:
        floor = state.start()
    except ConfigError as exc:
        assert str(exc).startswith(f"{state.path}: cannot read the key's nonce mark: ")
        assert "\n" not in str(exc)
        return
    assert 0 <= floor <= 1_000_000 * 1000 + DAY_MS


def test_a_link_planted_at_the_temporary_name_is_removed_not_written_through(
    tmp_path, state_dir
) -> None:
    """The mark file is replaced through a temporary file: before, it was opened with O_TRUNC at
    a name anyone writing in the folder could guess (``key-….tmpPID``), following a link there."""
    import threading

    victim = tmp_path / "precious.db"
    victim.write_bytes(b"keep me")
    state = KeyState(state_dir, "k")
    Path(state_dir).mkdir(mode=0o700)
    old_name = state.path.with_suffix(f".tmp{os.getpid()}")
    new_name = state.folder / f".{state.path.name}.tmp{os.getpid()}.{threading.get_ident()}"
    for name in (old_name, new_name):
        name.symlink_to(victim)
    state.start()
    state.lease(now_ms() + 1000)
    assert victim.read_bytes() == b"keep me"
    assert not new_name.exists() and not new_name.is_symlink()
    assert state.read()["leases"][state.owner] > 0
