"""The service verifies each account's ledger as it collects it, off the writer's thread.

:class:`Verifier` subscribes to :class:`~collector.events.BatchStored`: when a Ledgers run of an
account finishes a window (its cursor has no window left), the account is marked, and the
verifier's own thread runs :func:`collector.verify.advance` for it: the new entries and snapshots
only, from where the last pass left each asset. A break becomes a ``gaps`` row and a WARNING, and
every pass publishes :class:`~collector.events.LedgerVerified` (the metrics' source). At start,
every account is verified once, so a database collected by an earlier version is caught up.

The subscriber only marks the account and wakes the thread: the writer never waits on a check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from sqlalchemy import Engine

from . import defaults
from .events import BatchStored, Events, LedgerVerified, Reloaded
from .health import utcnow
from .jobfile import Job
from .verify import Scope, Stopped, advance, scopes

logger = logging.getLogger(__name__)


class Verifier:
    """Constructing one starts nothing; :meth:`start` does (and verifies every account once).

    :param retention: the job file's ``retention`` (a pruned ledger is not read from its start)
    """

    def __init__(
        self,
        engine: Engine,
        jobs: Iterable[Job],
        events: Events,
        *,
        retention: Mapping[str, float] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.events = events
        self.clock = clock
        self._retention = dict(retention or {})
        self._scopes = self._plan(jobs)
        self._dirty: set[str] = set()
        self._busy = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe = [
            events.subscribe(BatchStored, self._stored),
            events.subscribe(Reloaded, self._reloaded),
        ]

    def _plan(self, jobs: Iterable[Job]) -> dict[str, Scope]:
        return {s.account: s for s in scopes(jobs, self._retention) if s.ledger_jobs}

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            self._dirty |= set(self._scopes)
        self._thread = threading.Thread(target=self._loop, name="collector-verifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let a pass in progress finish for up to ``timeout`` seconds, then abandon it."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._thread is None:
            return
        with self._cond:
            self._dirty.clear()
            self._cond.notify_all()
            if timeout:
                self._cond.wait_for(lambda: not self._busy, timeout)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(5)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no account waits for a pass and none is running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._dirty and not self._busy, timeout)

    # -- subscribers: quick, in the publisher's thread ----------------------------------------

    def _stored(self, event: BatchStored) -> None:
        marked = set()
        for record in event.records:
            cursor = record.cursor
            # A finished window moved the ledger's horizon; the pages of one did not.
            if record.dataset == "ledger" and isinstance(cursor, dict) and not cursor.get("window"):
                marked.add(record.account or defaults.DEFAULT_ACCOUNT)
        if marked:
            with self._cond:
                self._dirty |= marked & set(self._scopes)
                self._cond.notify_all()

    def _reloaded(self, event: Reloaded) -> None:
        scopes_ = self._plan(event.jobs)
        with self._cond:
            self._scopes = scopes_
            self._dirty &= set(scopes_)

    # -- the thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stop.is_set())
                if self._stop.is_set():
                    return
                account = min(self._dirty)
                self._dirty.discard(account)
                scope = self._scopes.get(account)
                self._busy = True
            try:
                if scope is not None:
                    self._pass(scope)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _pass(self, scope: Scope) -> None:
        try:
            report = advance(self.engine, scope, self.clock(), self._stop)
        except Stopped:
            return
        except Exception as exc:  # the database is down: the next Ledgers run tries again
            logger.warning(
                "could not verify the ledger of account %s (%s: %s)",
                scope.account,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            return
        for finding in report.findings:
            logger.warning("ledger does not verify: %s; recorded in gaps", finding.line())
        self.events.publish(
            LedgerVerified(
                scope.account,
                report.verified_to,
                report.entries,
                tuple(f.line() for f in report.findings),
                report.recorded_breaks,
            )
        )
