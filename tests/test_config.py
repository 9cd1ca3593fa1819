"""Bad job files: one line naming file, line and key, exit code 2, never a traceback."""

from __future__ import annotations

import base64
import os
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.errors import ConfigError, ConfigErrors
from collector.jobfile import load, parse_duration

SECRET = base64.b64encode(b"s" * 64).decode()


def write(tmp_path: Path, body: str, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


def check(path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    env = {
        "KRAKEN_API_KEY": "",
        "KRAKEN_API_SECRET": "",
        "COLLECTOR_DATABASE_URL": "",
        **(env or {}),
    }
    result = CliRunner().invoke(main, ["check", *args, str(path)], env=env)
    return result.exit_code, result.output


GOOD_HEAD = """
database: sqlite:///{db}
kraken:
  url: http://127.0.0.1:9
"""

CASES = [
    pytest.param(
        "jobs:\n  ticker:\n    method: Ticker\n    evry: 30s\n",
        ":4: jobs.ticker.evry: unknown key; did you mean 'every'?",
        id="unknown-key",
    ),
    pytest.param(
        "databse: sqlite:///x.db\njobs:\n  t:\n    method: Time\n    every: 1s\n",
        ":1: databse: unknown key; did you mean 'database'?",
        id="unknown-top-key",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    every: 1s\n  t:\n    method: Ticker\n    every: 5s\n",
        ":5: t: duplicate key (first at line 2); YAML would silently keep the last",
        id="duplicate-job",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    every: 30x\n",
        ":4: jobs.t.every: bad duration '30x': use 30s, 5m, 1h, 1d or combinations such as 1h30m",
        id="bad-duration",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    every: 0s\n",
        ":4: jobs.t.every: bad duration '0s'",
        id="zero-duration",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    cron: '61 * * * *'\n",
        ":4: jobs.t.cron: bad cron '61 * * * *'",
        id="bad-cron-value",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    cron: '* * * *'\n",
        ":4: jobs.t.cron: bad cron '* * * *': needs 5 fields",
        id="bad-cron-fields",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    every: 1s\n    cron: '* * * * *'\n",
        ":5: jobs.t: has both every and cron; keep one",
        id="both-schedules",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n",
        ":2: jobs.t: needs exactly one of every: (e.g. 30s) or cron: (5 fields)",
        id="no-schedule",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Tickr\n    every: 1s\n",
        ":3: jobs.t.method: unknown Kraken method 'Tickr'; did you mean 'Ticker'?",
        id="unknown-method",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: AddOrder\n    every: 1s\n",
        ":3: jobs.t.method: AddOrder changes account state; collector is read-only",
        id="state-changing",
    ),
    pytest.param(
        "jobs:\n  b:\n    method: Balance\n    every: 1h\n",
        ":3: jobs.b.method: Balance is a private method and needs credentials",
        id="no-credentials",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Time\n    every: 1s\n    timezone: Mars/Olympus\n",
        ":5: jobs.t.timezone: unknown timezone 'Mars/Olympus'",
        id="bad-timezone",
    ),
    pytest.param(
        "jobs:\n  t:\n    method: Balance\n    every: 1s\n    params: {nonce: 5}\n",
        ":5: jobs.t.params.nonce: 'nonce' is set by the client",
        id="nonce-param",
    ),
    pytest.param(
        "jobs:\n  t: {method: Ticker, every: 1s, params: {pair: {a: 1}}}\n",
        ":2: jobs.t.params.pair: a request parameter is a value or a list of values",
        id="nested-param",
    ),
    pytest.param("jobs: [1, 2]\n", ":1: jobs: 'jobs' must be a mapping", id="jobs-not-mapping"),
    pytest.param("- just\n- a list\n", ":1: the job file must be a mapping", id="not-a-mapping"),
    pytest.param("jobs:\n  t: {method: Time\n", "not valid YAML", id="not-yaml"),
]


@pytest.mark.parametrize(("body", "expected"), CASES)
def test_bad_job_file(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    code, output = check(path)
    assert code == 2
    assert output.startswith(f"error: {path}")
    assert expected in output
    assert output.count("\n") == 1 and "Traceback" not in output


def test_bad_secret_is_named_but_not_shown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kraken:
          key: abc
          secret: "not base64 at all!!"
        jobs:
          b: {method: Balance, every: 1h}
    """,
    )
    code, output = check(path)
    assert code == 2
    assert f"error: {path}:3: kraken.secret: the API secret is not valid base64" in output
    assert "not base64 at all" not in output


def test_unreadable_key_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "kraken:\n  key_file: missing.key\njobs:\n  t: {method: Time, every: 1s}\n"
    )
    code, output = check(path)
    assert code == 2
    assert f":2: kraken.key_file: cannot read key file '{tmp_path / 'missing.key'}'" in output


def test_malformed_database_url(tmp_path: Path) -> None:
    path = write(tmp_path, "database: 'sqlite//nope'\njobs:\n  t: {method: Time, every: 1s}\n")
    code, output = check(path)
    assert code == 2 and ":1: database: malformed database URL" in output


def test_unsupported_database(tmp_path: Path) -> None:
    path = write(tmp_path, "database: 'mysql://u@h/db'\njobs:\n  t: {method: Time, every: 1s}\n")
    code, output = check(path)
    assert code == 2 and "database: unsupported database 'mysql'" in output


def test_unreachable_database(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database: 'postgresql://nobody@127.0.0.1:9/x'\njobs:\n  t: {method: Time, every: 1s}\n",
    )
    # (`run` without --once waits for the database instead: test_outage.py)
    for command in (["check"], ["run", "--once"]):
        result = CliRunner().invoke(main, [*command, str(path)], env={"COLLECTOR_DATABASE_URL": ""})
        assert result.exit_code == 2, result.output
        assert result.output.startswith(
            f"error: {path}: database: cannot use database "
            "postgresql+psycopg://nobody@127.0.0.1:9/x"
        )
        assert "Traceback" not in result.output


def test_sqlite_folder_must_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path, "database: sqlite:////no/such/dir/c.db\njobs:\n  t: {method: Time, every: 1s}\n"
    )
    code, output = check(path)
    assert code == 2 and "its folder does not exist" in output
    # Waiting would not make the folder: `run` says so too, at once.
    result = CliRunner().invoke(main, ["run", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert result.exit_code == 2 and "its folder does not exist" in result.output


def test_missing_file(tmp_path: Path) -> None:
    code, output = check(tmp_path / "nope.yaml")
    assert (
        code == 2
        and output
        == f"error: {tmp_path / 'nope.yaml'}: cannot read the job file: No such file or directory\n"
    )


def test_env_expansion_credentials_and_database_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        database: ${DB_URL:-sqlite:///default.db}
        kraken:
          key: ${MY_KEY}
          secret: ${MY_SECRET}
          rate_limit: {max: 20, decay: 1}
          public_rate_limit: {max: 2, decay: 0.5}
        jobs:
          b: {method: TradeBalance, cron: "0 * * * *", params: {asset: ZUSD}}
          t: {method: Ticker, every: 1h30m, jitter: 5s, timeout: 3s}
    """,
    )
    config = load(path, environ={"MY_KEY": "k", "MY_SECRET": SECRET})
    assert (config.kraken.key, config.kraken.secret) == ("k", SECRET)
    assert SECRET not in repr(config)
    assert config.database == f"sqlite:///{tmp_path / 'default.db'}"  # beside the job file
    assert (config.kraken.tier.max, config.kraken.public_rate_limit.decay) == (20, 0.5)
    b, t = config.jobs
    assert (b.private, b.cron, b.params, t.private) == (True, "0 * * * *", {"asset": "ZUSD"}, False)
    assert (t.every, t.jitter, t.timeout) == (timedelta(hours=1, minutes=30), 5, 3)
    env = {"MY_KEY": "k", "MY_SECRET": SECRET, "DB_URL": "sqlite:///env.db"}
    assert load(path, environ=env).database == f"sqlite:///{tmp_path / 'env.db'}"
    env["COLLECTOR_DATABASE_URL"] = "postgresql://u@h/db"
    assert load(path, environ=env).database == "postgresql+psycopg://u@h/db"
    assert load(path, environ=env, database="sqlite:///cli.db").database == "sqlite:///cli.db"


def test_credentials_from_the_environment_and_key_file(tmp_path: Path) -> None:
    body = "jobs:\n  b: {method: Balance, every: 1h}\n"
    config = load(
        write(tmp_path, body), environ={"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": SECRET}
    )
    assert config.kraken.has_credentials
    (tmp_path / "k.key").write_text(f"filekey\n{SECRET}\n")
    config = load(write(tmp_path, "kraken: {key_file: k.key}\n" + body), environ={})
    assert (config.kraken.key, config.kraken.secret) == ("filekey", SECRET)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d", 86400),
        (10, 10),
        ("0.5s", 0.5),
        ("1x", None),
        ("", None),
        (True, None),
        (-1, None),
    ],
)
def test_durations(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_config_error_str_is_one_line() -> None:
    assert str(ConfigError("bad", file="j.yaml", line=3, key="jobs.x")) == "j.yaml:3: jobs.x: bad"


def test_example_job_file_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load(root / "jobs.yaml", environ={})
    assert [j.name for j in config.jobs] == ["ticker", "ohlc_hourly", "status"]
    assert not any(j.private for j in config.jobs)
    assert os.path.basename(config.path) == "jobs.yaml"


def test_an_unset_variable_is_an_error_naming_file_line_key_and_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kraken:
          url: http://127.0.0.1:9
          tier: starter
          key: ${KRAKEN_KEY}
          secret: ${KRAKEN_SECRET}
        jobs:
          b: {method: Balance, every: 1h}
    """,
    )
    code, output = check(path, env={"KRAKEN_KEY": None, "KRAKEN_SECRET": None})
    assert (code, output) == (
        2,
        f"error: {path}:4: kraken.key: ${{KRAKEN_KEY}} is not set\n"
        f"error: {path}:5: kraken.secret: ${{KRAKEN_SECRET}} is not set\n",
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "database: ${DB_URL}\njobs:\n  t: {method: Time, every: 1s}\n",
            ":1: database: ${DB_URL} is not set",
            id="database-does-not-fall-back-to-the-default",
        ),
        pytest.param(
            "database: sqlite:///${DATA}/c.db\njobs:\n  t: {method: Time, every: 1s}\n",
            ":1: database: ${DATA} is not set",
            id="inside-a-string",
        ),
        pytest.param(
            "jobs:\n  t:\n    method: Ticker\n    every: 1s\n    params:\n"
            "      pair: [XBTUSD, '${PAIR}']\n",
            ":6: jobs.t.params.pair: ${PAIR} is not set",
            id="in-a-list",
        ),
    ],
)
def test_unset_variables(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, body), environ={})
    assert str(info.value) == f"{tmp_path / 'jobs.yaml'}{expected}"


def test_defaults_and_empty_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        jobs:
          a: {method: Ticker, every: 1s, params: {pair: "${A:-}"}}
          b: {method: Ticker, every: 1s, params: {pair: "${B:-x}"}}
          c: {method: Ticker, every: 1s, params: {pair: "x${C}y"}}
          d: {method: Ticker, every: 1s, params: {pair: "${D:-z}"}}
          e: {method: Ticker, every: 1s, params: {pair: "${E}"}}
    """,
    )
    # ${A:-} is an explicit empty default; a variable set to empty expands to empty (C), or to
    # its default when it has one (D, as in the shell).
    config = load(path, environ={"C": "", "D": "", "E": "set"})
    assert [j.params["pair"] for j in config.jobs] == ["", "x", "xy", "z", "set"]


