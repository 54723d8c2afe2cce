-- outbox-relay migration 0002: the consumers' inbox, for exactly-once effects.
--
-- A consumer inserts (consumer, message_id) in the same transaction as its handler's
-- work. The primary key makes a second delivery of the same message a no-op: the insert
-- finds the row, the handler is skipped and the delivery acked. Every statement is
-- idempotent, like 0001.

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, message_id)
);

-- Purging walks the oldest rows first, in batches.
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx
    ON {schema}.inbox (processed_at);
