"""ARCHITECTURE.md stays true: every event is named, every module has a row in the table, and
every module and ``module.name`` it names exists. Each failure says exactly which name to add or
correct, so a merge that adds a module is one row."""

from __future__ import annotations

import ast
import contextlib
import importlib
import re
from pathlib import Path

import collector

PACKAGE = Path(collector.__file__).parent
ROOT = PACKAGE.parent
DOC = ROOT / "ARCHITECTURE.md"
#: a name in backticks: `events.py`, `datasets/`, `schedule.RunExecutor`
TICKED = re.compile(r"`([^`\s]+)`")


def _table() -> dict[str, str]:
    """The module table's rows: each module named in a row's first cell, with that row."""
    named = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in TICKED.findall(first):
            named[name] = line
    return named


def _modules() -> list[str]:
    """collector's modules and packages, as the table names them (``x.py``, ``x/``)."""
    out = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    out += [f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    return sorted(out)


def test_every_event_class_is_named() -> None:
    tree = ast.parse((PACKAGE / "events.py").read_text())
    events = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any("dataclass" in ast.unparse(d) for d in node.decorator_list)
    ]
    assert len(events) >= 13
    text = set(TICKED.findall(DOC.read_text()))
    missing = [name for name in events if name not in text]
    assert not missing, f"ARCHITECTURE.md does not name these events of events.py: {missing}"


def test_every_module_has_a_row() -> None:
    rows = _table()
    missing = [name for name in _modules() if name not in rows]
    assert not missing, (
        f"collector/ modules with no row in ARCHITECTURE.md's table (add `name` to a row): "
        f"{missing}"
    )


def test_every_module_it_names_exists() -> None:
    modules = set(_modules())
    gone = [name for name in _table() if name not in modules]
    assert not gone, f"ARCHITECTURE.md's table names modules collector/ does not have: {gone}"
    # Elsewhere: a path (`tests/test_shape.py`, `migrations/versions/`) from the repository or
    # the package, and each `module.name` of a collector module (`cli._open_store`).
    wrong = []
    for token in TICKED.findall(DOC.read_text()):
        token = token.rstrip("(),.:;")
        if token.endswith((".py", "/")):
            if not ((ROOT / token).exists() or (PACKAGE / token).exists()):
                wrong.append(token)
            continue
        head, _, rest = token.partition(".")
        if not rest or (f"{head}.py" not in modules and f"{head}/" not in modules):
            continue
        target: object = importlib.import_module(f"collector.{head}")
        for part in re.split(r"\.", re.sub(r"\(.*", "", rest)):
            if not hasattr(target, part) and hasattr(target, "__path__"):  # a package's module
                with contextlib.suppress(ImportError):
                    importlib.import_module(f"{target.__name__}.{part}")  # type: ignore[attr-defined]
            if not hasattr(target, part):
                wrong.append(token)
                break
            target = getattr(target, part)
    assert not wrong, f"ARCHITECTURE.md names what does not exist: {wrong}"
