"""The job file's declared keys (``jobfile.model.KEYS``) are the one source: the README's table of
keys names exactly them, and ``collector schema`` prints a JSON Schema of them that every example
job file fits and that refuses an unknown key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from collector import defaults
from collector.cli import main
from collector.jobfile import RETENTION_KEYS, ConfigError, json_schema, load
from collector.jobfile.model import CHANNEL_KEYS, KEYS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: What holds other keys: the README's table names what they hold.
HOLDERS = ("section", "names")


def _readme_keys() -> set[str]:
    """The keys the README's table names, shorthands written out: ``jobs.NAME.timezone``,
    ``jitter`` (the previous key's section), ``.max_price_age``, ``retention.TABLE`` (each dataset
    table), and ``accounts.NAME``'s keys, named in its meaning."""
    text = README.read_text()
    table = text[text.index("| key | meaning |") :].split("\n\n", 1)[0]
    found: set[str] = set()
    for row in table.splitlines()[2:]:
        cells = row.split(" | ")
        names = re.findall(r"`([^`]+)`", cells[0])
        section = ""
        for name in names:
            if name.startswith("."):
                name = section + name[1:]
            elif "." not in name:
                name = section + name
            section = name.rpartition(".")[0] + "." if "." in name else ""
            if name == "retention.TABLE":
                found.update(f"retention.{t}" for t in RETENTION_KEYS if t != "runs")
            elif name == "accounts.NAME":
                meaning = cells[1].split(":", 1)[0]
                found.update(f"accounts.NAME.{k}" for k in re.findall(r"`(\w+)`", meaning))
            else:
                found.add(name)
    return found


def test_the_readmes_table_of_keys_names_every_declared_key_and_no_other() -> None:
    declared = {key.path for key in KEYS if key.kind not in HOLDERS}
    readme = _readme_keys()
    assert sorted(declared - readme) == [], "declared, not in the README's table"
    assert sorted(readme - declared) == [], "in the README's table, not declared"


# -- the JSON Schema --------------------------------------------------------------------------------


def _problems(schema: dict[str, Any], value: Any, at: str = "") -> list[str]:
    """What ``value`` breaks in ``schema``: the part of draft 2020-12 that ``json_schema()``
    uses (jsonschema is not a dependency), enough to judge a job file."""
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        kinds = {
            "object": dict,
            "array": list,
            "string": (str, __import__("datetime").date),  # YAML's dates are text in JSON
            "boolean": bool,
            "null": type(None),
            "integer": int,
            "number": (int, float),
        }
        wanted = [types] if isinstance(types, str) else types
        ok = any(
            isinstance(value, kinds[t])
            and not (t in ("integer", "number") and value is True)
            and not (t in ("integer", "number") and value is False)
            for t in wanted
        )
        if not ok:
            return [f"{at}: not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: not one of the enum")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{at}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at}: above {schema['maximum']}")
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at}: below {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{at}: not above {schema['exclusiveMinimum']}")
    if "anyOf" in schema and all(_problems(s, value, at) for s in schema["anyOf"]):
        out.append(f"{at}: fits none of anyOf")
    if "oneOf" in schema and sum(not _problems(s, value, at) for s in schema["oneOf"]) != 1:
        out.append(f"{at}: fits not exactly one of oneOf")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            out.append(f"{at}: too many items")
        for i, item in enumerate(value):
            out += _problems(schema.get("items", {}), item, f"{at}[{i}]")
    if isinstance(value, dict):
        out += [f"{at}: needs {k}" for k in schema.get("required", ()) if k not in value]
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1e9):
            out.append(f"{at}: wrong number of keys")
        for key, item in value.items():
            where = f"{at}.{key}" if at else str(key)
            out += _problems(schema.get("propertyNames", {}), key, where)
            if key in schema.get("properties", {}):
                out += _problems(schema["properties"][key], item, where)
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}: unknown key")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += _problems(schema["additionalProperties"], item, where)
    return out


