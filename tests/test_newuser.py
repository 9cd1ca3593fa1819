"""What a new user ran into: the package's name, error reasons, unset variables, relative paths,
NULL results, config errors inside a run, the offline example's first minute, cron jitter."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

import collector
from collector.cli import main

ROOT = Path(__file__).resolve().parent.parent

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
    files += sorted((ROOT / "collector").rglob("*.py")) + sorted((ROOT / "examples").rglob("*"))
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
