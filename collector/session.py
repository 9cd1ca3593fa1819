"""One account key's session: its client, counter, nonces, state files and lease, owned in one place.

A :class:`KeySession` is made whole: it builds the key's :class:`~collector.client.API` with its
:class:`~collector.ratelimit.RateLimiter` (whose waits and refusals become events), the key's
state files (:class:`~collector.keystate.KeyState`, the mark file; :class:`~collector.keystate.KeyBudget`,
the counter and nonce every process on this machine shares) and, when a job uses the account,
its lease (:meth:`collector.coordination.Leases.add`, handed a :class:`~collector.coordination.LeaseKey`
that reads the counter and tells the session when the lease is taken). Nothing outside sets
anything on these parts; what others must react to (a lease taken, a wait, a refusal) is
published on :class:`~collector.events.Events`. Constructing one touches no file; :meth:`open`
does, :meth:`close` undoes.

**The nonce mark has one owner: this session.** Kraken takes a key's nonce only above the last
one it took, whoever sent it, so every process that may have used the key leaves a mark, each
where the processes that must see it read it. The session's rule:

* **The floor** is the highest of the marks the deployment has, each read through the bounded
  readers (:func:`collector.statefile.floor`; a mark no collector writes is refused with one
  warning, and the clock is the floor): at :meth:`open`, the database's ``collector_state`` row
  (this database's last batch), the key's mark file (a clean stop's last nonce, and the leases of
  processes that crashed: every process on this machine, whatever its database) and the spool's
  row of versions before the mark file; when the lease is taken, the lease row's mark (the last
  holder, on any machine: PostgreSQL only); at every private call, the budget file's last nonce
  (a process on this machine sending with the key now, :meth:`~collector.keystate.KeyBudget.turn`).
  Every one but the last (read inside the call's turn, bounded there) goes through
  :meth:`raise_floor`: the nonces only go up, so the order they come in does not matter.
* **Persisted where the deployment needs it**: before a nonce past the saved mark is issued, the
  new mark goes, synchronously, to the mark file (this machine) and, on PostgreSQL, the lease row
  (another machine taking over; refused when the lease is no longer ours, and then the nonce is
  not issued); each turn writes the budget file; each batch writes the database's row
  (:meth:`marks`); a clean stop writes the last nonce used to the mark file and the lease row.

**The counter** likewise: the limiter is the one copy in this process; it is read from the
budget file at each turn (this machine) and from the lease row when the lease is taken (another
machine: exact after a clean release, full as of its fence after a holder that died), and
written back to both.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import requests

from . import defaults, statefile
from .client import API
from .coordination import Lease, LeaseKey, Leases
from .events import Events, RateLimitRefused, RateLimitWaited
from .jobfile import Account, KrakenSettings
from .keystate import KeyBudget, KeyState
from .nonce import UNITS
from .ratelimit import RateLimiter, ceiling, sent_level
from .store import NONCE_KEY

logger = logging.getLogger(__name__)

#: Where versions before the per-key state kept the nonce lease (in the spool file); still read,
#: so an upgrade right after a crash starts above it.
LEGACY_LEASE = "nonce_lease"


def build_api(
    settings: KrakenSettings,
    account: Account | None = None,
    *,
    cancel: threading.Event | None = None,
    limiter: RateLimiter | None = None,
    public_limiter: RateLimiter | None = None,
    permit: Callable[[], bool] | None = None,
    shared: KeyBudget | None = None,
) -> API:
    """A shared client: rate limits on, a timeout on every call, proxies resolved once. With an
    ``account``, its key, counter and nonce unit; without, a public client (no credentials).
    The limiters, ``permit`` and ``shared`` are the client's parts when given (a session's)."""
    api = API(
        account.key if account else "",
        account.secret if account else "",
        rate_limit=limiter or (account.tier if account else settings.tier),
        public_rate_limit=public_limiter or settings.public_rate_limit,
        nonce_unit=account.nonce_unit if account else settings.nonce_unit,
        timeout=settings.timeout,
        max_response=settings.max_response,
        cancel=cancel,
        uri=settings.url,
        permit=permit,
        shared=shared,
    )
    # requests re-reads proxy variables and ~/.netrc on every request; a long-running service
    # resolves them once here (a netrc login must never be sent to Kraken anyway).
    api.session.proxies.update(requests.utils.get_environ_proxies(settings.url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        api.session.verify = bundle
    api.session.trust_env = False
    return api


def mark_name(account: str) -> str:
    """The ``collector_state`` row of an account's nonce mark (``default`` keeps the old name)."""
    return NONCE_KEY if account == defaults.DEFAULT_ACCOUNT else f"{NONCE_KEY}:{account}"


def limiter_name(account: str) -> str:
    """The account's counter in metrics: ``private`` for the one account of a file without
    ``accounts:``, else ``private:NAME``."""
    return "private" if account == defaults.DEFAULT_ACCOUNT else f"private:{account}"


