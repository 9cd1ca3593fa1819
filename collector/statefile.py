"""The one reader and writer of the collector's own state files, and the rules for their values.

The state folder (each key's nonce marks and rate budget) and the lock files beside a SQLite
database are written by this user's collectors only, but they live where another account, a
program gone wrong or a ``sudo collector run`` may have left something else: a symbolic link to
the database (opening it with ``O_CREAT`` and truncating it would destroy it), a folder, a file of
root's, a file of 2 GB, a number of 1e29. So every state file is opened here, and only here:

* the **state folder** is a real folder (not a link), owned by this user, not writable by group or
  others (else anyone who can write in it can plant links), made 0700 when missing;
* a **file** is opened without following a link (``O_NOFOLLOW``, relative to the checked folder),
  must be a regular file owned by this user with one name (a hard link to the database is refused
  too), is created 0600 and never truncated before it is known to be ours; it is read up to
  ``STATE_FILE_MAX_BYTES``; a whole file is replaced atomically (a temporary file made with
  ``O_EXCL``, fsync, rename, fsync of the folder);
* its **values** are bounded here: :func:`nonce_mark` (an integer, at most ``NONCE_AHEAD_MAX``
  ahead of the clock and under ``NONCE_MAX``) and :func:`counter_level` (a number within
  ``[0, ceiling]``, see :func:`collector.ratelimit.ceiling`). A value outside them was not written
  by a collector: the caller takes the safe reading (the clock as the only floor; a full counter)
  and :func:`warn` says so once, naming the file. The lease row in PostgreSQL (its nonce mark and
  counter) goes through the same two functions.

A folder or file that can't be used is a :class:`~collector.errors.ConfigError`: one line naming
it and saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import defaults
from .errors import ConfigError
from .nonce import UNITS

logger = logging.getLogger(__name__)


class Corrupt(ValueError):
    """A state file's content is not what a collector writes (the reason is the message)."""


# -- the folder ---------------------------------------------------------------------------------


