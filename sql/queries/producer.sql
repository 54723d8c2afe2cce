-- Queries run on the application's own connection, inside its transaction.

-- name: insert_messages
-- One round trip for one message or many.
INSERT INTO {schema}.outbox
    (message_id, exchange, routing_key, payload, content_type, headers, partition_key,
     available_at)
SELECT m.message_id, m.exchange, m.routing_key, m.payload, m.content_type, m.headers,
       m.partition_key, now() + make_interval(secs => m.delay_s)
FROM unnest(%(message_ids)s::uuid[], %(exchanges)s::text[], %(routing_keys)s::text[],
            %(payloads)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
            %(partition_keys)s::text[], %(delays)s::float8[])
    AS m(message_id, exchange, routing_key, payload, content_type, headers, partition_key,
         delay_s)
