-- outbox-relay migration 0008: the outbox drops the unique index on message_id.
--
-- Measured with pgbench (8 clients, an order insert plus one outbox row, beside a relay
-- draining a backlog of the same table; three rounds): against the same transaction
-- writing a plain row instead, producers reached 0.955 x with the index and 1.08 x
-- without it. The index was the largest part of the WAL an outbox row writes, and
-- nothing reads it: relays read rows by id, consumers deduplicate on the message id in
-- their inbox, and the index only refused a second row with an id while the first was
-- still waiting (not once it was published), so it never made a message id unique.
-- A message id published twice now goes out twice; a consumer with the inbox handles it
-- once.

ALTER TABLE {schema}.outbox DROP CONSTRAINT IF EXISTS outbox_message_id_key;
