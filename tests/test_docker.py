"""The Dockerfile, replayed here (these machines have no Docker engine): its COPY and RUN steps
build a fresh virtualenv from the repo's files, its ENV steps set the environment (with /data and
/config moved to temporary folders), then its ENTRYPOINT and CMD run the service against the fake
and stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import create_engine, text

from collector.jobfile import load

from .helpers import running, sigterm, wait_for

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    steps = []
    for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def test_dockerfile_is_plain_slim_and_unprivileged() -> None:
    steps = dict(instructions())
    # An exact tag (a digest may follow), never a moving one such as python:3.11-slim.
    assert re.fullmatch(r"python:3\.1\d\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", steps["FROM"])
    assert steps["USER"] == "collector"
    assert json.loads(steps["VOLUME"]) == ["/data"]
    assert json.loads(steps["ENTRYPOINT"]) == ["collector"]
    assert json.loads(steps["CMD"]) == [
        "run",
        "--metrics-listen",
        "0.0.0.0:9108",
        "/config/jobs.yaml",
    ]
    assert steps["EXPOSE"] == "9108"
    assert steps["STOPSIGNAL"] == "SIGTERM"
    assert environment() == {
        "COLLECTOR_DATA_DIR": "/data",
        "COLLECTOR_STATE_DIR": "/data/state",
        "COLLECTOR_SPOOL": "/data/collector.spool",
        "MALLOC_ARENA_MAX": "2",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(moves: dict[str, str] | None = None) -> dict[str, str]:
    """The ENV steps' variables, with folder prefixes moved as ``moves`` says."""
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                for old, new in (moves or {}).items():
                    if value == old or value.startswith(old + "/"):
                        value = new + value[len(old) :]
                env[name] = value
    return env


def test_replay_install_and_start_steps(tmp_path: Path, fake, keypair) -> None:
    src, data, config = tmp_path / "src", tmp_path / "data", tmp_path / "config"
    for d in (src, data, config):
        d.mkdir()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    env = dict(os.environ, PATH=f"{env_dir / 'bin'}:{os.environ['PATH']}")
    env.pop("COLLECTOR_DATABASE_URL", None)
    env.pop("PYTHONPATH", None)
    env.update(environment({"/data": str(data), "/config": str(config)}))
    for word, rest in instructions():
        if word == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                target = src / dest if dest not in ("./", ".") else src
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target)
                else:
                    shutil.copy(ROOT / source, src)
        elif word == "RUN" and "pip install" in rest:
            subprocess.run(
                rest, shell=True, cwd=src, env=env, check=True, capture_output=True, timeout=600
            )
    entry = [str(env_dir / "bin" / "collector")]
    (config / "jobs.yaml").write_text(
        f"database: sqlite:///collector.db\nkraken:\n  url: {fake.url}\n  key: {keypair[0]}\n"
        f"  secret: {keypair[1]}\njobs:\n  time: {{method: Time, every: 0.2s}}\n"
        "  balance: {method: Balance, every: 0.5s}\n"
    )
    steps = dict(instructions())
    port = str(free_port())  # the image's 9108, moved so tests can run side by side
    cmd = [
        a.replace("/config/", f"{config}/").replace("0.0.0.0:9108", f"127.0.0.1:{port}")
        for a in json.loads(steps["CMD"])
    ]
    health = json.loads(steps["HEALTHCHECK"].partition(" CMD ")[2])
    health = [
        str(env_dir / "bin" / "python"),
        *(a.replace(":9108/", f":{port}/") for a in health[1:]),
    ]
    with running(entry + cmd, cwd=data, env=env) as proc:
        wait_for(lambda: fake.calls["Balance"] >= 2)
        # The HEALTHCHECK's command, as Docker would run it in the container.
        checked = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        output = sigterm(proc)
    assert checked.returncode == 0, checked.stderr
    gone = subprocess.run(health, env=env, capture_output=True, timeout=30)
    assert gone.returncode == 1  # nothing answers: unhealthy
    assert proc.returncode == 0, output
    # It ran from the installed package (migrations included), not from this checkout.
    check = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import collector.store as s; print(s.migrations_dir())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(env_dir) in check.stdout
    # The relative SQLite file went to the data volume, nothing beside the read-only job file.
    assert [p.name for p in config.iterdir()] == ["jobs.yaml"]
    engine = create_engine(f"sqlite:///{data / 'collector.db'}")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT method, count(*) FROM runs GROUP BY method")).all()
    engine.dispose()
    # Every call is a row, but the start-up probe (one Time call that only goes to the log); the
    # service's own reference data (Assets, AssetPairs) came at start.
    assert dict(stored) == {
        "Balance": fake.calls["Balance"],
        "Time": fake.calls["Time"] - 1,
        "Assets": 1,
        "AssetPairs": 1,
    }


