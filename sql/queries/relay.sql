-- Queries of the relay. Each block starts with `-- name: NAME`; {schema} is replaced by
-- the quoted schema name, values are psycopg parameters.

-- name: claim_batch
-- Due rows of the partitions this relay holds, in id order. The lease is checked and
-- share-locked in the same transaction, so a partition cannot change hands while its
-- rows are being published (fencing). A key whose earliest pending row is waiting
-- (retry backoff or a delay) is held back from that row on, so a failing row delays
-- only its own key.
-- The batch's payloads stop at max_bytes (the first row always comes, whatever its
-- size). A claim cannot lock only what fits (FOR UPDATE and window functions do not
-- mix in one query level): the rows past the budget stay locked until the claim ends
-- but do not come back; each row returned carries how many rows the claim locked.
WITH owned AS (
    SELECT partition FROM {schema}.outbox_partitions
    WHERE owner = %(relay_id)s AND lease_until > now()
    FOR SHARE
),
held AS (
    SELECT partition_key, min(id) AS first_id
    FROM {schema}.outbox
    -- available_at > created_at: the rows of the partial index outbox_waiting_idx
    WHERE dead_at IS NULL AND available_at > now() AND available_at > created_at
      AND partition_key IS NOT NULL
    GROUP BY partition_key
),
claimed AS MATERIALIZED (
    -- Empty headers come back as NULL: most rows have none, and decoding '{}' per row
    -- cost as much as the rest of the row.
    SELECT o.id, o.message_id, o.exchange, o.routing_key, o.payload, o.content_type,
           nullif(o.headers, '{}'::jsonb) AS headers, o.partition_key, o.created_at,
           o.attempts, o.properties, octet_length(o.payload) AS size
    FROM {schema}.outbox AS o
    -- One partition per row, looked up in the array of those held: as a join, the
    -- planner compared each row with the held partitions one by one, computing the
    -- key's md5 every time (27 ms of a 45 ms claim of 4000 keyed rows).
    WHERE {schema}.outbox_partition(o.id, o.partition_key, %(partitions)s)
          = ANY (ARRAY(SELECT partition FROM owned))
      AND o.dead_at IS NULL
      AND o.available_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM held AS h
          WHERE h.partition_key = o.partition_key AND h.first_id < o.id
      )
      -- The order gate (opt-in): a keyed row waits until no writing transaction that
      -- started before its insert is still running (only such a transaction can still
      -- commit a smaller id), or until it has waited long enough.
      AND (NOT %(order_gate)s
           OR o.partition_key IS NULL
           OR o.inserted_at < coalesce(
                  (SELECT min(a.xact_start) FROM pg_stat_activity AS a
                   WHERE a.datname = current_database()
                     AND a.backend_xid IS NOT NULL
                     -- this relay's own work sessions: one may hold the batch in flight
                     AND a.pid <> ALL(%(relay_pids)s::integer[])),
                  'infinity')
           OR o.created_at < now() - make_interval(secs => %(order_gate_max_wait_s)s))
    ORDER BY o.id
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
)
SELECT id, message_id, exchange, routing_key, payload, content_type, headers,
       partition_key, created_at, attempts, properties, locked
FROM (
    -- A running total: once past the budget, every later row is too.
    SELECT claimed.*,
           row_number() OVER running = 1 OR sum(size) OVER running <= %(max_bytes)s AS taken,
           count(*) OVER () AS locked
    FROM claimed
    WINDOW running AS (ORDER BY id)
) AS budgeted
WHERE taken
ORDER BY id

-- name: delete_published
DELETE FROM {schema}.outbox WHERE id = ANY(%(ids)s::bigint[])

-- name: record_failures
-- One statement for all failed rows of a batch: attempts + 1, the error, the next try.
-- attempts stops at the integer maximum: a row written with SQL at that maximum must
-- fail like any other, not make the statement (and the batch's settle) fail.
UPDATE {schema}.outbox AS o
SET attempts = least(o.attempts, 2147483646) + 1,
    last_error = f.error,
    available_at = now() + make_interval(secs => f.delay_s),
    dead_at = CASE WHEN f.dead THEN now() END
FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(delays)s::float8[], %(dead)s::boolean[])
    AS f(id, error, delay_s, dead)
WHERE o.id = f.id

