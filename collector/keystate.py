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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .nonce import UNITS

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
        the floor and are folded into ``last``, so they stay counted after this process stops.
        """
        with self._locked() as data:
            floor = max([data["last"], *data["leases"].values()])
            for owner in list(data["leases"]):
                if not _alive(owner) or owner == self.owner:
                    data["last"] = max(data["last"], data["leases"].pop(owner))
            return floor

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
