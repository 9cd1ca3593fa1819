"""Every default in one place, each with the reason it has the value it has.

A leaf module: nothing here imports the rest of the package, so any module can use it. The job file
overrides most of these (see the README's table of keys); the rest are tuning a user never needs.
"""

from __future__ import annotations

# -- the exchange -------------------------------------------------------------------------------

#: Kraken's REST endpoint; the fake exchange and proxies are set through ``kraken.url``.
KRAKEN_URL = "https://api.kraken.com"
#: Seconds a call may take. krakenex has no timeout, and a call without one can hold a worker forever.
TIMEOUT = 10.0
#: Nonces in milliseconds, as krakenex and ccxt send them, so a key can move between the three.
NONCE_UNIT = "ms"
#: The smallest private tier: a key whose tier nobody wrote down is never driven over its limit.
TIER = "starter"
#: Public calls are limited per IP to about one a second with short bursts (Kraken's docs).
PUBLIC_MAX, PUBLIC_DECAY = 5.0, 1.0
#: How far under the exchange's maximum our copy of the counter stays: the exchange counts a call
#: when it arrives, slightly after we counted it.
HEADROOM = 0.5
#: After ``EAPI:Rate limit exceeded``, nothing is sent until the counter has drained by the refused
#: call's cost and this many more units (doubling on each refusal in a row, up to a full drain).
REFUSAL_MARGIN = 1.0
#: Refusals in a row after which ``/healthz`` says the key is being refused (503): one is a blip
#: the client recovers from in one drain, three mean something keeps the key over its limit.
REFUSALS_UNHEALTHY = 3
#: How often a process says that another process uses its API key (seconds).
KEY_SHARED_WARN_EVERY = 600.0
#: Threads sharing one client's connection pool; more would discard connections.
POOL_SIZE = 32
#: The largest answer read (bytes). No Kraken answer comes near it; a larger one is hostile.
MAX_RESPONSE = 50 * 1024 * 1024
#: How much of an answer is read at a time while counting it against ``MAX_RESPONSE``.
READ_CHUNK = 64 * 1024

# -- retries ------------------------------------------------------------------------------------

#: The first backoff (seconds); each failure doubles it, up to ``BACKOFF_CAP``. Short enough that a
#: blip costs a second, capped so a long outage is still retried every half minute.
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
#: Kraken's ``EGeneral:Temporary lockout`` lasts about 15 minutes; calling sooner extends it.
LOCKOUT_PAUSE = 15 * 60.0
#: A run's retries end this long after it started, unless the job says otherwise (and never after
#: the job's next run for an interval job), so retries never pile onto the next run.
DEADLINE = 60.0
#: ``run --once`` (system cron) gives up retrying a call after this long, unless the job sets its
#: own ``deadline``: the next cron run tries again, and an exchange that can't be reached must not
#: hold every run of a cron line for a minute.
ONCE_DEADLINE = 10.0

# -- datasets -----------------------------------------------------------------------------------

#: Each window of a private history starts this long before where the last one ended (seconds):
#: entries can share a time, and Kraken's clock is not ours. The entries seen twice are stored once.
HISTORY_OVERLAP = 60.0
#: A run's window of a private history ends this long before the run starts (seconds), so entries
#: still arriving (Kraken's clock may be behind ours) don't land inside it while it is paged.
HISTORY_SETTLE = 5.0
#: A balance snapshot matches the ledger's balance at any moment this close to it (seconds): the
#: snapshot's time is ours (when its answer came), the ledger's times are Kraken's, and an entry
#: booked while the Balance call was in flight may or may not be in its answer.
SNAPSHOT_WINDOW = 5.0

#: A paging run says how far it got (pages, rows, how far back) at most this often (seconds).
PROGRESS_EVERY = 10.0

# -- the database -------------------------------------------------------------------------------

