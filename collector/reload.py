"""Reload on SIGHUP: the job file is read again and its jobs applied to the running service.

* Added jobs start (an interval job runs at once, as at start), removed jobs stop (a run in flight
  finishes), changed jobs take their new schedule and params.
* Cursors stay: they are in the database, keyed by job name. A changed job whose method, params or
  ``since`` changed drops the cursor the runner holds in memory, so its next run starts from the
  stored one, exactly as a restart with the edited file would; a job changed only in its schedule
  keeps it (it is the stored one, or ahead of it by what the writer is still storing).
* ``retention`` applies at once; ``jobs.NAME.stale_after`` too (health follows the new jobs).
* ``streams:`` added, removed and changed are in :func:`diff`'s result (:class:`StreamChanges`)
  for the service to apply; ``kraken.ws_url`` needs a restart, as the rest of ``kraken``.
* A file that no longer validates changes nothing; the log has the line ``collector check`` prints.
* Changes to ``database``, ``kraken`` (credentials, url, limits, ...), ``spool`` or ``metrics`` need
  a restart: such a reload is refused as a whole (nothing changes), with a line naming the keys, so
  what runs is always one whole job file, never half of two.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .coordination import PUBLIC, leases_needed
from .errors import CollectorError
from .jobfile import Config, Job, Stream
from .signals import SignalThread

logger = logging.getLogger(__name__)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The keys whose change a reload cannot apply (names only: values may be secrets)."""
    changed = []
    if old.database != new.database:
        changed.append("database")
    for f in dataclasses.fields(old.kraken):
        if getattr(old.kraken, f.name) != getattr(new.kraken, f.name):
            changed.append(f"kraken.{'tier' if f.name == 'tier_name' else f.name}")
    if (old.spool_path, old.spool_max_runs) != (new.spool_path, new.spool_max_runs):
        changed.append("spool")
    if old.metrics_listen != new.metrics_listen:
        changed.append("metrics.listen")
    if old.metrics_allowed_hosts != new.metrics_allowed_hosts:
        changed.append("metrics.allowed_hosts")
    if old.reference != new.reference:
        changed.append("reference")
    if old.valuation_quote != new.valuation_quote:
        changed.append("valuation.quote")
    if old.valuation_max_price_age != new.valuation_max_price_age:
        changed.append("valuation.max_price_age")
    # A lease is taken at start: the first job of an account, or the first public job or stream
    # of a file that had none, would wait for one forever.
    for name in sorted(leases_needed(new) - leases_needed(old)):
        changed.append(
            "the public jobs and streams" if name == PUBLIC else f"account {name}'s jobs"
        )
    return sorted(set(changed))


def _what(job: Job) -> tuple[object, ...]:
    """What decides a job's rows (as opposed to its schedule)."""
    return (job.method, sorted(job.params.items()), job.since)


@dataclass(frozen=True)
class StreamChanges:
    """What a reload changes in the streams, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: changed in any way (channel, pairs, depth, ...): resubscribed with the new definition
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_streams(old: tuple[Stream, ...], new: tuple[Stream, ...]) -> StreamChanges:
    """The streams ``new`` adds, removes and changes from ``old``."""
    before = {s.name: dataclasses.replace(s, line=0) for s in old}
    # The line a stream is on is not part of it: editing another one moves it.
    after = {s.name: dataclasses.replace(s, line=0) for s in new}
    return StreamChanges(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=tuple(n for n in after if n in before and before[n] != after[n]),
    )


@dataclass(frozen=True)
class JobChanges:
    """What a reload changes in the jobs, by name (and in the streams, :attr:`streams`)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: changed in any way (schedule, params, ...): they take their new definition
    changed: tuple[str, ...] = ()
    #: removed, or changed in what decides their rows: the cursor held in memory is dropped, so
    #: the next run starts from the stored one, as after a restart with the edited file
    forget: tuple[str, ...] = ()
    #: the streams added, removed and changed (the service's recorder applies them)
    streams: StreamChanges = StreamChanges()


def diff(old: Config, new: Config) -> JobChanges:
    """The jobs (and streams) ``new`` adds, removes and changes from ``old``."""
    before = {j.name: j for j in old.jobs}
    after = {j.name: j for j in new.jobs}
    removed = tuple(n for n in before if n not in after)
    # The line a job is on is not part of it: editing another job moves it.
    changed = tuple(
        n
        for n in after
        if n in before
        and dataclasses.replace(before[n], line=0) != dataclasses.replace(after[n], line=0)
    )
    return JobChanges(
        added=tuple(n for n in after if n not in before),
        removed=removed,
        changed=changed,
        forget=removed + tuple(n for n in changed if _what(before[n]) != _what(after[n])),
        streams=diff_streams(old.streams, new.streams),
    )


class Reloadable(Protocol):
    """What a reload applies to (:class:`collector.service.Service`): it changes its own parts."""

    config: Config

    def apply(self, config: Config, changes: JobChanges) -> None: ...


def apply(service: Reloadable, new: Config) -> bool:
    """Apply ``new`` to the running ``service``; False (and nothing changed) when it needs a
    restart."""
    refused = restart_needed(service.config, new)
    if refused:
        logger.error(
            "%s: reload refused, nothing changed: %s changed; restart collector to apply",
            new.path,
            ", ".join(refused),
        )
        return False
    changes = diff(service.config, new)
    service.apply(new, changes)
    streams = changes.streams
    # One line, its streams' part only when they changed (a file of streams alone said
    # "0 jobs" first, as if nothing had been applied).
    logger.info(
        "%s reloaded: %d jobs; added %s; removed %s; changed %s%s",
        new.path,
        len(new.jobs),
        ", ".join(changes.added) or "none",
        ", ".join(changes.removed) or "none",
        ", ".join(changes.changed) or "none",
        f"; {len(new.streams)} streams; streams added {', '.join(streams.added) or 'none'}; "
        f"removed {', '.join(streams.removed) or 'none'}; "
        f"changed {', '.join(streams.changed) or 'none'}"
        if streams
        else "",
    )
    return True


class Reloader:
    """Reloads a service from ``load()`` on SIGHUP, in a thread of its own (the signal handler
    only wakes it). :meth:`install` (from the main thread) takes SIGHUP at once, so that one sent
    while the service starts (waiting for its database) never kills the process; it is applied
    once :meth:`attach` hands over the running service."""

    def __init__(self, load: Callable[[], Config], service: Reloadable | None = None) -> None:
        self.service = service
        self.load = load
        self._signal = SignalThread(
            signal.SIGHUP,
            self.reload,
            name="collector-reload",
            failure="reload failed; nothing changed",
        )

    def install(self) -> None:
        self._signal.install(start=self.service is not None)

    def attach(self, service: Reloadable) -> None:
        """The service is ready: reloads apply to it from now on (one asked before, now)."""
        self.service = service
        if self._signal.pending:
            logger.info("a reload was asked while the service started; applying it now")
        self._signal.start()

    def uninstall(self) -> None:
        self._signal.uninstall()

    def reload(self) -> bool:
        """Read the job file again and apply it; False when nothing changed because of an error."""
        assert self.service is not None, "attach() a service first"
        logger.info("received SIGHUP, reloading %s", self.service.config.path)
        try:
            new = self.load()
        except CollectorError as exc:
            # The lines `collector check` prints, one for each mistake.
            for line in str(exc).splitlines():
                logger.error("error: %s; reload refused, nothing changed", line)
            return False
        for warning in new.warnings:
            logger.warning("%s", warning)
        try:
            return apply(self.service, new)
        except Exception:
            logger.exception("reload failed; nothing changed")
            return False
