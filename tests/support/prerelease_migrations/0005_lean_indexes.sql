-- outbox-relay migration 0005: fewer indexes for producers to maintain.
--
-- Every row publish() wrote used to update five indexes. The relay's claim reads the
-- primary key in id order (its session turns sorting off, see sql/queries/relay.sql),
-- so a second index on id, and one on (partition, id), only cost producers. A row due
-- at once has available_at = created_at; only delayed and retried rows (available_at
-- later than created_at) are in the index that finds the next one due, so producers of
-- ordinary rows never touch it.

DROP INDEX IF EXISTS {schema}.outbox_pending_idx;
DROP INDEX IF EXISTS {schema}.outbox_partition_pending_idx;
DROP INDEX IF EXISTS {schema}.outbox_scheduled_idx;

CREATE INDEX IF NOT EXISTS outbox_waiting_idx
    ON {schema}.outbox (available_at, partition_key)
    WHERE available_at > created_at AND dead_at IS NULL;
