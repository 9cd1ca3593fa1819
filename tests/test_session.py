"""A key's session owns its client, counter, nonces, state files and lease: made whole, one
owner of the nonce mark, events where the others react."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from collector.coordination import Leases
from collector.errors import ConfigError
from collector.events import Events, LeaseTaken, RateLimitWaited
from collector.jobfile import Account, KrakenSettings, load
from collector.keystate import KeyState, key_id
from collector.ratelimit import RateLimit
from collector.service import Service
from collector.session import KeySession
from collector.store import Store

from .test_service import job_file


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _session(
    tmp_path: Path, url: str, keypair: tuple[str, str], exchange: str, tier: RateLimit | None = None
) -> tuple[Store, Leases, Events, KeySession]:
    store = Store.from_url(url)
    store.upgrade()
    engine = store.engine
    events = Events()
    leases = Leases.for_database(
        engine,
        engine.url.database if engine.dialect.name == "sqlite" else None,
        3.0,
        events.publish,
    )
    account = Account("main", *keypair, **({"tier": tier} if tier else {}))
    session = KeySession(
        account,
        KrakenSettings(url=exchange),
        state_dir=str(tmp_path / "state"),
        database="test",
        events=events,
        leases=leases,
    )
    return store, leases, events, session


def test_the_floor_is_the_highest_mark_of_every_store_and_marks_go_ahead_of_nonces(
    tmp_path, fake, keypair, caplog
) -> None:
    store, leases, _events, session = _session(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", keypair, fake.url
    )
    ahead = _now_ms() + 60_000
    # A clean stop of another process left the key's mark file a minute ahead of the clock.
    KeyState(tmp_path / "state", keypair[0]).stop(ahead)
    assert session.client.permit is not None and session.client.shared is session.budget
    try:
        with caplog.at_level(logging.WARNING, logger="collector"):
            session.open("1e29", ahead - 5, database="test")  # a database mark none writes
        assert session.last == ahead  # the mark file's: the highest sound one
        assert "test: collector_state nonce_high_water:main: nonce mark '1e29'" in caplog.text
        assert not session.permit()  # no lease yet: nothing private is sent
        leases.start()
        assert session.permit()
        session.client.call("Balance")
        sent = fake.last_nonce[keypair[0]]
        assert sent == ahead + 1
        # The mark was saved, before the nonce was used, ahead of it: a crash now starts above.
        mark = json.loads((tmp_path / "state" / f"key-{key_id(keypair[0])}.json").read_text())
        assert max(mark["leases"].values()) > sent
        assert session.marks() == {"nonce_high_water:main": sent}
    finally:
        leases.stop({"main": session.last})
        session.close(True)
        store.dispose()
    after = json.loads((tmp_path / "state" / f"key-{key_id(keypair[0])}.json").read_text())
    assert after["last"] == sent and after["leases"] == {}  # a clean stop: the last one used
    assert fake.errors["EAPI:Invalid nonce"] == 0


def test_a_lease_row_taken_raises_the_floor_before_the_others_hear_of_it(
    tmp_path, fake, keypair, postgres
) -> None:
    store, leases, events, session = _session(tmp_path, postgres.new_database(), keypair, fake.url)
    held = _now_ms() + 120_000  # the last holder, on another machine, leased this far
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO account_leases (account, holder, host, pid, since, expires_at, "
                "nonce_mark) VALUES ('main', 'elsewhere', 'other-host', 1, now(), "
                "now() - interval '1 second', :mark)"
            ),
            {"mark": held},
        )
    heard: list[tuple[str, int, bool]] = []
    events.subscribe(LeaseTaken, lambda e: heard.append((e.name, session.last, session.permit())))
    try:
        session.open(0, database="test")
        assert session.last < held
        leases.start()
        # The floor came first, and nothing could be sent before the others heard of the take.
        assert heard == [("main", held, False)]
        assert session.permit()
        session.client.call("Balance")
        assert fake.last_nonce[keypair[0]] == held + 1
        with store.engine.connect() as conn:
            row = conn.execute(text("SELECT nonce_mark FROM account_leases")).scalar()
        assert row > held + 1  # the mark went to the row too, ahead of the nonce
    finally:
        leases.stop({"main": session.last})
        session.close(True)
        store.dispose()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT nonce_mark FROM account_leases")).scalar() == held + 1
    store.dispose()


def test_waits_for_the_keys_budget_are_published_under_the_accounts_name(
    tmp_path, fake, keypair
) -> None:
    store, leases, events, session = _session(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", keypair, fake.url, RateLimit(max=2, decay=50)
    )
    waits: list[str] = []
    events.subscribe(RateLimitWaited, lambda e: waits.append(e.limiter))
    try:
        session.open(0, database="test")
        leases.start()
        for _ in range(3):
            session.client.call("Balance")
    finally:
        leases.stop({"main": session.last})
        session.close(True)
        store.dispose()
    assert waits and set(waits) == {"private:main"}


def _open_files() -> set[str]:
    """The files this process holds open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_a_key_file_that_cant_be_written_at_stop_still_closes_everything(
    tmp_path, fake, keypair, state_dir
) -> None:
    """Before: the mark file's ConfigError at stop left the budget file, the database and the
    spool open (the steps after it never ran)."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    service = Service(
        load(job_file(tmp_path, fake, keypair, url, "b: {method: Balance, every: 1h}"))
    )
    assert service.run_once()
    ours = {str(tmp_path / "k.db"), str(Path(service.config.spool_path)), str(Path(state_dir))}
    assert any(f.startswith(tuple(ours)) for f in _open_files())
    os.chmod(state_dir, 0o770)  # the mark file's folder can no longer be trusted
    with pytest.raises(ConfigError, match="writable by group or others"):
        service.stop()
    assert not [f for f in _open_files() if f.startswith(tuple(ours))]
