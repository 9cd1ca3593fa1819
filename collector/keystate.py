"""A key's nonce mark, kept where every process using the key reads it, not in one database.

Kraken accepts a key's nonce only when it is above the last one it accepted, whichever program
sent it. So the mark belongs to the key: a small JSON file per key in the state folder
(``$COLLECTOR_STATE_DIR``, else ``$XDG_STATE_HOME/collector``, else ``~/.local/state/collector``),
named by a hash of the key (never the key itself), read by every collector process using the key
whatever its database or working folder.

The file holds ``last``, the highest nonce a process reported using when it stopped cleanly, and
``leases``, one per running process (``host:pid``): a mark saved *before* that process issues a
nonce past it. A clean stop raises ``last`` to the last nonce actually used and drops its lease,
so the next start's first nonce is the clock again. After an unclean stop (kill -9, power loss)
the dead process's lease still counts: the next start begins above it, which is at most a few
seconds ahead of the clock (see :meth:`collector.nonce.NonceSource.lease`).

Writes are atomic (a temporary file, fsync, rename) under an exclusive lock on a sidecar file, so
two processes never lose each other's marks. Every file here is opened, and every value read is
bounded, by :mod:`collector.statefile` (no link followed; a mark a day ahead of the clock or a
counter over its ceiling is not one a collector writes).

:class:`KeyBudget` is the key's other shared state: Kraken's call counter as last seen and the last
nonce sent, in a second small file (``key-<hash>.budget``). Every private call of every process on
this machine using the key takes its turn under an exclusive ``flock`` on it: it reads the counter
and the nonce there, waits for budget, takes its nonce, sends, and writes both back before the
next process's turn. So processes sharing a key share one budget and one nonce sequence (their
nonces arrive in order, none is refused), a restart continues from the counter's true level, and
a crash is taken as a full counter as of the crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import defaults, statefile
from .errors import ConfigError
from .nonce import UNITS, NonceSource
from .ratelimit import RateLimiter, ceiling

logger = logging.getLogger(__name__)


def key_id(key: str) -> str:
    """A short, stable name for ``key`` that does not reveal it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyState:
    """One key's nonce mark file. Constructing one touches no file.

    :param folder: the state folder (created when first written, mode 0700)
    :param key: the API key (only its hash is used)
    :param unit: the nonce unit of the values passed in and returned
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        key: str,
        unit: str = "ms",
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"key-{key_id(key)}.json"
        self.unit = unit
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._clock = clock

    # -- what a process does with it ------------------------------------------------------------

    def start(self) -> int:
        """Take the key for this process: returns the floor every nonce must be above.

        Leases left by processes that are gone (or by an earlier process with this pid) count in
        the floor and are folded into ``last``, so they stay counted after this process stops;
        :attr:`crashed` says whether there was one (a process died without a clean stop).
        """
        with self._locked() as data:
            floor = max([data["last"], *data["leases"].values()])
            for owner in list(data["leases"]):
                if not _alive(owner) or owner == self.owner:
                    data["last"] = max(data["last"], data["leases"].pop(owner))
                    self.crashed = True
            return floor

    #: a process using the key died without a clean stop (seen by :meth:`start`)
    crashed = False

    def live_owners(self) -> list[str]:
        """The other processes (``host:pid``) that hold a lease on the key now."""
        return [o for o in self._load()["leases"] if o != self.owner and _alive(o)]

    def lease(self, mark: int) -> None:
        """Record that this process may use nonces up to ``mark`` (durably, before it does)."""
        with self._locked() as data:
            data["leases"][self.owner] = max(mark, data["leases"].get(self.owner, 0))

    def stop(self, last: int) -> None:
        """A clean stop: ``last`` is the highest nonce this process used; its lease is dropped."""
        with self._locked() as data:
            data["last"] = max(data["last"], last)
            data["leases"].pop(self.owner, None)

    def read(self) -> dict[str, Any]:
        """The file's content in this unit (``last`` and ``leases``), without locking or creating."""
        return self._load()

    # -- the file -------------------------------------------------------------------------------

    def check(self) -> None:
        """Whether the folder and the file can be used (and read): :class:`ConfigError` if not."""
        with statefile.folder(self.folder) as dir_fd:
            os.close(statefile.open_file(self.path.with_suffix(".lock"), dir_fd=dir_fd)[0])
            self._load(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with statefile.folder(self.folder) as dir_fd:
            lock, _ = statefile.open_file(self.path.with_suffix(".lock"), dir_fd=dir_fd)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self._load(dir_fd)
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    statefile.replace(self.path, {**data, "unit": self.unit}, dir_fd=dir_fd)
            finally:
                os.close(lock)  # releases the lock

    def _load(self, dir_fd: int | None = None) -> dict[str, Any]:
        try:
            raw = statefile.read(self.path, dir_fd=dir_fd)
            if raw is None:
                return {"last": 0, "leases": {}}
            data = statefile.parse(raw)
            unit = data.get("unit", self.unit)
            if not isinstance(unit, str) or unit not in UNITS:
                raise statefile.Corrupt(f"unknown nonce unit {statefile.show(unit)}")
            leases = data.get("leases", {})
            if not isinstance(leases, dict):
                raise statefile.Corrupt("leases is not an object")
            return {
                "last": self._mark(data.get("last", 0), unit),
                "leases": {str(owner): self._mark(mark, unit) for owner, mark in leases.items()},
            }
        except statefile.Corrupt as exc:
            # A mark we can't read at all must not become 0 silently: a process may have used
            # the key ahead of the clock (a crash lease), so someone must look.
            raise ConfigError(
                f"cannot read the key's nonce mark: {exc}. If no program used this key "
                "ahead of the clock, move the file aside and start again",
                file=str(self.path),
            ) from None

    def _mark(self, value: object, unit: str) -> int:
        """One mark of the file, in this unit; one no collector writes (a float, 1e29, a day
        ahead of the clock) is refused: the clock is then the floor, as for a new key."""
        mark = statefile.floor(value, unit, str(self.path), self._clock())
        return 0 if mark is None else _convert(mark, UNITS[unit], UNITS[self.unit])


def _convert(value: int, from_ns: int, to_ns: int) -> int:
    """``value`` in units of ``from_ns`` nanoseconds, as units of ``to_ns``, rounded up."""
    return -(-value * from_ns // to_ns)


def _alive(owner: str) -> bool:
    """Whether the process ``host:pid`` still runs (one on another host is taken as gone: its
    lease is folded into ``last`` and so still counts)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KeyBudget:
    """The key's counter and last nonce, shared by every process using the key on this machine.
    Constructing one touches no file; the file is opened at the first :meth:`turn` (or
    :meth:`check`).

    What the file holds is bounded on the way in (:mod:`collector.statefile`): a level, a time or
    a refusal count no collector writes (garbage, an empty file it did not just make, NaN, a
    negative level, 1e12) is read as a **full** counter as of now, as after a crash, never as an
    empty one; a nonce no collector writes (a float, 1e29, a day ahead of the clock) is refused,
    and the clock is the floor. One warning names the file; the next turn writes it back sound.

    :param folder: the state folder (created if needed, mode 0700)
    :param key: the API key (only its hash is used)
    :param unit: the nonce unit (every process on a key uses the same)
    :param database: where this process stores (named in the warning another process logs)
    :param lockout: the pause after a lockout (seconds): a counter that high is still believable
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        key: str,
        unit: str = "ms",
        *,
        database: str = "",
        clock: Callable[[], float] = time.time,
        lockout: float = defaults.LOCKOUT_PAUSE,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"key-{key_id(key)}.budget"
        self.unit = unit
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.database = database
        self.lockout = lockout
        self._clock = clock
        self._fd: int | None = None
        self._made = False  # the file was made by this open: empty means new, not corrupt
        self._open_lock = threading.Lock()
        self._warned: dict[str, float] = {}

    @contextlib.contextmanager
    def turn(self, limiter: RateLimiter | None, nonces: NonceSource) -> Iterator[None]:
        """This process's turn with the key: inside, no other process sends with it. The counter
        and the last nonce are read on entry (into ``limiter`` and ``nonces``) and written back
        on exit, whatever happened in between."""
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = self._read(fd, limiter)
            self._notice(data)
            if limiter is not None and "level" in data:
                limiter.restore(data["level"], self._clock() - data["at"], data["refusals"])
            if data.get("nonce"):
                nonces.raise_floor(_convert(data["nonce"], UNITS[data["unit"]], UNITS[self.unit]))
            try:
                yield
            finally:
                level, refusals = limiter.snapshot() if limiter is not None else (0.0, 0)
                self._write(
                    fd,
                    {
                        "level": round(level, 6),
                        "refusals": refusals,
                        "at": self._clock(),
                        "nonce": nonces.last,
                        "unit": self.unit,
                        "writer": self.owner,
                        "database": self.database,
                    },
                )
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def assume_full(self, maximum: float) -> None:
        """A process using the key died without a clean stop: its last calls may have filled the
        counter, so take it as full as of the last turn (or now, when none is recorded)."""
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = self._read(fd, None)
            if data.get("level", 0.0) < maximum:
                data.update(level=maximum, refusals=data.get("refusals", 0))
                data.setdefault("at", self._clock())
                data.setdefault("unit", self.unit)
                self._write(fd, data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def check(self) -> None:
        """Whether the folder and the file can be used: :class:`ConfigError` (one line naming
        them) if not, at start rather than at every private call."""
        self._open()

    def read(self) -> dict[str, Any]:
        """What the file holds now (empty if there is none, or it is not sound), without locking
        or creating it."""
        try:
            raw = statefile.read(self.path)
            data = statefile.parse(raw) if raw and raw.strip() else {}
        except (ConfigError, statefile.Corrupt):
            return {}
        if "level" in data and (
            statefile.counter_level(data.get("level"), float("inf")) is None
            or not _finite(data.get("at"))
        ):
            return {}
        return data

    def close(self) -> None:
        with self._open_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- the file -------------------------------------------------------------------------------

    def _open(self) -> int:
        with self._open_lock:
            if self._fd is None:
                with statefile.folder(self.folder) as dir_fd:
                    self._fd, self._made = statefile.open_file(self.path, dir_fd=dir_fd)
            return self._fd

    def _read(self, fd: int, limiter: RateLimiter | None) -> dict[str, Any]:
        """The file's fields, each checked. A counter that is not sound is a full one as of now
        (``level`` the limiter's maximum); a nonce that is not sound is left out."""
        now = self._clock()
        made, self._made = self._made, False
        data: dict[str, Any] = {}
        problem = ""
        try:
            raw = statefile.read_fd(fd)
            if raw.strip() or not made:
                data = statefile.parse(raw)
        except statefile.Corrupt as exc:
            problem = str(exc)
        unit = data.get("unit", self.unit)
        if not isinstance(unit, str) or unit not in UNITS:
            problem, data = problem or f"unknown nonce unit {statefile.show(unit)}", {}
            unit = self.unit
        checked: dict[str, Any] = {"unit": unit}
        for name in ("writer", "database"):
            value = data.get(name)
            if isinstance(value, str) and len(value) <= 300:
                checked[name] = value
        if data.get("nonce") is not None:
            nonce = statefile.floor(data["nonce"], unit, str(self.path), int(now * 10**9))
            if nonce is not None:
                checked["nonce"] = nonce
        if not problem and not data and not made:
            problem = "empty"
        if not problem and data:
            high = ceiling(limiter.limit, self.lockout) if limiter is not None else float("inf")
            level = statefile.counter_level(data.get("level"), high)
            at: Any = data.get("at")
            refusals = data.get("refusals")
            if level is None:
                problem = f"counter level {statefile.show(data.get('level'))} out of [0, {high:g}]"
            elif not _finite(at) or not 0 <= float(at) <= now + defaults.NONCE_AHEAD_MAX:
                problem = f"counter time {statefile.show(at)} is not a time"
            elif not _count(refusals):
                problem = f"refusal count {statefile.show(refusals)} is not a count"
            else:
                checked.update(level=level, at=float(at), refusals=refusals)
        if problem:
            statefile.warn(
                str(self.path),
                f"the key's budget is not one a collector writes ({problem})",
                "its counter is taken as full as of now",
            )
            if limiter is not None:
                checked.update(level=limiter.limit.max, at=now, refusals=0)
            else:  # assume_full: whatever it sets, from now
                checked.update(level=0.0, at=now, refusals=0)
        return checked

    def _write(self, fd: int, data: dict[str, Any]) -> None:
        # No fsync: a machine that loses this to a power cut is down longer than the counter
        # takes to drain; nonces stay safe through the key's lease marks (fsync'd, above).
        statefile.write_fd(fd, json.dumps(data).encode())

    def _notice(self, data: dict[str, Any]) -> None:
        """Warn (once per ``KEY_SHARED_WARN_EVERY`` per process) when another live process used
        the key last: both stay within one budget, but each gets only part of it."""
        writer = str(data.get("writer") or "")
        if not writer or writer == self.owner or not _alive(writer):
            return
        now = time.monotonic()
        if now - self._warned.get(writer, -1e9) < defaults.KEY_SHARED_WARN_EVERY:
            return
        self._warned[writer] = now
        host, _, pid = writer.rpartition(":")
        logger.warning(
            "another process uses this API key: %s pid %s (database %s); the two share its "
            "budget and nonces, so neither is refused, but each gets part of it: give each "
            "collector a key of its own",
            host,
            pid,
            data.get("database") or "?",
        )


def _finite(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and statefile.counter_level(abs(value), float("inf")) is not None
    )


def _count(value: object) -> bool:
    """A refusal count: an integer a streak can reach (each refusal waits up to a full drain)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**6


def check_files(folder: str | os.PathLike[str], keys: list[tuple[str, str]]) -> None:
    """Whether an existing state folder and the files of each ``(key, unit)`` in it can be used
    (``collector check``, and ``run`` before anything starts): :class:`ConfigError`, one line
    naming the folder or the file, if not. Makes nothing."""
    statefile.check_folder(folder)
    for key, unit in keys:
        KeyState(folder, key, unit).read()  # a mark file that can't be read at all
        budget = KeyBudget(folder, key, unit).path
        with contextlib.suppress(statefile.Corrupt):  # corrupt content: a full counter, later
            statefile.read(budget)