def _as_image_user() -> list[str]:
    return ["setpriv", "--reuid", str(IMAGE_UID), "--regid", str(IMAGE_UID), "--clear-groups"]


IMAGE_UID = 10001  # the Dockerfile's useradd --uid


def test_a_mounted_key_file_of_the_host_user_is_one_line_saying_what_to_do(keypair) -> None:
    """`docker run -v "$PWD/kraken.key:/config/kraken.key:ro"`: the file keeps the host user's
    owner and `chmod 600`, and the image's user cannot read it. The image's command, run as its
    uid, says so in one line with the fix; once the key is given to that uid, it starts."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as the image's uid 10001")
    assert any(f"--uid {IMAGE_UID}" in rest for word, rest in instructions() if word == "RUN")
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # the image's user must reach /config and /data
        data, config = Path(top, "data"), Path(top, "config")
        data.mkdir()
        config.mkdir(mode=0o755)
        os.chown(data, IMAGE_UID, IMAGE_UID)
        key = config / "kraken.key"
        key.write_text(f"{keypair[0]}\n{keypair[1]}\n")
        key.chmod(0o600)  # owned by root here: the host user there
        (config / "jobs.yaml").write_text(
            "database: sqlite:///collector.db\nkraken:\n  url: http://127.0.0.1:9\n"
            "  key_file: kraken.key\njobs:\n  balance: {method: Balance, every: 1h}\n"
        )
        (config / "jobs.yaml").chmod(0o644)
        env = dict(os.environ)
        env.pop("COLLECTOR_DATABASE_URL", None)
        env.update(environment({"/data": str(data), "/config": str(config)}))
        entry = [str(ROOT / ".venv" / "bin" / json.loads(dict(instructions())["ENTRYPOINT"])[0])]
        if not Path(entry[0]).exists():
            entry = [shutil.which("collector") or "collector"]
        cmd = [a.replace("/config/", f"{config}/") for a in json.loads(dict(instructions())["CMD"])]
        cmd = [a.replace("0.0.0.0:9108", "127.0.0.1:0") for a in cmd]
        refused = subprocess.run(
            _as_image_user() + entry + cmd,
            cwd=data,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2
        assert refused.stderr.splitlines() == [
            f"error: {config}/jobs.yaml:4: kraken.key_file: cannot read key file '{key}': "
            f"Permission denied; it belongs to uid 0 (mode 0600) and collector runs as uid "
            f"{IMAGE_UID}: give it to uid {IMAGE_UID} (chown {IMAGE_UID} kraken.key; on the host "
            "for a Docker mount) or pass the key as ${KRAKEN_API_KEY} and ${KRAKEN_API_SECRET}"
        ]
        # The README's way: the key file given to the image's user (still 0600, no warning).
        os.chown(key, IMAGE_UID, IMAGE_UID)
        checked = subprocess.run(
            [*_as_image_user(), *entry, "check", f"{config}/jobs.yaml"],
            cwd=data,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        assert "warning" not in checked.stderr
        assert keypair[1] not in refused.stderr + checked.stdout + checked.stderr


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_image_installs_the_lock_and_nothing_resolved_at_build_time() -> None:
    runs = [
        " ".join(rest.split()) for word, rest in instructions() if word == "RUN" and "pip" in rest
    ]
    assert runs == [
        "pip install --no-cache-dir -r requirements.lock"
        " && pip install --no-cache-dir --no-deps . && pip check"
    ]
    copied = [shlex.split(rest) for word, rest in instructions() if word == "COPY"]
    assert "requirements.lock" in copied[0]


def test_the_lock_pins_exactly_the_runtime_dependencies() -> None:
    """Every runtime dependency of pyproject (and the postgres extra the image installs), at a
    version its specifier allows, and everything those need in turn (this venv's metadata, for
    Linux on the image's Python): nothing left for pip to pick next month, nothing extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["postgres"]]
    pins = _locked()
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req}: {pins[name]}"
    needed: set[str] = set()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(r, tuple(sorted(r.extras))) for r in wanted]
    target = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        needed.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: the image's pip check judges its needs
        # The lock is this venv's: a version that drifted is a lock to regenerate.
        assert dist.version == pins.get(name, dist.version), f"{name}: venv has {dist.version}"
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate({**target, "extra": extra}) for extra in (extras or ("",))
            ):
                todo.append((sub, tuple(sorted(sub.extras))))
    assert set(pins) == needed, (
        f"missing: {sorted(needed - set(pins))}, not needed: {sorted(set(pins) - needed)}"
    )


