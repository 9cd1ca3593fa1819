"""A new user's afternoon (issue 17): one line for every mistake instead of a traceback or an
endless wait, ``check`` catching what would run wrongly, credentials as people paste them, and
the small things that were wrong (counts, per-job rows, cursors from another exchange)."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from collector.cli import main
from collector.datasets import Ledger
from collector.errors import ConfigError
from collector.jobfile import load
from collector.records import RunRecord
from collector.service import Service, build_api
from collector.status import collect
from collector.statustext import render
from collector.store import Store

from .helpers import running, sigterm, wait_for
from .test_service import job_file

ROOT = Path(__file__).resolve().parent.parent
SECRET = base64.b64encode(b"s" * 64).decode()
COLLECTOR = [sys.executable, "-m", "collector.cli"]


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``collector ARGS`` in a process of its own (a real exit code, real stderr)."""
    return subprocess.run(
        [*(prefix or []), *COLLECTOR, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def one_line(result: subprocess.CompletedProcess[str] | object) -> str:
    """The one error line a command printed (and nothing that looks like a traceback)."""
    err = getattr(result, "stderr", None)
    if err is None:
        err = getattr(result, "output", "")
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def write(folder: Path, body: str, name: str = "jobs.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


def check(path: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["check", *args, str(path)])


def unprivileged() -> list[str]:
    """A prefix running a command without the power to write where its user may not: as root
    (CI's containers), drop the capability that lets root write anywhere."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop privileges")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", "--"]


# -- tracebacks and endless waits become one line -----------------------------------------------


def test_a_date_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        jobs:
          fills:
            method: TradesHistory
            every: 1h
            since: 2024-13-01
        kraken: {{key: k, secret: "{SECRET}"}}
        """,
    )
    result = check(path)
    assert result.exit_code == 2
    assert one_line(result) == (
        f"error: {path}:5: jobs.fills.since: '2024-13-01' is not a date or time (month must be "
        "in 1..12); use all, a date (2024-01-31), a time (2024-01-31T12:00:00Z) or unix seconds"
    )


def test_a_sqlite_url_with_two_slashes_gets_the_same_line_from_check_run_and_status(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "database: sqlite://m.db\njobs:\n  t: {method: Time, every: 1h}\n")
    expected = (
        f"error: {path}:1: database: sqlite://m.db names a host, not a file: a file beside the "
        "job file is sqlite:///m.db (three slashes), an absolute path "
        "sqlite:////var/lib/collector/collector.db (four)"
    )
    for command in (["check"], ["run", "--once"], ["status"]):
        result = cli(*command, str(path))
        assert (result.returncode, one_line(result)) == (2, expected), command
    assert not (tmp_path / "m.db").exists()


def test_without_the_postgres_driver_every_command_says_how_to_install_it(tmp_path: Path) -> None:
    """The quick start's `pip install .` has no psycopg; the README's next step is
    `--db postgresql+psycopg://...`. Every command that opens the database says what is missing,
    as run and check did: status, verify, export and dashboard printed a traceback."""
    path = write(tmp_path, "jobs:\n  t: {method: Time, every: 1h}\n")
    url = "postgresql+psycopg://nobody@127.0.0.1:9/x"
    expected = (
        f"error: {path}: database: cannot use {url}: missing driver 'psycopg' "
        "(pip install 'kraken-collector[postgres]', or '.[postgres]' from a checkout)"
    )
    # An installation without psycopg: the import fails as it would there.
    no_driver = "import sys; sys.modules['psycopg'] = None; from collector.cli import main; main()"
    commands = [["check"], ["status"], ["verify"], ["export", "ledger"]]
    for command in [*commands, ["dashboard", "--listen", "127.0.0.1:0"]]:
        result = subprocess.run(
            [sys.executable, "-c", no_driver, *command, "--db", url, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, one_line(result)) == (2, expected), command


def test_export_from_a_server_that_is_down_is_one_line(tmp_path: Path) -> None:
    """Export streams through the driver's own connection, whose errors SQLAlchemy does not wrap:
    a server that is down printed psycopg's traceback."""
    path = write(tmp_path, "jobs:\n  t: {method: Time, every: 1h}\n")
    url = "postgresql+psycopg://nobody@127.0.0.1:9/x"
    for fmt in ("csv", "jsonl", "kraken"):
        result = cli("export", "ledger", str(path), "--db", url, "--format", fmt)
        line = one_line(result)
        assert result.returncode == 2, result.stderr
        assert line.startswith(f"error: {path}: database: cannot read database {url}: "), line
        assert "127.0.0.1" in line.split(url)[1], line


def test_no_writable_home_is_found_by_check_and_says_how_to_set_the_state_folder(
    tmp_path: Path,
) -> None:
    prefix = unprivileged()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)  # a service user's home it may not write (or /nonexistent)
    (tmp_path / "data").mkdir()
    path = write(
        tmp_path,
        f"""
        database: sqlite:///data/c.db
        kraken: {{key: k, secret: "{SECRET}", url: "http://127.0.0.1:9"}}
        jobs:
          b: {{method: Balance, every: 1h}}
        """,
    )
    env = {"HOME": str(home), "COLLECTOR_STATE_DIR": "", "XDG_STATE_HOME": ""}
    state = home / ".local" / "state" / "collector"
    expected = (
        f"error: {path}: COLLECTOR_STATE_DIR: cannot use the state folder {state} (permission "
        f"denied in {home}), where each API key's nonce mark is kept: set COLLECTOR_STATE_DIR "
        "to a folder this user can write, e.g. COLLECTOR_STATE_DIR=/var/lib/collector/state"
    )
    for command in (["check"], ["run", "--once"]):
        result = cli(*command, str(path), env=env, prefix=prefix)
        assert (result.returncode, one_line(result)) == (2, expected), result.stderr
    # Public jobs keep no key state: they need no state folder.
    public = write(
        tmp_path, "database: sqlite:///data/p.db\njobs:\n  t: {method: Time, every: 1h}\n"
    )
    assert cli("check", str(public), env=env, prefix=prefix).returncode == 0


def test_a_read_only_job_folder_is_permission_denied_at_check_and_at_run(tmp_path: Path) -> None:
    prefix = unprivileged()
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, "database: sqlite:///collector.db\njobs:\n  t: {method: Time, every: 1h}\n")
    conf.chmod(0o555)  # /etc/collector: the service user reads it, writes nothing there
    expected = (
        f"error: {path}: database: cannot use database sqlite:///{conf}/collector.db: permission "
        f"denied to create files in {conf}; set COLLECTOR_DATA_DIR to a folder this user can "
        "write (a relative SQLite file lands there), or give database: an absolute path"
    )
    result = cli("check", str(path), prefix=prefix)
    assert (result.returncode, one_line(result)) == (2, expected)
    started = time.monotonic()
    result = cli("run", str(path), prefix=prefix, timeout=30)  # the service: no endless wait
    assert (result.returncode, one_line(result)) == (2, expected)
    assert time.monotonic() - started < 20
    # With COLLECTOR_DATA_DIR the database goes there, and it runs.
    data = tmp_path / "data"
    data.mkdir()
    env = {"COLLECTOR_DATA_DIR": str(data)}
    assert cli("check", str(path), prefix=prefix, env=env).returncode == 0


def test_the_systemd_unit_puts_data_and_state_in_var_lib(tmp_path: Path) -> None:
    unit = (ROOT / "examples" / "collector.service").read_text()
    env = dict(re.findall(r"^Environment=(\w+)=(\S+)$", unit, re.MULTILINE))
    assert env["COLLECTOR_DATA_DIR"] == "/var/lib/collector"
    assert env["COLLECTOR_STATE_DIR"] == "/var/lib/collector/state"
    path = write(
        tmp_path, "database: sqlite:///collector.db\njobs:\n  t: {method: Time, every: 1h}\n"
    )
    config = load(path, environ=env)
    assert config.database == "sqlite:////var/lib/collector/collector.db"
    assert config.spool_path == "/var/lib/collector/collector.db.spool"


def test_run_once_gives_up_on_an_unreachable_exchange_within_ten_seconds(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the block ends
    db = tmp_path / "c.db"
    path = write(
        tmp_path,
        f"""
        database: sqlite:///{db}
        kraken:
          url: "http://127.0.0.1:{port}"
          # The deadline is what is measured, not the public budget's waits (an attempt waits
          # there before it is sent: up to a second each, shared by the two jobs).
          public_rate_limit: {{max: 1000, decay: 1000}}
        jobs:
          t: {{method: Time, every: 1h}}
          patient: {{method: SystemStatus, every: 1h, deadline: 1s}}
        reference: false  # its Assets and AssetPairs would share the public budget's waits
        """,
    )
    started = time.monotonic()
    result = cli("run", "--once", str(path))
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert took < 20  # was about 60 s: each call retried until the job's minute-long deadline
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        found = {
            job: (attempts, started, finished)
            for job, attempts, started, finished in conn.execute(
                text(
                    "SELECT job, attempts, started_at, finished_at FROM runs "
                    "WHERE status = 'connection_error'"
                )
            ).all()
        }
    engine.dispose()
    assert found["t"][0] > 2  # retried, within ONCE_DEADLINE
    # The job's own deadline rules: no attempt starts after its second (full jitter makes the
    # number of attempts random, not the span).
    started, finished = (datetime.fromisoformat(v[:26]) for v in found["patient"][1:])
    # (The bound leaves room for the last attempt and a loaded machine; ONCE_DEADLINE is 10 s.)
    assert (finished - started).total_seconds() < 2.5


def test_run_once_while_the_service_runs_names_the_process_holding_the_lease(
    tmp_path: Path, fake, keypair
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(tmp_path, fake, keypair, url, "t: {method: Time, every: 1h}")
    with running([*COLLECTOR, "run", str(path)]) as service:
        log = tmp_path / "service.log"
        lines: list[str] = []

        def started() -> bool:
            line = service.stdout.readline() if service.stdout else ""
            lines.append(line)
            return "holding the lease on the public jobs" in line

        wait_for(started, timeout=30)
        begun = time.monotonic()
        result = cli("run", "--once", str(path))
        took = time.monotonic() - begun
        log.write_text("".join(lines) + sigterm(service))
    assert result.returncode == 1
    line = one_line(result)
    assert re.fullmatch(
        rf"error: not run: the public jobs are held by \S+ pid {service.pid} since \S+; another "
        r"collector is running these jobs \(stop it, or let it collect\)",
        line,
    ), line
    assert "standing by: the public jobs are held by" in result.stderr  # not "is held"
    assert took < 15  # a lock held is a live holder: nothing to wait 23 s for


# -- check catches what would run wrongly ---------------------------------------------------------


def _job(tmp_path: Path, spec: str, extra: str = "") -> Path:
    return write(tmp_path, f"{extra}jobs:\n  j: {spec}\n")


@pytest.mark.parametrize("method", ["OHLC", "Trades", "Spread"])
@pytest.mark.parametrize("pair", ['"XBTUSD,ETHUSD"', "[XBTUSD, ETHUSD]"])
def test_one_pair_methods_refuse_two(tmp_path: Path, method: str, pair: str) -> None:
    path = _job(tmp_path, f"{{method: {method}, every: 1m, params: {{pair: {pair}}}}}")
    result = check(path)
    assert result.exit_code == 2
    assert one_line(result).startswith(
        f"error: {path}:2: jobs.j.params.pair: {method} takes one pair, not "
    )
    assert one_line(result).endswith(": give each pair a job of its own")


def test_unknown_parameters_get_a_did_you_mean(tmp_path: Path) -> None:
    path = _job(tmp_path, "{method: Ticker, every: 1m, params: {pairs: XBTUSD}}")
    assert one_line(check(path)) == (
        f"error: {path}:2: jobs.j.params.pairs: Ticker has no parameter 'pairs'; did you mean "
        "'pair'?"
    )
    path = _job(tmp_path, "{method: Time, every: 1m, params: {pair: XBTUSD}}")
    assert one_line(check(path)).endswith("Time has no parameter 'pair'; it takes none")
    # What the collector sets itself is refused, saying what to use instead.
    path = _job(
        tmp_path,
        "{method: Ledgers, every: 1m, params: {start: 0}}",
        f"kraken: {{key: k, secret: '{SECRET}'}}\n",
    )
    assert "set by the collector while it pages" in one_line(check(path))
    # Types: a boolean, a bounded count, a one-of.
    for spec, problem in [
        ("{method: Trades, every: 1m, params: {pair: XBTUSD, count: 5000}}", "from 1 to 1000"),
        ("{method: Depth, every: 1m, params: {pair: XBTUSD, count: x}}", "whole number"),
        ("{method: AssetPairs, every: 1m, params: {info: fee}}", "did you mean 'fees'?"),
        ("{method: OHLC, every: 1m}", "OHLC needs params: {pair: XBTUSD}"),
    ]:
        assert problem in one_line(check(_job(tmp_path, spec))), spec


@pytest.mark.parametrize("interval", ["2", "1h"])
def test_ohlc_interval_outside_krakens_list_names_the_list(tmp_path: Path, interval) -> None:
    from collector.methods import OHLC_INTERVALS

    path = _job(
        tmp_path, f"{{method: OHLC, every: 1m, params: {{pair: XBTUSD, interval: {interval}}}}}"
    )
    line = one_line(check(path))
    assert line.startswith(f"error: {path}:2: jobs.j.params.interval: ")
    tail = "" if interval == "2" else ", not '1h'"
    assert line.endswith(", ".join(map(str, OHLC_INTERVALS)) + " (minutes)" + tail)
    for good in OHLC_INTERVALS:
        load(
            _job(
                tmp_path, f"{{method: OHLC, every: 1m, params: {{pair: XBTUSD, interval: {good}}}}}"
            ),
            environ={},
        )


def test_since_needs_a_history_and_a_past(tmp_path: Path) -> None:
    path = _job(tmp_path, "{method: Ticker, every: 1m, since: 2024-01-01}")
    assert one_line(check(path)) == (
        f"error: {path}:2: jobs.j.since: Ticker keeps no history to start from; since: applies "
        "to ClosedOrders, Ledgers, OHLC, Spread, Trades, TradesHistory"
    )
    future = (datetime.now(UTC) + timedelta(days=3)).date()
    path = _job(
        tmp_path, f"{{method: Trades, every: 1m, params: {{pair: XBTUSD}}, since: {future}}}"
    )
    assert one_line(check(path)) == (
        f"error: {path}:2: jobs.j.since: {future}T00:00:00+00:00 is in the future: a history "
        "starts in the past (all, or a date it has)"
    )


def test_a_url_with_a_path_is_refused(tmp_path: Path) -> None:
    for url in (
        "https://api.kraken.com/0",
        "https://api.kraken.com/0/public",
        "https://api.kraken.com/?x=1",
    ):
        path = write(
            tmp_path, f"kraken: {{url: '{url}'}}\njobs:\n  t: {{method: Time, every: 1m}}\n"
        )
        assert one_line(check(path)) == (
            f"error: {path}:1: kraken.url: must be the exchange's address without a path, e.g. "
            "https://api.kraken.com: the client adds /0/public/... and /0/private/... itself"
        )
    for url in ("https://api.kraken.com", "https://api.kraken.com/", "http://127.0.0.1:8765"):
        path = write(
            tmp_path, f"kraken: {{url: '{url}'}}\njobs:\n  t: {{method: Time, every: 1m}}\n"
        )
        assert load(path, environ={}).kraken.url == url.rstrip("/")


def test_check_online_names_each_unknown_pair_with_the_name_kraken_knows(
    tmp_path: Path, fake
) -> None:
    path = write(
        tmp_path,
        f"""
        database: sqlite:///c.db
        kraken: {{url: "{fake.url}"}}
        jobs:
          a: {{method: Ticker, every: 1m, params: {{pair: "BTC/USD,XBT/USD,xbtusd,XXBTZUSD"}}}}
          b: {{method: OHLC, every: 1m, params: {{pair: btcusd}}}}
          c: {{method: Trades, every: 1m, params: {{pair: BTCUSD}}}}
          d: {{method: Spread, every: 1m, params: {{pair: ETHUSD}}}}
          e: {{method: Depth, every: 1m, params: {{pair: NOSUCHPAIR}}}}
        """,
    )
    calls = fake.calls["AssetPairs"]
    result = CliRunner().invoke(main, ["check", "--online", str(path)])
    assert result.exit_code == 2
    assert fake.calls["AssetPairs"] == calls + 1  # asked once, publicly
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {path}:4: jobs.a.params.pair: {fake.url} knows no pair 'BTC/USD'; did you mean 'XBTUSD'?",
        f"error: {path}:5: jobs.b.params.pair: {fake.url} knows no pair 'btcusd'; did you mean 'XBTUSD'?",
        f"error: {path}:6: jobs.c.params.pair: {fake.url} knows no pair 'BTCUSD'; did you mean 'XBTUSD'?",
        f"error: {path}:8: jobs.e.params.pair: {fake.url} knows no pair 'NOSUCHPAIR'",
    ]
    # What check --online accepts, the exchange answers (the fake as Kraken: wsname, altname in
    # any case, canonical).
    api = build_api(load(path, environ={}).kraken)
    with api:
        assert set(api.call("Ticker", {"pair": "XBT/USD,xbtusd,XXBTZUSD"}).result) == {"XXBTZUSD"}
    fixed = path.read_text().replace("BTC/USD,", "").replace("btcusd", "XBTUSD")
    fixed = fixed.replace("BTCUSD", "XBT/USD").replace("NOSUCHPAIR", "SOLUSD")
    path.write_text(fixed)
    result = CliRunner().invoke(main, ["check", "--online", str(path)])
    assert result.exit_code == 0, result.output
    assert f"online: {fake.url} knows every pair the jobs and streams name" in result.output


def test_pair_names_offline() -> None:
    from collector.pairs import check as unknown_pairs
    from collector.pairs import same

    answer = {
        "XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD"},
        "SOLUSD": {"altname": "SOLUSD", "wsname": "SOL/USD"},
    }
    assert unknown_pairs(["XBT/USD", "xbtusd", "XXBTZUSD", "SOL-USD", "DOGE/USD"], answer) == {
        "SOL-USD": "SOLUSD",
        "DOGE/USD": None,
    }
    for asked in ("XBTUSD", "xbtusd", "XBT/USD", "XXBTZUSD", "btc-usd"):
        assert same(asked, "XXBTZUSD"), asked
    assert same("USDTUSD", "USDTZUSD") and same("ETHXBT", "XETHXXBT") and same("SOLUSD", "SOLUSD")
    assert not same("ETHUSD", "XXBTZUSD") and not same("XBTEUR", "XXBTZUSD")


@pytest.mark.parametrize(
    ("job", "problem"),
    [
        ("{method: Trades, every: 1m, params: {pair: XBTUSD}, since: 2024-13-01}", "month must be"),
        ('{method: OHLC, every: 1m, params: {pair: "XBTUSD,ETHUSD"}}', "takes one pair"),
        ("{method: Ticker, every: 1m, params: {pairs: XBTUSD}}", "did you mean 'pair'?"),
        ("{method: OHLC, every: 1m, params: {pair: XBTUSD, interval: 2}}", "240, 1440"),
        ("{method: Ticker, every: 1m, since: 2024-01-01}", "keeps no history"),
    ],
)
def test_no_command_tracebacks_on_what_check_refuses(
    tmp_path: Path, job: str, problem: str
) -> None:
    path = write(tmp_path, f"database: sqlite:///c.db\njobs:\n  j: {job}\n")
    for command in (["check"], ["status"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, [*command, str(path)])
        assert result.exit_code == 2, command
        assert problem in one_line(result), command
    result = cli("run", "--once", str(path))
    assert result.returncode == 2 and problem in one_line(result)
    assert not (tmp_path / "c.db").exists()


# -- credentials as people paste them ------------------------------------------------------------


def test_a_notepad_key_file_loads_clean_and_signs(tmp_path: Path, fake) -> None:
    key, secret = fake.add_key()
    key_file = tmp_path / "kraken.key"
    key_file.write_bytes(b"\xef\xbb\xbf" + f"{key}  \r\n{secret} \r\n".encode())  # BOM, CRLF
    key_file.chmod(0o600)
    path = write(
        tmp_path,
        f"database: sqlite:///c.db\nkraken: {{url: '{fake.url}', key_file: kraken.key}}\njobs:\n  b: {{method: Balance, every: 1h}}\n",
    )
    config = load(path, environ={})
    assert (config.kraken.key, config.kraken.secret) == (key, secret)
    service = Service(config)
    try:
        assert service.run_once()
    finally:
        service.stop()


def test_a_secret_variable_with_a_newline_or_space_works(tmp_path: Path, fake) -> None:
    key, secret = fake.add_key()
    path = write(
        tmp_path,
        f"database: sqlite:///c.db\nkraken:\n  url: {fake.url}\njobs:\n  b: {{method: Balance, every: 1h}}\n",
    )
    for pasted in (secret + "\n", secret + " ", " " + secret + "\r\n"):
        config = load(path, environ={"KRAKEN_API_KEY": key + "\n", "KRAKEN_API_SECRET": pasted})
        assert (config.kraken.key, config.kraken.secret) == (key, secret)
    service = Service(config)
    try:
        assert service.run_once()
    finally:
        service.stop()


def test_an_invalid_secret_names_its_variable_and_the_line_it_belongs_to(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database: sqlite:///c.db\nkraken:\n  url: https://api.kraken.com\njobs:\n  b: {method: Balance, every: 1h}\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "not base64!"})
    assert str(info.value) == (
        f"{path}:2: kraken.secret: the API secret from $KRAKEN_API_SECRET is not valid base64; "
        "it holds a space or line break inside"
    )
    assert "not base64!" not in str(info.value)
    path = write(
        tmp_path,
        "kraken:\n  key: k\n  secret: ${MY_SECRET}\njobs:\n  b: {method: Balance, every: 1h}\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={"MY_SECRET": "abc$"})
    assert (
        str(info.value)
        == f"{path}:3: kraken.secret: the API secret from ${{MY_SECRET}} is not valid base64"
    )


# -- small but wrong ----------------------------------------------------------------------------


def test_stopped_counts_runs_not_pages(tmp_path: Path, fake, keypair, caplog) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(
        tmp_path,
        fake,
        keypair,
        url,
        "l: {method: Ledgers, every: 1h}\nt: {method: Time, every: 1h}",
        reference=False,
    )
    service = Service(load(path))
    try:
        assert service.run_once()
    finally:
        service.stop()
    assert service.writer.written == 9  # the ledger's eight pages (360 entries) and Time
    assert "collector stopped: 2 runs written" in caplog.text


def test_status_counts_each_jobs_own_pair_and_interval(tmp_path: Path, fake, keypair) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    jobs = """
    m1: {method: OHLC, params: {pair: XBTUSD, interval: 1}, every: 1h}
    h1: {method: OHLC, params: {pair: XBTUSD, interval: 60}, every: 1h}
    eth: {method: OHLC, params: {pair: "ETH/USD", interval: 60}, every: 1h}
    xbt_trades: {method: Trades, params: {pair: XBTUSD}, every: 1h, since: 1700000000}
    sol_trades: {method: Trades, params: {pair: SOLUSD}, every: 1h, since: 1700000000}
    """
    config = load(job_file(tmp_path, fake, keypair, url, jobs))
    service = Service(config)
    try:
        assert service.run_once()
    finally:
        service.stop()
    store = Store.from_url(url)
    try:
        report = collect(config, store, datetime.now(UTC), 0)
        with store.engine.connect() as conn:

            def count(sql: str) -> tuple[int, str]:
                n, newest = conn.execute(text(sql)).one()
                return n, newest[:19].replace(" ", "T")

            expected = {
                "m1": count(
                    "SELECT count(*), max(time) FROM ohlc WHERE pair = 'XXBTZUSD' AND interval = 1"
                ),
                "h1": count(
                    "SELECT count(*), max(time) FROM ohlc WHERE pair = 'XXBTZUSD' AND interval = 60"
                ),
                "eth": count(
                    "SELECT count(*), max(time) FROM ohlc WHERE pair = 'XETHZUSD' AND interval = 60"
                ),
                "xbt_trades": count(
                    "SELECT count(*), max(time) FROM trades WHERE pair = 'XXBTZUSD'"
                ),
                "sol_trades": count("SELECT count(*), max(time) FROM trades WHERE pair = 'SOLUSD'"),
            }
    finally:
        store.dispose()
    found = {j["name"]: (j["rows"], j["newest"][:19]) for j in report["jobs"]}
    assert found == expected
    # Not the table's count: each job has some of it.
    for job, table in [("m1", "ohlc"), ("xbt_trades", "trades")]:
        assert 0 < found[job][0] < _count(url, f"SELECT count(*) FROM {table}")


def _count(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def test_a_database_of_another_exchange_or_key_is_refused(tmp_path: Path, fake, keypair) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    jobs = "ledgers: {method: Ledgers, every: 1h}\ntrades: {method: Trades, params: {pair: XBTUSD}, every: 1h}"
    path = job_file(tmp_path, fake, keypair, url, jobs)
    assert cli("run", "--once", str(path)).returncode == 0
    assert cli("check", str(path)).returncode == 0  # same exchange, same key: continues
    other = fake.add_key()  # "going live": another key on the same database
    path.write_text(path.read_text().replace(keypair[0], other[0]).replace(keypair[1], other[1]))
    for command in (["check"], ["run", "--once"], ["run"]):
        result = cli(*command, str(path), timeout=30)
        line = one_line(result)
        assert result.returncode == 2, command
        assert re.fullmatch(
            rf"error: {re.escape(str(path))}:\d+: jobs\.ledgers: this database's cursor for the job "
            r"came from API key [0-9a-f]{12}, and the job now collects from API key [0-9a-f]{12}: "
            r"continuing would skip that history\. Use a new database \(or give the job a new "
            r"name\) for the new source",
            line,
        ), line
    assert keypair[0] not in (tmp_path / "c.db").read_bytes().decode("latin-1")  # hashed
    # Another exchange for a public job, likewise; a new job name starts afresh.
    text_ = path.read_text().replace(other[0], keypair[0]).replace(other[1], keypair[1])
    path.write_text(text_.replace(fake.url, fake.url.replace("127.0.0.1", "localhost")))
    assert "jobs.trades: this database's cursor for the job came from http://127.0.0.1" in one_line(
        cli("check", str(path))
    )
    path.write_text(path.read_text().replace("trades:", "trades_live:"))
    assert cli("check", str(path)).returncode == 0


def test_postgres_urls_as_providers_and_psycopg2_users_write_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database: postgres://u:p@db.example/kraken\njobs:\n  t: {method: Time, every: 1m}\n",
    )
    assert load(path, environ={}).database == "postgresql+psycopg://u:p@db.example/kraken"
    path = write(
        tmp_path, "database: postgresql+psycopg2://u@h/db\njobs:\n  t: {method: Time, every: 1m}\n"
    )
    assert one_line(check(path)) == (
        f"error: {path}:1: database: collector talks to PostgreSQL through psycopg 3: write "
        "postgresql+psycopg:// (or postgresql://), not postgresql+psycopg2://"
    )


def test_a_whole_second_clock_is_not_drift() -> None:
    from collector.service import clock_offset

    # Kraken's unixtime is whole seconds: 1000 read at 1000.9 is a clock that agrees.
    assert clock_offset(1000, 1000.9, 1001.05) == 0
    assert clock_offset(1000, 1000.0, 1000.2) == 0
    assert clock_offset(997, 1000.9, 1001.0) == pytest.approx(-2.9)  # behind beyond its second
    assert clock_offset(1003, 1000.9, 1001.0) == pytest.approx(2.0)  # ahead


def test_metrics_listen_given_on_the_command_line_ignores_the_files(
    tmp_path: Path, fake, keypair
) -> None:
    path = job_file(
        tmp_path, fake, keypair, f"sqlite:///{tmp_path / 'c.db'}", "t: {method: Time, every: 1h}"
    )
    path.write_text(path.read_text() + "metrics: {listen: 'not an address'}\n")
    assert "metrics.listen: must be HOST:PORT" in one_line(check(path))
    assert load(path, metrics_listen="127.0.0.1:0").metrics_listen == "127.0.0.1:0"
    result = cli("run", "--once", "--metrics-listen", "127.0.0.1:0", str(path))
    assert result.returncode == 0, result.stderr
    assert "metrics.listen" not in result.stderr


def test_a_long_paging_run_says_how_far_it_got_and_status_shows_it(
    tmp_path: Path, fake, keypair, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="collector")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = load(job_file(tmp_path, fake, keypair, url, "l: {method: Ledgers, every: 1h}"))
    service = Service(config)
    service.runner.progress_every = 0.0  # every page, here; every 10 s by default
    try:
        assert service.run_once()
    finally:
        service.stop()
    said = [r.getMessage() for r in caplog.records if "job l: paging:" in r.getMessage()]
    assert said[0].startswith("job l: paging: 1 pages, 50 rows so far, from ")
    assert said[-1].startswith("job l: paging: 8 pages, 360 rows so far, from ")
    oldest = min(e["time"] for e in fake.ledger().values())
    assert datetime.fromtimestamp(int(oldest), UTC).isoformat(sep=" ")[:19] in said[-1]
    assert any(
        r.getMessage().startswith("job l: ok after 8 pages, 360 rows") for r in caplog.records
    )
    # A window half paged shows in status.
    store = Store.from_url(url)
    try:
        now = datetime.now(UTC)
        store.write(
            [
                RunRecord(
                    job="l",
                    method="Ledgers",
                    params={},
                    scheduled_at=now,
                    started_at=now,
                    finished_at=now,
                    dataset=Ledger.name,
                    cursor={
                        "done": None,
                        "window": {
                            "start": None,
                            "end": 1,
                            "ofs": 600,
                            "count": 10_000,
                            "repaged": 0,
                        },
                    },
                )
            ]
        )
        shown = render(collect(config, store, now, 0))
    finally:
        store.dispose()
    assert "(paging 600 of 10,000)" in shown


# -- the fake's key without a permission, and the methods a job can use --------------------------


def test_a_key_without_a_permission_is_denied_like_on_kraken(tmp_path: Path, fake, caplog) -> None:
    from collector.methods import QUERY_FUNDS

    caplog.set_level(logging.INFO, logger="collector")
    key, secret = fake.add_key(permissions=[QUERY_FUNDS])
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = job_file(
        tmp_path,
        fake,
        (key, secret),
        url,
        "b: {method: Balance, every: 1h}\nl: {method: Ledgers, every: 1h}",
        reference=False,
    )
    service = Service(load(path))
    try:
        assert not service.run_once()
    finally:
        service.stop()
    engine = create_engine(url)
    with engine.connect() as conn:
        found = dict(conn.execute(text("SELECT job, coalesce(error, status) FROM runs")).all())
    engine.dispose()
    assert found == {"b": "ok", "l": "EGeneral:Permission denied"}
    assert "the API key needs the permission 'Query Ledger Entries' for Ledgers" in caplog.text


def test_the_fake_exchange_command_takes_a_limited_key(tmp_path: Path) -> None:
    key_file = tmp_path / "fake.key"
    with running(
        [
            *COLLECTOR,
            "fake-exchange",
            "--port",
            "0",
            "--key-file",
            str(key_file),
            "--permissions",
            "funds,closed",
        ]
    ) as proc:
        lines: list[str] = []
        wait_for(
            lambda: bool(lines.append(proc.stdout.readline()) or "may only" in lines[-1]),
            timeout=30,
        )
        sigterm(proc)
    assert lines[-1].strip() == "the key may only: Query Closed Orders & Trades, Query Funds"
    bad = cli("fake-exchange", "--permissions", "trade", "--key-file", str(key_file))
    assert (
        bad.returncode == 2
        and "unknown trade; use funds, open, closed, ledger, export" in bad.stderr
    )


def test_collector_methods_lists_every_method_with_its_parameters() -> None:
    from collector.methods import READ_METHODS

    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    listed = re.findall(r"^(\S+) \((?:public|private)", result.output, re.MULTILINE)
    assert listed == list(READ_METHODS)
    assert "  * pair         pair     one asset pair, e.g. XBTUSD" in result.output
    assert (
        "minutes per candle (default 1): 1, 5, 15, 30, 60, 240, 1440, 10080, 21600" in result.output
    )
    assert "Ledgers (private, needs Query Ledger Entries)" in result.output
    bad = CliRunner().invoke(main, ["methods", "Tickr"])
    assert (
        bad.exit_code == 2
        and bad.output == "error: unknown method 'Tickr'; did you mean 'Ticker'?\n"
    )
    assert "methods" in CliRunner().invoke(main, ["--help"]).output


def test_a_closed_pipe_is_no_error() -> None:
    """`collector methods | head -1`: a reader gone before the output ends is no error (exit 0,
    nothing on stderr), for every command that prints."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line: every write meets EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "collector.cli", "methods"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, b"")
