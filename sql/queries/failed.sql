-- Queries of `outbox-relay failed`: rows the relay gave up on (dead_at set).

-- name: matching
-- Dead rows matching the filters, oldest id first; every NULL filter matches everything.
SELECT id, message_id, exchange, routing_key, partition_key, attempts, last_error,
       created_at, dead_at, octet_length(payload) AS payload_bytes, content_type
FROM {schema}.outbox
WHERE dead_at IS NOT NULL
  AND id > %(after_id)s
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(exchange)s::text IS NULL OR exchange = %(exchange)s::text)
  AND (%(partition_key)s::text IS NULL OR partition_key = %(partition_key)s::text)
  AND (%(older_than_s)s::float8 IS NULL
       OR dead_at < now() - make_interval(secs => %(older_than_s)s::float8))
ORDER BY id
LIMIT %(limit)s

-- name: show
SELECT id, message_id, exchange, routing_key, partition_key, attempts, last_error,
       created_at, dead_at, octet_length(payload) AS payload_bytes, content_type,
       headers, coalesce(properties, '{}'::jsonb) AS properties, payload
FROM {schema}.outbox
WHERE id = %(id)s

-- name: retry
-- A fresh set of attempts, due now; the last error stays for the record. Like every writer
-- that makes rows due, it wakes a waiting relay in the same transaction (outbox_wake(),
-- evaluated once as an initPlan), so the rows go out now, not at the backstop poll.
UPDATE {schema}.outbox
SET dead_at = NULL, attempts = 0, available_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND dead_at IS NOT NULL
  AND (SELECT {schema}.outbox_wake()) IS NOT NULL

-- name: purge
DELETE FROM {schema}.outbox
WHERE id = ANY(%(ids)s::bigint[]) AND dead_at IS NOT NULL
