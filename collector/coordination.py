"""One active collector per account, and one for the public jobs, across processes and machines.

Kraken's nonce rule makes an API key one sender's. So before a process sends anything private for
an account, it takes that account's **lease**; a process that can't take it **stands by**, logs
who holds it, and keeps trying. The public jobs have a lease of their own (``PUBLIC``), so that
exactly one process collects them too: their tables stay free of duplicate snapshots.

* **PostgreSQL**: a lease *row* per account in ``account_leases`` with an expiry kept by the
  database's clock (``now()``), renewed every fifth of ``failover``. A row, not an advisory lock
  on a dedicated connection: it works the same behind PgBouncer's transaction pooling, survives a
  connection that is cut and re-made, and holds the account's nonce mark where the next holder
  reads it. When the holder dies (kill -9, the host lost, its database unreachable), the lease
  runs out and a standby takes over within ``failover``.
* **SQLite** is one machine's database: an exclusive ``flock`` on a file beside the database,
  which the kernel drops when the holder dies.

**Fencing.** A holder may send only while its lease is surely still its own: until the moment
it *sent* its last successful renewal plus ``failover`` less a safety margin, so it stops before
the database's clock could let anyone else in. A failed renewal (the connection cut, the database
gone) stops it at once. Before issuing a nonce past its saved mark, the holder writes the mark into
its lease row (refused if the row is no longer its own), so the next holder's first nonce is above
every nonce the old one may have sent.

**The key's rate counter** rides in the same row: the holder writes its counter's level with each
renewal and at its release, so the next holder (on another machine, which does not share the
key's state file) starts from it: from the level left at a clean release, decayed since; after a
holder died, from a full counter as of the last moment its fence let it send (its last calls may
have filled it).

Why one module of this length: two backends (PostgreSQL lease rows, ``flock`` beside SQLite) of
one promise, one active collector per account, with the fence every send checks; the caller
sees one interface.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from . import statefile
from .errors import ConfigError, NotPermitted
from .events import LeaseLost, LeaseTaken
from .schema import account_leases as leases

logger = logging.getLogger(__name__)

#: The lease of the public jobs (no account can have this name: names are letters, digits, _ . -).
PUBLIC = "(public)"


def leases_needed(config: Any) -> set[str]:
    """The leases a job file (:class:`collector.jobfile.Config`) needs: each account a job uses,
    and the public one for a public job, the reference jobs (``reference``, all public) or a
    stream (one collector records them: the public lease's holder)."""
    needed = {job.account or PUBLIC for job in config.jobs}
    if config.reference or config.streams:
        needed.add(PUBLIC)
    return needed


#: A key's rate counter as its holder knows it now: ``(level, refusals in a row)``.
CounterReading = Callable[[], tuple[float, int] | None]


@dataclass(frozen=True)
class LeaseKey:
    """What an account's lease knows of its key, from the key's owner
    (:class:`collector.session.KeySession`): given whole when the lease is made."""

    #: the key's nonce unit, and the highest counter level it can have
    #: (:func:`collector.ratelimit.ceiling`): what the row holds is bounded by them
    #: (:mod:`collector.statefile`'s rules), as the key's state files are
    nonce_unit: str
    level_ceiling: float
    #: the key's counter now, written with each renewal and at the release (PostgreSQL)
    counter: CounterReading
    #: called with the last holder's nonce mark when this process takes the lease, before
    #: ``permit()`` turns true (the owner raises its nonce floor and takes in :attr:`Lease.inherited`)
    on_taken: Callable[[int], None]


@dataclass(frozen=True)
class Inherited:
    """The key's counter as the lease's last holder left it in the row."""

    level: float
    refusals: int
    #: seconds since it was written (by the database's clock); for a holder that died, since the
    #: last moment its fence let it send (its calls after its last renewal are unknown)
    ago: float
    #: written at a clean release (exact), or at a renewal of a holder since gone
    released: bool


class Lease:
    """One account's lease, as one process sees it. ``permit()`` says whether it may send now."""

    def __init__(
        self,
        name: str,
        failover: float,
        key: LeaseKey | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        #: the account key's unit, ceiling, counter and owner (None: the public jobs' lease)
        self.key = key
        self.failover = failover
        self.clock = clock
        self.valid_until = 0.0  # monotonic; 0: not held
        self.standby_logged: str | None = None
        #: who held it when this process last tried to take it ("host pid N since ...")
        self.holder: str | None = None
        #: held when the database was last reached, and not reached since (an outage)
        self.unreachable = False
        #: the counter the last holder left, read when this process took the lease (else None)
        self.inherited: Inherited | None = None
        self.nonce_unit = key.nonce_unit if key is not None else "ms"
        self.level_ceiling = key.level_ceiling if key is not None else 0.0

    def counter(self) -> tuple[float, int] | None:
        """The key's counter now (None for the public jobs' lease: no key, no counter)."""
        return self.key.counter() if self.key is not None else None

    #: whether a lease held by another process is surely held by a live one (then it is not
    #: worth waiting for); a row's holder may be dead, its lease running out
    holder_alive = False

    def permit(self) -> bool:
        if self.name == PUBLIC and self.unreachable:
            # Public calls carry no nonce: while the database is down (and so nobody can take the
            # lease over) they go on, and their runs wait in the spool. Fencing is for keys.
            return True
        return self.clock() < self.valid_until

    # Subclasses: try_take() -> (taken, holder description, previous nonce mark),
    # renew() -> bool, save_mark(mark), release(last_nonce).
    def try_take(self) -> tuple[bool, str, int]:
        raise NotImplementedError

    def renew(self) -> bool:
        raise NotImplementedError

    def save_mark(self, mark: int) -> None:
        """Record, before using them, that nonces up to ``mark`` may be used.

        :raises NotPermitted: the lease is no longer this process's
        """

    def release(self, last_nonce: int | None) -> None:
        raise NotImplementedError


class PgLease(Lease):
    """A lease row in PostgreSQL (``account_leases``), timed by the database's clock."""

    def __init__(
        self, name: str, engine: Engine, failover: float, holder: str, key: LeaseKey | None = None
    ) -> None:
        super().__init__(name, failover, key)
        self.engine = engine
        self.holder = holder

    def _valid_from(self, sent: float) -> None:
        # The row expires failover after the database ran the statement, which is after `sent`;
        # stopping a third of failover earlier leaves room for a slow clock and a slow answer.
        self.valid_until = sent + self.failover * 2 / 3

    def try_take(self) -> tuple[bool, str, int]:
        sent = self.clock()
        with self.engine.begin() as conn:
            # What the last holder left, before the take below overwrites the row's times.
            old = conn.execute(
                text(
                    "SELECT counter_level, counter_refusals, counter_at >= expires_at AS released, "
                    "extract(epoch FROM now() - counter_at) AS ago FROM account_leases "
                    "WHERE account = :account AND counter_at IS NOT NULL FOR UPDATE"
                ),
                {"account": self.name},
            ).one_or_none()
            taken = conn.execute(
                text(
                    "INSERT INTO account_leases AS l (account, holder, host, pid, since, "
                    "expires_at, nonce_mark) VALUES (:account, :holder, :host, :pid, now(), "
                    "now() + make_interval(secs => :ttl), 0) "
                    "ON CONFLICT (account) DO UPDATE SET holder = excluded.holder, "
                    "host = excluded.host, pid = excluded.pid, since = now(), "
                    "expires_at = excluded.expires_at "
                    "WHERE l.expires_at < now() OR l.holder = excluded.holder "
                    "RETURNING nonce_mark"
                ),
                {
                    "account": self.name,
                    "holder": self.holder,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "ttl": self.failover,
                },
            ).scalar()
            if taken is not None:
                self._valid_from(sent)
                self.inherited = None
                if old is not None and old.counter_level is not None:
                    self.inherited = self._inherited(old)
                mark = statefile.floor(
                    taken,
                    self.nonce_unit,
                    self._where(),
                    time.time_ns(),
                    "refused (and reset in the row): nonces start from the clock",
                )
                if mark is None:
                    # The row is ours now: a mark left there would be refused again by every
                    # holder, and `greatest()` in save_mark would never bring it down.
                    conn.execute(
                        leases.update().where(leases.c.account == self.name).values(nonce_mark=0)
                    )
                    mark = 0
                return True, "", mark
            row = conn.execute(
                select(leases.c.host, leases.c.pid, leases.c.since).where(
                    leases.c.account == self.name
                )
            ).one_or_none()
        holder = "?" if row is None else f"{row.host} pid {row.pid} since {_iso(row.since)}"
        return False, holder, 0

    def _inherited(self, old: Any) -> Inherited:
        """The counter of the row, bounded: one no collector writes (over the ceiling, NaN,
        negative) is a full counter as of now, as that of a holder that died."""
        released = bool(old.released)
        # A holder that died sent, at most, until its fence closed: failover * 2/3 after its
        # last renewal (see _valid_from).
        fenced = 0.0 if released else self.failover * 2 / 3
        level = statefile.counter_level(
            float(old.counter_level) if old.counter_level is not None else None,
            self.level_ceiling,
        )
        refusals = old.counter_refusals or 0
        ago = float(old.ago) if old.ago is not None else None
        if level is None or not 0 <= refusals <= 10**6 or ago is None or ago != ago:
            statefile.warn(
                self._where(),
                f"the counter (level {statefile.show(old.counter_level)}, refusals "
                f"{statefile.show(old.counter_refusals)}) is not one a collector writes",
                "taken as full as of now",
            )
            return Inherited(self.level_ceiling, 0, 0.0, released=False)
        return Inherited(level, int(refusals), max(0.0, ago - fenced), released)

    def _where(self) -> str:
        return f"the lease row of {_label(self.name)} (account_leases)"

    def renew(self) -> bool:
        sent = self.clock()
        level, refusals = self.counter() or (None, None)
        with self.engine.begin() as conn:
            done = conn.execute(
                text(
                    "UPDATE account_leases SET expires_at = now() + make_interval(secs => :ttl), "
                    "counter_level = :level, counter_refusals = :refusals, "
                    "counter_at = CASE WHEN CAST(:level AS float) IS NULL THEN NULL ELSE now() END "
                    "WHERE account = :account AND holder = :holder AND expires_at > now()"
                ),
                {
                    "account": self.name,
                    "holder": self.holder,
                    "ttl": self.failover,
                    "level": level,
                    "refusals": refusals,
                },
            ).rowcount
        if done == 1:
            self._valid_from(sent)
            return True
        self.valid_until = 0.0
        return False

    def save_mark(self, mark: int) -> None:
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    text(
                        "UPDATE account_leases SET nonce_mark = greatest(nonce_mark, :mark) "
                        "WHERE account = :account AND holder = :holder AND expires_at > now()"
                    ),
                    {"mark": mark, "account": self.name, "holder": self.holder},
                ).rowcount
        except SQLAlchemyError as exc:
            self.valid_until = 0.0
            reason = str(exc).splitlines()[0][:200]
            raise NotPermitted(
                f"account {self.name}: cannot record the nonce mark ({reason})"
            ) from None
        if done != 1:
            self.valid_until = 0.0
            raise NotPermitted(f"account {self.name}: the lease is no longer this process's")

    def release(self, last_nonce: int | None) -> None:
        self.valid_until = 0.0
        # A clean stop knows the last nonce it used: the next holder starts right above it.
        mark = "nonce_mark" if last_nonce is None else ":last"
        # And the counter as it is now, exact: the next holder starts from it, decayed since.
        level, refusals = self.counter() or (None, None)
        with contextlib.suppress(SQLAlchemyError), self.engine.begin() as conn:
            conn.execute(
                text(
                    f"UPDATE account_leases SET expires_at = now(), nonce_mark = {mark}, "
                    "counter_level = :level, counter_refusals = :refusals, "
                    "counter_at = CASE WHEN CAST(:level AS float) IS NULL THEN NULL ELSE now() END "
                    "WHERE account = :account AND holder = :holder"
                ),
                {
                    "account": self.name,
                    "holder": self.holder,
                    "last": last_nonce,
                    "level": level,
                    "refusals": refusals,
                },
            )


class FileLease(Lease):
    """An exclusive ``flock`` on a file beside a SQLite database: one machine, one holder."""

    #: the kernel drops the lock when its holder dies: a lock held is a holder alive
    holder_alive = True

    def __init__(self, name: str, path: Path, failover: float, key: LeaseKey | None = None) -> None:
        super().__init__(name, failover, key)
        self.path = path
        self._fd: int | None = None

    def try_take(self) -> tuple[bool, str, int]:
        # Never through a link, never a file not ours or with another name (a planted link to
        # the database would be truncated): statefile says which, in one line.
        fd, _ = statefile.open_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "?"
            os.close(fd)
            return False, holder, 0
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        statefile.write_fd(fd, f"{socket.gethostname()} pid {os.getpid()} since {stamp}\n".encode())
        self._fd = fd
        self.valid_until = float("inf")  # the kernel holds it for as long as we live
        return True, "", 0

    def renew(self) -> bool:
        return self._fd is not None

    def release(self, last_nonce: int | None) -> None:
        self.valid_until = 0.0
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None


class Leases:
    """The leases a process needs, and the thread that takes, renews and gives them back.

    Each lease is made by :meth:`add` (an account's by its key's session, which hands in a
    :class:`LeaseKey`) before :meth:`start`. When one is taken, its key's owner hears first
    (``LeaseKey.on_taken``: the nonce floor, the counter), then ``publish`` gets a
    :class:`~collector.events.LeaseTaken` (the service re-reads cursors and runs the account's
    jobs), all before ``permit`` turns true; one lost is a :class:`~collector.events.LeaseLost`.

    :param make: makes the lease of a name (the kind the database needs)
    :param publish: where the events go
    """

    def __init__(
        self,
        make: Callable[[str, LeaseKey | None], Lease],
        failover: float,
        publish: Callable[[object], None],
    ) -> None:
        self.leases: dict[str, Lease] = {}
        self._make = make
        self.publish = publish
        self.interval = failover / 5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collector-leases", daemon=True)

    @classmethod
    def for_database(
        cls,
        engine: Engine,
        database_path: str | None,
        failover: float,
        publish: Callable[[object], None],
    ) -> Leases:
        """Row leases on PostgreSQL, file locks beside a SQLite file, none for in-memory SQLite."""
        make: Callable[[str, LeaseKey | None], Lease]
        if engine.dialect.name == "postgresql":
            holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

            def make(n: str, key: LeaseKey | None) -> Lease:
                return PgLease(n, engine, failover, holder, key)

        elif database_path and database_path != ":memory:":

            def make(n: str, key: LeaseKey | None) -> Lease:
                return FileLease(n, Path(f"{database_path}.{_file_name(n)}.lock"), failover, key)

        else:

            def make(n: str, key: LeaseKey | None) -> Lease:
                return _Always(n, failover, key)

        return cls(make, failover, publish)

    def add(self, name: str, key: LeaseKey | None = None) -> Lease:
        """The lease of ``name`` (made now, taken from :meth:`start`): touches nothing."""
        lease = self._make(name, key)
        # In name order, whoever adds first: the order they are taken in and logged.
        self.leases = dict(sorted({**self.leases, name: lease}.items()))
        return lease

    def permit(self, name: str) -> bool:
        lease = self.leases.get(name)
        return lease is not None and lease.permit()

    def start(self) -> None:
        self.tick(strict=True)  # take what is free at once, before the first runs
        self._thread.start()

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait (trying) until every lease is held, at most ``timeout`` seconds: a lease left by a
        process that died is free once it runs out. True when all are held."""
        deadline = time.monotonic() + timeout
        told: set[str] = set()
        while True:
            missing = {n: lease for n, lease in self.leases.items() if not lease.permit()}
            if not missing:
                return True
            left = deadline - time.monotonic()
            if (
                left <= 0
                or (stop is not None and stop.is_set())
                or all(lease.holder_alive for lease in missing.values())
            ):
                return False
            for name, lease in missing.items():
                if name not in told and not lease.holder_alive:
                    told.add(name)
                    logger.info(
                        "waiting up to %.0fs for the lease on %s, held by %s (free once its "
                        "holder is gone)",
                        left,
                        _label(name),
                        lease.holder or "?",
                    )
            self._stop.wait(min(self.interval, left))
            self.tick()

    def elsewhere(self, *, include_public: bool = True) -> list[str]:
        """What another process holds, so this one may not run, in words: ``account main is held
        by host-a pid 7 since ...`` (without the public jobs' lease unless ``include_public``:
        a file without public jobs needs it only for the service's reference data)."""
        return [
            f"{_held(name)} held by {lease.holder or 'another process'}"
            for name, lease in self.leases.items()
            if not lease.permit() and (include_public or name != PUBLIC)
        ]

    def stop(self, last_nonces: dict[str, int]) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for name, lease in self.leases.items():
            lease.release(last_nonces.get(name))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self, *, strict: bool = False) -> None:
        """Renew the leases held, try to take the others; never raises, unless ``strict`` (at
        start) and a lock file can't be used (:class:`ConfigError`: one line, nothing runs)."""
        for name, lease in self.leases.items():
            held = bool(lease.valid_until) or lease.unreachable
            try:
                if lease.valid_until and lease.renew():
                    continue
                taken, holder, mark = lease.try_take()
            except ConfigError as exc:
                if strict:
                    raise
                if lease.standby_logged != str(exc):  # said once, not at every tick
                    lease.standby_logged = str(exc)
                    logger.error("%s", exc)
                lease.valid_until = 0.0
                continue
            except (SQLAlchemyError, OSError) as exc:
                if lease.valid_until:
                    logger.error(
                        "cannot renew the lease on %s (%s): %s stop until it can",
                        _label(name),
                        str(exc).splitlines()[0][:200],
                        _calls(name),
                    )
                if held:
                    lease.valid_until = 0.0  # fenced at once: we can't know it is still ours
                    lease.unreachable = True
                continue
            lease.unreachable = False
            if taken:
                lease.valid_until, until = 0.0, lease.valid_until
                # Before any call: the key's floor and counter, then fresh cursors and runs.
                if lease.key is not None:
                    lease.key.on_taken(mark)
                self.publish(LeaseTaken(name))
                lease.valid_until = until
                lease.standby_logged = None
                logger.info("holding the lease on %s", _label(name))
                continue
            lease.holder = holder
            if held:
                logger.error("lost the lease on %s: %s stop", _label(name), _calls(name))
                self.publish(LeaseLost(name, holder))
            if holder != lease.standby_logged:
                lease.standby_logged = holder
                logger.warning("standing by: %s held by %s", _held(name), holder)


class _Always(Lease):
    """No coordination (an in-memory database): always held."""

    def try_take(self) -> tuple[bool, str, int]:
        self.valid_until = float("inf")
        return True, "", 0

    def renew(self) -> bool:
        return True

    def release(self, last_nonce: int | None) -> None:
        self.valid_until = 0.0


def _label(name: str) -> str:
    return "the public jobs" if name == PUBLIC else f"account {name}"


def _held(name: str) -> str:
    """``the public jobs are`` / ``account main is``."""
    return f"{_label(name)} {'are' if name == PUBLIC else 'is'}"


def _calls(name: str) -> str:
    return "their calls" if name == PUBLIC else "its calls"


def _file_name(name: str) -> str:
    return "public" if name == PUBLIC else f"account-{name}"


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)