def open_folder(path: str | os.PathLike[str]) -> int:
    """The state folder ``path`` (made 0700 when missing), opened and checked: a descriptor to
    open its files relative to (closed by the caller).

    :raises ConfigError: a link, not a folder, another user's, or writable by group or others
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a link or a file where the folder should be: said below
    except OSError as exc:
        raise _folder_error(folder, exc.strerror or str(exc)) from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _folder_error(folder, _why(exc, folder)) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise _folder_error(folder, f"owned by another user (uid {st.st_uid})")
        if st.st_mode & 0o022:
            raise _folder_error(
                folder,
                f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"chmod go-w {folder}",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_folder(path: str | os.PathLike[str]) -> None:
    """Whether the state folder can be used (made when missing); :class:`ConfigError` if not."""
    os.close(open_folder(path))


@contextlib.contextmanager
def folder(path: str | os.PathLike[str]) -> Iterator[int]:
    """:func:`open_folder` for a ``with`` block."""
    fd = open_folder(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _folder_error(folder: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"cannot use the state folder {folder}: {reason}; each API key's nonce mark and budget "
        f"are kept there: use a folder of this user's that only it can write (or set "
        f"{defaults.STATE_DIR_ENV})"
    )


# -- files --------------------------------------------------------------------------------------


def open_file(path: Path, *, dir_fd: int | None = None, create: bool = True) -> tuple[int, bool]:
    """Open the state or lock file ``path`` read-write, never following a link and never
    truncating: ``(descriptor, made now)``. Made 0600 when missing (and ``create``).

    :param dir_fd: the checked folder (:func:`open_folder`); ``path``'s name is opened in it
    :raises ConfigError: a link, not a regular file, another user's, more than one name, or
        the machine refuses (permission, a folder in its place); FileNotFoundError when missing
        and not ``create``
    """
    name: str | Path = path.name if dir_fd is not None else path
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    made = False
    try:
        if create:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
                made = True
            except FileExistsError:
                fd = os.open(name, flags, dir_fd=dir_fd)
        else:
            fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        raise file_error(path, "its folder is gone") from None
    except OSError as exc:
        raise file_error(path, _why(exc, path)) from None
    try:
        _check_file(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, made


def read_fd(fd: int) -> bytes:
    """The content of an open state file, at most ``STATE_FILE_MAX_BYTES``.

    :raises Corrupt: larger than that
    """
    raw = os.pread(fd, defaults.STATE_FILE_MAX_BYTES + 1, 0)
    if len(raw) > defaults.STATE_FILE_MAX_BYTES:
        raise Corrupt(f"larger than {defaults.STATE_FILE_MAX_BYTES} bytes")
    return raw


def read(path: Path, *, dir_fd: int | None = None) -> bytes | None:
    """The content of the state file ``path`` (read-only, no link followed), or None if missing.

    :raises ConfigError: not a regular file of this user's (or unreadable)
    :raises Corrupt: too large
    """
    name: str | Path = path.name if dir_fd is not None else path
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, _why(exc, path)) from None
    try:
        _check_file(fd, path)
        return read_fd(fd)
    finally:
        os.close(fd)


def parse(raw: bytes) -> dict[str, Any]:
    """A state file's JSON object.

    :raises Corrupt: not JSON, or not an object
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Corrupt(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise Corrupt(f"not a JSON object ({type(data).__name__})")
    return data


def replace(path: Path, data: dict[str, Any], *, dir_fd: int) -> None:
    """Replace the state file ``path`` (in the checked folder ``dir_fd``) with ``data``,
    atomically and durably: a fresh temporary file (``O_EXCL``: a name planted in its place is
    removed, never written through), fsync, rename over ``path``, fsync of the folder."""
    tmp = f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(tmp, dir_fd=dir_fd)  # a leftover (or a planted link): the name, not its target
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # the rename itself survives power loss


def write_fd(fd: int, raw: bytes) -> None:
    """Overwrite an open state file (one :func:`open_file` checked) with ``raw``: written first,
    then cut to its length, so the file is never empty in between."""
    os.pwrite(fd, raw, 0)
    os.ftruncate(fd, len(raw))


def file_error(path: Path, reason: str) -> ConfigError:
    """The one line for a state or lock file that can't be used."""
    return ConfigError(
        f"cannot use this state file: {reason}; the collector keeps a key's nonce mark, its "
        "budget and its locks in files of its own: move this aside",
        file=str(path),
    )


def _check_file(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise file_error(path, "a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise file_error(path, "not a regular file")
    if st.st_uid != os.geteuid():
        raise file_error(path, f"owned by another user (uid {st.st_uid})")
    if st.st_nlink != 1:
        raise file_error(path, f"it has {st.st_nlink} names (a hard link to another file?)")


def _why(exc: OSError, path: Path) -> str:
    # O_NOFOLLOW on a link: ELOOP, or ENOTDIR with O_DIRECTORY
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
        with contextlib.suppress(OSError):
            return f"a symbolic link (to {os.readlink(path)}), not followed"
        return "a symbolic link, not followed"
    if exc.errno == errno.EISDIR:
        return "a folder, not a file"
    if exc.errno == errno.ENOTDIR:
        return "not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        with contextlib.suppress(OSError):
            owner = os.lstat(path).st_uid
            if owner != os.geteuid():
                return f"permission denied (owned by uid {owner})"
        return "permission denied"
    return exc.strerror or type(exc).__name__


# -- values -------------------------------------------------------------------------------------


def nonce_mark(value: object, unit: str, now_ns: int) -> int | None:
    """``value`` as a nonce mark in ``unit`` (``ms``, ``us``, ``ns``), or None when it is not
    one a collector can have written: not an integer (a float, text, a bool), negative, at or over
    ``NONCE_MAX``, or more than ``NONCE_AHEAD_MAX`` ahead of the clock ``now_ns``."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    ahead = now_ns // UNITS[unit] + defaults.NONCE_AHEAD_MAX * 10**9 // UNITS[unit]
    if not 0 <= value <= min(ahead, defaults.NONCE_MAX):
        return None
    return value


def integer_text(value: object) -> object:
    """A mark kept as text (a database's ``collector_state``, the spool's legacy row) as the int
    it spells when it is plain digits (at most 20); anything else (``1e29``, ``1.5e15``, garbage)
    as it is, for :func:`floor` to refuse with its warning instead of a traceback from ``int()``."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    return value


def floor(value: object, unit: str, where: str, now_ns: int, taken: str = "") -> int | None:
    """:func:`nonce_mark`, with the one warning (per ``where``) when ``value`` is refused: the
    caller then keeps the clock as the floor."""
    mark = nonce_mark(value, unit, now_ns)
    if mark is None:
        warn(
            where,
            f"nonce mark {show(value)} is not one a collector writes (an integer under 2**63, "
            f"at most {defaults.NONCE_AHEAD_MAX // 3600} h ahead of the clock)",
            taken or "refused: nonces start from the clock",
        )
    return mark


def show(value: object) -> str:
    """A value read from a state file or row, for a message: its repr (control characters
    escaped), cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def counter_level(value: object, ceiling: float) -> float | None:
    """``value`` as a rate counter's level, or None when it is not a finite number within
    ``[0, ceiling]`` (then the counter is taken as full: the safe reading of an unknown one)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        level = float(value)
    except OverflowError:  # an integer past a float
        return None
    if not math.isfinite(level) or not 0.0 <= level <= ceiling:
        return None
    return level


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn(where: str, problem: str, taken: str) -> None:
    """One warning per process for each (file, problem): ``where: problem; taken``. The memory of
    what was said is bounded: past ``STATE_WARNINGS_KEPT`` pairs it starts again (a file rewritten
    with a new bad value each turn is said again, never grows the set without end)."""
    with _warned_lock:
        if (where, problem) in _warned:
            return
        if len(_warned) >= defaults.STATE_WARNINGS_KEPT:
            _warned.clear()
        _warned.add((where, problem))
    logger.warning("%s: %s; %s", where, problem, taken)