def test_check_reports_every_mistake_one_line_each_in_file_order(tmp_path: Path) -> None:
    """A file with five mistakes in five places takes one round, not five: a line for each, as
    a linter, and no second line for what a first one already says (a misspelt `every` is not
    also a job without a schedule)."""
    path = write(
        tmp_path,
        """
        database: sqlite:///x.db
        failover: 2x
        jobs:
          ticker:
            method: Ticker
            params: {pair: XBTUSD, cont: 1}
            evry: 30s
          candles:
            method: OHLC
            params: {pair: XBTUSD, interval: 7}
            every: 1h
            raw: maybe
          ok: {method: Time, every: 1m}
        valuation: {quote: "U S D"}
        """,
    )
    code, output = check(path)
    assert code == 2
    assert output.splitlines() == [
        f"error: {path}:2: failover: bad duration '2x': use 30s, 5m, 1h, 1d or combinations "
        "such as 1h30m",
        f"error: {path}:6: jobs.ticker.params.cont: Ticker has no parameter 'cont'; it takes "
        "asset_class, pair",
        f"error: {path}:7: jobs.ticker.evry: unknown key; did you mean 'every'?",
        f"error: {path}:10: jobs.candles.params.interval: 7 is not one Kraken takes: use one "
        "of 1, 5, 15, 30, 60, 240, 1440, 10080, 21600 (minutes)",
        f"error: {path}:12: jobs.candles.raw: must be true or false",
        f"error: {path}:14: valuation.quote: must be the name of the currency to value "
        "balances in, such as USD, EUR or XBT (Kraken's asset code or altname), not 'U S D'",
    ]
    # load() raises them together: run, status, export and a reload print the same lines.
    run = CliRunner().invoke(main, ["run", str(path)], env={"COLLECTOR_DATABASE_URL": ""})
    assert run.exit_code == 2 and run.output == output
    with pytest.raises(ConfigErrors) as raised:
        load(path, environ={})
    assert [f"error: {line}" for line in str(raised.value).splitlines()] == output.splitlines()
    assert [e.line for e in raised.value.errors] == [2, 6, 7, 10, 12, 14]


