-- Heartbeats and partition leases. {schema} is the quoted schema; values are parameters.

-- name: lease_transaction
-- The first statement of a heartbeat's (or a release's) transaction: a relay frozen inside
-- it (SIGSTOP, a VM pause) must not hold its lease rows locked, and so its partitions,
-- forever; the server ends the transaction after the lease time, as it ends a claim's.
SELECT set_config('idle_in_transaction_session_timeout', %(timeout_ms)s, true)

-- name: heartbeat
-- Record this relay as alive, extend the leases it holds, and report who is alive.
WITH beat AS (
    INSERT INTO {schema}.outbox_relays AS r (relay_id, hostname, pid)
    VALUES (%(relay_id)s, %(hostname)s, %(pid)s)
    ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = now()
),
renewed AS (
    UPDATE {schema}.outbox_partitions
    SET lease_until = now() + make_interval(secs => %(ttl_s)s)
    WHERE owner = %(relay_id)s AND lease_until > now()
    RETURNING partition
)
SELECT
    coalesce((SELECT array_agg(partition ORDER BY partition) FROM renewed), '{}') AS owned,
    coalesce((SELECT array_agg(relay_id ORDER BY relay_id) FROM {schema}.outbox_relays
              WHERE heartbeat_at > now() - make_interval(secs => %(ttl_s)s)), '{}') AS live,
    (SELECT count(*) FROM {schema}.outbox_partitions)::integer AS partitions

-- name: acquire
-- Take up to %(wanted)s partitions that nobody holds or whose lease ran out. A partition
-- locked by its owner's open claim is skipped: it cannot change hands mid-batch.
UPDATE {schema}.outbox_partitions AS p
SET owner = %(relay_id)s,
    lease_until = now() + make_interval(secs => %(ttl_s)s),
    epoch = p.epoch + 1
WHERE p.partition IN (
    SELECT partition FROM {schema}.outbox_partitions
    WHERE owner IS NULL OR lease_until IS NULL OR lease_until <= now()
    ORDER BY partition
    LIMIT %(wanted)s
    FOR UPDATE SKIP LOCKED
)
RETURNING p.partition

-- name: release
UPDATE {schema}.outbox_partitions
SET owner = NULL, lease_until = NULL
WHERE owner = %(relay_id)s AND partition = ANY(%(partitions)s::integer[])

-- name: release_all
UPDATE {schema}.outbox_partitions SET owner = NULL, lease_until = NULL
WHERE owner = %(relay_id)s

-- name: unregister
DELETE FROM {schema}.outbox_relays WHERE relay_id = %(relay_id)s

-- name: forget_stale_relays
-- Relays gone for an hour are only clutter in `outbox-relay status`.
DELETE FROM {schema}.outbox_relays WHERE heartbeat_at < now() - interval '1 hour'
