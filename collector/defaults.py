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

# -- numbers from outside (collector/numbers.py) -------------------------------------------------

#: Significant digits a number from outside may have (an answer's price, amount or time, a state
#: file's field). Kraken sends at most about 20 (a balance of 10 decimals, a price of 8), so 40 is
#: twice what it needs while keeping every stored text short: ``1E+99999999`` is 11 bytes whose
#: plain notation (SQLite keeps exact numbers as plain text) is 100 MB.
NUMBER_DIGITS = 40
#: Largest power of ten (the adjusted exponent, either sign) of such a number: Kraken's smallest
#: unit is 1e-10 and its largest volumes about 1e15. Within +-40 a number's plain text is at most
#: 82 characters (SQLite's text column), PostgreSQL's NUMERIC (131,072 digits before the point,
#: 16,383 after) holds it, and valuation's exact products and sums of such numbers need a few
#: hundred digits at most, far inside its 2,000 (so no value ever fails as "Inexact").
NUMBER_EXPONENT = 40
#: Characters of a number's text read at most: the longest bounded number written out in full
#: (sign, point, 39 zeros, 40 digits) is 82; anything longer is refused before it is parsed.
NUMBER_TEXT = 100
#: Seconds since 1970 a time from outside may be, exclusive: the year 5138, far past any real
#: entry and far inside ``datetime``'s year 9999, so no time from an answer overflows a date.
MAX_SECONDS = 10**11
#: The largest whole number a BIGINT column holds (a trade id, a count of trades).
MAX_BIGINT = 2**63 - 1
#: The largest whole number an INTEGER column holds (a candle's count of trades).
MAX_INTEGER = 2**31 - 1

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
#: The page cache of each of the service's SQLite connections (KiB; SQLite's own default is
#: 2,000). It fills as the database grows, so with SQLite's default a 1,000-job service's RSS
#: grew ~6 MB over its first 50,000 runs before it levelled (three pooled connections); the
#: writes it serves append runs and probe keys near the end of their indexes, which a small
#: cache holds (the capacity and ingest benches measured no loss: docs/benchmarks.md, "Soak").
SQLITE_CACHE_KIB = 512
#: glibc's malloc arenas for ``collector run`` (glibc makes up to 8 per core, one per thread
#: that meets a busy one): each keeps the memory its threads freed, so with 16 run threads RSS
#: kept growing for ~120,000 runs. Two, as the image's ``MALLOC_ARENA_MAX=2``, which this is
#: for a pip install; that variable, when set, wins.
MALLOC_ARENAS = 2
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
#: The furthest ahead of the clock a nonce mark read from a state file or a lease row may be
#: (seconds of nonces). Ours lead it by ``NONCE_LEASE_SECONDS`` plus the slack of a few crashes;
#: a mark further ahead was not written by a collector, and using it would make every later nonce
#: of the key, from any program, too low for Kraken for as long as it leads.
NONCE_AHEAD_MAX = 24 * 3600
#: Kraken reads a nonce as an unsigned 64-bit integer, PostgreSQL's ``bigint`` is signed: a mark
#: stays under both.
NONCE_MAX = 2**63 - 1
#: A state file (nonce marks, a key's budget) is a few hundred bytes; one larger than this (a
#: thousand leases) is not ours, and is not read into memory.
STATE_FILE_MAX_BYTES = 64 * 1024

#: How many (file, problem) warnings about state files a process remembers having said: each is
#: said once, but a value rewritten wrong at every turn must not grow that memory for months.
STATE_WARNINGS_KEPT = 1_000

#: The name of the implicit account: a job file's top-level key (``kraken.key`` / ``key_file``)
#: with no ``accounts:`` section; rows of its private jobs carry it in their ``account`` column.
DEFAULT_ACCOUNT = "default"

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
#: The listener answers each route (``/healthz``, ``/metrics``, the page at ``/``) in at most this
#: many threads at a time, its own: a page being drawn never holds up a probe or a scrape (a
#: probe takes milliseconds, a scrape of a thousand jobs a fraction of a second).
LISTENER_SLOTS = 2
#: A connection must have sent its whole request head within this many seconds, or it is cut:
#: a probe or a browser sends it at once, and an idle connection must not hold anything long.
LISTENER_HEAD_TIMEOUT = 2.0
#: ...and at most this many bytes of it (a browser's head is under 2 KB): 431 otherwise.
LISTENER_MAX_HEAD = 16_384
#: Connections still sending their head, at most (each a descriptor, no thread); one more cuts
#: the oldest, so a crowd of idle peers can't keep a probe from being read.
LISTENER_READING = 64
#: An answer is sent within this many seconds however slowly its peer reads, or the connection
#: is cut; at most ``LISTENER_SENDING`` answers are being sent (one more cuts the oldest), which
#: bounds the memory they hold. Sending holds no slot and no thread.
LISTENER_TIMEOUT = 10.0
LISTENER_SENDING = 32
#: Host names allowed in ``metrics.allowed_hosts``, at most (a list, not a database).
ALLOWED_HOSTS_MAX = 64
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