def test_a_misspelt_method_or_jobs_key_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs:\n  t: {methd: Time, every: 1m}\n  u: {method: Time, evry: 1m}\n")
    code, output = check(path)
    assert code == 2
    assert output.splitlines() == [
        f"error: {path}:2: jobs.t.methd: unknown key; did you mean 'method'?",
        f"error: {path}:3: jobs.u.evry: unknown key; did you mean 'every'?",
    ]
    path = write(tmp_path, "jbos:\n  t: {method: Time, every: 1m}\n")
    assert check(path)[1].splitlines() == [
        f"error: {path}:1: jbos: unknown key; did you mean 'jobs'?"
    ]


def test_a_broken_account_does_not_make_its_jobs_mistakes_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kraken:
          key: abc
          secret: "not base64!"
        accounts:
          main: {key_file: nowhere.key, tier: sarter}
        jobs:
          b: {method: Balance, account: main, every: 1h}
          l: {method: Ledgers, account: main, every: 0s}
        """,
    )
    code, output = check(path)
    assert code == 2
    lines = output.splitlines()
    assert [line.split(": ", 3)[2] for line in lines] == [
        "kraken.key",
        "kraken.secret",  # not base64
        "kraken.secret",  # and in the wrong place
        "accounts.main.tier",
        "accounts.main.key_file",
        "jobs.l.every",
    ], output


FAKE_KEY = base64.b64encode(b"k" * 42).decode()  # 56 characters, as Kraken's keys
FAKE_SECRET = base64.b64encode(b"s" * 64).decode()  # 88 characters, 64 bytes, as its secrets


@pytest.mark.parametrize("where", ["key_file", "yaml", "environment"])
def test_a_key_and_secret_swapped_are_one_line_that_says_so(tmp_path: Path, where: str) -> None:
    head = {
        "key_file": "kraken:\n  key_file: kraken.key\n",
        "yaml": f"kraken:\n  key: {FAKE_SECRET}\n  secret: {FAKE_KEY}\n",
        "environment": "kraken:\n  url: https://api.kraken.com\n",
    }[where]
    (tmp_path / "kraken.key").write_text(f"{FAKE_SECRET}\n{FAKE_KEY}\n")
    (tmp_path / "kraken.key").chmod(0o600)
    path = write(tmp_path, head + "jobs:\n  b: {method: Balance, every: 1h}\n")
    env = {"KRAKEN_API_KEY": FAKE_SECRET, "KRAKEN_API_SECRET": FAKE_KEY}
    code, output = check(path, env=env if where == "environment" else None)
    assert code == 2
    expected = {
        "key_file": ":2: kraken.key_file: the key file holds the secret on line 1 and the key "
        "on line 2",
        "yaml": ":2: kraken.key: kraken.key holds the secret and kraken.secret the key",
        "environment": ":1: kraken.key: $KRAKEN_API_KEY holds the secret and $KRAKEN_API_SECRET "
        "the key",
    }[where]
    assert output.splitlines() == [
        f"error: {path}{expected} (a secret is 88 characters of base64, a key 56: here the "
        "other way round); swap them, or every private call fails with EAPI:Invalid key"
    ]
    assert FAKE_SECRET not in output and FAKE_KEY not in output


def test_keys_the_right_way_round_and_the_fakes_keys_pass(tmp_path: Path) -> None:
    from collector.testing.fake_exchange import new_key_file

    for key, secret in (
        (FAKE_KEY, FAKE_SECRET),
        new_key_file(str(tmp_path / "fake.key")),
        ("KEY", SECRET),  # the tests' short keys are not judged
        (SECRET, SECRET),  # nor a key beside a secret of the same shape
    ):
        path = write(
            tmp_path,
            f"kraken:\n  key: {key}\n  secret: {secret}\njobs:\n  b: {{method: Balance, every: 1h}}\n",
        )
        code, output = check(path)
        assert code == 0, output


def test_every_unset_variable_is_a_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        database: ${DB_URL}
        kraken:
          key: ${MY_KEY}
          secret: ${MY_SECRET}
        jobs:
          b: {method: Balance, every: 1h}
        """,
    )
    code, output = check(path)
    assert code == 2
    assert output.splitlines() == [
        f"error: {path}:1: database: ${{DB_URL}} is not set",
        f"error: {path}:3: kraken.key: ${{MY_KEY}} is not set",
        f"error: {path}:4: kraken.secret: ${{MY_SECRET}} is not set",
    ]
