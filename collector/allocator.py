"""glibc's malloc arenas, capped for the service's many threads.

glibc gives a thread that finds the arenas busy one of its own (up to 8 a core), and each keeps
the memory its threads freed: with 16 run threads a 1,000-job service's RSS kept growing for
~120,000 runs (docs/benchmarks.md, "Soak"). The image sets ``MALLOC_ARENA_MAX=2``; this does the
same for a pip-installed ``collector run``, before its threads start.
"""

from __future__ import annotations

import logging
import os
import platform

from . import defaults

logger = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter for the most arenas (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = defaults.MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` for the threads started after this (the
    ``MALLOC_ARENA_MAX`` the image sets, for a pip-installed ``collector run``); returns whether
    it did. Not on another C library (musl, macOS: their allocators have no such arenas), nor when
    ``MALLOC_ARENA_MAX`` is set: the person who set it decided."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:  # an optional tweak: nothing here may stop the service (no libffi, no libc to read, ...)
        if platform.libc_ver()[0] != "glibc":
            return False
        import ctypes  # here: a Python built without libffi still runs the service

        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        done = mallopt(_M_ARENA_MAX, arenas) == 1
    except Exception as exc:  # see above: any failure leaves the arenas as they are
        logger.debug("malloc arenas left as they are (%s)", type(exc).__name__)
        return False
    if not done:
        logger.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return done
