-- outbox-relay migration 0004: what the opt-in order gate (`run --order-gate`) needs.
--
-- Ids are taken at insert, not at commit: when two transactions write the same key at
-- once, the later id can commit first. inserted_at is the wall-clock moment of the
-- insert; a transaction that could still commit a smaller id must have started before
-- it, so once no writing transaction that old is running, the row can go out in order.

ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS inserted_at timestamptz
    NOT NULL DEFAULT clock_timestamp();
