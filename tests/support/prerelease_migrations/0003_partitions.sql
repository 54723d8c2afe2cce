-- outbox-relay migration 0003: partitions and leases, so several relays share one outbox.
--
-- Every row gets a partition from its partition key (the first 28 bits of md5(key),
-- modulo the partition count; rows without a key spread by id). Each partition is
-- leased to one relay at a time; a relay claims only rows of partitions it holds,
-- checking the lease in the claim's own transaction.
--
-- The partition count below is fixed when this migration runs
-- (`outbox-relay migrate --partitions N`, default 16). Adding the column rewrites the
-- outbox table once; run it while the table is small or in a quiet moment.

ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS partition integer
    GENERATED ALWAYS AS (
        CASE
            WHEN partition_key IS NULL THEN (id % {partitions})::integer
            ELSE ('x' || substr(md5(partition_key), 1, 7))::bit(28)::integer % {partitions}
        END
    ) STORED;

CREATE INDEX IF NOT EXISTS outbox_partition_pending_idx
    ON {schema}.outbox (partition, id) WHERE dead_at IS NULL;

-- One row per running relay; a relay whose heartbeat is older than its lease is gone.
CREATE TABLE IF NOT EXISTS {schema}.outbox_relays (
    relay_id     text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per partition: who holds it and until when. epoch counts hand-overs.
CREATE TABLE IF NOT EXISTS {schema}.outbox_partitions (
    partition   integer     PRIMARY KEY,
    owner       text,
    lease_until timestamptz,
    epoch       bigint      NOT NULL DEFAULT 0
);

INSERT INTO {schema}.outbox_partitions (partition)
SELECT generate_series(0, {partitions} - 1)
ON CONFLICT (partition) DO NOTHING;
