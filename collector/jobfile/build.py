"""The builder: a parsed job file, section by section, into a :class:`Config`, or every mistake
at once (:class:`collector.errors.ConfigErrors`)."""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from .. import defaults
from ..errors import ConfigError
from .checks import JobChecks
from .model import (
    Config,
    KrakenSettings,
    keys_of,
    parse_listen,
)
from .report import section
from .resolve import Resolver, with_driver
from .source import Expansion, Map, parse, read_small, reason, show
from .streamcheck import StreamChecks

#: A quote currency: an asset's code or altname (``USD``, ``ZUSD``, ``EUR``, ``XBT``, ``USDT``).
_QUOTE = re.compile(r"[A-Z0-9]{2,16}")
#: A host name the metrics listener answers to (``collector``, ``metrics.example.com``; a
#: container's name may hold ``_``).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def load(
    path: str | os.PathLike[str],
    *,
    database: str | None = None,
    environ: dict[str, str] | None = None,
    metrics_listen: str | None = None,
    keys: bool = True,
) -> Config:
    """Read and validate a job file.

    :param database: overrides the file's ``database`` (the CLI's ``--db``)
    :param metrics_listen: overrides the file's ``metrics.listen``, which is then not looked at
        (the CLI's ``--metrics-listen``)
    :param environ: the environment for ``${VAR}`` and credentials (default ``os.environ``)
    :param keys: False for the commands that only read the database (status, export, verify,
        dashboard): they send nothing, so a key file they can't read is no error (the account's
        key is then :data:`UNREAD_KEY` and its path) and no secret is checked
    :raises ConfigError: with file, line and key
    """
    name = str(path)
    env = dict(os.environ if environ is None else environ)
    try:
        text = read_small(path, defaults.JOB_FILE_MAX).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the job file: {reason(exc)}", file=name) from None
    raw = parse(text, name)
    try:
        return Builder(name, env, keys=keys).config(raw, database, metrics_listen)
    except RecursionError:
        raise ConfigError("nested too deeply", file=name) from None


