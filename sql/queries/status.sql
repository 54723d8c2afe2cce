-- Queries of `outbox-relay status`: read-only, cheap enough to run from a probe.

-- name: totals
SELECT
    count(*) FILTER (WHERE dead_at IS NULL) AS pending,
    count(*) FILTER (WHERE dead_at IS NULL AND available_at <= now()) AS due,
    count(*) FILTER (WHERE dead_at IS NULL AND attempts > 0) AS retrying,
    count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
    -- A created_at of '-infinity' (written with SQL) cannot be subtracted from.
    extract(epoch FROM now() - min(created_at) FILTER (
        WHERE dead_at IS NULL AND isfinite(created_at)))::float8 AS oldest_pending_s
FROM {schema}.outbox

-- name: relays
SELECT r.relay_id, r.hostname, r.pid,
       extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_s,
       coalesce(array_agg(p.partition ORDER BY p.partition)
                FILTER (WHERE p.partition IS NOT NULL), '{}') AS partitions
FROM {schema}.outbox_relays AS r
LEFT JOIN {schema}.outbox_partitions AS p
       ON p.owner = r.relay_id AND p.lease_until > now()
GROUP BY r.relay_id, r.hostname, r.pid, r.heartbeat_at
ORDER BY r.relay_id

-- name: partitions
SELECT p.partition,
       CASE WHEN p.lease_until > now() THEN p.owner END AS owner,
       greatest(extract(epoch FROM p.lease_until - now()), 0)::float8 AS lease_left_s,
       count(o.id) AS pending,
       extract(epoch FROM now() - min(o.created_at) FILTER (WHERE isfinite(o.created_at)))::float8
           AS oldest_pending_s
FROM {schema}.outbox_partitions AS p
LEFT JOIN {schema}.outbox AS o
       ON {schema}.outbox_partition(
              o.id, o.partition_key,
              (SELECT count(*) FROM {schema}.outbox_partitions)::integer) = p.partition
      AND o.dead_at IS NULL
GROUP BY p.partition, p.owner, p.lease_until
ORDER BY p.partition
