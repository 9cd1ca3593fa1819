"""A user's streams, as the README tells them: `collector fake-exchange --ws-port` in one terminal,
a job file of streams alone, `check`, `run`, then `/healthz`, `/metrics`, `status`, the page and an
export read back with pandas, on SQLite and PostgreSQL. Every part is real: the commands as
processes, the fake's WebSocket and REST endpoints over sockets, the database."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from .helpers import running, wait_for

COLLECTOR = [sys.executable, "-m", "collector.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count(url: str, sql: str) -> int:
    """``sql``'s one number; 0 while the service has not made the tables yet."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)
    except DBAPIError:
        return 0
    finally:
        engine.dispose()


def collector(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COLLECTOR, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def metric(page: str, name: str, **labels: str) -> float:
    """The value of the series ``name`` whose labels include ``labels``."""
    for line in page.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_a_users_streams_from_the_fake_to_status_page_and_export(
    tmp_path: Path, database_url: str
) -> None:
    port, ws_port, listen = free_port(), free_port(), free_port()
    serve = [*COLLECTOR, "fake-exchange", "--port", str(port), "--ws-port", str(ws_port)]
    with running([*serve, "--key-file", str(tmp_path / "fake.key")], cwd=tmp_path, env=ENV) as fx:
        assert fx.stdout is not None
        said = [fx.stdout.readline(), fx.stdout.readline(), fx.stdout.readline()]
        assert f"its WebSocket v2 feed on ws://127.0.0.1:{ws_port}/v2" in "".join(said), said
        jobs = tmp_path / "streams.yaml"
        jobs.write_text(
            f"database: {database_url}\n"
            f"kraken: {{url: 'http://127.0.0.1:{port}', ws_url: 'ws://127.0.0.1:{ws_port}/v2'}}\n"
            f"metrics: {{listen: '127.0.0.1:{listen}'}}\n"
            "streams:\n"
            "  tape: {channel: trade, pairs: [XBTUSD, ETH/USD]}\n"
            "  books: {channel: book, pairs: [XBTUSD], depth: 10, snapshot_every: 1s}\n"
        )
        checked = collector("check", str(jobs), cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
        assert "stream" in checked.stdout and "warning" not in checked.stderr, checked

        with running([*COLLECTOR, "run", str(jobs)], cwd=tmp_path, env=ENV) as run:
            wait_for(lambda: count(database_url, "SELECT count(*) FROM trades") >= 60, 60)
            wait_for(lambda: count(database_url, "SELECT count(DISTINCT taken_at) FROM book") >= 2)
            base = f"http://127.0.0.1:{listen}"

            health = requests.get(f"{base}/healthz", timeout=10)
            body: dict[str, Any] = health.json()
            assert health.status_code == 200, body
            assert set(body["streams"]) >= {"tape", "books"}, body

            page = requests.get(f"{base}/metrics", timeout=10).text
            assert metric(page, "collector_stream_messages_total", stream="tape") > 0
            assert metric(page, "collector_stream_lag_seconds_count", stream="books") > 0
            assert metric(page, "collector_stream_connections_open", stream="tape") >= 1

            status = collector("status", str(jobs), cwd=tmp_path)
            assert status.returncode == 0, (status.stdout, status.stderr)
            lines = {ln.split()[0]: ln for ln in status.stdout.splitlines() if ln.strip()}
            assert "trade" in lines["tape"] and "book" in lines["books"], status.stdout

            dashboard = requests.get(f"{base}/", timeout=30)
            assert dashboard.status_code == 200
            assert "tape" in dashboard.text and "books" in dashboard.text

            run.send_signal(signal.SIGINT)
            output, _ = run.communicate(timeout=60)
            assert run.returncode in (0, 130), output
            assert "Traceback" not in output, output

        # What was stored, read back as a user would: the export, into pandas.
        exported = collector("export", "book", str(jobs), "-o", "-", cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
        book = pd.read_csv(io.StringIO(exported.stdout), dtype=str)
        assert {"pair", "taken_at", "side", "level", "price", "qty"} <= set(book.columns)
        assert set(book["pair"]) == {"XXBTZUSD"} and set(book["side"]) == {"bid", "ask"}
        latest = book[book["taken_at"] == book["taken_at"].max()]
        assert len(latest) == 20  # the top 10 of each side
        bids = latest[latest["side"] == "bid"].sort_values("level")
        asks = latest[latest["side"] == "ask"].sort_values("level")
        # Exact decimals, never floats: the best bid under the best ask, both as Kraken sent.
        from decimal import Decimal

        assert Decimal(bids["price"].iloc[0]) < Decimal(asks["price"].iloc[0])
        assert all(re.fullmatch(r"\d+(\.\d+)?", q) for q in book["qty"]), book["qty"].head()

        # Each stored trade traces to the connection that brought it (runs.params).
        engine = create_engine(database_url)
        try:
            with engine.connect() as conn:
                traced = conn.execute(
                    text(
                        "SELECT r.job, r.params FROM trades t JOIN runs r ON r.id = t.run_id "
                        "ORDER BY t.trade_id LIMIT 1"
                    )
                ).one()
                uids = {u for (u,) in conn.execute(text("SELECT uid FROM stream_connections"))}
        finally:
            engine.dispose()
        params = traced.params if isinstance(traced.params, dict) else json.loads(traced.params)
        assert traced.job == "stream:tape" and params["connection"] in uids
        fx.send_signal(signal.SIGINT)
        fx.wait(30)