class Builder(JobChecks, StreamChecks, Resolver):
    """One job file's build: its sections, each checked even when another has a mistake."""

    def config(self, raw: Map, database: str | None, listen: str | None = None) -> Config:
        self.check_keys(raw, "", "")
        self.original = raw
        self.kraken_line = raw.lines.get("kraken", raw.line)
        expansion = Expansion(self.file, self.env)
        raw = expansion.expand(raw)
        if expansion.errors:
            self.errors.extend(expansion.errors)
            self.raise_errors()
        # Each section below is checked even when another has a mistake (attempt, @section);
        # all of them are raised together at the end.
        kraken_map = self.attempt(lambda: self.mapping(raw, "kraken", "kraken"), None)
        if kraken_map is None:  # not a mapping (noted): the defaults, while the rest is checked
            kraken_map = Map()
            kraken_map.line, kraken_map.lines = raw.lines.get("kraken", raw.line), {}
        kraken = self.kraken(kraken_map)
        accounts = self.attempt(lambda: self.accounts(raw, kraken_map, kraken), ())
        jobs = self.jobs(raw, kraken, accounts)
        streams = self.attempt(lambda: self.streams(raw), ())
        failover = defaults.FAILOVER
        if "failover" in raw:
            failover = self.attempt(
                lambda: self.declared(raw, "failover", "failover", "failover"), failover
            )
        data_dir = self.data_dir()
        url = self.attempt(lambda: self.database(raw, database, data_dir), None)
        spool_path, max_runs = self.spool(raw, url, data_dir)
        reference = True
        if "reference" in raw:
            reference = self.attempt(
                lambda: self.declared(raw, "reference", "reference", "reference"), True
            )
        config = Config(
            self.file,
            with_driver(url) if url is not None else "",
            kraken,
            jobs,
            spool_path,
            max_runs,
            self.state_dir(),
            tuple(self.warnings),
            accounts,
            failover,
            metrics_listen=self.metrics(raw, listen),
            metrics_allowed_hosts=self.allowed_hosts(raw),
            retention=self.retention(raw),
            reference=reference,
            valuation_quote=self.valuation(raw),
            valuation_max_price_age=self.max_price_age(raw),
            streams=streams,
        )
        self.raise_errors()
        return config

    @section(defaults.VALUATION_QUOTE)
    def valuation(self, raw: Map) -> str:
        spec = self.mapping(raw, "valuation", "valuation")
        self.check_keys(spec, "valuation", "valuation.")
        quote = spec.get("quote", defaults.VALUATION_QUOTE)
        if not isinstance(quote, str) or not _QUOTE.fullmatch(quote.strip().upper()):
            raise self.error(
                f"must be the name of the currency to value balances in, such as USD, EUR or "
                f"XBT (Kraken's asset code or altname), not {show(quote)}",
                spec,
                "quote",
                "valuation.quote",
            )
        return quote.strip().upper()

    @section(defaults.VALUATION_MAX_PRICE_AGE)
    def max_price_age(self, raw: Map) -> float:
        spec = self.mapping(raw, "valuation", "valuation")
        if "max_price_age" not in spec:
            return defaults.VALUATION_MAX_PRICE_AGE
        path = "valuation.max_price_age"
        return float(self.declared(spec, "max_price_age", path, path))

    @section(None)
    def metrics(self, raw: Map, override: str | None = None) -> str | None:
        spec = self.mapping(raw, "metrics", "metrics")
        self.check_keys(spec, "metrics", "metrics.")
        if override is not None:  # --metrics-listen: the file's value is not used
            return override
        if "listen" not in spec:
            return None
        listen = spec["listen"]
        if parse_listen(listen) is None:
            raise self.error(
                f"must be HOST:PORT, e.g. 127.0.0.1:{defaults.METRICS_PORT}, not {show(listen)}",
                spec,
                "listen",
                "metrics.listen",
            )
        return str(listen)

    @section(())
    def allowed_hosts(self, raw: Map) -> tuple[str, ...]:
        spec = self.mapping(raw, "metrics", "metrics")
        hosts = spec.get("allowed_hosts", [])
        if isinstance(hosts, str):
            hosts = [hosts]
        if (
            not isinstance(hosts, list)
            or len(hosts) > defaults.ALLOWED_HOSTS_MAX
            or not all(isinstance(h, str) and _HOST.fullmatch(h) for h in hosts)
        ):
            raise self.error(
                f"must be a list of at most {defaults.ALLOWED_HOSTS_MAX} host names (without "
                f"port), e.g. [collector, metrics.example.com], not {show(hosts)}",
                spec,
                "allowed_hosts",
                "metrics.allowed_hosts",
            )
        return tuple(h.lower() for h in hosts)

    @section({})
    def retention(self, raw: Map) -> dict[str, float]:
        spec = self.mapping(raw, "retention", "retention")
        self.check_keys(spec, "retention", "retention.")
        return {
            table: self.attempt(
                partial(self.declared, spec, table, f"retention.{table}", f"retention.{table}"),
                0.0,
            )
            for table in spec
            if table in keys_of("retention")
        }

    def kraken(self, k: Map) -> KrakenSettings:
        self.check_keys(k, "kraken", "kraken.")
        opts: dict[str, Any] = self.attempt(lambda: self.kraken_options(k), {})
        opts.update(self.attempt(lambda: self.account_opts(k, "kraken."), {}))
        key, secret = self.credentials(k, "kraken.", environment=True)
        return KrakenSettings(key=key, secret=secret, **opts)

    def kraken_options(self, k: Map) -> dict[str, Any]:
        """``kraken:``'s settings but the account's (its counter, nonce unit and credentials)."""
        opts: dict[str, Any] = {}
        if "url" in k:
            url = k["url"]
            if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s?#]+/?\S*", url):
                raise self.error("must be an http(s) URL", k, "url", "kraken.url")
            parts = urlsplit(url)
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise self.error(
                    f"must be the exchange's address without a path, e.g. "
                    f"{parts.scheme}://{parts.netloc}: the client adds /0/public/... and "
                    "/0/private/... itself",
                    k,
                    "url",
                    "kraken.url",
                )
            opts["url"] = url.rstrip("/")
        if "ws_url" in k:
            opts["ws_url"] = self.ws_url(k)
        if "public_rate_limit" in k:
            opts["public_rate_limit"] = self.rate_limit(k, "public_rate_limit")
        if "timeout" in k:
            opts["timeout"] = self.declared(k, "timeout", "kraken.timeout", "kraken.timeout")
        if "max_response_mb" in k:
            path = "kraken.max_response_mb"
            size = self.declared(k, "max_response_mb", path, path)
            opts["max_response"] = int(size * 1024 * 1024)
        if "lockout" in k:
            opts["lockout"] = self.declared(k, "lockout", "kraken.lockout", "kraken.lockout")
        return opts
