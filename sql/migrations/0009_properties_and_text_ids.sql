-- outbox-relay migration 0009: the AMQP properties a message sets; message ids of any text.
--
-- properties holds the properties besides content type and message id (correlation_id,
-- reply_to, priority, expiration, type, app_id, content_encoding) as one JSON object;
-- NULL for a message that sets none. Nullable without a default, the column is added
-- without rewriting the table.

ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS properties jsonb;

-- A message id is any text AMQP carries (1 to 255 bytes): a team's own event ids
-- (ULIDs, 'order-42-created') as well as UUIDs, which keep their usual text form. This
-- rewrites the table under an exclusive lock, which blocks producers meanwhile: the
-- outbox holds only the rows not published yet, so it takes moments, unless the relay
-- has been down for long (see the upgrading guide).
ALTER TABLE {schema}.outbox ALTER COLUMN message_id TYPE text USING message_id::text;