class KeySession:
    """One account key: its client, counter, nonce source, state files and lease.

    :param account: the account (its key, tier and nonce unit)
    :param settings: the ``kraken:`` settings (url, timeouts, lockout)
    :param state_dir: the state folder of the key's files
    :param database: where this process stores, for display (named in the budget file)
    :param events: where waits and refusals are published
    :param leases: the process's leases when a job uses the account (then the session has one),
        else None (nothing private is sent for it)
    :param cancel: set when the service stops: waits for budget give up
    :param client: a client made elsewhere (a seam for tests and tools): the session wires it
        as it would its own, once, before anything uses it
    """

    def __init__(
        self,
        account: Account,
        settings: KrakenSettings,
        *,
        state_dir: str,
        database: str,
        events: Events,
        leases: Leases | None = None,
        cancel: threading.Event | None = None,
        client: API | None = None,
    ) -> None:
        self.name = account.name
        self.events = events
        unit = client.nonces.unit if client is not None else account.nonce_unit
        key = client.key if client is not None else account.key
        self.state = KeyState(state_dir, key, unit)
        self.budget = KeyBudget(state_dir, key, unit, database=database, lockout=settings.lockout)
        if client is None:
            limiter = RateLimiter(account.tier, on_wait=self._waited, on_refused=self._refused)
            client = build_api(
                settings,
                account,
                cancel=cancel,
                limiter=limiter,
                permit=self.permit,
                shared=self.budget,
            )
        else:
            # A client made elsewhere (the seam): the one place it is wired, before any call.
            client.permit, client.shared = self.permit, self.budget
            if client.limiter is not None:
                client.limiter.on_wait, client.limiter.on_refused = self._waited, self._refused
        self.client = client
        limit = client.limiter.limit if client.limiter is not None else account.tier
        self.lease: Lease | None = None
        if leases is not None:
            self.lease = leases.add(
                self.name,
                LeaseKey(unit, ceiling(limit, settings.lockout), self._counter, self._taken),
            )

    # -- what the others ask ---------------------------------------------------------------------

    def permit(self) -> bool:
        """Whether a private call may be sent now: this process holds the account's lease."""
        return self.lease is not None and self.lease.permit()

    @property
    def last(self) -> int:
        """The highest nonce issued so far (or the floor)."""
        return self.client.nonces.last

    def marks(self) -> dict[str, int]:
        """The database's row of the mark, written with each batch."""
        return {mark_name(self.name): self.last}

    def level(self) -> float | None:
        """The key's counter as this process believes it (None without a limiter)."""
        return self.client.limiter.level() if self.client.limiter is not None else None

    # -- the nonce floor -------------------------------------------------------------------------

    def raise_floor(self, value: object, where: str) -> int:
        """Take ``value`` (a mark read from ``where``) into the floor when it is one a collector
        writes (:func:`collector.statefile.floor`; else one warning and nothing changes).
        Returns the mark taken (0 when refused)."""
        mark = statefile.floor(
            statefile.integer_text(value), self.client.nonces.unit, where, time.time_ns()
        )
        if mark:
            self.client.nonces.raise_floor(mark)
        return mark or 0

    def open(self, database_mark: object, legacy_mark: object = 0, *, database: str = "") -> None:
        """Start above every mark the deployment has (see the module's rule), and save marks
        ahead of the nonces from now on.

        :param database_mark: the database's ``collector_state`` row of this account (as stored)
        :param legacy_mark: the spool's mark of versions before the mark file (as stored)
        :param database: the database, for display in a warning
        :raises ConfigError: the mark file or the budget file can't be used (one line)
        """
        self.raise_floor(database_mark, f"{database}: collector_state {mark_name(self.name)}")
        self.raise_floor(legacy_mark, f"the spool's {LEGACY_LEASE}")
        self.raise_floor(self.state.start(), str(self.state.path))
        self.budget.check()  # a budget file that can't be used: one line, now
        self.client.nonces.lease(
            defaults.NONCE_LEASE_SECONDS * 10**9 // UNITS[self.client.nonces.unit],
            self._save_mark,
            slack=defaults.NONCE_LEASE_SLACK,
        )
        if self.client.limiter is not None and self.state.crashed:
            # A process died with the key: its last calls may have filled the counter.
            self.budget.assume_full(self.client.limiter.limit.max)
        for owner in self.state.live_owners():
            logger.warning(
                "another process uses the API key of account %s: %s; they share one budget "
                "and one nonce sequence: give each collector a key of its own",
                self.name,
                owner.replace(":", " pid "),
            )

    def close(self, opened: bool, last: int | None = None) -> None:
        """Close the client and the budget file; after an :meth:`open`, a clean stop: ``last``
        (default: the last nonce issued; every call has returned) is the mark file's last."""
        self.client.close()
        try:
            if opened:
                self.state.stop(self.last if last is None else last)
        finally:
            self.budget.close()

    # -- the hooks of the parts it owns ----------------------------------------------------------

    def _save_mark(self, mark: int) -> None:
        """Before nonces up to ``mark`` are used: the mark file, then the lease row (which raises
        NotPermitted when the lease is no longer ours: the nonce is not issued)."""
        self.state.lease(mark)
        if self.lease is not None:
            self.lease.save_mark(mark)

    def _taken(self, mark: int) -> None:
        """This process took the account's lease: start above the last holder's nonces, and from
        its counter (exact from a clean release; after one that died, full as of the last moment
        its fence let it send; decayed since)."""
        self.raise_floor(mark, f"the lease row of account {self.name} (account_leases)")
        inherited = self.lease.inherited if self.lease is not None else None
        limiter = self.client.limiter
        if inherited is not None and limiter is not None:
            level = inherited.level if inherited.released else limiter.limit.max
            limiter.restore(level, inherited.ago, inherited.refusals)

    def _counter(self) -> tuple[float, int] | None:
        """The counter as the exchange can have it (the lease row carries it to the next
        holder)."""
        limiter = self.client.limiter
        if limiter is None:
            return None
        level, refusals = limiter.snapshot()
        return sent_level(level, refusals, limiter.limit.max), refusals

    def _waited(self, seconds: float) -> None:
        self.events.publish(RateLimitWaited(limiter_name(self.name), seconds))

    def _refused(self, seconds: float, refusals: int) -> None:
        self.events.publish(RateLimitRefused(self.name, seconds, refusals))
