"""portfolio_value: each balance snapshot's value in one quote currency, exactly (numeric on
PostgreSQL; on SQLite, decimal text through the decimal functions decimal_mul and decimal_sum,
which the sqlite3 shell has and collector adds to its connections)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

The rules are collector/valuation.py's, which the dashboard applies in Python; this migration keeps
its own copy of the view's SQL as valuation.view_sql() wrote it then (tests/test_valuation.py
holds the newest migration to the module's SQL: a change of the view is a new migration).
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SQLITE = """CREATE VIEW portfolio_value AS
WITH
-- The quote (collector run keeps the job file's valuation.quote) and its codes: USD is ZUSD.
quote(name) AS (
  SELECT COALESCE((SELECT value FROM collector_state WHERE name = 'valuation_quote'), 'USD')),
quote_codes(code) AS (
  SELECT name FROM quote UNION SELECT a.asset FROM assets a JOIN quote q ON a.altname = q.name),
xbt(code) AS (SELECT 'XXBT' UNION ALL SELECT 'XBT'),
intervals(minutes) AS (SELECT 1 UNION ALL SELECT 5 UNION ALL SELECT 15 UNION ALL SELECT 30 UNION ALL SELECT 60 UNION ALL SELECT 240 UNION ALL SELECT 1440 UNION ALL SELECT 10080 UNION ALL SELECT 21600),
held(asset) AS (SELECT DISTINCT asset FROM balances),
-- DOT.S, DOT28.S, XBT.M, ETH.F, USD.HOLD: the name of the asset each is a variant of.
variants(asset, name) AS (
  SELECT asset, CASE
    WHEN substr(asset, length(asset) - 4) = '.HOLD' THEN substr(asset, 1, length(asset) - 5)
    WHEN substr(asset, length(asset) - 1) IN ('.S', '.M', '.P', '.F', '.B')
      THEN rtrim(substr(asset, 1, length(asset) - 2), '0123456789') END
  FROM held),
-- What an asset is valued as: itself (step 0), then what it is a variant of (step 1).
candidates(asset, step, code) AS (
  SELECT asset, 0, asset FROM held
  UNION ALL
  SELECT v.asset, 1, COALESCE(
    (SELECT a.asset FROM assets a WHERE a.asset = v.name),
    (SELECT min(a.asset) FROM assets a WHERE a.altname = v.name),
    v.name)
  FROM variants v WHERE v.name <> ''),
-- Its routes in order: it is the quote (rank 0, 3), a direct pair (1, 4), a pair in XBT (2, 5).
routes(asset, rank, pair) AS (
  SELECT c.asset, 3 * c.step, CAST(NULL AS VARCHAR(32)) FROM candidates c
  WHERE c.code IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 1, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 2, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM xbt)
    AND NOT EXISTS (SELECT 1 FROM quote_codes q WHERE q.code IN (SELECT code FROM xbt))),
xbt_pairs(pair) AS (
  SELECT p.pair FROM pairs p
  WHERE p.base IN (SELECT code FROM xbt) AND p.quote IN (SELECT code FROM quote_codes)),
wanted(pair) AS (
  SELECT pair FROM routes WHERE pair IS NOT NULL UNION SELECT pair FROM xbt_pairs),
-- Each wanted pair's sources: its ticker (0), the OHLC intervals it has final candles of.
sources(pair, minutes) AS (
  SELECT w.pair, 0 FROM wanted w WHERE EXISTS (SELECT 1 FROM ticker t WHERE t.pair = w.pair)
  UNION ALL
  SELECT w.pair, i.minutes FROM wanted w CROSS JOIN intervals i
  WHERE EXISTS (
    SELECT 1 FROM ohlc o WHERE o.pair = w.pair AND o.interval = i.minutes AND o.final)),
