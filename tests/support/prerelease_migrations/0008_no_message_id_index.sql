-- outbox-relay migration 0008: the outbox drops the unique index on message_id.
--
-- Measured with pgbench (8 clients, an order insert plus one outbox row, beside a relay
-- draining a backlog of the same table): with the index, producers reached 0.96 x their
-- rate without it (the median of five rounds, each below 1); in another three rounds,
-- 0.955 x against 1.08 x the same transaction writing a plain row instead. The index
-- was a large part of the extra WAL an outbox row writes (an order and an outbox row
-- wrote 1,046 bytes, an order and a plain row 861), and
-- nothing reads it: relays read rows by id, consumers deduplicate on the message id in
-- their inbox, and the index only refused a second row with an id while the first was
-- still in the table (not once it was published), so it never made a message id unique.
-- A message id published twice now goes out twice; a consumer with the inbox handles it
-- once.

ALTER TABLE {schema}.outbox DROP CONSTRAINT IF EXISTS outbox_message_id_key;
