-- Queries of the consumer SDK. {schema} is replaced by the quoted schema name.

-- name: inbox_insert
-- The first statement of every handler transaction. No row back: a duplicate.
-- A concurrent delivery of the same message waits here until the other commits or rolls
-- back, for %(lock_wait)s at most (then 55P03, lock_not_available: the delivery goes back
-- to the queue, unhandled); the handler's statements then wait as the session's
-- lock_timeout, %(lock_wait_after)s, says. Both settings in this one round trip.
-- Returns the server process running the transaction and when the transaction began:
-- behind a connection pooler both change from one transaction to the next.
INSERT INTO {schema}.inbox (consumer, message_id)
SELECT %(consumer)s, %(message_id)s
FROM (SELECT set_config('lock_timeout', %(lock_wait)s, true)) AS lock_wait
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING pg_backend_pid(), now(), set_config('lock_timeout', %(lock_wait_after)s, true)

-- name: lock_timeout
-- The session's lock_timeout (the role's or the database's default), read at connect.
SELECT current_setting('lock_timeout')

-- name: inbox_purge
-- One batch of rows older than the retention window; the caller repeats until it is short.
DELETE FROM {schema}.inbox
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {schema}.inbox
    WHERE processed_at < now() - make_interval(secs => %(older_than_s)s)
    ORDER BY processed_at
    LIMIT %(batch)s
))

-- name: terminate_backend
-- Ends a timed-out handler's session: its transaction rolls back and its locks go. Only
-- while that transaction still runs there: behind a pooler, once it ended, the server
-- session may already run another client's.
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE pid = %(pid)s AND xact_start = %(xact_start)s

-- name: inbox_check
-- At start and while deliveries are paused: the database answers and the inbox exists.
SELECT 1 FROM {schema}.inbox LIMIT 0

-- name: outbox_last_id
-- outbox_relay.consumer.testing: the newest outbox row before a handler runs on trial.
SELECT coalesce(max(id), 0) FROM {schema}.outbox

-- name: outbox_written_since
-- outbox_relay.consumer.testing: the rows written after it (in the trial's transaction).
SELECT message_id, exchange, routing_key, payload, content_type, headers, partition_key,
       properties, extract(epoch FROM available_at - created_at)::float8 AS delay_s
FROM {schema}.outbox
WHERE id > %(after)s
ORDER BY id
