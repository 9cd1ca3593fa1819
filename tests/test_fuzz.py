"""Hostile input: any job file gives a clear error; any answer from the exchange gives a stored
row, never a dead service."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from collector.errors import ConfigError, Status
from collector.jobfile import JOB_KEYS, KRAKEN_KEYS, TOP_KEYS, load
from collector.retry import RetryPolicy
from collector.service import Service

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def load_or_error(body: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "jobs.yaml"
        path.write_bytes(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
        try:
            load(path, environ={"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "c2VjcmV0"})
        except ConfigError as exc:
            # One line for each mistake (ConfigErrors holds several), none of them forged.
            errors = getattr(exc, "errors", [exc])
            lines = str(exc).split("\n")
            assert len(lines) == len(errors)
            assert all(line.startswith(str(path)) for line in lines)


@FUZZ
@given(st.one_of(st.text(), st.binary()))
def test_loader_survives_any_text(body) -> None:
    load_or_error(body)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "30s",
            "1h30m",
            "0s",
            "* * * * *",
            "Ticker",
            "Balance",
            "AddOrder",
            "UTC",
            "Mars/Olympus",
            "starter",
            "${X}",
        ]
    ),
)
keys = st.sampled_from([*TOP_KEYS, *KRAKEN_KEYS, *JOB_KEYS, "max", "decay", "pair", "t", "b"])
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(TOP_KEYS), trees, min_size=1))
def test_loader_survives_any_structure(tree) -> None:
    load_or_error(yaml.safe_dump(tree))


@FUZZ
@given(st.dictionaries(st.sampled_from(JOB_KEYS), trees, min_size=1))
def test_loader_survives_any_job(spec) -> None:
    load_or_error(
        yaml.safe_dump({"kraken": {"key": "k", "secret": "c2VjcmV0"}, "jobs": {"t": spec}})
    )


@FUZZ
@given(st.dictionaries(st.sampled_from(KRAKEN_KEYS), trees, min_size=1))
def test_loader_survives_any_kraken_settings(spec) -> None:
    load_or_error(
        yaml.safe_dump({"kraken": spec, "jobs": {"t": {"method": "Time", "every": "1s"}}})
    )


def test_loader_survives_deep_nesting_and_alias_bombs() -> None:
    load_or_error("jobs: " + "[" * 5000 + "]" * 5000)
    load_or_error("jobs:\n  t: " + "{a: " * 3000 + "1" + "}" * 3000)
    # Billion laughs inside params, which the loader walks: 9**11 leaves if anything expands them.
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 12)]
    bomb = "jobs:\n  t:\n    method: Time\n    every: 1s\n    params:\n"
    load_or_error(bomb + "".join(f"      {line}\n" for line in lines))


# -- answers from the exchange ---------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"error": [], "result": v}).encode()),
    json_values.map(lambda v: json.dumps({"error": v}).encode()),
    st.dictionaries(st.text(max_size=6), json_values, max_size=5).map(
        lambda v: json.dumps({"error": [], "result": v}).encode()
    ),
)


@pytest.fixture
def balance_service(tmp_path, fake, keypair, database_url):
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"database: {database_url}\nkraken:\n  url: {fake.url}\n  key: {keypair[0]}\n"
        f"  secret: {keypair[1]}\n  rate_limit: {{max: 100000, decay: 100000}}\n"
        "  max_response_mb: 1\njobs:\n  b: {method: Balance, every: 1h}\n"
    )
    service = Service(load(path), retry=RetryPolicy(max_attempts=1))
    yield service
    service.stop()


def stored(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text("SELECT status, error FROM runs ORDER BY id")))
    engine.dispose()
    return rows


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, status=st.sampled_from([200, 200, 200, 404, 500, 503, 520]))
def test_any_answer_becomes_a_row(balance_service, fake, body, status) -> None:
    fake.inject("raw", method="Balance", body=body, status=status)
    record = balance_service.execute(balance_service.config.jobs[0])
    assert record is not None and record.status in set(Status)
    if status != 200:
        assert record.status == "http_error"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "bad_response", "answer is nested too deeply"),
        (b'{"error": [], "result": {"ZUSD": "1\xff\xfe"}}', "bad_response", "answer is not JSON"),
        (b"\xff\xfe\x00{", "bad_response", "answer is not JSON"),
        (
            b'{"error": [], "result": "' + b"x" * (2 * 1024 * 1024) + b'"}',
            "bad_response",
            "answer larger than 1,048,576 bytes",
        ),
        (b'{"result": {"ZUSD": "1"}}', "bad_response", "not a Kraken envelope"),
        (b'{"error": [], "result": ["ZUSD", "1"]}', "bad_response", "not a mapping of assets"),
        (b'{"error": [], "result": {"ZUSD": 1.5}}', "bad_response", "is not a decimal string"),
        (b'{"error": [], "result": {"ZUSD": "twelve"}}', "bad_response", "is not a number"),
        (b'{"error": []}', "ok", None),
    ],
)
def test_hostile_answers(balance_service, fake, database_url, body, status, error) -> None:
    fake.inject("raw", method="Balance", body=body)
    record = balance_service.execute(balance_service.config.jobs[0])
    assert record is not None and record.status == status
    if error:
        assert error in record.error
    assert balance_service.execute(balance_service.config.jobs[0]).status == "ok"  # goes on
    assert balance_service.writer.flush(30)
    assert [r.status for r in stored(database_url)] == [status, "ok"]


def test_an_answer_the_database_cannot_hold_does_not_stall_the_others(
    balance_service, fake, database_url
) -> None:
    deep = {"error": [], "result": {"k": "v"}}
    inner: dict = deep["result"]
    for _ in range(700):  # decodes fine, but too deep for the JSON encoder to store
        inner["n"] = {}
        inner = inner["n"]
    nul = {"error": [], "result": {"note": "a\u0000b"}}  # PostgreSQL's JSONB refuses NUL
    for answer in (deep, nul):
        fake.inject("raw", method="Time", body=json.dumps(answer).encode())
    jobs = balance_service.config.jobs
    from dataclasses import replace

    time_job = replace(jobs[0], name="t", method="Time")
    for job in (time_job, time_job, jobs[0]):
        balance_service.execute(job)
    assert balance_service.writer.flush(30)
    rows = stored(database_url)
    assert len(rows) == 3 and rows[2].status == "ok"
    for row in rows[:2]:  # stored, as failures where the backend refused the answer
        assert row.status == "ok" or "the answer could not be stored" in row.error
    if database_url.startswith("postgresql"):
        assert rows[1].status == "bad_response" and "could not be stored" in rows[1].error