-- Each balance's price at its snapshot's time: the first route with one, the newest price
-- within a route (a stamp is the price's time, then the price, as text).
priced AS (
  SELECT DISTINCT b.run_id, b.job, b.account, b.taken_at, b.asset, b.amount, (
    SELECT CASE WHEN y.pair IS NULL THEN '1'
      WHEN y.xbt IS NULL THEN substr(y.stamp, 34)
      ELSE decimal_mul(substr(y.stamp, 34), y.xbt) END
    FROM (
      SELECT r.rank, r.pair, s.minutes,
        CASE WHEN s.minutes = 0 THEN (
          SELECT t.taken_at || ' ' || t.last
          FROM ticker t WHERE t.pair = s.pair AND t.taken_at <= b.taken_at
          ORDER BY t.taken_at DESC LIMIT 1)
        ELSE (
          SELECT strftime('%Y-%m-%d %H:%M:%S', o.time, '+' || o.interval || ' minutes') || substr(o.time, 20) || ' ' || o.close
          FROM ohlc o WHERE o.pair = s.pair AND o.interval = s.minutes AND o.final
            AND o.time <= strftime('%Y-%m-%d %H:%M:%S', b.taken_at, '-' || s.minutes || ' minutes') || substr(b.taken_at, 20)
          ORDER BY o.time DESC LIMIT 1) END AS stamp,
        CASE WHEN r.rank IN (2, 5) THEN (
          SELECT substr(x.stamp, 34) FROM (
            SELECT s.pair, s.minutes,
              CASE WHEN s.minutes = 0 THEN (
                SELECT t.taken_at || ' ' || t.last
                FROM ticker t WHERE t.pair = s.pair AND t.taken_at <= b.taken_at
                ORDER BY t.taken_at DESC LIMIT 1)
              ELSE (
                SELECT strftime('%Y-%m-%d %H:%M:%S', o.time, '+' || o.interval || ' minutes') || substr(o.time, 20) || ' ' || o.close
                FROM ohlc o WHERE o.pair = s.pair AND o.interval = s.minutes AND o.final
                  AND o.time <= strftime('%Y-%m-%d %H:%M:%S', b.taken_at, '-' || s.minutes || ' minutes') || substr(b.taken_at, 20)
                ORDER BY o.time DESC LIMIT 1) END AS stamp
            FROM xbt_pairs xp JOIN sources s ON s.pair = xp.pair LIMIT -1 OFFSET 0) x
          WHERE x.stamp IS NOT NULL
          ORDER BY substr(x.stamp, 1, 32) DESC, x.minutes, x.pair LIMIT 1) END AS xbt
      FROM routes r LEFT JOIN sources s ON s.pair = r.pair
      WHERE r.asset = b.asset LIMIT -1 OFFSET 0) y
    WHERE y.pair IS NULL
      OR (y.stamp IS NOT NULL AND (y.rank NOT IN (2, 5) OR y.xbt IS NOT NULL))
    ORDER BY y.rank, substr(y.stamp, 1, 32) DESC, y.minutes, y.pair LIMIT 1) AS price
  FROM balances b)
SELECT p.run_id, p.job, p.account, p.taken_at, q.name AS quote,
  COALESCE(decimal_sum(decimal_mul(p.amount, p.price)), '0') AS value,
  group_concat(CASE WHEN p.price IS NULL AND CAST(p.amount AS REAL) <> 0 THEN p.asset END, ',')
    AS unpriced
FROM priced p CROSS JOIN quote q
GROUP BY p.run_id, p.job, p.account, p.taken_at, q.name"""

POSTGRESQL = """CREATE VIEW portfolio_value AS
WITH
-- The quote (collector run keeps the job file's valuation.quote) and its codes: USD is ZUSD.
quote(name) AS (
  SELECT COALESCE((SELECT value FROM collector_state WHERE name = 'valuation_quote'), 'USD')),
quote_codes(code) AS (
  SELECT name FROM quote UNION SELECT a.asset FROM assets a JOIN quote q ON a.altname = q.name),
xbt(code) AS (SELECT 'XXBT' UNION ALL SELECT 'XBT'),
intervals(minutes) AS (SELECT 1 UNION ALL SELECT 5 UNION ALL SELECT 15 UNION ALL SELECT 30 UNION ALL SELECT 60 UNION ALL SELECT 240 UNION ALL SELECT 1440 UNION ALL SELECT 10080 UNION ALL SELECT 21600),
held(asset) AS (SELECT DISTINCT asset FROM balances),
-- DOT.S, DOT28.S, XBT.M, ETH.F, USD.HOLD: the name of the asset each is a variant of.
variants(asset, name) AS (
  SELECT asset, CASE
    WHEN substr(asset, length(asset) - 4) = '.HOLD' THEN substr(asset, 1, length(asset) - 5)
    WHEN substr(asset, length(asset) - 1) IN ('.S', '.M', '.P', '.F', '.B')
      THEN rtrim(substr(asset, 1, length(asset) - 2), '0123456789') END
  FROM held),
-- What an asset is valued as: itself (step 0), then what it is a variant of (step 1).
candidates(asset, step, code) AS (
  SELECT asset, 0, asset FROM held
  UNION ALL
  SELECT v.asset, 1, COALESCE(
    (SELECT a.asset FROM assets a WHERE a.asset = v.name),
    (SELECT min(a.asset) FROM assets a WHERE a.altname = v.name),
    v.name)
  FROM variants v WHERE v.name <> ''),
-- Its routes in order: it is the quote (rank 0, 3), a direct pair (1, 4), a pair in XBT (2, 5).
routes(asset, rank, pair) AS (
  SELECT c.asset, 3 * c.step, CAST(NULL AS VARCHAR(32)) FROM candidates c
  WHERE c.code IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 1, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM quote_codes)
  UNION ALL
  SELECT c.asset, 3 * c.step + 2, p.pair FROM candidates c JOIN pairs p ON p.base = c.code
  WHERE p.quote IN (SELECT code FROM xbt)
    AND NOT EXISTS (SELECT 1 FROM quote_codes q WHERE q.code IN (SELECT code FROM xbt))),
xbt_pairs(pair) AS (
  SELECT p.pair FROM pairs p
  WHERE p.base IN (SELECT code FROM xbt) AND p.quote IN (SELECT code FROM quote_codes)),
wanted(pair) AS (
  SELECT pair FROM routes WHERE pair IS NOT NULL UNION SELECT pair FROM xbt_pairs),
-- Each wanted pair's sources: its ticker (0), the OHLC intervals it has final candles of.
sources(pair, minutes) AS (
  SELECT w.pair, 0 FROM wanted w WHERE EXISTS (SELECT 1 FROM ticker t WHERE t.pair = w.pair)
  UNION ALL
  SELECT w.pair, i.minutes FROM wanted w CROSS JOIN intervals i
  WHERE EXISTS (
    SELECT 1 FROM ohlc o WHERE o.pair = w.pair AND o.interval = i.minutes AND o.final)),
-- Each balance's price at its snapshot's time: the first route with one, the newest price
-- within a route (a stamp is the price's time, then the price, as text).
priced AS (
  SELECT DISTINCT b.run_id, b.job, b.account, b.taken_at, b.asset, b.amount, (
    SELECT CASE WHEN y.pair IS NULL THEN 1
      WHEN y.xbt IS NULL THEN CAST(substr(y.stamp, 28) AS numeric)
      ELSE (CAST(substr(y.stamp, 28) AS numeric)) * (y.xbt) END
    FROM (
      SELECT r.rank, r.pair, s.minutes,
        CASE WHEN s.minutes = 0 THEN (
          SELECT to_char((t.taken_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || t.last
          FROM ticker t WHERE t.pair = s.pair AND t.taken_at <= b.taken_at
          ORDER BY t.taken_at DESC LIMIT 1)
        ELSE (
          SELECT to_char((o.time + make_interval(mins => o.interval)) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || o.close
          FROM ohlc o WHERE o.pair = s.pair AND o.interval = s.minutes AND o.final
            AND o.time <= b.taken_at - make_interval(mins => s.minutes)
          ORDER BY o.time DESC LIMIT 1) END AS stamp,
        CASE WHEN r.rank IN (2, 5) THEN (
          SELECT CAST(substr(x.stamp, 28) AS numeric) FROM (
            SELECT s.pair, s.minutes,
              CASE WHEN s.minutes = 0 THEN (
                SELECT to_char((t.taken_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || t.last
                FROM ticker t WHERE t.pair = s.pair AND t.taken_at <= b.taken_at
                ORDER BY t.taken_at DESC LIMIT 1)
              ELSE (
                SELECT to_char((o.time + make_interval(mins => o.interval)) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' ' || o.close
                FROM ohlc o WHERE o.pair = s.pair AND o.interval = s.minutes AND o.final
                  AND o.time <= b.taken_at - make_interval(mins => s.minutes)
                ORDER BY o.time DESC LIMIT 1) END AS stamp
            FROM xbt_pairs xp JOIN sources s ON s.pair = xp.pair OFFSET 0) x
          WHERE x.stamp IS NOT NULL
          ORDER BY substr(x.stamp, 1, 26) DESC, x.minutes, x.pair LIMIT 1) END AS xbt
      FROM routes r LEFT JOIN sources s ON s.pair = r.pair
      WHERE r.asset = b.asset OFFSET 0) y
    WHERE y.pair IS NULL
      OR (y.stamp IS NOT NULL AND (y.rank NOT IN (2, 5) OR y.xbt IS NOT NULL))
    ORDER BY y.rank, substr(y.stamp, 1, 26) DESC, y.minutes, y.pair LIMIT 1) AS price
  FROM balances b)
SELECT p.run_id, p.job, p.account, p.taken_at, q.name AS quote,
  COALESCE(sum((p.amount) * (p.price)), 0) AS value,
  string_agg(CASE WHEN p.price IS NULL AND p.amount <> 0 THEN p.asset END, ',' ORDER BY CASE WHEN p.price IS NULL AND p.amount <> 0 THEN p.asset END)
    AS unpriced
FROM priced p CROSS JOIN quote q
GROUP BY p.run_id, p.job, p.account, p.taken_at, q.name"""


def upgrade() -> None:
    bind = op.get_bind()
    # exec_driver_sql: the SQL goes as written (a text() would read ':MI' in a format as a bind).
    bind.exec_driver_sql(POSTGRESQL if bind.dialect.name == "postgresql" else SQLITE)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS portfolio_value")
