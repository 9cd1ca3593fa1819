"""What a new user ran into: the package's name, error reasons, unset variables, relative paths,
NULL results, config errors inside a run, the offline example's first minute, cron jitter."""

from __future__ import annotations

import base64
import dataclasses
import importlib.metadata
import re
import shutil
import socket
import subprocess
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

import collector
from collector.cli import main
from collector.errors import (
    ConfigError,
    ConnectionFailed,
    CredentialsError,
    RequestError,
    RequestTimeout,
    Status,
)
from collector.jobfile import load
from collector.records import RunRecord
from collector.schedule import trigger
from collector.schema import runs
from collector.store import Store, current_revision, make_engine, upgrade

ROOT = Path(__file__).resolve().parent.parent
SECRET = base64.b64encode(b"s" * 64).decode()

# -- 1. the distribution is kraken-collector (PyPI's "collector" is someone else's) ------------


def test_distribution_is_kraken_collector_with_the_collector_command() -> None:
    dist = importlib.metadata.distribution("kraken-collector")
    assert dist.metadata["Name"] == "kraken-collector"
    (script,) = [e for e in dist.entry_points if e.group == "console_scripts"]
    assert (script.name, script.value) == ("collector", "collector.cli:main")
    # hatchling inlines a self-referencing extra in the metadata, so read what the file says.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kraken-collector"
    assert "kraken-collector[postgres]" in project["optional-dependencies"]["dev"]


# `collector[postgres]` not preceded by `kraken-` (or any other part of a longer name).
_BARE_EXTRA = re.compile(r"(?<![\w.-])collector\[postgres\]")


