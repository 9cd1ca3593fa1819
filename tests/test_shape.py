"""The seams the package is built on: datasets, cursors, events, and constructors without I/O."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, create_engine, text

from collector import datasets
from collector.datasets import DEFAULT, Dataset
from collector.datasets.base import epoch
from collector.events import BatchStored, Events, RunFinished
from collector.jobfile import load
from collector.metrics import Metrics
from collector.records import RunRecord
from collector.retention import Retention
from collector.schema import UTCDateTime
from collector.service import Service
from collector.store import Store

from .test_service import job_file, rows


class Times(Dataset):
    """A toy dataset: the exchange's clock, one row per Time run."""

    name = "toy_times"
    table = Table(
        "toy_times",
        MetaData(),
        Column("run_id", Integer, primary_key=True),
        Column("unix", Integer),
    )
    methods = frozenset({"Time"})
    key = ("run_id",)

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        return [{"unix": result["unixtime"]}]


class Lasts(Dataset):
    """A toy incremental dataset: each Trades run asks `since` the previous run's `last`."""

    name = "toy_lasts"
    table = Table(
        "toy_lasts",
        MetaData(),
        Column("last", String(32), primary_key=True),
        Column("run_id", BigInteger),
    )
    methods = frozenset({"Trades"})
    key = ("last",)
    incremental = True

    def rows(self, record: RunRecord, result: Any) -> list[dict[str, Any]]:
        return [{"last": result["last"]}, {"last": result["last"]}]  # the same key twice: once

    def params(self, params: Any, cursor: Any) -> dict[str, Any]:
        return {**params, "since": cursor} if cursor else dict(params)

    def cursor(self, params: Any, result: Any, cursor: Any) -> Any:
        return result["last"]


class Stamps(Dataset):
    """A toy history that declares what the rest asks of it: its rows age by ``at``, ``retention``
    may prune it, and its cursor is a mapping ``{"upto": seconds}`` only it knows how to read."""

    name = "toy_stamps"
    table = Table(
        "toy_stamps",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime(), nullable=False),
        Column("run_id", BigInteger),
    )
    methods = frozenset({"Time"})
    key = ("id",)
    incremental = True
    history = True
    prunable = True
    time_column = "at"

    def cursor_time(self, cursor: Any) -> datetime | None:
        return epoch(cursor.get("upto")) if isinstance(cursor, dict) else None


def _store(url: str, *extra: Dataset) -> Store:
    store = Store.from_url(url, (*DEFAULT, *extra))
    store.upgrade()
    for dataset in extra:
        dataset.table.create(store.engine, checkfirst=True)
    return store


def test_a_toy_dataset_fills_its_table(tmp_path, fake, keypair, database_url) -> None:
    store = _store(database_url, Times())
    config = load(job_file(tmp_path, fake, keypair, database_url, "t: {method: Time, every: 1h}"))
    service = Service(config, store=store, datasets=(*DEFAULT, Times()))
    try:
        assert service.run_once() and service.run_once()
    finally:
        service.stop()
    stored = rows(database_url, "SELECT t.run_id, t.unix FROM toy_times t ORDER BY run_id")
    run_ids = [r[0] for r in rows(database_url, "SELECT id FROM runs WHERE job = 't' ORDER BY id")]
    assert [r[0] for r in stored] == run_ids and len(run_ids) == 2
    assert all(abs(unix - time.time()) < 60 for _, unix in stored)


def test_an_incremental_dataset_continues_from_its_stored_cursor(
    tmp_path, fake, keypair, database_url
) -> None:
    path = job_file(
        tmp_path,
        fake,
        keypair,
        database_url,
        "t: {method: Trades, params: {pair: XBTUSD}, every: 1h}",
    )
    lasts: list[str] = []
    for _ in range(2):  # two processes, one after the other
        service = Service(load(path), store=_store(database_url, Lasts()), datasets=(Lasts(),))
        try:
            for _ in range(2):
                record = service.execute(service.config.jobs[0])
                assert record is not None and record.status == "ok", record
                lasts.append(record.cursor)
        finally:
            service.stop()
    sent = [r[0] for r in rows(database_url, "SELECT params FROM runs ORDER BY id")]
    sent = [p if isinstance(p, dict) else json.loads(p) for p in sent]
    assert "since" not in sent[0]
    # every later run asked from the cursor the run before it left, across the restart too
    assert [p["since"] for p in sent[1:]] == lasts[:-1]
    (cursor,) = rows(database_url, "SELECT value FROM cursors WHERE job = 't'")
    assert cursor[0] in (lasts[-1], f'"{lasts[-1]}"')
    assert sorted(r[0] for r in rows(database_url, "SELECT last FROM toy_lasts")) == sorted(
        set(lasts)
    )


