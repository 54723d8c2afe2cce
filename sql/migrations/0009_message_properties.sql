-- outbox-relay migration 0009: the AMQP properties a message sets, and message ids of any text.
--
-- properties holds the properties besides content type and message id (correlation_id,
-- reply_to, priority, expiration, type, app_id, content_encoding) as one JSON object;
-- NULL for a message that sets none. Nullable without a default, the column is added
-- without rewriting the table.

ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS properties jsonb;