# -- streams (Kraken's WebSocket v2 public feed) ------------------------------------------------

#: Kraken's public WebSocket v2 endpoint.
WS_URL = "wss://ws.kraken.com/v2"
#: A connection with no message for this long is stale and replaced: Kraken sends a heartbeat
#: about once a second on a subscribed connection, so ten missed ones mean it is gone (a stall or a
#: dead TCP connection that never closed), not slow.
WS_STALE_AFTER = 10.0
#: Requests (subscribe, unsubscribe) sent per second at most. Kraken publishes no number and
#: answers a burst with ``Exceeded msg rate``; a resubscribe storm after a reconnect is the usual
#: cause, and 5 a second with 50 symbols a request subscribes every listed pair in a few seconds.
WS_MESSAGES_PER_SECOND = 5.0
#: Symbols in one subscribe request: each is acknowledged on its own, and a smaller batch keeps
#: one refused request from costing many pairs' snapshots at once.
WS_BATCH = 50
#: Reconnect delays: the first, doubling (full jitter) up to the cap, so a fleet of collectors
#: cut off together by Cloudflare does not come back together; a minute at most is short next to
#: the trades REST fills in after a gap.
WS_BACKOFF_FIRST, WS_BACKOFF_CAP = 1.0, 60.0
#: How long connecting (TCP, TLS, the HTTP upgrade) may take before it is a failure.
WS_OPEN_TIMEOUT = 10.0
#: How long a close waits for the peer's close frame before dropping the TCP connection, so a
#: stop never hangs on a peer that stopped answering.
WS_CLOSE_TIMEOUT = 2.0
#: The largest message accepted: a depth-1000 book snapshot is about 100 KB and the instrument
#: snapshot of ~750 pairs well under 1 MB; anything bigger is not Kraken's and closes the
#: connection (1009) instead of growing memory.
WS_MAX_MESSAGE = 4 * 2**20
#: Messages websockets buffers before it stops reading the socket (memory is at most this times
#: the largest message; TCP's own flow control then holds Kraken back).
WS_MAX_QUEUE = 64
#: ``Already subscribed`` answered to a resubscription this many times in a row for one symbol is
#: a failure, not a loop.
WS_RESUBSCRIBE_TRIES = 3
#: Holes in one pair's trade-id sequence waiting for REST at most: a feed that keeps dropping
#: trades must not grow memory; a hole beyond this widens the newest one queued (REST serves the
#: trades the feed did deliver in between again, stored once by their key), so none is lost.
WS_GAP_QUEUE = 8
#: REST Trades pages (1000 trades each) one hole may take: a minute's cut of the busiest pair is
#: a few pages; a hole longer than this is a ``gaps`` row, not an hour of the public budget.
WS_GAP_PAGES = 20
#: Attempts at one page before the hole is a ``gaps`` row (transient failures only; an answer
#: that retrying cannot change is a row at once).
WS_GAP_ATTEMPTS = 3
#: Seconds one hole may take in all, waits for the public budget included: past it, what is
#: still missing is a ``gaps`` row, so a REST outage never holds up the holes behind it.
WS_GAP_DEADLINE = 120.0

#: Symbols on one connection at most; a stream with more is split across connections. Kraken
#: publishes no limit, but one connection is one TCP stream read by one thread: with ~750 pairs'
#: books on it, a cut costs every pair's snapshot and a resubscription of 15 requests (3 s at the
#: request rate) before any data flows again. 200 keeps a cut to a quarter of the pairs and the
#: resubscription under a second (4 requests of ``WS_BATCH``).
WS_SYMBOLS_PER_CONNECTION = 200
#: A stream's rows are stored in batch runs of at most this many rows: a batch's fixed cost (its
#: runs and ``stream_connections`` rows, the transaction: about 3 ms on SQLite) stays under a
#: microsecond a row, and a transaction of 5,000 rows takes SQLite about 20 ms. A quiet stream's
#: batches are cut by their age (below) long before.
WS_BATCH_ROWS = 5_000
#: ...or this many messages: a book's messages change levels but make rows only every
#: ``snapshot_every``, so counting them as rows cut a batch of a few rows every thousand messages.
WS_BATCH_MESSAGES = 20_000
#: ...or once a batch is this old: a quiet stream's rows are in the database within a second or
#: two of their message (the lag the metrics show), and a busy one writes a few runs a second.
WS_BATCH_SECONDS = 1.0
#: A symbol the ``pairs`` table does not know yet (listed since the last AssetPairs) makes the
#: recorder ask AssetPairs itself, at most this often: one public call a minute at worst, next to
#: the budget's one a second, and a new pair's stream starts within a minute of its listing.
WS_PAIRS_REFRESH = 60.0
#: A candle is made final this long after its interval ended by our clock, when no later candle
#: came: Kraken may still send the closing trade's update a moment late, and a final candle is
#: never updated again.
WS_CANDLE_GRACE = 5.0
#: Batches whose lags wait for the writer's word that they are stored: a database away for long
#: must not grow memory (one a second a connection is about three hours of them).
WS_STORED_PENDING = 10_000
#: A stream's failures of one kind (a refused subscription, ``Exceeded msg rate``, a message that
#: is not one) are a failed run row at most this often (seconds): a feed sending garbage at wire
#: speed must not write a row a message. The ones in between are counted in the next row's error.
WS_FAILURE_ROW_EVERY = 1.0
#: ...and the length its message is cut to there (a refusal names a symbol; a bad message is shown).
WS_FAILURE_TEXT = 500

