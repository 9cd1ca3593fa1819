"""Where things are and who the collector is: the database (``--db``, else
``$COLLECTOR_DATABASE_URL``, else the file's), the spool, the data and state folders, and the
accounts' credentials (``key``/``secret``, ``key_file``, ``$KRAKEN_API_KEY``/``$KRAKEN_API_SECRET``;
a read-only load, ``keys=False``, reads no secret it cannot). Secrets are validated but never
repeated in a message."""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

from .. import defaults
from ..dburl import DatabaseURL, parse
from ..defaults import (
    DATA_DIR_ENV,
    DATABASE_ENV,
    KEY_ENV,
    SECRET_ENV,
    SPOOL_ENV,
    STATE_DIR_ENV,
    XDG_STATE_ENV,
)
from ..errors import ConfigError, CredentialsError
from ..ratelimit import TIERS, RateLimit
from .model import Account, KrakenSettings
from .report import Base, section
from .source import VAR, Map, read_small, reason, show

#: The key and secret a read-only load gives an account whose key file it can't read.
UNREAD_KEY = "(key file not read) "


class Resolver(Base):
    """Databases, folders and credentials (a part of the builder)."""

    def database(self, raw: Map, database: str | None, data_dir: Path) -> DatabaseURL:
        """The database URL: ``--db``, else ``$COLLECTOR_DATABASE_URL``, else the file's."""
        # Paths in the job file are relative to it (or to $COLLECTOR_DATA_DIR), wherever the
        # service is started from; --db and $COLLECTOR_DATABASE_URL come from the person at the
        # shell, and are relative to where they are.
        from_file = not database and not self.env.get(DATABASE_ENV)
        db = database or self.env.get(DATABASE_ENV) or raw.get("database") or defaults.DATABASE
        if not isinstance(db, str):
            raise self.error("must be a database URL", raw, "database", "database")
        where_db = ("database", raw) if "database" in raw and not database else (None, raw)
        try:
            url = parse(db)
        except ValueError:
            raise self.error(
                "malformed database URL; e.g. sqlite:///collector.db or "
                "postgresql+psycopg://user@host/db",
                where_db[1],
                where_db[0],
                "database",
            ) from None
        problem = database_problem(url)
        if problem:
            raise self.error(problem, where_db[1], where_db[0], "database")
        if from_file:
            url = _sqlite_under(url, data_dir)
        return url

    @section(("", defaults.SPOOL_MAX_RUNS))
    def spool(self, raw: Map, url: DatabaseURL | None, data_dir: Path) -> tuple[str, int]:
        """``spool.path`` (else beside the SQLite file, or in the data folder) and ``max_runs``."""
        spool = self.mapping(raw, "spool", "spool")
        self.check_keys(spool, "spool", "spool.")
        max_runs = defaults.SPOOL_MAX_RUNS
        if "max_runs" in spool:
            max_runs = self.declared(spool, "max_runs", "spool.max_runs", "spool.max_runs")
        in_file = spool.get("path")
        if in_file is not None and not isinstance(in_file, str):
            raise self.error("must be a file path", spool, "path", "spool.path")
        # data_dir / an absolute path is that path
        spool_path = self.env.get(SPOOL_ENV) or (str(data_dir / in_file) if in_file else None)
        if not spool_path:
            # Beside the SQLite file, or in the data folder for a database on a server.
            if (
                url is not None
                and url.backend() == "sqlite"
                and url.database not in (None, "", ":memory:")
            ):
                spool_path = str(url.database) + ".spool"
            else:
                spool_path = str(data_dir / defaults.SPOOL_NAME)
        return spool_path, max_runs

    def data_dir(self) -> Path:
        """Where relative data paths in the job file resolve: ``$COLLECTOR_DATA_DIR`` (relative
        to the current folder), else the job file's folder."""
        given = self.env.get(DATA_DIR_ENV)
        return Path(os.path.abspath(given)) if given else Path(self.file).resolve().parent

    def state_dir(self) -> str:
        """``$COLLECTOR_STATE_DIR``, else ``$XDG_STATE_HOME/collector``, else
        ``~/.local/state/collector``; absolute. Nothing is created here."""
        given = self.env.get(STATE_DIR_ENV)
        if given:
            return os.path.abspath(given)
        xdg = self.env.get(XDG_STATE_ENV)
        # The XDG spec: a relative $XDG_STATE_HOME is invalid and ignored.
        if xdg and os.path.isabs(xdg):
            return os.path.join(xdg, defaults.STATE_SUBDIR)
        home = self.env.get("HOME") or str(Path.home())
        return os.path.join(os.path.abspath(home), ".local", "state", defaults.STATE_SUBDIR)

    def account_opts(self, k: Map, prefix: str) -> dict[str, Any]:
        """An account's counter (``tier`` or ``rate_limit``) and ``nonce_unit``."""
        opts: dict[str, Any] = {}
        if "tier" in k and "rate_limit" in k:
            raise self.error(
                "give either tier or rate_limit, not both", k, "rate_limit", prefix + "rate_limit"
            )
        if "tier" in k:
            tier = k["tier"].lower() if isinstance(k["tier"], str) else ""
            if tier not in TIERS:
                close = difflib.get_close_matches(tier, TIERS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.error(
                    f"unknown tier {show(k['tier'])} (starter, intermediate or pro){hint}",
                    k,
                    "tier",
                    prefix + "tier",
                )
            opts["tier"], opts["tier_name"] = TIERS[tier], tier
        if "rate_limit" in k:
            opts["tier"] = self.rate_limit(k, "rate_limit", prefix)
            opts["tier_name"] = f"max {opts['tier'].max:g}, decay {opts['tier'].decay:g}/s"
        if "nonce_unit" in k:
            section = "kraken" if prefix == "kraken." else "accounts.NAME"
            opts["nonce_unit"] = self.declared(
                k, "nonce_unit", prefix + "nonce_unit", f"{section}.nonce_unit"
            )
        return opts

    def accounts(self, raw: Map, k: Map, kraken: KrakenSettings) -> tuple[Account, ...]:
        """``accounts:``, or the one account ``default`` that ``kraken:``'s credentials make."""
        if "accounts" not in raw:
            if not kraken.has_credentials:
                return ()
            return (
                Account(
                    defaults.DEFAULT_ACCOUNT,
                    kraken.key,
                    kraken.secret,
                    kraken.tier,
                    kraken.tier_name,
                    kraken.nonce_unit,
                ),
            )
        found = raw["accounts"]
        if not isinstance(found, Map) or not found:
            self.accounts_broken = True
            raise self.error(
                "must map account names to {key, secret} or {key_file}", raw, "accounts", "accounts"
            )
        for shared in ("key", "secret", "key_file"):
            if shared in k:
                self.errors.append(
                    self.error(
                        "with accounts:, credentials go under each account",
                        k,
                        shared,
                        f"kraken.{shared}",
                    )
                )
        out = [
            self.attempt(
                partial(self.account, name, found, kraken),
                # A stand-in, so that its jobs are still checked, and not told it is missing.
                Account(str(name), key=f"<account {name}>"),
            )
            for name in found
        ]
        keys = [a.key for a in out]
        for account in out:
            if keys.count(account.key) > 1:
                raise self.error(
                    "two accounts share one API key; a key is one account's (its nonces)",
                    found,
                    account.name,
                    f"accounts.{account.name}.key",
                )
        return tuple(out)

    def account(self, name: str, found: Map, kraken: KrakenSettings) -> Account:
        """One account of ``accounts:``."""
        spec = found[name]
        path = f"accounts.{name}"
        if not isinstance(spec, Map):
            raise self.error(
                "must be a mapping with key and secret, or key_file", found, name, path
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise self.error(
                "an account name is 1 to 64 letters, digits, _ . or -", found, name, path
            )
        self.check_keys(spec, "accounts.NAME", path + ".")
        opts = {
            "tier": kraken.tier,
            "tier_name": kraken.tier_name,
            "nonce_unit": kraken.nonce_unit,
            **self.attempt(lambda: self.account_opts(spec, path + "."), {}),
        }
        key, secret = self.credentials(spec, path + ".")
        if not key:
            raise self.error("needs key and secret, or key_file", found, name, path)
        return Account(str(name), key, secret, **opts)

    def credentials(self, k: Map, prefix: str, *, environment: bool = False) -> tuple[str, str]:
        """``key``/``secret`` or ``key_file`` under ``k`` (and, with ``environment``, the
        ``$KRAKEN_API_KEY``/``$KRAKEN_API_SECRET`` fallback); the secret must be base64.

        A mistake is noted, and a stand-in key returned: the account still exists, so its jobs
        are checked and not also told that they have no credentials."""
        stand_in = (f"<{prefix}key>", "<secret>")
        return self.attempt(lambda: self.checked_credentials(k, prefix, environment), stand_in)

    def checked_credentials(self, k: Map, prefix: str, environment: bool) -> tuple[str, str]:
        key, secret = self._credentials(k, prefix, environment)
        if (key or secret) and self.keys:
            # Only a file loaded with its keys (a command that sends) decodes the secret: the
            # signing module brings ``requests``, which a read-only command never imports.
            from ..auth import decode_secret

            try:
                decode_secret(secret)
            except CredentialsError as exc:
                where = "secret" if "secret" in k else "key_file" if "key_file" in k else None
                if where == "secret":
                    origin = self.origin(prefix + "secret")
                    source = f" from {origin}" if origin else ""
                elif where == "key_file":
                    source = " on line 2 of the key file"
                else:
                    source = f" from ${SECRET_ENV}"
                message = str(exc).replace("the API secret", f"the API secret{source}", 1)
                if any(c.isspace() for c in secret):
                    message += "; it holds a space or line break inside"
                error = self.error(message, k, where, f"{prefix}{where or 'secret'}")
                if where is None:  # from the environment: the line of the section it belongs to
                    error = ConfigError(
                        error.message, file=self.file, line=self.kraken_line, key=error.key
                    )
                raise error from None
            if _swapped(key, secret):
                where = "key_file" if "key_file" in k else "key" if "key" in k else None
                what = {
                    "key_file": "the key file holds the secret on line 1 and the key on line 2",
                    "key": f"{prefix}key holds the secret and {prefix}secret the key",
                    None: f"${KEY_ENV} holds the secret and ${SECRET_ENV} the key",
                }[where]
                error = self.error(
                    f"{what} (a secret is {_length(defaults.SECRET_BYTES)} of base64, a key "
                    f"{len(secret)}: here the other way round); swap them, or every private "
                    "call fails with EAPI:Invalid key",
                    k,
                    where,
                    f"{prefix}{where or 'key'}",
                )
                if where is None:
                    error = ConfigError(
                        error.message, file=self.file, line=self.kraken_line, key=error.key
                    )
                raise error
        return key, secret

    def origin(self, path: str) -> str | None:
        """The ``${VAR}`` references in the job file's own text at ``path`` (dotted), if any."""
        node: Any = self.original
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        names = VAR.findall(node) if isinstance(node, str) else []
        return ", ".join(f"${{{name}}}" for name, _ in names) or None

    def _credentials(self, k: Map, prefix: str, environment: bool) -> tuple[str, str]:
        if "key_file" in k:
            if "key" in k or "secret" in k:
                raise self.error(
                    "give key_file or key/secret, not both", k, "key_file", prefix + "key_file"
                )
            if not isinstance(k["key_file"], str) or not k["key_file"]:
                raise self.error("must be a file path", k, "key_file", prefix + "key_file")
            path = Path(k["key_file"])
            if not path.is_absolute():
                path = Path(self.file).parent / path
            try:
                # A regular file of at most 64 KB (never /dev/zero or a FIFO); a BOM, CRLF line
                # ends and spaces around the values (a key file saved by Notepad) are not part
                # of them.
                lines = read_small(path, defaults.KEY_FILE_MAX).decode("utf-8-sig").splitlines()
                key, secret, *_ = (line.strip() for line in [*lines, "", ""])
            except (OSError, UnicodeDecodeError) as exc:
                if not self.keys:
                    return UNREAD_KEY + str(path), UNREAD_KEY
                raise self.error(
                    f"cannot read key file {str(path)!r}: {reason(exc)}{_not_ours(path, exc)}",
                    k,
                    "key_file",
                    prefix + "key_file",
                ) from None
            if not key or not secret:
                raise self.error(
                    f"key file {str(path)!r} must hold the key on line 1 and the secret on line 2",
                    k,
                    "key_file",
                    prefix + "key_file",
                )
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                line = k.lines.get("key_file", k.line)
                self.warnings.append(
                    f"{self.file}:{line}: {prefix}key_file: {str(path)!r} is "
                    f"readable by group or others (mode {mode:04o}); "
                    f"run: chmod 600 {path}"
                )
            return key, secret
        env = self.env if environment else {}
        key = k.get("key") or env.get(KEY_ENV) or ""
        secret = k.get("secret") or env.get(SECRET_ENV) or ""
        for name, value in (("key", key), ("secret", secret)):
            if not isinstance(value, str):
                raise self.error("must be text", k, name, f"{prefix}{name}")
        # Pasted or echoed values carry a newline or a space at their ends, as key files do;
        # neither is ever part of a key or a base64 secret.
        key, secret = key.strip(), secret.strip()
        if bool(key) != bool(secret):
            missing = "secret" if key else "key"
            raise self.error(
                f"an API key needs its {missing} too",
                k,
                "key" if "key" in k else "secret" if "secret" in k else None,
                f"{prefix}{missing}",
            )
        return key, secret

    def rate_limit(self, k: Map, key: str, prefix: str = "kraken.") -> RateLimit:
        value = k[key]
        if not isinstance(value, Map) or set(value) != {"max", "decay"}:
            raise self.error(
                "must be a mapping {max: N, decay: per-second}", k, key, f"{prefix}{key}"
            )
        numbers = [value["max"], value["decay"]]
        if not all(
            isinstance(n, int | float)
            and not isinstance(n, bool)
            and math.isfinite(n)
            and 0 < n <= defaults.RATE_MAX
            for n in numbers
        ):
            raise self.error(
                f"max and decay must be numbers above 0 and at most {defaults.RATE_MAX:,.0f}",
                k,
                key,
                f"{prefix}{key}",
            )
        return RateLimit(float(value["max"]), float(value["decay"]))


def _length(size: int) -> str:
    """How many base64 characters ``size`` bytes are."""
    return f"{4 * ((size + 2) // 3)} characters"


def _decoded_size(text: str) -> int | None:
    try:
        return len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None


def _swapped(key: str, secret: str) -> bool:
    """Whether ``key`` is shaped as Kraken's secrets are and ``secret`` is not: the two swapped.
    A key of any other shape (a test's ``KEY``) is not judged."""
    return (
        _decoded_size(key) == defaults.SECRET_BYTES
        and _decoded_size(secret) != defaults.SECRET_BYTES
    )


def _not_ours(path: Path, exc: BaseException) -> str:
    """Why a key file this process may not read is so, and what to do: in a container, one
    mounted from the host keeps the host user's owner and ``chmod 600``, which the image's user
    (uid 10001) is not."""
    if not isinstance(exc, PermissionError) or not hasattr(os, "geteuid"):
        return ""
    try:
        info = path.stat()
    except OSError:
        return ""
    me = os.geteuid()
    if info.st_uid == me:
        return ""
    return (
        f"; it belongs to uid {info.st_uid} (mode {info.st_mode & 0o777:04o}) and collector runs "
        f"as uid {me}: give it to uid {me} (chown {me} {path.name}; on the host for a Docker "
        "mount) or pass the key as ${KRAKEN_API_KEY} and ${KRAKEN_API_SECRET}"
    )


#: The drivers each database is used through (psycopg 3 is the ``postgres`` extra).
_DRIVERS = {
    "sqlite": ("sqlite", "sqlite+pysqlite"),
    "postgresql": ("postgresql", "postgresql+psycopg", "postgres"),
    "postgres": ("postgres",),
}


def database_problem(url: DatabaseURL) -> str | None:
    """What is wrong with a database URL that parsed, or None."""
    backend = url.backend()
    if backend not in _DRIVERS:
        return f"unsupported database {backend!r}: use sqlite or postgresql"
    if url.drivername not in _DRIVERS[backend]:
        if backend == "sqlite":
            return f"use sqlite:///FILE, not {url.drivername}://"
        return (
            f"collector talks to PostgreSQL through psycopg 3: write postgresql+psycopg:// "
            f"(or postgresql://), not {url.drivername}://"
        )
    if backend == "sqlite" and (url.host or url.port or url.username or url.password):
        # sqlite://m.db puts the file where a host goes; SQLAlchemy refuses it only when connecting.
        name = url.host or ""
        return (
            f"{url.drivername}://{name} names a host, not a file: a file beside the job file is "
            f"sqlite:///{name or 'collector.db'} (three slashes), an absolute path "
            "sqlite:////var/lib/collector/collector.db (four)"
        )
    return None


def _sqlite_under(url: DatabaseURL, folder: Path) -> DatabaseURL:
    """A relative SQLite file as a path under ``folder``; other URLs as they are."""
    name = url.database
    if (
        url.backend() != "sqlite"
        or name in (None, "", ":memory:")
        or name.startswith("file:")  # a SQLite URI (?uri=true): its own rules
        or os.path.isabs(name)
    ):
        return url
    return url.set(database=str(folder / name))


def with_driver(url: DatabaseURL) -> str:
    """``postgresql://`` (and ``postgres://``, as hosting providers write it) means psycopg 3
    here (the ``postgres`` extra), not psycopg2."""
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render(hide_password=False)