def test_a_new_datasets_declarations_reach_retention_and_metrics(
    tmp_path, fake, keypair, database_url
) -> None:
    """Adding a dataset is its module: retention prunes it by its declared time column and the
    metrics read its cursor its own way (before: retention's list of time columns had no entry
    for it, a KeyError, and the metrics read cursors by a switch on the built-in names)."""
    toy = Stamps()
    store = _store(database_url, toy)
    now = datetime.now(UTC)
    upto = now - timedelta(hours=1)
    record = RunRecord(
        "s", "Time", {}, now, now, now, dataset=toy.name, cursor={"upto": upto.timestamp()}
    )
    record.rows[toy.name] = [
        {"id": 1, "at": now - timedelta(days=10)},
        {"id": 2, "at": now - timedelta(days=1)},
    ]
    store.write([record])
    assert datasets.retention_tables((*DEFAULT, toy))[-1] == toy.name
    assert "Time" in datasets.history_methods((*DEFAULT, toy))

    config = load(job_file(tmp_path, fake, keypair, database_url, "s: {method: Time, every: 1h}"))
    config = dataclasses.replace(config, retention={toy.name: 5 * 86400.0})
    assert Retention(store, config).prune_once() == {toy.name: 1}
    assert rows(database_url, "SELECT id FROM toy_stamps") == [(2,)]

    events = Events()
    metrics = Metrics(events, pending=lambda: 0, spooled=lambda: 0, datasets=(*DEFAULT, toy))
    metrics.describe(config.jobs)
    events.publish(BatchStored([record]))
    families = text_string_to_metric_families(metrics.render().decode())
    lags = {
        s.labels["job"]: s.value
        for f in families
        if f.name == "collector_dataset_lag_seconds"
        for s in f.samples
    }
    assert 3600 <= lags["s"] < 3600 + 60
    store.engine.dispose()


def test_events_reach_subscribers(tmp_path, fake, keypair, database_url) -> None:
    config = load(
        job_file(
            tmp_path,
            fake,
            keypair,
            database_url,
            "b: {method: Balance, every: 1h}",
            reference=False,
        )
    )
    service = Service(config)
    finished: list[RunFinished] = []
    stored: list[BatchStored] = []
    service.events.subscribe(RunFinished, finished.append)
    unsubscribe = service.events.subscribe(BatchStored, stored.append)
    service.events.subscribe(RunFinished, lambda e: 1 / 0)  # a broken subscriber changes nothing
    try:
        assert service.run_once()
        unsubscribe()
        assert service.run_once()
    finally:
        service.stop()
    assert [e.record.job for e in finished] == ["b", "b"]
    assert [[r.uid for r in e.records] for e in stored] == [[finished[0].record.uid]]
    assert finished[0].record.rows["balances"]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_constructing_a_service_opens_nothing(tmp_path, fake, keypair) -> None:
    db = tmp_path / "data" / "c.db"
    db.parent.mkdir()
    config = load(
        job_file(tmp_path, fake, keypair, f"sqlite:///{db}", "b: {method: Balance, every: 1s}")
    )
    fds, threads = _open_fds(), threading.active_count()
    service = Service(config)
    assert list(db.parent.iterdir()) == []  # no database file, no spool file
    assert not os.path.exists(config.spool_path)
    assert _open_fds() == fds and threading.active_count() == threads
    assert sum(fake.calls.values()) == 0
    service.start()
    try:
        assert db.exists()
    finally:
        service.stop()
    assert sum(fake.calls.values()) >= 1
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() >= 1
    engine.dispose()