#: The book depths Kraken's v2 ``book`` channel takes (it refuses any other).
WS_DEPTHS: tuple[int, ...] = (10, 25, 100, 500, 1000)
#: A book stream's depth when the job file names none: Kraken's own default, and the depth its
#: checksum covers, so nothing is kept that is not verified.
WS_DEPTH = 10
#: How often a book's top levels are stored by default: a minute of depth-10 snapshots of a pair
#: is ~29k rows a day, a history fine enough for spreads and depth charts.
WS_SNAPSHOT_EVERY = 60.0
#: A snapshot at least this far apart (a second: the book's own updates arrive about that often,
#: so more would store the same levels again) and at most a day (a rarer one records no history).
WS_SNAPSHOT_EVERY_MIN, WS_SNAPSHOT_EVERY_MAX = 1.0, 86400.0
#: A stream's ``stale_after`` from a second (Kraken's heartbeat) to a day (a quiet pair's trade
#: stream may go hours without a trade; beyond a day, staleness says nothing).
WS_STALE_AFTER_MIN, WS_STALE_AFTER_MAX = 1.0, 86400.0
#: Streams in one job file at most: each is a metric label and a status line, and ~750 pairs of
#: four channels fit in a few; more is a generated file gone wrong.
STREAMS_MAX = 1_000
#: A stream with no data yet since the service started it (or a reload added or changed it) is
#: ``starting``, and healthy, for this long (or its ``stale_after``, if longer): a first connect
#: refused backs off up to ``WS_BACKOFF_CAP`` (a minute) before the next, and subscribing every
#: listed pair at ``WS_MESSAGES_PER_SECOND`` takes seconds more; two minutes of neither is a
#: stream that is not coming, not one on its way.
WS_STARTING_GRACE = 120.0

# -- valuation and the dashboard -----------------------------------------------------------------

#: The currency balance snapshots are valued in (``valuation.quote``): an asset's code or altname.
VALUATION_QUOTE = "USD"
#: A price older than this at a snapshot's time does not value it (``valuation.max_price_age``):
#: a pair that stopped trading, or a ticker job removed long ago, would value today's holdings at
#: a price nobody can get. A day covers the daily candles' close and a ticker job paused a while.
VALUATION_MAX_PRICE_AGE = 86_400.0
#: Its bounds: a minute (a ticker job every 30 s still values), a year (a longer age is no limit).
VALUATION_MAX_PRICE_AGE_MIN = 60.0
VALUATION_MAX_PRICE_AGE_MAX = 366 * 86_400.0
#: Where ``collector dashboard`` serves its page by default (beside the metrics' 9108).
DASHBOARD_PORT = 9109

#: A stream connection's failures of one kind (a message that is not one, a handler's error, a
#: refusal) are a log line at most this often (seconds), the ones in between counted in the next
#: line: a feed sending garbage at wire speed wrote 60,000 lines in 3 s, a disk a day. Each is
#: still an event (counted in the metrics), and a failed run row as WS_FAILURE_ROW_EVERY allows.
WS_FAILURE_LOG_EVERY = 1.0

#: The levels a side one ``book`` message may carry: the deepest book Kraken serves (a snapshot
#: holds at most its depth, an update fewer). More is refused before any is read: inserting
#: 150,000 levels best first (a 4 MB message) took 4.5 s of the connection's thread.
WS_BOOK_LEVELS = 1000

#: The farthest a pair's ``trade_id`` may move from the last one seen and still be its sequence:
#: the busiest pair trades a few hundred thousand times a day, so ten million is weeks of a cut
#: feed. A trade farther ahead is refused (a hole of 10**18 trades for REST to fill, and every
#: later trade taken as one seen already, dropped, until a restart); one farther behind means the
#: last was not of the sequence, which starts again from it.
WS_TRADE_ID_JUMP = 10_000_000

#: How far a stream message's own time (a trade's, a ticker's, a candle's beginning) may be past
#: its receipt by this machine's clock: clocks differ by seconds, not an hour. Farther is refused
#: as that entry: one candle of the year 4000 held as the pair's open one kept every later candle
#: from ever being final.
WS_AHEAD = 3600.0
