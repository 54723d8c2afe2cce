-- outbox-relay migration 0005: fewer indexes for producers to maintain.
--
-- Every row publish() wrote used to update five indexes. The relay's claim walks the
-- primary key in id order, so a second index on id (and one on partition and id) only
-- cost producers. A row due at once now has no available_at (NULL): only delayed and
-- retried rows carry a time, and only they are in the index that finds the next one due.

ALTER TABLE {schema}.outbox ALTER COLUMN available_at DROP NOT NULL;
ALTER TABLE {schema}.outbox ALTER COLUMN available_at DROP DEFAULT;

DROP INDEX IF EXISTS {schema}.outbox_pending_idx;
DROP INDEX IF EXISTS {schema}.outbox_partition_pending_idx;
DROP INDEX IF EXISTS {schema}.outbox_scheduled_idx;

CREATE INDEX IF NOT EXISTS outbox_waiting_idx
    ON {schema}.outbox (available_at, partition_key)
    WHERE available_at IS NOT NULL AND dead_at IS NULL;
