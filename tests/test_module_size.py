"""No module over ~500 lines without a reason stated in its docstring (ARCHITECTURE.md's rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import collector

#: Past this many lines a module says why it is one module.
LINES = 520


def test_every_long_module_says_why_it_is_one() -> None:
    package = Path(collector.__file__).parent
    silent = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") <= LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Why one module" not in doc:
            silent.append(f"{path.relative_to(package)} ({text.count(chr(10))} lines)")
    assert not silent, (
        "modules over ~500 lines whose docstring does not say why they are one module "
        f"(split them, or add a 'Why one module of this length: ...' paragraph): {silent}"
    )
