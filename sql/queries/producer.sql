-- Queries run on the application's own connection, inside its transaction.

-- name: insert_message
-- One message (publish). available_at equals created_at unless the message is delayed,
-- which keeps it out of outbox_waiting_idx.
INSERT INTO {schema}.outbox
    (message_id, exchange, routing_key, payload, content_type, headers, partition_key,
     available_at, properties)
VALUES (%(message_id)s::text, %(exchange)s::text, %(routing_key)s::text, %(payload)s::bytea,
        %(content_type)s::text, %(headers)s::jsonb, %(partition_key)s::text,
        now() + make_interval(secs => %(delay_s)s::float8), %(properties)s::jsonb)

-- name: insert_messages
-- Many messages (publish_many) in one round trip.
INSERT INTO {schema}.outbox
    (message_id, exchange, routing_key, payload, content_type, headers, partition_key,
     available_at, properties)
SELECT m.message_id, m.exchange, m.routing_key, m.payload, m.content_type, m.headers,
       m.partition_key, now() + make_interval(secs => m.delay_s), m.properties
FROM unnest(%(message_ids)s::text[], %(exchanges)s::text[], %(routing_keys)s::text[],
            %(payloads)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
            %(partition_keys)s::text[], %(delays)s::float8[], %(properties)s::jsonb[])
    AS m(message_id, exchange, routing_key, payload, content_type, headers, partition_key,
         delay_s, properties)

-- name: wake
-- Appended to the insert while a relay may be waiting: WITH inserted AS (insert) <this>.
-- NOTIFY if a relay waits; tells publish() whether one may (see sql/schema.sql).
SELECT {schema}.outbox_wake(%(wake_scheduled)s::boolean) AS relay_may_wait
