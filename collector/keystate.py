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
two processes never lose each other's marks.

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

from . import defaults
from .errors import ConfigError
from .nonce import UNITS, NonceSource
from .ratelimit import RateLimiter

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

    def __init__(self, folder: str | os.PathLike[str], key: str, unit: str = "ms") -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"key-{key_id(key)}.json"
        self.unit = unit
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._save(data)
        finally:
            os.close(lock)  # releases the lock

    def _load(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text())
            scale = UNITS.get(str(raw.get("unit", self.unit)), UNITS[self.unit])
            return {
                "last": _convert(int(raw.get("last", 0)), scale, UNITS[self.unit]),
                "leases": {
                    str(owner): _convert(int(mark), scale, UNITS[self.unit])
                    for owner, mark in dict(raw.get("leases", {})).items()
                },
            }
        except FileNotFoundError:
            return {"last": 0, "leases": {}}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A mark we can't read must not become 0 silently: that would reuse nonces.
            reason = getattr(exc, "strerror", None) or f"not a nonce mark ({type(exc).__name__})"
            raise ConfigError(
                f"cannot read the key's nonce mark: {reason}. If no program used this key "
                "ahead of the clock, move the file aside and start again",
                file=str(self.path),
            ) from None

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**data, "unit": self.unit}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives power loss
        finally:
            os.close(dir_fd)


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
    Constructing one touches no file; the file is opened at the first :meth:`turn`.

    :param folder: the state folder (created if needed, mode 0700)
    :param key: the API key (only its hash is used)
    :param unit: the nonce unit (every process on a key uses the same)
    :param database: where this process stores (named in the warning another process logs)
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        key: str,
        unit: str = "ms",
        *,
        database: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"key-{key_id(key)}.budget"
        self.unit = unit
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.database = database
        self._clock = clock
        self._fd: int | None = None
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
            data = self._read(fd)
            self._notice(data)
            if limiter is not None and "level" in data:
                limiter.restore(
                    float(data["level"]), self._clock() - float(data["at"]), int(data["refusals"])
                )
            if data.get("nonce"):
                nonces.raise_floor(
                    _convert(int(data["nonce"]), UNITS[data["unit"]], UNITS[self.unit])
                )
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
            data = self._read(fd)
            if float(data.get("level", 0.0)) < maximum:
                data.update(level=maximum, refusals=int(data.get("refusals", 0)))
                data.setdefault("at", self._clock())
                data.setdefault("unit", self.unit)
                self._write(fd, data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        """What the file holds now (empty if there is none), without locking or creating it."""
        try:
            return dict(json.loads(self.path.read_text() or "{}"))
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        with self._open_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- the file -------------------------------------------------------------------------------

    def _open(self) -> int:
        with self._open_lock:
            if self._fd is None:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            return self._fd

    def _read(self, fd: int) -> dict[str, Any]:
        raw = os.pread(fd, 4096, 0)
        try:
            data = dict(json.loads(raw)) if raw.strip() else {}
            if data:  # every field there and of its type, or the file counts as empty
                float(data["level"]), float(data["at"]), int(data["refusals"])
                int(data.get("nonce", 0)), UNITS[data.get("unit", self.unit)]
        except (ValueError, TypeError, KeyError):
            logger.warning("the key's budget file %s is unreadable; starting it afresh", self.path)
            return {}
        data.setdefault("unit", self.unit)
        return data

    def _write(self, fd: int, data: dict[str, Any]) -> None:
        # No fsync: a machine that loses this to a power cut is down longer than the counter
        # takes to drain; nonces stay safe through the key's lease marks (fsync'd, above).
        raw = json.dumps(data).encode()
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, len(raw))

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
