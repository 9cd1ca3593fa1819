"""A signal's work done in a thread of its own: the handler only wakes it (a leaf).

A signal handler runs in the main thread between two bytecodes, wherever that thread is (inside a
lock, a database call, a log line): anything but setting an event there can deadlock. So the
handler sets one, and a daemon thread does the work. The thread lives through any exception of the
work (logged with ``failure``), for the next signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class SignalThread:
    """``work()`` in thread ``name`` each time ``signum`` arrives (several before it runs: once).

    :meth:`install` takes the signal at once, from the main thread (so that its default action,
    which ends the process for SIGHUP and SIGUSR1, never happens); the thread starts then, or at
    :meth:`start` when the work can't be done yet (a signal that came meanwhile is done then).
    :meth:`uninstall` puts the previous handler back and ends the thread.
    """

    def __init__(self, signum: int, work: Callable[[], object], *, name: str, failure: str) -> None:
        self.signum = signum
        self.work = work
        self.failure = failure
        self._wake = threading.Event()
        self._done = threading.Event()
        self._previous: Any = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def pending(self) -> bool:
        """Whether a signal came that the work has not taken yet."""
        return self._wake.is_set()

    def install(self, *, start: bool = True) -> None:
        self._previous = signal.signal(self.signum, self._on_signal)
        if start:
            self.start()

    def start(self) -> None:
        if not self._thread.is_alive() and not self._done.is_set():
            self._thread.start()

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
        self._done.set()
        self._wake.set()

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                self.work()
            except Exception:  # the thread must live for the next signal, whatever happened
                logger.exception("%s", self.failure)