#: SQLite beside the job file: works with no server and no setup.
DATABASE = "sqlite:///collector.db"
#: How long a SQLite write waits for another process's lock before the database counts as
#: unavailable and runs go to the spool.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: At most this many runs go into one transaction: large enough to amortise the commit, small
#: enough that a refused batch is cheap to retry run by run.
BATCH_MAX = 500
#: How often an idle writer looks at its SQLite file (seconds): one deleted under the service is
#: noticed within this, and at the next write when busy.
FILE_CHECK_INTERVAL = 30.0
#: The writer commits at least this often (seconds) while runs are waiting: rows show up fast.
FLUSH_INTERVAL = 0.2
#: Runs waiting to be written before submitting one waits (backpressure): when calls outpace the
#: database, memory stays bounded and the scheduler folds late runs instead.
MAX_PENDING = 2 * BATCH_MAX

# -- the spool ----------------------------------------------------------------------------------

#: Runs the spool holds at most: about a day of a busy job file, a few hundred MB at most.
SPOOL_MAX_RUNS = 100_000
#: Seconds a spool write waits for another process's lock on the file.
SPOOL_BUSY_TIMEOUT = 10.0
#: The spool's file name when it sits beside the job file (a database on a server).
SPOOL_NAME = "collector.spool"

# -- the service --------------------------------------------------------------------------------

#: Threads making calls. Private calls are serialised by the client anyway; public ones overlap.
WORKERS = 16
#: A run that starts this much after its time is logged as late.
LATE_AFTER = 1.0
#: How long shutdown waits for the writer, beyond the calls' own timeouts.
WRITE_GRACE = 30.0
#: How long a call in flight may still take once the service is stopping: an answer on its way
#: arrives well within it, a peer dripping bytes is cut (the call's own timeout may be minutes).
STOP_GRACE = 2.0
#: How far ahead of the clock the crash lease is kept (seconds of nonces): a lease is saved (one
#: fsync) at most this often, and a crash leaves nonces at most this far ahead of the clock.
NONCE_LEASE_SECONDS = 5
#: While the clock is behind the nonces (after a crash, or a clock stepped back), the lease covers
#: this many nonces past the last one instead, so repeated crashes don't push nonces further ahead.
NONCE_LEASE_SLACK = 100

#: How soon a standby takes over an account whose holder is gone (seconds): the holder's lease on
#: the account lasts this long and is renewed every fifth of it.
FAILOVER = 15.0

# -- the environment ----------------------------------------------------------------------------

DATABASE_ENV = "COLLECTOR_DATABASE_URL"
SPOOL_ENV = "COLLECTOR_SPOOL"
#: Where relative data paths in the job file (the SQLite file, ``spool.path``) resolve instead of
#: the job file's folder: a container mounts the job file read-only and its data elsewhere.
DATA_DIR_ENV = "COLLECTOR_DATA_DIR"
#: The folder for per-key state (nonce marks); else ``$XDG_STATE_HOME/collector``, else
#: ``~/.local/state/collector`` (the XDG base directory spec's place for state that outlives a run).
STATE_DIR_ENV = "COLLECTOR_STATE_DIR"
XDG_STATE_ENV = "XDG_STATE_HOME"
STATE_SUBDIR = "collector"
KEY_ENV, SECRET_ENV = "KRAKEN_API_KEY", "KRAKEN_API_SECRET"

# -- operations: health, metrics, retention ----------------------------------------------------

#: A job is stale (``/healthz`` 503, ``collector status`` exit 1) after this many of its intervals
#: without a success: one missed run is a blip, three in a row mean it stopped collecting.
STALE_INTERVALS = 3
#: ...and never sooner than this (seconds), so a job every second is not stale after a 3 s hiccup.
STALE_MIN = 60.0
#: The metrics port: the one registered for this exporter would be arbitrary, 9108 is free of the
#: common exporters' defaults (node 9100, postgres 9187). The Docker image listens on it.
METRICS_PORT = 9108
#: The metrics listener serves at most this many requests at a time, each for at most
#: ``LISTENER_TIMEOUT`` seconds: a crowd of slow peers can't take the collector's threads or
#: descriptors (a scrape of a thousand jobs takes a fraction of a second).
LISTENER_THREADS = 4
LISTENER_TIMEOUT = 10.0
#: Retention deletes at most this many rows per transaction, so it never holds up the writer.
RETENTION_BATCH = 500
#: Seconds between retention passes: retention is counted in days, an hour late costs nothing.
RETENTION_INTERVAL = 3600.0
#: Seconds after start before the first pass, so the service's first runs come first.
RETENTION_FIRST = 30.0

