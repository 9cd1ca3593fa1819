"""The ``collector`` console script (``collector.cli:main``) and ``python -m collector.cli``.

The commands live in :mod:`collector.commands`, one module each; this name stays because the
installed script, the container image and the tests' ``python -m collector.cli`` start here.
"""

from __future__ import annotations

from .commands import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