def test_no_file_tells_users_to_install_the_unrelated_collector_package() -> None:
    files = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "collector").rglob("*.py"))
    # What the repository holds under examples/ (not a database a user's offline try left there).
    tracked = subprocess.run(
        ["git", "ls-files", "examples"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    files += [ROOT / name for name in tracked]
    wrong = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        if path.is_file()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _BARE_EXTRA.search(line)
    ]
    assert wrong == []


def test_version_is_ours_even_beside_pypis_collector(tmp_path: Path, monkeypatch) -> None:
    # The unrelated PyPI "collector" installed in the same environment must not answer --version.
    other = tmp_path / "collector-9.9.9.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: collector\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["--version"], prog_name="collector")
    assert result.output == f"collector, version {collector.__version__}\n"


# -- 2. every failed call says why, in one short phrase ----------------------------------------


def _client(uri: str, **options: Any) -> collector.API:
    api = collector.API(**options)
    api.uri = uri
    return api


def _failure(api: collector.API, method: str = "Time", **kw: Any) -> RequestError:
    with api, pytest.raises(RequestError) as info:
        api.call(method, **kw)
    return info.value


def test_closed_port_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    error = _failure(_client(f"http://127.0.0.1:{port}", timeout=5))
    assert isinstance(error, ConnectionFailed)
    assert error.reason == "connection refused"
    assert str(error).startswith("Time: connection refused (ConnectionRefusedError: ")


def test_unknown_host_cannot_be_resolved() -> None:
    # .invalid is reserved (RFC 2606): it never resolves, and fails locally without a network.
    error = _failure(_client("http://nonexistent.invalid", timeout=5))
    assert isinstance(error, ConnectionFailed)
    assert error.reason == "cannot resolve nonexistent.invalid"
    assert str(error).startswith("Time: cannot resolve nonexistent.invalid (")


def test_a_server_that_never_answers_times_out_after_the_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel accepts the connection; nobody ever reads or answers
        error = _failure(_client(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.3))
    assert isinstance(error, RequestTimeout)
    assert error.reason == "timed out after 0.3 s"
    assert str(error) == "Time: timed out after 0.3 s waiting for the answer"


def test_an_answer_that_stops_half_way_is_a_timeout_too() -> None:
    # requests reports a body that stops coming as a ConnectionError; it is a timeout all the same.
    done = threading.Event()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"error": [],')
                done.wait(10)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            error = _failure(_client(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.3))
        finally:
            done.set()
            thread.join()
    assert (type(error), error.reason) == (RequestTimeout, "timed out after 0.3 s")


@pytest.mark.parametrize(
    ("kind", "options", "reason", "status"),
    [
        ("http_520", {}, "HTTP 520", "http_error"),
        ("kraken_error", {"error": "EService:Unavailable"}, "EService:Unavailable", "kraken_error"),
        ("not_json", {}, "answer is not JSON", "bad_response"),
        ("truncated", {}, "answer is not JSON", "bad_response"),
        ("reset", {}, "connection reset", "connection_error"),
    ],
)
def test_each_fault_has_its_reason(api, fake, kind, options, reason, status) -> None:
    fake.inject(kind, method="Balance", **options)
    error = _failure(api, "Balance")
    assert (error.reason, error.status) == (reason, status)
    assert str(error).startswith(f"Balance: {reason}")


def test_a_huge_answer_says_how_large_is_too_large(api, fake) -> None:
    api.max_response = 1000
    error = _failure(api, "Ticker")  # every pair: far more than 1,000 bytes
    assert (error.reason, str(error)) == (
        "answer larger than 1,000 bytes",
        "Ticker: answer larger than 1,000 bytes",
    )


# -- 6. a configuration error inside a run is config_error -------------------------------------


def test_config_and_credentials_errors_carry_config_error() -> None:
    assert Status.CONFIG_ERROR == "config_error"
    assert ConfigError.status == CredentialsError.status == Status.CONFIG_ERROR
    assert ConfigError("bad", file="j.yaml", line=3).status == "config_error"


def test_a_secret_that_is_not_base64_is_a_config_error_that_does_not_repeat_it(fake) -> None:
    api = _client(fake.url)
    api.key, api.secret = "some-key", "not base64!"
    with api, pytest.raises(CredentialsError) as info:
        api.call("Balance")
    assert info.value.status == Status.CONFIG_ERROR
    assert str(info.value) == "the API secret is not valid base64"
    assert "not base64!" not in str(info.value)
    assert fake.calls["Balance"] == 0


# -- 5. a run without a result stores SQL NULL --------------------------------------------------

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_a_failed_run_has_a_null_result(database_url: str) -> None:
    store = Store.from_url(database_url)
    try:
        store.upgrade()
        failed = RunRecord(
            job="ticker",
            method="Ticker",
            params={},
            scheduled_at=T0,
            started_at=T0,
            finished_at=T0,
            status=Status.CONNECTION_ERROR,
            error="Ticker: connection refused",
        )
        store.write([failed])
        with store.engine.connect() as conn:
            nulls = conn.execute(text("SELECT count(*) FROM runs WHERE result IS NULL")).scalar()
        assert nulls == 1
    finally:
        store.dispose()


def test_migration_0004_turns_stored_json_nulls_into_sql_null(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0003")
        at = "'2026-11-25 12:00:00.000000+00:00'"
        with engine.begin() as conn:
            for status, result, uid in (
                ("timeout", "'null'", "a"),  # what 0003's schema wrote for None
                ("ok", '\'{"XXBT": "1"}\'', "b"),
                ("ok", "'[null]'", "c"),
            ):
                conn.execute(
                    text(
                        "INSERT INTO runs (job, method, params, scheduled_at, started_at, "
                        "finished_at, status, result, attempts, uid) VALUES ('t', 'Ticker', '{}', "
                        f"{at}, {at}, {at}, '{status}', {result}, 1, '{uid}')"
                    )
                )
        counted = "SELECT count(*) FROM runs WHERE result IS NULL"
        with engine.connect() as conn:
            assert conn.execute(text(counted)).scalar() == 0
        upgrade(engine, "0004")
        assert current_revision(engine) == "0004"
        with engine.connect() as conn:
            assert conn.execute(text(counted)).scalar() == 1
            kept = conn.execute(select(runs.c.uid, runs.c.result).order_by(runs.c.uid)).all()
        assert [tuple(r) for r in kept] == [("a", None), ("b", {"XXBT": "1"}), ("c", [None])]
    finally:
        engine.dispose()


# -- 4. relative paths in the job file resolve against it (or $COLLECTOR_DATA_DIR) -------------


@pytest.fixture
def folders(tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """The job file's folder, a data folder, and the current folder (elsewhere: load() must not
    depend on where the service is started)."""
    conf, data, cwd = tmp_path / "conf", tmp_path / "data", tmp_path / "cwd"
    for folder in (conf, data, cwd):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    return conf, data, cwd


def _job_file(folder: Path, head: str) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(head + "jobs:\n  t: {method: Time, every: 1s}\n")
    return path


def test_a_relative_sqlite_file_is_beside_the_job_file(folders) -> None:
    conf, _, cwd = folders
    _job_file(conf, "database: sqlite:///offline.db\n")
    for given in (conf / "jobs.yaml", Path("../conf/jobs.yaml")):  # however the file is named
        config = load(given, environ={})
        assert config.database == f"sqlite:///{conf / 'offline.db'}"
        assert config.spool_path == f"{conf / 'offline.db'}.spool"
    # No database key: the default file is beside the job file too.
    assert load(_job_file(conf, ""), environ={}).database == f"sqlite:///{conf / 'collector.db'}"
    # Loading creates nothing, here or there.
    assert sorted(p.name for p in conf.iterdir()) == ["jobs.yaml"]
    assert list(cwd.iterdir()) == []


def test_db_option_and_environment_stay_relative_to_the_current_folder(folders) -> None:
    conf, _, _ = folders
    path = _job_file(conf, "database: sqlite:///offline.db\n")
    assert load(path, environ={}, database="sqlite:///cli.db").database == "sqlite:///cli.db"
    env = {"COLLECTOR_DATABASE_URL": "sqlite:///env.db", "COLLECTOR_DATA_DIR": "/srv"}
    assert load(path, environ=env).database == "sqlite:///env.db"
    env = {"COLLECTOR_SPOOL": "here.spool", "COLLECTOR_DATA_DIR": "/srv"}
    assert load(path, environ=env).spool_path == "here.spool"


def test_absolute_and_server_databases_are_left_alone(folders) -> None:
    conf, _, _ = folders
    path = _job_file(conf, "database: sqlite:////var/lib/c.db\n")
    assert load(path, environ={}).database == "sqlite:////var/lib/c.db"
    path = _job_file(conf, "database: sqlite://\n")  # in memory
    assert load(path, environ={}).database == "sqlite://"
    path = _job_file(conf, "database: postgresql://u@h/db\n")
    config = load(path, environ={})
    assert (config.database, config.spool_path) == (
        "postgresql+psycopg://u@h/db",
        str(conf / "collector.spool"),
    )


def test_a_relative_spool_path_is_beside_the_job_file(folders) -> None:
    conf, _, _ = folders
    path = _job_file(conf, "database: postgresql://u@h/db\nspool: {path: spool/runs.spool}\n")
    assert load(path, environ={}).spool_path == str(conf / "spool" / "runs.spool")


def test_data_dir_takes_the_relative_data_paths(folders) -> None:
    conf, data, _ = folders
    env = {"COLLECTOR_DATA_DIR": str(data)}
    path = _job_file(conf, "database: sqlite:///c.db\n")
    config = load(path, environ=env)
    assert (config.database, config.spool_path) == (
        f"sqlite:///{data / 'c.db'}",
        f"{data / 'c.db'}.spool",
    )
    path = _job_file(conf, "database: postgresql://u@h/db\n")
    assert load(path, environ=env).spool_path == str(data / "collector.spool")
    path = _job_file(conf, "database: postgresql://u@h/db\nspool: {path: runs.spool}\n")
    assert load(path, environ=env).spool_path == str(data / "runs.spool")
    # A relative data folder is relative to the current one (it is given at the shell).
    env = {"COLLECTOR_DATA_DIR": "../data"}
    assert load(path, environ=env).spool_path == str(data / "runs.spool")


def test_the_key_file_stays_beside_the_job_file_with_a_data_dir(folders) -> None:
    conf, data, _ = folders
    (conf / "k.key").write_text(f"filekey\n{SECRET}\n")
    (conf / "k.key").chmod(0o600)
    path = conf / "jobs.yaml"
    path.write_text("kraken: {key_file: k.key}\njobs:\n  b: {method: Balance, every: 1h}\n")
    config = load(path, environ={"COLLECTOR_DATA_DIR": str(data)})
    assert config.kraken.key == "filekey"


def test_state_dir(folders) -> None:
    conf, _, cwd = folders
    path = _job_file(conf, "")
    home = str(cwd / "home")
    cases = [
        ({"COLLECTOR_STATE_DIR": "/srv/state", "XDG_STATE_HOME": "/x"}, "/srv/state"),
        ({"COLLECTOR_STATE_DIR": "state"}, str(cwd / "state")),
        ({"XDG_STATE_HOME": "/x", "HOME": home}, "/x/collector"),
        ({"XDG_STATE_HOME": "relative", "HOME": home}, f"{home}/.local/state/collector"),
        ({"HOME": home}, f"{home}/.local/state/collector"),
    ]
    for env, expected in cases:
        assert load(path, environ=env).state_dir == expected, env
    assert list(cwd.iterdir()) == []  # resolved, not created


# -- 7. the offline example shows every kind of job within its first minute ---------------------


def test_every_job_of_the_offline_example_runs_within_its_first_minute(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples)
    key = examples / "fake.key"  # what `collector fake-exchange --key-file` writes
    key.write_text(f"fake-key\n{SECRET}\n")
    key.chmod(0o600)
    config = load(examples / "offline.yaml", environ={"COLLECTOR_STATE_DIR": str(tmp_path)})
    assert {j.method for j in config.jobs} == {
        "Ticker",
        "OHLC",
        "Trades",
        "Balance",
        "Ledgers",
        "TradesHistory",
        "ClosedOrders",
    }
    # Starts at, just after, half-way through and at the end of a minute, and just before a
    # five-minute mark.
    starts = [T0, T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=30)]
    starts += [T0 + timedelta(minutes=3, seconds=59.9), T0 + timedelta(minutes=4, seconds=1)]
    for job in config.jobs:
        if job.every is not None:
            continue  # interval jobs run once at start
        for start in starts:
            first = trigger(job).get_next_fire_time(None, start)
            assert first - start <= timedelta(seconds=60), (job.name, start, first)


def test_the_offline_example_fills_what_the_readme_queries_and_prices_all_it_holds(
    tmp_path: Path, fake: Any
) -> None:
    """The example had no ClosedOrders job (the README's fills-with-their-orders query found
    nothing offline) and priced only XBT and ETH (the dashboard's value left out the account's
    EUR and DOT). Run it twice, as written, against a fake: the second run's snapshot comes after
    the first run's prices."""
    examples = tmp_path / "examples"
    # What git holds (not a database or key a try of the example left in this checkout).
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("offline.db*"))
    key, secret = fake.add_key()
    (examples / "fake.key").write_text(f"{key}\n{secret}\n")
    (examples / "fake.key").chmod(0o600)
    job_file = examples / "offline.yaml"
    # This test's fake, and no starter pace: a first run pages the whole history.
    body = job_file.read_text().replace("http://127.0.0.1:8765", fake.url)
    job_file.write_text(body.replace("tier: starter", "rate_limit: {max: 10000, decay: 100}"))
    env = {"COLLECTOR_STATE_DIR": str(tmp_path / "state"), "COLLECTOR_DATABASE_URL": ""}
    for _ in range(2):
        result = CliRunner().invoke(main, ["run", "--once", str(job_file)], env=env)
        assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{examples / 'offline.db'}")
    try:
        with engine.connect() as conn:
            fills = conn.execute(
                text(
                    "SELECT t.txid FROM my_trades t JOIN orders o"
                    " ON o.account = t.account AND o.txid = t.ordertxid"
                )
            ).all()
            latest = conn.execute(
                text("SELECT value, unpriced FROM portfolio_value ORDER BY taken_at DESC LIMIT 1")
            ).one()
            held = conn.execute(
                text(
                    "SELECT asset FROM balances WHERE run_id = (SELECT max(run_id) FROM balances)"
                    " AND amount + 0 <> 0"
                )
            ).scalars()
            assert {"ZEUR", "DOT", "DOT.S"} <= set(held)
    finally:
        engine.dispose()
    assert len(fills) > 10
    assert latest.unpriced is None and float(latest.value) > 0, latest


# -- 8. cron jitter keeps fractions of a second ------------------------------------------------


def test_cron_jitter_keeps_fractions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text('jobs:\n  t: {method: Time, cron: "* * * * *", jitter: 0.5s}\n')
    (job,) = load(path, environ={}).jobs
    assert job.jitter == 0.5
    jittered = trigger(job)
    assert jittered.jitter == 0.5
    start = T0 + timedelta(seconds=10)
    plain = trigger(dataclasses.replace(job, jitter=None)).get_next_fire_time(None, start)
    assert plain == T0 + timedelta(minutes=1)
    draws = [jittered.get_next_fire_time(None, start) - plain for _ in range(200)]
    assert all(timedelta(0) <= d <= timedelta(seconds=0.5) for d in draws)
    assert any(d > timedelta(0) for d in draws)


# -- 9. what a run leaves behind is ignored by git -----------------------------------------------


def test_run_leftovers_are_ignored_by_git() -> None:
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    leftovers = [
        "examples/offline.db",
        "examples/offline.db-wal",
        "examples/offline.db-shm",
        "examples/offline.db.spool",
        "examples/offline.db.spool-wal",
        "examples/offline.db.spool-shm",
        "collector.spool",
        "collector.spool-wal",
        "collector.spool-shm",
        "examples/fake.key",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *leftovers],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    not_ignored = [
        line.split("\t")[-1] for line in result.stdout.splitlines() if line.startswith("::")
    ]
    assert not_ignored == []