def test_compose_gives_the_key_as_a_secret_file_the_job_file_names(tmp_path: Path, keypair) -> None:
    """examples/compose.yaml mounts the key as /run/secrets/main.key, and the job file it runs
    (replicas.yaml) reads its account's key from there; no key in the environment."""
    compose = yaml.safe_load((ROOT / "examples" / "compose.yaml").read_text())
    service = compose["services"]["collector"]
    assert service["secrets"] == ["main.key"]
    assert compose["secrets"]["main.key"] == {"file": "./main.key"}
    assert not any("KEY" in name or "SECRET" in name for name in service["environment"])
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"] if v.startswith("./"))
    job_file = ROOT / "examples" / mounts["/config/jobs.yaml"].removeprefix("./")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "main.key").write_text(f"{keypair[0]}\n{keypair[1]}\n")
    (secrets / "main.key").chmod(0o600)
    moved = tmp_path / "jobs.yaml"
    moved.write_text(job_file.read_text().replace("/run/secrets/", f"{secrets}/"))
    assert "/run/secrets/main.key" in job_file.read_text()
    env = {"COLLECTOR_DATABASE_URL": "postgresql+psycopg://collector:collector@db/kraken"}
    config = load(moved, environ=env)
    assert config.account("main").key == keypair[0]
    assert config.warnings == ()


def test_the_readmes_docker_lines_mount_the_key_where_live_yaml_names_it() -> None:
    """The README's `docker run` mounts its live.yaml as the image's job file and the key file
    beside it, where live.yaml's `key_file:` resolves in the container; its `chown` gives the key
    to the image's user (the uid the test above runs as)."""
    readme = (ROOT / "README.md").read_text()
    docker = readme[readme.index("### Docker") :].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#\s.*$", "", line) for line in docker.splitlines()]
    (chown,) = [line for line in lines if "chown" in line]
    assert shlex.split(chown) == ["sudo", "chown", str(IMAGE_UID), "kraken.key"]
    (run,) = [line for line in lines if line.startswith("docker run")]
    words = shlex.split(run.replace('"$PWD/', '"./'))
    mounts = dict(words[i + 1].split(":")[:2][::-1] for i, word in enumerate(words) if word == "-v")
    assert words[-1] == "collector" and mounts.get("/data") == "collector-data"
    live_text = readme[readme.index("## Going live") :]
    (live,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", live_text, re.DOTALL) if "# live.yaml" in b
    ]
    assert mounts[json.loads(dict(instructions())["CMD"])[-1]] == "./live.yaml"
    key_file = yaml.safe_load(live)["kraken"]["key_file"]
    assert mounts[f"/config/{key_file}"] == f"./{key_file}"