def _example_job_files() -> dict[str, Any]:
    """Every job file in the repository: jobs.yaml, examples/*.yaml with jobs, the README's."""
    found = {}
    for path in [ROOT / "jobs.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "jobs" in data:
            found[path.name] = data
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    for i, block in enumerate(blocks):
        found[f"README block {i + 1}"] = yaml.safe_load(block)
    return found


def test_collector_schema_prints_the_declared_keys_with_descriptions_and_bounds() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["anyOf"] == [{"required": ["jobs"]}, {"required": ["streams"]}]
    assert schema["additionalProperties"] is False
    for key in KEYS:
        node = schema
        for part in key.path.split("."):
            node = node["additionalProperties"] if part == "NAME" else node["properties"][part]
        assert node["description"], key.path
    job = schema["properties"]["jobs"]["additionalProperties"]
    every = job["properties"]["every"]
    assert every["anyOf"][0]["minimum"] == defaults.EVERY_MIN
    assert every["anyOf"][0]["maximum"] == defaults.EVERY_MAX
    assert every["description"] == (
        "how often; exactly one of every and cron; 30s, 5m, 1h, 1d, 1h30m or seconds, "
        "between 0.01s and 366d"
    )
    runs = schema["properties"]["spool"]["properties"]["max_runs"]
    assert (runs["minimum"], runs["maximum"]) == (1, defaults.SPOOL_MAX_RUNS_MAX)
    assert "Ticker" in job["properties"]["method"]["enum"]
    assert "AddOrder" not in job["properties"]["method"]["enum"]


def test_every_example_job_file_fits_the_schema() -> None:
    schema = json_schema()
    examples = _example_job_files()
    assert {"jobs.yaml", "offline.yaml", "replicas.yaml", "README block 4"} <= set(examples)
    for name, data in examples.items():
        assert _problems(schema, data) == [], name


def test_the_schema_refuses_what_check_refuses(tmp_path: Path) -> None:
    """An unknown key, a missing schedule, a bound passed: refused by the schema as by `load`."""
    schema = json_schema()
    cases = {
        "databse: x.db\njobs: {t: {method: Time, every: 1m}}\n": "databse: unknown key",
        "jobs: {t: {method: Time, evry: 1m}}\n": "jobs.t.evry: unknown key",
        "kraken: {tmeout: 5}\njobs: {t: {method: Time, every: 1m}}\n": "kraken.tmeout: unknown key",
        "jobs: {t: {method: Time}}\n": "jobs.t: fits not exactly one of oneOf",
        "spool: {max_runs: 0}\njobs: {t: {method: Time, every: 1m}}\n": "spool.max_runs: below 1",
        "jobs: {t: {method: AddOrder, every: 1m}}\n": "jobs.t.method: not one of the enum",
    }
    for text, problem in cases.items():
        assert problem in _problems(schema, yaml.safe_load(text)), text
        path = tmp_path / "jobs.yaml"
        path.write_text(text)
        try:
            load(path, environ={})
        except ConfigError:
            pass
        else:
            raise AssertionError(f"load took {text!r}")


# -- the declarations are what load enforces --------------------------------------------------------

#: The kinds a declaration alone checks (``report.Base.declared``), and a value each refuses.
WRONG = {"boolean": "maybe", "choice": "zz", "integer": 1.5, "number": "many"}


def _named(path: str) -> str:
    """``path`` with the names ``_file_with`` gives its job, account and stream."""
    return (
        path.replace("jobs.NAME", "jobs.t")
        .replace("accounts.NAME", "accounts.a")
        .replace("streams.NAME", "streams.s")
    )


def _file_with(path: str, value: Any) -> dict[str, Any]:
    """A small job file that is fine but for ``value`` at the declared ``path``."""
    data: dict[str, Any] = {"jobs": {"t": {"method": "Time", "every": "1d"}}}
    if path.startswith("accounts."):
        data["accounts"] = {"a": {"key": "K", "secret": "S"}}
    if path.startswith("streams."):  # a stream of the channel the key applies to
        channel = CHANNEL_KEYS.get(path.rpartition(".")[2], "trade")
        data["streams"] = {"s": {"channel": channel, "pairs": ["XBTUSD"]}}
    node = data
    parts = _named(path).split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def _refusal(tmp_path: Path, data: dict[str, Any]) -> str | None:
    file = tmp_path / "jobs.yaml"
    file.write_text(yaml.safe_dump(data))
    try:
        load(file, environ={}, keys=False)
    except ConfigError as exc:
        return str(exc)
    return None


def test_each_declaration_is_what_load_enforces(tmp_path: Path) -> None:
    """Each duration, number, boolean and choice is refused past its declared bounds, by its
    path, and taken at them: the schema's bounds and the checks' are one."""
    checked = 0
    for key in KEYS:
        where = _named(key.path)
        if key.kind == "duration":
            good, bad = [key.high], [(key.high or 0) * 1.5, "3x"]
            if key.low:
                good.append(key.low)
                bad.append(key.low / 2)
        elif key.kind in ("integer", "number"):
            good, bad = [key.high, key.low], [(key.high or 0) + 1, WRONG[key.kind]]
        elif key.kind in WRONG:
            good, bad = [key.choices[0] if key.choices else True], [WRONG[key.kind]]
        else:
            continue
        for value in good:
            assert _refusal(tmp_path, _file_with(key.path, value)) is None, (key.path, value)
        for value in bad:
            said = _refusal(tmp_path, _file_with(key.path, value))
            assert said is not None and "jobs.yaml:" in said and f" {where}: " in said, (
                key.path,
                value,
                said,
            )
        checked += 1
    assert checked >= 20