# -- bounds: what a job file may say ------------------------------------------------------------
# Large enough for any real use, small enough that no time computed from them overflows, no wait
# is endless and no loop is unbounded. A value outside is one line at load, from `check`, `run`
# and a reload alike.

#: ``every``: from 10 ms (tests and benchmarks run that fast) to a year.
EVERY_MIN, EVERY_MAX = 0.01, 366 * 86400.0
#: A cron must fire within this many seconds (four years and a day: Feb 29 fires).
CRON_HORIZON = 4 * 366 * 86400.0
#: ``jitter``: at most a day (and never more than an interval job's interval).
JITTER_MAX = 86400.0
#: ``timeout``: at most 10 minutes; a call that takes longer is not an answer.
TIMEOUT_MAX = 600.0
#: ``deadline``, ``stale_after``, ``lockout``: at most a year.
WAIT_MAX = 366 * 86400.0
#: ``retention``: at most a century.
RETENTION_MAX = 100 * 366 * 86400.0
#: ``failover``: from a second to an hour.
FAILOVER_MIN, FAILOVER_MAX = 1.0, 3600.0
#: ``max_response_mb``: up to a gigabyte.
MAX_RESPONSE_MB_MAX = 1024
#: ``rate_limit``/``public_rate_limit``: max and decay at most this.
RATE_MAX = 1_000_000.0
#: ``spool.max_runs``: up to a hundred million.
SPOOL_MAX_RUNS_MAX = 100_000_000
#: Jobs in one file: a thousand times what the public budget serves at one call a second each.
JOBS_MAX = 10_000
#: The job file and key files are read only if they are regular files no larger than this.
JOB_FILE_MAX = 16 * 1024 * 1024
KEY_FILE_MAX = 64 * 1024
#: Kraken's API secret is base64 of 64 bytes (88 characters); its API key is base64 of 42 bytes
#: (56 characters). A key that decodes to this many bytes beside a secret that does not is the
#: two swapped: every private call would fail with EAPI:Invalid key.
SECRET_BYTES = 64
#: YAML aliases in one job file: anchors for shared settings are a handful; an alias bomb is
#: thousands.
ALIASES_MAX = 1000
#: Job and account names: letters, digits, ``_ . -``, at most this long (they are log fields,
#: metric labels and table keys).
NAME_MAX = 100
#: Error text stored in ``runs.error`` and logged, at most (a hostile 20 MB error string is cut).
ERROR_TEXT_MAX = 2000
#: A failure's reason (the short phrase in retry lines), at most.
REASON_MAX = 300

# -- reference data (assets, pairs) ------------------------------------------------------------

#: How often the service asks Kraken for its assets and pairs (and once at start): listings
#: change a few times a month, two public calls a day cost nothing.
REFERENCE_EVERY = 86_400.0
#: How often the service looks whether they are due (a day since the last success): a refresh
#: that failed (the exchange down at start) is tried again within the hour, not the next day.
REFERENCE_CHECK = 3_600.0
#: When a reference call's retries end: the data can wait for the next check, and retrying
#: longer would take the public budget from the file's jobs while the exchange is down.
REFERENCE_DEADLINE = 10.0
#: A store reads the known pairs' names again when a row names one it does not know, at most
#: this often (a new pair's rows are renamed by the refresh that brings it anyway).
PAIR_NAMES_REREAD = 60.0

# -- valuation and the dashboard -----------------------------------------------------------------

#: The currency balance snapshots are valued in (``valuation.quote``): an asset's code or altname.
VALUATION_QUOTE = "USD"
#: Where ``collector dashboard`` serves its page by default (beside the metrics' 9108).
DASHBOARD_PORT = 9109