-- name: record_failure_dead
-- The fallback for a row whose failure the database would not record as given (see
-- PostgresClaim.settle): dead, with the error and why it could not be recorded.
UPDATE {schema}.outbox
SET attempts = least(attempts, 2147483646) + 1,
    last_error = %(error)s,
    dead_at = now()
WHERE id = %(id)s

-- name: can_see_all_sessions
-- The order gate reads other sessions' transaction starts from pg_stat_activity.
SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS allowed

-- name: configure_work_session
-- For the session, or (local) for the transaction begun by this statement: behind a
-- transaction-mode pooler, each claim's, since its next transaction may run on another
-- server session. Returns the server process, which the order gate must not wait for.
-- A relay frozen inside its claim (SIGSTOP, a VM pause) must not hold its partitions
-- forever: the server ends such a transaction after the lease time.
-- enable_sort off: the claim must read the first due rows in id order from an index.
-- A queue table churns faster than autoanalyze; with stale or no statistics the planner
-- takes `dead_at IS NULL` for 0.5 % of the rows and prefers to sort the whole backlog on
-- every claim (measured: 43 ms a claim at 30k rows, and growing with the backlog).
-- jit off: a sort the claim cannot avoid (the byte budget's running total over the
-- claimed rows) then carries the huge cost that enable_sort off adds, and that cost made
-- PostgreSQL compile the claim with JIT: 300 ms a claim instead of 0.5 ms.
-- work_mem: the claimed rows pass through a CTE and that sort with their payloads; at
-- the default 4 MB, 4000 rows of 1.5 kB spilled 6 MB to temporary files per claim.
-- enable_seqscan off: psycopg prepares a statement at its sixth execution, and PostgreSQL
-- may then keep one generic plan for it until the table is vacuumed or analyzed. Made
-- while the outbox held a few rows, the settle DELETE's plan was a sequential scan, and
-- every row deleted since stays in the table until vacuum: after 3000 batches of 4 rows
-- it read 992 pages instead of 10, and the work session's CPU per batch had grown from
-- about 1 to 2.1-3.3 ms (no autovacuum; with this setting it stayed at 0.6-1.3 ms).
-- Statements that no index serves (the leases' lookups by owner) still scan: the setting
-- makes a scan dearer, it does not forbid one.
-- plan_cache_mode force_generic_plan: with the settings above every plan of these
-- statements has the same shape whatever their values, but PostgreSQL compares each
-- custom plan's cost with the generic one's and kept planning anew: the settle's DELETE
-- at every batch (3995 of 4000), and the claim at 42 % of the claims of keyed rows,
-- 0.2 ms a time on the wake-up path. Behind a transaction-mode pooler nothing is
-- prepared and the setting changes nothing.
SELECT set_config('idle_in_transaction_session_timeout', %(timeout_ms)s, %(local)s),
       set_config('enable_sort', 'off', %(local)s),
       set_config('enable_seqscan', 'off', %(local)s),
       set_config('jit', 'off', %(local)s),
       set_config('work_mem', '32MB', %(local)s),
       set_config('plan_cache_mode', 'force_generic_plan', %(local)s),
       pg_backend_pid()

-- name: listener_forget_gone
-- Relays that died while waiting leave their flag behind; their sessions are gone.
DELETE FROM {schema}.outbox_listener AS l
WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = l.backend_pid)

-- name: listener_set
-- Sets or clears this relay's wake-up flag; returns seconds until the next scheduled row
-- (a row due at 'infinity' never is, and cannot be subtracted from).
WITH flag AS (
    INSERT INTO {schema}.outbox_listener AS l (backend_pid, waiting, updated_at)
    VALUES (pg_backend_pid(), %(waiting)s, now())
    ON CONFLICT (backend_pid) DO UPDATE SET waiting = excluded.waiting, updated_at = now()
)
SELECT extract(epoch FROM min(available_at) - now())::float8 AS next_in_s
FROM {schema}.outbox
WHERE dead_at IS NULL AND available_at > now() AND available_at > created_at
  AND available_at < 'infinity'

-- name: next_due
-- Seconds until the next scheduled row, read while the flag stays as it is. A row due
-- at 'infinity' never is (and cannot be subtracted from).
SELECT extract(epoch FROM min(available_at) - now())::float8 AS next_in_s
FROM {schema}.outbox
WHERE dead_at IS NULL AND available_at > now() AND available_at > created_at
  AND available_at < 'infinity'

-- name: listener_remove
DELETE FROM {schema}.outbox_listener WHERE backend_pid = pg_backend_pid()
