"""The nonce mark belongs to the key: clean stops leave it at the clock, crashes a few seconds ahead."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import krakenex
from click.testing import CliRunner

import collector
from collector.cli import main
from collector.jobfile import load
from collector.keystate import KeyState, key_id
from collector.service import Service

from .helpers import wait_for
from .test_service import job_file, rows


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _mark(state_dir: str, key: str) -> dict:
    return json.loads((Path(state_dir) / f"key-{key_id(key)}.json").read_text())


def test_ten_quick_once_runs_leave_the_mark_at_the_clock(
    tmp_path, fake, keypair, state_dir
) -> None:
    url = f"sqlite:///{tmp_path / 'once.db'}"
    path = job_file(tmp_path, fake, keypair, url, 'b: {method: Balance, cron: "0 0 1 1 *"}')
    leads = []
    for _ in range(10):
        result = CliRunner().invoke(main, ["run", "--once", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        stored = int(
            rows(url, "SELECT value FROM collector_state WHERE name = 'nonce_high_water'")[0][0]
        )
        leads.append((max(stored, _mark(state_dir, keypair[0])["last"]) - _now_ms()) / 1000)
    assert max(leads) <= 2.0, leads  # a minute more per run before: 0 s, 59 s, 119 s, ...
    assert _mark(state_dir, keypair[0])["leases"] == {}  # clean stops leave no lease behind
    assert fake.errors["EAPI:Invalid nonce"] == 0
    # Any other client of the key (krakenex: milliseconds of the clock) goes on at once.
    other = krakenex.API(*keypair)
    other.uri = fake.url
    assert other.query_private("Balance")["error"] == []


def test_a_second_database_with_the_same_key_starts_above_the_first(
    tmp_path, fake, keypair
) -> None:
    # The first database saw nonces an hour ahead of this clock (a clock since corrected, or
    # another machine's): the key's state carries them to any database.
    ahead = collector.API(*keypair, clock=lambda: time.time_ns() + 3600 * 10**9)
    ahead.uri = fake.url
    first = load(
        job_file(
            tmp_path,
            fake,
            keypair,
            f"sqlite:///{tmp_path / 'a.db'}",
            "b: {method: Balance, every: 1h}",
        )
    )
    service = Service(first, api=ahead)
    try:
        assert service.run_once()
    finally:
        service.stop()
    second = load(
        job_file(
            tmp_path,
            fake,
            keypair,
            f"sqlite:///{tmp_path / 'b.db'}",
            "b: {method: Balance, every: 1h}",
        )
    )
    service = Service(second)
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert fake.errors["EAPI:Invalid nonce"] == 0
    assert fake.accepted[keypair[0]] == 2


def test_sigkill_at_random_moments_then_a_clock_an_hour_behind_reuses_no_nonce(
    tmp_path, fake, keypair, state_dir
) -> None:
    db = tmp_path / "k.db"
    jobs = "".join(f"b{i}: {{method: Balance, every: 0.05s}}\n" for i in range(3))
    path = job_file(tmp_path, fake, keypair, f"sqlite:///{db}", jobs)
    rng = random.Random(int(os.environ.get("SEED", "7")))
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            calls = fake.calls["Balance"]
            wait_for(lambda c=calls: fake.calls["Balance"] > c)
            target = fake.calls["Balance"] + rng.randint(1, 40)
            wait_for(lambda t=target: fake.calls["Balance"] >= t)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        used = fake.last_nonce[keypair[0]]
        assert _mark(state_dir, keypair[0])["leases"]  # the dead process's lease is still there
        behind = collector.API(*keypair, clock=lambda u=used: (u - 3_600_000) * 10**6)
        behind.uri = fake.url
        restarted = Service(load(path), api=behind)
        try:
            assert restarted.run_once()
        finally:
            restarted.stop()
        assert fake.errors["EAPI:Invalid nonce"] == 0
        # Above what the dead process used, and only just: the lease leads by seconds, not more.
        assert used < fake.last_nonce[keypair[0]] <= max(used, _now_ms()) + 5_000 + 200


def test_dead_leases_fold_into_last_and_live_ones_stay(tmp_path) -> None:
    state = KeyState(tmp_path, "KEY", "ms")
    other = KeyState(tmp_path, "KEY", "ms")
    state.lease(100)
    other.owner = f"{other.owner.rpartition(':')[0]}:{os.getppid()}"  # a live process
    other.lease(150)
    dead = KeyState(tmp_path, "KEY", "ms")
    dead.owner = "somehost-gone:1"
    dead.lease(170)
    fresh = KeyState(tmp_path, "KEY", "ms")  # a restart of this process (same pid): not live
    assert fresh.start() == 170
    data = fresh.read()
    assert data["last"] == 170 and data["leases"] == {other.owner: 150}
    fresh.stop(120)
    assert fresh.read()["last"] == 170  # never lowered
    # The unit is kept: a key read in microseconds sees the same mark, scaled.
    assert KeyState(tmp_path, "KEY", "us").read()["last"] == 170_000
    assert not list(tmp_path.glob("*KEY*"))  # named by a hash, never the key
